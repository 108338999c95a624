/* C ABI of the persistent Z-forcing chain kernels (csrc/chain_kernels.cu). Plain C types only,
 * so the torch bindings (bindings.cpp) compile without CUDA headers and the CPU-emulation build
 * (-DZF_CPU_EMULATION) can be called from Python with ctypes. Return codes: those of
 * lstm_kernels.h (ZF_OK, ZF_DOES_NOT_FIT with `err` naming B, H, M, Z and the bytes,
 * ZF_CUDA_ERROR). */
#ifndef ZF_CHAIN_KERNELS_H
#define ZF_CHAIN_KERNELS_H

#include "lstm_kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Launch settings; 0 means "the default": 256 threads per block, ceil(H / SMs) hidden units
 * per block, the device's opt-in shared memory per block and its SM count, IEEE float32.
 * tf32 = 1 or 3: the four float32 block products on the tensor cores, TF32 or 3xTF32 (as
 * ZfLstmLaunch::tf32; needs threads a multiple of 32 and, on a GPU, sm_80 or newer; ignored for
 * float64). */
typedef struct ZfChainLaunch {
  int threads;
  int units_per_block;
  long long smem_limit;
  int num_sms;
  int tf32;
} ZfChainLaunch;

/* The four weight slices of a direction, index i:
 *   forward:  0 W_hh rows (4U x H), 1 W_comb rows (4U x Z), 2 W_qh rows (Mb x H), 3 W_q2 rows (2Zb x M)
 *   backward: 0 W_hh columns (U x 4H), 1 W_qh columns (U x M), 2 W_comb columns (Zb x 4H),
 *             3 W_q2 columns (Mb x 2Z)
 * Slice 0 is always resident in shared memory; 1..3 are, in that order, while they fit (else the
 * block reads them from global memory / L2 every step). */
typedef struct ZfChainPlan {
  int blocks;           /* grid size: ceil(H / units_per_block) */
  int threads;          /* per block */
  int units_per_block;  /* U: hidden units owned by each block (LSTM stage) */
  int m_per_block;      /* Mb: posterior hidden units owned by each block */
  int z_per_block;      /* Zb: latent units owned by each block */
  int kc;               /* activation chunk staged in shared memory per pass */
  int a_stride;         /* row stride of the staged chunk (elements) */
  int row_groups_b;     /* ceil(B / 4) (tensor-core tiles: ceil(B / 16)) */
  int resident;         /* bit i: slice i is resident in shared memory */
  int mma;              /* 1 / 3: TF32 / 3xTF32 tensor-core tiles (16 x 8 per warp): row_groups_b = ceil(B / 16),
                           row_groups_m[i] = ceil(rows / 8), ksplit[i] = warps sharing one tile */
  int rows[4];          /* rows of slice i (local) */
  int k[4];             /* reduction length of slice i */
  int ksplit[4];        /* threads sharing one register tile of slice i's product */
  int row_groups_m[4];  /* ceil(rows / 4) (tensor-core tiles: ceil(rows / 8)) */
  int w_stride[4];      /* row stride of resident slice i (elements) */
  long long w_offset[4];/* byte offset of resident slice i in shared memory */
  long long w_bytes[4]; /* bytes slice i takes resident (whether or not it is) */
  long long resident_bytes, part_bytes, state_bytes, a_bytes, smem_bytes;
  long long pre_bytes;  /* the block's slice-0 product kept between stages: forward h_{t-1} W_hh^T
                           (B x 4U), backward dgates_{t+1} W_hh (B x U) */
  long long pair_offset;/* bytes into the partial sums where slice 0's start in the pass that
                           shares its staged operand with slice 2 (forward h_{t-1}: W_qh and
                           W_hh; backward dgates_t: W_comb and W_hh) */
} ZfChainPlan;

int zf_chain_plan(int backward, int B, int H, int M, int Z, int elem_size, const ZfChainLaunch* cfg,
                  ZfChainPlan* plan, char* err, int errlen);

/* Forward, one cooperative launch. In: gates (T, B, 4H) = gates_x + W_iz b_gz (overwritten with
 * the gate pre-activations), post_x (T, B, M), eps (T, B, Z), h0, c0 (B, H), w_qh (M, H),
 * w_q2 (2Z, M), b_q2 (2Z), w_comb = W_iz W_gz (4H, Z), w_hh (4H, H). Out: h, c (T, B, H),
 * z, mu, lv (T, B, Z), s (T, B, M) the posterior pre-activation, okmask (T, B, 2Z) 1 where the
 * parameter clamp passes the gradient. All contiguous. */
/* S_: the storage type of everything but the cell states c0, c (and below grad_c, dc), which
 * are A_: float / float, double / double, or bfloat16 (as 16-bit patterns) / float. */
#define ZF_CHAIN_FWD_ARGS(S_, A_)                                                               \
  S_ *gates, const S_ *post_x, const S_ *eps, const S_ *h0, const A_ *c0, const S_ *w_qh,       \
      const S_ *w_q2, const S_ *b_q2, const S_ *w_comb, const S_ *w_hh, S_ *h, A_ *c, S_ *z,     \
      S_ *mu, S_ *lv, S_ *s, unsigned char *okmask, int T, int B, int H, int M, int Z,           \
      const ZfChainLaunch *cfg, void *stream, char *err, int errlen
int zf_chain_forward_f32(ZF_CHAIN_FWD_ARGS(float, float));
int zf_chain_forward_f64(ZF_CHAIN_FWD_ARGS(double, double));
/* bfloat16: products on bfloat16 tensor-core tiles (mma.sync m16n8k16, float32 accumulation),
 * all arithmetic in float32, every S_ value rounded to bfloat16 when stored. */
int zf_chain_forward_bf16(ZF_CHAIN_FWD_ARGS(unsigned short, float));

/* Backward, one cooperative launch. In: the output gradients grad_h, grad_c (T, B, H), grad_z,
 * grad_mu, grad_lv (T, B, Z); the saved pre-activations in `gates` (overwritten with dgates =
 * the gradient of gates_x), c0, c, lv, eps, okmask, s and the weights. Out: dparams (T, B, 2Z)
 * (gradient of the clamped [mu, lv] pre-activation), ds (T, B, M) (= gradient of post_x),
 * grad_eps (T, B, Z), dc (B, H) = the gradient of c0. */
#define ZF_CHAIN_BWD_ARGS(S_, A_)                                                               \
  const S_ *grad_h, const A_ *grad_c, const S_ *grad_z, const S_ *grad_mu, const S_ *grad_lv,   \
      S_ *gates, const A_ *c0, const A_ *c, const S_ *lv, const S_ *eps,                          \
      const unsigned char *okmask, const S_ *s, const S_ *w_qh, const S_ *w_q2,                   \
      const S_ *w_comb, const S_ *w_hh, S_ *dparams, S_ *ds, S_ *grad_eps, A_ *dc, int T, int B, \
      int H, int M, int Z, const ZfChainLaunch *cfg, void *stream, char *err, int errlen
int zf_chain_backward_f32(ZF_CHAIN_BWD_ARGS(float, float));
int zf_chain_backward_f64(ZF_CHAIN_BWD_ARGS(double, double));
int zf_chain_backward_bf16(ZF_CHAIN_BWD_ARGS(unsigned short, float));

#ifdef __cplusplus
}
#endif

#endif /* ZF_CHAIN_KERNELS_H */
