// Portability layer for the zf_kernels CUDA kernels: the same kernel source compiles
//   * with nvcc as CUDA (cooperative launch, grid.sync(), dynamic shared memory), and
//   * with g++ -std=c++20 -DZF_CPU_EMULATION as a CPU library in which every block is a group of
//     std::threads (one per CUDA thread), __syncthreads is a per-block std::barrier and the grid
//     sync a global std::barrier. That lets a CPU-only machine run the kernels' real indexing,
//     tiling and synchronisation (tests/test_cuda_emulation.py).
// Kernels use only what is defined here: zf_tid(), zf_nthreads(), zf_bid(), zf_nblocks(),
// zf_block_sync(), zf_grid_sync(), zf_dynamic_smem(), zf_ldcg(). No warp shuffles, no tensor
// cores (the emulation has no warps).
#pragma once

#include <cstddef>
#include <cstdint>

#ifndef ZF_CPU_EMULATION
// ------------------------------------------------------------------------------------- CUDA
#include <cooperative_groups.h>
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
ZF_DEVICE void zf_grid_sync() { cooperative_groups::this_grid().sync(); }

ZF_DEVICE unsigned char* zf_dynamic_smem() {
  extern __shared__ __align__(16) unsigned char zf_smem_raw[];
  return zf_smem_raw;
}

// loads of data that other blocks wrote in the same launch: L2 only (.cg), never a stale L1 line
template <typename T>
ZF_DEVICE T zf_ldcg(const T* p) { return __ldcg(p); }

#else
// ------------------------------------------------------------------------------ CPU emulation
#include <barrier>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#define ZF_GLOBAL
#define ZF_DEVICE inline
#define ZF_HOST_DEVICE inline
#define ZF_UNROLL _Pragma("GCC unroll 4")

namespace zf_emu {

struct Block {
  explicit Block(int threads, std::size_t smem) : bar(threads), smem(smem + 16) {}
  std::barrier<> bar;
  std::vector<unsigned char> smem;
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
          std::lock_guard<std::mutex> lk(err_mu);
          if (!err) err = std::current_exception();
        }
      });
    }
    for (auto& th : pool) th.join();
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
inline unsigned char* zf_dynamic_smem() {
  // 16-byte aligned like CUDA's dynamic shared memory
  auto* p = zf_emu::self.block->smem.data();
  return p + ((16 - reinterpret_cast<std::uintptr_t>(p) % 16) % 16);
}
template <typename T>
inline T zf_ldcg(const T* p) { return *p; }

#endif  // ZF_CPU_EMULATION
