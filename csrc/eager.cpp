// The eager entry points: a Python module (gptk_eager) whose functions call each op's CPU or
// CUDA kernel straight through the dispatcher's typed handle, with the autograd node built in
// C++ when an input needs a gradient.
//
// Why: from Python, `OpOverload.redispatch` is a boxed call (each argument parsed against the
// schema into an IValue) and a Python autograd.Function costs ~5 us more per forward; together
// they were most of the cuda backend's host time per op (issue 13). A pybind call with typed
// arguments and a C++ autograd::Function cost what PyTorch's own ops cost.
//
// kernels/cuda/__init__.py uses these for eager calls on plain tensors only. torch.compile,
// fake tensors, dispatch modes, subclasses and torch.func still reach the ops declared in
// ops.cpp, whose autograd is registered from Python with the same formulas as below
// (tests/test_cuda_backend.py test_torch_compile_fullgraph_every_op compares the two paths'
// gradients; every op's eager gradients are checked against fp64 there too).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/csrc/utils/pybind.h>

#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// The autograd nodes' names read gptk::eager::<Op>Fn in autograd graphs (node.name()).
namespace gptk::eager {

using at::Tensor;
using OptTensor = std::optional<Tensor>;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The op's kernel for `t`'s device (CPU or CUDA), below autograd and autocast: the eager
// callers are plain tensors, and kernels.<op> has already applied the autocast policy.
c10::DispatchKeySet keyset(const Tensor& t) {
  return c10::DispatchKeySet(t.is_cuda() ? c10::DispatchKey::CUDA : c10::DispatchKey::CPU);
}

template <class Signature>
c10::TypedOperatorHandle<Signature> handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

#define GPTK_OP(var, name, ...)                                     \
  const c10::TypedOperatorHandle<__VA_ARGS__>& var() {              \
    static const auto op = handle<__VA_ARGS__>(name);               \
    return op;                                                      \
  }

using T3 = std::tuple<Tensor, Tensor, Tensor>;
using T4 = std::tuple<Tensor, Tensor, Tensor, Tensor>;
GPTK_OP(softmax_op, "gptk::softmax_cuda", Tensor(const Tensor&, double, int64_t))
GPTK_OP(softmax_bwd_op, "gptk::softmax_cuda_backward", Tensor(const Tensor&, const Tensor&, double, int64_t))
GPTK_OP(layer_norm_op, "gptk::layer_norm_cuda", T3(const Tensor&, const OptTensor&, const OptTensor&, double))
GPTK_OP(layer_norm_bwd_op, "gptk::layer_norm_cuda_backward",
        T3(const Tensor&, const Tensor&, const OptTensor&, const Tensor&, const Tensor&))
GPTK_OP(add_layer_norm_op, "gptk::add_layer_norm_cuda",
        T4(const Tensor&, const Tensor&, const OptTensor&, const OptTensor&, double))
GPTK_OP(add_layer_norm_bwd_op, "gptk::add_layer_norm_cuda_backward",
        T3(const Tensor&, const OptTensor&, const Tensor&, const OptTensor&, const Tensor&, const Tensor&))
GPTK_OP(attention_op, "gptk::attention_cuda",
        std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, bool, double, const OptTensor&))
GPTK_OP(attention_bwd_op, "gptk::attention_cuda_backward",
        T3(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, bool, double))
GPTK_OP(gelu_linear_op, "gptk::gelu_linear_cuda",
        std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const OptTensor&, c10::string_view))
GPTK_OP(gelu_linear_bwd_op, "gptk::gelu_linear_cuda_backward",
        T3(const Tensor&, const Tensor&, const Tensor&, const Tensor&, c10::string_view))
GPTK_OP(lce_op, "gptk::linear_cross_entropy_cuda",
        T4(const Tensor&, const Tensor&, const OptTensor&, const Tensor&, double, int64_t, c10::string_view, bool))
GPTK_OP(lce_bwd_op, "gptk::linear_cross_entropy_cuda_backward",
        T3(const Tensor&, const Tensor&, const Tensor&, const OptTensor&, const Tensor&, double, int64_t))
GPTK_OP(sample_op, "gptk::sample_cuda", Tensor(const Tensor&, const Tensor&, double, int64_t, double))
#undef GPTK_OP

OptTensor maybe(const Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }
Tensor or_undefined(const OptTensor& t) { return t.has_value() ? *t : Tensor(); }

// The backward formulas call the kernels below autograd: their results carry no graph. Under
// create_graph=True they come back through a DelayedError node that raises if reached, so a
// double backward fails loudly instead of missing terms silently. (PyTorch's
// @once_differentiable does so only when an incoming gradient needs a graph; a gradient
// penalty differentiates through the op's inputs instead, which are not always saved:
// linear_cross_entropy saves its gradients.) kernels/_eager.py once_differentiable does the
// same for the Python Functions.
variable_list once_differentiable(const variable_list& results) {
  if (!at::GradMode::is_enabled()) return results;
  variable_list fake;
  fake.reserve(results.size());
  for (const auto& r : results) fake.push_back(r.defined() ? r.detach().requires_grad_(true) : Tensor());
  return torch::autograd::DelayedError(
             "gptk: the backward of this op is not differentiable (its kernels run outside autograd); "
             "double backward / create_graph through it is not supported",
             static_cast<int64_t>(fake.size()))
      .apply(std::move(fake));
}

// ---------------------------------------------------------------------------------------
// Autograd: the formulas kernels/cuda/__init__.py registers on the ops (setup + backward).
// Forward outputs are the op's outputs; statistics and pre-activations are marked
// non-differentiable (only the backward reads them).
// ---------------------------------------------------------------------------------------
struct SoftmaxFn : torch::autograd::Function<SoftmaxFn> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, double temperature, int64_t dim) {
    Tensor y = softmax_op().redispatch(keyset(x), x, temperature, dim);
    ctx->saved_data["temperature"] = temperature;
    ctx->saved_data["dim"] = dim;
    ctx->save_for_backward({y});
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Tensor y = ctx->get_saved_variables()[0];
    Tensor dx = softmax_bwd_op().redispatch(keyset(y), grads[0], y, ctx->saved_data["temperature"].toDouble(),
                                            ctx->saved_data["dim"].toInt());
    return once_differentiable({dx, Tensor(), Tensor()});
  }
};

struct LayerNormFn : torch::autograd::Function<LayerNormFn> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const OptTensor& weight, const OptTensor& bias,
                               double eps) {
    auto [y, mean, rstd] = layer_norm_op().redispatch(keyset(x), x, weight, bias, eps);
    ctx->mark_non_differentiable({mean, rstd});
    ctx->saved_data["has_bias"] = bias.has_value();
    ctx->save_for_backward({x, or_undefined(weight), mean, rstd});
    return {y, mean, rstd};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor& x = saved[0];
    auto [dx, dw, db] = layer_norm_bwd_op().redispatch(keyset(x), grads[0], x, maybe(saved[1]), saved[2], saved[3]);
    return once_differentiable(
        {dx, saved[1].defined() ? dw : Tensor(), ctx->saved_data["has_bias"].toBool() ? db : Tensor(), Tensor()});
  }
};

struct AddLayerNormFn : torch::autograd::Function<AddLayerNormFn> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& residual, const OptTensor& weight,
                               const OptTensor& bias, double eps) {
    auto [y, total, mean, rstd] = add_layer_norm_op().redispatch(keyset(x), x, residual, weight, bias, eps);
    ctx->mark_non_differentiable({mean, rstd});
    ctx->set_materialize_grads(false);  // an unused y or x + residual: its gradient arrives undefined
    ctx->saved_data["has_bias"] = bias.has_value();
    ctx->save_for_backward({total, or_undefined(weight), mean, rstd});
    return {y, total, mean, rstd};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) {  // only x + residual was used: weight and bias get no gradient (None, as torch)
      return once_differentiable({grads[1], grads[1], Tensor(), Tensor(), Tensor()});
    }
    const auto saved = ctx->get_saved_variables();
    const Tensor& total = saved[0];
    auto [dx, dw, db] = add_layer_norm_bwd_op().redispatch(keyset(total), grads[0], maybe(grads[1]), total,
                                                           maybe(saved[1]), saved[2], saved[3]);
    return once_differentiable({dx, dx, saved[1].defined() ? dw : Tensor(),
                                            ctx->saved_data["has_bias"].toBool() ? db : Tensor(), Tensor()});
  }
};

// The kernels take any batch/head/token strides but need unit stride along D; an incoming
// gradient (autograd may hand an expanded or transposed one) is copied, only then.
Tensor last_dim_contiguous(const Tensor& t) {
  return t.stride(-1) == 1 || t.size(-1) == 1 ? t : t.contiguous();
}

struct AttentionFn : torch::autograd::Function<AttentionFn> {
  static variable_list forward(AutogradContext* ctx, const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                               double scale, const OptTensor& kv_lengths) {
    auto [out, lse] = attention_op().redispatch(keyset(q), q, k, v, causal, scale, kv_lengths);
    ctx->mark_non_differentiable({lse});
    ctx->saved_data["kv_lengths"] = kv_lengths.has_value();
    ctx->saved_data["causal"] = causal;
    ctx->saved_data["scale"] = scale;
    ctx->save_for_backward({q, k, v, out, lse});
    return {out, lse};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // kernels.attention refuses such a call up front; this guards the bare op (as the Python formula does)
    TORCH_CHECK(!ctx->saved_data["kv_lengths"].toBool(),
                "gptk::attention_cuda with kv_lengths is forward only: no gradient flows through it");
    const auto s = ctx->get_saved_variables();
    auto [dq, dk, dv] = attention_bwd_op().redispatch(keyset(s[0]), last_dim_contiguous(grads[0]), s[0], s[1], s[2],
                                                      s[3], s[4], ctx->saved_data["causal"].toBool(),
                                                      ctx->saved_data["scale"].toDouble());
    return once_differentiable({dq, dk, dv, Tensor(), Tensor(), Tensor()});
  }
};

struct GeluLinearFn : torch::autograd::Function<GeluLinearFn> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& weight, const OptTensor& bias,
                               std::string approximate) {
    auto [out, pre] = gelu_linear_op().redispatch(keyset(x), x, weight, bias, approximate);
    ctx->mark_non_differentiable({pre});
    ctx->saved_data["has_bias"] = bias.has_value();
    ctx->saved_data["approximate"] = approximate;
    ctx->save_for_backward({x, weight, pre});
    return {out, pre};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const std::string approximate = ctx->saved_data["approximate"].toStringRef();
    auto [dx, dw, db] = gelu_linear_bwd_op().redispatch(keyset(s[0]), grads[0], s[0], s[1], s[2], approximate);
    return once_differentiable({dx, dw, ctx->saved_data["has_bias"].toBool() ? db : Tensor(), Tensor()});
  }
};

// mean/sum: the forward forms the gradients for a unit incoming gradient; "none": the
// backward reruns the chunks with the per-token gradients.
struct LinearCrossEntropyFn : torch::autograd::Function<LinearCrossEntropyFn> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& weight, const OptTensor& bias,
                               const Tensor& target, double temperature, int64_t ignore_index, std::string reduction) {
    auto [loss, dx, dw, db] = lce_op().redispatch(keyset(x), x, weight, bias, target, temperature, ignore_index,
                                                  reduction, true);
    ctx->mark_non_differentiable({dx, dw, db});
    ctx->saved_data["has_bias"] = bias.has_value();
    ctx->saved_data["none"] = reduction == "none";
    ctx->saved_data["temperature"] = temperature;
    ctx->saved_data["ignore_index"] = ignore_index;
    if (reduction == "none") {
      ctx->save_for_backward({x, weight, or_undefined(bias), target});
    } else {
      ctx->save_for_backward({dx, dw, db});
    }
    return {loss, dx, dw, db};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const Tensor& grad = grads[0];
    Tensor dx, dw, db;
    if (ctx->saved_data["none"].toBool()) {
      std::tie(dx, dw, db) = lce_bwd_op().redispatch(keyset(s[0]), grad, s[0], s[1], maybe(s[2]), s[3],
                                                     ctx->saved_data["temperature"].toDouble(),
                                                     ctx->saved_data["ignore_index"].toInt());
    } else {
      dx = s[0].mul(grad), dw = s[1].mul(grad), db = s[2].mul(grad);
    }
    return once_differentiable({dx, dw, ctx->saved_data["has_bias"].toBool() ? db : Tensor(), Tensor(),
                                            Tensor(), Tensor(), Tensor()});
  }
};

// ---------------------------------------------------------------------------------------
// A C++ autograd node whose backward is a Python function: the triton backend's eager
// gradient path. Its kernels launch from Python, so its formulas stay there; what moves here
// is the graph bookkeeping a Python autograd.Function does per forward (~5 us: the ctx object,
// argument unpacking, output wrapping). kernels/_eager.py PythonNode uses it when this
// library is loaded or loads without a build, else the Function.
//
// backward(needs_input_grad, saved, grads) -> one gradient or None per input, like a
// Function's; it runs with the GIL held and grad mode off, and its results pass through
// once_differentiable as the C++ nodes' do.
// ---------------------------------------------------------------------------------------
// One registered backward: its node's name, its Python formula, and the outputs whose
// gradients need the saved tensors (empty: all of them).
struct PythonFormula {
  std::string name;
  py::object fn;
  std::vector<int64_t> saved_for;
};

std::vector<const PythonFormula*>& python_formulas() {
  // Registered once per op and never freed: no Python object dies after the interpreter (a
  // node may outlive it), and a node's pointer stays valid while the list grows. Read
  // without the GIL only for the immutable name.
  static auto* registry = new std::vector<const PythonFormula*>();
  return *registry;
}

struct PythonBackward : torch::autograd::Node {
  explicit PythonBackward(const PythonFormula* formula) : formula(formula) {}

  variable_list apply(variable_list&& grads) override {
    const auto n_inputs = num_outputs();
    bool any = false;
    for (const auto& g : grads) any = any || g.defined();
    if (!any) return variable_list(n_inputs);  // zero in, zero out: what the formulas give
    // Unpacked only when a gradient that reads them arrived (as ctx.saved_tensors is read
    // only by a formula that needs it): add_layer_norm's s alone passes straight through,
    // so changing s in place or freeing y's graph first must not fail it.
    bool need_saved = formula->saved_for.empty();
    for (auto i : formula->saved_for) {
      need_saved = need_saved || i < 0 || static_cast<size_t>(i) >= grads.size() || grads[i].defined();
    }
    variable_list unpacked;
    if (need_saved) {
      unpacked.reserve(saved.size());
      for (const auto& s : saved) unpacked.push_back(s.unpack());  // raises on an in-place change
    }
    variable_list results;
    {
      at::AutoGradMode no_grad(false);  // the formulas build no graph (once_differentiable below)
      py::gil_scoped_acquire gil;
      try {
        py::tuple needs(n_inputs);
        for (size_t i = 0; i < n_inputs; ++i) needs[i] = py::bool_(task_should_compute_output(i));
        py::object saved_arg = need_saved ? py::cast(unpacked) : py::none();
        py::object out = formula->fn(needs, saved_arg, grads);
        for (const auto& r : out.cast<py::sequence>()) {
          results.push_back(r.is_none() ? Tensor() : r.cast<Tensor>());
        }
      } catch (py::error_already_set& e) {  // keep the Python exception's type and message
        e.restore();
        python_error err;
        err.persist();
        throw std::move(err);
      }
    }
    TORCH_CHECK(results.size() == n_inputs, name(), " returned ", results.size(), " gradients, expected ",
                n_inputs);
    return once_differentiable(results);
  }

  std::string name() const override { return formula->name; }

  void release_variables() override {
    for (auto& s : saved) s.reset_data();
  }

  const PythonFormula* formula;
  std::vector<torch::autograd::SavedVariable> saved;
};

// Node pointers are std::shared_ptr in torch 2.4-2.11 and c10::intrusive_ptr in 2.14: the
// pointer type an Edge holds says which (a dependent type, so only one branch is compiled).
using NodePtr = decltype(torch::autograd::Edge::function);
template <class P>
P make_python_backward(const PythonFormula* formula) {
  if constexpr (std::is_same_v<P, std::shared_ptr<torch::autograd::Node>>) {
    return P(new PythonBackward(formula));
  } else {
    return c10::make_intrusive<std::conditional_t<std::is_same_v<P, P>, PythonBackward, void>>(formula);
  }
}

// `n_outputs` contiguous tensors shaped like `like`, then, when stats_rows >= 0, an fp32
// (stats_rows, 2) statistics buffer: an eager forward's outputs, allocated here, not from
// Python, to save ~1 us per tensor (Python's argument parsing).
std::vector<Tensor> empty_outputs(const Tensor& like, int64_t n_outputs, int64_t stats_rows) {
  std::vector<Tensor> out;
  out.reserve(n_outputs + 1);
  for (int64_t i = 0; i < n_outputs; ++i) out.push_back(at::empty(like.sizes(), like.options()));
  if (stats_rows >= 0) out.push_back(at::empty({stats_rows, 2}, like.options().dtype(at::kFloat)));
  return out;
}

// Make `outputs` (fresh tensors that kernels run outside autograd have just written) the
// outputs of a PythonBackward node over `inputs` that saves `saved`. After the kernels, as a
// Function saves: saved-tensor hooks see computed values (non-reentrant checkpointing stops
// its recomputation once the last tensor is saved). Outputs among `saved` are saved through a
// detached alias: same storage and version counter, no reference from the node to itself.
void attach(int64_t index, const std::vector<Tensor>& outputs, const std::vector<OptTensor>& inputs,
            const std::vector<OptTensor>& saved) {
  TORCH_CHECK(index >= 0 && static_cast<size_t>(index) < python_formulas().size(), "unknown backward ", index);
  NodePtr node = make_python_backward<NodePtr>(python_formulas()[index]);
  torch::autograd::edge_list edges;
  edges.reserve(inputs.size());
  for (const auto& t : inputs) {
    edges.push_back(t.has_value() && t->requires_grad() ? torch::autograd::impl::gradient_edge(*t)
                                                        : torch::autograd::Edge());
  }
  node->set_next_edges(std::move(edges));
  auto* raw = static_cast<PythonBackward*>(node.get());
  raw->saved.reserve(saved.size());
  for (const auto& t : saved) {
    bool is_output = false;
    for (const auto& o : outputs) is_output = is_output || (t.has_value() && t->is_same(o));
    raw->saved.emplace_back(!t.has_value() ? Tensor() : is_output ? t->detach() : *t, /*is_output=*/false);
  }
  for (const auto& o : outputs) {
    TORCH_CHECK(!o.requires_grad() && !o.is_view(), "attach: outputs must be fresh tensors");
    torch::autograd::set_history(o, node);
  }
}

// m.def with the GIL released while the C++ runs (arguments are converted before, the
// result after, with the GIL held).
template <class F, class... Extra>
void def(py::module_& m, const char* name, F&& f, const Extra&... extra) {
  m.def(name, std::forward<F>(f), py::call_guard<py::gil_scoped_release>(), extra...);
}

}  // namespace gptk::eager

// Each op twice: `<op>` calls the kernel (no autograd), `<op>_grad` records the C++ node.
// Outputs are the op's own (a tuple, or a list from `_grad`: the Python wrappers pick what
// users see). The GIL is released while C++ runs, as PyTorch's own bindings do: a long CPU
// kernel must not stall the caller's other Python threads.
PYBIND11_MODULE(gptk_eager, m) {
  using namespace gptk::eager;
  def(m, "softmax", [](const Tensor& x, double t, int64_t dim) { return softmax_op().redispatch(keyset(x), x, t, dim); });
  def(m, "softmax_grad", [](const Tensor& x, double t, int64_t dim) { return SoftmaxFn::apply(x, t, dim); });
  def(m, "softmax_backward", [](const Tensor& dy, const Tensor& y, double t, int64_t dim) {
    return softmax_bwd_op().redispatch(keyset(y), dy, y, t, dim);
  });
  def(m, "layer_norm", [](const Tensor& x, const OptTensor& w, const OptTensor& b, double eps) {
    return layer_norm_op().redispatch(keyset(x), x, w, b, eps);
  });
  def(m, "layer_norm_grad", [](const Tensor& x, const OptTensor& w, const OptTensor& b, double eps) {
    return (LayerNormFn::apply(x, w, b, eps));
  });
  def(m, "layer_norm_backward", [](const Tensor& dy, const Tensor& x, const OptTensor& w, const Tensor& mean,
                                  const Tensor& rstd) {
    return layer_norm_bwd_op().redispatch(keyset(x), dy, x, w, mean, rstd);
  });
  def(m, "add_layer_norm", [](const Tensor& x, const Tensor& r, const OptTensor& w, const OptTensor& b, double eps) {
    return add_layer_norm_op().redispatch(keyset(x), x, r, w, b, eps);
  });
  def(m, "add_layer_norm_grad", [](const Tensor& x, const Tensor& r, const OptTensor& w, const OptTensor& b,
                                  double eps) { return (AddLayerNormFn::apply(x, r, w, b, eps)); });
  def(m, "add_layer_norm_backward", [](const Tensor& dy, const OptTensor& dsum, const Tensor& total,
                                      const OptTensor& w, const Tensor& mean, const Tensor& rstd) {
    return add_layer_norm_bwd_op().redispatch(keyset(total), dy, dsum, total, w, mean, rstd);
  });
  def(m, "attention", [](const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale,
                        const OptTensor& kv_lengths) {
    return attention_op().redispatch(keyset(q), q, k, v, causal, scale, kv_lengths);
  }, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("causal"), py::arg("scale"), py::arg("kv_lengths") = py::none());
  def(m, "attention_grad", [](const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale,
                             const OptTensor& kv_lengths) {
    return (AttentionFn::apply(q, k, v, causal, scale, kv_lengths));
  }, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("causal"), py::arg("scale"), py::arg("kv_lengths") = py::none());
  def(m, "attention_backward", [](const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                                 const Tensor& out, const Tensor& lse, bool causal, double scale) {
    return attention_bwd_op().redispatch(keyset(q), dout, q, k, v, out, lse, causal, scale);
  });
  def(m, "gelu_linear", [](const Tensor& x, const Tensor& w, const OptTensor& b, const std::string& approximate) {
    return gelu_linear_op().redispatch(keyset(x), x, w, b, approximate);
  });
  def(m, "gelu_linear_grad", [](const Tensor& x, const Tensor& w, const OptTensor& b, std::string approximate) {
    return (GeluLinearFn::apply(x, w, b, std::move(approximate)));
  });
  def(m, "gelu_linear_backward", [](const Tensor& dout, const Tensor& x, const Tensor& w, const Tensor& pre,
                                   const std::string& approximate) {
    return gelu_linear_bwd_op().redispatch(keyset(x), dout, x, w, pre, approximate);
  });
  def(m, "linear_cross_entropy", [](const Tensor& x, const Tensor& w, const OptTensor& b, const Tensor& target,
                                   double temperature, int64_t ignore_index, const std::string& reduction,
                                   bool need_grad) {
    return lce_op().redispatch(keyset(x), x, w, b, target, temperature, ignore_index, reduction, need_grad);
  });
  // need_grad: always true here (the caller records a gradient); taken for the op's signature.
  def(m, "linear_cross_entropy_grad", [](const Tensor& x, const Tensor& w, const OptTensor& b, const Tensor& target,
                                        double temperature, int64_t ignore_index, std::string reduction,
                                        bool /*need_grad*/) {
    return (LinearCrossEntropyFn::apply(x, w, b, target, temperature, ignore_index, std::move(reduction)));
  });
  def(m, "linear_cross_entropy_backward", [](const Tensor& grad, const Tensor& x, const Tensor& w, const OptTensor& b,
                                            const Tensor& target, double temperature, int64_t ignore_index) {
    return lce_bwd_op().redispatch(keyset(x), grad, x, w, b, target, temperature, ignore_index);
  });
  // saved_for: the outputs whose gradients need the saved tensors (empty: all of them).
  m.def("register_backward", [](std::string name, py::object fn, std::vector<int64_t> saved_for) {
    python_formulas().push_back(new PythonFormula{std::move(name), std::move(fn), std::move(saved_for)});
    return static_cast<int64_t>(python_formulas().size() - 1);
  }, py::arg("name"), py::arg("fn"), py::arg("saved_for") = std::vector<int64_t>());
  // GIL held: they are short, and releasing it costs more than it saves.
  m.def("empty_outputs", &empty_outputs);
  m.def("attach", &attach);
  def(m, "sample", [](const Tensor& logits, const Tensor& seed, double t, int64_t top_k, double top_p) {
    return sample_op().redispatch(keyset(logits), logits, seed, t, top_k, top_p);
  });
}
