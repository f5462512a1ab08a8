// The GELU MLP up-projection on the CPU: out = gelu(x @ weight.T + bias).
//
// The matmuls are BLAS's (at::mm) in fp32 whatever the storage dtype; the bias add, GELU
// and the casts are one fused pass over the (rows, out_features) result (the CUDA path
// does the same in cuBLASLt's epilogue). pre = x @ weight.T + bias is saved in x's dtype.
// Backward: dpre = dout * gelu'(pre) (fused, with the deterministic dbias column sum),
// dx = dpre @ weight, dweight = dpre.T @ x.
#include <ATen/Parallel.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "../common/checks.h"
#include "../common/math.h"
#include "../common/rows.h"
#include "row_blocks.h"

namespace gptk {
namespace {

std::tuple<at::Tensor, at::Tensor> gelu_linear_cpu(const at::Tensor& x, const at::Tensor& weight,
                                                   const c10::optional<at::Tensor>& bias,
                                                   c10::string_view approximate) {
  constexpr const char* op = "gptk::gelu_linear_cuda";
  check_gelu_linear(x, weight, bias, op);
  const bool tanh_form = gelu_tanh_form(approximate, op);
  const int64_t n = weight.size(0), rows = leading_rows(x);
  at::Tensor out = at::empty(shape_with_last(x, n), x.options());
  at::Tensor pre = at::empty(shape_with_last(x, n), x.options());
  if (out.numel() == 0) return {out, pre};
  const at::Tensor x2 = last_dim_rows(x, rows).to(at::kFloat);
  const at::Tensor acc = at::mm(x2, weight.to(at::kFloat).t());  // (rows, n) fp32
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor b = has_bias ? bias->contiguous() : at::Tensor();
  GPTK_DISPATCH_FLOAT(x.scalar_type(), "gelu_linear_cpu", [&] {
    const float* a = acc.const_data_ptr<float>();
    const scalar_t* bp = has_bias ? b.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* op_ = out.mutable_data_ptr<scalar_t>();
    scalar_t* pp = pre.mutable_data_ptr<scalar_t>();
    const int64_t lda = acc.stride(0);
    at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / n), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        for (int64_t j = 0; j < n; ++j) {
          const float p = a[r * lda + j] + (bp != nullptr ? static_cast<float>(bp[j]) : 0.0f);
          pp[r * n + j] = static_cast<scalar_t>(p);
          op_[r * n + j] = static_cast<scalar_t>(gelu(p, tanh_form));
        }
      }
    });
  });
  return {out, pre};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gelu_linear_backward_cpu(const at::Tensor& dout,
                                                                        const at::Tensor& x,
                                                                        const at::Tensor& weight,
                                                                        const at::Tensor& pre,
                                                                        c10::string_view approximate) {
  constexpr const char* op = "gptk::gelu_linear_cuda_backward";
  const bool tanh_form = check_gelu_linear_backward(dout, x, weight, pre, approximate, op);
  const int64_t n = weight.size(0), rows = leading_rows(x);
  at::Tensor db = at::empty({n}, x.options());
  at::Tensor dpre = at::empty({rows, n}, x.options().dtype(at::kFloat));
  if (rows == 0 || n == 0) {
    db.zero_();
  } else {
    const at::Tensor dout2 = last_dim_rows(dout, rows), pre2 = last_dim_rows(pre, rows);
    const RowBlocks blocks(rows);
    std::vector<float> part_b(blocks.count * n, 0.0f);
    GPTK_DISPATCH_FLOAT(x.scalar_type(), "gelu_linear_backward_cpu", [&] {
      const scalar_t* dp = dout2.const_data_ptr<scalar_t>();
      const scalar_t* pp = pre2.const_data_ptr<scalar_t>();
      const int64_t ds = dout2.stride(0), ps = pre2.stride(0);
      float* g = dpre.mutable_data_ptr<float>();
      at::parallel_for(0, blocks.count, 1, [&](int64_t bbegin, int64_t bend) {
        for (int64_t blk = bbegin; blk < bend; ++blk) {
          float* pb = part_b.data() + blk * n;
          for (int64_t r = blocks.begin(blk); r < blocks.end(blk); ++r) {
            for (int64_t j = 0; j < n; ++j) {
              const float v = static_cast<float>(dp[r * ds + j]) * gelu_grad(static_cast<float>(pp[r * ps + j]), tanh_form);
              g[r * n + j] = v;
              pb[j] += v;
            }
          }
        }
      });
      sum_partials(part_b, blocks.count, n, db.mutable_data_ptr<scalar_t>());
    });
  }
  const at::Tensor x2 = last_dim_rows(x, rows).to(at::kFloat);
  at::Tensor dx = at::mm(dpre, weight.to(at::kFloat)).to(x.scalar_type()).reshape(x.sizes());
  at::Tensor dw = at::mm(dpre.t(), x2).to(x.scalar_type());
  return {dx, dw, db};
}

}  // namespace

TORCH_LIBRARY_IMPL(gptk, CPU, m) {
  m.impl("gelu_linear_cuda", &gelu_linear_cpu);
  m.impl("gelu_linear_cuda_backward", &gelu_linear_backward_cpu);
}

}  // namespace gptk
