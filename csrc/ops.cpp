// Every op of the C++/CUDA backend, declared once; cpu/*.cpp and cuda/*.cpp register
// the implementations per dispatch key, kernels/cuda/ registers fake (meta) kernels and
// autograd from Python (torchvision's layout).
//
// A FRAGMENT, not a TORCH_LIBRARY: the Triton backend's torch.library.custom_op ops live
// in the same `gptk` namespace and a namespace admits only one defining library. The
// `_cuda` infix keeps our names apart from theirs (`gptk::softmax_triton`).
//
// Forward ops return what their backward needs (statistics, pre-activations) as extra
// outputs; the Python wrappers hand users only the first.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(gptk, m) {
  m.def("softmax_cuda(Tensor x, float temperature, int dim) -> Tensor");
  m.def("softmax_cuda_backward(Tensor dy, Tensor y, float temperature, int dim) -> Tensor");

  // -> (y, mean, rstd); mean and rstd are float32, one per row of x viewed as (rows, N).
  m.def("layer_norm_cuda(Tensor x, Tensor? weight, Tensor? bias, float eps) -> (Tensor, Tensor, Tensor)");
  // -> (dx, dweight, dbias); dweight/dbias are always computed (shape (N,), x's dtype).
  m.def("layer_norm_cuda_backward(Tensor dy, Tensor x, Tensor? weight, Tensor mean, Tensor rstd)"
        " -> (Tensor, Tensor, Tensor)");
  // -> (y, x + residual, mean, rstd)
  m.def("add_layer_norm_cuda(Tensor x, Tensor residual, Tensor? weight, Tensor? bias, float eps)"
        " -> (Tensor, Tensor, Tensor, Tensor)");
  // dsum: the gradient reaching the x + residual output (None when it was unused).
  m.def("add_layer_norm_cuda_backward(Tensor dy, Tensor? dsum, Tensor sum, Tensor? weight, Tensor mean,"
        " Tensor rstd) -> (Tensor, Tensor, Tensor)");

  // -> (out, lse); lse is float32 (B, H, Tq): log2 of each query row's softmax denominator
  // with scores in the log2 domain (csrc/common/math.h). kv_lengths: int32/int64 (B,) keys per
  // sequence (queries end-aligned to them), read on the device; forward only (no autograd).
  m.def("attention_cuda(Tensor q, Tensor k, Tensor v, bool causal, float scale, Tensor? kv_lengths=None)"
        " -> (Tensor, Tensor)");
  m.def("attention_cuda_backward(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse,"
        " bool causal, float scale) -> (Tensor, Tensor, Tensor)");

  // -> (out, pre); pre = x @ weight.T + bias in x's dtype, saved for the backward.
  m.def("gelu_linear_cuda(Tensor x, Tensor weight, Tensor? bias, str approximate) -> (Tensor, Tensor)");
  // -> (dx, dweight, dbias); dbias is computed even when the forward had no bias.
  m.def("gelu_linear_cuda_backward(Tensor dout, Tensor x, Tensor weight, Tensor pre, str approximate)"
        " -> (Tensor, Tensor, Tensor)");

  // -> (loss, dx, dweight, dbias); loss float32 (target's shape for "none", else 0-d). With
  // need_grad and reduction mean/sum the gradients for a unit incoming gradient are formed
  // here (dbias empty without a bias); otherwise the last three are empty.
  m.def("linear_cross_entropy_cuda(Tensor x, Tensor weight, Tensor? bias, Tensor target, float temperature,"
        " int ignore_index, str reduction, bool need_grad) -> (Tensor, Tensor, Tensor, Tensor)");
  // reduction "none": -> (dx, dweight, dbias) for per-token gradients `grad`, recomputing the logits.
  m.def("linear_cross_entropy_cuda_backward(Tensor grad, Tensor x, Tensor weight, Tensor? bias, Tensor target,"
        " float temperature, int ignore_index) -> (Tensor, Tensor, Tensor)");
  // -> int64 (B,) tokens; seed: one int64 (the Philox key, drawn by the Python wrapper from the
  // generator); top_k 0 / top_p 1 mean no filter. Not differentiable.
  m.def("sample_cuda(Tensor logits, Tensor seed, float temperature, int top_k, float top_p) -> Tensor");
}
