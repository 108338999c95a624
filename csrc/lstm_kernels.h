/* C ABI of the persistent LSTM kernels (csrc/lstm_kernels.cu). Plain C types only, so the torch
 * bindings (bindings.cpp) compile without CUDA headers and the CPU-emulation build
 * (-DZF_CPU_EMULATION) can be called from Python with ctypes.
 *
 * Return codes: ZF_OK; ZF_DOES_NOT_FIT (the shape cannot run as one cooperative launch: its
 * W_hh slices / buffers exceed shared memory or its blocks cannot all be resident; `err` names
 * the shape and the numbers); ZF_CUDA_ERROR (a CUDA runtime call failed; `err` says which). */
#ifndef ZF_LSTM_KERNELS_H
#define ZF_LSTM_KERNELS_H

#ifdef __cplusplus
extern "C" {
#endif

enum { ZF_OK = 0, ZF_DOES_NOT_FIT = 1, ZF_CUDA_ERROR = 2 };

/* Launch settings; 0 means "the default": 256 threads per block, ceil(H / SMs) hidden units
 * per block, the device's opt-in shared memory per block and its SM count, IEEE float32.
 * tf32: float32 block products on the tensor cores (mma.sync m16n8k8, float32 accumulation),
 * 1 = operands rounded to TF32 (what torch's allow_tf32 permits its own matmuls), 3 = "3xTF32"
 * (each operand split into two TF32 parts, three products: close to IEEE); needs threads a
 * multiple of 32 and, on a GPU, sm_80 or newer; ignored for float64. */
typedef struct ZfLstmLaunch {
  int threads;
  int units_per_block;
  long long smem_limit;
  int num_sms;
  int tf32;
} ZfLstmLaunch;

/* How one direction runs (filled by zf_lstm_plan). */
typedef struct ZfLstmPlan {
  int blocks;           /* grid size: ceil(H / units_per_block) */
  int threads;          /* per block */
  int units_per_block;  /* hidden units j owned by each block */
  int rows;             /* W_hh rows (forward: 4 * units) or columns (backward: units) resident */
  int k;                /* reduction length: H forward, 4H backward */
  int kc;               /* K chunk staged in shared memory per pass */
  int ksplit;           /* threads sharing one register tile, splitting K */
  int row_groups_b;     /* ceil(B / TB) */
  int row_groups_m;     /* ceil(rows / TM) */
  int w_stride;         /* padded row stride of the resident W slice (elements) */
  int a_stride;         /* padded row stride of the staged chunk (elements) */
  int mma;              /* 1 / 3: TF32 tensor-core tiles (TF32 products per element; bfloat16: 1, its
                           m16n8k16 tiles, K steps of 16), one warp per 16 x 8 tile of (batch x rows): then
                           row_groups_b = ceil(B / 16), row_groups_m = ceil(rows / 8), ksplit = warps
                           sharing one tile (K steps of 8 dealt round-robin) */
  long long w_bytes;    /* resident W slice */
  long long part_bytes; /* register-tile partial sums */
  long long state_bytes;/* c (forward) or dc (backward) of the block's units */
  long long a_bytes;    /* staged chunk of h_{t-1} (forward) / dgates_{t+1} (backward) */
  long long smem_bytes; /* total dynamic shared memory per block */
} ZfLstmPlan;

/* Plan one direction (backward = 0 / 1) for batch B, hidden size H and elements of elem_size
 * bytes (4 or 8; 2: bfloat16, always on its tensor-core tiles, mma = 1, whatever cfg->tf32 says).
 * On a CUDA build, fields of `cfg` left 0 are read from the current device. */
int zf_lstm_plan(int backward, int B, int H, int elem_size, const ZfLstmLaunch* cfg,
                 ZfLstmPlan* plan, char* err, int errlen);

/* Forward recurrence, one cooperative launch. In: gates (T, B, 4H) = x W_ih^T + b_ih + b_hh,
 * h0 (B, H), w_hh (4H, H), c_all[0] = c0 (B, H). Out: out (T, B, H) = h_t, c_all[s + 1]
 * (step s in reading order), and gates overwritten in place with the pre-activations
 * z_t = gates_t + h_{t-1} W_hh^T. All contiguous. reverse: steps read t = T-1 .. 0. */
int zf_lstm_forward_f32(float* gates, const float* h0, const float* w_hh, float* out, float* c_all,
                        int T, int B, int H, int reverse, const ZfLstmLaunch* cfg, void* stream,
                        char* err, int errlen);
int zf_lstm_forward_f64(double* gates, const double* h0, const double* w_hh, double* out,
                        double* c_all, int T, int B, int H, int reverse, const ZfLstmLaunch* cfg,
                        void* stream, char* err, int errlen);
/* bfloat16 (tensors as their 16-bit patterns): gates, h0, w_hh and out in bfloat16, c_all in
 * float32; products on bfloat16 tensor-core tiles (mma.sync m16n8k16) with float32 accumulation,
 * the cell update in float32, h_t and the pre-activations rounded to bfloat16 when stored. */
int zf_lstm_forward_bf16(unsigned short* gates, const unsigned short* h0, const unsigned short* w_hh,
                         unsigned short* out, float* c_all, int T, int B, int H, int reverse,
                         const ZfLstmLaunch* cfg, void* stream, char* err, int errlen);

/* Backward recurrence, one cooperative launch. In: d_out (T, B, H), d_hT (B, H), w_hh, the
 * saved pre-activations in `gates` and c_all (T+1, B, H), dc = dc_T (B, H). Out: gates
 * overwritten with dgates (T, B, 4H), dc = dc_0. */
int zf_lstm_backward_f32(const float* d_out, const float* d_hT, const float* w_hh, float* gates,
                         const float* c_all, float* dc, int T, int B, int H, int reverse,
                         const ZfLstmLaunch* cfg, void* stream, char* err, int errlen);
int zf_lstm_backward_f64(const double* d_out, const double* d_hT, const double* w_hh,
                         double* gates, const double* c_all, double* dc, int T, int B, int H,
                         int reverse, const ZfLstmLaunch* cfg, void* stream, char* err, int errlen);
/* bfloat16: d_out, d_hT, w_hh, gates (in: pre-activations, out: dgates) in bfloat16; c_all and dc
 * in float32. */
int zf_lstm_backward_bf16(const unsigned short* d_out, const unsigned short* d_hT, const unsigned short* w_hh,
                          unsigned short* gates, const float* c_all, float* dc, int T, int B, int H, int reverse,
                          const ZfLstmLaunch* cfg, void* stream, char* err, int errlen);

#ifdef __cplusplus
}
#endif

#endif /* ZF_LSTM_KERNELS_H */
