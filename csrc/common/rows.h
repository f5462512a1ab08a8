// Row views and dtype dispatch shared by the CPU and CUDA entry points (host code).
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <utility>
#include <vector>

namespace gptk {

// Float32, float16 and bfloat16 only: fewer instantiations than AT_DISPATCH_FLOATING_TYPES_AND2.
#define GPTK_DISPATCH_FLOAT(TYPE, NAME, ...)                    \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                \
                     AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)  \
                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)   \
                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

// Product of all dims but the last: rows of a (..., n) tensor, also when n == 0.
inline int64_t leading_rows(const at::Tensor& x) {
  int64_t rows = 1;
  for (int64_t i = 0; i + 1 < x.dim(); ++i) rows *= x.size(i);
  return rows;
}

// x's shape with the last dim replaced by n (a linear layer's output shape).
inline std::vector<int64_t> shape_with_last(const at::Tensor& x, int64_t n) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = n;
  return shape;
}

// A (..., n) tensor as (rows, n) with unit stride along n and rows at least n apart:
// a view when the layout allows, a copy otherwise.
inline at::Tensor last_dim_rows(const at::Tensor& t, int64_t rows) {
  const int64_t n = t.size(-1);
  at::Tensor r = t.reshape({rows, n});
  if ((n > 1 && r.stride(1) != 1) || (rows > 1 && r.stride(0) < n)) r = r.contiguous();
  return r;
}

// `t` as a 2-D (rows, n) tensor with `dim` last and unit stride along the row. A copy is
// made only when no row stride can describe the layout (dim not innermost, or strides
// reshape cannot flatten); kernels take the row stride, so sliced rows stay views.
inline at::Tensor as_rows(const at::Tensor& t, int64_t dim) {
  if (t.dim() == 0) return t.reshape({1, 1});
  const at::Tensor moved = t.movedim(dim, -1);
  return last_dim_rows(moved, leading_rows(moved));
}

// A fresh tensor shaped like `t` whose `dim` is innermost and contiguous, and its 2-D row
// view. The fake (meta) implementations in kernels/cuda/ allocate the same layout.
inline std::pair<at::Tensor, at::Tensor> empty_rows_like(const at::Tensor& t, int64_t dim) {
  if (t.dim() == 0) {
    at::Tensor out = at::empty({}, t.options());
    return {out, out.view({1, 1})};
  }
  at::Tensor moved_like = t.movedim(dim, -1);
  at::Tensor buf = at::empty(moved_like.sizes(), t.options());
  const int64_t n = buf.size(-1);
  return {buf.movedim(-1, dim), buf.view({leading_rows(buf), n})};
}

}  // namespace gptk
