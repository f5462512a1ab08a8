// The arithmetic the CPU and CUDA implementations must agree on, in one place.
//
// Host and device: every function is plain fp32 C++ with no torch or CUDA runtime
// dependency, so the CPU tests exercise exactly the formulas the kernels run.
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define GPTK_HD __host__ __device__ __forceinline__
#else
#define GPTK_HD inline
#endif

namespace gptk {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kSqrt2OverPi = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kInvSqrt2 = 0.7071067811865476f;
constexpr float kInvSqrt2Pi = 0.3989422804014327f;   // 1 / sqrt(2 pi)
constexpr float kGeluCubic = 0.044715f;
constexpr float kNegInf = -INFINITY;

// --------------------------------------------------------------------------------------
// GELU, both of torch.nn.functional.gelu's forms, and their derivatives.
// The tanh form uses torch's own expression, so +-inf and NaN come out as torch's do.
// --------------------------------------------------------------------------------------
GPTK_HD float gelu_tanh(float x) {
  const float inner = kSqrt2OverPi * (x + kGeluCubic * x * x * x);
  return 0.5f * x * (1.0f + tanhf(inner));
}

GPTK_HD float gelu_tanh_grad(float x) {
  const float x2 = x * x;
  const float t = tanhf(kSqrt2OverPi * (x + kGeluCubic * x2 * x));
  const float dinner = kSqrt2OverPi * (1.0f + 3.0f * kGeluCubic * x2);
  return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * dinner;
}

GPTK_HD float gelu_erf(float x) { return 0.5f * x * (1.0f + erff(x * kInvSqrt2)); }

GPTK_HD float gelu_erf_grad(float x) {
  const float cdf = 0.5f * (1.0f + erff(x * kInvSqrt2));
  return cdf + x * kInvSqrt2Pi * expf(-0.5f * x * x);
}

GPTK_HD float gelu(float x, bool tanh_form) { return tanh_form ? gelu_tanh(x) : gelu_erf(x); }
GPTK_HD float gelu_grad(float x, bool tanh_form) { return tanh_form ? gelu_tanh_grad(x) : gelu_erf_grad(x); }

// --------------------------------------------------------------------------------------
// Mean and variance: Chan's parallel combine of (count, mean, M2) partials.
// Each worker (a CPU block of a row, a CUDA thread's registers) computes its partial
// in two passes over values it already holds, then partials combine pairwise; this is
// as accurate as a two-pass over the whole row and never forms sum(x^2) - sum(x)^2.
// --------------------------------------------------------------------------------------
struct Moments {
  float count;
  float mean;
  float m2;  // sum of squared deviations from mean
};

GPTK_HD Moments moments_combine(Moments a, Moments b) {
  const float n = a.count + b.count;
  if (n == 0.0f) return a;
  const float wb = b.count / n;
  const float delta = b.mean - a.mean;
  Moments r;
  r.count = n;
  r.mean = a.mean + delta * wb;
  r.m2 = a.m2 + b.m2 + delta * delta * a.count * wb;
  return r;
}

// Population variance, as layer norm uses it.
GPTK_HD float moments_variance(Moments m) { return m.count > 0.0f ? m.m2 / m.count : 0.0f; }

GPTK_HD float rsqrt_eps(float variance, float eps) { return 1.0f / sqrtf(variance + eps); }

// --------------------------------------------------------------------------------------
// Softmax in the log2 domain. `c` folds the scale into the exponent: c = log2(e) / t for
// softmax with temperature t, c = scale * log2(e) for attention scores. The max is taken
// over raw values and (x - max) is scaled afterwards: exp2((x - max) * c) keeps large
// logits exact where scaling first would not.
//
// A running (max, sum of exp2((x - max) * c)) pair absorbs one value or another pair at
// a time (online softmax). NaN and inf behave as torch: the max skips NaN (a NaN compare
// is false) but the sum takes exp2(NaN) = NaN, poisoning the row; +inf gives
// inf - inf = NaN. A pair whose max is still -inf (only -inf or masked values seen)
// keeps a zero sum: shifting by 0 instead of -inf avoids (-inf) - (-inf) = NaN there.
// --------------------------------------------------------------------------------------
struct MaxSum {
  float max;
  float sum;
};

GPTK_HD MaxSum softmax_empty() { return MaxSum{kNegInf, 0.0f}; }

GPTK_HD float softmax_max(float a, float b) { return b > a ? b : a; }

GPTK_HD float softmax_shift(float m) { return m == kNegInf ? 0.0f : m; }

GPTK_HD float softmax_exp(float x, float max, float c) { return exp2f((x - max) * c); }

// Factor that moves a sum taken relative to `old_max` onto `new_max` (new_max >= old_max).
GPTK_HD float softmax_rescale(float old_max, float new_max, float c) {
  return exp2f((old_max - softmax_shift(new_max)) * c);
}

GPTK_HD MaxSum softmax_update(MaxSum a, float x, float c) {
  const float m = softmax_max(a.max, x);
  return MaxSum{m, a.sum * softmax_rescale(a.max, m, c) + softmax_exp(x, softmax_shift(m), c)};
}

GPTK_HD MaxSum softmax_combine(MaxSum a, MaxSum b, float c) {
  const float m = softmax_max(a.max, b.max);
  return MaxSum{m, a.sum * softmax_rescale(a.max, m, c) + b.sum * softmax_rescale(b.max, m, c)};
}

// log2 of the softmax denominator in the scaled domain: p = exp2(x * c - lse). Attention
// saves it per query row ("lse") so its backward recomputes p without a reduction.
GPTK_HD float softmax_lse(MaxSum a, float c) { return softmax_shift(a.max) * c + log2f(a.sum); }

}  // namespace gptk
