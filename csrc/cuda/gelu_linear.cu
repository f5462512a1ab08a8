// The GELU MLP's elementwise work on the GPU, around cuBLASLt matmuls (entry.cpp):
//  - gelu_forward: out = gelu(pre), when the matmul could not fuse the epilogue (the erf
//    form: cuBLASLt's GELU epilogue is the tanh form) or declined the shape.
//  - gelu_backward_partials: dpre = dout * gelu'(pre), fused with dbias's column sums.
// and the deterministic column reduction that layer norm's dweight/dbias share:
//  - rows split into column_chunks(rows) fixed chunks (a function of the row count only,
//    not of the GPU), one fp32 partial row per chunk, summed in chunk order by
//    column_sum: bitwise the same result on every run, no atomics.
//
// Roofline: gelu_backward_partials reads dout and pre, writes dpre (3 M N s bytes); the
// matmuls (2 M N K FLOPs each, three of them per forward+backward) dominate.
#include <algorithm>

#include "cuda/common.cuh"

namespace gptk {
namespace cuda {
namespace {

constexpr int kColTile = 32;   // columns per block (one warp wide: coalesced row segments)
constexpr int kRowLanes = 8;   // rows read concurrently per block
constexpr int kMaxChunks = 256;

int64_t rows_per_chunk(int64_t rows) {
  const int64_t chunks = column_chunks(rows);
  return chunks == 0 ? 0 : (rows + chunks - 1) / chunks;
}

// Combine the kRowLanes partials of each column in lane order and write them.
__device__ __forceinline__ void write_partials(float (*sa)[kColTile + 1], float (*sb)[kColTile + 1], float a,
                                              float b, float* pa, float* pb, int64_t col, int64_t n) {
  sa[threadIdx.y][threadIdx.x] = a;
  sb[threadIdx.y][threadIdx.x] = b;
  __syncthreads();
  if (threadIdx.y == 0 && col < n) {
    float ta = 0.0f, tb = 0.0f;
#pragma unroll
    for (int l = 0; l < kRowLanes; ++l) {
      ta += sa[l][threadIdx.x];
      tb += sb[l][threadIdx.x];
    }
    if (pa != nullptr) pa[blockIdx.y * n + col] = ta;
    pb[blockIdx.y * n + col] = tb;
  }
}

template <typename T>
__global__ void __launch_bounds__(kColTile* kRowLanes, 1)
    norm_param_partials_kernel(const T* __restrict__ dy, int64_t dy_stride, const T* __restrict__ x,
                               int64_t x_stride, const float* __restrict__ mean, const float* __restrict__ rstd,
                               float* __restrict__ pw, float* __restrict__ pb, int64_t rows, int64_t n,
                               int64_t chunk_rows) {
  __shared__ float sw[kRowLanes][kColTile + 1], sb[kRowLanes][kColTile + 1];
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kColTile + threadIdx.x;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * chunk_rows;
  const int64_t r1 = r0 + chunk_rows < rows ? r0 + chunk_rows : rows;
  float aw = 0.0f, ab = 0.0f;
  if (col < n) {
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kRowLanes) {
      const float d = to_float(dy[r * dy_stride + col]);
      aw += d * (to_float(x[r * x_stride + col]) - mean[r]) * rstd[r];
      ab += d;
    }
  }
  write_partials(sw, sb, aw, ab, pw, pb, col, n);
}

// The same with 16-byte loads: each thread owns VEC adjacent columns (a block 32 VEC
// columns wide), and each row lane keeps UNROLL rows' loads in flight. Rows of dy and x
// must start 16-byte aligned with n a multiple of VEC (the launcher checks).
constexpr int kPartialUnroll = 4;
template <typename T>
__global__ void __launch_bounds__(kColTile* kRowLanes, 3)
    norm_param_partials_vec(const T* __restrict__ dy, int64_t dy_stride, const T* __restrict__ x, int64_t x_stride,
                            const float* __restrict__ mean, const float* __restrict__ rstd, float* __restrict__ pw,
                            float* __restrict__ pb, int64_t rows, int64_t n, int64_t chunk_rows) {
  constexpr int VEC = kVec16<T>;
  __shared__ float sw[kRowLanes][kColTile * VEC + 1], sb[kRowLanes][kColTile * VEC + 1];
  const int64_t col = (static_cast<int64_t>(blockIdx.x) * kColTile + threadIdx.x) * VEC;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * chunk_rows;
  const int64_t r1 = r0 + chunk_rows < rows ? r0 + chunk_rows : rows;
  float aw[VEC] = {}, ab[VEC] = {};
  if (col < n) {
    for (int64_t rb = r0 + threadIdx.y; rb < r1; rb += kRowLanes * kPartialUnroll) {
      // Rows past the chunk load its last row again (unconditional loads: all issue before
      // the first use) and are not added.
      Pack<T, VEC> d[kPartialUnroll], v[kPartialUnroll];
      float mu[kPartialUnroll], rs[kPartialUnroll];
#pragma unroll
      for (int u = 0; u < kPartialUnroll; ++u) {
        const int64_t r = rb + u * kRowLanes < r1 ? rb + u * kRowLanes : r1 - 1;
        d[u] = load_raw<T, VEC>(dy + r * dy_stride + col);
        v[u] = load_raw<T, VEC>(x + r * x_stride + col);
        mu[u] = mean[r];
        rs[u] = rstd[r];
      }
#pragma unroll
      for (int u = 0; u < kPartialUnroll; ++u) {
        if (rb + u * kRowLanes < r1) {
#pragma unroll
          for (int e = 0; e < VEC; ++e) {
            const float g = to_float(d[u].v[e]);
            aw[e] += g * (to_float(v[u].v[e]) - mu[u]) * rs[u];
            ab[e] += g;
          }
        }
      }
    }
  }
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    sw[threadIdx.y][threadIdx.x * VEC + e] = aw[e];
    sb[threadIdx.y][threadIdx.x * VEC + e] = ab[e];
  }
  __syncthreads();
  if (threadIdx.y == 0 && col < n) {
    float ta[VEC] = {}, tb[VEC] = {};
#pragma unroll
    for (int l = 0; l < kRowLanes; ++l) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        ta[e] += sw[l][threadIdx.x * VEC + e];
        tb[e] += sb[l][threadIdx.x * VEC + e];
      }
    }
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      pw[blockIdx.y * n + col + e] = ta[e];
      pb[blockIdx.y * n + col + e] = tb[e];
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kColTile* kRowLanes, 1)
    gelu_backward_partials_kernel(const T* __restrict__ dout, int64_t dout_stride, const T* __restrict__ pre,
                                  int64_t pre_stride, T* __restrict__ dpre, float* __restrict__ pb, int64_t rows,
                                  int64_t n, int64_t chunk_rows, bool tanh_form) {
  __shared__ float sw[kRowLanes][kColTile + 1], sb[kRowLanes][kColTile + 1];
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kColTile + threadIdx.x;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * chunk_rows;
  const int64_t r1 = r0 + chunk_rows < rows ? r0 + chunk_rows : rows;
  float ab = 0.0f;
  if (col < n) {
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kRowLanes) {
      const float g = to_float(dout[r * dout_stride + col]) * gelu_grad(to_float(pre[r * pre_stride + col]), tanh_form);
      dpre[r * n + col] = from_float<T>(g);
      ab += g;
    }
  }
  write_partials(sw, sb, 0.0f, ab, nullptr, pb, col, n);
}

// out[j] = sum over chunks of partial[c, j]: kSumLanes lanes per column each add every
// kSumLanes-th chunk in order, then lane sums combine in lane order (a fixed order: the
// same bits on every GPU). The lanes keep many loads in flight where one thread walking
// up to 256 chunks of a hidden-1024 layer (4 blocks in all) would wait on each.
constexpr int kSumLanes = 32;
template <typename T>
__global__ void __launch_bounds__(kColTile* kSumLanes, 1)
    column_sum_kernel(const float* __restrict__ partial, int64_t chunks, int64_t n, T* __restrict__ out) {
  __shared__ float lanes[kSumLanes][kColTile + 1];
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kColTile + threadIdx.x;
  float s = 0.0f;
  if (col < n) {
#pragma unroll 4
    for (int64_t c = threadIdx.y; c < chunks; c += kSumLanes) s += partial[c * n + col];
  }
  lanes[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && col < n) {
    float t = 0.0f;
#pragma unroll
    for (int l = 0; l < kSumLanes; ++l) t += lanes[l][threadIdx.x];
    out[col] = from_float<T>(t);
  }
}

template <typename T, int VEC>
__global__ void gelu_forward_kernel(const T* __restrict__ pre, T* __restrict__ out, int64_t packs, bool tanh_form) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < packs;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float v[VEC];
    load_pack<T, VEC>(pre + i * VEC, v);
#pragma unroll
    for (int e = 0; e < VEC; ++e) v[e] = gelu(v[e], tanh_form);
    store_pack<T, VEC>(out + i * VEC, v);
  }
}

dim3 partial_grid(int64_t rows, int64_t n) {
  return dim3(static_cast<unsigned int>((n + kColTile - 1) / kColTile), static_cast<unsigned int>(column_chunks(rows)));
}

template <typename T>
void launch_norm_partials(const void* dy, int64_t dys, const void* x, int64_t xs, const float* mean,
                          const float* rstd, float* pw, float* pb, int64_t rows, int64_t n, int64_t cr,
                          cudaStream_t st) {
  const T* d = static_cast<const T*>(dy);
  const T* v = static_cast<const T*>(x);
  const dim3 block(kColTile, kRowLanes);
  constexpr int vec = kVec16<T>;
  if (vector_ok<T>(dy, dys, n) && vector_ok<T>(x, xs, n)) {
    const dim3 grid(static_cast<unsigned int>((n / vec + kColTile - 1) / kColTile),
                    static_cast<unsigned int>(column_chunks(rows)));
    norm_param_partials_vec<T><<<grid, block, 0, st>>>(d, dys, v, xs, mean, rstd, pw, pb, rows, n, cr);
  } else {
    norm_param_partials_kernel<T><<<partial_grid(rows, n), block, 0, st>>>(d, dys, v, xs, mean, rstd, pw, pb, rows,
                                                                          n, cr);
  }
}

template <typename T>
void gelu_forward_typed(const void* pre, void* out, int64_t numel, bool tanh_form, cudaStream_t st) {
  constexpr int threads = 256;
  const int64_t max_blocks = 65535;
  if (vector_ok<T>(pre, 0, numel) && vector_ok<T>(out, 0, numel)) {
    constexpr int vec = kVec16<T>;
    const int64_t packs = numel / vec;
    const auto blocks = static_cast<unsigned int>(std::min(max_blocks, (packs + threads - 1) / threads));
    gelu_forward_kernel<T, vec><<<blocks, threads, 0, st>>>(static_cast<const T*>(pre), static_cast<T*>(out), packs,
                                                             tanh_form);
  } else {
    const auto blocks = static_cast<unsigned int>(std::min(max_blocks, (numel + threads - 1) / threads));
    gelu_forward_kernel<T, 1><<<blocks, threads, 0, st>>>(static_cast<const T*>(pre), static_cast<T*>(out), numel,
                                                           tanh_form);
  }
}

}  // namespace

int64_t column_chunks(int64_t rows) { return std::min<int64_t>(kMaxChunks, (rows + 31) / 32); }

cudaError_t norm_param_partials(DType dt, const void* dy, int64_t dy_stride, const void* x, int64_t x_stride,
                                const float* mean, const float* rstd, float* partial_w, float* partial_b,
                                int64_t rows, int64_t n, cudaStream_t stream) {
  if (rows == 0 || n == 0) return cudaSuccess;
  const dim3 block(kColTile, kRowLanes);
  const int64_t cr = rows_per_chunk(rows);
  switch (dt) {
    case DType::kFloat32:
      launch_norm_partials<float>(dy, dy_stride, x, x_stride, mean, rstd, partial_w, partial_b, rows, n, cr, stream);
      break;
    case DType::kFloat16:
      launch_norm_partials<__half>(dy, dy_stride, x, x_stride, mean, rstd, partial_w, partial_b, rows, n, cr, stream);
      break;
    case DType::kBFloat16:
      launch_norm_partials<__nv_bfloat16>(dy, dy_stride, x, x_stride, mean, rstd, partial_w, partial_b, rows, n, cr,
                                          stream);
      break;
  }
  (void)block;
  return cudaGetLastError();
}

cudaError_t gelu_backward_partials(DType dt, const void* dout, int64_t dout_stride, const void* pre,
                                   int64_t pre_stride, void* dpre, float* partial_b, int64_t rows, int64_t n,
                                   bool tanh_form, cudaStream_t stream) {
  if (rows == 0 || n == 0) return cudaSuccess;
  const dim3 grid = partial_grid(rows, n), block(kColTile, kRowLanes);
  const int64_t cr = rows_per_chunk(rows);
  switch (dt) {
    case DType::kFloat32:
      gelu_backward_partials_kernel<float><<<grid, block, 0, stream>>>(
          static_cast<const float*>(dout), dout_stride, static_cast<const float*>(pre), pre_stride,
          static_cast<float*>(dpre), partial_b, rows, n, cr, tanh_form);
      break;
    case DType::kFloat16:
      gelu_backward_partials_kernel<__half><<<grid, block, 0, stream>>>(
          static_cast<const __half*>(dout), dout_stride, static_cast<const __half*>(pre), pre_stride,
          static_cast<__half*>(dpre), partial_b, rows, n, cr, tanh_form);
      break;
    case DType::kBFloat16:
      gelu_backward_partials_kernel<__nv_bfloat16><<<grid, block, 0, stream>>>(
          static_cast<const __nv_bfloat16*>(dout), dout_stride, static_cast<const __nv_bfloat16*>(pre), pre_stride,
          static_cast<__nv_bfloat16*>(dpre), partial_b, rows, n, cr, tanh_form);
      break;
  }
  return cudaGetLastError();
}

cudaError_t column_sum(DType dt, const float* partial, int64_t chunks, int64_t n, void* out, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const auto blocks = static_cast<unsigned int>((n + kColTile - 1) / kColTile);
  const dim3 block(kColTile, kSumLanes);
  switch (dt) {
    case DType::kFloat32:
      column_sum_kernel<float><<<blocks, block, 0, stream>>>(partial, chunks, n, static_cast<float*>(out));
      break;
    case DType::kFloat16:
      column_sum_kernel<__half><<<blocks, block, 0, stream>>>(partial, chunks, n, static_cast<__half*>(out));
      break;
    case DType::kBFloat16:
      column_sum_kernel<__nv_bfloat16><<<blocks, block, 0, stream>>>(partial, chunks, n,
                                                                     static_cast<__nv_bfloat16*>(out));
      break;
  }
  return cudaGetLastError();
}

cudaError_t gelu_forward(DType dt, const void* pre, void* out, int64_t numel, bool tanh_form, cudaStream_t stream) {
  if (numel == 0) return cudaSuccess;
  switch (dt) {
    case DType::kFloat32: gelu_forward_typed<float>(pre, out, numel, tanh_form, stream); break;
    case DType::kFloat16: gelu_forward_typed<__half>(pre, out, numel, tanh_form, stream); break;
    case DType::kBFloat16: gelu_forward_typed<__nv_bfloat16>(pre, out, numel, tanh_form, stream); break;
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace gptk
