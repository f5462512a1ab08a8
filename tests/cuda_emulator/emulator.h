// Runs csrc/cuda/*.cu kernels on the CPU, for the tests of a machine without a GPU.
//
// Force-included (g++ -include) ahead of each .cu, which tests/cuda_emu.py first rewrites
// in two places only: `kernel<<<config>>>(args)` becomes
// `gptk_emu::launch(gptk_emu::config(config), kernel, args)`, and each `__shared__`
// declaration a reference into the running block's shared memory (below). The inline PTX
// lives in csrc/cuda/ptx.cuh, which the include path replaces by
// tests/cuda_emulator/cuda/ptx.cuh (mma, ldmatrix, cp.async on the functions below).
// Everything else compiles as written.
//
// The model: a block's threads are fibers (ucontext) on one OS thread, each running the
// kernel until it finishes or waits at a barrier; __syncthreads() releases when every live
// thread of the block waits there, __syncwarp() (and so every shuffle and mma, built on
// it) when every live thread of the warp does. A thread that returned early leaves its
// barriers, as on the GPU. Blocks run one after another, each with its own shared memory.
// Deadlocks and bad launch shapes are reported, not hung.
//
// What hardware leaves undefined is made to show:
//  - Shared memory, static and dynamic, starts every block as 0xff bytes (NaN as fp32,
//    fp16 and bf16), so a read of a byte the block never wrote (a missing zero-fill of
//    padding rows: NaN x 0 is NaN) poisons the result. The outputs the tests' host glue
//    (tests/cuda_emu.py) allocates empty, as entry.cpp does, start as NaN too (integers:
//    the most negative value); those it zero-fills stay zeros.
//  - Every static `__shared__` array sits at an address aligned to exactly its declared
//    alignment (an odd multiple of it), dynamic shared memory at exactly 16 bytes: an
//    array of floats read as 16-byte packs without alignas(16) is misaligned here, as it
//    can be on the GPU (the x86-64 ABI would otherwise align every array to 16).
//  - A load or store through a pointer not aligned to its type (the 16-, 8- and 4-byte
//    Pack<> accesses of common.cuh, fragment pairs, float2 ...; the kernels are built with
//    -fsanitize=alignment, whose handler is here), a cp.async or an ldmatrix row address
//    not aligned to 16 bytes, is a fault: the launch fails with cudaErrorMisalignedAddress
//    and take_fault() names the kernel, the address, the width and the source line.
//
// Races: threads take turns in a chosen order (set_schedule: forward, reverse, shuffled,
// warp-serial); tests run kernels under several orders and require bitwise-equal results,
// which catches missing barriers (not a full racecheck: compute-sanitizer on a GPU is that).
//
// Rounding: built with FMA contraction (tests/cuda_emu.py: -ffp-contract=fast, and -mfma
// where the CPU has FMA; cuda_emu.contracts() probes it), so a * b + c is fused as nvcc
// fuses it by default, while __fmul_rn stays a rounded product, as on the GPU. What it
// cannot check: where g++ and nvcc each choose to fuse (a * b + c * d: which product;
// across statements) may differ, so results agree with the GPU's to rounding, not bit for
// bit; exp2f and the other math functions are the C library's, not the GPU's
// approximations (ex2.approx); mma sums its 16 products in order in fp32, not in the
// tensor core's order and internal width. On a CPU without FMA, a * b + c rounds twice.
//
// What this does not model: timing, memory ordering between blocks, bank conflicts.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>

namespace gptk_emu {

struct ThreadContext {
  dim3 thread_idx, block_idx, block_dim, grid_dim;
  int lane, warp;
};

ThreadContext& ctx();
void sync_block();
void sync_warp();
// Scratch shared by the 32 lanes of the running thread's warp (shuffles, mma operands).
unsigned char* warp_scratch();
constexpr int kScratchPerLane = 64;

void run_grid(dim3 grid, dim3 block, const std::function<void()>& body);
void set_error(cudaError_t e);

// The order in which a block's runnable threads take their turns between barriers. Outputs
// of a race-free kernel do not depend on it; a missing __syncthreads() makes them. The
// interleaved orders keep warps in step (a missing barrier after a shared-memory write
// shows); the warp-serial ones run each warp alone up to the next __syncthreads() (a
// missing barrier before a tile is overwritten shows).
// cp.async copies land at the issuing thread's wait (lazy) or at once (eager): both are
// legal on hardware, so a kernel must not depend on which.
enum class Schedule { kForward = 0, kReverse = 1, kShuffle = 2, kWarpSerial = 3, kWarpSerialReverse = 4 };
void set_schedule(Schedule s, unsigned seed, bool eager_copies);

struct LaunchConfig {
  dim3 grid, block;
  size_t smem;
};
inline LaunchConfig config(dim3 grid, dim3 block, size_t smem = 0, cudaStream_t /*stream*/ = nullptr) {
  return LaunchConfig{grid, block, smem};
}

// Dynamic shared memory (`extern __shared__`, reached through csrc/cuda/ptx.cuh's
// dynamic_smem()): one buffer of the launch's size per block, 0xff bytes at the block's
// start. A launch asking for more than the opt-in limit (set_smem_limit; 227 KB, an
// H100's, by default) or for more than 48 KB without cudaFuncSetAttribute fails as on
// hardware.
unsigned char* dynamic_smem();
void set_dynamic_smem(size_t bytes);
void set_smem_limit(int bytes);
int smem_limit();
void allow_dynamic_smem(const void* kernel, int bytes);
int dynamic_smem_allowed(const void* kernel);

// Launch recording (tests/test_static_cuda.py): each launch's kernel and shape is logged;
// in a dry run nothing executes, so the launchers can be asked about full-size shapes
// with made-up device pointers.
void record_launch(const void* kernel, const LaunchConfig& c);
bool dry_run();
void set_dry_run(bool on);
void clear_launches();
int launch_count();
void launch_record(int i, uint64_t* offset, unsigned* grid, unsigned* block, uint64_t* smem);

// Static shared memory: tests/cuda_emu.py rewrites `__shared__ T name[N];` into
// `using type = T[N]; static SharedSlot slot; auto& name = shared<type, ALIGN>(slot);`
// (ALIGN from an alignas, else 0). The first thread of a block to reach the declaration places it in the
// block's 48 KB (at an odd multiple of its alignment) and fills it with 0xff; the others
// get the same storage.
struct SharedSlot {
  uint64_t block = 0;  // the block it was placed for (blocks count from 1)
  void* p = nullptr;
};
uint64_t block_serial();
void* shared_alloc(size_t bytes, size_t align);
template <typename U, size_t ALIGN>
U& shared(SharedSlot& slot) {
  if (slot.block != block_serial()) {
    slot.p = shared_alloc(sizeof(U), ALIGN > alignof(U) ? ALIGN : alignof(U));
    slot.block = block_serial();
  }
  return *static_cast<U*>(slot.p);
}

// Faults: a misaligned access ends the launch as on the GPU (no other thread or block runs
// on) and the launch returns cudaErrorMisalignedAddress; take_fault() hands over its
// message (address, width, source line; the kernel as an offset into the library) once.
void check_aligned(const void* p, int width, const char* what, const char* file, int line);
void set_kernel(const void* kernel);
int take_fault(char* buf, int len, uint64_t* kernel_offset);

template <typename... Params, typename... Args>
void launch(LaunchConfig c, void (*kernel)(Params...), Args&&... args) {
  record_launch(reinterpret_cast<const void*>(kernel), c);
  if (dry_run()) return;
  const int allowed = dynamic_smem_allowed(reinterpret_cast<const void*>(kernel));
  if (c.smem > static_cast<size_t>(allowed > 48 * 1024 ? allowed : 48 * 1024) ||
      c.smem > static_cast<size_t>(smem_limit())) {
    set_error(cudaErrorInvalidValue);
    return;
  }
  set_dynamic_smem(c.smem);
  set_kernel(reinterpret_cast<const void*>(kernel));
  run_grid(c.grid, c.block, [&] { kernel(args...); });
  set_kernel(nullptr);
}

// ---- warp exchange ----
template <typename T>
T shfl(T v, int src_lane) {
  static_assert(sizeof(T) <= kScratchPerLane, "shuffled value too large");
  unsigned char* s = warp_scratch();
  std::memcpy(s + ctx().lane * kScratchPerLane, &v, sizeof(T));
  sync_warp();
  T r;
  std::memcpy(&r, s + (src_lane & 31) * kScratchPerLane, sizeof(T));
  sync_warp();  // the scratch is free again
  return r;
}

// ---- mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}: fragments as the PTX ISA lays them out ----
struct f16 {};
struct bf16 {};

inline float half_of(uint32_t reg, int hi, f16) {
  __half h;
  const uint16_t bits = static_cast<uint16_t>(hi ? reg >> 16 : reg & 0xffffu);
  std::memcpy(&h, &bits, 2);
  return __half2float(h);
}
inline float half_of(uint32_t reg, int hi, bf16) {
  __nv_bfloat16 h;
  const uint16_t bits = static_cast<uint16_t>(hi ? reg >> 16 : reg & 0xffffu);
  std::memcpy(&h, &bits, 2);
  return __bfloat162float(h);
}

template <typename Tag>
void mma_m16n8k16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  struct Operands {
    uint32_t a[4], b[2];
  };
  static_assert(sizeof(Operands) <= kScratchPerLane, "mma operands too large");
  unsigned char* s = warp_scratch();
  const Operands mine{{a[0], a[1], a[2], a[3]}, {b0, b1}};
  std::memcpy(s + ctx().lane * kScratchPerLane, &mine, sizeof(mine));
  sync_warp();
  auto lane_ops = [&](int lane) {
    Operands o;
    std::memcpy(&o, s + lane * kScratchPerLane, sizeof(o));
    return o;
  };
  // A (16 x 16, row): lane 4 g + t holds rows g and g + 8, columns 2t, 2t + 1 (+ 8).
  auto a_at = [&](int row, int k) {
    const Operands o = lane_ops((row % 8) * 4 + (k % 8) / 2);
    return half_of(o.a[(row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0)], k % 2, Tag{});
  };
  // B (16 x 8, col): lane 4 g + t holds column g, rows 2t, 2t + 1 (+ 8).
  auto b_at = [&](int k, int col) {
    const Operands o = lane_ops(col * 4 + (k % 8) / 2);
    return half_of(o.b[k >= 8 ? 1 : 0], k % 2, Tag{});
  };
  // C (16 x 8): lane 4 g + t holds rows g (c0, c1) and g + 8 (c2, c3), columns 2t, 2t + 1.
  const int g = ctx().lane >> 2, t = ctx().lane & 3;
  float out[4];
  for (int i = 0; i < 4; ++i) {
    const int row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
    float acc = c[i];
    for (int k = 0; k < 16; ++k) acc += a_at(row, k) * b_at(k, col);
    out[i] = acc;
  }
  sync_warp();  // every lane has read the operands
  for (int i = 0; i < 4; ++i) c[i] = out[i];
}

// ---- ldmatrix.sync.aligned.m8n8.xNUM{.trans}.shared.b16 ----
// Lane 8 i + r gives the address of row r of matrix i; lane 4 r + w receives elements
// (r, 2 w) and (r, 2 w + 1) of matrix i, or (2 w, r) and (2 w + 1, r) when transposed.
template <int NUM, bool TRANS>
void ldmatrix(uint32_t (&out)[NUM], const void* row, const char* file, int line) {
  check_aligned(row, 16, "ldmatrix row address", file, line);
  unsigned char* s = warp_scratch();
  const unsigned char* mine = static_cast<const unsigned char*>(row);
  std::memcpy(s + ctx().lane * kScratchPerLane, &mine, sizeof(mine));
  sync_warp();
  auto row_of = [&](int lane) {
    const unsigned char* p;
    std::memcpy(&p, s + lane * kScratchPerLane, sizeof(p));
    return p;
  };
  const int r = ctx().lane / 4, w = ctx().lane % 4;
  for (int i = 0; i < NUM; ++i) {
    uint16_t lo, hi;
    if (TRANS) {
      std::memcpy(&lo, row_of(8 * i + 2 * w) + 2 * r, 2);
      std::memcpy(&hi, row_of(8 * i + 2 * w + 1) + 2 * r, 2);
    } else {
      std::memcpy(&lo, row_of(8 * i + r) + 4 * w, 2);
      std::memcpy(&hi, row_of(8 * i + r) + 4 * w + 2, 2);
    }
    out[i] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
  }
  sync_warp();
}

// ---- cp.async: copies complete at cp_async_wait (lazy) or at issue (eager) ----
// Lazy: a kernel that reads its shared tile before waiting (or before the __syncthreads()
// after the wait, under the warp-serial schedules) reads stale data. Eager: one that
// refills a buffer other warps still read (no barrier before the refill) corrupts it.
void cp_async_16(void* smem, const void* gmem, bool fill, const char* file, int line);
void cp_async_commit();
void cp_async_wait(int pending_groups_allowed);

}  // namespace gptk_emu

// ---- the CUDA names the kernels use ----
#undef __global__
#define __global__
#undef __device__
#define __device__
#undef __host__
#define __host__
#undef __forceinline__
#define __forceinline__ inline
#undef __shared__
#define __shared__ gptk_emu_shared_declaration_left_unrewritten_by_tests_cuda_emu_py
#undef __launch_bounds__
#define __launch_bounds__(...)

#define threadIdx (::gptk_emu::ctx().thread_idx)
#define blockIdx (::gptk_emu::ctx().block_idx)
#define blockDim (::gptk_emu::ctx().block_dim)
#define gridDim (::gptk_emu::ctx().grid_dim)

inline void __syncthreads() { ::gptk_emu::sync_block(); }
inline void __syncwarp(unsigned = 0xffffffffu) { ::gptk_emu::sync_warp(); }
template <typename T>
T __shfl_sync(unsigned, T v, int src, int = 32) {
  return ::gptk_emu::shfl(v, src);
}
template <typename T>
T __shfl_xor_sync(unsigned, T v, int mask, int = 32) {
  return ::gptk_emu::shfl(v, ::gptk_emu::ctx().lane ^ mask);
}
// Never fused into a neighbouring add, as on the GPU (-ffp-contract=fast would fuse a
// plain product): the volatile round trip hides the product from the contraction.
inline float __fmul_rn(float a, float b) {
  volatile float p = a * b;
  return p;
}
inline size_t __cvta_generic_to_shared(const void* p) { return reinterpret_cast<size_t>(p); }

// The launchers' error check reads the emulator's launch status. A macro, not a definition
// of cudaGetLastError itself: a libcudart already in the process (torch's) would win that.
cudaError_t gptk_emu_get_last_error();
#define cudaGetLastError gptk_emu_get_last_error

// The launchers' shared-memory queries and opt-in, answered by the emulator (its limit is
// settable so the tests reach the paths beyond it with small rows).
inline cudaError_t gptk_emu_get_device(int* d) {
  *d = 0;
  return cudaSuccess;
}
inline cudaError_t gptk_emu_device_get_attribute(int* v, cudaDeviceAttr attr, int /*device*/) {
  *v = attr == cudaDevAttrMaxSharedMemoryPerBlockOptin ? ::gptk_emu::smem_limit() : 0;
  return cudaSuccess;
}
template <typename K>
cudaError_t gptk_emu_func_set_attribute(K* kernel, cudaFuncAttribute attr, int value) {
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value > ::gptk_emu::smem_limit()) return cudaErrorInvalidValue;
    ::gptk_emu::allow_dynamic_smem(reinterpret_cast<const void*>(kernel), value);
  }
  return cudaSuccess;
}
#define cudaGetDevice gptk_emu_get_device
#define cudaDeviceGetAttribute gptk_emu_device_get_attribute
#define cudaFuncSetAttribute gptk_emu_func_set_attribute
