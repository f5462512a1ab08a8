"""Fused GPT kernels: the functional API.

Every op takes `backend=` ("torch", "triton", "cuda" or "auto"), validates its
arguments once here (the same errors on every backend), then dispatches. See
shared docs api.md for the contract; README.md for the backends table.
"""
from __future__ import annotations

import torch
import torch.autograd.forward_ad as _forward_ad

from . import _checks
from ._backend import (BACKENDS, OPS, available_backends, choose, implementation, missing_ops,
                       unavailable_reason)

__all__ = [
    "softmax", "layer_norm", "add_layer_norm", "attention", "gelu_linear", "linear_cross_entropy", "sample",
    "available_backends", "missing_ops", "unavailable_reason", "supports_kv_lengths", "BACKENDS", "OPS",
]


def softmax(x, temperature=1.0, dim=-1, *, backend="auto"):
    """softmax(x / temperature) along `dim`; temperature must be finite and > 0."""
    if _any_autocast():  # one cheap call in the common case
        (x,) = _autocast(torch.float32, x)
    if backend not in _CONCRETE or type(x) is not torch.Tensor:  # else nothing to resolve
        backend = _choose("softmax", backend, "x", x, lambda: x.shape[dim] if x.dim() and isinstance(dim, int)
                          and -x.dim() <= dim < x.dim() else None)
    temperature, dim = _checks.softmax(x, temperature, dim, backend)
    return _run("softmax", backend, x, temperature, dim)


def layer_norm(x, weight=None, bias=None, eps=1e-5, *, backend="auto"):
    """Layer norm over the last dim; weight and bias may each be None."""
    if _any_autocast():  # one cheap call in the common case
        x, weight, bias = _autocast(torch.float32, x, weight, bias)
    if backend not in _CONCRETE or type(x) is not torch.Tensor:  # else nothing to resolve
        backend = _choose("layer_norm", backend, "x", x, lambda: _last(x), (weight, bias))
    eps = _checks.layer_norm(x, weight, bias, eps, backend)
    return _run("layer_norm", backend, x, weight, bias, eps)


def add_layer_norm(x, residual, weight=None, bias=None, eps=1e-5, *, backend="auto"):
    """(layer_norm(x + residual), x + residual): a pre-LN block's residual add fused into its norm."""
    if _any_autocast():  # one cheap call in the common case
        x, residual, weight, bias = _autocast(torch.float32, x, residual, weight, bias)
    if backend not in _CONCRETE or type(x) is not torch.Tensor:  # else nothing to resolve
        backend = _choose("add_layer_norm", backend, "x", x, lambda: _last(x), (residual, weight, bias))
    eps = _checks.add_layer_norm(x, residual, weight, bias, eps, backend)
    return _run("add_layer_norm", backend, x, residual, weight, bias, eps)


def attention(q, k, v, *, causal=True, scale=None, kv_lengths=None, backend="auto"):
    """Scaled dot-product attention; q (B, H, Tq, D), k/v (B, H, Tk, D), queries end-aligned.

    With causal=True query i sits at absolute position Tk - Tq + i (KV-cache decode:
    Tq=1). Same result as F.scaled_dot_product_attention with that mask.

    kv_lengths (an integer tensor (B,) on q's device, or None): only the first kv_lengths[b]
    keys of sequence b are attended to and its queries align to the end of those
    (position kv_lengths[b] - Tq + i). A static KV cache read whole with its lengths on the
    device keeps every shape fixed from step to step, which is what a CUDA graph of a decode
    step needs. Values must lie in [Tq, Tk] when causal, [1, Tk] otherwise (not checked on the
    host: that would synchronise; the kernels clamp them to [0, Tk], never reading outside the
    cache, and a query row that sees no key comes out 0, as SDPA gives it). Every backend
    takes them, any Tq (a prompt run into a static cache, too). Inference only:
    no gradient flows through such a call.
    """
    if _any_autocast():  # one cheap call in the common case
        q, k, v = _autocast(None, q, k, v)
    backend = _choose("attention", backend, "q", q, lambda: q.shape[2] if q.dim() == 4 else None, (k, v))
    scale = _checks.attention(q, k, v, causal, scale, backend)
    if kv_lengths is not None:
        _checks.kv_lengths(kv_lengths, q, k, v)
        return _run("attention", backend, q, k, v, bool(causal), scale, kv_lengths)
    return _run("attention", backend, q, k, v, bool(causal), scale)


# Backends whose attention takes kv_lengths (the static KV cache of a captured decode step).
_KV_LENGTHS = ("torch", "triton", "cuda")


def supports_kv_lengths(backend: str) -> bool:
    """Whether kernels.attention(..., kv_lengths=...) runs on `backend` ("auto": whatever it picks)."""
    return backend == "auto" or backend in _KV_LENGTHS


def gelu_linear(x, weight, bias=None, *, approximate="tanh", backend="auto"):
    """gelu(x @ weight.T + bias), weight shaped (out_features, in_features) like nn.Linear."""
    if _any_autocast():  # one cheap call in the common case
        x, weight, bias = _autocast(None, x, weight, bias)
    if backend not in _CONCRETE or type(x) is not torch.Tensor:  # else nothing to resolve
        backend = _choose("gelu_linear", backend, "x", x, None, (weight, bias))
    _checks.gelu_linear(x, weight, bias, approximate, backend)
    return _run("gelu_linear", backend, x, weight, bias, approximate)


def linear_cross_entropy(x, weight, target, bias=None, *, temperature=1.0, ignore_index=-100, reduction="mean",
                         backend="auto"):
    """F.cross_entropy((x @ weight.T + bias) / temperature, target, ignore_index=..., reduction=...)
    without materialising the (tokens, V) logits: x (..., C), weight (V, C), target x.shape[:-1]
    (integer class indices). The loss is float32 (float64 for float64 inputs); "mean" averages
    over the non-ignored tokens (NaN when all are ignored), "none" is shaped like target."""
    if _any_autocast():  # one cheap call in the common case
        x, weight, bias = _autocast(None, x, weight, bias)
    backend = _choose("linear_cross_entropy", backend, "x", x, None, (weight, bias))
    temperature = _checks.linear_cross_entropy(x, weight, target, bias, temperature, ignore_index, reduction,
                                               backend)
    if target.dtype != torch.int64:
        target = target.long()
    return _run("linear_cross_entropy", backend, x, weight, target, bias, temperature, ignore_index,
                reduction)


def sample(logits, temperature=1.0, *, top_k=None, top_p=None, generator=None, backend="auto"):
    """Next tokens, int64 (B,), from logits (B, V); not differentiable.

    temperature 0 is argmax (ties to the lowest index). Otherwise softmax(logits / t),
    keep the top_k most probable tokens (ties at the k-th logit all kept), then the
    smallest most-probable set whose renormalised mass reaches top_p (the crossing token
    and its ties kept), renormalise and draw with `generator` (a torch.Generator on
    logits' device, the default one when None; a seeded call is reproducible on the same
    device and backend). A row with a NaN logit gives -1; with temperature > 0 so does a
    row whose max is +inf or -inf (softmax is undefined there). No host sync.
    """
    backend = _choose("sample", backend, "logits", logits)
    temperature, top_k, top_p = _checks.sample(logits, temperature, top_k, top_p, generator, backend)
    return _run("sample", backend, logits, temperature, top_k, top_p, generator)


def _last(x):
    return x.shape[-1] if x.dim() else None


_any_autocast = torch._C._is_any_autocast_enabled


def _autocast(dtype, *tensors):
    """Under torch.autocast (callers test _any_autocast() first), follow PyTorch's own op
    policy: softmax and the norms run in float32 (as F.softmax / F.layer_norm do), attention
    and the MLP matmul in the autocast dtype (as SDPA / F.linear do). `dtype=None` means the
    autocast dtype. Outside autocast for the tensors' device, or for non-float inputs (left to
    the checks), tensors pass through untouched."""
    first = tensors[0]
    if not isinstance(first, torch.Tensor) or not torch.is_autocast_enabled(
            "cuda" if first.is_cuda else first.device.type):
        return tensors
    target = dtype or torch.get_autocast_dtype(first.device.type)
    return tuple(t.to(target) if isinstance(t, torch.Tensor) and t.dtype in _checks.KERNEL_DTYPES
                 else t for t in tensors)


def _run(op, backend, *args):
    first = args[0]
    if _forward_ad._current_level >= 0 and backend != "torch" and op != "sample":  # else one global read
        _refuse_tangents(op, backend, args)
    # Keyed on the device type (all an implementation depends on) through two flags: no
    # torch.device object is built on the common path. Other device types (meta) never hit.
    key = (op, backend, first.is_cuda, first.is_cpu)
    impl = _IMPL_CACHE.get(key)
    if impl is None:
        device = first.device
        impl = implementation(op, backend, device)  # raises when the backend cannot run here
        if device.type in ("cpu", "cuda") and not torch.compiler.is_compiling():
            _IMPL_CACHE[key] = impl
    if torch._C._is_any_autocast_enabled() and torch.is_autocast_enabled(first.device.type):
        device_type = first.device.type
        # Inputs are already in the policy's dtype: autocast must not re-cast the ops'
        # internals (the C++ ops' fp32 matmuls, the reference's F.linear).
        with torch.autocast(device_type, enabled=False):
            return impl(*args)
    return impl(*args)


def _refuse_tangents(op, backend, args):
    """Our kernels have no forward-mode formula: a dual input's tangent would be dropped
    silently (the output carries none), so such a call raises. backend='torch' supports it."""
    for a in args:
        if isinstance(a, torch.Tensor) and _forward_ad.unpack_dual(a).tangent is not None:
            raise NotImplementedError(f"{op} on backend={backend!r} does not support forward-mode AD (a dual "
                                      f"tensor's tangent would be lost); use backend='torch'")


# Resolved (op, backend, is_cuda, is_cpu) -> implementation, and (op, backend, device, dtype) -> the
# concrete backend: per-call lookups instead of re-resolving (the host path is ~a microsecond
# per op here). Only successes are cached; eager calls only.
_IMPL_CACHE: dict = {}
_CHOICE_CACHE: dict = {}
_CONCRETE = frozenset(BACKENDS)


def _choose(op, backend, name, t, size_of=None, grads=()):
    """The concrete backend for the call whose first tensor is `t` (argument `name`); for
    "auto" on a GPU it depends on the op's size class (`size_of()`) and on whether any of
    `grads` (the differentiable inputs) needs a gradient (kernels/_auto.py)."""
    if backend in _CONCRETE and type(t) is torch.Tensor:  # nothing to resolve
        return backend
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    training, size = False, None
    if backend == "auto" and t.is_cuda:
        training = torch.is_grad_enabled() and any(isinstance(g, torch.Tensor) and g.requires_grad
                                                   for g in (t, *grads))
        size = size_of() if size_of is not None else None
    if torch.compiler.is_compiling():
        return choose(op, backend, t.device, t.dtype, size, training)
    key = (op, backend, t.device, t.dtype, size, training)
    chosen = _CHOICE_CACHE.get(key)
    if chosen is None:
        if len(_CHOICE_CACHE) >= 4096:  # one entry per distinct size: bounded, started over past that
            _CHOICE_CACHE.clear()
        chosen = _CHOICE_CACHE[key] = choose(op, backend, t.device, t.dtype, size, training)
    return chosen
