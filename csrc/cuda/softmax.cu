// Softmax with temperature on the GPU, forward and backward.
//
// Roofline: forward reads x and writes y (2 N s bytes), backward reads y and dy and
// writes dx (3 N s): memory-bound, so everything is about one pass at full width.
//  - Rows up to 16384 elements stay in registers: a warp per row (4 rows per block) for
//    short rows, a block per row (128-512 threads) for longer ones; 16-byte packed
//    loads when the row start, stride and length allow, scalar otherwise.
//  - Longer rows stream: pass 1 keeps a per-thread online (max, sum) pair and combines
//    them across the block (csrc/common/math.h), pass 2 re-reads x (L2-resident for one
//    row per block) and writes y: 3 N s bytes.
// The temperature is folded into the exponent: exp2((x - max) * c), c = log2(e) / t.
#include "cuda/common.cuh"

namespace gptk {
namespace cuda {
namespace {

constexpr int kStreamThreads = 512;

template <typename T, int VEC, class Cfg>
__global__ void __launch_bounds__(Cfg::THREADS * Cfg::ROWS, 1)
    softmax_fwd_rows(const T* __restrict__ x, int64_t x_stride, T* __restrict__ y, int64_t y_stride, int64_t rows,
                     int n, float c) {
  constexpr int VPT = Cfg::template vpt<VEC>();
  __shared__ float smem[32];
  const int64_t row = static_cast<int64_t>(blockIdx.x) * Cfg::ROWS + threadIdx.y;
  if (row >= rows) return;  // whole rows leave together: a block-wide row has ROWS == 1
  const T* xr = x + row * x_stride;
  Pack<T, VEC> v[VPT];
  float m = kNegInf;
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int idx = (i * Cfg::THREADS + threadIdx.x) * VEC;
    if (idx < n) {
      v[i] = load_raw<T, VEC>(xr + idx);
#pragma unroll
      for (int e = 0; e < VEC; ++e) m = softmax_max(m, to_float(v[i].v[e]));
    }
  }
  m = row_allreduce<Cfg::THREADS>(m, MaxOp{}, smem);
  float s = 0.0f;
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    if ((i * Cfg::THREADS + threadIdx.x) * VEC < n) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) s += softmax_exp(to_float(v[i].v[e]), m, c);
    }
  }
  const float inv = 1.0f / row_allreduce<Cfg::THREADS>(s, SumOp{}, smem);
  T* yr = y + row * y_stride;
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int idx = (i * Cfg::THREADS + threadIdx.x) * VEC;
    if (idx < n) {
      float out[VEC];
#pragma unroll
      for (int e = 0; e < VEC; ++e) out[e] = softmax_exp(to_float(v[i].v[e]), m, c) * inv;
      store_pack<T, VEC>(yr + idx, out);
    }
  }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kStreamThreads, 1)
    softmax_fwd_stream(const T* __restrict__ x, int64_t x_stride, T* __restrict__ y, int64_t y_stride, int64_t n,
                       float c) {
  __shared__ MaxSum smem[32];
  const T* xr = x + static_cast<int64_t>(blockIdx.x) * x_stride;
  MaxSum st = softmax_empty();
  #pragma unroll 2
  for (int64_t idx = threadIdx.x * VEC; idx < n; idx += kStreamThreads * VEC) {
    float v[VEC];
    load_pack<T, VEC>(xr + idx, v);
#pragma unroll
    for (int e = 0; e < VEC; ++e) st = softmax_update(st, v[e], c);
  }
  st = row_allreduce<kStreamThreads>(st, MaxSumOp{c}, smem);
  const float inv = 1.0f / st.sum;
  T* yr = y + static_cast<int64_t>(blockIdx.x) * y_stride;
  #pragma unroll 2
  for (int64_t idx = threadIdx.x * VEC; idx < n; idx += kStreamThreads * VEC) {
    float v[VEC];
    load_pack<T, VEC>(xr + idx, v);
#pragma unroll
    for (int e = 0; e < VEC; ++e) v[e] = softmax_exp(v[e], st.max, c) * inv;
    store_pack<T, VEC>(yr + idx, v);
  }
}

template <typename T, int VEC, class Cfg>
__global__ void __launch_bounds__(Cfg::THREADS * Cfg::ROWS, 1)
    softmax_bwd_rows(const T* __restrict__ dy, int64_t dy_stride, const T* __restrict__ y, int64_t y_stride,
                     T* __restrict__ dx, int64_t dx_stride, int64_t rows, int n, float inv_t) {
  constexpr int VPT = Cfg::template vpt<VEC>();
  __shared__ float smem[32];
  const int64_t row = static_cast<int64_t>(blockIdx.x) * Cfg::ROWS + threadIdx.y;
  if (row >= rows) return;
  Pack<T, VEC> yv[VPT], gv[VPT];
  float dot = 0.0f;
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int idx = (i * Cfg::THREADS + threadIdx.x) * VEC;
    if (idx < n) {
      yv[i] = load_raw<T, VEC>(y + row * y_stride + idx);
      gv[i] = load_raw<T, VEC>(dy + row * dy_stride + idx);
#pragma unroll
      for (int e = 0; e < VEC; ++e) dot += to_float(yv[i].v[e]) * to_float(gv[i].v[e]);
    }
  }
  dot = row_allreduce<Cfg::THREADS>(dot, SumOp{}, smem);
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int idx = (i * Cfg::THREADS + threadIdx.x) * VEC;
    if (idx < n) {
      float out[VEC];
#pragma unroll
      for (int e = 0; e < VEC; ++e) out[e] = to_float(yv[i].v[e]) * (to_float(gv[i].v[e]) - dot) * inv_t;
      store_pack<T, VEC>(dx + row * dx_stride + idx, out);
    }
  }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kStreamThreads, 1)
    softmax_bwd_stream(const T* __restrict__ dy, int64_t dy_stride, const T* __restrict__ y, int64_t y_stride,
                       T* __restrict__ dx, int64_t dx_stride, int64_t n, float inv_t) {
  __shared__ float smem[32];
  const int64_t row = blockIdx.x;
  float dot = 0.0f;
  #pragma unroll 2
  for (int64_t idx = threadIdx.x * VEC; idx < n; idx += kStreamThreads * VEC) {
    float yv[VEC], gv[VEC];
    load_pack<T, VEC>(y + row * y_stride + idx, yv);
    load_pack<T, VEC>(dy + row * dy_stride + idx, gv);
#pragma unroll
    for (int e = 0; e < VEC; ++e) dot += yv[e] * gv[e];
  }
  dot = row_allreduce<kStreamThreads>(dot, SumOp{}, smem);
  #pragma unroll 2
  for (int64_t idx = threadIdx.x * VEC; idx < n; idx += kStreamThreads * VEC) {
    float yv[VEC], gv[VEC];
    load_pack<T, VEC>(y + row * y_stride + idx, yv);
    load_pack<T, VEC>(dy + row * dy_stride + idx, gv);
#pragma unroll
    for (int e = 0; e < VEC; ++e) gv[e] = yv[e] * (gv[e] - dot) * inv_t;
    store_pack<T, VEC>(dx + row * dx_stride + idx, gv);
  }
}

template <typename T, int VEC>
void forward_vec(const void* x, int64_t xs, void* y, int64_t ys, int64_t rows, int64_t n, float c, cudaStream_t st) {
  const T* xp = static_cast<const T*>(x);
  T* yp = static_cast<T*>(y);
  const bool in_registers = with_row_config<VEC>(n, [&](auto cfg) {
    using Cfg = decltype(cfg);
    softmax_fwd_rows<T, VEC, Cfg><<<blocks_for(rows, Cfg::ROWS), dim3(Cfg::THREADS, Cfg::ROWS), 0, st>>>(
        xp, xs, yp, ys, rows, static_cast<int>(n), c);
  });
  if (!in_registers) softmax_fwd_stream<T, VEC><<<rows, kStreamThreads, 0, st>>>(xp, xs, yp, ys, n, c);
}

template <typename T, int VEC>
void backward_vec(const void* dy, int64_t dys, const void* y, int64_t ys, void* dx, int64_t dxs, int64_t rows,
                  int64_t n, float inv_t, cudaStream_t st) {
  const T* dyp = static_cast<const T*>(dy);
  const T* yp = static_cast<const T*>(y);
  T* dxp = static_cast<T*>(dx);
  const bool in_registers = with_row_config<VEC>(n, [&](auto cfg) {
    using Cfg = decltype(cfg);
    softmax_bwd_rows<T, VEC, Cfg><<<blocks_for(rows, Cfg::ROWS), dim3(Cfg::THREADS, Cfg::ROWS), 0, st>>>(
        dyp, dys, yp, ys, dxp, dxs, rows, static_cast<int>(n), inv_t);
  });
  if (!in_registers) softmax_bwd_stream<T, VEC><<<rows, kStreamThreads, 0, st>>>(dyp, dys, yp, ys, dxp, dxs, n, inv_t);
}

template <typename T>
void forward_typed(const void* x, int64_t xs, void* y, int64_t ys, int64_t rows, int64_t n, float c, cudaStream_t st) {
  if (vector_ok<T>(x, xs, n) && vector_ok<T>(y, ys, n)) {
    forward_vec<T, kVec16<T>>(x, xs, y, ys, rows, n, c, st);
  } else {
    forward_vec<T, 1>(x, xs, y, ys, rows, n, c, st);
  }
}

template <typename T>
void backward_typed(const void* dy, int64_t dys, const void* y, int64_t ys, void* dx, int64_t dxs, int64_t rows,
                    int64_t n, float inv_t, cudaStream_t st) {
  if (vector_ok<T>(dy, dys, n) && vector_ok<T>(y, ys, n) && vector_ok<T>(dx, dxs, n)) {
    backward_vec<T, kVec16<T>>(dy, dys, y, ys, dx, dxs, rows, n, inv_t, st);
  } else {
    backward_vec<T, 1>(dy, dys, y, ys, dx, dxs, rows, n, inv_t, st);
  }
}

}  // namespace

cudaError_t softmax_forward(DType dt, const void* x, int64_t x_stride, void* y, int64_t y_stride, int64_t rows,
                            int64_t n, float c, cudaStream_t stream) {
  if (rows == 0 || n == 0) return cudaSuccess;
  switch (dt) {
    case DType::kFloat32: forward_typed<float>(x, x_stride, y, y_stride, rows, n, c, stream); break;
    case DType::kFloat16: forward_typed<__half>(x, x_stride, y, y_stride, rows, n, c, stream); break;
    case DType::kBFloat16: forward_typed<__nv_bfloat16>(x, x_stride, y, y_stride, rows, n, c, stream); break;
  }
  return cudaGetLastError();
}

cudaError_t softmax_backward(DType dt, const void* dy, int64_t dy_stride, const void* y, int64_t y_stride, void* dx,
                             int64_t dx_stride, int64_t rows, int64_t n, float inv_t, cudaStream_t stream) {
  if (rows == 0 || n == 0) return cudaSuccess;
  switch (dt) {
    case DType::kFloat32:
      backward_typed<float>(dy, dy_stride, y, y_stride, dx, dx_stride, rows, n, inv_t, stream);
      break;
    case DType::kFloat16:
      backward_typed<__half>(dy, dy_stride, y, y_stride, dx, dx_stride, rows, n, inv_t, stream);
      break;
    case DType::kBFloat16:
      backward_typed<__nv_bfloat16>(dy, dy_stride, y, y_stride, dx, dx_stride, rows, n, inv_t, stream);
      break;
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace gptk
