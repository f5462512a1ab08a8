"""Input checks shared by every backend: each raises an error naming the argument and the rule.

Dtype errors are TypeError; shape, value and device errors are ValueError. The
functional API runs these before dispatch, so every backend sees validated input
and the error for the same mistake reads the same on every backend.
"""
from __future__ import annotations

import math

import torch

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# The torch backend is the reference: it also takes float64 (the tests' ground truth).
REFERENCE_DTYPES = KERNEL_DTYPES + (torch.float64,)
# Every multiple of 8 from 8 to 256 (FlashAttention's set): the kernels pad D to their tile.
ATTENTION_HEAD_DIMS = tuple(range(8, 257, 8))
# Widest normalized dim (x.shape[-1]) each compiled backend's layer norm is built and tested for.
NORM_MAX_HIDDEN = {"triton": 65536}
_NAMES = "float32, float16 or bfloat16"


_KERNEL_DTYPE_SET = frozenset(KERNEL_DTYPES)


def tensor(name: str, t, backend: str) -> None:
    if type(t) is torch.Tensor and t.dtype in _KERNEL_DTYPE_SET:  # the common case, cheaply
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor ({_NAMES}), got {t.dtype}")
    allowed = REFERENCE_DTYPES if backend == "torch" else KERNEL_DTYPES
    if t.dtype not in allowed:
        raise TypeError(f"{name} has dtype {t.dtype}, which backend={backend!r} does not support; "
                        f"use {_NAMES}" + (" (float64 runs on backend='torch')" if t.dtype == torch.float64 else ""))


def same(names: tuple[str, ...], tensors: tuple, *, dtype: bool = True) -> None:
    """All non-None tensors share the first one's device (and dtype)."""
    pairs = [(n, t) for n, t in zip(names, tensors) if t is not None]
    first_name, first = pairs[0]
    for name, t in pairs[1:]:
        if t.device != first.device:
            raise ValueError(f"{name} is on {t.device} but {first_name} is on {first.device}; "
                             f"move them to one device")
        if dtype and t.dtype != first.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but {first_name} has {first.dtype}; "
                            f"they must match")


def finite(name: str, value) -> float:
    if type(value) is float and value - value == 0.0:  # the common case, cheaply: finite
        return value
    if isinstance(value, (torch.SymFloat, torch.SymInt)) or (
            torch.compiler.is_compiling() and not isinstance(value, (int, float))):
        # torch.compile may pass Python scalars as symbols: the value is unknown while
        # tracing, so it is checked in eager calls (and by the ops on the real value).
        # A concrete number is checked here under torch.compile too.
        return value
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def positive_finite(name: str, value) -> float:
    if type(value) is float and value > 0.0 and value - value == 0.0:
        return value
    value = finite(name, value)
    if isinstance(value, (torch.SymFloat, torch.SymInt)) or not isinstance(value, (int, float)):
        return value
    if value <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {value}")
    return value


def dim_index(dim, ndim: int) -> int:
    if not isinstance(dim, int) or isinstance(dim, bool):
        raise ValueError(f"dim must be an int, got {dim!r}")
    size = max(ndim, 1)
    if not -size <= dim < size:
        raise ValueError(f"dim={dim} is out of range for a tensor with {ndim} dims")
    return dim % size


def softmax(x, temperature, dim, backend):
    tensor("x", x, backend)
    temperature = positive_finite("temperature", temperature)
    return temperature, dim_index(dim, x.dim())


_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)


def _plain_params(x, weight, bias) -> bool:
    """x is a plain tensor of a kernel dtype with a last dim within every backend's limit,
    and weight/bias are each None or a tensor of x's dtype, shape (x.shape[-1],) and device.
    Every eager norm call runs this: each tensor attribute read costs ~0.1 us, so each is
    read once and the cheapest tests come first."""
    if type(x) is not torch.Tensor:
        return False
    dtype = x.dtype
    if dtype not in _KERNEL_DTYPE_SET:
        return False
    shape = x.shape
    if not shape or shape[-1] > _NORM_MAX_ANY:
        return False
    if weight is None and bias is None:
        return True
    n, device = (shape[-1],), x.device
    for p in (weight, bias):
        if p is not None and (type(p) not in _PLAIN_TENSORS or p.dtype is not dtype or p.shape != n
                              or p.device != device):
            return False
    return True


_NORM_MAX_ANY = min(NORM_MAX_HIDDEN.values())


def norm_params(x, weight, bias, eps, backend):
    # The common case, cheaply; anything unusual takes the full checks below (same messages).
    if type(eps) is float and eps > 0.0 and eps - eps == 0.0 and _plain_params(x, weight, bias):
        return eps
    tensor("x", x, backend)
    if x.dim() == 0:
        raise ValueError("x must have at least one dim (the normalized one), got a 0-d tensor")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is None:
            continue
        tensor(name, p, backend)
        if tuple(p.shape) != tuple(x.shape[-1:]):
            raise ValueError(f"{name} must have shape {tuple(x.shape[-1:])} (x.shape[-1:]), "
                             f"got {tuple(p.shape)}")
    same(("x", "weight", "bias"), (x, weight, bias))
    limit = NORM_MAX_HIDDEN.get(backend)
    if limit is not None and x.shape[-1] > limit:
        raise ValueError(f"the normalized dim x.shape[-1]={x.shape[-1]} exceeds {limit}, the widest "
                         f"backend={backend!r} supports; use backend='torch' for wider rows")
    return positive_finite("eps", eps)


layer_norm = norm_params


def add_layer_norm(x, residual, weight, bias, eps, backend):
    eps = norm_params(x, weight, bias, eps, backend)
    tensor("residual", residual, backend)
    if residual.shape != x.shape:
        raise ValueError(f"residual must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)}")
    same(("x", "residual"), (x, residual))
    return eps


def unit_last_dim(name: str, t) -> None:
    """The attention kernels read rows of D contiguous elements: a strided last dim (a
    transposed or sliced view) is refused rather than copied behind the caller's back."""
    if t.dim() and t.numel() and t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name} must have a unit-stride last dim (head dim D), got stride {t.stride(-1)} "
                         f"for shape {tuple(t.shape)}; pass {name}.contiguous()")


def attention(q, k, v, causal, scale, backend):
    for name, t in (("q", q), ("k", k), ("v", v)):
        tensor(name, t, backend)
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (B, H, T, D), got shape {tuple(t.shape)}")
    same(("q", "k", "v"), (q, k, v))
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    for i, what in ((0, "batch size B"), (1, "head count H"), (3, "head dim D")):
        if q.shape[i] != k.shape[i]:
            raise ValueError(f"q and k must have the same {what} (dim {i}), "
                             f"got {q.shape[i]} and {k.shape[i]}")
    if causal and q.shape[2] > k.shape[2]:
        raise ValueError(f"causal attention needs Tq <= Tk (queries align to the end of the keys), "
                         f"got Tq={q.shape[2]} > Tk={k.shape[2]}")
    if backend != "torch" and q.shape[3] not in ATTENTION_HEAD_DIMS:
        raise ValueError(f"head dim D={q.shape[3]} is not supported by backend={backend!r}: D must be a "
                         f"multiple of 8 from 8 to 256")
    for name, t in (("q", q), ("k", k), ("v", v)):
        unit_last_dim(name, t)
    if scale is None:
        return 1.0 / math.sqrt(q.shape[3]) if q.shape[3] > 0 else 1.0
    return finite("scale", scale)


def kv_lengths(lengths, q, k, v):
    if not isinstance(lengths, torch.Tensor):
        raise TypeError(f"kv_lengths must be a torch.Tensor of key counts per sequence, got {type(lengths).__name__}")
    if lengths.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"kv_lengths must be an int32 or int64 tensor, got {lengths.dtype}")
    if tuple(lengths.shape) != (q.shape[0],):
        raise ValueError(f"kv_lengths must have shape (B,) = ({q.shape[0]},), got {tuple(lengths.shape)}")
    if lengths.device != q.device:
        raise ValueError(f"kv_lengths is on {lengths.device} but q is on {q.device}; move them to one device")
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise ValueError("kv_lengths is for inference (KV-cache decode): call it under torch.no_grad(), "
                         "no gradient flows through a length-masked attention")


def gelu_linear(x, weight, bias, approximate, backend):
    if approximate not in ("tanh", "none"):
        raise ValueError(f"approximate must be 'tanh' or 'none', got {approximate!r}")
    tensor("x", x, backend)
    tensor("weight", weight, backend)
    if x.dim() < 1:
        raise ValueError("x must have at least one dim (in_features), got a 0-d tensor")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
    if weight.shape[1] != x.shape[-1]:
        raise ValueError(f"in_features mismatch: x.shape[-1]={x.shape[-1]} but "
                         f"weight.shape[1]={weight.shape[1]}")
    if bias is not None:
        tensor("bias", bias, backend)
        if tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(f"bias must have shape ({weight.shape[0]},) (out_features), "
                             f"got {tuple(bias.shape)}")
    same(("x", "weight", "bias"), (x, weight, bias))


LCE_REDUCTIONS = ("mean", "sum", "none")


def linear_cross_entropy(x, weight, target, bias, temperature, ignore_index, reduction, backend):
    """Validates the fused unembedding + cross-entropy's arguments; returns temperature."""
    if reduction not in LCE_REDUCTIONS:
        raise ValueError(f"reduction must be one of {LCE_REDUCTIONS}, got {reduction!r}")
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
        raise TypeError(f"ignore_index must be an int, got {ignore_index!r}")
    tensor("x", x, backend)
    tensor("weight", weight, backend)
    if x.dim() < 1:
        raise ValueError("x must have at least one dim (the hidden size C), got a 0-d tensor")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (V, C), got shape {tuple(weight.shape)}")
    if weight.shape[0] == 0:
        raise ValueError("weight must have at least one row (vocabulary size V >= 1), got shape "
                         f"{tuple(weight.shape)}")
    if weight.shape[1] != x.shape[-1]:
        raise ValueError(f"hidden size mismatch: x.shape[-1]={x.shape[-1]} but weight.shape[1]={weight.shape[1]}")
    if bias is not None:
        tensor("bias", bias, backend)
        if tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(f"bias must have shape ({weight.shape[0]},) (V, weight.shape[0]), "
                             f"got {tuple(bias.shape)}")
    same(("x", "weight", "bias"), (x, weight, bias))
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
        raise TypeError(f"target must be an integer tensor (class indices, int64), got {target.dtype}")
    if tuple(target.shape) != tuple(x.shape[:-1]):
        raise ValueError(f"target must have shape {tuple(x.shape[:-1])} (x.shape[:-1]), got {tuple(target.shape)}")
    same(("x", "target"), (x, target), dtype=False)
    return positive_finite("temperature", temperature)


def sample(logits, temperature, top_k, top_p, generator, backend):
    """-> (temperature, top_k or None, top_p or None) after the checks of kernels.sample."""
    tensor("logits", logits, backend)
    if logits.dim() != 2:
        raise ValueError(f"logits must be 2-D (B, V), got shape {tuple(logits.shape)}")
    if logits.shape[1] == 0 and logits.shape[0] > 0:
        raise ValueError("logits must have at least one column (V >= 1): there is no token to draw")
    # Symbols (torch.compile) are checked by the ops on the real values; concrete numbers here.
    temperature = finite("temperature", temperature)
    if isinstance(temperature, (int, float)) and temperature < 0:
        raise ValueError(f"temperature must be finite and >= 0 (0 = greedy), got {temperature}")
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, (int, torch.SymInt)):
            raise TypeError(f"top_k must be an int >= 1 or None, got {top_k!r}")
        if isinstance(top_k, int) and top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    if top_p is not None:
        top_p = finite("top_p", top_p)
        if isinstance(top_p, (int, float)) and not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        gdev, ldev = torch.device(generator.device), logits.device
        if gdev.type != ldev.type or (ldev.type == "cuda" and gdev.index != (ldev.index or 0)):
            raise ValueError(f"generator is on {gdev} but logits are on {ldev}; "
                             f"use a torch.Generator(device=logits.device)")
    return temperature, top_k, top_p
