// Fused sampling on the GPU: temperature, top-k, top-p and the draw, one block per row, one
// launch per call. The rule and the per-element arithmetic are csrc/common/sample.h's (the
// CPU implementation's); kernels/triton/sample.py documents the rule and the passes.
//
// Bytes: the row is read from HBM once (V s bytes) and then re-read from L1/L2 by each
// pass: stats 1, top-k search <= 32 (counts), mass 1, top-p search <= 32 (mass), draw 2
// (per-thread sums, then one thread rescans its chunk). Nothing of size V is written.
// Per pass every thread strides the row (coalesced), keeps its scalar accumulators and
// the block combines them (warp butterflies, then the warp results in shared memory, read
// by every thread: every thread holds the same result, so the search loop is uniform).
#include "common/sample.h"
#include "cuda/common.cuh"

namespace gptk {
namespace cuda {
namespace {

template <typename V>
__device__ __forceinline__ V shfl_xor_words(V v, int mask) {
  static_assert(sizeof(V) % 4 == 0, "shuffled as 32-bit words");
  int w[sizeof(V) / 4];
  memcpy(w, &v, sizeof(V));
#pragma unroll
  for (int i = 0; i < static_cast<int>(sizeof(V) / 4); ++i) w[i] = __shfl_xor_sync(0xffffffffu, w[i], mask);
  V out;
  memcpy(&out, w, sizeof(V));
  return out;
}

// Every thread returns the block's merge of all threads' values (merge is commutative, so a
// butterfly leaves every lane the same value; the warp results merge in warp order).
template <int THREADS, typename V>
__device__ V block_merge(V v, V* smem) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v.merge(shfl_xor_words(v, o));
  if (threadIdx.x % 32 == 0) smem[threadIdx.x / 32] = v;
  __syncthreads();
  v = smem[0];
#pragma unroll
  for (int w = 1; w < THREADS / 32; ++w) v.merge(smem[w]);
  __syncthreads();  // smem is reused by the next combine
  return v;
}

struct Sum {
  float s = 0.0f;
  __device__ void merge(const Sum& o) { s += o.s; }
};

struct Last {  // the largest column index
  int32_t j = -1;
  __device__ void merge(const Last& o) { j = o.j > j ? o.j : j; }
};

struct First {  // the smallest column index
  int32_t j = kKeyMax;
  __device__ void merge(const First& o) { j = o.j < j ? o.j : j; }
};

template <int THREADS>
struct Shared {
  RowStats stats[THREADS / 32];
  SearchAcc acc[THREADS / 32];
  Sum sum[THREADS / 32];
  Last last[THREADS / 32];
  First first[THREADS / 32];
  float warp_total[THREADS / 32];
};

template <typename T>
__device__ __forceinline__ float weight(const T* xr, int j, float m, float c) {
  return exp2f((to_float(xr[j]) - m) * c);
}

template <typename T, int THREADS>
__device__ Search block_search(const T* __restrict__ xr, int n, Search s, int32_t floor, float target, float m,
                               float c, bool mass, Shared<THREADS>& sh) {
  while (!s.done()) {
    const int32_t mid = s.mid();
    SearchAcc acc;
    for (int j = threadIdx.x; j < n; j += THREADS) {
      const float v = to_float(xr[j]);
      const int32_t k = ordered_key(v);
      if (k >= floor) acc.add(k, mass ? exp2f((v - m) * c) : 1.0f, mid);
    }
    s.step(block_merge<THREADS>(acc, sh.acc), mid, target);
  }
  return s;
}

// Exclusive prefix of `v` over the block's threads (in thread order) and the block total.
template <int THREADS>
__device__ float block_exclusive_scan(float v, float* total, float* warp_total) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  float incl = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const float up = __shfl_sync(0xffffffffu, incl, lane >= o ? lane - o : lane);
    if (lane >= o) incl += up;
  }
  if (lane == 31) warp_total[warp] = incl;
  __syncthreads();
  float before = 0.0f, all = 0.0f;
#pragma unroll
  for (int w = 0; w < THREADS / 32; ++w) {
    if (w < warp) before += warp_total[w];
    all += warp_total[w];
  }
  __syncthreads();
  *total = all;
  return before + incl - v;
}

template <typename T, int THREADS>
__global__ void __launch_bounds__(THREADS, 1)
    sample_rows(const T* __restrict__ x, int64_t stride, const int64_t* __restrict__ seed, int64_t* __restrict__ out,
                int n, float c, int top_k, float top_p, bool greedy) {
  __shared__ Shared<THREADS> sh;
  const int64_t row = blockIdx.x;
  const T* xr = x + row * stride;

  RowStats st;
  for (int j = threadIdx.x; j < n; j += THREADS) st.add(to_float(xr[j]), j);
  st = block_merge<THREADS>(st, sh.stats);
  if (greedy || st.nan || !(st.m > kNegInf && st.m < -kNegInf)) {  // softmax is NaN for a +-inf max
    if (threadIdx.x == 0) out[row] = st.nan || !greedy ? -1 : st.idx;
    return;
  }
  const float m = st.m;
  const int32_t kmax = ordered_key(m);
  int32_t floor = st.kmin;
  if (top_k > 0 && top_k < n) {
    floor = block_search<T, THREADS>(xr, n, Search{floor, kmax + 1, 0.0f}, floor, static_cast<float>(top_k), m, c,
                                     false, sh).lo;
  }
  if (top_p < 1.0f) {
    Sum z;
    for (int j = threadIdx.x; j < n; j += THREADS) {
      if (ordered_key(to_float(xr[j])) >= floor) z.s += weight(xr, j, m, c);
    }
    z = block_merge<THREADS>(z, sh.sum);
    floor = block_search<T, THREADS>(xr, n, Search{floor, kmax + 1, z.s}, floor, z.s * top_p, m, c, true, sh).lo;
  }

  // The draw: each thread owns a contiguous chunk; the block scans the chunk sums, and the
  // thread whose interval holds u * total rescans its chunk in column order.
  const int chunk = (n + THREADS - 1) / THREADS;
  const int begin_raw = static_cast<int>(threadIdx.x) * chunk;
  const int begin = begin_raw < n ? begin_raw : n, end = begin + chunk < n ? begin + chunk : n;
  float mine = 0.0f;
  Last last;
  for (int j = begin; j < end; ++j) {
    if (ordered_key(to_float(xr[j])) < floor) continue;
    const float w = weight(xr, j, m, c);
    mine += w;
    if (w > 0.0f) last.j = j;
  }
  float total;
  const float before = block_exclusive_scan<THREADS>(mine, &total, sh.warp_total);
  const float target = philox_uniform(*seed, row) * total;
  First pick;
  if (mine > 0.0f && before <= target && target < before + mine) {
    float run = before;
    pick.j = last.j;  // rounding may leave the target unreached within the chunk
    for (int j = begin; j < end; ++j) {
      if (ordered_key(to_float(xr[j])) < floor) continue;
      const float w = weight(xr, j, m, c);
      run += w;
      if (w > 0.0f && run > target) {
        pick.j = j;
        break;
      }
    }
  }
  pick = block_merge<THREADS>(pick, sh.first);
  last = block_merge<THREADS>(last, sh.last);
  if (threadIdx.x == 0) out[row] = pick.j != kKeyMax ? pick.j : last.j;
}

template <typename T>
void launch(const void* x, int64_t stride, const int64_t* seed, int64_t* out, int64_t rows, int n, float c,
            int top_k, float top_p, bool greedy, cudaStream_t stream) {
  const T* xt = static_cast<const T*>(x);
  if (n <= 2048) {
    sample_rows<T, 128><<<static_cast<unsigned>(rows), 128, 0, stream>>>(xt, stride, seed, out, n, c, top_k, top_p,
                                                                       greedy);
  } else {
    sample_rows<T, 512><<<static_cast<unsigned>(rows), 512, 0, stream>>>(xt, stride, seed, out, n, c, top_k, top_p,
                                                                       greedy);
  }
}

}  // namespace

cudaError_t sample(DType dt, const void* x, int64_t x_stride, const int64_t* seed, int64_t* out, int64_t rows,
                   int64_t n, float c, int64_t top_k, float top_p, bool greedy, cudaStream_t stream) {
  if (rows == 0 || n == 0) return cudaSuccess;
  const int k = static_cast<int>(top_k < n ? top_k : 0);
  switch (dt) {
    case DType::kFloat32: launch<float>(x, x_stride, seed, out, rows, static_cast<int>(n), c, k, top_p, greedy, stream); break;
    case DType::kFloat16: launch<__half>(x, x_stride, seed, out, rows, static_cast<int>(n), c, k, top_p, greedy, stream); break;
    case DType::kBFloat16:
      launch<__nv_bfloat16>(x, x_stride, seed, out, rows, static_cast<int>(n), c, k, top_p, greedy, stream);
      break;
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace gptk
