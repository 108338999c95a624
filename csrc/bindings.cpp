// Torch bindings of the persistent LSTM and Z-forcing chain kernels: the extension zf_kernels._C (built by setup.py
// or JIT-built by zf_kernels/ops/_cuda_ext.py). Checks the tensors and forwards their pointers
// to the C ABI of lstm_kernels.h, on the tensors' device (c10::DeviceGuard); no CUDA headers
// here (the caller passes its stream as an integer), so this file compiles with a plain C++
// compiler.
#include <torch/extension.h>

#include <string>

#include "chain_kernels.h"
#include "lstm_kernels.h"

namespace {

constexpr int kErrLen = 1024;

// t on ref's device, of `dtype` (default: ref's), contiguous, shaped `shape`
void check(const torch::Tensor& t, const char* name, const torch::Tensor& ref,
           c10::IntArrayRef shape, c10::optional<c10::ScalarType> dtype = c10::nullopt) {
  const c10::ScalarType want = dtype.value_or(ref.scalar_type());
  TORCH_CHECK(t.is_cuda(), "zf_kernels._C: ", name, " must be a CUDA tensor");
  TORCH_CHECK(t.device() == ref.device(), "zf_kernels._C: ", name, " is on ", t.device(),
              " but the gates are on ", ref.device());
  TORCH_CHECK(t.scalar_type() == want, "zf_kernels._C: ", name, " has dtype ",
              t.scalar_type(), ", expected ", want);
  TORCH_CHECK(t.is_contiguous(), "zf_kernels._C: ", name, " must be contiguous");
  TORCH_CHECK(t.sizes() == shape, "zf_kernels._C: ", name, " must have shape ", shape, ", got ",
              t.sizes());
}

// ZfLstmLaunch / ZfChainLaunch (same fields): the caller's overrides, 0 = the default; tf32: the
// float32 block products on the tensor cores, TF32 products per element (0 IEEE, 1, 3)
template <typename Cfg>
Cfg launch_config(int64_t units_per_block, int64_t threads, int64_t tf32) {
  Cfg cfg{};
  cfg.threads = static_cast<int>(threads);
  cfg.units_per_block = static_cast<int>(units_per_block);
  cfg.tf32 = static_cast<int>(tf32);
  return cfg;
}

// the fields every plan has (ZfLstmPlan, ZfChainPlan) as a dict
template <typename Plan>
pybind11::dict plan_dict(const Plan& p) {
  pybind11::dict d;
  d["blocks"] = p.blocks;
  d["threads"] = p.threads;
  d["units_per_block"] = p.units_per_block;
  d["kc"] = p.kc;
  d["smem_bytes"] = p.smem_bytes;
  return d;
}

// the cell states' dtype for gates of `gates`' dtype: float32 for bfloat16 (lstm_kernels.h,
// chain_kernels.h)
c10::ScalarType state_dtype(const torch::Tensor& gates) {
  return gates.scalar_type() == torch::kBFloat16 ? torch::kFloat32 : gates.scalar_type();
}

// a bfloat16 tensor's elements as the 16-bit patterns the C ABI takes
unsigned short* bf16_bits(const torch::Tensor& t) {
  return reinterpret_cast<unsigned short*>(t.data_ptr<at::BFloat16>());
}

// a tensor's data as the C ABI's element type (unsigned short: bfloat16 bits)
template <typename S>
S* ptr(const torch::Tensor& t) { return t.data_ptr<S>(); }
template <>
unsigned short* ptr<unsigned short>(const torch::Tensor& t) { return bf16_bits(t); }

// ZF_DOES_NOT_FIT -> ValueError (the shape is the problem), anything else -> RuntimeError
void raise_for(int rc, const char* err) {
  if (rc == ZF_OK) return;
  if (rc == ZF_DOES_NOT_FIT) throw pybind11::value_error(err);
  throw std::runtime_error(err);
}

void lstm_forward(torch::Tensor gates, torch::Tensor h0, torch::Tensor w_hh, torch::Tensor out,
                  torch::Tensor c_all, bool reverse, int64_t units_per_block, int64_t threads, int64_t tf32,
                  int64_t stream) {
  TORCH_CHECK(gates.dim() == 3, "zf_kernels._C: gates must be (T, B, 4H)");
  const int64_t T = gates.size(0), B = gates.size(1), H = gates.size(2) / 4;
  check(gates, "gates", gates, {T, B, 4 * H});
  check(h0, "h0", gates, {B, H});
  check(w_hh, "w_hh", gates, {4 * H, H});
  check(out, "out", gates, {T, B, H});
  check(c_all, "c_all", gates, {T + 1, B, H}, state_dtype(gates));
  // the launch and the plan's device queries on the tensors' device (the caller passes its stream)
  const c10::DeviceGuard device_guard(gates.device());
  ZfLstmLaunch cfg = launch_config<ZfLstmLaunch>(units_per_block, threads, tf32);
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
  } else if (gates.scalar_type() == torch::kBFloat16) {
    rc = zf_lstm_forward_bf16(bf16_bits(gates), bf16_bits(h0), bf16_bits(w_hh), bf16_bits(out),
                              c_all.data_ptr<float>(), T, B, H, reverse, &cfg, s, err, kErrLen);
  } else {
    TORCH_CHECK(false, "zf_kernels._C: the CUDA lstm supports float32, float64 and bfloat16, got ",
                gates.scalar_type());
  }
  raise_for(rc, err);
}

void lstm_backward(torch::Tensor d_out, torch::Tensor d_hT, torch::Tensor w_hh,
                   torch::Tensor gates, torch::Tensor c_all, torch::Tensor dc, bool reverse,
                   int64_t units_per_block, int64_t threads, int64_t tf32, int64_t stream) {
  TORCH_CHECK(gates.dim() == 3, "zf_kernels._C: gates must be (T, B, 4H)");
  const int64_t T = gates.size(0), B = gates.size(1), H = gates.size(2) / 4;
  check(gates, "gates", gates, {T, B, 4 * H});
  check(d_out, "d_out", gates, {T, B, H});
  check(d_hT, "d_hT", gates, {B, H});
  check(w_hh, "w_hh", gates, {4 * H, H});
  check(c_all, "c_all", gates, {T + 1, B, H}, state_dtype(gates));
  check(dc, "dc", gates, {B, H}, state_dtype(gates));
  // the launch and the plan's device queries on the tensors' device (the caller passes its stream)
  const c10::DeviceGuard device_guard(gates.device());
  ZfLstmLaunch cfg = launch_config<ZfLstmLaunch>(units_per_block, threads, tf32);
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
  } else if (gates.scalar_type() == torch::kBFloat16) {
    rc = zf_lstm_backward_bf16(bf16_bits(d_out), bf16_bits(d_hT), bf16_bits(w_hh), bf16_bits(gates),
                               c_all.data_ptr<float>(), dc.data_ptr<float>(), T, B, H, reverse, &cfg, s,
                               err, kErrLen);
  } else {
    TORCH_CHECK(false, "zf_kernels._C: the CUDA lstm supports float32, float64 and bfloat16, got ",
                gates.scalar_type());
  }
  raise_for(rc, err);
}

// how one direction would run on the current device (raises ValueError where it cannot)
pybind11::dict lstm_plan(bool backward, int64_t B, int64_t H, int64_t elem_size,
                         int64_t units_per_block, int64_t threads, int64_t tf32) {
  ZfLstmLaunch cfg = launch_config<ZfLstmLaunch>(units_per_block, threads, tf32);
  ZfLstmPlan p{};
  char err[kErrLen] = {0};
  raise_for(zf_lstm_plan(backward, B, H, elem_size, &cfg, &p, err, kErrLen), err);
  pybind11::dict d = plan_dict(p);
  d["rows"] = p.rows;
  d["k"] = p.k;
  d["ksplit"] = p.ksplit;
  d["w_bytes"] = p.w_bytes;
  d["tf32"] = p.mma;
  return d;
}

// ----------------------------------------------------------------------- Z-forcing chain

void check_mask(const torch::Tensor& t, const torch::Tensor& ref, c10::IntArrayRef shape) {
  TORCH_CHECK(t.is_cuda() && t.device() == ref.device(), "zf_kernels._C: okmask must be on ", ref.device());
  TORCH_CHECK(t.scalar_type() == torch::kUInt8, "zf_kernels._C: okmask must be uint8, got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous() && t.sizes() == shape, "zf_kernels._C: okmask must be contiguous with shape ",
              shape, ", got ", t.sizes());
}

void chain_forward(torch::Tensor gates, torch::Tensor post_x, torch::Tensor eps, torch::Tensor h0,
                   torch::Tensor c0, torch::Tensor w_qh, torch::Tensor w_q2, torch::Tensor b_q2,
                   torch::Tensor w_comb, torch::Tensor w_hh, torch::Tensor h, torch::Tensor c,
                   torch::Tensor z, torch::Tensor mu, torch::Tensor lv, torch::Tensor s,
                   torch::Tensor okmask, int64_t units_per_block, int64_t threads, int64_t tf32, int64_t stream) {
  TORCH_CHECK(gates.dim() == 3 && post_x.dim() == 3 && eps.dim() == 3,
              "zf_kernels._C: gates, post_x, eps must be (T, B, .)");
  const int64_t T = gates.size(0), B = gates.size(1), H = gates.size(2) / 4, M = post_x.size(2),
                Z = eps.size(2);
  check(gates, "gates", gates, {T, B, 4 * H});
  check(post_x, "post_x", gates, {T, B, M});
  check(eps, "eps", gates, {T, B, Z});
  check(h0, "h0", gates, {B, H});
  check(c0, "c0", gates, {B, H}, state_dtype(gates));
  check(w_qh, "w_qh", gates, {M, H});
  check(w_q2, "w_q2", gates, {2 * Z, M});
  check(b_q2, "b_q2", gates, {2 * Z});
  check(w_comb, "w_comb", gates, {4 * H, Z});
  check(w_hh, "w_hh", gates, {4 * H, H});
  check(h, "h", gates, {T, B, H});
  check(c, "c", gates, {T, B, H}, state_dtype(gates));
  check(z, "z", gates, {T, B, Z});
  check(mu, "mu", gates, {T, B, Z});
  check(lv, "lv", gates, {T, B, Z});
  check(s, "s", gates, {T, B, M});
  check_mask(okmask, gates, {T, B, 2 * Z});
  // the launch and the plan's device queries on the tensors' device (the caller passes its stream)
  const c10::DeviceGuard device_guard(gates.device());
  ZfChainLaunch cfg = launch_config<ZfChainLaunch>(units_per_block, threads, tf32);
  char err[kErrLen] = {0};
  void* st = reinterpret_cast<void*>(stream);
  unsigned char* ok = okmask.data_ptr<uint8_t>();
  int rc;
#define ZF_FWD(S, A, FN)                                                                                  \
  rc = FN(ptr<S>(gates), ptr<S>(post_x), ptr<S>(eps), ptr<S>(h0), ptr<A>(c0), ptr<S>(w_qh), ptr<S>(w_q2),   \
          ptr<S>(b_q2), ptr<S>(w_comb), ptr<S>(w_hh), ptr<S>(h), ptr<A>(c), ptr<S>(z), ptr<S>(mu), ptr<S>(lv), \
          ptr<S>(s), ok, T, B, H, M, Z, &cfg, st, err, kErrLen)
  if (gates.scalar_type() == torch::kFloat32) {
    ZF_FWD(float, float, zf_chain_forward_f32);
  } else if (gates.scalar_type() == torch::kFloat64) {
    ZF_FWD(double, double, zf_chain_forward_f64);
  } else if (gates.scalar_type() == torch::kBFloat16) {
    ZF_FWD(unsigned short, float, zf_chain_forward_bf16);
  } else {
    TORCH_CHECK(false, "zf_kernels._C: the CUDA zforcing_chain supports float32, float64 and bfloat16, got ",
                gates.scalar_type());
  }
#undef ZF_FWD
  raise_for(rc, err);
}

void chain_backward(torch::Tensor grad_h, torch::Tensor grad_c, torch::Tensor grad_z,
                    torch::Tensor grad_mu, torch::Tensor grad_lv, torch::Tensor gates, torch::Tensor c0,
                    torch::Tensor c, torch::Tensor lv, torch::Tensor eps, torch::Tensor okmask,
                    torch::Tensor s, torch::Tensor w_qh, torch::Tensor w_q2, torch::Tensor w_comb,
                    torch::Tensor w_hh, torch::Tensor dparams, torch::Tensor ds, torch::Tensor grad_eps,
                    torch::Tensor dc, int64_t units_per_block, int64_t threads, int64_t tf32, int64_t stream) {
  TORCH_CHECK(gates.dim() == 3 && s.dim() == 3 && eps.dim() == 3,
              "zf_kernels._C: gates, s, eps must be (T, B, .)");
  const int64_t T = gates.size(0), B = gates.size(1), H = gates.size(2) / 4, M = s.size(2), Z = eps.size(2);
  check(gates, "gates", gates, {T, B, 4 * H});
  check(grad_h, "grad_h", gates, {T, B, H});
  check(grad_c, "grad_c", gates, {T, B, H}, state_dtype(gates));
  check(grad_z, "grad_z", gates, {T, B, Z});
  check(grad_mu, "grad_mu", gates, {T, B, Z});
  check(grad_lv, "grad_lv", gates, {T, B, Z});
  check(c0, "c0", gates, {B, H}, state_dtype(gates));
  check(c, "c", gates, {T, B, H}, state_dtype(gates));
  check(lv, "lv", gates, {T, B, Z});
  check(eps, "eps", gates, {T, B, Z});
  check_mask(okmask, gates, {T, B, 2 * Z});
  check(s, "s", gates, {T, B, M});
  check(w_qh, "w_qh", gates, {M, H});
  check(w_q2, "w_q2", gates, {2 * Z, M});
  check(w_comb, "w_comb", gates, {4 * H, Z});
  check(w_hh, "w_hh", gates, {4 * H, H});
  check(dparams, "dparams", gates, {T, B, 2 * Z});
  check(ds, "ds", gates, {T, B, M});
  check(grad_eps, "grad_eps", gates, {T, B, Z});
  check(dc, "dc", gates, {B, H}, state_dtype(gates));
  // the launch and the plan's device queries on the tensors' device (the caller passes its stream)
  const c10::DeviceGuard device_guard(gates.device());
  ZfChainLaunch cfg = launch_config<ZfChainLaunch>(units_per_block, threads, tf32);
  char err[kErrLen] = {0};
  void* st = reinterpret_cast<void*>(stream);
  const unsigned char* ok = okmask.data_ptr<uint8_t>();
  int rc;
#define ZF_BWD(S, A, FN)                                                                                   \
  rc = FN(ptr<S>(grad_h), ptr<A>(grad_c), ptr<S>(grad_z), ptr<S>(grad_mu), ptr<S>(grad_lv), ptr<S>(gates),   \
          ptr<A>(c0), ptr<A>(c), ptr<S>(lv), ptr<S>(eps), ok, ptr<S>(s), ptr<S>(w_qh), ptr<S>(w_q2),          \
          ptr<S>(w_comb), ptr<S>(w_hh), ptr<S>(dparams), ptr<S>(ds), ptr<S>(grad_eps), ptr<A>(dc), T, B, H, M, \
          Z, &cfg, st, err, kErrLen)
  if (gates.scalar_type() == torch::kFloat32) {
    ZF_BWD(float, float, zf_chain_backward_f32);
  } else if (gates.scalar_type() == torch::kFloat64) {
    ZF_BWD(double, double, zf_chain_backward_f64);
  } else if (gates.scalar_type() == torch::kBFloat16) {
    ZF_BWD(unsigned short, float, zf_chain_backward_bf16);
  } else {
    TORCH_CHECK(false, "zf_kernels._C: the CUDA zforcing_chain supports float32, float64 and bfloat16, got ",
                gates.scalar_type());
  }
#undef ZF_BWD
  raise_for(rc, err);
}

pybind11::dict chain_plan(bool backward, int64_t B, int64_t H, int64_t M, int64_t Z, int64_t elem_size,
                          int64_t units_per_block, int64_t threads, int64_t tf32) {
  ZfChainLaunch cfg = launch_config<ZfChainLaunch>(units_per_block, threads, tf32);
  ZfChainPlan p{};
  char err[kErrLen] = {0};
  raise_for(zf_chain_plan(backward, B, H, M, Z, elem_size, &cfg, &p, err, kErrLen), err);
  pybind11::dict d = plan_dict(p);
  d["m_per_block"] = p.m_per_block;
  d["z_per_block"] = p.z_per_block;
  d["resident"] = p.resident;
  d["resident_bytes"] = p.resident_bytes;
  d["tf32"] = p.mma;
  return d;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "zf_kernels CUDA kernels: persistent LSTM recurrence and Z-forcing chain (csrc/)";
  m.def("lstm_forward", &lstm_forward, "forward recurrence, one cooperative launch",
        pybind11::arg("gates"), pybind11::arg("h0"), pybind11::arg("w_hh"), pybind11::arg("out"),
        pybind11::arg("c_all"), pybind11::arg("reverse"), pybind11::arg("units_per_block") = 0,
        pybind11::arg("threads") = 0, pybind11::arg("tf32") = 0, pybind11::arg("stream") = 0);
  m.def("lstm_backward", &lstm_backward, "backward recurrence, one cooperative launch",
        pybind11::arg("d_out"), pybind11::arg("d_hT"), pybind11::arg("w_hh"),
        pybind11::arg("gates"), pybind11::arg("c_all"), pybind11::arg("dc"),
        pybind11::arg("reverse"), pybind11::arg("units_per_block") = 0,
        pybind11::arg("threads") = 0, pybind11::arg("tf32") = 0, pybind11::arg("stream") = 0);
  m.def("lstm_plan", &lstm_plan, "launch plan of one direction on the current device",
        pybind11::arg("backward"), pybind11::arg("B"), pybind11::arg("H"),
        pybind11::arg("elem_size"), pybind11::arg("units_per_block") = 0,
        pybind11::arg("threads") = 0, pybind11::arg("tf32") = 0);
  m.def("chain_forward", &chain_forward, "Z-forcing chain forward, one cooperative launch",
        pybind11::arg("gates"), pybind11::arg("post_x"), pybind11::arg("eps"), pybind11::arg("h0"),
        pybind11::arg("c0"), pybind11::arg("w_qh"), pybind11::arg("w_q2"), pybind11::arg("b_q2"),
        pybind11::arg("w_comb"), pybind11::arg("w_hh"), pybind11::arg("h"), pybind11::arg("c"),
        pybind11::arg("z"), pybind11::arg("mu"), pybind11::arg("lv"), pybind11::arg("s"),
        pybind11::arg("okmask"), pybind11::arg("units_per_block") = 0, pybind11::arg("threads") = 0,
        pybind11::arg("tf32") = 0, pybind11::arg("stream") = 0);
  m.def("chain_backward", &chain_backward, "Z-forcing chain backward, one cooperative launch",
        pybind11::arg("grad_h"), pybind11::arg("grad_c"), pybind11::arg("grad_z"), pybind11::arg("grad_mu"),
        pybind11::arg("grad_lv"), pybind11::arg("gates"), pybind11::arg("c0"), pybind11::arg("c"),
        pybind11::arg("lv"), pybind11::arg("eps"), pybind11::arg("okmask"), pybind11::arg("s"),
        pybind11::arg("w_qh"), pybind11::arg("w_q2"), pybind11::arg("w_comb"), pybind11::arg("w_hh"),
        pybind11::arg("dparams"), pybind11::arg("ds"), pybind11::arg("grad_eps"), pybind11::arg("dc"),
        pybind11::arg("units_per_block") = 0, pybind11::arg("threads") = 0, pybind11::arg("tf32") = 0,
        pybind11::arg("stream") = 0);
  m.def("chain_plan", &chain_plan, "launch plan of one chain direction on the current device",
        pybind11::arg("backward"), pybind11::arg("B"), pybind11::arg("H"), pybind11::arg("M"),
        pybind11::arg("Z"), pybind11::arg("elem_size"), pybind11::arg("units_per_block") = 0,
        pybind11::arg("threads") = 0, pybind11::arg("tf32") = 0);
}
