// Fused unembedding + cross-entropy on the CPU (the cuda backend's CPU half): the chunk
// driver of csrc/common/lce.h with fp32 BLAS GEMMs whatever the storage dtype, and this
// row step, the same arithmetic as csrc/cuda/linear_cross_entropy.cu (online max and sum
// in the log2 domain, csrc/common/math.h), one row per task.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../common/lce.h"
#include "../common/math.h"

namespace gptk {
namespace {

constexpr float kLn2 = 0.6931471805599453f;
// Logits bytes per chunk: small, so the tests' few dozen tokens already run several chunks.
constexpr int64_t kChunkBytes = 64 << 10;
constexpr int64_t kBlock = 128;

void row_step_cpu(at::Tensor& z, const at::Tensor& target, const at::Tensor& scale, bool per_token,
                  double temperature, int64_t ignore_index, bool want_grad, at::Tensor& loss) {
  const int64_t m = z.size(0), n = z.size(1), ld = z.stride(0);
  const float inv_t = static_cast<float>(1.0 / temperature), c = kLog2e * inv_t;
  float* zp = z.data_ptr<float>();
  const int64_t* tp = target.const_data_ptr<int64_t>();
  const float* sp = scale.const_data_ptr<float>();
  float* lp = loss.data_ptr<float>();
  at::parallel_for(0, m, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* zr = zp + r * ld;
      const int64_t t = tp[r];
      const bool counted = t != ignore_index && t >= 0 && t < n;
      // Blocked: one running sum over 50257 values drifts by ~n ulp; blocks combine pairwise-like.
      MaxSum st = softmax_empty();
      for (int64_t j0 = 0; j0 < n; j0 += kBlock) {
        MaxSum part = softmax_empty();
        for (int64_t j = j0; j < std::min(n, j0 + kBlock); ++j) part = softmax_update(part, zr[j], c);
        st = softmax_combine(st, part, c);
      }
      const float shift = softmax_shift(st.max), log2_sum = std::log2(st.sum);
      lp[r] = counted ? ((shift - zr[t]) * c + log2_sum) * kLn2 : 0.0f;
      if (!want_grad) continue;
      const float s = counted ? (per_token ? sp[r] : sp[0]) * inv_t : 0.0f;
      for (int64_t j = 0; j < n; ++j) {
        const float p = std::exp2((zr[j] - shift) * c - log2_sum);
        zr[j] = counted ? (p - (j == t ? 1.0f : 0.0f)) * s : 0.0f;
      }
    }
  });
}

int64_t chunk_cpu(const at::Tensor& weight) { return std::max<int64_t>(16, kChunkBytes / (4 * weight.size(0))); }

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_cpu(
    const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias, const at::Tensor& target,
    double temperature, int64_t ignore_index, c10::string_view reduction, bool need_grad) {
  return lce_forward(x, weight, bias, target, temperature, ignore_index, reduction, need_grad, chunk_cpu(weight),
                     at::kFloat, row_step_cpu, "gptk::linear_cross_entropy_cuda");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
    const at::Tensor& target, double temperature, int64_t ignore_index) {
  return lce_backward(grad, x, weight, bias, target, temperature, ignore_index, chunk_cpu(weight), at::kFloat,
                      row_step_cpu, "gptk::linear_cross_entropy_cuda_backward");
}

}  // namespace

TORCH_LIBRARY_IMPL(gptk, CPU, m) {
  m.impl("linear_cross_entropy_cuda", &linear_cross_entropy_cpu);
  m.impl("linear_cross_entropy_cuda_backward", &linear_cross_entropy_backward_cpu);
}

}  // namespace gptk
