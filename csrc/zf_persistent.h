// What the persistent kernels (lstm_kernels.cu, chain_kernels.cu) share: the register-tile size,
// exact-rounding math, error strings, the launch settings resolved against the device, and the
// cooperative launch with its co-residency check; with -DZF_CPU_EMULATION the emulated device
// and launch (zf_device.h). Included by those .cu files only (inside no namespace of theirs).
#ifndef ZF_PERSISTENT_H
#define ZF_PERSISTENT_H

#include "lstm_kernels.h"  // the return codes ZF_OK, ZF_DOES_NOT_FIT, ZF_CUDA_ERROR
#include "zf_device.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <map>
#include <mutex>
#include <type_traits>
#include <utility>

namespace zf_persistent {

constexpr int TB = 4;  // batch rows per register tile
constexpr int TM = 4;  // weight rows per register tile
constexpr int DEFAULT_THREADS = 256;

// bfloat16 storage (zf_bf16): the kernels' templates branch on it
template <typename S>
constexpr bool is_bf16 = std::is_same<S, zf_bf16>::value;

// the C ABI passes bfloat16 tensors as their 16-bit patterns (unsigned short, const or not)
inline zf_bf16* as_bf16(unsigned short* p) { return reinterpret_cast<zf_bf16*>(p); }
inline const zf_bf16* as_bf16(const unsigned short* p) { return reinterpret_cast<const zf_bf16*>(p); }

// the name of an element size in messages
inline const char* dtype_name(long long es) { return es == 8 ? "float64" : es == 2 ? "bfloat16" : "float32"; }

// K step of one tensor-core product for elements of es bytes: 16 (bfloat16, m16n8k16), else 8 (TF32)
ZF_HOST_DEVICE int mma_k_step(int es) { return es == 2 ? 16 : 8; }

// 1: stage_chunk moves 16 bytes per load and store where the rows allow it; 0: one element at a
// time (the CPU tests build both and compare them bit for bit)
#ifndef ZF_STAGE_VECTORS
#define ZF_STAGE_VECTORS 1
#endif
// loads each thread of stage_chunk has in flight before its first store (1: the plain loop)
#ifndef ZF_STAGE_BATCH
#define ZF_STAGE_BATCH 8
#endif

// Timing variants, for benchmarks only (their results are wrong): built with
// ZF_KERNELS_NVCC_DEFINES (zf_kernels/ops/_cuda_ext.py), each leaves one part of every time step
// out, so that the difference from the default build is that part's time: -DZF_TIMING_SKIP_STAGING
// (stage_chunk copies nothing), -DZF_TIMING_SKIP_PRODUCTS (no tile loop runs: tile_fma,
// mma_two_chains), -DZF_TIMING_SKIP_GRID_SYNC (zf_grid_sync returns at once, zf_device.h).
#if defined(ZF_CPU_EMULATION) && (defined(ZF_TIMING_SKIP_STAGING) || defined(ZF_TIMING_SKIP_PRODUCTS) || \
                                  defined(ZF_TIMING_SKIP_GRID_SYNC))
#error "the ZF_TIMING_SKIP_* variants are GPU timing builds; the emulation tests results"
#endif
#if defined(ZF_TIMING_SKIP_STAGING) || defined(ZF_TIMING_SKIP_PRODUCTS)
#pragma nv_diag_suppress 128  // "loop is not reachable": the code after their early returns, on purpose
#endif

// exact-rounding math in both builds (setup.py and the JIT build do not pass --use_fast_math)
#ifndef ZF_CPU_EMULATION
ZF_DEVICE float zf_exp(float x) { return expf(x); }
ZF_DEVICE double zf_exp(double x) { return exp(x); }
ZF_DEVICE float zf_tanh(float x) { return tanhf(x); }
ZF_DEVICE double zf_tanh(double x) { return tanh(x); }
ZF_DEVICE float zf_fma(float a, float b, float c) { return fmaf(a, b, c); }
ZF_DEVICE double zf_fma(double a, double b, double c) { return fma(a, b, c); }
#else
template <typename T> inline T zf_exp(T x) { return std::exp(x); }
template <typename T> inline T zf_tanh(T x) { return std::tanh(x); }
template <typename T> inline T zf_fma(T a, T b, T c) { return std::fma(a, b, c); }
#endif
template <typename T>
ZF_DEVICE T zf_sigmoid(T x) { return T(1) / (T(1) + zf_exp(-x)); }

// One work item of a block's register-tiled product (both kernels' block matmuls): the TB x TM
// partial tile pp (row-major, zeroed first when `zero`, else accumulated into) plus, over
// k = ks, ks + ksplit, ... < kw, a[i][k] * w[j][k * wk], where a[i] = a0 + i * a_step (rows of
// A staged in shared memory) and w[j] a weight row (resident in shared memory with wk = 1, or
// read from global memory with its own stride). Inlined: a literal wk folds away.
template <typename T>
ZF_DEVICE void tile_fma(T* pp, bool zero, const T* a0, int a_step, const T* const (&w)[TM], long long wk,
                        int ks, int kw, int ksplit) {
#ifdef ZF_TIMING_SKIP_PRODUCTS
  return;
#endif
  T acc[TB][TM];
ZF_UNROLL
  for (int i = 0; i < TB; ++i)
ZF_UNROLL
    for (int j = 0; j < TM; ++j) acc[i][j] = zero ? T(0) : pp[i * TM + j];
  for (int k = ks; k < kw; k += ksplit) {
    T a[TB], b[TM];
ZF_UNROLL
    for (int i = 0; i < TB; ++i) a[i] = a0[i * a_step + k];
ZF_UNROLL
    for (int j = 0; j < TM; ++j) b[j] = w[j][k * wk];
ZF_UNROLL
    for (int i = 0; i < TB; ++i)
ZF_UNROLL
      for (int j = 0; j < TM; ++j) acc[i][j] = zf_fma(a[i], b[j], acc[i][j]);
  }
ZF_UNROLL
  for (int i = 0; i < TB; ++i)
ZF_UNROLL
    for (int j = 0; j < TM; ++j) pp[i * TM + j] = acc[i][j];
}

// Stage a chunk of the activations both kernels' block products read: columns [k0, k0 + kw) of
// rows [0, B) of A (row stride lda, written by other blocks in this launch: L2 loads) into As (row
// stride as) as columns [0, kwp) of rows [0, Bp), zeros at rows >= B and columns >= kw, every
// element through f (the identity, or the chain's activation). Where A, As and both strides are
// 16-byte aligned, each thread moves whole 16-byte vectors (4 floats, 8 bfloat16): a quarter (an
// eighth) of the loads, stores and index divisions of the element-wise loop, which stages up to
// 512 KB per block and step (the LSTM's dgates at B=32, H=1024). Both loops issue
// ZF_STAGE_BATCH loads per thread before their first store: one store per load in a plain loop
// waits out a whole L2 round trip per vector (nvcc does not move a global load above a shared
// store it cannot prove disjoint), 16-32 of them per thread and step at the TIMIT size. No
// barrier here.
template <typename S, typename F>
ZF_DEVICE void stage_chunk(S* As, int as, const S* A, long long lda, int B, int Bp, int k0, int kw, int kwp, F f) {
#ifdef ZF_TIMING_SKIP_STAGING
  return;
#endif
  constexpr int G = ZF_STAGE_BATCH;
  const int tid = zf_tid(), nt = zf_nthreads();
  const S zero = zf_narrow<S>(zf_acc_t<S>(0));
  constexpr int V = 16 / sizeof(S);
  const bool vec = ZF_STAGE_VECTORS && reinterpret_cast<std::uintptr_t>(A) % 16 == 0 &&
                   reinterpret_cast<std::uintptr_t>(As) % 16 == 0 && lda % V == 0 && k0 % V == 0 && as % V == 0;
  if (vec) {
    const int nv = (kwp + V - 1) / V;  // vectors per row; the last may reach past kwp: zeros
    const int total = Bp * nv;
    const int nt_rows = nt / nv, nt_cols = nt - nt_rows * nv;  // nt vectors = nt_rows rows + nt_cols
    for (int base = tid; base < total; base += G * nt) {
      zf_vec16 raw[G];
      int row[G], col[G];
      // the batch's vectors g < n (those before the chunk's end): all inside A's rows [0, B) and
      // columns < kw, or not
      const int n = (total - base + nt - 1) / nt < G ? (total - base + nt - 1) / nt : G;
      bool inside = true;
      int r = base / nv, c = base - r * nv;  // one division per batch; the rest by stepping
ZF_UNROLL
      for (int g = 0; g < G; ++g) {
        row[g] = r;
        col[g] = c * V;
        inside = inside && (g >= n || (r < B && c * V + V <= kw));
        r += nt_rows;
        c += nt_cols;
        if (c >= nv) c -= nv, ++r;
      }
      if (inside) {  // straight-line loads, all in flight at once (the common case)
        ZF_EMU_COUNT(kStageVectorsInside);
ZF_UNROLL
        for (int g = 0; g < G; ++g) {  // past the chunk's end: vector 0 again (never stored)
          const size_t at = static_cast<size_t>(row[g]) * lda + col[g];
          const size_t at0 = static_cast<size_t>(row[0]) * lda + col[0];
          raw[g] = zf_ldcg16(A + k0 + (g < n ? at : at0));  // (row[g < n ? g : 0] put row on the stack)
        }
      } else {  // a batch at the edges: element by element, zeros outside
        ZF_EMU_COUNT(kStageVectorsEdge);
ZF_UNROLL
        for (int g = 0; g < G; ++g) {
          S v[V];
          const bool live = g < n && row[g] < B;
          const S* src = A + static_cast<size_t>(row[g]) * lda + k0 + col[g];
ZF_UNROLL
          for (int i = 0; i < V; ++i) v[i] = (live && col[g] + i < kw) ? zf_ldcg(src + i) : zero;
          memcpy(&raw[g], v, 16);
        }
      }
ZF_UNROLL
      for (int g = 0; g < G; ++g) {  // then the stores
        if (g >= n) continue;
        S v[V];
        memcpy(v, &raw[g], 16);
ZF_UNROLL
        for (int i = 0; i < V; ++i) v[i] = f(v[i]);
        zf_vec16 out;
        memcpy(&out, v, 16);
        *reinterpret_cast<zf_vec16*>(As + static_cast<size_t>(row[g]) * as + col[g]) = out;
      }
    }
    return;
  }
  const int total = Bp * kwp;
  const int nt_rows = nt / kwp, nt_cols = nt - nt_rows * kwp;
  for (int base = tid; base < total; base += G * nt) {
    ZF_EMU_COUNT(kStageElements);
    S v[G];
    int row[G], col[G];
    int r = base / kwp, c = base - r * kwp;
ZF_UNROLL
    for (int g = 0; g < G; ++g) {
      const int idx = base + g * nt;
      row[g] = r;
      col[g] = c;
      r += nt_rows;
      c += nt_cols;
      if (c >= kwp) c -= kwp, ++r;
      v[g] = (idx < total && row[g] < B && col[g] < kw) ? zf_ldcg(A + static_cast<size_t>(row[g]) * lda + k0 + col[g])
                                                        : zero;
    }
ZF_UNROLL
    for (int g = 0; g < G; ++g)
      if (base + g * nt < total) As[row[g] * as + col[g]] = f(v[g]);
  }
}

// store(idx, load(idx)) for idx = tid, tid + nt, ... < n, each thread issuing ZF_STAGE_BATCH loads
// before their stores: the once-per-launch copies of the weight slices into shared memory (up to
// ~90 KB per block, 170 bf16 elements per thread at the TIMIT chain), which with one load per
// store wait out one round trip per element. n: elements of one block's shared memory (int).
template <typename V, typename Load, typename Store>
ZF_DEVICE void copy_batched(int n, Load load, Store store) {
  constexpr int G = ZF_STAGE_BATCH;
  const int tid = zf_tid(), nt = zf_nthreads();
  for (int base = tid; base < n; base += G * nt) {
    V v[G];
ZF_UNROLL
    for (int g = 0; g < G; ++g)
      if (base + g * nt < n) v[g] = load(base + g * nt);
ZF_UNROLL
    for (int g = 0; g < G; ++g)
      if (base + g * nt < n) store(base + g * nt, v[g]);
  }
}

// The elementwise stages' indexing: element e = b * n + u of a block's n columns starting at
// column c0, in row b of step t of a (T, B, width) tensor (an LSTM unit's gate i: width 4H)
ZF_HOST_DEVICE size_t slice_at(int t, int B, long long width, long long c0, int n, int e) {
  return (static_cast<size_t>(t) * B + e / n) * width + c0 + e % n;
}

// An LSTM unit's 4 gate values (i, f, g, o rows `stride` elements apart) of one step, as loaded:
// the 4 loads issued before any is used (one round trip, not 4)
template <typename S>
struct Gates4 {
  S v[4];
  ZF_DEVICE static Gates4 load(const S* p, long long stride) {
    Gates4 x;
ZF_UNROLL
    for (int i = 0; i < 4; ++i) x.v[i] = p[i * stride];
    return x;
  }
};

// The elementwise loop of a stage, e = tid, tid + nt, ... < n, whose per-element inputs (load(e):
// a struct of values as loaded, none converted, since converting a value waits for its load) do
// not depend on the stage's product: constructed before the product, it loads this thread's
// first element's inputs there, so their round trip overlaps the product's staging and barriers;
// at(e) hands them back for e == tid and loads any other element's. `load` is only called for
// e < n.
template <typename Load>
struct Prefetched {
  using In = decltype(std::declval<Load>()(0));
  Load load;
  In first{};
  ZF_DEVICE Prefetched(int n, Load l) : load(l) {
    if (zf_tid() < n) first = load(zf_tid());
  }
  ZF_DEVICE In at(int e) const { return e == zf_tid() ? first : load(e); }
};

// The TF32 tensor-core products per element of a block product (ZfLstmLaunch / ZfChainLaunch::tf32,
// plan.mma): 1, the operands rounded to TF32; 3 ("3xTF32"), each operand split into a TF32 high
// part and the TF32 rounding of the rest, a_hi b_lo + a_lo b_hi + a_hi b_hi (the small terms first):
// close to IEEE float32 products, at three MMAs. 0: no tensor cores (IEEE FMAs).
inline bool tf32_passes_valid(int passes) { return passes == 0 || passes == 1 || passes == 3; }

// The tile loops' common frame: this lane's four accumulators of a warp's 16 x 8 tile at pp[0..3]
// (zeroed first when `zero`, else accumulated into) plus step(acc, s) over the K steps s = ks,
// ks + ksplit, ... < ksteps, dealt alternately to two accumulators: two independent MMA chains in
// flight.
template <typename Step>
ZF_DEVICE void mma_two_chains(float* pp, bool zero, int ks, int ksteps, int ksplit, Step step) {
#ifdef ZF_TIMING_SKIP_PRODUCTS
  return;
#endif
  float d[2][4];
ZF_UNROLL
  for (int r = 0; r < 4; ++r) {
    d[0][r] = zero ? 0.f : pp[r];
    d[1][r] = 0.f;
  }
  int s = ks;
  for (; s + ksplit < ksteps; s += 2 * ksplit) {
    step(d[0], s);
    step(d[1], s + ksplit);
  }
  if (s < ksteps) step(d[0], s);
ZF_UNROLL
  for (int r = 0; r < 4; ++r) pp[r] = d[0][r] + d[1][r];
}

// One warp's 16 x 8 tile of the TF32 tensor-core products (both kernels' block products with
// plan.mma = passes, 1 or 3): the four accumulator elements of this lane at pp[0..3] (zeroed first
// when `zero`, else accumulated into) plus, over K steps s = ks, ks + ksplit, ... < ksteps of a
// staged chunk kw wide, A[16 x 8 step] * W[8 rows x 8 step]^T. a_lo: the lane's A row g at column
// t of the chunk (row g + 8 is a_step further); w: its W row (the tile's row g) at column t,
// elements wk apart along k (1 when resident in shared memory). Columns past kw of W are not read
// (they may lie outside the matrix); those of A are zero (mma_two_chains: two MMA chains).
ZF_DEVICE void mma_tile_tf32(float* pp, bool zero, const float* a_lo, int a_step, const float* w, long long wk,
                             int t, int ks, int ksteps, int ksplit, int kw, int passes) {
  const float* a_hi = a_lo + 8 * a_step;
  auto step = [&](float(&acc)[4], int s) {
    const int k = s * 8;
    const float a[4] = {a_lo[k], a_hi[k], a_lo[k + 4], a_hi[k + 4]};
    const float b[2] = {k + t < kw ? w[k * wk] : 0.f, k + t + 4 < kw ? w[(k + 4) * wk] : 0.f};
    if (passes == 1) {
      zf_mma_tf32(acc, a, b);
      return;
    }
    float a_big[4], a_small[4], b_big[2], b_small[2];
ZF_UNROLL
    for (int i = 0; i < 4; ++i) {
      a_big[i] = zf_to_tf32(a[i]);
      a_small[i] = a[i] - a_big[i];  // exact in float32; zf_mma_tf32 rounds it to TF32
    }
ZF_UNROLL
    for (int i = 0; i < 2; ++i) {
      b_big[i] = zf_to_tf32(b[i]);
      b_small[i] = b[i] - b_big[i];
    }
    zf_mma_tf32(acc, a_big, b_small);
    zf_mma_tf32(acc, a_small, b_big);
    zf_mma_tf32(acc, a_big, b_big);
  };
  mma_two_chains(pp, zero, ks, ksteps, ksplit, step);
}

// One warp's 16 x 8 tile of bfloat16 tensor-core products (plan.mma with bfloat16 storage): as
// mma_tile_tf32, over K steps of 16. a_lo: the lane's A row g at column 2t of the staged chunk (row
// g + 8 is a_step further), read as pairs of bfloat16 (4-byte aligned: even strides and offsets;
// zeros past the chunk). w: the lane's W row (the tile's row g) at column 2t, either resident
// (wk = 0: a row zero-padded to whole K steps, pairs read as one register, no K guard; real
// columns past the chunk meet A's zeros) or in global memory (wk > 0: elements wk apart, read only
// below kw_t = the chunk's width - 2t, so nothing past the matrix).
ZF_DEVICE void mma_tile_bf16(float* pp, bool zero, const zf_bf16* a_lo, int a_step, const zf_bf16* w, long long wk,
                             int kw_t, int ks, int ksteps, int ksplit) {
  const zf_bf16* a_hi = a_lo + 8 * a_step;
  auto w_pair = [&](int k) -> unsigned {  // W columns 2t + k, 2t + k + 1
    if (wk == 0) return zf_bf16x2(w + k);
    const unsigned lo = k < kw_t ? zf_bf16_bits(w[k * wk]) : 0u;
    const unsigned hi = k + 1 < kw_t ? zf_bf16_bits(w[(k + 1) * wk]) : 0u;
    return lo | (hi << 16);
  };
  auto step = [&](float(&acc)[4], int s) {
    const int k = s * 16;
    const unsigned a[4] = {zf_bf16x2(a_lo + k), zf_bf16x2(a_hi + k), zf_bf16x2(a_lo + k + 8), zf_bf16x2(a_hi + k + 8)};
    const unsigned b[2] = {w_pair(k), w_pair(k + 8)};
    zf_mma_bf16(acc, a, b);
  };
  mma_two_chains(pp, zero, ks, ksteps, ksplit, step);
}

// where tile_sum finds accumulator element (row, col) of a 16 x 8 tile: lane (row % 8) * 4 +
// col / 2, its register (row / 8) * 2 + col % 2
ZF_HOST_DEVICE int mma_elem(int row, int col) { return ((row & 7) * 4 + (col >> 1)) * 4 + (row >> 3) * 2 + (col & 1); }

inline void set_err(char* err, int errlen, const char* msg) {
  if (err && errlen > 0) {
    std::strncpy(err, msg, errlen - 1);
    err[errlen - 1] = '\0';
  }
}

// The planners' tensor-core setting: *mma = TF32 products per element for elements of es bytes
// (float64: 0, IEEE; bfloat16, es = 2: always 1, one bf16 MMA, whatever `tf32` says), or
// ZF_DOES_NOT_FIT naming `op` when `tf32` is not 0, 1 or 3 or the tiles would lack whole warps.
inline int plan_tf32(int tf32, int es, int threads, const char* op, int* mma, char* err, int errlen) {
  char msg[256];
  if (!tf32_passes_valid(tf32)) {
    std::snprintf(msg, sizeof msg, "the CUDA %s's tf32 setting must be 0 (IEEE), 1 (TF32) or 3 (3xTF32), got %d",
                  op, tf32);
    set_err(err, errlen, msg);
    return ZF_DOES_NOT_FIT;
  }
  *mma = es == 4 ? tf32 : es == 2 ? 1 : 0;
  if (*mma && threads % 32 != 0) {
    std::snprintf(msg, sizeof msg, "the CUDA %s's %s tensor-core tiles need whole warps: threads must be a "
                  "multiple of 32, got %d", op, es == 2 ? "bfloat16" : "TF32", threads);
    set_err(err, errlen, msg);
    return ZF_DOES_NOT_FIT;
  }
  return ZF_OK;
}

inline long long align16(long long n) { return (n + 15) / 16 * 16; }
inline int round_up(int n, int m) { return (n + m - 1) / m * m; }
inline int cdiv(int a, int b) { return (a + b - 1) / b; }

// The K split of the tensor-core tiles: the split with the least K work on the busiest warp,
// ceil(tiles * ks / warps) items of 1 / ks of K each (10 tiles on 8 warps: 4, i.e. 1.25 tiles'
// work per warp instead of 2); at most 8 and at most the K steps (of k_step: 8 TF32, 16 bf16).
inline int mma_ksplit(int tiles, int warps, int k, int k_step = 8) {
  const int k_steps = cdiv(k, k_step);
  int best = 1;
  for (int ks = 2; ks <= 8 && ks <= k_steps; ++ks)
    if (static_cast<long long>(cdiv(tiles * ks, warps)) * best < static_cast<long long>(cdiv(tiles * best, warps)) * ks)
      best = ks;
  return best;
}

// Launch settings after defaults: a caller's ZfLstmLaunch / ZfChainLaunch (0 = default) over
// the device's limits (CUDA) or the emulated device (4 SMs of 227 KB, 8 threads per block).
struct Launch {
  int threads, units;
  long long smem_limit;
  int num_sms;     // SMs the plan partitions over (a test may pretend another count)
  int device_sms;  // SMs of the device (the co-residency check)
  int tf32;        // float32 block products on the tensor cores (the caller's tf32)
};

// the caller's tf32 request (ZfLstmLaunch::tf32, ZfChainLaunch::tf32)
template <typename Cfg>
int tf32_requested(const Cfg* cfg) { return cfg ? cfg->tf32 : 0; }

#ifndef ZF_CPU_EMULATION
inline int cuda_fail(cudaError_t e, const char* op, const char* what, char* err, int errlen) {
  char msg[512];
  std::snprintf(msg, sizeof msg, "zf_kernels %s: %s failed: %s", op, what, cudaGetErrorString(e));
  set_err(err, errlen, msg);
  // reported here; left in the runtime's last error, torch's next kernel launch check would raise
  // it again against an unrelated op (a sticky error comes back anyway)
  (void)cudaGetLastError();
  return ZF_CUDA_ERROR;
}

#define ZF_CUDA_TRY(call, what)                                         \
  do {                                                                  \
    cudaError_t e_ = (call);                                            \
    if (e_ != cudaSuccess) return cuda_fail(e_, op, what, err, errlen); \
  } while (0)

template <typename Cfg>
int resolve_launch(const Cfg* cfg, int es, const char* op, Launch* L, char* err, int errlen) {
  int dev = 0, sms = 0, smem_optin = 0, coop = 0;
  ZF_CUDA_TRY(cudaGetDevice(&dev), "cudaGetDevice");
  ZF_CUDA_TRY(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute(SMs)");
  ZF_CUDA_TRY(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev),
              "cudaDeviceGetAttribute(shared memory)");
  ZF_CUDA_TRY(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev),
              "cudaDeviceGetAttribute(cooperative launch)");
  if (!coop) {
    char msg[256];
    std::snprintf(msg, sizeof msg, "the CUDA %s needs a device that supports cooperative launches", op);
    set_err(err, errlen, msg);
    return ZF_DOES_NOT_FIT;
  }
  L->threads = cfg && cfg->threads > 0 ? cfg->threads : DEFAULT_THREADS;
  L->units = cfg ? cfg->units_per_block : 0;
  L->smem_limit = cfg && cfg->smem_limit > 0 ? cfg->smem_limit : smem_optin;
  L->num_sms = cfg && cfg->num_sms > 0 ? cfg->num_sms : sms;
  L->device_sms = sms;
  L->tf32 = tf32_requested(cfg);
  // the tensor-core tiles (float32 with tf32 set; bfloat16 always, plan_tf32) are a trap below
  // sm_80, which would take the whole CUDA context down: refuse here instead
  if ((es == 4 && L->tf32) || es == 2) {
    int major = 0;
    ZF_CUDA_TRY(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev),
                "cudaDeviceGetAttribute(compute capability)");
    if (major < 8) {
      char msg[256];
      std::snprintf(msg, sizeof msg, "the CUDA %s's %s tensor-core tiles need compute capability 8.0 or "
                    "newer, the device has %d.x", op, es == 2 ? "bfloat16" : "TF32", major);
      set_err(err, errlen, msg);
      return ZF_DOES_NOT_FIT;
    }
  }
  return ZF_OK;
}

// What the driver told us about a kernel on a device, so that a launch does not ask again: the
// dynamic shared memory it was allowed (cudaFuncSetAttribute) and the blocks per SM at each
// (threads, shared memory) (cudaOccupancyMaxActiveBlocksPerMultiprocessor: a kernel's registers
// do not change). Two driver calls less per launch, and none while a CUDA graph is captured after
// an eager warm-up step. `f(facts)` runs under the lock. (The map and its lock live in plain
// functions: a function template's static would be one per lambda type.)
struct KernelFacts {
  int smem_allowed = 0;
  std::map<std::pair<int, int>, int> blocks_per_sm;
};
inline std::mutex& kernel_facts_lock() {
  static std::mutex mu;
  return mu;
}
inline KernelFacts& kernel_facts(const void* kernel, int device) {  // with kernel_facts_lock() held
  static std::map<std::pair<const void*, int>, KernelFacts> facts;
  return facts[{kernel, device}];
}
template <typename F>
auto with_kernel_facts(const void* kernel, int device, F f) {
  std::lock_guard<std::mutex> lock(kernel_facts_lock());
  return f(kernel_facts(kernel, device));
}

// `kernel(params)` as one cooperative grid of params.plan's blocks x threads with its smem_bytes of
// dynamic shared memory (ZfLstmPlan, ZfChainPlan: the same fields); ZF_DOES_NOT_FIT when the
// blocks cannot all be resident at once (the grid syncs would wait forever), the message naming
// "the CUDA <op> <dir>" ("the CUDA lstm forward") and `shape`.
template <typename P>
int cooperative_launch(void (*kernel)(P), P& params, int device_sms, void* stream, const char* op, const char* dir,
                       const char* shape, char* err, int errlen) {
  const int blocks = params.plan.blocks, threads = params.plan.threads, units = params.plan.units_per_block;
  const int smem = static_cast<int>(params.plan.smem_bytes);
  const void* fn = reinterpret_cast<const void*>(kernel);
  int device = 0;
  ZF_CUDA_TRY(cudaGetDevice(&device), "cudaGetDevice");
  if (with_kernel_facts(fn, device, [&](KernelFacts& k) { return k.smem_allowed < smem; })) {
    ZF_CUDA_TRY(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, smem),
                "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
    with_kernel_facts(fn, device, [&](KernelFacts& k) { return k.smem_allowed = std::max(k.smem_allowed, smem); });
  }
  int per_sm = with_kernel_facts(fn, device, [&](KernelFacts& k) {
    const auto it = k.blocks_per_sm.find({threads, smem});
    return it == k.blocks_per_sm.end() ? -1 : it->second;
  });
  if (per_sm < 0) {
    ZF_CUDA_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem),
                "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
    with_kernel_facts(fn, device, [&](KernelFacts& k) { return k.blocks_per_sm[{threads, smem}] = per_sm; });
  }
  if (static_cast<long long>(per_sm) * device_sms < blocks) {
    char what[64], msg[640];
    std::snprintf(what, sizeof what, "the CUDA %s %s", op, dir);
    std::snprintf(msg, sizeof msg,
                  "%s cannot run %s: its %d blocks (%d hidden units, %d threads and %d bytes of shared "
                  "memory each) must all be resident at once for the grid sync, but the device holds %d "
                  "such blocks per SM x %d SMs = %d (use backend='torch' or 'triton')",
                  what, shape, blocks, units, threads, smem, per_sm, device_sms, per_sm * device_sms);
    set_err(err, errlen, msg);
    return ZF_DOES_NOT_FIT;
  }
  void* args[] = {static_cast<void*>(&params)};
  ZF_CUDA_TRY(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), dim3(blocks), dim3(threads),
                                          args, static_cast<size_t>(smem), static_cast<cudaStream_t>(stream)),
              "cudaLaunchCooperativeKernel");
  return ZF_OK;
}

#else  // ZF_CPU_EMULATION

template <typename Cfg>
int resolve_launch(const Cfg* cfg, int, const char*, Launch* L, char*, int) {
  L->threads = cfg && cfg->threads > 0 ? cfg->threads : 8;
  L->units = cfg ? cfg->units_per_block : 0;
  L->smem_limit = cfg && cfg->smem_limit > 0 ? cfg->smem_limit : 227 * 1024;
  L->num_sms = cfg && cfg->num_sms > 0 ? cfg->num_sms : 4;
  L->device_sms = L->num_sms;
  L->tf32 = tf32_requested(cfg);
  return ZF_OK;
}

template <typename P>
int cooperative_launch(void (*kernel)(P), P& params, int, void*, const char*, const char*, const char*, char* err,
                       int errlen) {
  try {
    zf_emu::launch(params.plan.blocks, params.plan.threads, static_cast<size_t>(params.plan.smem_bytes),
                   [&] { kernel(params); });
  } catch (const std::exception& e) {
    set_err(err, errlen, e.what());
    return ZF_CUDA_ERROR;
  }
  return ZF_OK;
}
#endif

}  // namespace zf_persistent

#endif  // ZF_PERSISTENT_H
