// C entry points (for ctypes) onto the launchers of csrc/cuda/launch.h, compiled together
// with the emulated kernels. Each returns the launch's cudaError_t as an int.
#include "cuda/launch.h"

using gptk::cuda::AttentionArgs;
using gptk::cuda::AttentionBackwardArgs;
using gptk::cuda::DType;

namespace {

DType dtype(int dt) { return static_cast<DType>(dt); }

// kv_lengths of the attention launches that follow (emu_set_kv_lengths; nullptr: none).
const int64_t* g_kv_lengths = nullptr;

AttentionArgs attention_args(const void* q, const int64_t* qs, const void* k, const int64_t* ks, const void* v,
                             const int64_t* vs, void* out, float* lse, int64_t batch, int64_t heads, int64_t tq,
                             int64_t tk, int head_dim, bool causal, float scale_log2, int splits, float* partial) {
  AttentionArgs a{};
  a.q = q;
  a.k = k;
  a.v = v;
  a.out = out;
  a.lse = lse;
  for (int i = 0; i < 3; ++i) {
    a.q_strides[i] = qs[i];
    a.k_strides[i] = ks[i];
    a.v_strides[i] = vs[i];
  }
  a.batch = batch;
  a.heads = heads;
  a.tq = tq;
  a.tk = tk;
  a.head_dim = head_dim;
  a.causal = causal;
  a.scale_log2 = scale_log2;
  a.splits = splits;
  a.partial = partial;
  a.kv_lengths = g_kv_lengths;
  return a;
}

}  // namespace

extern "C" {

void emu_set_schedule(int order, unsigned seed, int eager_copies) {
  gptk_emu::set_schedule(static_cast<gptk_emu::Schedule>(order), seed, eager_copies != 0);
}

void emu_set_smem_limit(int bytes) { gptk_emu::set_smem_limit(bytes); }
// a * b + c as the kernels' code is compiled: fused (one rounding) when the build contracts.
float emu_multiply_add(float a, float b, float c) { return a * b + c; }
int emu_take_fault(char* buf, int len, uint64_t* kernel_offset) { return gptk_emu::take_fault(buf, len, kernel_offset); }
void emu_set_kv_lengths(const int64_t* lengths) { g_kv_lengths = lengths; }
void emu_set_dry_run(int on) { gptk_emu::set_dry_run(on != 0); }
void emu_clear_launches() { gptk_emu::clear_launches(); }
int emu_launch_count() { return gptk_emu::launch_count(); }
void emu_launch_record(int i, uint64_t* offset, unsigned* grid, unsigned* block, uint64_t* smem) {
  gptk_emu::launch_record(i, offset, grid, block, smem);
}

int emu_softmax_forward(int dt, const void* x, int64_t xs, void* y, int64_t ys, int64_t rows, int64_t n, float c) {
  return gptk::cuda::softmax_forward(dtype(dt), x, xs, y, ys, rows, n, c, nullptr);
}

int emu_sample(int dt, const void* x, int64_t xs, const int64_t* seed, int64_t* out, int64_t rows, int64_t n, float c,
               int64_t top_k, float top_p, int greedy) {
  return gptk::cuda::sample(dtype(dt), x, xs, seed, out, rows, n, c, top_k, top_p, greedy != 0, nullptr);
}

int emu_softmax_backward(int dt, const void* dy, int64_t dys, const void* y, int64_t ys, void* dx, int64_t dxs,
                         int64_t rows, int64_t n, float inv_t) {
  return gptk::cuda::softmax_backward(dtype(dt), dy, dys, y, ys, dx, dxs, rows, n, inv_t, nullptr);
}

int emu_layer_norm_forward(int dt, const void* x, int64_t xs, const void* r, int64_t rs, void* sum, const void* w,
                           const void* b, void* y, float* mean, float* rstd, int64_t rows, int64_t n, float eps) {
  return gptk::cuda::layer_norm_forward(dtype(dt), x, xs, r, rs, sum, w, b, y, mean, rstd, rows, n, eps, nullptr);
}

int emu_layer_norm_backward(int dt, const void* dy, int64_t dys, const void* dsum, int64_t dss, const void* x,
                            int64_t xs, const void* w, const float* mean, const float* rstd, void* dx, float* pw,
                            float* pb, int64_t rows, int64_t n) {
  return gptk::cuda::layer_norm_backward(dtype(dt), dy, dys, dsum, dss, x, xs, w, mean, rstd, dx, pw, pb, rows, n,
                                         nullptr);
}

int64_t emu_column_chunks(int64_t rows) { return gptk::cuda::column_chunks(rows); }

int emu_gelu_backward_partials(int dt, const void* dout, int64_t ds, const void* pre, int64_t ps, void* dpre, float* pb,
                               int64_t rows, int64_t n, int tanh_form) {
  return gptk::cuda::gelu_backward_partials(dtype(dt), dout, ds, pre, ps, dpre, pb, rows, n, tanh_form != 0, nullptr);
}

int emu_column_sum(int dt, const float* partial, int64_t chunks, int64_t n, void* out) {
  return gptk::cuda::column_sum(dtype(dt), partial, chunks, n, out, nullptr);
}

int emu_gelu_forward(int dt, const void* pre, void* out, int64_t numel, int tanh_form) {
  return gptk::cuda::gelu_forward(dtype(dt), pre, out, numel, tanh_form != 0, nullptr);
}

int emu_attention_key_splits(int dt, int64_t batch, int64_t heads, int64_t tq, int64_t tk, int head_dim, int causal,
                             int sm_count) {
  const int64_t zero[3] = {0, 0, 0};
  const AttentionArgs a = attention_args(nullptr, zero, nullptr, zero, nullptr, zero, nullptr, nullptr, batch, heads,
                                         tq, tk, head_dim, causal != 0, 1.0f, 1, nullptr);
  return gptk::cuda::attention_key_splits(dtype(dt), a, sm_count);
}

int emu_attention_forward(int dt, const void* q, const int64_t* qs, const void* k, const int64_t* ks, const void* v,
                          const int64_t* vs, void* out, float* lse, int64_t batch, int64_t heads, int64_t tq,
                          int64_t tk, int head_dim, int causal, float scale_log2, int splits, float* partial) {
  return gptk::cuda::attention_forward(dtype(dt),
                                       attention_args(q, qs, k, ks, v, vs, out, lse, batch, heads, tq, tk, head_dim,
                                                      causal != 0, scale_log2, splits, partial),
                                       nullptr);
}

int emu_attention_backward(int dt, const void* q, const int64_t* qs, const void* k, const int64_t* ks, const void* v,
                           const int64_t* vs, const void* out, const float* lse, int64_t batch, int64_t heads,
                           int64_t tq, int64_t tk, int head_dim, int causal, float scale_log2, const void* dout,
                           const int64_t* dos, float* delta, void* dq, void* dk, void* dv, float scale) {
  AttentionBackwardArgs a{};
  a.fwd = attention_args(q, qs, k, ks, v, vs, const_cast<void*>(out), const_cast<float*>(lse), batch, heads, tq, tk,
                         head_dim, causal != 0, scale_log2, 1, nullptr);
  a.dout = dout;
  for (int i = 0; i < 3; ++i) a.dout_strides[i] = dos[i];
  a.delta = delta;
  a.dq = dq;
  a.dk = dk;
  a.dv = dv;
  a.scale = scale;
  return gptk::cuda::attention_backward(dtype(dt), a, nullptr);
}

int emu_lce_rows(int dt, void* z, int64_t ld, int64_t rows, int64_t n, const int64_t* target, const float* scale,
                 int per_token, float inv_t, int64_t ignore_index, int want_grad, float* loss) {
  return gptk::cuda::lce_rows(dtype(dt), z, ld, rows, n, target, scale, per_token != 0, inv_t, ignore_index,
                              want_grad != 0, loss, nullptr);
}

}  // extern "C"
