// Standalone check of the LSTM forward kernel in the CPU emulation (CMake target
// zf_lstm_emu_test, run by ctest): the kernel's h_t / c_t / pre-activations against a plain
// C++ loop, on a shape split over 5 blocks with K staged in 32-wide chunks. Built once more
// with ZF_EMU_NO_GRID_SYNC, where ctest expects it to fail. (The full check, gradients
// included, is tests/test_cuda_emulation.py.)
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "lstm_kernels.h"

static double sig(double x) { return 1.0 / (1.0 + std::exp(-x)); }

int main() {
  const int T = 4, B = 5, H = 37;
  std::mt19937 rng(0);
  std::normal_distribution<double> n01(0.0, 1.0);
  std::vector<double> gx(T * B * 4 * H), h0(B * H), w(4 * H * H), c0(B * H);
  for (auto& v : gx) v = n01(rng);
  for (auto& v : h0) v = 0.5 * n01(rng);
  for (auto& v : c0) v = 0.5 * n01(rng);
  for (auto& v : w) v = n01(rng) / std::sqrt(double(H));

  // reference: z_t = gx_t + h_{t-1} W^T; c_t = s(f) c + s(i) tanh(g); h_t = s(o) tanh(c_t)
  std::vector<double> h = h0, c = c0, ref_out(T * B * H), ref_z(gx.size());
  for (int t = 0; t < T; ++t) {
    std::vector<double> hn(B * H);
    for (int b = 0; b < B; ++b)
      for (int j = 0; j < H; ++j) {
        double z[4];
        for (int g = 0; g < 4; ++g) {
          double s = gx[(t * B + b) * 4 * H + g * H + j];
          for (int k = 0; k < H; ++k) s += h[b * H + k] * w[(g * H + j) * H + k];
          z[g] = s;
          ref_z[(t * B + b) * 4 * H + g * H + j] = s;
        }
        c[b * H + j] = sig(z[1]) * c[b * H + j] + sig(z[0]) * std::tanh(z[2]);
        hn[b * H + j] = sig(z[3]) * std::tanh(c[b * H + j]);
        ref_out[(t * B + b) * H + j] = hn[b * H + j];
      }
    h = hn;
  }

  std::vector<double> gates = gx, out(T * B * H, NAN), c_all((T + 1) * B * H, NAN);
  for (int i = 0; i < B * H; ++i) c_all[i] = c0[i];
  // 8 units per block -> 5 blocks; 16 threads; shared memory for ~one 32-wide chunk of h
  ZfLstmLaunch cfg{16, 8, 0, 0};
  ZfLstmPlan p{};
  char err[1024];
  if (zf_lstm_plan(0, B, H, 8, &cfg, &p, err, sizeof err)) return std::printf("%s\n", err), 2;
  cfg.smem_limit = p.w_bytes + p.part_bytes + p.state_bytes + 8LL * 8 * (64 + (p.ksplit * p.row_groups_m) % 32);
  if (zf_lstm_plan(0, B, H, 8, &cfg, &p, err, sizeof err)) return std::printf("%s\n", err), 2;
  std::printf("blocks %d, threads %d, kc %d of k %d, ksplit %d\n", p.blocks, p.threads, p.kc, p.k, p.ksplit);
  if (zf_lstm_forward_f64(gates.data(), h0.data(), w.data(), out.data(), c_all.data(), T, B, H, 0, &cfg,
                          nullptr, err, sizeof err))
    return std::printf("%s\n", err), 2;

  double worst = 0.0;
  for (size_t i = 0; i < out.size(); ++i) worst = std::fmax(worst, std::isnan(out[i]) ? INFINITY : std::fabs(out[i] - ref_out[i]));
  for (size_t i = 0; i < gates.size(); ++i) worst = std::fmax(worst, std::isnan(gates[i]) ? INFINITY : std::fabs(gates[i] - ref_z[i]));
  for (int i = 0; i < B * H; ++i) {
    const double ct = c_all[T * B * H + i];
    worst = std::fmax(worst, std::isnan(ct) ? INFINITY : std::fabs(ct - c[i]));
  }
  std::printf("max |kernel - reference| = %.3g\n", worst);
  return worst < 1e-10 ? 0 : 1;
}
