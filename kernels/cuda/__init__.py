"""The "cuda" backend: the C++/CUDA extension built from csrc/.

csrc/ops.cpp declares the ops (`gptk::<op>_cuda` and `gptk::<op>_cuda_backward`),
csrc/cpu/ and csrc/cuda/ implement them per device. This module loads the library
(prebuilt by setup.py, else JIT-built with ninja and cached per source hash; see
_build.py), registers each op's fake (meta) kernel and autograd formula, and exposes
one function per op with the functional API's signature (arguments already validated
by kernels._checks; the C++ entry points check them again).

Nothing is built at import: the first `unavailable_reason` or op call does it. When that
first call is inside torch.compile, Dynamo runs the loading as plain Python and takes its
result as a constant (`_loaded_or_error`, torch.compiler.assume_constant_result) instead of
tracing the build's file checks, which it cannot (os.stat). A build failure is remembered
and reported, and the other backends keep working.
"""
from __future__ import annotations

import math

import torch

from . import _build

_EAGER = None  # the library's gptk_eager module, once loaded (None: not loaded or an older build)
_STATE = {"loaded": False, "error": None, "with_cuda": False, "why_no_cuda": None, "path": None,
          "eager_module": False}


def _load() -> None:
    if _STATE["loaded"] or _STATE["error"] is not None:
        return
    try:
        path, with_cuda, why_not = _build.load()
    except _build.BuildError as e:
        _STATE["error"] = str(e)
        return
    except OSError as e:  # a library that built but cannot be loaded (missing symbol...)
        _STATE["error"] = f"the built library failed to load: {e}"
        return
    _register(path)
    _STATE.update(loaded=True, with_cuda=with_cuda, why_no_cuda=why_not, path=path)


@torch.compiler.assume_constant_result
def _loaded_or_error() -> str:
    """Load the library (building it if needed); "" when loaded, else why not."""
    _load()
    return "" if _STATE["loaded"] else str(_STATE["error"])


def unavailable_reason(device) -> str | None:
    """None when the cuda backend runs on `device`; otherwise why not (builds on first call)."""
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        return f"the cuda backend does not support device type {device.type!r}"
    error = _loaded_or_error()
    if error:
        return f"the C++/CUDA extension failed to build: {error}"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "torch sees no CUDA device"
        if not _STATE["with_cuda"]:
            return f"the extension was built without its CUDA kernels: {_STATE['why_no_cuda']}"
    return None


def _require() -> None:
    if _STATE["loaded"]:  # every call after the first
        return
    error = _loaded_or_error()
    if error:
        raise RuntimeError(f"the C++/CUDA extension failed to build: {error}")


def eager_module_if_built():
    """The library's Python module (gptk_eager) when the library is loaded, or loads without
    compiling (setup.py's prebuilt copy, or the build cache's for these sources); else None.
    The triton backend asks: it records its eager gradients with gptk_eager's C++ node when
    it can, and must never start a build."""
    if not _STATE["loaded"]:
        if _STATE["error"] is not None or _build.ready_library() is None:
            return None
        _load()
    return _EAGER


def library_info() -> dict:
    """Where the loaded library came from and whether it has the CUDA kernels."""
    _load()
    return {k: _STATE[k] for k in ("loaded", "error", "with_cuda", "why_no_cuda", "path", "eager_module")}


# -----------------------------------------------------------------------------------------
# The ops as the functional API calls them.
# -----------------------------------------------------------------------------------------

def softmax(x, temperature=1.0, dim=-1):
    _require()
    return _CALLS["softmax"](x, float(temperature), int(dim))


def layer_norm(x, weight=None, bias=None, eps=1e-5):
    _require()
    return _CALLS["layer_norm"](x, weight, bias, float(eps))[0]


def add_layer_norm(x, residual, weight=None, bias=None, eps=1e-5):
    _require()
    y, total, _, _ = _CALLS["add_layer_norm"](x, residual, weight, bias, float(eps))
    return y, total


def _last_dim_contiguous(t):
    # The kernels take any batch/head/token strides (the model's (B, T, H, D) -> (B, H, T, D)
    # transposes stay views) but need unit stride along D. q, k and v with a strided D are
    # refused (kernels._checks); an incoming gradient (autograd may hand an expanded or
    # transposed one) is copied, only then.
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def attention(q, k, v, causal=True, scale=None, kv_lengths=None):
    _require()
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    if kv_lengths is not None:
        return _CALLS["attention"](q, k, v, bool(causal), float(scale), kv_lengths)[0]
    return _CALLS["attention"](q, k, v, bool(causal), float(scale))[0]


def gelu_linear(x, weight, bias=None, approximate="tanh"):
    _require()
    return _CALLS["gelu_linear"](x, weight, bias, approximate)[0]


def linear_cross_entropy(x, weight, target, bias=None, temperature=1.0, ignore_index=-100, reduction="mean"):
    _require()
    need = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    return _CALLS["linear_cross_entropy"](x, weight, bias, target, float(temperature), int(ignore_index), reduction,
                                          need)[0]

def sample(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    _require()
    from .._backend import philox_seed  # the generator is no op argument: draw the seed here
    seed = philox_seed(generator, logits.device)
    return _CALLS["sample"](logits, seed, float(temperature), int(top_k or 0), float(1.0 if top_p is None else top_p))


# -----------------------------------------------------------------------------------------
# Fake kernels (shapes and strides exactly as the C++ allocates them) and autograd.
# -----------------------------------------------------------------------------------------

def _rows(x) -> int:
    return math.prod(x.shape[:-1])


def _empty_rows_like(t, dim):
    # csrc/common/rows.h empty_rows_like: `dim` innermost and contiguous.
    if t.dim() == 0:
        return t.new_empty(())
    return t.new_empty(t.movedim(dim, -1).shape).movedim(-1, dim)


def _fake_softmax(x, temperature, dim):
    return _empty_rows_like(x, dim)


def _fake_softmax_backward(dy, y, temperature, dim):
    return _empty_rows_like(y, dim)


def _fake_layer_norm(x, weight, bias, eps):
    stats = x.new_empty((_rows(x),), dtype=torch.float32)
    return x.new_empty(x.shape), stats, stats.clone()


def _fake_norm_backward(x, weight):
    n = x.shape[-1]
    return x.new_empty(x.shape), x.new_empty((n,)), x.new_empty((n,))


def _fake_layer_norm_backward(dy, x, weight, mean, rstd):
    return _fake_norm_backward(x, weight)


def _fake_add_layer_norm(x, residual, weight, bias, eps):
    stats = x.new_empty((_rows(x),), dtype=torch.float32)
    return x.new_empty(x.shape), x.new_empty(x.shape), stats, stats.clone()


def _fake_add_layer_norm_backward(dy, dsum, total, weight, mean, rstd):
    return _fake_norm_backward(total, weight)


def _fake_attention(q, k, v, causal, scale, kv_lengths=None):
    b, h, tq, d = q.shape
    return q.new_empty((b, h, tq, d)), q.new_empty((b, h, tq), dtype=torch.float32)


def _fake_attention_backward(dout, q, k, v, out, lse, causal, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _fake_gelu_linear(x, weight, bias, approximate):
    shape = (*x.shape[:-1], weight.shape[0])
    return x.new_empty(shape), x.new_empty(shape)


def _fake_gelu_linear_backward(dout, x, weight, pre, approximate):
    return x.new_empty(x.shape), weight.new_empty(weight.shape), weight.new_empty((weight.shape[0],))


def _fake_linear_cross_entropy(x, weight, bias, target, temperature, ignore_index, reduction, need_grad):
    loss = x.new_empty(target.shape if reduction == "none" else (), dtype=torch.float32)
    if not need_grad or reduction == "none":
        return loss, x.new_empty((0,)), x.new_empty((0,)), x.new_empty((0,))
    db = x.new_empty((weight.shape[0],) if bias is not None else (0,))
    return loss, x.new_empty(x.shape), weight.new_empty(weight.shape), db


def _fake_linear_cross_entropy_backward(grad, x, weight, bias, target, temperature, ignore_index):
    return x.new_empty(x.shape), weight.new_empty(weight.shape), x.new_empty((weight.shape[0],) if bias is not None
                                                                             else (0,))


def _softmax_setup(ctx, inputs, output):
    _, ctx.temperature, ctx.dim = inputs
    ctx.save_for_backward(output)


def _softmax_grad(ctx, dy):
    (y,) = ctx.saved_tensors
    return _CALLS["softmax_backward"](dy, y, ctx.temperature, ctx.dim), None, None


def _layer_norm_setup(ctx, inputs, output):
    x, weight, bias, _ = inputs
    ctx.has_weight, ctx.has_bias = weight is not None, bias is not None
    ctx.save_for_backward(x, weight, output[1], output[2])


def _layer_norm_grad(ctx, dy, _dmean, _drstd):
    x, weight, mean, rstd = ctx.saved_tensors
    dx, dw, db = _CALLS["layer_norm_backward"](dy, x, weight, mean, rstd)
    return dx, dw if ctx.has_weight else None, db if ctx.has_bias else None, None


def _add_layer_norm_setup(ctx, inputs, output):
    _, _, weight, bias, _ = inputs
    ctx.has_weight, ctx.has_bias = weight is not None, bias is not None
    ctx.set_materialize_grads(False)  # an unused y or x + residual: its gradient arrives as None
    ctx.save_for_backward(output[1], weight, output[2], output[3])


def _add_layer_norm_grad(ctx, dy, dsum, _dmean, _drstd):
    if dy is None:  # only x + residual was used: weight and bias get no gradient (None, as torch)
        return dsum, dsum, None, None, None
    total, weight, mean, rstd = ctx.saved_tensors
    dx, dw, db = _CALLS["add_layer_norm_backward"](dy, dsum, total, weight, mean, rstd)
    return dx, dx, dw if ctx.has_weight else None, db if ctx.has_bias else None, None


def _attention_setup(ctx, inputs, output):
    q, k, v, ctx.causal, ctx.scale = inputs[:5]
    ctx.kv_lengths = len(inputs) > 5 and inputs[5] is not None
    ctx.save_for_backward(q, k, v, output[0], output[1])


def _attention_grad(ctx, dout, _dlse):
    if ctx.kv_lengths:  # kernels.attention refuses such a call up front; this guards the bare op
        raise RuntimeError("gptk::attention_cuda with kv_lengths is forward only: no gradient flows through it")
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = _CALLS["attention_backward"](_last_dim_contiguous(dout), q, k, v, out, lse,
                                                        ctx.causal, ctx.scale)
    return dq, dk, dv, None, None, None


def _gelu_linear_setup(ctx, inputs, output):
    x, weight, bias, ctx.approximate = inputs
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x, weight, output[1])


def _gelu_linear_grad(ctx, dout, _dpre):
    x, weight, pre = ctx.saved_tensors
    dx, dw, db = _CALLS["gelu_linear_backward"](dout, x, weight, pre, ctx.approximate)
    return dx, dw, db if ctx.has_bias else None, None


def _lce_setup(ctx, inputs, output):
    x, weight, bias, target, ctx.temperature, ctx.ignore_index, ctx.reduction, ctx.need_grad = inputs
    _, dx, dw, db = output
    ctx.mark_non_differentiable(dx, dw, db)
    ctx.has_bias = bias is not None
    # mean/sum: the forward formed the gradients; "none": the backward reruns the chunks.
    ctx.save_for_backward(*((x, weight, bias, target) if ctx.reduction == "none" else (dx, dw, db)))


def _lce_grad(ctx, grad, *_unused):
    if not ctx.need_grad:
        raise RuntimeError("gptk::linear_cross_entropy_cuda ran with need_grad=False, so it formed no gradient; "
                           "call kernels.linear_cross_entropy instead of the op")
    if ctx.reduction == "none":
        dx, dw, db = _CALLS["linear_cross_entropy_backward"](grad, *ctx.saved_tensors, ctx.temperature,
                                                             ctx.ignore_index)
    else:
        dx, dw, db = (t * grad for t in ctx.saved_tensors)
    return dx, dw, (db if ctx.has_bias else None), None, None, None, None, None


_REGISTRATIONS = (
    # (op, fake, backward fake, setup_context, backward)
    ("softmax", _fake_softmax, _fake_softmax_backward, _softmax_setup, _softmax_grad),
    ("layer_norm", _fake_layer_norm, _fake_layer_norm_backward, _layer_norm_setup, _layer_norm_grad),
    ("add_layer_norm", _fake_add_layer_norm, _fake_add_layer_norm_backward, _add_layer_norm_setup,
     _add_layer_norm_grad),
    ("attention", _fake_attention, _fake_attention_backward, _attention_setup, _attention_grad),
    ("gelu_linear", _fake_gelu_linear, _fake_gelu_linear_backward, _gelu_linear_setup, _gelu_linear_grad),
    ("linear_cross_entropy", _fake_linear_cross_entropy, _fake_linear_cross_entropy_backward, _lce_setup, _lce_grad),
)


def _fake_sample(logits, seed, temperature, top_k, top_p):
    return logits.new_empty((logits.shape[0],), dtype=torch.int64)


# Eager calls on plain tensors skip the dispatcher's autograd and autocast layers: they call
# the device's C++ kernel through the library's own module (csrc/eager.cpp), with a C++
# autograd node when a gradient is needed; traced calls use the op (kernels/_eager.py).
_CALLS: dict = {}


def _direct(overload):
    """The boxed redispatch to the device's kernel: for a library without csrc/eager.cpp."""
    cpu = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)
    cuda = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)
    redispatch = overload.redispatch

    def call(*args):
        return redispatch(cuda if args[0].is_cuda else cpu, *args)
    return call


def _eager_module(path: str):
    """The library's own Python module (csrc/eager.cpp: typed calls of each op's kernel and
    C++ autograd nodes), or None for a library built without it (an older wheel's)."""
    import importlib.machinery
    import importlib.util
    loader = importlib.machinery.ExtensionFileLoader("gptk_eager", path)
    spec = importlib.util.spec_from_file_location("gptk_eager", path, loader=loader)
    try:
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
    except ImportError:
        return None
    return module


def _register(path: str) -> None:
    from .._eager import fast_op
    global _EAGER
    eager = _EAGER = _eager_module(path)
    _STATE["eager_module"] = eager is not None
    for op, fake, fake_backward, setup, grad in _REGISTRATIONS:
        name = f"gptk::{op}_cuda"
        torch.library.register_fake(name)(fake)
        torch.library.register_fake(f"{name}_backward")(fake_backward)
        torch.library.register_autograd(name, grad, setup_context=setup)
        forward = getattr(torch.ops.gptk, f"{op}_cuda").default
        backward = getattr(torch.ops.gptk, f"{op}_cuda_backward").default
        if eager is None:
            _CALLS[op] = fast_op(forward, _direct(forward), setup, grad, register_autograd=False)
            _CALLS[f"{op}_backward"] = fast_op(backward, _direct(backward))
        else:
            _CALLS[op] = fast_op(forward, getattr(eager, op), setup, grad, register_autograd=False,
                                 grad_impl=getattr(eager, f"{op}_grad"))
            _CALLS[f"{op}_backward"] = fast_op(backward, getattr(eager, f"{op}_backward"))
    torch.library.register_fake("gptk::sample_cuda")(_fake_sample)  # not differentiable: no autograd
    sample_op = torch.ops.gptk.sample_cuda.default
    _CALLS["sample"] = fast_op(sample_op, eager.sample if eager is not None else _direct(sample_op))

