// Input checks shared by the CPU and CUDA entry points. Each TORCH_CHECK names the
// argument and the rule, so a bad call reads the same on either device.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "rows.h"

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
  TORCH_CHECK_VALUE(d % 8 == 0 && d >= 8 && d <= 256, op, ": head dim D=", d,
                    " is not supported: D must be a multiple of 8 from 8 to 256");
  TORCH_CHECK(!causal || q.size(2) <= k.size(2), op,
              ": causal attention needs Tq <= Tk (queries align to the end of the keys), got Tq=", q.size(2),
              " > Tk=", k.size(2));
  // A strided head dim is refused, not copied: the caller decides whether to pay for a copy.
  const std::pair<const at::Tensor*, const char*> named[] = {{&q, "q"}, {&k, "k"}, {&v, "v"}};
  for (const auto& [t, name] : named) {
    TORCH_CHECK_VALUE(t->stride(-1) == 1 || t->size(-1) <= 1 || t->numel() == 0, op, ": ", name,
                      " must have a unit-stride last dim (head dim D), got stride ", t->stride(-1), " for shape ",
                      t->sizes(), "; pass ", name, ".contiguous()");
  }
}

// attention's kv_lengths: an int32/int64 (B,) tensor on q's device. Its values are not read
// here (on a GPU that would synchronise): the kernels clamp each to Tk. Returns what the
// kernels read, int64 and contiguous (the argument itself when it already is).
inline at::Tensor kv_lengths_for_kernels(const at::Tensor& lengths, const at::Tensor& q, const char* op) {
  TORCH_CHECK_TYPE(lengths.scalar_type() == at::kInt || lengths.scalar_type() == at::kLong, op,
                   ": kv_lengths must be an int32 or int64 tensor, got ", lengths.scalar_type());
  TORCH_CHECK_VALUE(lengths.dim() == 1 && lengths.size(0) == q.size(0), op, ": kv_lengths must have shape (B,) = (",
                    q.size(0), ",), got ", lengths.sizes());
  TORCH_CHECK_VALUE(lengths.device() == q.device(), op, ": kv_lengths is on ", lengths.device(), " but q is on ",
                    q.device(), "; move them to one device");
  return lengths.to(at::kLong).contiguous();
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

// ---- Whole-op argument checks, shared by the CPU and CUDA entry points ----

inline int64_t check_softmax(const at::Tensor& x, double temperature, int64_t dim, const char* op) {
  check_float(x, op, "x");
  check_positive_finite(temperature, op, "temperature");
  return check_dim(dim, x.dim(), op);
}

inline int64_t check_softmax_backward(const at::Tensor& dy, const at::Tensor& y, double temperature, int64_t dim,
                                      const char* op) {
  check_float(y, op, "y");
  check_like(dy, y, op, "dy", "y");
  check_same_shape(dy, y, op, "dy", "y");
  check_positive_finite(temperature, op, "temperature");
  return check_dim(dim, y.dim(), op);
}

// residual: null for layer_norm.
inline void check_norm_forward(const at::Tensor& x, const at::Tensor* residual, const c10::optional<at::Tensor>& weight,
                               const c10::optional<at::Tensor>& bias, double eps, const char* op) {
  check_float(x, op, "x");
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least one dim (the normalized one), got a 0-d tensor");
  if (residual != nullptr) {
    TORCH_CHECK(residual->defined(), op, ": residual must be a tensor");
    check_like(*residual, x, op, "residual", "x");
    check_same_shape(*residual, x, op, "residual", "x");
  }
  check_norm_param(weight, x, op, "weight");
  check_norm_param(bias, x, op, "bias");
  check_positive_finite(eps, op, "eps");
}

// x: the normalised input (`sum` for add_layer_norm); mean/rstd: the forward's statistics.
inline void check_norm_backward(const at::Tensor& dy, const c10::optional<at::Tensor>& dsum, const at::Tensor& x,
                                const c10::optional<at::Tensor>& weight, const at::Tensor& mean,
                                const at::Tensor& rstd, const char* op, const char* x_name) {
  check_float(x, op, x_name);
  TORCH_CHECK(x.dim() >= 1, op, ": ", x_name, " must have at least one dim");
  check_like(dy, x, op, "dy", x_name);
  check_same_shape(dy, x, op, "dy", x_name);
  if (dsum.has_value() && dsum->defined()) {
    check_like(*dsum, x, op, "dsum", x_name);
    check_same_shape(*dsum, x, op, "dsum", x_name);
  }
  check_norm_param(weight, x, op, "weight");
  int64_t rows = 1;
  for (int64_t i = 0; i + 1 < x.dim(); ++i) rows *= x.size(i);
  check_stats(mean, rows, x, op, "mean");
  check_stats(rstd, rows, x, op, "rstd");
}

inline void check_attention_backward(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                     const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, bool causal,
                                     const char* op) {
  check_attention(q, k, v, causal, op);
  check_like(dout, q, op, "dout", "q");
  check_same_shape(dout, q, op, "dout", "q");
  check_like(out, q, op, "out", "q");
  check_same_shape(out, q, op, "out", "q");
  check_last_dim_contiguous(dout, op, "dout");
  TORCH_CHECK(out.is_contiguous(), op, ": out must be contiguous (the forward's output)");
  check_stats(lse, q.size(0) * q.size(1) * q.size(2), q, op, "lse");
}

// Returns whether the tanh form is asked for.
inline bool check_gelu_linear_backward(const at::Tensor& dout, const at::Tensor& x, const at::Tensor& weight,
                                       const at::Tensor& pre, c10::string_view approximate, const char* op) {
  check_gelu_linear(x, weight, c10::nullopt, op);
  const bool tanh_form = gelu_tanh_form(approximate, op);
  check_like(dout, x, op, "dout", "x");
  check_like(pre, x, op, "pre", "x");
  const std::vector<int64_t> shape = shape_with_last(x, weight.size(0));
  TORCH_CHECK(dout.sizes() == at::IntArrayRef(shape), op, ": dout must have shape ", at::IntArrayRef(shape),
              ", got ", dout.sizes());
  TORCH_CHECK(pre.sizes() == at::IntArrayRef(shape), op, ": pre must have shape ", at::IntArrayRef(shape),
              ", got ", pre.sizes());
  return tanh_form;
}

// sample: logits (B, V) float, seed a one-element int64 tensor on logits' device; top_k 0 and
// top_p 1 mean no filter. Returns nothing: the caller reads sizes from logits.
inline void check_sample(const at::Tensor& logits, const at::Tensor& seed, double temperature, int64_t top_k,
                         double top_p, const char* op) {
  check_float(logits, op, "logits");
  TORCH_CHECK(logits.dim() == 2, op, ": logits must be 2-D (B, V), got ", logits.dim(), "-D");
  TORCH_CHECK(logits.size(0) == 0 || logits.size(1) > 0, op, ": logits must have at least one column (V >= 1)");
  TORCH_CHECK(logits.size(1) < (int64_t{1} << 31), op, ": V must be < 2^31, got ", logits.size(1));
  TORCH_CHECK(seed.defined() && seed.scalar_type() == at::kLong && seed.numel() == 1, op,
              ": seed must be a one-element int64 tensor");
  TORCH_CHECK(seed.device() == logits.device(), op, ": seed is on ", seed.device(), " but logits are on ",
              logits.device());
  TORCH_CHECK(std::isfinite(temperature) && temperature >= 0, op,
              ": temperature must be finite and >= 0 (0 = greedy), got ", temperature);
  TORCH_CHECK(top_k >= 0, op, ": top_k must be >= 0 (0 = no top-k), got ", top_k);
  TORCH_CHECK(top_p > 0 && top_p <= 1, op, ": top_p must be in (0, 1] (1 = no top-p), got ", top_p);
}

}  // namespace gptk
