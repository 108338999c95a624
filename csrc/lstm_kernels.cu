// Persistent LSTM recurrence: one cooperative launch per direction (see csrc/README.md).
//
// Block `bid` owns hidden units j in [bid * U, bid * U + U) (U = units_per_block) for the whole
// sequence. Forward, it keeps the 4U rows of W_hh that produce its units' gates (i, f, g, o) in
// shared memory, and its units' cell states c; each step it stages h_{t-1} chunk by chunk from
// global memory (L2), forms the 4U x B gate dot products with per-thread 4 x 4 register tiles,
// applies the cell update, writes h_t, c_t and the pre-activations, and meets the grid at one
// grid sync (h_t of every unit is needed by every block for step t+1). Backward mirrors it with
// the U columns of W_hh (dh_j = sum_r dgates_{t+1}[r] W_hh[r, j]) and dc in shared memory.
//
// Storage types: float32, float64, and bfloat16 (gates, h, W_hh, dgates; the cell states c, dc and
// all arithmetic in float32, products on bfloat16 tensor-core tiles with float32 accumulation).
//
// No torch headers here: this file is compiled by nvcc (zf_kernels._C) and, with
// -DZF_CPU_EMULATION, by g++ as a CPU library for the tests (zf_device.h).
#include "lstm_kernels.h"
#include "zf_device.h"
#include "zf_persistent.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <type_traits>

namespace {

using namespace zf_persistent;

// S: the storage type of gates, h, W_hh and dgates; the cell states and the arithmetic: zf_acc_t<S>
template <typename S>
struct Params {
  using A = zf_acc_t<S>;
  // forward: gates (in gx, out z), h0, w, out, c_all
  // backward: gates (in z, out dgates), d_out, d_hT, w, c_all, dc
  S* gates;
  const S* h0;
  const S* d_out;
  const S* d_hT;
  const S* w;
  S* out;
  A* c_all;
  const A* c_saved;
  A* dc;
  int T_, B, H, reverse;
  ZfLstmPlan plan;
  // byte offsets of the shared-memory regions
  long long off_w, off_part, off_state, off_a;
};

// Rows of the batch and of the resident W slice per tile: a thread's TB x TM register tile, or
// a warp's 16 x 8 tensor-core tile (plan.mma)
ZF_HOST_DEVICE int tile_b(const ZfLstmPlan& p) { return p.mma ? 16 : TB; }
ZF_HOST_DEVICE int tile_m(const ZfLstmPlan& p) { return p.mma ? 8 : TM; }
// staged columns of a chunk kw wide: padded with zeros to whole K steps for the tensor-core tiles
// (TF32: their W columns past kw are not read, mma_tile_tf32; bfloat16: W's padding is zeros)
ZF_HOST_DEVICE int padded_k(int k, const ZfLstmPlan& p, int es) {
  const int step = mma_k_step(es);
  return p.mma ? (k + step - 1) / step * step : k;
}
// resident rows of the W slice: whole register tiles (zero rows past `rows`); the tensor-core
// tiles read their rows past `rows` from the last real row instead (those columns of the
// product are never read), so a slice of 9 rows does not take 16 rows of shared memory
ZF_HOST_DEVICE int resident_rows(const ZfLstmPlan& p) { return p.mma ? p.rows : p.row_groups_m * TM; }

// The tensor-core version of block_matmul's inner products for one staged chunk (K steps of 8
// (TF32) or 16 (bfloat16) from column k0 of the resident slice, kw columns): warp w takes items w,
// w + warps, ...; item = tile * ksplit + ks, tile = tb * row_groups_m + tm covers batch rows
// tb * 16 .. + 15 and slice rows tm * 8 .. + 7 (past `rows`: the last real row, whose product
// columns go unread), and sums K steps ks, ks + ksplit, ... into part[item * 128 + lane * 4 + r]
// (mma_tile_tf32 / mma_tile_bf16).
template <typename S>
ZF_DEVICE void mma_items(float* part, bool zero, const S* As, const S* Ws, int k0, int kw, const ZfLstmPlan& p) {
  const int lane = zf_tid() & 31, warp = zf_tid() >> 5, nwarps = zf_nthreads() >> 5;
  const int g = lane >> 2, t = lane & 3, ksplit = p.ksplit, tms = p.row_groups_m;
  const int n_items = p.row_groups_b * tms * ksplit, as = p.a_stride;
  for (int item = warp; item < n_items; item += nwarps) {  // uniform across the warp
    const int ks = item % ksplit, tile = item / ksplit;
    const int tb = tile / tms, tm = tile - tb * tms;
    const int wrow = tm * 8 + g < p.rows ? tm * 8 + g : p.rows - 1;
    float* pp = part + static_cast<size_t>(item) * 128 + lane * 4;
    const S* w = Ws + static_cast<size_t>(wrow) * p.w_stride + k0;
    if constexpr (is_bf16<S>) {
      mma_tile_bf16(pp, zero, As + (tb * 16 + g) * as + 2 * t, as, w + 2 * t, 0, kw - 2 * t, ks, (kw + 15) / 16,
                    ksplit);
    } else {
      mma_tile_tf32(pp, zero, As + (tb * 16 + g) * as + t, as, w + t, 1, t, ks, (kw + 7) / 8, ksplit, kw, p.mma);
    }
  }
}

// part[(group * ksplit + ks) * TB * TM + ib * TM + im] += A[b, k] * W[m, k] summed over this
// block's K slice, for b = bg + ib * row_groups_b, m = mg + im * row_groups_m, k = ks (mod
// ksplit), where group = bg * row_groups_m + mg. Rows are interleaved (not contiguous) so
// neighbouring threads read neighbouring shared-memory rows. With plan.mma the same sums come
// from tensor-core tiles instead (mma_items; tile_sum reads either layout; bfloat16 always). A
// (B x K, row stride lda) is staged chunk by chunk into As; rows beyond B (and, for the
// tensor-core tiles, columns up to the next whole K step) read as zero. Ends with a block barrier,
// after which `part` holds the complete partial sums.
template <typename S>
ZF_DEVICE void block_matmul(const S* A, int lda, int B, const S* Ws, S* As, zf_acc_t<S>* part,
                            const ZfLstmPlan& p) {
  const int tid = zf_tid(), nt = zf_nthreads();
  const int bgs = p.row_groups_b, mgs = p.row_groups_m, ksplit = p.ksplit;
  const int Bp = bgs * tile_b(p);
  const int n_items = bgs * mgs * ksplit;
  const int K = p.k, kc = p.kc, as = p.a_stride, ws = p.w_stride;
  for (int k0 = 0; k0 < K; k0 += kc) {
    const int kw = (K - k0 < kc) ? K - k0 : kc;
    stage_chunk(As, as, A, lda, B, Bp, k0, kw, padded_k(kw, p, sizeof(S)), [](S v) { return v; });
    zf_block_sync();
    if constexpr (!std::is_same<S, double>::value) {
      if (p.mma) {  // the tensor-core tiles (bfloat16: always, plan_tf32)
        mma_items(part, k0 == 0, As, Ws, k0, kw, p);
        zf_block_sync();
        continue;
      }
    }
    if constexpr (!is_bf16<S>) for (int item = tid; item < n_items; item += nt) {
      const int ks = item % ksplit, grp = item / ksplit;
      const int mg = grp % mgs, bg = grp / mgs;
      const S* w[TM];  // resident rows mg, mg + mgs, ... of the slice
ZF_UNROLL
      for (int j = 0; j < TM; ++j) w[j] = Ws + static_cast<size_t>(mg + j * mgs) * ws + k0;
      tile_fma(part + static_cast<size_t>(item) * (TB * TM), k0 == 0, As + bg * as, bgs * as, w, 1, ks, kw,
               ksplit);
    }
    zf_block_sync();  // part complete; As free for the next chunk
  }
}

// sum over the ksplit partial tiles of element (b, m)
template <typename T>
ZF_DEVICE T tile_sum(const T* part, int b, int m, const ZfLstmPlan& p) {
  if (p.mma) {  // element (b % 16, m % 8) of tile (b / 16, m / 8)
    const T* pp = part + static_cast<size_t>(((b >> 4) * p.row_groups_m + (m >> 3)) * p.ksplit) * 128 +
                  mma_elem(b & 15, m & 7);
    T s = T(0);
    for (int ks = 0; ks < p.ksplit; ++ks) s += pp[static_cast<size_t>(ks) * 128];
    return s;
  }
  const int bg = b % p.row_groups_b, ib = b / p.row_groups_b;
  const int mg = m % p.row_groups_m, im = m / p.row_groups_m;
  const T* pp = part + static_cast<size_t>((bg * p.row_groups_m + mg) * p.ksplit) * (TB * TM) +
                ib * TM + im;
  T s = T(0);
  for (int ks = 0; ks < p.ksplit; ++ks) s += pp[static_cast<size_t>(ks) * (TB * TM)];
  return s;
}

// The backward cell's inputs at step t (s: its position in the sequence) for element bj = b * H + j:
// its output gradient (plus d_hT at the last step), the 4 pre-activations at z, the cell states
// before and after the step. Kept as loaded (no conversion here: converting a value waits for
// its load, which would undo loading it early).
template <typename S>
struct BwdCellIn {
  using A = zf_acc_t<S>;
  S d_out, d_hT;
  A c_prev, c_new;
  Gates4<S> z;
  ZF_DEVICE static BwdCellIn load(const Params<S>& P, int t, int s, bool last, size_t bj, const S* z) {
    const size_t BH = static_cast<size_t>(P.B) * P.H;
    BwdCellIn x;
    x.z = Gates4<S>::load(z, P.H);
    x.d_out = P.d_out[t * BH + bj];
    x.d_hT = last ? P.d_hT[bj] : x.d_out;
    x.c_prev = P.c_saved[s * BH + bj];
    x.c_new = P.c_saved[(s + 1) * BH + bj];
    return x;
  }
  // dh without the recurrent part: d_out, plus d_hT at the last step
  ZF_DEVICE A dh(bool last) const { return last ? zf_widen(d_out) + zf_widen(d_hT) : zf_widen(d_out); }
};

template <typename S>
ZF_GLOBAL void lstm_fwd_kernel(Params<S> P) {
  using A = zf_acc_t<S>;
  unsigned char* smem = zf_dynamic_smem();
  S* Ws = reinterpret_cast<S*>(smem + P.off_w);
  A* part = reinterpret_cast<A*>(smem + P.off_part);
  A* cs = reinterpret_cast<A*>(smem + P.off_state);
  S* As = reinterpret_cast<S*>(smem + P.off_a);
  const ZfLstmPlan& p = P.plan;
  const int tid = zf_tid(), nt = zf_nthreads();
  const int U = p.units_per_block, j0 = zf_bid() * U;
  const int H = P.H, B = P.B, T_ = P.T_;
  const int Mp = resident_rows(p), ws = p.w_stride;
  const size_t BH = static_cast<size_t>(B) * H;

  const S zero = zf_narrow<S>(A(0));
  // resident W slice: smem row m = g * U + u holds W_hh row g * H + j0 + u (zeros past H; the
  // bfloat16 tiles read the row's padding too: zeros)
  const int wcols = is_bf16<S> ? ws : H;
  copy_batched<S>(
      Mp * wcols,
      [&](int idx) {
        const int m = idx / wcols, k = idx - m * wcols, g = m / U, j = j0 + m % U;
        return (m < 4 * U && j < H && k < H) ? P.w[(static_cast<size_t>(g) * H + j) * H + k] : zero;
      },
      [&](int idx, S v) { Ws[static_cast<size_t>(idx / wcols) * ws + idx % wcols] = v; });
  copy_batched<A>(
      B * U, [&](int e) { return j0 + e % U < H ? P.c_all[static_cast<size_t>(e / U) * H + j0 + e % U] : A(0); },
      [&](int e, A v) { cs[e] = v; });
  zf_block_sync();

  for (int s = 0; s < T_; ++s) {
    const int t = P.reverse ? T_ - 1 - s : s;
    const S* h_prev = s == 0 ? P.h0 : P.out + static_cast<size_t>(P.reverse ? t + 1 : t - 1) * BH;
    // this unit's 4 pre-activations (W_ih x_t + b) at element e = b * U + u; this thread's first
    // element's are loaded before the product, whose staging and barriers hide their round trip
    auto gates_at = [&](int e) { return P.gates + slice_at(t, B, 4 * H, j0, U, e); };
    const Prefetched pre_x(B * U,
                           [&](int e) { return j0 + e % U < H ? Gates4<S>::load(gates_at(e), H) : Gates4<S>{}; });
    block_matmul(h_prev, H, B, Ws, As, part, p);
    for (int e = tid; e < B * U; e += nt) {
      const int b = e / U, u = e % U, j = j0 + u;
      if (j >= H) continue;
      S* z = gates_at(e);
      const Gates4<S> x = pre_x.at(e);
      const A zi = zf_widen(x.v[0]) + tile_sum(part, b, u, p);
      const A zf = zf_widen(x.v[1]) + tile_sum(part, b, U + u, p);
      const A zg = zf_widen(x.v[2]) + tile_sum(part, b, 2 * U + u, p);
      const A zo = zf_widen(x.v[3]) + tile_sum(part, b, 3 * U + u, p);
      const A c = zf_sigmoid(zf) * cs[e] + zf_sigmoid(zi) * zf_tanh(zg);
      const A h = zf_sigmoid(zo) * zf_tanh(c);
      cs[e] = c;
      z[0] = zf_narrow<S>(zi);  // saved for backward (the activations are recomputed there)
      z[H] = zf_narrow<S>(zf);
      z[2 * H] = zf_narrow<S>(zg);
      z[3 * H] = zf_narrow<S>(zo);
      P.out[t * BH + static_cast<size_t>(b) * H + j] = zf_narrow<S>(h);  // the next step reads this
      P.c_all[(s + 1) * BH + static_cast<size_t>(b) * H + j] = c;
    }
    zf_grid_sync();  // h_t of every unit is complete before any block reads it
  }
}

template <typename S>
ZF_GLOBAL void lstm_bwd_kernel(Params<S> P) {
  using A = zf_acc_t<S>;
  unsigned char* smem = zf_dynamic_smem();
  S* Ws = reinterpret_cast<S*>(smem + P.off_w);
  A* part = reinterpret_cast<A*>(smem + P.off_part);
  A* dcs = reinterpret_cast<A*>(smem + P.off_state);
  S* As = reinterpret_cast<S*>(smem + P.off_a);
  const ZfLstmPlan& p = P.plan;
  const int tid = zf_tid(), nt = zf_nthreads();
  const int U = p.units_per_block, j0 = zf_bid() * U;
  const int H = P.H, B = P.B, T_ = P.T_, H4 = 4 * H;
  const int Mp = resident_rows(p), ws = p.w_stride;
  const size_t BH = static_cast<size_t>(B) * H, B4H = 4 * BH;

  const S zero = zf_narrow<S>(A(0));
  // resident W slice, transposed: smem row u holds column j0 + u of W_hh (all 4H entries; the
  // bfloat16 tiles read the row's padding too: zeros); global reads run along u (contiguous), so
  // the load is coalesced
  const int rcols = is_bf16<S> ? ws : H4;
  copy_batched<S>(
      Mp * rcols,
      [&](int idx) {
        const int r = idx / Mp, u = idx - r * Mp;
        return (u < U && j0 + u < H && r < H4) ? P.w[static_cast<size_t>(r) * H + j0 + u] : zero;
      },
      [&](int idx, S v) { Ws[static_cast<size_t>(idx % Mp) * ws + idx / Mp] = v; });
  copy_batched<A>(
      B * U, [&](int e) { return j0 + e % U < H ? P.dc[static_cast<size_t>(e / U) * H + j0 + e % U] : A(0); },
      [&](int e, A v) { dcs[e] = v; });
  zf_block_sync();

  for (int s = T_ - 1; s >= 0; --s) {
    const int t = P.reverse ? T_ - 1 - s : s;
    const bool last = s == T_ - 1;
    // element e = b * U + u's inputs that do not depend on the other blocks (its output gradient,
    // pre-activations and cell states): this thread's first element's loaded before the product,
    // whose staging and barriers hide their round trip
    auto gates_at = [&](int e) { return P.gates + slice_at(t, B, 4 * H, j0, U, e); };
    const Prefetched pre_x(B * U, [&](int e) {
      return j0 + e % U < H ? BwdCellIn<S>::load(P, t, s, last, slice_at(0, B, H, j0, U, e), gates_at(e))
                            : BwdCellIn<S>{};
    });
    if (!last) {
      // dh_t += dgates_{next step} @ W_hh, the next step's dgates written by all blocks
      const int t_next = P.reverse ? t - 1 : t + 1;
      block_matmul(P.gates + t_next * B4H, H4, B, Ws, As, part, p);
    }
    for (int e = tid; e < B * U; e += nt) {
      const int b = e / U, u = e % U, j = j0 + u;
      if (j >= H) continue;
      const BwdCellIn<S> x = pre_x.at(e);
      A dh = x.dh(last);
      if (!last) dh += tile_sum(part, b, u, p);
      S* z = gates_at(e);
      const A i = zf_sigmoid(zf_widen(x.z.v[0])), f = zf_sigmoid(zf_widen(x.z.v[1])),
              g = zf_tanh(zf_widen(x.z.v[2])), o = zf_sigmoid(zf_widen(x.z.v[3]));
      const A c_prev = x.c_prev, c_new = x.c_new;
      const A tc = zf_tanh(c_new);
      const A dc = dcs[e] + dh * o * (A(1) - tc * tc);
      z[0] = zf_narrow<S>(dc * g * i * (A(1) - i));  // dgates overwrite the pre-activations in place
      z[H] = zf_narrow<S>(dc * c_prev * f * (A(1) - f));
      z[2 * H] = zf_narrow<S>(dc * i * (A(1) - g * g));
      z[3 * H] = zf_narrow<S>(dh * tc * o * (A(1) - o));
      dcs[e] = dc * f;
    }
    zf_grid_sync();  // dgates_t of every unit is complete before any block reads it
  }
  for (int e = tid; e < B * U; e += nt) {
    const int b = e / U, j = j0 + e % U;
    if (j < H) P.dc[static_cast<size_t>(b) * H + j] = dcs[e];
  }
}

// --------------------------------------------------------------------------------- planning

int plan_with(int backward, int B, int H, int elem_size, int threads, int units, long long smem_limit,
              int num_sms, int tf32, ZfLstmPlan* p, char* err, int errlen) {
  char msg[640];
  const char* dir = backward ? "backward" : "forward";
  const char* dt = dtype_name(elem_size);
  if (B < 1 || H < 1 || threads < 1 || num_sms < 1 || (elem_size != 2 && elem_size != 4 && elem_size != 8)) {
    std::snprintf(msg, sizeof msg, "invalid LSTM plan arguments B=%d H=%d elem_size=%d threads=%d SMs=%d",
                  B, H, elem_size, threads, num_sms);
    set_err(err, errlen, msg);
    return ZF_DOES_NOT_FIT;
  }
  int mma = 0;  // TF32 products per element; float64 stays IEEE; bfloat16: 1 (its own tiles)
  if (plan_tf32(tf32, elem_size, threads, "lstm", &mma, err, errlen) != ZF_OK) return ZF_DOES_NOT_FIT;
  std::memset(p, 0, sizeof *p);
  p->mma = mma;
  p->threads = threads;
  p->units_per_block = units > 0 ? (units < H ? units : H) : (H + num_sms - 1) / num_sms;
  p->blocks = (H + p->units_per_block - 1) / p->units_per_block;
  p->rows = backward ? p->units_per_block : 4 * p->units_per_block;
  p->k = backward ? 4 * H : H;
  const int tb = tile_b(*p), tm = tile_m(*p);
  p->row_groups_b = cdiv(B, tb);
  p->row_groups_m = cdiv(p->rows, tm);
  const int groups = p->row_groups_b * p->row_groups_m;
  // threads (register tiles) or warps (tensor-core tiles) sharing one tile, each a part of K
  int ksplit;
  if (mma) {
    ksplit = mma_ksplit(groups, threads / 32, p->k, mma_k_step(elem_size));
  } else {
    ksplit = threads / groups;
    if (ksplit < 1) ksplit = 1;
    if (ksplit > p->k) ksplit = p->k;
  }
  p->ksplit = ksplit;
  // row strides padded so that the threads of a warp hit distinct shared-memory banks: register
  // tiles read consecutive k, then consecutive row groups; a tensor-core fragment load reads
  // rows g = 0..7 at 4-byte words t = 0..3 (a row stride of 4 mod 32 words: 4 floats, or 8
  // bfloat16 past a multiple of 64); the bfloat16 rows hold whole K steps of 16 (zero padding)
  const bool bf16 = elem_size == 2;
  const int round_k = bf16 ? 64 : 32;
  const int pad = bf16 ? 8 : mma ? 4 : ksplit % 32;
  p->w_stride = round_up(p->k, round_k) + pad;
  const long long es = elem_size, acc_es = bf16 ? 4 : elem_size;  // partial sums and c: float32
  p->w_bytes = align16(static_cast<long long>(resident_rows(*p)) * p->w_stride * es);
  p->part_bytes = align16(static_cast<long long>(groups) * ksplit * tb * tm * acc_es);
  p->state_bytes = align16(static_cast<long long>(B) * p->units_per_block * acc_es);
  const long long Bp = static_cast<long long>(p->row_groups_b) * tb;
  const long long fixed = p->w_bytes + p->part_bytes + p->state_bytes;
  const int a_pad = bf16 ? 8 : mma ? 4 : (ksplit * p->row_groups_m) % 32;
  const long long avail = smem_limit - fixed;
  long long kc = avail > 0 ? avail / (Bp * es) - round_k - a_pad : 0;  // room for the stride padding
  if (kc >= p->k) kc = p->k;
  else if (kc >= 32) kc = kc / 32 * 32;
  const long long kc_min = p->k < 32 ? p->k : 32;
  if (kc < kc_min) {
    std::snprintf(msg, sizeof msg,
                  "the CUDA lstm %s cannot run B=%d, H=%d in %s as one cooperative launch: each of its "
                  "%d blocks holds %d hidden units, i.e. %lld bytes of W_hh + %lld of partial sums + "
                  "%lld of cell state + at least %lld for a 32-wide chunk of the %s, more than the "
                  "%lld bytes of shared memory a block can have (use backend='torch' or 'triton')",
                  dir, B, H, dt, p->blocks, p->units_per_block, p->w_bytes, p->part_bytes,
                  p->state_bytes, Bp * (kc_min + round_k + a_pad) * es, backward ? "dgates" : "hidden state",
                  smem_limit);
    set_err(err, errlen, msg);
    return ZF_DOES_NOT_FIT;
  }
  p->kc = static_cast<int>(kc);
  p->a_stride = round_up(p->kc, round_k) + a_pad;
  p->a_bytes = align16(Bp * p->a_stride * es);
  p->smem_bytes = fixed + p->a_bytes;
  return ZF_OK;
}

template <typename S>
Params<S> params_for(const ZfLstmPlan& plan, int T_, int B, int H, int reverse) {
  Params<S> P;
  std::memset(static_cast<void*>(&P), 0, sizeof P);
  P.T_ = T_;
  P.B = B;
  P.H = H;
  P.reverse = reverse;
  P.plan = plan;
  P.off_w = 0;
  P.off_part = plan.w_bytes;
  P.off_state = P.off_part + plan.part_bytes;
  P.off_a = P.off_state + plan.state_bytes;
  return P;
}

int resolve_and_plan(int backward, int B, int H, int es, const ZfLstmLaunch* cfg, ZfLstmPlan* p,
                     int* device_sms, char* err, int errlen) {
  Launch L;
  const int rc = resolve_launch(cfg, es, "lstm", &L, err, errlen);
  if (rc != ZF_OK) return rc;
  *device_sms = L.device_sms;
  return plan_with(backward, B, H, es, L.threads, L.units, L.smem_limit, L.num_sms, L.tf32, p, err, errlen);
}

// One direction (backward 0 / 1), forward's and backward's shared frame: the plan first (a shape
// that cannot run is an error whatever T), nothing to run for T <= 0, else `kernel` as one
// cooperative launch on the plan's Params with its tensors set by set_tensors(P).
template <typename S, typename SetTensors>
int run(int backward, void (*kernel)(Params<S>), int T_, int B, int H, int reverse, const ZfLstmLaunch* cfg,
        void* stream, char* err, int errlen, SetTensors set_tensors) {
  ZfLstmPlan plan;
  int sms = 0;
  const int rc = resolve_and_plan(backward, B, H, sizeof(S), cfg, &plan, &sms, err, errlen);
  if (rc != ZF_OK) return rc;
  if (T_ <= 0) return ZF_OK;
  Params<S> P = params_for<S>(plan, T_, B, H, reverse);
  set_tensors(P);
  char shape[96];
  std::snprintf(shape, sizeof shape, "B=%d, H=%d in %s", B, H, dtype_name(sizeof(S)));
  return cooperative_launch(kernel, P, sms, stream, "lstm", backward ? "backward" : "forward", shape, err, errlen);
}

template <typename S>
int forward(S* gates, const S* h0, const S* w, S* out, zf_acc_t<S>* c_all, int T_, int B, int H, int reverse,
            const ZfLstmLaunch* cfg, void* stream, char* err, int errlen) {
  return run<S>(0, lstm_fwd_kernel<S>, T_, B, H, reverse, cfg, stream, err, errlen, [&](Params<S>& P) {
    P.gates = gates;
    P.h0 = h0;
    P.w = w;
    P.out = out;
    P.c_all = c_all;
  });
}

template <typename S>
int backward(const S* d_out, const S* d_hT, const S* w, S* gates, const zf_acc_t<S>* c_all, zf_acc_t<S>* dc,
             int T_, int B, int H, int reverse, const ZfLstmLaunch* cfg, void* stream, char* err, int errlen) {
  return run<S>(1, lstm_bwd_kernel<S>, T_, B, H, reverse, cfg, stream, err, errlen, [&](Params<S>& P) {
    P.gates = gates;
    P.d_out = d_out;
    P.d_hT = d_hT;
    P.w = w;
    P.c_saved = c_all;
    P.dc = dc;
  });
}

}  // namespace

extern "C" {

int zf_lstm_plan(int backward_, int B, int H, int elem_size, const ZfLstmLaunch* cfg, ZfLstmPlan* plan,
                 char* err, int errlen) {
  int sms = 0;
  return resolve_and_plan(backward_, B, H, elem_size, cfg, plan, &sms, err, errlen);
}

int zf_lstm_forward_f32(float* gates, const float* h0, const float* w_hh, float* out, float* c_all, int T,
                        int B, int H, int reverse, const ZfLstmLaunch* cfg, void* stream, char* err,
                        int errlen) {
  return forward<float>(gates, h0, w_hh, out, c_all, T, B, H, reverse, cfg, stream, err, errlen);
}

int zf_lstm_forward_f64(double* gates, const double* h0, const double* w_hh, double* out, double* c_all,
                        int T, int B, int H, int reverse, const ZfLstmLaunch* cfg, void* stream, char* err,
                        int errlen) {
  return forward<double>(gates, h0, w_hh, out, c_all, T, B, H, reverse, cfg, stream, err, errlen);
}

int zf_lstm_forward_bf16(unsigned short* gates, const unsigned short* h0, const unsigned short* w_hh,
                         unsigned short* out, float* c_all, int T, int B, int H, int reverse,
                         const ZfLstmLaunch* cfg, void* stream, char* err, int errlen) {
  return forward<zf_bf16>(as_bf16(gates), as_bf16(h0), as_bf16(w_hh), as_bf16(out), c_all, T, B, H, reverse, cfg,
                          stream, err, errlen);
}

int zf_lstm_backward_f32(const float* d_out, const float* d_hT, const float* w_hh, float* gates,
                         const float* c_all, float* dc, int T, int B, int H, int reverse,
                         const ZfLstmLaunch* cfg, void* stream, char* err, int errlen) {
  return backward<float>(d_out, d_hT, w_hh, gates, c_all, dc, T, B, H, reverse, cfg, stream, err, errlen);
}

int zf_lstm_backward_f64(const double* d_out, const double* d_hT, const double* w_hh, double* gates,
                         const double* c_all, double* dc, int T, int B, int H, int reverse,
                         const ZfLstmLaunch* cfg, void* stream, char* err, int errlen) {
  return backward<double>(d_out, d_hT, w_hh, gates, c_all, dc, T, B, H, reverse, cfg, stream, err, errlen);
}

int zf_lstm_backward_bf16(const unsigned short* d_out, const unsigned short* d_hT, const unsigned short* w_hh,
                          unsigned short* gates, const float* c_all, float* dc, int T, int B, int H, int reverse,
                          const ZfLstmLaunch* cfg, void* stream, char* err, int errlen) {
  return backward<zf_bf16>(as_bf16(d_out), as_bf16(d_hT), as_bf16(w_hh), as_bf16(gates), c_all, dc, T, B, H,
                           reverse, cfg, stream, err, errlen);
}

}  // extern "C"
