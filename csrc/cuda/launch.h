// The launchers the CUDA entry points (entry.cpp) call: raw pointers, sizes, a stream.
// No torch here, so every .cu compiles in seconds on its own (tests/test_cuda_build.py
// compiles each for sm_80 and sm_90a with -Xptxas -v and fails on a spill).
//
// Every launcher returns immediately on empty input and returns the launch's
// cudaGetLastError() for the caller to check. Rows are (rows, n) with a row stride in
// elements and unit stride along n; outputs written here are contiguous unless a
// stride is passed.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace gptk {
namespace cuda {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// ---- softmax.cu: y = softmax(x * c / log2(e)) per row, c = log2(e) / temperature ----
cudaError_t softmax_forward(DType dt, const void* x, int64_t x_stride, void* y, int64_t y_stride, int64_t rows,
                            int64_t n, float c, cudaStream_t stream);
// dx = y * (dy - sum(dy * y)) * inv_t
cudaError_t softmax_backward(DType dt, const void* dy, int64_t dy_stride, const void* y, int64_t y_stride, void* dx,
                             int64_t dx_stride, int64_t rows, int64_t n, float inv_t, cudaStream_t stream);

// ---- layer_norm.cu ----
// residual may be null (plain layer norm); then sum is unused. weight/bias may be null.
// y and sum are contiguous (rows, n); mean and rstd hold one float per row.
cudaError_t layer_norm_forward(DType dt, const void* x, int64_t x_stride, const void* residual, int64_t r_stride,
                               void* sum, const void* weight, const void* bias, void* y, float* mean, float* rstd,
                               int64_t rows, int64_t n, float eps, cudaStream_t stream);
// dx (contiguous) from x (the normalised input: x, or x + residual), dy and, when not
// null, dsum (added to dx); weight may be null. And the weight and bias gradients'
// column_chunks(rows) x n fp32 partials (sum over each chunk of rows of dy * (x - mean) *
// rstd, and of dy), which column_sum then adds: x and dy are read once where every row of
// every operand starts at one 16-byte phase (the usual case), twice otherwise.
cudaError_t layer_norm_backward(DType dt, const void* dy, int64_t dy_stride, const void* dsum, int64_t dsum_stride,
                                const void* x, int64_t x_stride, const void* weight, const float* mean,
                                const float* rstd, void* dx, float* partial_w, float* partial_b, int64_t rows,
                                int64_t n, cudaStream_t stream);

// ---- column reductions (gelu_linear.cu): deterministic dweight/dbias ----
// Rows split into column_chunks(rows) fixed chunks; each writes an fp32 partial row,
// then column_sum adds the partials in chunk order.
int64_t column_chunks(int64_t rows);
// partial_w[c, j] = sum over chunk c of dy * (x - mean) * rstd; partial_b[c, j] = sum of dy
cudaError_t norm_param_partials(DType dt, const void* dy, int64_t dy_stride, const void* x, int64_t x_stride,
                                const float* mean, const float* rstd, float* partial_w, float* partial_b,
                                int64_t rows, int64_t n, cudaStream_t stream);
// dpre = dout * gelu'(pre) (contiguous, dtype dt) and partial_b[c, j] = its chunk sums
cudaError_t gelu_backward_partials(DType dt, const void* dout, int64_t dout_stride, const void* pre,
                                   int64_t pre_stride, void* dpre, float* partial_b, int64_t rows, int64_t n,
                                   bool tanh_form, cudaStream_t stream);
// out[j] = sum_c partial[c, j], cast to dt
cudaError_t column_sum(DType dt, const float* partial, int64_t chunks, int64_t n, void* out, cudaStream_t stream);
// out = gelu(pre) elementwise (pre, out contiguous (rows, n)); the epilogue when the
// matmul could not fuse it (erf form, or cuBLASLt declined the shape)
cudaError_t gelu_forward(DType dt, const void* pre, void* out, int64_t numel, bool tanh_form, cudaStream_t stream);

// ---- attention.cu ----
struct AttentionArgs {
  const void* q;
  const void* k;
  const void* v;
  void* out;     // contiguous (B, H, Tq, D)
  float* lse;    // (B, H, Tq), log2 domain
  int64_t q_strides[3];  // batch, head, token (elements); head dim is unit-stride
  int64_t k_strides[3];
  int64_t v_strides[3];
  int64_t batch, heads, tq, tk;
  int head_dim;
  bool causal;
  float scale_log2;  // scale * log2(e)
  // Flash-decoding key split of the CUDA-core forward: each query row's keys are cut into
  // `splits` chunks whose partial (acc[D], max, sum) go to `partial` (splits * (D + 2)
  // floats per row) and are then combined. 1 (no workspace) unless
  // attention_key_splits asks for more.
  int splits;
  float* partial;
  // Keys per sequence (B,), read on the device and clamped to tk (a captured CUDA graph
  // replays with new lengths: nothing launched depends on them), or nullptr: tk each.
  const int64_t* kv_lengths;
};
// How many key chunks attention_forward should split each query row into: > 1 only for the
// CUDA-core path (fp32, or decode with Tq <= 16) when its rows alone cannot fill the GPU.
int attention_key_splits(DType dt, const AttentionArgs& args, int sm_count);
cudaError_t attention_forward(DType dt, const AttentionArgs& args, cudaStream_t stream);

struct AttentionBackwardArgs {
  AttentionArgs fwd;        // q, k, v, out (contiguous), lse, shapes
  const void* dout;
  int64_t dout_strides[3];
  float* delta;             // workspace (B, H, Tq): sum(dout * out) per row
  void* dq;                 // contiguous (B, H, Tq, D)
  void* dk;                 // contiguous (B, H, Tk, D)
  void* dv;
  float scale;
};
cudaError_t attention_backward(DType dt, const AttentionBackwardArgs& args, cudaStream_t stream);

// ---- linear_cross_entropy.cu: the row step of one token chunk ----
// z (rows, n), row stride ld, holds the chunk's logits (x W^T + b, not yet divided by T);
// loss[r] = logsumexp(z_r / T) - z_r[t_r] / T (0 where t_r == ignore_index); with want_grad
// z_r becomes (softmax(z_r / T) - onehot(t_r)) * scale / T in place, scale = scale[r] when
// per_token else scale[0], and 0 on ignored rows.
cudaError_t lce_rows(DType dt, void* z, int64_t ld, int64_t rows, int64_t n, const int64_t* target,
                     const float* scale, bool per_token, float inv_t, int64_t ignore_index, bool want_grad,
                     float* loss, cudaStream_t stream);

// ---- sample.cu: one int64 token per row of logits (rows, n), row stride in elements ----
// seed: one int64 on the device (the Philox key); c = log2(e) / temperature; top_k 0 and
// top_p 1 mean no filter; greedy: argmax (ties to the lowest index). NaN rows give -1.
cudaError_t sample(DType dt, const void* x, int64_t x_stride, const int64_t* seed, int64_t* out, int64_t rows,
                   int64_t n, float c, int64_t top_k, float top_p, bool greedy, cudaStream_t stream);

}  // namespace cuda
}  // namespace gptk
