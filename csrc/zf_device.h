// Portability layer for the zf_kernels CUDA kernels: the same kernel source compiles
//   * with nvcc as CUDA (cooperative launch, grid.sync(), dynamic shared memory), and
//   * with g++ -std=c++20 -DZF_CPU_EMULATION as a CPU library in which every block is a group of
//     std::threads (one per CUDA thread), __syncthreads is a per-block std::barrier and the grid
//     sync a global std::barrier. That lets a CPU-only machine run the kernels' real indexing,
//     tiling and synchronisation (tests/test_cuda_emulation.py).
// Kernels use only what is defined here: zf_tid(), zf_nthreads(), zf_bid(), zf_nblocks(),
// zf_block_sync(), zf_grid_sync(), zf_dynamic_smem(), zf_ldcg() (zf_ldcg16: 16 bytes), the
// bfloat16 storage type zf_bf16 (zf_widen / zf_narrow convert), and two tensor-core products,
// zf_mma_tf32() (mma.sync m16n8k8, TF32 operands) and zf_mma_bf16() (m16n8k16, bfloat16
// operands), both with float32 accumulators, which the emulation runs per warp of 32 consecutive
// threads (a warp barrier and a scratch exchange, so each lane's fragment elements come from all
// 32 lanes' registers as on the GPU). No warp shuffles.
#pragma once

#include <cstddef>
#include <cstdint>

#ifndef ZF_CPU_EMULATION
// ------------------------------------------------------------------------------------- CUDA
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#define ZF_GLOBAL __global__
#define ZF_DEVICE __device__ __forceinline__
#define ZF_HOST_DEVICE __host__ __device__ __forceinline__
#define ZF_UNROLL _Pragma("unroll")

ZF_DEVICE int zf_tid() { return static_cast<int>(threadIdx.x); }
ZF_DEVICE int zf_nthreads() { return static_cast<int>(blockDim.x); }
ZF_DEVICE int zf_bid() { return static_cast<int>(blockIdx.x); }
ZF_DEVICE int zf_nblocks() { return static_cast<int>(gridDim.x); }
ZF_DEVICE void zf_block_sync() { __syncthreads(); }
// every block of a cooperative launch meets here; the writes of all blocks before it are
// visible to all blocks after it
#ifndef ZF_TIMING_SKIP_GRID_SYNC
ZF_DEVICE void zf_grid_sync() { cooperative_groups::this_grid().sync(); }
#else  // a timing variant (zf_persistent.h): the blocks never wait for each other; wrong results
ZF_DEVICE void zf_grid_sync() {}
#endif

ZF_DEVICE unsigned char* zf_dynamic_smem() {
  extern __shared__ __align__(16) unsigned char zf_smem_raw[];
  return zf_smem_raw;
}

// the emulation counts which paths of the staging ran (zf_emu_count below); nothing on a GPU
#define ZF_EMU_COUNT(counter) ((void)0)

// loads of data that other blocks wrote in the same launch: L2 only (.cg), never a stale L1 line
template <typename T>
ZF_DEVICE T zf_ldcg(const T* p) { return __ldcg(p); }
// bfloat16 through the 16-bit integer load: cuda_bf16.hpp's __ldcg(const __nv_bfloat16*) is an
// asm that is neither volatile nor clobbers memory, so nvcc may move it above the grid sync that
// publishes the value (the float, double, integer and vector overloads are asm volatile)
ZF_DEVICE __nv_bfloat16 zf_ldcg(const __nv_bfloat16* p) {
  return __ushort_as_bfloat16(__ldcg(reinterpret_cast<const unsigned short*>(p)));
}
// 16 bytes moved as one (one 128-bit load or store); zf_ldcg16: p 16-byte aligned, L2 only
using zf_vec16 = uint4;
ZF_DEVICE zf_vec16 zf_ldcg16(const void* p) { return __ldcg(reinterpret_cast<const uint4*>(p)); }

ZF_DEVICE unsigned zf_tf32_bits(float x) {
  unsigned u;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(u) : "f"(x));
  return u;
}
// x rounded to TF32 (a float whose low 13 mantissa bits are zero)
ZF_DEVICE float zf_to_tf32(float x) { return __uint_as_float(zf_tf32_bits(x)); }

// d (16 x 8, float32) += A (16 x 8) * B (8 x 8), the operands rounded to TF32 (nearest, ties away
// from zero), one warp. Fragments (PTX ISA, mma.m16n8k8 .tf32; g = lane / 4, t = lane % 4):
// a = A[g][t], A[g+8][t], A[g][t+4], A[g+8][t+4]; b = B[t][g], B[t+4][g];
// d = D[g][2t], D[g][2t+1], D[g+8][2t], D[g+8][2t+1]. Every lane of the warp must call it.
ZF_DEVICE void zf_mma_tf32(float (&d)[4], const float (&a)[4], const float (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(zf_tf32_bits(a[0])), "r"(zf_tf32_bits(a[1])), "r"(zf_tf32_bits(a[2])), "r"(zf_tf32_bits(a[3])),
        "r"(zf_tf32_bits(b[0])), "r"(zf_tf32_bits(b[1])));
#else
  __trap();  // the planner never chooses the tensor-core tiles below sm_80
#endif
}

// bfloat16 storage (1 sign, 8 exponent, 7 mantissa bits); arithmetic stays float32
using zf_bf16 = __nv_bfloat16;
ZF_DEVICE float zf_widen(zf_bf16 x) { return __bfloat162float(x); }
ZF_DEVICE zf_bf16 zf_bf16_from(float x) { return __float2bfloat16_rn(x); }  // nearest, ties to even

// d (16 x 8, float32) += A (16 x 16) * B (16 x 8), bfloat16 operands, exact products, one warp.
// Each register packs two bfloat16, the lower-indexed element in the low 16 bits (PTX ISA,
// mma.m16n8k16 .bf16; g = lane / 4, t = lane % 4): a = A[g][2t..2t+1], A[g+8][2t..2t+1],
// A[g][2t+8..2t+9], A[g+8][2t+8..2t+9]; b = B[2t..2t+1][g], B[2t+8..2t+9][g]; d as zf_mma_tf32's.
ZF_DEVICE void zf_mma_bf16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  __trap();  // the planner never chooses the tensor-core tiles below sm_80
#endif
}

// two adjacent bfloat16 of shared memory (4-byte aligned) as one mma operand register
ZF_DEVICE unsigned zf_bf16x2(const zf_bf16* p) { return *reinterpret_cast<const unsigned*>(p); }
ZF_DEVICE unsigned zf_bf16_bits(zf_bf16 x) { return __bfloat16_as_ushort(x); }

#else
// ------------------------------------------------------------------------------ CPU emulation
#include <atomic>
#include <barrier>
#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#define ZF_GLOBAL
#define ZF_DEVICE inline
#define ZF_HOST_DEVICE inline
#define ZF_UNROLL _Pragma("GCC unroll 4")

namespace zf_emu {

// floats per lane a warp's mma exchanges: zf_mma_tf32 a[4] + b[2], zf_mma_bf16 8 + 4 elements
constexpr int kMmaScratch = 12;

// bytes of a known pattern on both sides of a block's shared memory: a kernel that writes past
// its end (or before its start) changes them, and the launch fails naming the block, instead of
// corrupting the heap (which could hang the emulation rather than fail it)
constexpr std::size_t kCanary = 64 * 1024;
constexpr unsigned char kCanaryByte = 0xA5;

struct Block {
  // shared memory starts as 0xFF bytes (float / double NaN), not zeros: a kernel that reads an
  // element it never wrote gets NaN here, as it may get garbage on a GPU
  explicit Block(int threads, std::size_t smem)
      : bar(threads), smem_bytes(smem), smem(kCanary + 16 + smem + kCanary, kCanaryByte) {
    for (int w = 0; w < threads / 32; ++w) warp_bar.push_back(std::make_unique<std::barrier<>>(32));
    mma_scratch.resize(static_cast<std::size_t>(threads / 32) * 32 * kMmaScratch);
    std::memset(base(), 0xFF, smem_bytes);
  }
  // the dynamic shared memory: 16-byte aligned like CUDA's, past the leading canary
  unsigned char* base() {
    unsigned char* p = smem.data() + kCanary;
    return p + ((16 - reinterpret_cast<std::uintptr_t>(p) % 16) % 16);
  }
  // the bytes outside [base(), base() + smem_bytes) that the kernel changed (0: none)
  std::size_t canary_damage() {
    const unsigned char *lo = base(), *hi = base() + smem_bytes, *end = smem.data() + smem.size();
    std::size_t n = 0;
    for (const unsigned char* q = smem.data(); q < end; q = (q + 1 == lo ? hi : q + 1)) n += *q != kCanaryByte;
    return n;
  }
  std::barrier<> bar;
  std::size_t smem_bytes;
  std::vector<unsigned char> smem;
  // per warp of 32 consecutive threads (threads / 32 whole warps): its barrier and the registers
  // its lanes exchange in zf_mma_tf32 / zf_mma_bf16 (kMmaScratch floats per lane)
  std::vector<std::unique_ptr<std::barrier<>>> warp_bar;
  std::vector<float> mma_scratch;
};

struct ThreadState {
  int tid = 0, nthreads = 1, bid = 0, nblocks = 1;
  Block* block = nullptr;
  std::barrier<>* grid = nullptr;
};

inline thread_local ThreadState self;

// Run kernel() on a grid of `blocks` x `threads` emulated CUDA threads with `smem` bytes of
// dynamic shared memory per block. With ZF_EMU_NO_GRID_SYNC defined, zf_grid_sync() is a no-op
// and the blocks run one after another: the deterministic worst case of a missing grid
// barrier (each block still syncs its own threads there), which the tests use to show that
// they detect one.
inline void launch(int blocks, int threads, std::size_t smem, const std::function<void()>& kernel) {
  std::mutex err_mu;
  std::exception_ptr err;
  auto run_block = [&](int b, std::barrier<>* grid) {
    Block block(threads, smem);
    std::vector<std::thread> pool;
    pool.reserve(threads);
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        self = ThreadState{t, threads, b, blocks, &block, grid};
        try {
          kernel();
        } catch (...) {
          {
            std::lock_guard<std::mutex> lk(err_mu);
            if (!err) err = std::current_exception();
          }
          // the rest of the grid runs on without this thread (where a GPU would abort the
          // kernel): its barriers stop waiting for it, so a failing test fails, not hangs
          block.bar.arrive_and_drop();
          if (static_cast<std::size_t>(t / 32) < block.warp_bar.size()) block.warp_bar[t / 32]->arrive_and_drop();
          if (grid != nullptr) grid->arrive_and_drop();
        }
      });
    }
    for (auto& th : pool) th.join();
    if (const std::size_t bad = block.canary_damage()) {
      std::lock_guard<std::mutex> lk(err_mu);
      if (!err)
        err = std::make_exception_ptr(std::logic_error(
            "block " + std::to_string(b) + " wrote " + std::to_string(bad) + " bytes outside its " +
            std::to_string(smem) + " bytes of dynamic shared memory"));
    }
  };
#ifdef ZF_EMU_NO_GRID_SYNC
  for (int b = 0; b < blocks; ++b) run_block(b, nullptr);
#else
  std::barrier<> grid(static_cast<std::ptrdiff_t>(blocks) * threads);
  std::vector<std::thread> block_threads;
  for (int b = 0; b < blocks; ++b) block_threads.emplace_back(run_block, b, &grid);
  for (auto& th : block_threads) th.join();
#endif
  if (err) std::rethrow_exception(err);
}

}  // namespace zf_emu

inline int zf_tid() { return zf_emu::self.tid; }
inline int zf_nthreads() { return zf_emu::self.nthreads; }
inline int zf_bid() { return zf_emu::self.bid; }
inline int zf_nblocks() { return zf_emu::self.nblocks; }
inline void zf_block_sync() { zf_emu::self.block->bar.arrive_and_wait(); }
inline void zf_grid_sync() {
#ifndef ZF_EMU_NO_GRID_SYNC
  zf_emu::self.grid->arrive_and_wait();
#else
  zf_emu::self.block->bar.arrive_and_wait();  // only the cross-block part of the barrier is missing
#endif
}
inline unsigned char* zf_dynamic_smem() { return zf_emu::self.block->base(); }
template <typename T>
inline T zf_ldcg(const T* p) { return *p; }
struct alignas(16) zf_vec16 {
  std::uint32_t x, y, z, w;
};
inline zf_vec16 zf_ldcg16(const void* p) {
  if (reinterpret_cast<std::uintptr_t>(p) % 16 != 0) throw std::logic_error("zf_ldcg16: address not 16-byte aligned");
  zf_vec16 v;
  std::memcpy(&v, p, 16);
  return v;
}

// cvt.rna.tf32.f32: keep 10 of float32's 23 mantissa bits, rounding to nearest, ties away from
// zero (the low 13 bits of the result are zero); NaN and infinity pass unchanged (the bit trick
// would carry a NaN's mantissa into its sign and make it 0: a NaN read must stay visible)
inline float zf_to_tf32(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7F800000u) == 0x7F800000u) return x;
  u = (u + 0x1000u) & ~0x1FFFu;
  std::memcpy(&x, &u, 4);
  return x;
}

// The warp's mma.m16n8k8 (see the CUDA version for the fragments): each lane publishes its a and
// b registers, the warp meets, each lane computes its four elements of D from all lanes' values
// (TF32 operands, exact products, float32 sums in k order), the warp meets again before the
// scratch is reused.
inline void zf_mma_tf32(float (&d)[4], const float (&a)[4], const float (&b)[2]) {
  auto& self = zf_emu::self;
  if (self.nthreads % 32 != 0) throw std::logic_error("zf_mma_tf32 needs whole warps of 32 threads");
  const int warp = self.tid / 32, lane = self.tid % 32;
  float* sc = self.block->mma_scratch.data() + static_cast<std::size_t>(warp) * 32 * zf_emu::kMmaScratch;
  for (int i = 0; i < 4; ++i) sc[lane * 12 + i] = zf_to_tf32(a[i]);
  for (int i = 0; i < 2; ++i) sc[lane * 12 + 4 + i] = zf_to_tf32(b[i]);
  self.block->warp_bar[warp]->arrive_and_wait();
  const int g = lane / 4, t = lane % 4;
  for (int r = 0; r < 4; ++r) {
    const int row = g + 8 * (r / 2), col = 2 * t + r % 2;
    float acc = d[r];
    for (int k = 0; k < 8; ++k) {
      // A[row][k]: lane (row % 8) * 4 + k % 4, register (row / 8) + 2 * (k / 4);
      // B[k][col]: lane col * 4 + k % 4, register k / 4
      const float av = sc[((row % 8) * 4 + k % 4) * 12 + (row / 8) + 2 * (k / 4)];
      const float bv = sc[(col * 4 + k % 4) * 12 + 4 + k / 4];
      acc += av * bv;
    }
    d[r] = acc;
  }
  self.block->warp_bar[warp]->arrive_and_wait();
}

// bfloat16 storage: the upper 16 bits of a float32 (same bits as torch.bfloat16, so tensors pass
// through ctypes unchanged)
struct zf_bf16 {
  std::uint16_t bits;
};
static_assert(sizeof(zf_bf16) == 2, "zf_bf16 must be 2 bytes like torch.bfloat16");
inline float zf_widen(zf_bf16 x) {
  const std::uint32_t u = static_cast<std::uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
// nearest, ties to even (__float2bfloat16_rn); NaN stays NaN (a quiet NaN with its sign)
inline zf_bf16 zf_bf16_from(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7F800000u) == 0x7F800000u && (u & 0x007FFFFFu) != 0)
    return zf_bf16{static_cast<std::uint16_t>((u >> 16) | 0x0040u)};
  u += 0x7FFFu + ((u >> 16) & 1u);
  return zf_bf16{static_cast<std::uint16_t>(u >> 16)};
}
inline unsigned zf_bf16x2(const zf_bf16* p) {
  // the GPU's one 32-bit load faults on an address that is not 4-byte aligned: so does this
  if (reinterpret_cast<std::uintptr_t>(p) % 4 != 0) throw std::logic_error("zf_bf16x2: address not 4-byte aligned");
  return static_cast<unsigned>(p[0].bits) | (static_cast<unsigned>(p[1].bits) << 16);
}
inline unsigned zf_bf16_bits(zf_bf16 x) { return x.bits; }

// The warp's mma.m16n8k16 .bf16 (see the CUDA version for the fragments): as zf_mma_tf32, each
// lane publishes its 8 A and 4 B elements, each lane computes its four elements of D (exact
// products, float32 sums in k order).
inline void zf_mma_bf16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
  auto& self = zf_emu::self;
  if (self.nthreads % 32 != 0) throw std::logic_error("zf_mma_bf16 needs whole warps of 32 threads");
  const int warp = self.tid / 32, lane = self.tid % 32;
  float* sc = self.block->mma_scratch.data() + static_cast<std::size_t>(warp) * 32 * zf_emu::kMmaScratch;
  auto half = [](unsigned r, int i) {  // element i (0: low 16 bits) of a packed register
    return zf_widen(zf_bf16{static_cast<std::uint16_t>(i ? r >> 16 : r & 0xFFFFu)});
  };
  for (int i = 0; i < 8; ++i) sc[lane * 12 + i] = half(a[i / 2], i % 2);      // element a_i
  for (int i = 0; i < 4; ++i) sc[lane * 12 + 8 + i] = half(b[i / 2], i % 2);  // element b_i
  self.block->warp_bar[warp]->arrive_and_wait();
  const int g = lane / 4, t = lane % 4;
  for (int r = 0; r < 4; ++r) {
    const int row = g + 8 * (r / 2), col = 2 * t + r % 2;
    float acc = d[r];
    for (int k = 0; k < 16; ++k) {
      // A[row][k] is element a_i of lane (row % 8) * 4 + (k % 8) / 2, i = 2 * (row / 8) + 4 * (k / 8) + k % 2;
      // B[k][col] is element b_i of lane col * 4 + (k % 8) / 2, i = 2 * (k / 8) + k % 2
      const float av = sc[((row % 8) * 4 + (k % 8) / 2) * 12 + 2 * (row / 8) + 4 * (k / 8) + k % 2];
      const float bv = sc[(col * 4 + (k % 8) / 2) * 12 + 8 + 2 * (k / 8) + k % 2];
      acc += av * bv;
    }
    d[r] = acc;
  }
  self.block->warp_bar[warp]->arrive_and_wait();
}

// How often each path of zf_persistent.h's stage_chunk ran in this library since the last reset,
// per batch of ZF_STAGE_BATCH loads of one thread: the staging tests assert that the shapes they
// compare the builds on reach the path they test (a path no shape reaches is a test that cannot
// fail). Read and reset through the C function zf_emu_stage_counts.
namespace zf_emu {
enum StageCounter { kStageVectorsInside, kStageVectorsEdge, kStageElements, kStageCounters };
inline std::atomic<long long> stage_counts[kStageCounters];
}  // namespace zf_emu
#define ZF_EMU_COUNT(counter) zf_emu::stage_counts[zf_emu::counter].fetch_add(1, std::memory_order_relaxed)

extern "C" __attribute__((used)) inline void zf_emu_stage_counts(long long* out, int reset) {
  for (int i = 0; i < zf_emu::kStageCounters; ++i)
    out[i] = reset ? zf_emu::stage_counts[i].exchange(0) : zf_emu::stage_counts[i].load();
}

// The emulation's own check of its shared-memory guard: one block of `threads` threads, each
// writing one byte at offset (smem + `past` - 1 - tid) of its `smem` bytes (past <= 0: all
// inside); copies the launch's error message (empty when none) into err. Returns 1 on an error.
extern "C" __attribute__((used)) inline int zf_emu_write_past_smem(int smem, int past, int threads, char* err,
                                                                   int errlen) {
  err[0] = 0;
  try {
    zf_emu::launch(1, threads, static_cast<std::size_t>(smem), [&] {
      const long long at = static_cast<long long>(smem) + past - 1 - zf_tid();
      if (at >= -static_cast<long long>(zf_emu::kCanary)) zf_dynamic_smem()[at] = 0;
    });
  } catch (const std::exception& e) {
    std::snprintf(err, static_cast<std::size_t>(errlen), "%s", e.what());
    return 1;
  }
  return 0;
}

#endif  // ZF_CPU_EMULATION

// the same conversions for the float types (identity), so a kernel templated on its storage type
// reads zf_widen(x) and writes zf_narrow<S>(v) whatever S is
ZF_HOST_DEVICE float zf_widen(float x) { return x; }
ZF_HOST_DEVICE double zf_widen(double x) { return x; }
template <typename S> struct zf_narrow_to {
  template <typename V> static ZF_DEVICE S from(V v) { return static_cast<S>(v); }
};
template <> struct zf_narrow_to<zf_bf16> {
  static ZF_DEVICE zf_bf16 from(float v) { return zf_bf16_from(v); }
};
template <typename S, typename V>
ZF_DEVICE S zf_narrow(V v) { return zf_narrow_to<S>::from(v); }

// the arithmetic type of a storage type: float for bfloat16, else itself
template <typename S> struct zf_acc_of { using type = S; };
template <> struct zf_acc_of<zf_bf16> { using type = float; };
template <typename S> using zf_acc_t = typename zf_acc_of<S>::type;
