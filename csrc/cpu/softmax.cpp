// Softmax with temperature on the CPU: y = softmax(x / t) along `dim`, and its backward
// dx = y * (dy - sum(dy * y)) / t. Rows in parallel; each row is widened to fp32 once
// into a thread-local buffer, then max, exp-sum and normalise run as plain loops.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../common/checks.h"
#include "../common/math.h"
#include "../common/rows.h"
#include "reduce.h"

namespace gptk {
namespace {

int64_t row_grain(int64_t n) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(n, 1)); }

template <typename T>
void softmax_forward_rows(const T* x, int64_t x_stride, T* y, int64_t y_stride, int64_t rows, int64_t n, float c) {
  at::parallel_for(0, rows, row_grain(n), [&](int64_t begin, int64_t end) {
    std::vector<float> buf(n);
    for (int64_t r = begin; r < end; ++r) {
      const T* xr = x + r * x_stride;
      float m = kNegInf;
      for (int64_t j = 0; j < n; ++j) {
        buf[j] = static_cast<float>(xr[j]);
        m = softmax_max(m, buf[j]);
      }
      for (int64_t j = 0; j < n; ++j) buf[j] = softmax_exp(buf[j], m, c);
      const float sum = lane_sum(n, [&](int64_t j) { return buf[j]; });
      const float inv = 1.0f / sum;
      T* yr = y + r * y_stride;
      for (int64_t j = 0; j < n; ++j) yr[j] = static_cast<T>(buf[j] * inv);
    }
  });
}

template <typename T>
void softmax_backward_rows(const T* dy, int64_t dy_stride, const T* y, int64_t y_stride, T* dx,
                           int64_t dx_stride, int64_t rows, int64_t n, float inv_t) {
  at::parallel_for(0, rows, row_grain(n), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* dyr = dy + r * dy_stride;
      const T* yr = y + r * y_stride;
      const float dot =
          lane_sum(n, [&](int64_t j) { return static_cast<float>(dyr[j]) * static_cast<float>(yr[j]); });
      T* dxr = dx + r * dx_stride;
      for (int64_t j = 0; j < n; ++j) {
        dxr[j] = static_cast<T>(static_cast<float>(yr[j]) * (static_cast<float>(dyr[j]) - dot) * inv_t);
      }
    }
  });
}

at::Tensor softmax_cpu(const at::Tensor& x, double temperature, int64_t dim) {
  constexpr const char* op = "gptk::softmax_cuda";
  dim = check_softmax(x, temperature, dim, op);
  auto [y, y_rows] = empty_rows_like(x, dim);
  if (x.numel() == 0) return y;
  const at::Tensor x_rows = as_rows(x, dim);
  const float c = kLog2e / static_cast<float>(temperature);
  GPTK_DISPATCH_FLOAT(x.scalar_type(), "softmax_cpu", [&] {
    softmax_forward_rows(x_rows.const_data_ptr<scalar_t>(), x_rows.stride(0), y_rows.mutable_data_ptr<scalar_t>(),
                         y_rows.stride(0), x_rows.size(0), x_rows.size(1), c);
  });
  return y;
}

at::Tensor softmax_backward_cpu(const at::Tensor& dy, const at::Tensor& y, double temperature, int64_t dim) {
  constexpr const char* op = "gptk::softmax_cuda_backward";
  dim = check_softmax_backward(dy, y, temperature, dim, op);
  auto [dx, dx_rows] = empty_rows_like(y, dim);
  if (y.numel() == 0) return dx;
  const at::Tensor y_rows = as_rows(y, dim);
  const at::Tensor dy_rows = as_rows(dy, dim);
  GPTK_DISPATCH_FLOAT(y.scalar_type(), "softmax_backward_cpu", [&] {
    softmax_backward_rows(dy_rows.const_data_ptr<scalar_t>(), dy_rows.stride(0), y_rows.const_data_ptr<scalar_t>(),
                          y_rows.stride(0), dx_rows.mutable_data_ptr<scalar_t>(), dx_rows.stride(0),
                          y_rows.size(0), y_rows.size(1), static_cast<float>(1.0 / temperature));
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(gptk, CPU, m) {
  m.impl("softmax_cuda", &softmax_cpu);
  m.impl("softmax_cuda_backward", &softmax_backward_cpu);
}

}  // namespace gptk
