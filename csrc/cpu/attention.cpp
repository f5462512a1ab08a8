// Scaled dot-product attention on the CPU, forward and backward, with the flash kernel's
// arithmetic: scores pre-multiplied by scale * log2(e), keys streamed in blocks through
// the online softmax of csrc/common/math.h, and lse (log2 domain) saved per query row so
// the backward recomputes p = exp2(s - lse) instead of storing the (Tq, Tk) matrix.
//
// Causal masks are end-aligned: query i sits at absolute position Tk - Tq + i and sees
// keys 0..Tk-Tq+i (KV-cache decode is Tq = 1). With kv_lengths (forward only) sequence b has
// kv_lengths[b] keys instead of Tk (a static KV cache read whole). q, k, v take any batch/head/token strides
// with a unit-stride head dim; out, lse and the gradients are freshly allocated, contiguous.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "../common/checks.h"
#include "../common/math.h"
#include "../common/rows.h"

namespace gptk {
namespace {

constexpr int64_t kKeyBlock = 64;

struct Strides {
  int64_t b, h, t;
};

Strides strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }

// Keys query i may attend: [0, visible_keys).
inline int64_t visible_keys(int64_t i, int64_t tq, int64_t tk, bool causal) {
  return causal ? std::min(tk, tk - tq + i + 1) : tk;
}

template <typename T>
float dot(const float* a, const T* b, int64_t d) {
  float s = 0.0f;
  for (int64_t x = 0; x < d; ++x) s += a[x] * static_cast<float>(b[x]);
  return s;
}

// lengths: keys per sequence (B,), each clamped to tk as the GPU kernels do, or nullptr (tk).
template <typename T>
void attention_forward(const T* q, Strides qs, const T* k, Strides ks, const T* v, Strides vs, T* out, float* lse,
                       int64_t batch, int64_t heads, int64_t tq, int64_t tk, int64_t d, bool causal,
                       float scale_log2, const int64_t* lengths) {
  const int64_t rows = batch * heads * tq;
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(tk * d / 64, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(d), s(kKeyBlock), q_f(d);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / (heads * tq), h = (row / tq) % heads, i = row % tq;
      const T* qi = q + b * qs.b + h * qs.h + i * qs.t;
      const T* kb = k + b * ks.b + h * ks.h;
      const T* vb = v + b * vs.b + h * vs.h;
      const int64_t n_keys = visible_keys(i, tq, lengths ? std::min(lengths[b], tk) : tk, causal);
      MaxSum state = softmax_empty();
      for (int64_t x = 0; x < d; ++x) {
        q_f[x] = static_cast<float>(qi[x]);
        acc[x] = 0.0f;
      }
      for (int64_t j0 = 0; j0 < n_keys; j0 += kKeyBlock) {
        const int64_t len = std::min(kKeyBlock, n_keys - j0);
        float block_max = kNegInf;
        for (int64_t j = 0; j < len; ++j) {
          s[j] = dot(q_f.data(), kb + (j0 + j) * ks.t, d) * scale_log2;
          block_max = softmax_max(block_max, s[j]);
        }
        const float new_max = softmax_max(state.max, block_max);
        const float alpha = softmax_rescale(state.max, new_max, 1.0f);
        const float shift = softmax_shift(new_max);
        float block_sum = 0.0f;
        for (int64_t x = 0; x < d; ++x) acc[x] *= alpha;
        for (int64_t j = 0; j < len; ++j) {
          const float p = softmax_exp(s[j], shift, 1.0f);
          block_sum += p;
          const T* vj = vb + (j0 + j) * vs.t;
          for (int64_t x = 0; x < d; ++x) acc[x] += p * static_cast<float>(vj[x]);
        }
        state = MaxSum{new_max, state.sum * alpha + block_sum};
      }
      T* o = out + row * d;
      // No visible key (Tk = 0): zeros, as torch's scaled_dot_product_attention gives.
      const float inv = n_keys > 0 ? 1.0f / state.sum : 0.0f;
      for (int64_t x = 0; x < d; ++x) o[x] = static_cast<T>(acc[x] * inv);
      lse[row] = n_keys > 0 ? softmax_lse(state, 1.0f) : kNegInf;
    }
  });
}

// One (batch, head) per task: its dK and dV rows are private, so no atomics are needed
// and the summation order is fixed.
template <typename T>
void attention_backward(const T* dout, Strides dos, const T* q, Strides qs, const T* k, Strides ks, const T* v,
                        Strides vs, const T* out, const float* lse, T* dq, T* dk, T* dv, int64_t batch,
                        int64_t heads, int64_t tq, int64_t tk, int64_t d, bool causal, float scale,
                        float scale_log2) {
  at::parallel_for(0, batch * heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> dk_acc(tk * d), dv_acc(tk * d), dq_acc(d), do_f(d), q_f(d);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / heads, h = bh % heads;
      const T* kb = k + b * ks.b + h * ks.h;
      const T* vb = v + b * vs.b + h * vs.h;
      std::fill(dk_acc.begin(), dk_acc.end(), 0.0f);
      std::fill(dv_acc.begin(), dv_acc.end(), 0.0f);
      for (int64_t i = 0; i < tq; ++i) {
        const T* qi = q + b * qs.b + h * qs.h + i * qs.t;
        const T* doi = dout + b * dos.b + h * dos.h + i * dos.t;
        const T* oi = out + (bh * tq + i) * d;
        const float row_lse = lse[bh * tq + i];
        float delta = 0.0f;  // sum_x dO * O: the softmax backward's row term
        for (int64_t x = 0; x < d; ++x) {
          do_f[x] = static_cast<float>(doi[x]);
          q_f[x] = static_cast<float>(qi[x]);
          delta += do_f[x] * static_cast<float>(oi[x]);
          dq_acc[x] = 0.0f;
        }
        const int64_t n_keys = visible_keys(i, tq, tk, causal);
        for (int64_t j = 0; j < n_keys; ++j) {
          const T* kj = kb + j * ks.t;
          const T* vj = vb + j * vs.t;
          float s = 0.0f, dp = 0.0f;
          for (int64_t x = 0; x < d; ++x) {
            s += q_f[x] * static_cast<float>(kj[x]);
            dp += do_f[x] * static_cast<float>(vj[x]);
          }
          const float p = exp2f(s * scale_log2 - row_lse);
          const float ds = p * (dp - delta) * scale;
          float* dkj = dk_acc.data() + j * d;
          float* dvj = dv_acc.data() + j * d;
          for (int64_t x = 0; x < d; ++x) {
            dvj[x] += p * do_f[x];
            dkj[x] += ds * q_f[x];
            dq_acc[x] += ds * static_cast<float>(kj[x]);
          }
        }
        T* dqi = dq + (bh * tq + i) * d;
        for (int64_t x = 0; x < d; ++x) dqi[x] = static_cast<T>(dq_acc[x]);
      }
      T* dkb = dk + bh * tk * d;
      T* dvb = dv + bh * tk * d;
      for (int64_t x = 0; x < tk * d; ++x) {
        dkb[x] = static_cast<T>(dk_acc[x]);
        dvb[x] = static_cast<T>(dv_acc[x]);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                 bool causal, double scale,
                                                 const c10::optional<at::Tensor>& kv_lengths) {
  constexpr const char* op = "gptk::attention_cuda";
  check_attention(q, k, v, causal, op);
  TORCH_CHECK(std::isfinite(scale), op, ": scale must be finite, got ", scale);
  const bool has_lengths = kv_lengths.has_value() && kv_lengths->defined();
  const at::Tensor lengths = has_lengths ? kv_lengths_for_kernels(*kv_lengths, q, op) : at::Tensor();
  const int64_t batch = q.size(0), heads = q.size(1), tq = q.size(2), tk = k.size(2), d = q.size(3);
  at::Tensor out = at::empty({batch, heads, tq, d}, q.options());
  at::Tensor lse = at::empty({batch, heads, tq}, q.options().dtype(at::kFloat));
  if (out.numel() == 0) return {out, lse};
  const float scale_log2 = static_cast<float>(scale) * kLog2e;
  GPTK_DISPATCH_FLOAT(q.scalar_type(), "attention_cpu", [&] {
    attention_forward<scalar_t>(q.const_data_ptr<scalar_t>(), strides_of(q), k.const_data_ptr<scalar_t>(),
                                strides_of(k), v.const_data_ptr<scalar_t>(), strides_of(v),
                                out.mutable_data_ptr<scalar_t>(), lse.mutable_data_ptr<float>(), batch, heads, tq,
                                tk, d, causal, scale_log2,
                                has_lengths ? lengths.const_data_ptr<int64_t>() : nullptr);
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_cpu(const at::Tensor& dout, const at::Tensor& q,
                                                                      const at::Tensor& k, const at::Tensor& v,
                                                                      const at::Tensor& out, const at::Tensor& lse,
                                                                      bool causal, double scale) {
  constexpr const char* op = "gptk::attention_cuda_backward";
  check_attention_backward(dout, q, k, v, out, lse, causal, op);
  const int64_t batch = q.size(0), heads = q.size(1), tq = q.size(2), tk = k.size(2), d = q.size(3);
  at::Tensor dq = at::empty({batch, heads, tq, d}, q.options());
  at::Tensor dk = at::empty({batch, heads, tk, d}, q.options());
  at::Tensor dv = at::empty({batch, heads, tk, d}, q.options());
  if (batch * heads == 0) return {dq, dk, dv};
  const float scale_log2 = static_cast<float>(scale) * kLog2e;
  GPTK_DISPATCH_FLOAT(q.scalar_type(), "attention_backward_cpu", [&] {
    attention_backward<scalar_t>(dout.const_data_ptr<scalar_t>(), strides_of(dout), q.const_data_ptr<scalar_t>(),
                                 strides_of(q), k.const_data_ptr<scalar_t>(), strides_of(k),
                                 v.const_data_ptr<scalar_t>(), strides_of(v), out.const_data_ptr<scalar_t>(),
                                 lse.const_data_ptr<float>(), dq.mutable_data_ptr<scalar_t>(),
                                 dk.mutable_data_ptr<scalar_t>(), dv.mutable_data_ptr<scalar_t>(), batch, heads, tq,
                                 tk, d, causal, static_cast<float>(scale), scale_log2);
  });
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(gptk, CPU, m) {
  m.impl("attention_cuda", &attention_cpu);
  m.impl("attention_cuda_backward", &attention_backward_cpu);
}

}  // namespace gptk
