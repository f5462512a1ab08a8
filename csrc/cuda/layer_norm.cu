// Layer norm over the last dim, and add_layer_norm (the pre-LN block's residual add fused
// in), on the GPU: forward, and the backward's dx. dweight/dbias come from the
// deterministic column reduction in gelu_linear.cu (norm_param_partials + column_sum).
//
// Roofline: forward reads x (and residual) and writes y (and x + residual): 2-4 N s
// bytes plus 8 bytes of statistics per row; backward dx reads x, dy (and dsum), writes
// dx; the parameter gradients read x and dy once more.
//  - Rows up to 16384 elements stay in registers, laid out as in softmax.cu; mean and
//    variance come from per-thread two-pass moments combined across the row with
//    gptk::moments_combine (csrc/common/math.h), the same combine the CPU uses.
//  - Longer rows stream in two passes (per-element Welford updates, then normalise).
//  - Both centre the row on its first element first, as the CPU code does: a constant row
//    becomes exactly zero (variance 0, y exactly the bias) and a large common offset costs
//    the statistics no precision.
// add_layer_norm rounds x + residual to the storage dtype before normalising: that
// rounded sum is what the caller receives and what the backward sees.
#include "cuda/common.cuh"

namespace gptk {
namespace cuda {
namespace {

constexpr int kStreamThreads = 512;

template <typename T, int VEC, bool ADD>
__device__ __forceinline__ void load_input(const T* x, const T* r, T* sum, int64_t idx, float (&v)[VEC]) {
  if constexpr (ADD) {
    float a[VEC], b[VEC];
    load_pack<T, VEC>(x + idx, a);
    load_pack<T, VEC>(r + idx, b);
    Pack<T, VEC> s;
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      s.v[e] = from_float<T>(a[e] + b[e]);
      v[e] = to_float(s.v[e]);
    }
    if (sum != nullptr) *reinterpret_cast<Pack<T, VEC>*>(sum + idx) = s;
  } else {
    load_pack<T, VEC>(x + idx, v);
  }
}

// The row's first input element (x + residual rounded to T, as the caller receives it).
template <typename T, bool ADD>
__device__ __forceinline__ float row_shift(const T* x, const T* r) {
  if constexpr (ADD) return to_float(from_float<T>(to_float(x[0]) + to_float(r[0])));
  return to_float(x[0]);
}

template <typename T, int VEC>
__device__ __forceinline__ void normalise_store(T* y, const T* w, const T* b, int64_t idx, const float (&v)[VEC],
                                                float mean, float rstd) {
  float out[VEC], wv[VEC], bv[VEC];
  if (w != nullptr) load_pack<T, VEC>(w + idx, wv);
  if (b != nullptr) load_pack<T, VEC>(b + idx, bv);
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    out[e] = (v[e] - mean) * rstd;
    if (w != nullptr) out[e] *= wv[e];
    if (b != nullptr) out[e] += bv[e];
  }
  store_pack<T, VEC>(y + idx, out);
}

template <typename T, int VEC, bool ADD, class Cfg>
__global__ void __launch_bounds__(Cfg::THREADS * Cfg::ROWS, 1)
    ln_fwd_rows(const T* __restrict__ x, int64_t x_stride, const T* __restrict__ r, int64_t r_stride,
                T* __restrict__ sum, const T* __restrict__ w, const T* __restrict__ b, T* __restrict__ y,
                float* __restrict__ mean_out, float* __restrict__ rstd_out, int64_t rows, int n, float eps) {
  constexpr int VPT = Cfg::template vpt<VEC>();
  __shared__ Moments smem[32];
  const int64_t row = static_cast<int64_t>(blockIdx.x) * Cfg::ROWS + threadIdx.y;
  if (row >= rows) return;
  const T* xr = x + row * x_stride;
  const T* rr = ADD ? r + row * r_stride : nullptr;
  T* sr = ADD ? sum + row * n : nullptr;
  const float shift = row_shift<T, ADD>(xr, rr);
  float v[VPT][VEC];  // centred: x - shift
  float local_sum = 0.0f, count = 0.0f;
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int idx = (i * Cfg::THREADS + threadIdx.x) * VEC;
    if (idx < n) {
      load_input<T, VEC, ADD>(xr, rr, sr, idx, v[i]);
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        v[i][e] -= shift;
        local_sum += v[i][e];
      }
      count += VEC;
    }
  }
  const float local_mean = count > 0.0f ? local_sum / count : 0.0f;
  float m2 = 0.0f;
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    if ((i * Cfg::THREADS + threadIdx.x) * VEC < n) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) m2 += (v[i][e] - local_mean) * (v[i][e] - local_mean);
    }
  }
  const Moments mom = row_allreduce<Cfg::THREADS>(Moments{count, local_mean, m2}, MomentsOp{}, smem);
  const float rstd = rsqrt_eps(moments_variance(mom), eps);
  if (threadIdx.x == 0) {
    mean_out[row] = shift + mom.mean;
    rstd_out[row] = rstd;
  }
  T* yr = y + row * n;
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int idx = (i * Cfg::THREADS + threadIdx.x) * VEC;
    if (idx < n) normalise_store<T, VEC>(yr, w, b, idx, v[i], mom.mean, rstd);
  }
}

template <typename T, int VEC, bool ADD>
__global__ void __launch_bounds__(kStreamThreads, 1)
    ln_fwd_stream(const T* __restrict__ x, int64_t x_stride, const T* __restrict__ r, int64_t r_stride,
                  T* __restrict__ sum, const T* __restrict__ w, const T* __restrict__ b, T* __restrict__ y,
                  float* __restrict__ mean_out, float* __restrict__ rstd_out, int64_t n, float eps) {
  __shared__ Moments smem[32];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * x_stride;
  const T* rr = ADD ? r + row * r_stride : nullptr;
  const float shift = row_shift<T, ADD>(xr, rr);
  Moments mom{0.0f, 0.0f, 0.0f};
  #pragma unroll 2
  for (int64_t idx = threadIdx.x * VEC; idx < n; idx += kStreamThreads * VEC) {
    float v[VEC];
    load_input<T, VEC, ADD>(xr, rr, ADD ? sum + row * n : nullptr, idx, v);
#pragma unroll
    for (int e = 0; e < VEC; ++e) mom = moments_combine(mom, Moments{1.0f, v[e] - shift, 0.0f});
  }
  mom = row_allreduce<kStreamThreads>(mom, MomentsOp{}, smem);
  const float rstd = rsqrt_eps(moments_variance(mom), eps);
  if (threadIdx.x == 0) {
    mean_out[row] = shift + mom.mean;
    rstd_out[row] = rstd;
  }
  #pragma unroll 2
  for (int64_t idx = threadIdx.x * VEC; idx < n; idx += kStreamThreads * VEC) {
    float v[VEC];
    load_input<T, VEC, ADD>(xr, rr, nullptr, idx, v);  // recomputes the same rounded sum
#pragma unroll
    for (int e = 0; e < VEC; ++e) v[e] -= shift;
    normalise_store<T, VEC>(y + row * n, w, b, idx, v, mom.mean, rstd);
  }
}

// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) + dsum, g = dy * w.
template <typename T, int VEC>
__device__ __forceinline__ void dx_terms(const T* x, const T* dy, const T* w, int64_t idx, float mean, float rstd,
                                         float (&xhat)[VEC], float (&g)[VEC]) {
  float wv[VEC];
  load_pack<T, VEC>(x + idx, xhat);
  load_pack<T, VEC>(dy + idx, g);
  if (w != nullptr) load_pack<T, VEC>(w + idx, wv);
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    xhat[e] = (xhat[e] - mean) * rstd;
    if (w != nullptr) g[e] *= wv[e];
  }
}

template <typename T, int VEC>
__device__ __forceinline__ void dx_store(T* dx, const T* dsum, int64_t idx, const float (&xhat)[VEC],
                                         const float (&g)[VEC], Float2 sums, float inv_n, float rstd) {
  float out[VEC], ds[VEC];
  if (dsum != nullptr) load_pack<T, VEC>(dsum + idx, ds);
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    out[e] = rstd * (g[e] - sums.a * inv_n - xhat[e] * sums.b * inv_n);
    if (dsum != nullptr) out[e] += ds[e];
  }
  store_pack<T, VEC>(dx + idx, out);
}

template <typename T, int VEC, class Cfg>
__global__ void __launch_bounds__(Cfg::THREADS * Cfg::ROWS, 1)
    ln_bwd_rows(const T* __restrict__ dy, int64_t dy_stride, const T* __restrict__ dsum, int64_t dsum_stride,
                const T* __restrict__ x, int64_t x_stride, const T* __restrict__ w, const float* __restrict__ mean,
                const float* __restrict__ rstd, T* __restrict__ dx, int64_t rows, int n) {
  constexpr int VPT = Cfg::template vpt<VEC>();
  __shared__ Float2 smem[32];
  const int64_t row = static_cast<int64_t>(blockIdx.x) * Cfg::ROWS + threadIdx.y;
  if (row >= rows) return;
  const float mu = mean[row], rs = rstd[row];
  float xhat[VPT][VEC], g[VPT][VEC];
  Float2 sums{0.0f, 0.0f};
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int idx = (i * Cfg::THREADS + threadIdx.x) * VEC;
    if (idx < n) {
      dx_terms<T, VEC>(x + row * x_stride, dy + row * dy_stride, w, idx, mu, rs, xhat[i], g[i]);
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        sums.a += g[i][e];
        sums.b += g[i][e] * xhat[i][e];
      }
    }
  }
  sums = row_allreduce<Cfg::THREADS>(sums, SumOp{}, smem);
  const float inv_n = 1.0f / static_cast<float>(n);
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int idx = (i * Cfg::THREADS + threadIdx.x) * VEC;
    if (idx < n) {
      dx_store<T, VEC>(dx + row * n, dsum != nullptr ? dsum + row * dsum_stride : nullptr, idx, xhat[i], g[i], sums,
                       inv_n, rs);
    }
  }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kStreamThreads, 1)
    ln_bwd_stream(const T* __restrict__ dy, int64_t dy_stride, const T* __restrict__ dsum, int64_t dsum_stride,
                  const T* __restrict__ x, int64_t x_stride, const T* __restrict__ w, const float* __restrict__ mean,
                  const float* __restrict__ rstd, T* __restrict__ dx, int64_t n) {
  __shared__ Float2 smem[32];
  const int64_t row = blockIdx.x;
  const float mu = mean[row], rs = rstd[row];
  const T* xr = x + row * x_stride;
  const T* dyr = dy + row * dy_stride;
  Float2 sums{0.0f, 0.0f};
  #pragma unroll 2
  for (int64_t idx = threadIdx.x * VEC; idx < n; idx += kStreamThreads * VEC) {
    float xhat[VEC], g[VEC];
    dx_terms<T, VEC>(xr, dyr, w, idx, mu, rs, xhat, g);
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      sums.a += g[e];
      sums.b += g[e] * xhat[e];
    }
  }
  sums = row_allreduce<kStreamThreads>(sums, SumOp{}, smem);
  const float inv_n = 1.0f / static_cast<float>(n);
  #pragma unroll 2
  for (int64_t idx = threadIdx.x * VEC; idx < n; idx += kStreamThreads * VEC) {
    float xhat[VEC], g[VEC];
    dx_terms<T, VEC>(xr, dyr, w, idx, mu, rs, xhat, g);
    dx_store<T, VEC>(dx + row * n, dsum != nullptr ? dsum + row * dsum_stride : nullptr, idx, xhat, g, sums, inv_n,
                     rs);
  }
}

template <typename T, int VEC, bool ADD>
void forward_vec(const void* x, int64_t xs, const void* r, int64_t rs, void* sum, const void* w, const void* b,
                 void* y, float* mean, float* rstd, int64_t rows, int64_t n, float eps, cudaStream_t st) {
  const T* xp = static_cast<const T*>(x);
  const T* rp = static_cast<const T*>(r);
  T* sp = static_cast<T*>(sum);
  const T* wp = static_cast<const T*>(w);
  const T* bp = static_cast<const T*>(b);
  T* yp = static_cast<T*>(y);
  const bool in_registers = with_row_config<VEC>(n, [&](auto cfg) {
    using Cfg = decltype(cfg);
    ln_fwd_rows<T, VEC, ADD, Cfg><<<blocks_for(rows, Cfg::ROWS), dim3(Cfg::THREADS, Cfg::ROWS), 0, st>>>(
        xp, xs, rp, rs, sp, wp, bp, yp, mean, rstd, rows, static_cast<int>(n), eps);
  });
  if (!in_registers) {
    ln_fwd_stream<T, VEC, ADD><<<rows, kStreamThreads, 0, st>>>(xp, xs, rp, rs, sp, wp, bp, yp, mean, rstd, n, eps);
  }
}

template <typename T>
void forward_typed(const void* x, int64_t xs, const void* r, int64_t rs, void* sum, const void* w, const void* b,
                   void* y, float* mean, float* rstd, int64_t rows, int64_t n, float eps, cudaStream_t st) {
  const bool vec = vector_ok<T>(x, xs, n) && vector_ok<T>(r, rs, n) && vector_ok<T>(sum, n, n) &&
                   vector_ok<T>(w, n, n) && vector_ok<T>(b, n, n) && vector_ok<T>(y, n, n);
  if (r != nullptr) {
    if (vec) forward_vec<T, kVec16<T>, true>(x, xs, r, rs, sum, w, b, y, mean, rstd, rows, n, eps, st);
    else forward_vec<T, 1, true>(x, xs, r, rs, sum, w, b, y, mean, rstd, rows, n, eps, st);
  } else {
    if (vec) forward_vec<T, kVec16<T>, false>(x, xs, r, rs, sum, w, b, y, mean, rstd, rows, n, eps, st);
    else forward_vec<T, 1, false>(x, xs, r, rs, sum, w, b, y, mean, rstd, rows, n, eps, st);
  }
}

template <typename T, int VEC>
void backward_vec(const void* dy, int64_t dys, const void* dsum, int64_t dss, const void* x, int64_t xs,
                  const void* w, const float* mean, const float* rstd, void* dx, int64_t rows, int64_t n,
                  cudaStream_t st) {
  const T* dyp = static_cast<const T*>(dy);
  const T* dsp = static_cast<const T*>(dsum);
  const T* xp = static_cast<const T*>(x);
  const T* wp = static_cast<const T*>(w);
  T* dxp = static_cast<T*>(dx);
  const bool in_registers = with_row_config<VEC>(n, [&](auto cfg) {
    using Cfg = decltype(cfg);
    ln_bwd_rows<T, VEC, Cfg><<<blocks_for(rows, Cfg::ROWS), dim3(Cfg::THREADS, Cfg::ROWS), 0, st>>>(
        dyp, dys, dsp, dss, xp, xs, wp, mean, rstd, dxp, rows, static_cast<int>(n));
  });
  if (!in_registers) {
    ln_bwd_stream<T, VEC><<<rows, kStreamThreads, 0, st>>>(dyp, dys, dsp, dss, xp, xs, wp, mean, rstd, dxp, n);
  }
}

template <typename T>
void backward_typed(const void* dy, int64_t dys, const void* dsum, int64_t dss, const void* x, int64_t xs,
                    const void* w, const float* mean, const float* rstd, void* dx, int64_t rows, int64_t n,
                    cudaStream_t st) {
  const bool vec = vector_ok<T>(dy, dys, n) && vector_ok<T>(dsum, dss, n) && vector_ok<T>(x, xs, n) &&
                   vector_ok<T>(w, n, n) && vector_ok<T>(dx, n, n);
  if (vec) backward_vec<T, kVec16<T>>(dy, dys, dsum, dss, x, xs, w, mean, rstd, dx, rows, n, st);
  else backward_vec<T, 1>(dy, dys, dsum, dss, x, xs, w, mean, rstd, dx, rows, n, st);
}

}  // namespace

cudaError_t layer_norm_forward(DType dt, const void* x, int64_t x_stride, const void* residual, int64_t r_stride,
                               void* sum, const void* weight, const void* bias, void* y, float* mean, float* rstd,
                               int64_t rows, int64_t n, float eps, cudaStream_t stream) {
  if (rows == 0 || n == 0) return cudaSuccess;
  switch (dt) {
    case DType::kFloat32:
      forward_typed<float>(x, x_stride, residual, r_stride, sum, weight, bias, y, mean, rstd, rows, n, eps, stream);
      break;
    case DType::kFloat16:
      forward_typed<__half>(x, x_stride, residual, r_stride, sum, weight, bias, y, mean, rstd, rows, n, eps, stream);
      break;
    case DType::kBFloat16:
      forward_typed<__nv_bfloat16>(x, x_stride, residual, r_stride, sum, weight, bias, y, mean, rstd, rows, n, eps,
                                   stream);
      break;
  }
  return cudaGetLastError();
}

cudaError_t layer_norm_backward_dx(DType dt, const void* dy, int64_t dy_stride, const void* dsum,
                                   int64_t dsum_stride, const void* x, int64_t x_stride, const void* weight,
                                   const float* mean, const float* rstd, void* dx, int64_t rows, int64_t n,
                                   cudaStream_t stream) {
  if (rows == 0 || n == 0) return cudaSuccess;
  switch (dt) {
    case DType::kFloat32:
      backward_typed<float>(dy, dy_stride, dsum, dsum_stride, x, x_stride, weight, mean, rstd, dx, rows, n, stream);
      break;
    case DType::kFloat16:
      backward_typed<__half>(dy, dy_stride, dsum, dsum_stride, x, x_stride, weight, mean, rstd, dx, rows, n, stream);
      break;
    case DType::kBFloat16:
      backward_typed<__nv_bfloat16>(dy, dy_stride, dsum, dsum_stride, x, x_stride, weight, mean, rstd, dx, rows, n,
                                    stream);
      break;
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace gptk
