// Device helpers shared by the kernels: storage types, 16-byte vector access, and
// warp/block all-reduces over the combine operators of csrc/common/math.h.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/math.h"
#include "cuda/launch.h"

namespace gptk {
namespace cuda {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// VEC consecutive elements moved as one access (16 bytes at the widest).
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

// Rows held in registers keep the raw storage type (half the registers for fp16/bf16)
// and widen on use.
template <typename T, int VEC>
__device__ __forceinline__ Pack<T, VEC> load_raw(const T* p) {
  return *reinterpret_cast<const Pack<T, VEC>*>(p);
}

template <typename T, int VEC>
__device__ __forceinline__ void load_pack(const T* p, float (&out)[VEC]) {
  const Pack<T, VEC> r = *reinterpret_cast<const Pack<T, VEC>*>(p);
#pragma unroll
  for (int e = 0; e < VEC; ++e) out[e] = to_float(r.v[e]);
}

template <typename T, int VEC>
__device__ __forceinline__ void store_pack(T* p, const float (&in)[VEC]) {
  Pack<T, VEC> r;
#pragma unroll
  for (int e = 0; e < VEC; ++e) r.v[e] = from_float<T>(in[e]);
  *reinterpret_cast<Pack<T, VEC>*>(p) = r;
}

// Elements per 16-byte access.
template <typename T>
constexpr int kVec16 = 16 / static_cast<int>(sizeof(T));

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// 16-byte accesses are safe for rows of `n` elements `stride` apart starting at `p`.
template <typename T>
bool vector_ok(const void* p, int64_t stride, int64_t n) {
  constexpr int vec = kVec16<T>;
  return p == nullptr || (aligned16(p) && stride % vec == 0 && n % vec == 0);
}

// ---- all-reduces: every participating thread gets the same combined value ----
__device__ __forceinline__ float shfl_xor(float v, int o) { return __shfl_xor_sync(0xffffffffu, v, o); }
__device__ __forceinline__ MaxSum shfl_xor(MaxSum v, int o) { return MaxSum{shfl_xor(v.max, o), shfl_xor(v.sum, o)}; }
__device__ __forceinline__ Moments shfl_xor(Moments v, int o) {
  return Moments{shfl_xor(v.count, o), shfl_xor(v.mean, o), shfl_xor(v.m2, o)};
}
struct Float2 {
  float a, b;
};
__device__ __forceinline__ Float2 shfl_xor(Float2 v, int o) { return Float2{shfl_xor(v.a, o), shfl_xor(v.b, o)}; }

struct SumOp {
  __device__ float operator()(float a, float b) const { return a + b; }
  __device__ Float2 operator()(Float2 a, Float2 b) const { return Float2{a.a + b.a, a.b + b.b}; }
};
struct MaxOp {
  __device__ float operator()(float a, float b) const { return softmax_max(a, b); }
};
struct MaxSumOp {
  float c;
  __device__ MaxSum operator()(MaxSum a, MaxSum b) const { return softmax_combine(a, b, c); }
};
struct MomentsOp {
  __device__ Moments operator()(Moments a, Moments b) const { return moments_combine(a, b); }
};

template <typename V, typename Op>
__device__ __forceinline__ V warp_allreduce(V v, Op op) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, shfl_xor(v, o));
  return v;
}

// THREADS threads along x share one row. For THREADS == 32 (a warp per row, several rows
// per block along y) no shared memory or barrier is involved. Otherwise blockDim.y == 1,
// `smem` holds THREADS / 32 values, and all threads of the block must call this.
// Warp results are combined in warp order by every thread: deterministic.
template <int THREADS, typename V, typename Op>
__device__ __forceinline__ V row_allreduce(V v, Op op, V* smem) {
  v = warp_allreduce(v, op);
  if constexpr (THREADS > 32) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) smem[warp] = v;
    __syncthreads();
    v = smem[0];
#pragma unroll
    for (int w = 1; w < THREADS / 32; ++w) v = op(v, smem[w]);
    __syncthreads();  // smem is reused by the next reduction
  }
  return v;
}

// Launch shapes of the row kernels: THREADS per row, EPT elements per thread held in
// registers (as EPT / VEC packs), ROWS rows per block (a warp per row packs 4 rows).
// EPT caps registers: 32 elements is 32 fp32 or 16 fp16/bf16 registers per array.
template <int THREADS_, int EPT_>
struct RowConfig {
  static constexpr int THREADS = THREADS_;
  static constexpr int EPT = EPT_;
  static constexpr int ROWS = THREADS_ == 32 ? 4 : 1;
  template <int VEC>
  __host__ __device__ static constexpr int vpt() {
    return EPT_ / VEC > 0 ? EPT_ / VEC : 1;
  }
};

// Call f(RowConfig<...>{}) for the smallest config holding a row of n elements in
// registers; returns false when none does (the caller streams the row instead).
// Scalar access (VEC == 1, unaligned rows) stops at 4096: 32 separately guarded
// elements per thread need too many registers.
template <int VEC, typename F>
bool with_row_config(int64_t n, F&& f) {
  if (n <= 32 * 8) return f(RowConfig<32, 8>{}), true;
  if (n <= 128 * 8) return f(RowConfig<128, 8>{}), true;
  if (n <= 256 * 16) return f(RowConfig<256, 16>{}), true;
  if constexpr (VEC > 1) {
    if (n <= 512 * 32) return f(RowConfig<512, 32>{}), true;
  }
  return false;
}

inline unsigned int blocks_for(int64_t rows, int rows_per_block) {
  return static_cast<unsigned int>((rows + rows_per_block - 1) / rows_per_block);
}

}  // namespace cuda
}  // namespace gptk
