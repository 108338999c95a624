// Persistent Z-forcing chain (ops.zforcing_chain, backend="cuda"): one cooperative launch per
// direction, three grid syncs per step (see csrc/README.md and
// zf_kernels/ops/recurrence/naive.py for the equations).
//
// Partition: block `bid` owns hidden units j in [bid*U, bid*U + U) (LSTM stage), posterior
// hidden units m in [bid*Mb, ...) and latent units in [bid*Zb, ...), for all T steps. Its weight
// slices (ZfChainPlan) stay in shared memory where they fit: always the W_hh slice, then the
// folded W_comb = W_iz W_gz, W_qh and W_q2 slices in that order; a slice that does not fit is
// read from global memory (L2) each step. Activations written by other blocks (h, s, z;
// backward dgates, dparams, ds) are staged chunk by chunk with L2 loads after the grid sync.
//
// Forward, step t:   s_t = h_{t-1} W_qh^T + post_x_t (m-slice); pre = h_{t-1} W_hh^T   | grid sync
//                    [mu, lv] = clamp(act(s_t) W_q2^T + b_q2); z (z-slice)            | grid sync
//                    gates = gx_t + pre + z_t W_comb^T; cell                          | grid sync
// Backward, step t:  dh = grad_h + pre (= dgates_{t+1} W_hh) + ds_{t+1} W_qh; cell     | grid sync
//                    dz = grad_z + dgates_t W_comb; dparams, grad_eps; pre = dgates_t W_hh | grid sync
//                    ds_t = (dparams_t W_q2) * act'(s_t)                              | grid sync
// (the two products of one activation share one staged pass, block_mm2; `pre` stays in shared
// memory from one stage to the later one that needs it)
//
// Storage types: float32, float64, and bfloat16 (every tensor but the cell states c0, c, grad_c,
// dc, which stay float32; all arithmetic in float32; products on bfloat16 tensor-core tiles).
//
// No torch headers here: compiled by nvcc (zf_kernels._C) and, with -DZF_CPU_EMULATION, by g++
// as a CPU library for the tests (zf_device.h).
#include "chain_kernels.h"
#include "zf_device.h"
#include "zf_persistent.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <type_traits>

namespace {

using namespace zf_persistent;

// the model's MLP activation: clamp(leaky_relu(x, 1/3), -3, 3); NaN stays NaN (torch.clamp)
template <typename T>
ZF_DEVICE T leaky_clamp(T x) {
  const T y = x >= T(0) ? x : x * T(1.0 / 3.0);
  return y < T(-3) ? T(-3) : (y > T(3) ? T(3) : y);
}
// its gradient times g, as torch's autograd: leaky_relu passes g at x > 0 and g * slope at
// x <= 0; the clamp passes it on the closed interval [-3, 3] (zero outside and for NaN)
template <typename T>
ZF_DEVICE T leaky_clamp_backward(T x, T g) {
  const T y = x >= T(0) ? x : x * T(1.0 / 3.0);
  if (!(y >= T(-3) && y <= T(3))) return T(0);
  return x > T(0) ? g : g * T(1.0 / 3.0);
}

// S: the storage type; the cell states and the arithmetic: A = zf_acc_t<S>
template <typename S>
struct ChainParams {
  using A = zf_acc_t<S>;
  S* gates;
  const S *post_x, *eps, *h0;
  const A* c0;
  const S *w_qh, *w_q2, *b_q2, *w_comb, *w_hh;
  S *h, *z, *mu, *s;
  A* c;
  S* lv;
  unsigned char* okmask;
  const S* grad_h;
  const A* grad_c;
  const S *grad_z, *grad_mu, *grad_lv;
  const A* c_saved;
  const S *lv_saved, *s_saved;
  const unsigned char* ok_saved;
  S *dparams, *ds, *grad_eps;
  A* dc;
  int T_, B, H, M, Z;
  ZfChainPlan plan;
};

// One product A (B x K) @ W_slice^T, W_slice = `rows` rows of a global matrix: local row r is
// segment r / segn, unit u = r % segn (clamped to the `count` valid ones), global row
// seg * segstride + base + u; element (row, k) at gw[row * ldw + k * kstride] (a transposed
// slice has ldw = 1). `sw`: the resident copy (row r at sw + r * ws, k contiguous) or null.
template <typename T>
struct Mm {
  const T* gw;
  long long ldw, kstride, segstride, base;
  const T* sw;
  int ws, K, rows, segn, count, rgm, ksplit;
};

template <typename T>
ZF_DEVICE long long mm_row(const Mm<T>& mm, int r) {
  if (r > mm.rows - 1) r = mm.rows - 1;
  const int seg = r / mm.segn;
  int u = r - seg * mm.segn;
  if (u > mm.count - 1) u = mm.count - 1;
  return seg * mm.segstride + mm.base + u;
}

// copy the slice into shared memory (once per launch); bfloat16 rows also get zeros from K to the
// row stride (the bf16 tiles read whole K steps of 16 without a guard)
template <typename T>
ZF_DEVICE void mm_load(const Mm<T>& mm, T* sw) {
  const int tid = zf_tid(), nt = zf_nthreads();
  if constexpr (is_bf16<T>) {
    const int pad = mm.ws - mm.K;
    for (long long idx = tid; idx < static_cast<long long>(mm.rows) * pad; idx += nt)
      sw[static_cast<size_t>(idx / pad) * mm.ws + mm.K + idx % pad] = zf_bf16_from(0.f);
  }
  // element idx of the copy: row r, column k of the slice
  auto at = [&](int idx, int& r, int& k) {
    if (mm.kstride == 1) {  // consecutive threads read consecutive k
      r = idx / mm.K;
      k = idx - r * mm.K;
    } else {                // transposed: consecutive threads read consecutive rows (columns)
      k = idx / mm.rows;
      r = idx - k * mm.rows;
    }
  };
  copy_batched<T>(
      mm.rows * mm.K,
      [&](int idx) {
        int r, k;
        at(idx, r, k);
        return mm.gw[mm_row(mm, r) * mm.ldw + k * mm.kstride];
      },
      [&](int idx, T v) {
        int r, k;
        at(idx, r, k);
        sw[static_cast<size_t>(r) * mm.ws + k] = v;
      });
}

// One product of a block_mm pass: the slice, whether this block computes it (a block may own no
// units of a stage) and where its partial sums go.
template <typename T>
struct Prod {
  const Mm<T>* mm;
  bool on;
  zf_acc_t<T>* part;
};

template <typename T>
ZF_DEVICE int prod_items(const Prod<T>& q, const ZfChainPlan& p) {
  return q.on ? p.row_groups_b * q.mm->rgm * q.mm->ksplit : 0;
}

// Work item `item` of product q on the staged chunk (kw columns from k0), register tiles:
// part[(grp * ksplit + ks) * TB*TM + ib * TM + im] (+)= sum_k A[b, k] W_slice[m, k] for
// b = bg + ib * rgb, m = mg + im * rgm, grp = bg * rgm + mg, k = ks (mod ksplit).
template <typename T>
ZF_DEVICE void fma_item(const Prod<T>& q, int item, const T* As, int k0, int kw, const ZfChainPlan& p) {
  const Mm<T>& mm = *q.mm;
  const int bgs = p.row_groups_b, mgs = mm.rgm, ksplit = mm.ksplit, as = p.a_stride;
  const bool resident = mm.sw != nullptr;
  const int ks = item % ksplit, grp = item / ksplit;
  const int mg = grp % mgs, bg = grp / mgs;
  const T* w[TM];  // rows mg, mg + mgs, ... (clamped: reads stay in bounds; entries past the last row go unread)
ZF_UNROLL
  for (int j = 0; j < TM; ++j) {
    int r = mg + j * mgs;
    if (r > mm.rows - 1) r = mm.rows - 1;
    w[j] = resident ? mm.sw + static_cast<size_t>(r) * mm.ws + k0
                    : mm.gw + mm_row(mm, r) * mm.ldw + static_cast<long long>(k0) * mm.kstride;
  }
  tile_fma(q.part + static_cast<size_t>(item) * (TB * TM), k0 == 0, As + bg * as, bgs * as, w,
           resident ? 1 : mm.kstride, ks, kw, ksplit);
}

// The same with tensor-core tiles (plan.mma; one warp per item): item = tile * ksplit + ks,
// tile = tb * rgm + tm covers batch rows tb * 16 .. + 15 and slice rows tm * 8 .. + 7 (clamped to
// the last row: those product columns go unread), summing K steps ks, ks + ksplit, ... into
// part[item * 128 + lane * 4 + r] (mma_tile_tf32 / mma_tile_bf16; the slice resident or read from
// global memory).
template <typename T>
ZF_DEVICE void mma_item(const Prod<T>& q, int item, const T* As, int k0, int kw, const ZfChainPlan& p) {
  if constexpr (!std::is_same<T, double>::value) {
    const Mm<T>& mm = *q.mm;
    const int lane = zf_tid() & 31, g = lane >> 2, t = lane & 3, as = p.a_stride;
    const int ks = item % mm.ksplit, tile = item / mm.ksplit;
    const int tb = tile / mm.rgm, tm = tile - tb * mm.rgm;
    int r = tm * 8 + g;
    if (r > mm.rows - 1) r = mm.rows - 1;
    const bool resident = mm.sw != nullptr;
    const int kt = is_bf16<T> ? 2 * t : t;  // the lane's first column: bf16 fragments hold pairs
    const T* w = resident ? mm.sw + static_cast<size_t>(r) * mm.ws + k0 + kt
                          : mm.gw + mm_row(mm, r) * mm.ldw + static_cast<long long>(k0 + kt) * mm.kstride;
    float* pp = q.part + static_cast<size_t>(item) * 128 + lane * 4;
    const T* a = As + (tb * 16 + g) * as + kt;
    if constexpr (is_bf16<T>) {
      mma_tile_bf16(pp, k0 == 0, a, as, w, resident ? 0 : mm.kstride, kw - kt, ks, (kw + 15) / 16, mm.ksplit);
    } else {
      mma_tile_tf32(pp, k0 == 0, a, as, w, resident ? 1 : mm.kstride, t, ks, (kw + 7) / 8, mm.ksplit, kw, p.mma);
    }
  }
}

// The products q0 and q1 (either may be off) of the same activations A (B x K, row stride lda,
// written by other blocks; both slices have K columns): A is staged once, in kc-wide chunks, into
// As (through leaky_clamp when `act`; rows >= B, and for the tensor-core tiles the columns up to
// the next multiple of 8, are 0), and each chunk feeds both products' work items (threads for the
// register tiles, warps for the tensor-core tiles; tile_sum reads either layout). Ends with a
// block barrier after which both partial sums are complete.
template <typename T>
ZF_DEVICE void block_mm2(const T* A, int lda, bool act, const Prod<T>& q0, const Prod<T>& q1, T* As, int B,
                         const ZfChainPlan& p) {
  const int tid = zf_tid(), nt = zf_nthreads();
  const int Bp = p.row_groups_b * (p.mma ? 16 : TB);
  const int n0 = prod_items(q0, p), n1 = prod_items(q1, p);
  const int K = (q0.on ? q0.mm : q1.mm)->K, as = p.a_stride;
  const int kc = p.kc < K ? p.kc : K;
  const int kstep = mma_k_step(sizeof(T));  // the tensor-core tiles' K step
  for (int k0 = 0; k0 < K; k0 += kc) {
    const int kw = (K - k0 < kc) ? K - k0 : kc;
    const int kwp = p.mma ? (kw + kstep - 1) / kstep * kstep : kw;
    stage_chunk(As, as, A, lda, B, Bp, k0, kw, kwp,
                [act](T v) { return act ? zf_narrow<T>(leaky_clamp(zf_widen(v))) : v; });
    zf_block_sync();
    if (p.mma) {  // the tensor-core tiles (bfloat16: always, plan_tf32)
      for (int item = tid >> 5; item < n0 + n1; item += nt >> 5)  // uniform across a warp
        item < n0 ? mma_item(q0, item, As, k0, kw, p) : mma_item(q1, item - n0, As, k0, kw, p);
    } else if constexpr (!is_bf16<T>) {
      for (int item = tid; item < n0 + n1; item += nt)
        item < n0 ? fma_item(q0, item, As, k0, kw, p) : fma_item(q1, item - n0, As, k0, kw, p);
    }
    zf_block_sync();  // part complete; As free for the next chunk
  }
}

// one product: A @ W_slice^T into `part`
template <typename T>
ZF_DEVICE void block_mm(const T* A, int lda, bool act, const Mm<T>& mm, T* As,
                        zf_acc_t<T>* part, int B, const ZfChainPlan& p) {
  block_mm2(A, lda, act, Prod<T>{&mm, true, part}, Prod<T>{&mm, false, part}, As, B, p);
}

// sum over the ksplit partial tiles of element (b, m) of the last product
template <typename T, typename S>
ZF_DEVICE T tile_sum(const T* part, int b, int m, const Mm<S>& mm, const ZfChainPlan& p) {
  if (p.mma) {  // element (b % 16, m % 8) of tile (b / 16, m / 8)
    const T* pp = part + static_cast<size_t>(((b >> 4) * mm.rgm + (m >> 3)) * mm.ksplit) * 128 + mma_elem(b & 15, m & 7);
    T s = T(0);
    for (int ks = 0; ks < mm.ksplit; ++ks) s += pp[static_cast<size_t>(ks) * 128];
    return s;
  }
  const int bg = b % p.row_groups_b, ib = b / p.row_groups_b;
  const int mg = m % mm.rgm, im = m / mm.rgm;
  const T* pp = part + static_cast<size_t>((bg * mm.rgm + mg) * mm.ksplit) * (TB * TM) + ib * TM + im;
  T s = T(0);
  for (int ks = 0; ks < mm.ksplit; ++ks) s += pp[static_cast<size_t>(ks) * (TB * TM)];
  return s;
}

template <typename T>
ZF_DEVICE Mm<T> make_mm(const ZfChainPlan& p, int i, unsigned char* smem, const T* gw, long long ldw,
                        long long kstride, int segn, long long segstride, long long base, int limit) {
  Mm<T> mm;
  mm.gw = gw;
  mm.ldw = ldw;
  mm.kstride = kstride;
  mm.segstride = segstride;
  mm.base = base;
  mm.sw = (p.resident >> i) & 1 ? reinterpret_cast<const T*>(smem + p.w_offset[i]) : nullptr;
  mm.ws = p.w_stride[i];
  mm.K = p.k[i];
  mm.rows = p.rows[i];
  mm.segn = segn;
  const long long left = limit - base;
  mm.count = left <= 0 ? 0 : (left < segn ? static_cast<int>(left) : segn);
  mm.rgm = p.row_groups_m[i];
  mm.ksplit = p.ksplit[i];
  return mm;
}

template <typename T>
ZF_DEVICE void load_resident(const Mm<T>& mm, int i, const ZfChainPlan& p, unsigned char* smem) {
  if (mm.sw != nullptr && mm.count > 0) mm_load(mm, reinterpret_cast<T*>(smem + p.w_offset[i]));
}

// Per-element inputs of the elementwise stages that no block writes during the launch, as loaded
// (zf_persistent.h: Prefetched loads this thread's first element's before the stage's product).
// Forward stage 2: the posterior's output biases (mu, logvar rows) and the noise.
template <typename T>
struct SampleIn {
  T b_mu, b_lv, eps;
};
// Backward stage 1: the pre-activations, grad h, the cell state before and after the step, grad c.
template <typename T>
struct CellBwdIn {
  Gates4<T> z;
  T grad_h;
  zf_acc_t<T> c_prev, c, grad_c;
};
// Backward stage 2: grad z, the noise, the saved logvar, grad mu, grad logvar, the clamp mask.
template <typename T>
struct SampleBwdIn {
  T grad_z, eps, lv, grad_mu, grad_lv;
  unsigned char ok_mu, ok_lv;
};

template <typename T>
ZF_GLOBAL void chain_fwd_kernel(ChainParams<T> P) {
  using A = zf_acc_t<T>;
  unsigned char* smem = zf_dynamic_smem();
  const ZfChainPlan& p = P.plan;
  A* part = reinterpret_cast<A*>(smem + p.resident_bytes);
  A* part_hh = reinterpret_cast<A*>(smem + p.resident_bytes + p.pair_offset);
  A* cs = reinterpret_cast<A*>(smem + p.resident_bytes + p.part_bytes);
  A* pre = reinterpret_cast<A*>(smem + p.resident_bytes + p.part_bytes + p.state_bytes);  // B x 4U
  T* As = reinterpret_cast<T*>(smem + p.resident_bytes + p.part_bytes + p.state_bytes + p.pre_bytes);
  const int tid = zf_tid(), nt = zf_nthreads(), bid = zf_bid();
  const int H = P.H, B = P.B, M = P.M, Z = P.Z, T_ = P.T_;
  const int U = p.units_per_block, Mb = p.m_per_block, Zb = p.z_per_block;
  const long long j0 = static_cast<long long>(bid) * U, m0 = static_cast<long long>(bid) * Mb,
                  z0 = static_cast<long long>(bid) * Zb;
  const Mm<T> mhh = make_mm<T>(p, 0, smem, P.w_hh, H, 1, U, H, j0, H);
  const Mm<T> mcomb = make_mm<T>(p, 1, smem, P.w_comb, Z, 1, U, H, j0, H);
  const Mm<T> mqh = make_mm<T>(p, 2, smem, P.w_qh, H, 1, Mb, 0, m0, M);
  const Mm<T> mq2 = make_mm<T>(p, 3, smem, P.w_q2, M, 1, Zb, Z, z0, Z);
  load_resident(mhh, 0, p, smem);
  load_resident(mcomb, 1, p, smem);
  load_resident(mqh, 2, p, smem);
  load_resident(mq2, 3, p, smem);
  const int nu = mhh.count, nm = mqh.count, nz = mq2.count;
  copy_batched<A>(
      B * U, [&](int e) { return e % U < nu ? P.c0[static_cast<size_t>(e / U) * H + j0 + e % U] : A(0); },
      [&](int e, A v) { cs[e] = v; });
  zf_block_sync();
  const size_t BH = static_cast<size_t>(B) * H, BM = static_cast<size_t>(B) * M,
               BZ = static_cast<size_t>(B) * Z;
  for (int t = 0; t < T_; ++t) {
    const T* hprev = t == 0 ? P.h0 : P.h + (t - 1) * BH;
    // stage 1: s_t = h_{t-1} W_qh^T + post_x_t for this block's m, and from the same staged
    // h_{t-1} the recurrent part of this block's gates, h_{t-1} W_hh^T, kept in `pre` for stage 3
    // (h_{t-1} is staged once per step, and stage 3 is left with the short z_t W_comb^T)
    if (nm > 0 || nu > 0) {
      auto s_at = [&](int e) { return slice_at(t, B, M, m0, nm, e); };
      const Prefetched post_x(B * nm, [&](int e) { return P.post_x[s_at(e)]; });
      block_mm2(hprev, H, false, Prod<T>{&mqh, nm > 0, part}, Prod<T>{&mhh, nu > 0, part_hh}, As, B,
                p);
      for (int e = tid; e < B * nm; e += nt)
        P.s[s_at(e)] = zf_narrow<T>(tile_sum(part, e / nm, e % nm, mqh, p) + zf_widen(post_x.at(e)));
      if (nu > 0)
        for (int e = tid; e < B * 4 * U; e += nt) pre[e] = tile_sum(part_hh, e / (4 * U), e % (4 * U), mhh, p);
    }
    zf_grid_sync();  // s_t complete
    // stage 2: [mu, lv] = clamp(act(s_t) W_q2^T + b_q2, -8, 8); z = mu + exp(lv / 2) eps
    if (nz > 0) {
      const Prefetched in(B * nz, [&](int e) {
        const long long zz = z0 + e % nz;
        return SampleIn<T>{P.b_q2[zz], P.b_q2[Z + zz], P.eps[slice_at(t, B, Z, z0, nz, e)]};
      });
      block_mm(P.s + t * BM, M, true, mq2, As, part, B, p);
      for (int e = tid; e < B * nz; e += nt) {
        const int b = e / nz, u = e % nz;
        const long long zz = z0 + u;
        const SampleIn<T> x = in.at(e);
        const A pm = tile_sum(part, b, u, mq2, p) + zf_widen(x.b_mu);
        const A pl = tile_sum(part, b, Zb + u, mq2, p) + zf_widen(x.b_lv);
        const A mu = pm < A(-8) ? A(-8) : (pm > A(8) ? A(8) : pm);
        const A lv = pl < A(-8) ? A(-8) : (pl > A(8) ? A(8) : pl);
        const size_t o = t * BZ + static_cast<size_t>(b) * Z + zz;
        P.mu[o] = zf_narrow<T>(mu);
        P.lv[o] = zf_narrow<T>(lv);
        P.z[o] = zf_narrow<T>(mu + zf_exp(A(0.5) * lv) * zf_widen(x.eps));
        unsigned char* ok = P.okmask + 2 * (t * BZ + static_cast<size_t>(b) * Z) + zz;
        ok[0] = (pm >= A(-8) && pm <= A(8)) ? 1 : 0;  // the closed interval (clamp_ref's)
        ok[Z] = (pl >= A(-8) && pl <= A(8)) ? 1 : 0;
      }
    }
    zf_grid_sync();  // z_t complete
    // stage 3: gates = gx_t + h_{t-1} W_hh^T (from stage 1) + z_t W_comb^T; LSTM cell for this
    // block's units
    if (nu > 0) {
      auto gates_at = [&](int e) { return P.gates + slice_at(t, B, 4 * H, j0, nu, e); };
      const Prefetched gx(B * nu, [&](int e) { return Gates4<T>::load(gates_at(e), H); });
      block_mm(static_cast<const T*>(P.z + t * BZ), Z, false, mcomb, As, part, B, p);
      for (int e = tid; e < B * nu; e += nt) {
        const int b = e / nu, u = e % nu;
        const long long j = j0 + u;
        T* g = gates_at(e);
        const Gates4<T> x = gx.at(e);
        const A* r = pre + b * 4 * U + u;  // gate rows u, U + u, 2U + u, 3U + u
        const A zi = zf_widen(x.v[0]) + (r[0] + tile_sum(part, b, u, mcomb, p));
        const A zf = zf_widen(x.v[1]) + (r[U] + tile_sum(part, b, U + u, mcomb, p));
        const A zg = zf_widen(x.v[2]) + (r[2 * U] + tile_sum(part, b, 2 * U + u, mcomb, p));
        const A zo = zf_widen(x.v[3]) + (r[3 * U] + tile_sum(part, b, 3 * U + u, mcomb, p));
        const int ce = b * U + u;
        const A c = zf_sigmoid(zf) * cs[ce] + zf_sigmoid(zi) * zf_tanh(zg);
        const A hv = zf_sigmoid(zo) * zf_tanh(c);
        cs[ce] = c;
        g[0] = zf_narrow<T>(zi);  // pre-activations, saved for backward
        g[H] = zf_narrow<T>(zf);
        g[2 * H] = zf_narrow<T>(zg);
        g[3 * H] = zf_narrow<T>(zo);
        P.h[t * BH + static_cast<size_t>(b) * H + j] = zf_narrow<T>(hv);
        P.c[t * BH + static_cast<size_t>(b) * H + j] = c;
      }
    }
    if (t + 1 < T_) zf_grid_sync();  // h_t complete
  }
}

template <typename T>
ZF_GLOBAL void chain_bwd_kernel(ChainParams<T> P) {
  using A = zf_acc_t<T>;
  unsigned char* smem = zf_dynamic_smem();
  const ZfChainPlan& p = P.plan;
  A* part = reinterpret_cast<A*>(smem + p.resident_bytes);
  A* part_hh = reinterpret_cast<A*>(smem + p.resident_bytes + p.pair_offset);
  A* dcs = reinterpret_cast<A*>(smem + p.resident_bytes + p.part_bytes);
  A* pre = reinterpret_cast<A*>(smem + p.resident_bytes + p.part_bytes + p.state_bytes);  // B x U
  T* As = reinterpret_cast<T*>(smem + p.resident_bytes + p.part_bytes + p.state_bytes + p.pre_bytes);
  const int tid = zf_tid(), nt = zf_nthreads(), bid = zf_bid();
  const int H = P.H, B = P.B, M = P.M, Z = P.Z, T_ = P.T_, H4 = 4 * H;
  const int U = p.units_per_block, Mb = p.m_per_block, Zb = p.z_per_block;
  const long long j0 = static_cast<long long>(bid) * U, m0 = static_cast<long long>(bid) * Mb,
                  z0 = static_cast<long long>(bid) * Zb;
  // transposed slices: row u of the slice is column (base + u) of the matrix
  const Mm<T> mhh = make_mm<T>(p, 0, smem, P.w_hh, 1, H, U, 0, j0, H);
  const Mm<T> mqh = make_mm<T>(p, 1, smem, P.w_qh, 1, H, U, 0, j0, H);
  const Mm<T> mcomb = make_mm<T>(p, 2, smem, P.w_comb, 1, Z, Zb, 0, z0, Z);
  const Mm<T> mq2 = make_mm<T>(p, 3, smem, P.w_q2, 1, M, Mb, 0, m0, M);
  load_resident(mhh, 0, p, smem);
  load_resident(mqh, 1, p, smem);
  load_resident(mcomb, 2, p, smem);
  load_resident(mq2, 3, p, smem);
  const int nu = mhh.count, nm = mq2.count, nz = mcomb.count;
  for (int e = tid; e < B * U; e += nt) dcs[e] = A(0);
  zf_block_sync();
  const size_t BH = static_cast<size_t>(B) * H, BM = static_cast<size_t>(B) * M,
               BZ = static_cast<size_t>(B) * Z;
  for (int t = T_ - 1; t >= 0; --t) {
    const bool last = t == T_ - 1;
    // stage 1: dh = grad_h_t + dgates_{t+1} W_hh (step t+1's stage 2 left it in `pre`) +
    // ds_{t+1} W_qh; the cell backward
    if (nu > 0) {
      auto gates_at = [&](int e) { return P.gates + slice_at(t, B, 4 * H, j0, nu, e); };
      const Prefetched in(B * nu, [&](int e) {
        const size_t bj = slice_at(0, B, H, j0, nu, e);
        return CellBwdIn<T>{Gates4<T>::load(gates_at(e), H), P.grad_h[t * BH + bj],
                            t == 0 ? P.c0[bj] : P.c_saved[(t - 1) * BH + bj], P.c_saved[t * BH + bj],
                            P.grad_c[t * BH + bj]};
      });
      if (!last) block_mm(static_cast<const T*>(P.ds + (t + 1) * BM), M, false, mqh, As, part, B, p);
      for (int e = tid; e < B * nu; e += nt) {
        const int b = e / nu, u = e % nu;
        const CellBwdIn<T> x = in.at(e);
        A dh = zf_widen(x.grad_h);
        if (!last) dh += pre[b * U + u] + tile_sum(part, b, u, mqh, p);
        T* g = gates_at(e);
        const A i = zf_sigmoid(zf_widen(x.z.v[0])), f = zf_sigmoid(zf_widen(x.z.v[1])),
                gg = zf_tanh(zf_widen(x.z.v[2])), o = zf_sigmoid(zf_widen(x.z.v[3]));
        const A c_prev = x.c_prev;
        const A tc = zf_tanh(x.c);
        const int ce = b * U + u;
        A dc = x.grad_c + dcs[ce];
        dc += dh * o * (A(1) - tc * tc);
        g[0] = zf_narrow<T>(dc * gg * i * (A(1) - i));  // dgates overwrite the pre-activations in place
        g[H] = zf_narrow<T>(dc * c_prev * f * (A(1) - f));
        g[2 * H] = zf_narrow<T>(dc * i * (A(1) - gg * gg));
        g[3 * H] = zf_narrow<T>(dh * tc * o * (A(1) - o));
        dcs[ce] = dc * f;
      }
    }
    zf_grid_sync();  // dgates_t complete
    // stage 2: dz = grad_z + dgates_t W_comb; grad_eps; dparams through the clamp. From the same
    // staged dgates_t, this block's dgates_t W_hh for step t-1's dh, kept in `pre` (dgates is
    // staged once per step; at t = 0 that product is the gradient of h0, a torch GEMM)
    if (nz > 0 || (nu > 0 && t > 0)) {
      auto z_at = [&](int e) { return slice_at(t, B, Z, z0, nz, e); };
      auto p_at = [&](int e) { return slice_at(t, B, 2 * Z, z0, nz, e); };  // [mu | logvar] rows
      const Prefetched in(B * nz, [&](int e) {
        const size_t o = z_at(e), o2 = p_at(e);
        return SampleBwdIn<T>{P.grad_z[o], P.eps[o], P.lv_saved[o], P.grad_mu[o], P.grad_lv[o], P.ok_saved[o2],
                              P.ok_saved[o2 + Z]};
      });
      block_mm2(static_cast<const T*>(P.gates + t * 4 * BH), H4, false, Prod<T>{&mcomb, nz > 0, part},
                Prod<T>{&mhh, nu > 0 && t > 0, part_hh}, As, B, p);
      if (nu > 0 && t > 0)
        for (int e = tid; e < B * U; e += nt) pre[e] = tile_sum(part_hh, e / U, e % U, mhh, p);
      for (int e = tid; e < B * nz; e += nt) {
        const size_t o = z_at(e), o2 = p_at(e);
        const SampleBwdIn<T> x = in.at(e);
        const A dz = zf_widen(x.grad_z) + tile_sum(part, e / nz, e % nz, mcomb, p);
        const A eps = zf_widen(x.eps);
        const A sd = zf_exp(A(0.5) * zf_widen(x.lv));
        P.grad_eps[o] = zf_narrow<T>(dz * sd);
        P.dparams[o2] = zf_narrow<T>(x.ok_mu ? dz + zf_widen(x.grad_mu) : A(0));
        P.dparams[o2 + Z] = zf_narrow<T>(x.ok_lv ? dz * eps * A(0.5) * sd + zf_widen(x.grad_lv) : A(0));
      }
    }
    zf_grid_sync();  // dparams_t complete
    // stage 3: ds_t = (dparams_t W_q2) * act'(s_t)
    if (nm > 0) {
      auto s_at = [&](int e) { return slice_at(t, B, M, m0, nm, e); };
      const Prefetched s_saved(B * nm, [&](int e) { return P.s_saved[s_at(e)]; });
      block_mm(static_cast<const T*>(P.dparams + t * 2 * BZ), 2 * Z, false, mq2, As, part, B, p);
      for (int e = tid; e < B * nm; e += nt)
        P.ds[s_at(e)] = zf_narrow<T>(
            leaky_clamp_backward(zf_widen(s_saved.at(e)), tile_sum(part, e / nm, e % nm, mq2, p)));
    }
    if (t > 0) zf_grid_sync();  // ds_t complete
  }
  for (int e = tid; e < B * nu; e += nt) {
    const int b = e / nu, u = e % nu;
    P.dc[static_cast<size_t>(b) * H + j0 + u] = dcs[b * U + u];
  }
}

// --------------------------------------------------------------------------------- planning

int plan_with(int backward, int B, int H, int M, int Z, int es, int threads, int units,
              long long smem_limit, int num_sms, int tf32, ZfChainPlan* p, char* err, int errlen) {
  char msg[900];
  const char* dir = backward ? "backward" : "forward";
  const char* dt = dtype_name(es);
  if (B < 1 || H < 1 || M < 1 || Z < 1 || threads < 1 || num_sms < 1 || (es != 2 && es != 4 && es != 8)) {
    std::snprintf(msg, sizeof msg,
                  "invalid zforcing_chain plan arguments B=%d H=%d M=%d Z=%d elem_size=%d threads=%d SMs=%d",
                  B, H, M, Z, es, threads, num_sms);
    set_err(err, errlen, msg);
    return ZF_DOES_NOT_FIT;
  }
  int mma = 0;  // TF32 products per element; float64 stays IEEE; bfloat16: 1 (its own tiles)
  if (plan_tf32(tf32, es, threads, "zforcing_chain", &mma, err, errlen) != ZF_OK) return ZF_DOES_NOT_FIT;
  // bfloat16: K steps of 16, rows padded to 8 mod 64 elements (4 mod 32 words, as float32's 4 mod
  // 32), partial sums, c and `pre` in float32
  const bool bf16 = es == 2;
  const int round_k = bf16 ? 64 : 32, pad = bf16 ? 8 : 4;
  const long long acc_es = bf16 ? 4 : es;
  std::memset(p, 0, sizeof *p);
  p->mma = mma;
  p->threads = threads;
  const int U = units > 0 ? (units < H ? units : H) : cdiv(H, num_sms);
  p->units_per_block = U;
  p->blocks = cdiv(H, U);
  p->m_per_block = cdiv(M, p->blocks);
  p->z_per_block = cdiv(Z, p->blocks);
  const int Mb = p->m_per_block, Zb = p->z_per_block;
  if (!backward) {
    const int rows[4] = {4 * U, 4 * U, Mb, 2 * Zb}, ks[4] = {H, Z, H, M};
    for (int i = 0; i < 4; ++i) p->rows[i] = rows[i], p->k[i] = ks[i];
  } else {
    const int rows[4] = {U, U, Zb, Mb}, ks[4] = {4 * H, M, 4 * H, 2 * Z};
    for (int i = 0; i < 4; ++i) p->rows[i] = rows[i], p->k[i] = ks[i];
  }
  const int tb = mma ? 16 : TB, tm = mma ? 8 : TM;  // register tile or warp's tensor-core tile
  p->row_groups_b = cdiv(B, tb);
  long long part = 0, pb[4];
  int kmax = 0, groups[4];
  for (int i = 0; i < 4; ++i) {
    p->row_groups_m[i] = cdiv(p->rows[i], tm);
    groups[i] = p->row_groups_b * p->row_groups_m[i];
  }
  for (int i = 0; i < 4; ++i) {
    // slices 0 and 2 always run in one pass (same K): their tiles share the threads / warps
    const int g = (i == 0 || i == 2) ? groups[0] + groups[2] : groups[i];
    p->ksplit[i] = mma ? mma_ksplit(g, threads / 32, p->k[i], mma_k_step(es)) : (threads / g < 1 ? 1 : threads / g);
    pb[i] = static_cast<long long>(groups[i]) * p->ksplit[i] * tb * tm * acc_es;
    if (pb[i] > part) part = pb[i];
    p->w_stride[i] = round_up(p->k[i], round_k) + pad;
    p->w_bytes[i] = align16(static_cast<long long>(p->rows[i]) * p->w_stride[i] * es);
    if (p->k[i] > kmax) kmax = p->k[i];
  }
  // the pass that stages one operand for slices 2 and 0 keeps both partial sums: slice 0's after 2's
  p->pair_offset = align16(pb[2]);
  if (p->pair_offset + pb[0] > part) part = p->pair_offset + pb[0];
  p->part_bytes = align16(part);
  p->state_bytes = align16(static_cast<long long>(B) * U * acc_es);
  p->pre_bytes = align16(static_cast<long long>(B) * p->rows[0] * acc_es);
  const long long Bp = static_cast<long long>(p->row_groups_b) * tb;
  auto staging = [&](long long kc) { return align16(Bp * (round_up(static_cast<int>(kc), round_k) + pad) * es); };
  const long long kmin = kmax < 32 ? kmax : 32;
  const long long fixed = p->w_bytes[0] + p->part_bytes + p->state_bytes + p->pre_bytes;
  if (fixed + staging(kmin) > smem_limit) {
    std::snprintf(msg, sizeof msg,
                  "the CUDA zforcing_chain %s cannot run B=%d, H=%d, M=%d, Z=%d in %s as one cooperative "
                  "launch: each of its %d blocks holds %d hidden units, i.e. %lld bytes of W_hh + %lld of "
                  "partial sums + %lld of cell state + at least %lld for a 32-wide activation chunk, more "
                  "than the %lld bytes of shared memory a block can have (use backend='torch' or 'triton')",
                  dir, B, H, M, Z, dt, p->blocks, U, p->w_bytes[0], p->part_bytes + p->pre_bytes, p->state_bytes,
                  staging(kmin), smem_limit);
    set_err(err, errlen, msg);
    return ZF_DOES_NOT_FIT;
  }
  // the other slices in order while they fit next to a 64-wide chunk
  long long used = fixed;
  p->resident = 1;
  const long long reserve = staging(kmax < 64 ? kmax : 64);
  for (int i = 1; i < 4; ++i) {
    if (used + p->w_bytes[i] + reserve <= smem_limit) {
      used += p->w_bytes[i];
      p->resident |= 1 << i;
    }
  }
  long long off = 0;
  for (int i = 0; i < 4; ++i) {
    if ((p->resident >> i) & 1) {
      p->w_offset[i] = off;
      off += p->w_bytes[i];
    }
  }
  p->resident_bytes = off;
  const long long avail = smem_limit - used;
  long long kc = avail / (Bp * es) - (round_k + pad);
  if (kc >= kmax) kc = kmax;
  else if (kc >= 32) kc = kc / 32 * 32;
  if (kc < kmin) kc = kmin;
  p->kc = static_cast<int>(kc);
  p->a_stride = round_up(p->kc, round_k) + pad;
  p->a_bytes = align16(Bp * p->a_stride * es);
  p->smem_bytes = used + p->a_bytes;
  return ZF_OK;
}

template <typename T>
ChainParams<T> params_for(const ZfChainPlan& plan, int T_, int B, int H, int M, int Z) {
  ChainParams<T> P;
  std::memset(static_cast<void*>(&P), 0, sizeof P);
  P.T_ = T_;
  P.B = B;
  P.H = H;
  P.M = M;
  P.Z = Z;
  P.plan = plan;
  return P;
}

int resolve_and_plan(int backward, int B, int H, int M, int Z, int es, const ZfChainLaunch* cfg,
                     ZfChainPlan* p, int* device_sms, char* err, int errlen) {
  Launch L;
  const int rc = resolve_launch(cfg, es, "zforcing_chain", &L, err, errlen);
  if (rc != ZF_OK) return rc;
  *device_sms = L.device_sms;
  return plan_with(backward, B, H, M, Z, es, L.threads, L.units, L.smem_limit, L.num_sms, L.tf32, p, err, errlen);
}

// One direction (backward 0 / 1), forward's and backward's shared frame: the plan first (a shape
// that cannot run is an error whatever T), nothing to run for T <= 0, else `kernel` as one
// cooperative launch on the plan's ChainParams with its tensors set by set_tensors(P).
template <typename F, typename SetTensors>
int run(int backward, void (*kernel)(ChainParams<F>), int T, int B, int H, int M, int Z, const ZfChainLaunch* cfg,
        void* stream, char* err, int errlen, SetTensors set_tensors) {
  ZfChainPlan plan;
  int sms = 0;
  const int rc = resolve_and_plan(backward, B, H, M, Z, sizeof(F), cfg, &plan, &sms, err, errlen);
  if (rc != ZF_OK) return rc;
  if (T <= 0) return ZF_OK;
  ChainParams<F> P = params_for<F>(plan, T, B, H, M, Z);
  set_tensors(P);
  char shape[128];
  std::snprintf(shape, sizeof shape, "B=%d, H=%d, M=%d, Z=%d in %s", B, H, M, Z, dtype_name(sizeof(F)));
  return cooperative_launch(kernel, P, sms, stream, "zforcing_chain", backward ? "backward" : "forward", shape, err,
                            errlen);
}

template <typename F>
int forward(ZF_CHAIN_FWD_ARGS(F, zf_acc_t<F>)) {
  return run<F>(0, chain_fwd_kernel<F>, T, B, H, M, Z, cfg, stream, err, errlen, [&](ChainParams<F>& P) {
    P.gates = gates;
    P.post_x = post_x;
    P.eps = eps;
    P.h0 = h0;
    P.c0 = c0;
    P.w_qh = w_qh;
    P.w_q2 = w_q2;
    P.b_q2 = b_q2;
    P.w_comb = w_comb;
    P.w_hh = w_hh;
    P.h = h;
    P.c = c;
    P.z = z;
    P.mu = mu;
    P.lv = lv;
    P.s = s;
    P.okmask = okmask;
  });
}

template <typename F>
int backward(ZF_CHAIN_BWD_ARGS(F, zf_acc_t<F>)) {
  return run<F>(1, chain_bwd_kernel<F>, T, B, H, M, Z, cfg, stream, err, errlen, [&](ChainParams<F>& P) {
    P.grad_h = grad_h;
    P.grad_c = grad_c;
    P.grad_z = grad_z;
    P.grad_mu = grad_mu;
    P.grad_lv = grad_lv;
    P.gates = gates;
    P.c0 = c0;
    P.c_saved = c;
    P.lv_saved = lv;
    P.eps = eps;
    P.ok_saved = okmask;
    P.s_saved = s;
    P.w_qh = w_qh;
    P.w_q2 = w_q2;
    P.w_comb = w_comb;
    P.w_hh = w_hh;
    P.dparams = dparams;
    P.ds = ds;
    P.grad_eps = grad_eps;
    P.dc = dc;
  });
}

}  // namespace

extern "C" {

int zf_chain_plan(int backward_, int B, int H, int M, int Z, int elem_size, const ZfChainLaunch* cfg,
                  ZfChainPlan* plan, char* err, int errlen) {
  int sms = 0;
  return resolve_and_plan(backward_, B, H, M, Z, elem_size, cfg, plan, &sms, err, errlen);
}

int zf_chain_forward_f32(ZF_CHAIN_FWD_ARGS(float, float)) {
  return forward<float>(gates, post_x, eps, h0, c0, w_qh, w_q2, b_q2, w_comb, w_hh, h, c, z, mu, lv, s, okmask,
                        T, B, H, M, Z, cfg, stream, err, errlen);
}
int zf_chain_forward_f64(ZF_CHAIN_FWD_ARGS(double, double)) {
  return forward<double>(gates, post_x, eps, h0, c0, w_qh, w_q2, b_q2, w_comb, w_hh, h, c, z, mu, lv, s, okmask,
                         T, B, H, M, Z, cfg, stream, err, errlen);
}
int zf_chain_backward_f32(ZF_CHAIN_BWD_ARGS(float, float)) {
  return backward<float>(grad_h, grad_c, grad_z, grad_mu, grad_lv, gates, c0, c, lv, eps, okmask, s, w_qh, w_q2,
                         w_comb, w_hh, dparams, ds, grad_eps, dc, T, B, H, M, Z, cfg, stream, err, errlen);
}
int zf_chain_backward_f64(ZF_CHAIN_BWD_ARGS(double, double)) {
  return backward<double>(grad_h, grad_c, grad_z, grad_mu, grad_lv, gates, c0, c, lv, eps, okmask, s, w_qh,
                          w_q2, w_comb, w_hh, dparams, ds, grad_eps, dc, T, B, H, M, Z, cfg, stream, err,
                          errlen);
}
int zf_chain_forward_bf16(ZF_CHAIN_FWD_ARGS(unsigned short, float)) {
  return forward<zf_bf16>(as_bf16(gates), as_bf16(post_x), as_bf16(eps), as_bf16(h0), c0, as_bf16(w_qh),
                          as_bf16(w_q2), as_bf16(b_q2), as_bf16(w_comb), as_bf16(w_hh), as_bf16(h), c, as_bf16(z),
                          as_bf16(mu), as_bf16(lv), as_bf16(s), okmask, T, B, H, M, Z, cfg, stream, err, errlen);
}
int zf_chain_backward_bf16(ZF_CHAIN_BWD_ARGS(unsigned short, float)) {
  return backward<zf_bf16>(as_bf16(grad_h), grad_c, as_bf16(grad_z), as_bf16(grad_mu), as_bf16(grad_lv),
                           as_bf16(gates), c0, c, as_bf16(lv), as_bf16(eps), okmask, as_bf16(s), as_bf16(w_qh),
                           as_bf16(w_q2), as_bf16(w_comb), as_bf16(w_hh), as_bf16(dparams), as_bf16(ds),
                           as_bf16(grad_eps), dc, T, B, H, M, Z, cfg, stream, err, errlen);
}

}  // extern "C"
