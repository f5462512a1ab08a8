// Layer norm over the last dim, and the pre-LN block's residual add fused into it, on the CPU.
//
// Forward: each row is widened to fp32 once (for add_layer_norm: x + residual, rounded to
// the storage dtype first, since that rounded sum is the tensor the norm and the caller
// see); mean and variance come from 256-element block moments combined with
// gptk::moments_combine (the same combine the CUDA kernel uses across threads).
// Backward: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * weight;
// dweight = sum_rows(dy * xhat), dbias = sum_rows(dy) accumulate in fp32 per fixed block
// of rows, then blocks are summed in order: the result does not depend on thread count.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "../common/checks.h"
#include "../common/math.h"
#include "../common/rows.h"
#include "reduce.h"
#include "row_blocks.h"

namespace gptk {
namespace {

constexpr int64_t kMomentBlock = 256;

Moments row_moments(const float* v, int64_t n) {
  Moments acc{0.0f, 0.0f, 0.0f};
  for (int64_t start = 0; start < n; start += kMomentBlock) {
    const int64_t len = std::min(kMomentBlock, n - start);
    float sum = 0.0f;
    for (int64_t j = 0; j < len; ++j) sum += v[start + j];
    const float mean = sum / static_cast<float>(len);
    float m2 = 0.0f;
    for (int64_t j = 0; j < len; ++j) {
      const float d = v[start + j] - mean;
      m2 += d * d;
    }
    acc = moments_combine(acc, Moments{static_cast<float>(len), mean, m2});
  }
  return acc;
}

int64_t row_grain(int64_t n) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(n, 1)); }

template <typename T, bool kAdd>
void forward_rows(const T* x, int64_t x_stride, const T* res, int64_t res_stride, T* sum, const T* w, const T* b,
                  T* y, float* mean, float* rstd, int64_t rows, int64_t n, float eps) {
  at::parallel_for(0, rows, row_grain(n), [&](int64_t begin, int64_t end) {
    std::vector<float> buf(n);
    for (int64_t r = begin; r < end; ++r) {
      const T* xr = x + r * x_stride;
      if constexpr (kAdd) {
        const T* rr = res + r * res_stride;
        T* sr = sum + r * n;
        for (int64_t j = 0; j < n; ++j) {
          const T s = static_cast<T>(static_cast<float>(xr[j]) + static_cast<float>(rr[j]));
          sr[j] = s;
          buf[j] = static_cast<float>(s);
        }
      } else {
        for (int64_t j = 0; j < n; ++j) buf[j] = static_cast<float>(xr[j]);
      }
      // Centre on the row's first element: a constant row becomes exactly zero, so its
      // variance is exactly 0 and y is exactly the bias (as in fp64), and large offsets
      // do not cost the statistics precision.
      const float shift = n > 0 ? buf[0] : 0.0f;
      for (int64_t j = 0; j < n; ++j) buf[j] -= shift;
      const Moments m = row_moments(buf.data(), n);
      const float rs = rsqrt_eps(moments_variance(m), eps);
      mean[r] = shift + m.mean;
      rstd[r] = rs;
      T* yr = y + r * n;
      for (int64_t j = 0; j < n; ++j) {
        float v = (buf[j] - m.mean) * rs;
        if (w != nullptr) v *= static_cast<float>(w[j]);
        if (b != nullptr) v += static_cast<float>(b[j]);
        yr[j] = static_cast<T>(v);
      }
    }
  });
}

// dsum (may be null): gradient reaching add_layer_norm's x + residual output, added to dx.
template <typename T>
void backward_rows(const T* dy, int64_t dy_stride, const T* dsum, int64_t dsum_stride, const T* x, int64_t x_stride,
                   const T* w, const float* mean, const float* rstd, T* dx, T* dw, T* db, int64_t rows, int64_t n) {
  const RowBlocks blocks(rows);
  std::vector<float> part_w(blocks.count * n, 0.0f), part_b(blocks.count * n, 0.0f);
  at::parallel_for(0, blocks.count, 1, [&](int64_t bbegin, int64_t bend) {
    std::vector<float> xhat(n), g(n);
    for (int64_t blk = bbegin; blk < bend; ++blk) {
      float* pw = part_w.data() + blk * n;
      float* pb = part_b.data() + blk * n;
      for (int64_t r = blocks.begin(blk); r < blocks.end(blk); ++r) {
        const T* xr = x + r * x_stride;
        const T* dyr = dy + r * dy_stride;
        const float mu = mean[r], rs = rstd[r];
        for (int64_t j = 0; j < n; ++j) {
          const float d = static_cast<float>(dyr[j]);
          xhat[j] = (static_cast<float>(xr[j]) - mu) * rs;
          g[j] = w != nullptr ? d * static_cast<float>(w[j]) : d;
          pw[j] += d * xhat[j];
          pb[j] += d;
        }
        const float sum_g = lane_sum(n, [&](int64_t j) { return g[j]; });
        const float sum_gx = lane_sum(n, [&](int64_t j) { return g[j] * xhat[j]; });
        const float inv_n = 1.0f / static_cast<float>(n);
        const float a = sum_g * inv_n, c = sum_gx * inv_n;
        T* dxr = dx + r * n;
        for (int64_t j = 0; j < n; ++j) {
          float v = rs * (g[j] - a - xhat[j] * c);
          if (dsum != nullptr) v += static_cast<float>(dsum[r * dsum_stride + j]);
          dxr[j] = static_cast<T>(v);
        }
      }
    }
  });
  sum_partials(part_w, blocks.count, n, dw);
  sum_partials(part_b, blocks.count, n, db);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward(const at::Tensor& x,
                                                                   const c10::optional<at::Tensor>& residual,
                                                                   const c10::optional<at::Tensor>& weight,
                                                                   const c10::optional<at::Tensor>& bias,
                                                                   double eps, const char* op) {
  const bool add = residual.has_value();
  check_norm_forward(x, add ? &*residual : nullptr, weight, bias, eps, op);
  const int64_t n = x.size(-1), rows = leading_rows(x);
  at::Tensor y = at::empty(x.sizes(), x.options());
  at::Tensor sum = add ? at::empty(x.sizes(), x.options()) : at::Tensor();
  at::Tensor mean = at::empty({rows}, x.options().dtype(at::kFloat));
  at::Tensor rstd = at::empty({rows}, x.options().dtype(at::kFloat));
  if (rows == 0) return {y, sum, mean, rstd};
  const at::Tensor x2 = last_dim_rows(x, rows);
  const at::Tensor r2 = add ? last_dim_rows(*residual, rows) : at::Tensor();
  const at::Tensor w = weight.has_value() && weight->defined() ? weight->contiguous() : at::Tensor();
  const at::Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
  GPTK_DISPATCH_FLOAT(x.scalar_type(), "layer_norm_cpu", [&] {
    const scalar_t* wp = w.defined() ? w.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* bp = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
    float* mp = mean.mutable_data_ptr<float>();
    float* rp = rstd.mutable_data_ptr<float>();
    if (add) {
      forward_rows<scalar_t, true>(x2.const_data_ptr<scalar_t>(), x2.stride(0), r2.const_data_ptr<scalar_t>(),
                                   r2.stride(0), sum.mutable_data_ptr<scalar_t>(), wp, bp,
                                   y.mutable_data_ptr<scalar_t>(), mp, rp, rows, n, static_cast<float>(eps));
    } else {
      forward_rows<scalar_t, false>(x2.const_data_ptr<scalar_t>(), x2.stride(0), nullptr, 0, nullptr, wp, bp,
                                    y.mutable_data_ptr<scalar_t>(), mp, rp, rows, n, static_cast<float>(eps));
    }
  });
  return {y, sum, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(const at::Tensor& dy, const c10::optional<at::Tensor>& dsum,
                                                        const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                                                        const at::Tensor& mean, const at::Tensor& rstd,
                                                        const char* op, const char* x_name) {
  check_norm_backward(dy, dsum, x, weight, mean, rstd, op, x_name);
  const bool has_dsum = dsum.has_value() && dsum->defined();
  const int64_t n = x.size(-1), rows = leading_rows(x);
  at::Tensor dx = at::empty(x.sizes(), x.options());
  at::Tensor dw = at::empty({n}, x.options());
  at::Tensor db = at::empty({n}, x.options());
  if (rows == 0 || n == 0) {
    dw.zero_();
    db.zero_();
    return {dx, dw, db};
  }
  const at::Tensor x2 = last_dim_rows(x, rows), dy2 = last_dim_rows(dy, rows);
  const at::Tensor ds2 = has_dsum ? last_dim_rows(*dsum, rows) : at::Tensor();
  const at::Tensor w = weight.has_value() && weight->defined() ? weight->contiguous() : at::Tensor();
  GPTK_DISPATCH_FLOAT(x.scalar_type(), "layer_norm_backward_cpu", [&] {
    backward_rows<scalar_t>(dy2.const_data_ptr<scalar_t>(), dy2.stride(0),
                            has_dsum ? ds2.const_data_ptr<scalar_t>() : nullptr, has_dsum ? ds2.stride(0) : 0,
                            x2.const_data_ptr<scalar_t>(), x2.stride(0),
                            w.defined() ? w.const_data_ptr<scalar_t>() : nullptr, mean.const_data_ptr<float>(),
                            rstd.const_data_ptr<float>(), dx.mutable_data_ptr<scalar_t>(),
                            dw.mutable_data_ptr<scalar_t>(), db.mutable_data_ptr<scalar_t>(), rows, n);
  });
  return {dx, dw, db};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_cpu(const at::Tensor& x,
                                                              const c10::optional<at::Tensor>& weight,
                                                              const c10::optional<at::Tensor>& bias, double eps) {
  auto [y, sum, mean, rstd] = forward(x, c10::nullopt, weight, bias, eps, "gptk::layer_norm_cuda");
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_layer_norm_cpu(
    const at::Tensor& x, const at::Tensor& residual, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, double eps) {
  return forward(x, residual, weight, bias, eps, "gptk::add_layer_norm_cuda");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_backward_cpu(const at::Tensor& dy, const at::Tensor& x,
                                                                       const c10::optional<at::Tensor>& weight,
                                                                       const at::Tensor& mean,
                                                                       const at::Tensor& rstd) {
  return backward(dy, c10::nullopt, x, weight, mean, rstd, "gptk::layer_norm_cuda_backward", "x");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> add_layer_norm_backward_cpu(
    const at::Tensor& dy, const c10::optional<at::Tensor>& dsum, const at::Tensor& sum,
    const c10::optional<at::Tensor>& weight, const at::Tensor& mean, const at::Tensor& rstd) {
  return backward(dy, dsum, sum, weight, mean, rstd, "gptk::add_layer_norm_cuda_backward", "sum");
}

}  // namespace

TORCH_LIBRARY_IMPL(gptk, CPU, m) {
  m.impl("layer_norm_cuda", &layer_norm_cpu);
  m.impl("layer_norm_cuda_backward", &layer_norm_backward_cpu);
  m.impl("add_layer_norm_cuda", &add_layer_norm_cpu);
  m.impl("add_layer_norm_cuda_backward", &add_layer_norm_backward_cpu);
}

}  // namespace gptk
