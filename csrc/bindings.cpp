// Torch bindings of the persistent LSTM kernels: the extension zf_kernels._C (built by setup.py
// or JIT-built by zf_kernels/ops/_cuda_ext.py). Checks the tensors and forwards their pointers
// to the C ABI of lstm_kernels.h; no CUDA headers here (the caller passes the stream as an
// integer and selects the device), so this file compiles with a plain C++ compiler.
#include <torch/extension.h>

#include <string>

#include "lstm_kernels.h"

namespace {

constexpr int kErrLen = 1024;

void check(const torch::Tensor& t, const char* name, const torch::Tensor& ref,
           c10::IntArrayRef shape) {
  TORCH_CHECK(t.is_cuda(), "zf_kernels._C: ", name, " must be a CUDA tensor");
  TORCH_CHECK(t.device() == ref.device(), "zf_kernels._C: ", name, " is on ", t.device(),
              " but the gates are on ", ref.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "zf_kernels._C: ", name, " has dtype ",
              t.scalar_type(), ", expected ", ref.scalar_type());
  TORCH_CHECK(t.is_contiguous(), "zf_kernels._C: ", name, " must be contiguous");
  TORCH_CHECK(t.sizes() == shape, "zf_kernels._C: ", name, " must have shape ", shape, ", got ",
              t.sizes());
}

ZfLstmLaunch launch_config(int64_t units_per_block, int64_t threads) {
  ZfLstmLaunch cfg{};
  cfg.threads = static_cast<int>(threads);
  cfg.units_per_block = static_cast<int>(units_per_block);
  return cfg;
}

// ZF_DOES_NOT_FIT -> ValueError (the shape is the problem), anything else -> RuntimeError
void raise_for(int rc, const char* err) {
  if (rc == ZF_OK) return;
  if (rc == ZF_DOES_NOT_FIT) throw pybind11::value_error(err);
  throw std::runtime_error(err);
}

void lstm_forward(torch::Tensor gates, torch::Tensor h0, torch::Tensor w_hh, torch::Tensor out,
                  torch::Tensor c_all, bool reverse, int64_t units_per_block, int64_t threads,
                  int64_t stream) {
  TORCH_CHECK(gates.dim() == 3, "zf_kernels._C: gates must be (T, B, 4H)");
  const int64_t T = gates.size(0), B = gates.size(1), H = gates.size(2) / 4;
  check(gates, "gates", gates, {T, B, 4 * H});
  check(h0, "h0", gates, {B, H});
  check(w_hh, "w_hh", gates, {4 * H, H});
  check(out, "out", gates, {T, B, H});
  check(c_all, "c_all", gates, {T + 1, B, H});
  ZfLstmLaunch cfg = launch_config(units_per_block, threads);
  char err[kErrLen] = {0};
  void* s = reinterpret_cast<void*>(stream);
  int rc;
  if (gates.scalar_type() == torch::kFloat32) {
    rc = zf_lstm_forward_f32(gates.data_ptr<float>(), h0.data_ptr<float>(), w_hh.data_ptr<float>(),
                             out.data_ptr<float>(), c_all.data_ptr<float>(), T, B, H, reverse, &cfg,
                             s, err, kErrLen);
  } else if (gates.scalar_type() == torch::kFloat64) {
    rc = zf_lstm_forward_f64(gates.data_ptr<double>(), h0.data_ptr<double>(),
                             w_hh.data_ptr<double>(), out.data_ptr<double>(),
                             c_all.data_ptr<double>(), T, B, H, reverse, &cfg, s, err, kErrLen);
  } else {
    TORCH_CHECK(false, "zf_kernels._C: the CUDA lstm supports float32 and float64, got ",
                gates.scalar_type());
  }
  raise_for(rc, err);
}

void lstm_backward(torch::Tensor d_out, torch::Tensor d_hT, torch::Tensor w_hh,
                   torch::Tensor gates, torch::Tensor c_all, torch::Tensor dc, bool reverse,
                   int64_t units_per_block, int64_t threads, int64_t stream) {
  TORCH_CHECK(gates.dim() == 3, "zf_kernels._C: gates must be (T, B, 4H)");
  const int64_t T = gates.size(0), B = gates.size(1), H = gates.size(2) / 4;
  check(gates, "gates", gates, {T, B, 4 * H});
  check(d_out, "d_out", gates, {T, B, H});
  check(d_hT, "d_hT", gates, {B, H});
  check(w_hh, "w_hh", gates, {4 * H, H});
  check(c_all, "c_all", gates, {T + 1, B, H});
  check(dc, "dc", gates, {B, H});
  ZfLstmLaunch cfg = launch_config(units_per_block, threads);
  char err[kErrLen] = {0};
  void* s = reinterpret_cast<void*>(stream);
  int rc;
  if (gates.scalar_type() == torch::kFloat32) {
    rc = zf_lstm_backward_f32(d_out.data_ptr<float>(), d_hT.data_ptr<float>(),
                              w_hh.data_ptr<float>(), gates.data_ptr<float>(),
                              c_all.data_ptr<float>(), dc.data_ptr<float>(), T, B, H, reverse, &cfg,
                              s, err, kErrLen);
  } else if (gates.scalar_type() == torch::kFloat64) {
    rc = zf_lstm_backward_f64(d_out.data_ptr<double>(), d_hT.data_ptr<double>(),
                              w_hh.data_ptr<double>(), gates.data_ptr<double>(),
                              c_all.data_ptr<double>(), dc.data_ptr<double>(), T, B, H, reverse,
                              &cfg, s, err, kErrLen);
  } else {
    TORCH_CHECK(false, "zf_kernels._C: the CUDA lstm supports float32 and float64, got ",
                gates.scalar_type());
  }
  raise_for(rc, err);
}

// how one direction would run on the current device (raises ValueError where it cannot)
pybind11::dict lstm_plan(bool backward, int64_t B, int64_t H, int64_t elem_size,
                         int64_t units_per_block, int64_t threads) {
  ZfLstmLaunch cfg = launch_config(units_per_block, threads);
  ZfLstmPlan p{};
  char err[kErrLen] = {0};
  raise_for(zf_lstm_plan(backward, B, H, elem_size, &cfg, &p, err, kErrLen), err);
  pybind11::dict d;
  d["blocks"] = p.blocks;
  d["threads"] = p.threads;
  d["units_per_block"] = p.units_per_block;
  d["rows"] = p.rows;
  d["k"] = p.k;
  d["kc"] = p.kc;
  d["ksplit"] = p.ksplit;
  d["w_bytes"] = p.w_bytes;
  d["smem_bytes"] = p.smem_bytes;
  return d;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "zf_kernels CUDA kernels: persistent LSTM recurrence (csrc/)";
  m.def("lstm_forward", &lstm_forward, "forward recurrence, one cooperative launch",
        pybind11::arg("gates"), pybind11::arg("h0"), pybind11::arg("w_hh"), pybind11::arg("out"),
        pybind11::arg("c_all"), pybind11::arg("reverse"), pybind11::arg("units_per_block") = 0,
        pybind11::arg("threads") = 0, pybind11::arg("stream") = 0);
  m.def("lstm_backward", &lstm_backward, "backward recurrence, one cooperative launch",
        pybind11::arg("d_out"), pybind11::arg("d_hT"), pybind11::arg("w_hh"),
        pybind11::arg("gates"), pybind11::arg("c_all"), pybind11::arg("dc"),
        pybind11::arg("reverse"), pybind11::arg("units_per_block") = 0,
        pybind11::arg("threads") = 0, pybind11::arg("stream") = 0);
  m.def("lstm_plan", &lstm_plan, "launch plan of one direction on the current device",
        pybind11::arg("backward"), pybind11::arg("B"), pybind11::arg("H"),
        pybind11::arg("elem_size"), pybind11::arg("units_per_block") = 0,
        pybind11::arg("threads") = 0);
}
