// Input checks shared by the CPU and CUDA entry points. Each TORCH_CHECK names the
// argument and the rule, so a bad call reads the same on either device.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <string>

namespace gptk {

inline bool is_kernel_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

inline void check_float(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.defined(), op, ": ", name, " must be a tensor, got None");
  TORCH_CHECK(is_kernel_dtype(t.scalar_type()), op, ": ", name,
              " must be float32, float16 or bfloat16, got ", t.scalar_type());
}

// `t` matches `ref` in dtype and device (every tensor of one call does).
inline void check_like(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name,
                       const char* ref_name) {
  check_float(t, op, name);
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(),
              " but ", ref_name, " has ", ref.scalar_type(), "; they must match");
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ", ref_name,
              " is on ", ref.device(), "; move them to one device");
}

inline void check_same_shape(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name,
                             const char* ref_name) {
  TORCH_CHECK(t.sizes() == ref.sizes(), op, ": ", name, " must have ", ref_name, "'s shape ", ref.sizes(),
              ", got ", t.sizes());
}

// float32 statistics saved by a forward pass: (rows,) on x's device.
inline void check_stats(const at::Tensor& t, int64_t rows, const at::Tensor& x, const char* op, const char* name) {
  TORCH_CHECK(t.defined() && t.scalar_type() == at::kFloat, op, ": ", name, " must be a float32 tensor");
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " must be on ", x.device(), ", got ", t.device());
  TORCH_CHECK(t.numel() == rows, op, ": ", name, " must hold one value per row (", rows, "), got ", t.numel());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

inline void check_positive_finite(double v, const char* op, const char* name) {
  TORCH_CHECK(std::isfinite(v) && v > 0, op, ": ", name, " must be finite and > 0, got ", v);
}

inline int64_t check_dim(int64_t dim, int64_t ndim, const char* op) {
  const int64_t size = ndim > 0 ? ndim : 1;
  TORCH_CHECK(dim >= -size && dim < size, op, ": dim=", dim, " is out of range for a tensor with ", ndim,
              " dims");
  return dim < 0 ? dim + size : dim;
}

// Optional weight/bias of a norm over the last dim of x.
inline void check_norm_param(const c10::optional<at::Tensor>& p, const at::Tensor& x, const char* op,
                             const char* name) {
  if (!p.has_value() || !p->defined()) return;
  check_like(*p, x, op, name, "x");
  TORCH_CHECK(p->dim() == 1 && p->size(0) == x.size(-1), op, ": ", name, " must have shape (",
              x.size(-1), ",) (x.shape[-1:]), got ", p->sizes());
}

inline void check_last_dim_contiguous(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.stride(-1) == 1 || t.size(-1) == 1 || t.numel() == 0, op, ": ", name,
              " must be contiguous in the last dim");
}

inline void check_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal,
                            const char* op) {
  check_float(q, op, "q");
  check_like(k, q, op, "k", "q");
  check_like(v, q, op, "v", "q");
  TORCH_CHECK(q.dim() == 4, op, ": q must be 4-D (B, H, T, D), got shape ", q.sizes());
  TORCH_CHECK(k.dim() == 4, op, ": k must be 4-D (B, H, T, D), got shape ", k.sizes());
  TORCH_CHECK(k.sizes() == v.sizes(), op, ": k and v must have the same shape, got ", k.sizes(), " and ",
              v.sizes());
  TORCH_CHECK(q.size(0) == k.size(0), op, ": q and k must have the same batch size B (dim 0)");
  TORCH_CHECK(q.size(1) == k.size(1), op, ": q and k must have the same head count H (dim 1)");
  TORCH_CHECK(q.size(3) == k.size(3), op, ": q and k must have the same head dim D (dim 3)");
  const int64_t d = q.size(3);
  TORCH_CHECK(d == 16 || d == 32 || d == 64 || d == 128, op, ": head dim D=", d,
              " is not supported; supported: 16, 32, 64, 128");
  TORCH_CHECK(!causal || q.size(2) <= k.size(2), op,
              ": causal attention needs Tq <= Tk (queries align to the end of the keys), got Tq=", q.size(2),
              " > Tk=", k.size(2));
  for (const auto* t : {&q, &k, &v}) check_last_dim_contiguous(*t, op, "q, k and v");
}

inline bool gelu_tanh_form(c10::string_view approximate, const char* op) {
  TORCH_CHECK(approximate == "tanh" || approximate == "none", op,
              ": approximate must be 'tanh' or 'none', got '", std::string(approximate), "'");
  return approximate == "tanh";
}

inline void check_gelu_linear(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                              const char* op) {
  check_float(x, op, "x");
  check_like(weight, x, op, "weight", "x");
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least one dim (in_features), got a 0-d tensor");
  TORCH_CHECK(weight.dim() == 2, op, ": weight must be 2-D (out_features, in_features), got shape ",
              weight.sizes());
  TORCH_CHECK(weight.size(1) == x.size(-1), op, ": in_features mismatch: x.shape[-1]=", x.size(-1),
              " but weight.shape[1]=", weight.size(1));
  if (bias.has_value() && bias->defined()) {
    check_like(*bias, x, op, "bias", "x");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), op, ": bias must have shape (",
                weight.size(0), ",) (out_features), got ", bias->sizes());
  }
}

}  // namespace gptk
