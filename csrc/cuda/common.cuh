// Device helpers shared by the kernels: storage types, 16-byte vector access, and
// warp/block all-reduces over the combine operators of csrc/common/math.h.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "common/math.h"
#include "cuda/launch.h"
#include "cuda/ptx.cuh"

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

// ---- rows at any alignment ----
// A row of n elements at p moves as a head of < VEC elements up to the first 16-byte
// boundary, (n - head) / VEC aligned packs of 16 bytes, and a tail of < VEC elements. Head
// and tail are scalar accesses by the block's first threads; every pack is one 16-byte
// access, whatever the row's width and start (rows of 50257 bf16 start 2-byte aligned).
template <typename T>
__host__ __device__ __forceinline__ int phase_of(const void* p) {  // elements past a 16-byte boundary
  return static_cast<int>((reinterpret_cast<uintptr_t>(p) & 15) / sizeof(T));
}

template <typename T>
struct RowSpan {
  static constexpr int VEC = kVec16<T>;
  int head, packs, tail0, tail;
  __device__ __forceinline__ RowSpan(const void* p, int n) {
    const int h = (VEC - phase_of<T>(p)) % VEC;
    head = h < n ? h : n;
    packs = (n - head) / VEC;
    tail0 = head + packs * VEC;
    tail = n - tail0;
  }
};

// Rows of every (pointer, row stride) pair start at the same 16-byte phase as the first
// one's, row after row: then one RowSpan serves them all and registers map element for
// element. Null pointers (absent operands) are skipped; one-row tensors need no stride.
struct RowPtr {
  const void* p;
  int64_t stride;
};
template <typename T>
bool same_phase(int64_t rows, std::initializer_list<RowPtr> ptrs) {
  const RowPtr* first = nullptr;
  for (const RowPtr& r : ptrs) {
    if (r.p == nullptr) continue;
    if (first == nullptr) {
      first = &r;
      continue;
    }
    // row i starts (p - p0) + i (stride - stride0) sizeof(T) bytes from the first's row i
    if (((reinterpret_cast<uintptr_t>(r.p) - reinterpret_cast<uintptr_t>(first->p)) & 15) != 0) return false;
    if (rows > 1 && ((static_cast<uint64_t>(r.stride - first->stride) * sizeof(T)) & 15) != 0) return false;
  }
  return true;
}

// VEC elements of a staged row from shared memory: one 16-byte read when aligned.
template <typename T>
__device__ __forceinline__ Pack<T, kVec16<T>> smem_pack(const T* buf, int pos, bool aligned) {
  constexpr int VEC = kVec16<T>;
  if (aligned) return *reinterpret_cast<const Pack<T, VEC>*>(buf + pos);
  Pack<T, VEC> r;
#pragma unroll
  for (int e = 0; e < VEC; ++e) r.v[e] = buf[pos + e];
  return r;
}

// A row value as the staged type S: itself, or widened to fp32.
template <typename S, typename T>
__device__ __forceinline__ S widen(T v) {
  if constexpr (std::is_same_v<S, T>) {
    return v;
  } else {
    return to_float(v);
  }
}

// VEC values of a row stored at p (16-byte aligned) as S: the raw pack when S is the row's
// type, else widened to fp32 in 16-byte pieces.
template <typename T, typename S, int VEC>
__device__ __forceinline__ void store_as(S* p, const Pack<T, VEC>& v) {
  if constexpr (std::is_same_v<S, T>) {
    *reinterpret_cast<Pack<T, VEC>*>(p) = v;
  } else {
    static_assert(std::is_same_v<S, float> && VEC % 4 == 0, "rows widen to fp32");
#pragma unroll
    for (int k = 0; k < VEC; k += 4) {
      Pack<float, 4> f;
#pragma unroll
      for (int e = 0; e < 4; ++e) f.v[e] = to_float(v.v[k + e]);
      *reinterpret_cast<Pack<float, 4>*>(p + k) = f;
    }
  }
}

// The kVec16<T> values of a row pack staged as S at buf[pos...], as fp32: 16-byte reads
// when aligned (pos a multiple of the pack, or of 4 widened floats).
template <typename T, typename S>
__device__ __forceinline__ void smem_values(const S* buf, int pos, bool aligned, float (&out)[kVec16<T>]) {
  constexpr int VEC = kVec16<T>;
  if constexpr (std::is_same_v<S, T>) {
    const Pack<T, VEC> v = smem_pack<T>(buf, pos, aligned);
#pragma unroll
    for (int e = 0; e < VEC; ++e) out[e] = to_float(v.v[e]);
  } else if (aligned) {
#pragma unroll
    for (int k = 0; k < VEC; k += 4) {
      const Pack<float, 4> f = *reinterpret_cast<const Pack<float, 4>*>(buf + pos + k);
#pragma unroll
      for (int e = 0; e < 4; ++e) out[k + e] = f.v[e];
    }
  } else {
#pragma unroll
    for (int e = 0; e < VEC; ++e) out[e] = buf[pos + e];
  }
}

// Copy the row g[0, n) into shared memory at buf[phase, phase + n) (phase = phase_of(g)),
// so its aligned packs land 16-byte aligned; S = float widens it (fp32 room for values
// computed in place later). UNROLL packs per thread are loaded before any is stored:
// UNROLL x 16 bytes in flight per thread. `f` sees every value once (in no particular
// order: use it only for order-free reductions such as max). Returns phase; the caller's
// next __syncthreads() publishes buf.
template <typename T, int THREADS, int UNROLL = 4, typename S = T, typename F>
__device__ __forceinline__ int stage_row(S* buf, const T* __restrict__ g, int n, F&& f) {
  constexpr int VEC = kVec16<T>;
  const int off = phase_of<T>(g);
  const RowSpan<T> sp(g, n);
  const T* gb = g + sp.head;
  S* sb = buf + off + sp.head;
  const int t = threadIdx.x;
  for (int p0 = 0; p0 < sp.packs; p0 += THREADS * UNROLL) {
    Pack<T, VEC> v[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int p = p0 + u * THREADS + t;
      if (p < sp.packs) v[u] = load_raw<T, VEC>(gb + p * VEC);
    }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int p = p0 + u * THREADS + t;
      if (p < sp.packs) {
        store_as<T, S, VEC>(sb + p * VEC, v[u]);
#pragma unroll
        for (int e = 0; e < VEC; ++e) f(to_float(v[u].v[e]));
      }
    }
  }
  if (t < sp.head) {
    const T v = g[t];
    buf[off + t] = widen<S>(v);
    f(to_float(v));
  }
  if (t < sp.tail) {
    const T v = g[sp.tail0 + t];
    buf[off + sp.tail0 + t] = widen<S>(v);
    f(to_float(v));
  }
  return off;
}

// Two rows staged by one loop (each at its own phase): UNROLL packs of each in flight.
// Returns both phases.
template <typename T, int THREADS, int UNROLL>
__device__ __forceinline__ int2 stage_rows2(T* buf_a, const T* __restrict__ a, T* buf_b, const T* __restrict__ b,
                                            int n) {
  constexpr int VEC = kVec16<T>;
  const int off_a = phase_of<T>(a), off_b = phase_of<T>(b);
  const RowSpan<T> sa(a, n), sb(b, n);
  const int t = threadIdx.x;
  const int packs = sa.packs > sb.packs ? sa.packs : sb.packs;
  for (int p0 = 0; p0 < packs; p0 += THREADS * UNROLL) {
    Pack<T, VEC> va[UNROLL], vb[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int p = p0 + u * THREADS + t;
      if (p < sa.packs) va[u] = load_raw<T, VEC>(a + sa.head + p * VEC);
      if (p < sb.packs) vb[u] = load_raw<T, VEC>(b + sb.head + p * VEC);
    }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int p = p0 + u * THREADS + t;
      if (p < sa.packs) *reinterpret_cast<Pack<T, VEC>*>(buf_a + off_a + sa.head + p * VEC) = va[u];
      if (p < sb.packs) *reinterpret_cast<Pack<T, VEC>*>(buf_b + off_b + sb.head + p * VEC) = vb[u];
    }
  }
  if (t < sa.head) buf_a[off_a + t] = a[t];
  if (t < sa.tail) buf_a[off_a + sa.tail0 + t] = a[sa.tail0 + t];
  if (t < sb.head) buf_b[off_b + t] = b[t];
  if (t < sb.tail) buf_b[off_b + sb.tail0 + t] = b[sb.tail0 + t];
  return make_int2(off_a, off_b);
}

// Walk the row of n elements that `dst` (a global output row) spans, in dst's own packs:
// f(j, Pack<T, VEC>-sized tag) for each aligned pack starting at element j, and
// f(j, scalar tag) for the head and tail elements this thread owns. The same thread sees
// the same elements on every walk of the same row.
struct PackTag {};
struct ScalarTag {};
template <typename T, int THREADS, typename F>
__device__ __forceinline__ void walk_row(const void* dst, int n, F&& f) {
  constexpr int VEC = kVec16<T>;
  const RowSpan<T> sp(dst, n);
  const int t = threadIdx.x;
  if (t < sp.head) f(t, ScalarTag{});
#pragma unroll 2
  for (int p = t; p < sp.packs; p += THREADS) f(sp.head + p * VEC, PackTag{});
  if (t < sp.tail) f(sp.tail0 + t, ScalarTag{});
}

// Largest dynamic shared memory a block may opt into on the current device (227 KB on
// H100, 163 KB on A100, 99 KB on consumer parts). Asked only on the staged-row paths; not
// cached, so the CPU emulator's limit can change between calls.
inline int max_smem_per_block() {
  int dev = 0, v = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess || v <= 0) {
    return 48 * 1024;
  }
  return v;
}

// Opt `kernel` into `bytes` of dynamic shared memory when that is past the 48 KB every
// kernel gets (callers size `bytes` within max_smem_per_block()). Its status is not checked
// here on purpose: if the opt-in fails, the launch that follows fails for the same reason
// and the entry point's cudaGetLastError reports it (as does the CPU emulator).
template <typename K>
void allow_dynamic_smem(K* kernel, size_t bytes) {
  if (bytes > 48 * 1024) {
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  }
}

// Shared memory a staged row of n elements takes: n + a phase, rounded to whole packs.
template <typename T>
constexpr int64_t staged_elems(int64_t n) {
  return (n + 2 * kVec16<T> - 1) / kVec16<T> * kVec16<T>;
}

inline unsigned int blocks_for(int64_t rows, int rows_per_block) {
  return static_cast<unsigned int>((rows + rows_per_block - 1) / rows_per_block);
}

}  // namespace cuda
}  // namespace gptk
