// CUDA entry points of every op: the same checks as the CPU ones (csrc/common/checks.h),
// a device guard, the current stream, early return on empty input, the launch (the
// kernels live in the torch-free .cu files, declared in launch.h), and a check of the
// launch error. The GELU MLP's matmuls are cuBLASLt's, with the bias + GELU epilogue
// fused when cuBLASLt offers it (the tanh form, fp16/bf16).
#include <ATen/Context.h>
#include <ATen/cuda/CUDAContextLight.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cublasLt.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "common/checks.h"
#include "common/lce.h"
#include "common/math.h"
#include "common/rows.h"
#include "cuda/launch.h"

namespace gptk {
namespace {

using cuda::DType;

DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: return DType::kFloat32;
  }
}

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

const void* ptr_or_null(const c10::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->const_data_ptr() : nullptr;
}

c10::optional<at::Tensor> contiguous_or_none(const c10::optional<at::Tensor>& t) {
  if (!t.has_value() || !t->defined()) return c10::nullopt;
  return t->contiguous();
}

// ---------------------------------------------------------------------------------------
// softmax
// ---------------------------------------------------------------------------------------
at::Tensor softmax_cuda(const at::Tensor& x, double temperature, int64_t dim) {
  constexpr const char* op = "gptk::softmax_cuda";
  dim = check_softmax(x, temperature, dim, op);
  const c10::cuda::CUDAGuard guard(x.device());
  auto [y, y_rows] = empty_rows_like(x, dim);
  if (x.numel() == 0) return y;
  const at::Tensor x_rows = as_rows(x, dim);
  C10_CUDA_CHECK(cuda::softmax_forward(dtype_of(x), x_rows.const_data_ptr(), x_rows.stride(0), y_rows.data_ptr(),
                                       y_rows.stride(0), x_rows.size(0), x_rows.size(1),
                                       kLog2e / static_cast<float>(temperature), stream()));
  return y;
}

at::Tensor softmax_backward_cuda(const at::Tensor& dy, const at::Tensor& y, double temperature, int64_t dim) {
  constexpr const char* op = "gptk::softmax_cuda_backward";
  dim = check_softmax_backward(dy, y, temperature, dim, op);
  const c10::cuda::CUDAGuard guard(y.device());
  auto [dx, dx_rows] = empty_rows_like(y, dim);
  if (y.numel() == 0) return dx;
  const at::Tensor y_rows = as_rows(y, dim), dy_rows = as_rows(dy, dim);
  C10_CUDA_CHECK(cuda::softmax_backward(dtype_of(y), dy_rows.const_data_ptr(), dy_rows.stride(0),
                                        y_rows.const_data_ptr(), y_rows.stride(0), dx_rows.data_ptr(),
                                        dx_rows.stride(0), y_rows.size(0), y_rows.size(1),
                                        static_cast<float>(1.0 / temperature), stream()));
  return dx;
}

// ---------------------------------------------------------------------------------------
// layer_norm, add_layer_norm
// ---------------------------------------------------------------------------------------
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> norm_forward(const at::Tensor& x,
                                                                        const c10::optional<at::Tensor>& residual,
                                                                        const c10::optional<at::Tensor>& weight,
                                                                        const c10::optional<at::Tensor>& bias,
                                                                        double eps, const char* op) {
  const bool add = residual.has_value();
  check_norm_forward(x, add ? &*residual : nullptr, weight, bias, eps, op);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = x.size(-1), rows = leading_rows(x);
  at::Tensor y = at::empty(x.sizes(), x.options());
  at::Tensor sum = add ? at::empty(x.sizes(), x.options()) : at::Tensor();
  at::Tensor mean = at::empty({rows}, x.options().dtype(at::kFloat));
  at::Tensor rstd = at::empty({rows}, x.options().dtype(at::kFloat));
  if (rows == 0 || n == 0) return {y, sum, mean, rstd};
  const at::Tensor x2 = last_dim_rows(x, rows);
  const at::Tensor r2 = add ? last_dim_rows(*residual, rows) : at::Tensor();
  const auto w = contiguous_or_none(weight), b = contiguous_or_none(bias);
  C10_CUDA_CHECK(cuda::layer_norm_forward(dtype_of(x), x2.const_data_ptr(), x2.stride(0),
                                          add ? r2.const_data_ptr() : nullptr, add ? r2.stride(0) : 0,
                                          add ? sum.data_ptr() : nullptr, ptr_or_null(w), ptr_or_null(b), y.data_ptr(),
                                          mean.data_ptr<float>(), rstd.data_ptr<float>(), rows, n,
                                          static_cast<float>(eps), stream()));
  return {y, sum, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_backward(const at::Tensor& dy, const c10::optional<at::Tensor>& dsum,
                                                             const at::Tensor& x,
                                                             const c10::optional<at::Tensor>& weight,
                                                             const at::Tensor& mean, const at::Tensor& rstd,
                                                             const char* op, const char* x_name) {
  check_norm_backward(dy, dsum, x, weight, mean, rstd, op, x_name);
  const bool has_dsum = dsum.has_value() && dsum->defined();
  const int64_t n = x.size(-1), rows = leading_rows(x);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor dx = at::empty(x.sizes(), x.options());
  at::Tensor dw = at::empty({n}, x.options());
  at::Tensor db = at::empty({n}, x.options());
  if (rows == 0 || n == 0) {
    dw.zero_();
    db.zero_();
    return {dx, dw, db};
  }
  const at::Tensor x2 = last_dim_rows(x, rows), dy2 = last_dim_rows(dy, rows);
  const at::Tensor ds2 = has_dsum ? last_dim_rows(*dsum, rows) : at::Tensor();
  const auto w = contiguous_or_none(weight);
  const cudaStream_t st = stream();
  const DType dt = dtype_of(x);
  const int64_t chunks = cuda::column_chunks(rows);
  at::Tensor partial = at::empty({2, chunks, n}, x.options().dtype(at::kFloat));
  float* pw = partial.data_ptr<float>();
  float* pb = pw + chunks * n;
  C10_CUDA_CHECK(cuda::layer_norm_backward(dt, dy2.const_data_ptr(), dy2.stride(0),
                                           has_dsum ? ds2.const_data_ptr() : nullptr, has_dsum ? ds2.stride(0) : 0,
                                           x2.const_data_ptr(), x2.stride(0), ptr_or_null(w),
                                           mean.const_data_ptr<float>(), rstd.const_data_ptr<float>(), dx.data_ptr(),
                                           pw, pb, rows, n, st));
  C10_CUDA_CHECK(cuda::column_sum(dt, pw, chunks, n, dw.data_ptr(), st));
  C10_CUDA_CHECK(cuda::column_sum(dt, pb, chunks, n, db.data_ptr(), st));
  return {dx, dw, db};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_cuda(const at::Tensor& x,
                                                               const c10::optional<at::Tensor>& weight,
                                                               const c10::optional<at::Tensor>& bias, double eps) {
  auto [y, sum, mean, rstd] = norm_forward(x, c10::nullopt, weight, bias, eps, "gptk::layer_norm_cuda");
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_layer_norm_cuda(
    const at::Tensor& x, const at::Tensor& residual, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, double eps) {
  return norm_forward(x, residual, weight, bias, eps, "gptk::add_layer_norm_cuda");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_backward_cuda(const at::Tensor& dy, const at::Tensor& x,
                                                                        const c10::optional<at::Tensor>& weight,
                                                                        const at::Tensor& mean,
                                                                        const at::Tensor& rstd) {
  return norm_backward(dy, c10::nullopt, x, weight, mean, rstd, "gptk::layer_norm_cuda_backward", "x");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> add_layer_norm_backward_cuda(
    const at::Tensor& dy, const c10::optional<at::Tensor>& dsum, const at::Tensor& sum,
    const c10::optional<at::Tensor>& weight, const at::Tensor& mean, const at::Tensor& rstd) {
  return norm_backward(dy, dsum, sum, weight, mean, rstd, "gptk::add_layer_norm_cuda_backward", "sum");
}

// ---------------------------------------------------------------------------------------
// attention
// ---------------------------------------------------------------------------------------
bool rows_aligned16(const at::Tensor& t) {
  const int64_t vec = 16 / t.element_size();
  return (reinterpret_cast<uintptr_t>(t.const_data_ptr()) & 15) == 0 && t.stride(0) % vec == 0 &&
         t.stride(1) % vec == 0 && t.stride(2) % vec == 0;
}

// The kernels read 16-byte packs along D: copy the rare tensor whose rows are not aligned
// (clone, not contiguous(): a contiguous view at an odd offset would come back as is).
at::Tensor aligned(const at::Tensor& t) { return rows_aligned16(t) ? t : t.clone(at::MemoryFormat::Contiguous); }

void fill_strides(int64_t (&dst)[3], const at::Tensor& t) {
  for (int i = 0; i < 3; ++i) dst[i] = t.stride(i);
}

cuda::AttentionArgs attention_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out,
                                   at::Tensor& lse, bool causal, double scale) {
  cuda::AttentionArgs a{};
  a.q = q.const_data_ptr();
  a.k = k.const_data_ptr();
  a.v = v.const_data_ptr();
  a.out = out.data_ptr();
  a.lse = lse.data_ptr<float>();
  fill_strides(a.q_strides, q);
  fill_strides(a.k_strides, k);
  fill_strides(a.v_strides, v);
  a.batch = q.size(0);
  a.heads = q.size(1);
  a.tq = q.size(2);
  a.tk = k.size(2);
  a.head_dim = static_cast<int>(q.size(3));
  a.causal = causal;
  a.scale_log2 = static_cast<float>(scale) * kLog2e;
  a.splits = 1;
  a.partial = nullptr;
  return a;
}

std::tuple<at::Tensor, at::Tensor> attention_cuda(const at::Tensor& q_in, const at::Tensor& k_in,
                                                  const at::Tensor& v_in, bool causal, double scale,
                                                  const c10::optional<at::Tensor>& kv_lengths) {
  constexpr const char* op = "gptk::attention_cuda";
  check_attention(q_in, k_in, v_in, causal, op);
  TORCH_CHECK(std::isfinite(scale), op, ": scale must be finite, got ", scale);
  const bool has_lengths = kv_lengths.has_value() && kv_lengths->defined();
  const at::Tensor lengths = has_lengths ? kv_lengths_for_kernels(*kv_lengths, q_in, op) : at::Tensor();
  const c10::cuda::CUDAGuard guard(q_in.device());
  const int64_t batch = q_in.size(0), heads = q_in.size(1), tq = q_in.size(2), d = q_in.size(3);
  at::Tensor out = at::empty({batch, heads, tq, d}, q_in.options());
  at::Tensor lse = at::empty({batch, heads, tq}, q_in.options().dtype(at::kFloat));
  if (out.numel() == 0) return {out, lse};
  const at::Tensor q = aligned(q_in), k = aligned(k_in), v = aligned(v_in);
  cuda::AttentionArgs args = attention_args(q, k, v, out, lse, causal, scale);
  if (has_lengths) args.kv_lengths = lengths.const_data_ptr<int64_t>();
  const int splits =
      cuda::attention_key_splits(dtype_of(q), args, at::cuda::getCurrentDeviceProperties()->multiProcessorCount);
  at::Tensor partial;
  if (splits > 1) {
    partial = at::empty({batch * heads * q.size(2) * splits * (d + 2)}, q.options().dtype(at::kFloat));
    args.splits = splits;
    args.partial = partial.data_ptr<float>();
  }
  C10_CUDA_CHECK(cuda::attention_forward(dtype_of(q), args, stream()));
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_cuda(const at::Tensor& dout_in,
                                                                       const at::Tensor& q_in, const at::Tensor& k_in,
                                                                       const at::Tensor& v_in, const at::Tensor& out,
                                                                       const at::Tensor& lse, bool causal,
                                                                       double scale) {
  constexpr const char* op = "gptk::attention_cuda_backward";
  check_attention_backward(dout_in, q_in, k_in, v_in, out, lse, causal, op);
  const c10::cuda::CUDAGuard guard(q_in.device());
  const int64_t batch = q_in.size(0), heads = q_in.size(1), tq = q_in.size(2), tk = k_in.size(2), d = q_in.size(3);
  at::Tensor dq = at::empty({batch, heads, tq, d}, q_in.options());
  at::Tensor dk = at::empty({batch, heads, tk, d}, q_in.options());
  at::Tensor dv = at::empty({batch, heads, tk, d}, q_in.options());
  if (batch * heads == 0) return {dq, dk, dv};
  if (tq == 0) {  // no query sees any key
    dk.zero_();
    dv.zero_();
    return {dq, dk, dv};
  }
  const at::Tensor q = aligned(q_in), k = aligned(k_in), v = aligned(v_in), dout = aligned(dout_in);
  at::Tensor delta = at::empty({batch, heads, tq}, q.options().dtype(at::kFloat));
  at::Tensor out_c = out;
  at::Tensor lse_c = lse;
  cuda::AttentionBackwardArgs a{};
  a.fwd = attention_args(q, k, v, out_c, lse_c, causal, scale);
  a.dout = dout.const_data_ptr();
  fill_strides(a.dout_strides, dout);
  a.delta = delta.data_ptr<float>();
  a.dq = dq.data_ptr();
  a.dk = dk.data_ptr();
  a.dv = dv.data_ptr();
  a.scale = static_cast<float>(scale);
  C10_CUDA_CHECK(cuda::attention_backward(dtype_of(q), a, stream()));
  return {dq, dk, dv};
}

// ---------------------------------------------------------------------------------------
// gelu_linear: cuBLASLt
// ---------------------------------------------------------------------------------------
#define GPTK_LT_OK(expr) ((expr) == CUBLAS_STATUS_SUCCESS)

cudaDataType_t lt_type(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kHalf: return CUDA_R_16F;
    case at::kBFloat16: return CUDA_R_16BF;
    default: return CUDA_R_32F;
  }
}

// Owns the cuBLASLt descriptors of one call.
struct LtCall {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  ~LtCall() {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};

// out (rows, n) = x2 (rows, k) @ w (n, k)^T [+ bias] with the given epilogue; for the
// GELU_AUX epilogues `aux` receives the pre-activation. Row-major operands are read by
// cuBLASLt (column-major) as out^T = w x2^T. Returns false when cuBLASLt declines (no
// algorithm for this shape/epilogue/alignment): the caller then falls back.
bool lt_linear(const at::Tensor& x2, const at::Tensor& w, const at::Tensor* bias, at::Tensor& out, at::Tensor* aux,
               cublasLtEpilogue_t epilogue) {
  const int64_t rows = x2.size(0), k = x2.size(1), n = w.size(0);
  const cudaDataType_t dt = lt_type(x2);
  const bool tf32 = dt == CUDA_R_32F && at::globalContext().allowTF32CuBLAS();
  LtCall call;
  if (!GPTK_LT_OK(cublasLtMatmulDescCreate(&call.desc, tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F,
                                           CUDA_R_32F))) {
    return false;
  }
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  cublasLtMatmulDescSetAttribute(call.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta));
  cublasLtMatmulDescSetAttribute(call.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb));
  cublasLtMatmulDescSetAttribute(call.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue));
  if (bias != nullptr) {
    const void* bp = bias->const_data_ptr();
    cublasLtMatmulDescSetAttribute(call.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bp, sizeof(bp));
    cublasLtMatmulDescSetAttribute(call.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &dt, sizeof(dt));
  }
  if (aux != nullptr) {
    void* ap = aux->data_ptr();
    const int64_t ld = n;
    cublasLtMatmulDescSetAttribute(call.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &ap, sizeof(ap));
    cublasLtMatmulDescSetAttribute(call.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld, sizeof(ld));
  }
  if (!GPTK_LT_OK(cublasLtMatrixLayoutCreate(&call.a, dt, k, n, k)) ||
      !GPTK_LT_OK(cublasLtMatrixLayoutCreate(&call.b, dt, k, rows, k)) ||
      !GPTK_LT_OK(cublasLtMatrixLayoutCreate(&call.c, dt, n, rows, n)) ||
      !GPTK_LT_OK(cublasLtMatmulPreferenceCreate(&call.pref))) {
    return false;
  }
  constexpr size_t kWorkspace = 32u << 20;
  at::Tensor workspace = at::empty({static_cast<int64_t>(kWorkspace)}, x2.options().dtype(at::kByte));
  const size_t ws = kWorkspace;
  cublasLtMatmulPreferenceSetAttribute(call.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  cublasLtHandle_t handle = at::cuda::getCurrentCUDABlasLtHandle();
  cublasLtMatmulHeuristicResult_t heuristic{};
  int found = 0;
  if (!GPTK_LT_OK(cublasLtMatmulAlgoGetHeuristic(handle, call.desc, call.a, call.b, call.c, call.c, call.pref, 1,
                                                 &heuristic, &found)) ||
      found == 0) {
    return false;
  }
  const float alpha = 1.0f, beta = 0.0f;
  return GPTK_LT_OK(cublasLtMatmul(handle, call.desc, &alpha, w.const_data_ptr(), call.a, x2.const_data_ptr(), call.b,
                                   &beta, out.data_ptr(), call.c, out.data_ptr(), call.c, &heuristic.algo,
                                   workspace.data_ptr(), ws, stream()));
}

std::tuple<at::Tensor, at::Tensor> gelu_linear_cuda(const at::Tensor& x, const at::Tensor& weight,
                                                    const c10::optional<at::Tensor>& bias,
                                                    c10::string_view approximate) {
  constexpr const char* op = "gptk::gelu_linear_cuda";
  check_gelu_linear(x, weight, bias, op);
  const bool tanh_form = gelu_tanh_form(approximate, op);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = weight.size(0), rows = leading_rows(x);
  at::Tensor out = at::empty(shape_with_last(x, n), x.options());
  at::Tensor pre = at::empty(shape_with_last(x, n), x.options());
  if (out.numel() == 0) return {out, pre};
  const at::Tensor x2 = x.reshape({rows, x.size(-1)}).contiguous();
  const at::Tensor w = weight.contiguous();
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor b = has_bias ? bias->contiguous() : at::Tensor();
  at::Tensor out2 = out.view({rows, n}), pre2 = pre.view({rows, n});
  if (x.size(-1) > 0) {
    // The tanh form fuses bias + GELU into the matmul and saves pre-activations as aux, in
    // fp16/bf16 only: cuBLASLt's GELU is a fast approximation, ~5e-6 off in fp32 (7x torch's
    // error there) but far below an fp16/bf16 output's rounding.
    if (tanh_form && x.scalar_type() != at::kFloat && lt_linear(x2, w, has_bias ? &b : nullptr, out2, &pre2,
                               has_bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX)) {
      return {out, pre};
    }
    if (!lt_linear(x2, w, has_bias ? &b : nullptr, pre2, nullptr,
                   has_bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT)) {
      at::mm_out(pre2, x2, w.t());
      if (has_bias) pre2.add_(b);
    }
  } else {  // in_features == 0: x @ W^T is zero
    if (has_bias) pre2.copy_(b.expand({rows, n}));
    else pre2.zero_();
  }
  C10_CUDA_CHECK(cuda::gelu_forward(dtype_of(x), pre2.const_data_ptr(), out2.data_ptr(), rows * n, tanh_form,
                                    stream()));
  return {out, pre};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gelu_linear_backward_cuda(const at::Tensor& dout,
                                                                         const at::Tensor& x,
                                                                         const at::Tensor& weight,
                                                                         const at::Tensor& pre,
                                                                         c10::string_view approximate) {
  constexpr const char* op = "gptk::gelu_linear_cuda_backward";
  const bool tanh_form = check_gelu_linear_backward(dout, x, weight, pre, approximate, op);
  const int64_t n = weight.size(0), rows = leading_rows(x);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor db = at::empty({n}, x.options());
  at::Tensor dpre = at::empty({rows, n}, x.options());
  const cudaStream_t st = stream();
  if (rows == 0 || n == 0) {
    db.zero_();
  } else {
    const at::Tensor dout2 = last_dim_rows(dout, rows), pre2 = last_dim_rows(pre, rows);
    const int64_t chunks = cuda::column_chunks(rows);
    at::Tensor partial = at::empty({chunks, n}, x.options().dtype(at::kFloat));
    C10_CUDA_CHECK(cuda::gelu_backward_partials(dtype_of(x), dout2.const_data_ptr(), dout2.stride(0),
                                                pre2.const_data_ptr(), pre2.stride(0), dpre.data_ptr(),
                                                partial.data_ptr<float>(), rows, n, tanh_form, st));
    C10_CUDA_CHECK(cuda::column_sum(dtype_of(x), partial.const_data_ptr<float>(), chunks, n, db.data_ptr(), st));
  }
  const at::Tensor x2 = x.reshape({rows, x.size(-1)});
  at::Tensor dx = at::mm(dpre, weight).reshape(x.sizes());
  at::Tensor dw = at::mm(dpre.t(), x2);
  return {dx, dw, db};
}

// ---------------------------------------------------------------------------------------
// linear_cross_entropy: cuBLAS GEMMs per token chunk (common/lce.h), our row step
// ---------------------------------------------------------------------------------------
void lce_row_step_cuda(at::Tensor& z, const at::Tensor& target, const at::Tensor& scale, bool per_token,
                       double temperature, int64_t ignore_index, bool want_grad, at::Tensor& loss) {
  C10_CUDA_CHECK(cuda::lce_rows(dtype_of(z), z.data_ptr(), z.stride(0), z.size(0), z.size(1),
                                target.const_data_ptr<int64_t>(), scale.const_data_ptr<float>(), per_token,
                                static_cast<float>(1.0 / temperature), ignore_index, want_grad,
                                loss.data_ptr<float>(), stream()));
}

// Tokens per chunk: 128 MiB of logits, at most a quarter of the free memory, whole 128-row tiles.
int64_t lce_chunk_cuda(const at::Tensor& x, const at::Tensor& weight) {
  size_t free_bytes = 0, total = 0;
  C10_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total));
  const int64_t budget = std::min<int64_t>(128 << 20, static_cast<int64_t>(free_bytes / 4));
  const int64_t per_row = weight.size(0) * x.element_size();
  return std::max<int64_t>(128, budget / per_row / 128 * 128);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_cuda(
    const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias, const at::Tensor& target,
    double temperature, int64_t ignore_index, c10::string_view reduction, bool need_grad) {
  const c10::cuda::CUDAGuard guard(x.device());
  return lce_forward(x, weight, bias, target, temperature, ignore_index, reduction, need_grad,
                     lce_chunk_cuda(x, weight), x.scalar_type(), lce_row_step_cuda, "gptk::linear_cross_entropy_cuda");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
    const at::Tensor& target, double temperature, int64_t ignore_index) {
  const c10::cuda::CUDAGuard guard(x.device());
  return lce_backward(grad, x, weight, bias, target, temperature, ignore_index, lce_chunk_cuda(x, weight),
                      x.scalar_type(), lce_row_step_cuda, "gptk::linear_cross_entropy_cuda_backward");
}

// ---------------------------------------------------------------------------------------
// sample
// ---------------------------------------------------------------------------------------
at::Tensor sample_cuda(const at::Tensor& logits, const at::Tensor& seed, double temperature, int64_t top_k,
                       double top_p) {
  constexpr const char* op = "gptk::sample_cuda";
  check_sample(logits, seed, temperature, top_k, top_p, op);
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t rows = logits.size(0), n = logits.size(1);
  at::Tensor out = at::empty({rows}, logits.options().dtype(at::kLong));
  if (rows == 0) return out;
  const at::Tensor x = (n > 1 && logits.stride(1) != 1) ? logits.contiguous() : logits;
  const bool greedy = temperature == 0;
  // log2(e) / t, capped so that (x - max) * c stays 0 at the max for tiny t.
  const float c = greedy ? 0.0f : static_cast<float>(std::min(static_cast<double>(kLog2e) / temperature, 3.0e38));
  C10_CUDA_CHECK(cuda::sample(dtype_of(x), x.const_data_ptr(), x.stride(0), seed.const_data_ptr<int64_t>(),
                              out.mutable_data_ptr<int64_t>(), rows, n, c, top_k, static_cast<float>(top_p), greedy,
                              stream()));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(gptk, CUDA, m) {
  m.impl("softmax_cuda", &softmax_cuda);
  m.impl("softmax_cuda_backward", &softmax_backward_cuda);
  m.impl("layer_norm_cuda", &layer_norm_cuda);
  m.impl("layer_norm_cuda_backward", &layer_norm_backward_cuda);
  m.impl("add_layer_norm_cuda", &add_layer_norm_cuda);
  m.impl("add_layer_norm_cuda_backward", &add_layer_norm_backward_cuda);
  m.impl("attention_cuda", &attention_cuda);
  m.impl("attention_cuda_backward", &attention_backward_cuda);
  m.impl("gelu_linear_cuda", &gelu_linear_cuda);
  m.impl("gelu_linear_cuda_backward", &gelu_linear_backward_cuda);
  m.impl("linear_cross_entropy_cuda", &linear_cross_entropy_cuda);
  m.impl("linear_cross_entropy_cuda_backward", &linear_cross_entropy_backward_cuda);
  m.impl("sample_cuda", &sample_cuda);
}

}  // namespace gptk
