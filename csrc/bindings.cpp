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

// a tensor's data as the C ABI's element type (unsigned short: a bfloat16 tensor's 16-bit patterns)
template <typename S>
S* ptr(const torch::Tensor& t) { return t.data_ptr<S>(); }
template <>
unsigned short* ptr<unsigned short>(const torch::Tensor& t) {
  return reinterpret_cast<unsigned short*>(t.data_ptr<at::BFloat16>());
}

// The C ABI's element types of one dtype: s(t) for the storage, a(t) for the cell states
// (float32 under bfloat16 storage, state_dtype)
template <typename S, typename A>
struct AbiPtrs {
  S* s(const torch::Tensor& t) const { return ptr<S>(t); }
  A* a(const torch::Tensor& t) const { return ptr<A>(t); }
};

// ZF_DOES_NOT_FIT -> ValueError (the shape is the problem), anything else -> RuntimeError
void raise_for(int rc, const char* err) {
  if (rc == ZF_OK) return;
  if (rc == ZF_DOES_NOT_FIT) throw pybind11::value_error(err);
  throw std::runtime_error(err);
}

// One launch through the C ABI, what the four entries below share: on the tensors' device (the
// launch and the plan's device queries; the caller passes its stream), the entry of gates' dtype
// (f32, f64 or bf16; any other dtype is an error naming `op`) called as call(fn, AbiPtrs<S, A>{},
// err), its return code raised as raise_for does.
template <typename F32, typename F64, typename BF16, typename Call>
void launch_for_dtype(const torch::Tensor& gates, const char* op, F32 f32, F64 f64, BF16 bf16, Call call) {
  const c10::DeviceGuard device_guard(gates.device());
  char err[kErrLen] = {0};
  const c10::ScalarType dtype = gates.scalar_type();
  int rc;
  if (dtype == torch::kFloat32) {
    rc = call(f32, AbiPtrs<float, float>{}, err);
  } else if (dtype == torch::kFloat64) {
    rc = call(f64, AbiPtrs<double, double>{}, err);
  } else {
    TORCH_CHECK(dtype == torch::kBFloat16, "zf_kernels._C: the CUDA ", op,
                " supports float32, float64 and bfloat16, got ", dtype);
    rc = call(bf16, AbiPtrs<unsigned short, float>{}, err);
  }
  raise_for(rc, err);
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
  const ZfLstmLaunch cfg = launch_config<ZfLstmLaunch>(units_per_block, threads, tf32);
  launch_for_dtype(gates, "lstm", zf_lstm_forward_f32, zf_lstm_forward_f64, zf_lstm_forward_bf16,
                 [&](auto fn, auto p, char* err) {
                   return fn(p.s(gates), p.s(h0), p.s(w_hh), p.s(out), p.a(c_all), T, B, H, reverse, &cfg,
                             reinterpret_cast<void*>(stream), err, kErrLen);
                 });
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
  const ZfLstmLaunch cfg = launch_config<ZfLstmLaunch>(units_per_block, threads, tf32);
  launch_for_dtype(gates, "lstm", zf_lstm_backward_f32, zf_lstm_backward_f64, zf_lstm_backward_bf16,
                 [&](auto fn, auto p, char* err) {
                   return fn(p.s(d_out), p.s(d_hT), p.s(w_hh), p.s(gates), p.a(c_all), p.a(dc), T, B, H, reverse,
                             &cfg, reinterpret_cast<void*>(stream), err, kErrLen);
                 });
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
  const ZfChainLaunch cfg = launch_config<ZfChainLaunch>(units_per_block, threads, tf32);
  launch_for_dtype(gates, "zforcing_chain", zf_chain_forward_f32, zf_chain_forward_f64, zf_chain_forward_bf16,
                 [&](auto fn, auto p, char* err) {
                   return fn(p.s(gates), p.s(post_x), p.s(eps), p.s(h0), p.a(c0), p.s(w_qh), p.s(w_q2), p.s(b_q2),
                             p.s(w_comb), p.s(w_hh), p.s(h), p.a(c), p.s(z), p.s(mu), p.s(lv), p.s(s),
                             okmask.data_ptr<uint8_t>(), T, B, H, M, Z, &cfg, reinterpret_cast<void*>(stream), err,
                             kErrLen);
                 });
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
  const ZfChainLaunch cfg = launch_config<ZfChainLaunch>(units_per_block, threads, tf32);
  launch_for_dtype(gates, "zforcing_chain", zf_chain_backward_f32, zf_chain_backward_f64, zf_chain_backward_bf16,
                 [&](auto fn, auto p, char* err) {
                   return fn(p.s(grad_h), p.a(grad_c), p.s(grad_z), p.s(grad_mu), p.s(grad_lv), p.s(gates),
                             p.a(c0), p.a(c), p.s(lv), p.s(eps), okmask.data_ptr<uint8_t>(), p.s(s), p.s(w_qh),
                             p.s(w_q2), p.s(w_comb), p.s(w_hh), p.s(dparams), p.s(ds), p.s(grad_eps), p.a(dc), T, B,
                             H, M, Z, &cfg, reinterpret_cast<void*>(stream), err, kErrLen);
                 });
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
