// Fused unembedding + cross-entropy: the token-chunk driver shared by the CPU and CUDA
// entry points (host code). Per chunk of `chunk` tokens: z = x W^T + b by one GEMM into a
// reused (chunk, V) buffer (BLAS on the CPU, cuBLAS on the GPU), the device's row step
// (loss per token; with a gradient, dz = (softmax(z / T) - onehot) * scale / T in place:
// cpu/linear_cross_entropy.cpp, cuda/linear_cross_entropy.cu), then dX[chunk] = dz W and
// dW += dz^T X[chunk] (fp32 accumulator, fixed chunk order: deterministic) and db += the
// column sums of dz. The full (tokens, V) logits never exist.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <tuple>

#include "checks.h"
#include "rows.h"

namespace gptk {

// The device's row step over z (m, V) (row stride z.stride(0)): loss[r] and, with
// want_grad, dz in place; scale holds one value, or one per row when per_token.
using LceRowStep = std::function<void(at::Tensor& z, const at::Tensor& target, const at::Tensor& scale,
                                      bool per_token, double temperature, int64_t ignore_index, bool want_grad,
                                      at::Tensor& loss)>;

inline void check_lce(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                      const at::Tensor& target, double temperature, const char* op) {
  check_float(x, op, "x");
  check_like(weight, x, op, "weight", "x");
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least one dim (the hidden size C), got a 0-d tensor");
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) >= 1, op, ": weight must be 2-D (V, C) with V >= 1, got shape ",
              weight.sizes());
  TORCH_CHECK(weight.size(1) == x.size(-1), op, ": hidden size mismatch: x.shape[-1]=", x.size(-1),
              " but weight.shape[1]=", weight.size(1));
  if (bias.has_value() && bias->defined()) {
    check_like(*bias, x, op, "bias", "x");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), op, ": bias must have shape (", weight.size(0),
                ",) (V), got ", bias->sizes());
  }
  TORCH_CHECK(target.scalar_type() == at::kLong, op, ": target must be an int64 tensor, got ", target.scalar_type());
  TORCH_CHECK(target.device() == x.device(), op, ": target is on ", target.device(), " but x is on ", x.device());
  TORCH_CHECK(target.sizes() == x.sizes().slice(0, x.dim() - 1), op, ": target must have shape x.shape[:-1]=",
              x.sizes().slice(0, x.dim() - 1), ", got ", target.sizes());
  check_positive_finite(temperature, op, "temperature");
}

inline bool lce_reduction_none(c10::string_view reduction, const char* op) {
  TORCH_CHECK(reduction == "mean" || reduction == "sum" || reduction == "none", op,
              ": reduction must be 'mean', 'sum' or 'none', got '", std::string(reduction), "'");
  return reduction == "none";
}

// Targets outside [0, V) other than ignore_index: IndexError on the CPU; on CUDA a
// device-side assert (no host sync), as F.cross_entropy.
inline void check_lce_targets(const at::Tensor& t, int64_t v, int64_t ignore_index) {
  if (t.numel() == 0) return;
  const at::Tensor bad = t.ne(ignore_index).logical_and_(t.lt(0).logical_or_(t.ge(v)));
  if (t.is_cuda()) {
    at::_assert_async(bad.any().logical_not(), "linear_cross_entropy: a target is outside [0, V) and is not "
                                               "ignore_index");
  } else if (bad.any().item<bool>()) {
    TORCH_CHECK_INDEX(false, "linear_cross_entropy: target ", t.masked_select(bad)[0].item<int64_t>(),
                      " is out of bounds: targets must be in [0, ", v, ") (weight.shape[0]) or ignore_index=",
                      ignore_index);
  }
}

// acc (fp32) += z^T xs for 16-bit operands. On CUDA cuBLAS writes the fp32 sum in place
// (aten::addmm.dtype_out: no 16-bit temporary, one rounding); where that kernel is missing
// (older torch, the CPU) the 16-bit product is rounded once per chunk and added in fp32.
inline void lce_accumulate_16bit(at::Tensor& acc, const at::Tensor& z, const at::Tensor& xs) {
  static bool fp32_out = true;  // cleared for the process once the dtype_out kernel is refused
  if (acc.is_cuda() && fp32_out) {
    try {
      at::addmm_out(acc, acc, z.t(), xs, at::kFloat);
      return;
    } catch (const c10::Error&) {
      fp32_out = false;
    }
  }
  acc.add_(at::mm(z.t(), xs));
}

struct LceResult {
  at::Tensor losses;  // fp32 (N,)
  at::Tensor dx, dw, db;  // undefined without a gradient; db undefined without a bias
};

// The chunk loop over x2 (N, C) and target (N,). `compute` is the dtype the GEMMs and the
// row step run in (fp32 on the CPU, x's dtype on the GPU).
inline LceResult lce_chunks(const at::Tensor& x2, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                            const at::Tensor& target, double temperature, int64_t ignore_index, const at::Tensor& scale,
                            bool per_token, bool want_grad, int64_t chunk, at::ScalarType compute,
                            const LceRowStep& row_step) {
  const int64_t n = x2.size(0), c = x2.size(1), v = weight.size(0);
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor xc = x2.to(compute), w = weight.to(compute);
  const at::Tensor b = has_bias ? bias->to(compute) : at::Tensor();
  LceResult r;
  r.losses = at::zeros({n}, x2.options().dtype(at::kFloat));
  at::Tensor dw_acc, db_acc;
  if (want_grad) {
    r.dx = at::empty({n, c}, x2.options());
    dw_acc = at::zeros({v, c}, x2.options().dtype(at::kFloat));
    if (has_bias) db_acc = at::zeros({v}, x2.options().dtype(at::kFloat));
  }
  if (n > 0) {
    chunk = std::max<int64_t>(1, std::min(chunk, n));
    const int64_t ld = (v + 7) / 8 * 8;  // 16-byte-aligned rows for the row step's vector accesses
    at::Tensor zbuf = at::empty({chunk, ld}, x2.options().dtype(compute));
    for (int64_t start = 0; start < n; start += chunk) {
      const int64_t m = std::min(chunk, n - start);
      const at::Tensor xs = xc.narrow(0, start, m);
      at::Tensor z = zbuf.narrow(0, 0, m).narrow(1, 0, v);
      if (has_bias) at::addmm_out(z, b, xs, w.t());
      else at::mm_out(z, xs, w.t());
      at::Tensor loss = r.losses.narrow(0, start, m);
      row_step(z, target.narrow(0, start, m), per_token ? scale.narrow(0, start, m) : scale, per_token, temperature,
               ignore_index, want_grad, loss);
      if (!want_grad) continue;
      at::Tensor dxs = r.dx.narrow(0, start, m);
      if (compute == x2.scalar_type()) at::mm_out(dxs, z, w);
      else dxs.copy_(at::mm(z, w));
      if (compute == at::kFloat) dw_acc.addmm_(z.t(), xs);
      else lce_accumulate_16bit(dw_acc, z, xs);
      if (has_bias) db_acc.add_(z.sum(0, false, at::kFloat));
    }
  }
  if (want_grad) {
    r.dw = dw_acc.to(weight.scalar_type());
    if (has_bias) r.db = db_acc.to(bias->scalar_type());
  }
  return r;
}

// The whole forward op: (loss, dx, dw, db). For mean/sum with need_grad the gradients of
// the loss (unit incoming gradient) are formed now; otherwise those three are empty.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lce_forward(
    const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias, const at::Tensor& target,
    double temperature, int64_t ignore_index, c10::string_view reduction, bool need_grad, int64_t chunk,
    at::ScalarType compute, const LceRowStep& row_step, const char* op) {
  check_lce(x, weight, bias, target, temperature, op);
  const bool none = lce_reduction_none(reduction, op);
  const int64_t v = weight.size(0), c = weight.size(1);
  const at::Tensor x2 = x.reshape({leading_rows(x), c});
  const at::Tensor t = target.reshape({-1}).contiguous();
  check_lce_targets(t, v, ignore_index);
  const at::Tensor valid = t.ne(ignore_index).sum().to(at::kFloat);
  const at::Tensor scale = reduction == "mean" ? valid.clamp_min(1.0).reciprocal().reshape({1})
                                               : at::ones({1}, x.options().dtype(at::kFloat));
  const bool grad_now = need_grad && !none;
  LceResult r = lce_chunks(x2, weight, bias, t, temperature, ignore_index, scale, false, grad_now, chunk, compute,
                           row_step);
  at::Tensor loss = none ? r.losses.view(target.sizes())
                         : (reduction == "sum" ? r.losses.sum() : r.losses.sum() / valid);  // NaN if all ignored
  const at::TensorOptions o = x.options();
  if (!grad_now) return {loss, at::empty({0}, o), at::empty({0}, o), at::empty({0}, o)};
  const bool has_bias = bias.has_value() && bias->defined();
  return {loss, r.dx.view(x.sizes()), r.dw, has_bias ? r.db : at::empty({0}, o)};
}

// Reduction "none": (dx, dw, db) for per-token incoming gradients, by rerunning the chunks.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> lce_backward(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
    const at::Tensor& target, double temperature, int64_t ignore_index, int64_t chunk, at::ScalarType compute,
    const LceRowStep& row_step, const char* op) {
  check_lce(x, weight, bias, target, temperature, op);
  TORCH_CHECK(grad.sizes() == target.sizes(), op, ": grad must have target's shape ", target.sizes(), ", got ",
              grad.sizes());
  const int64_t c = weight.size(1);
  const at::Tensor g = grad.reshape({-1}).to(at::kFloat).contiguous();
  LceResult r = lce_chunks(x.reshape({leading_rows(x), c}), weight, bias, target.reshape({-1}).contiguous(), temperature,
                           ignore_index, g, true, true, chunk, compute, row_step);
  const bool has_bias = bias.has_value() && bias->defined();
  return {r.dx.view(x.sizes()), r.dw, has_bias ? r.db : at::empty({0}, x.options())};
}

}  // namespace gptk
