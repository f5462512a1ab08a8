"""Backend resolution: which implementation of an op runs for a given device.

Every backend is a package (`kernels.reference` for "torch", `kernels.triton`,
`kernels.cuda`) exposing one function per op with the functional API's signature
(minus `backend=`). A backend never silently falls back to another: asking for one
that cannot run raises a RuntimeError that says why and what to do.
"""
from __future__ import annotations

import os

import torch

OPS = ("softmax", "layer_norm", "add_layer_norm", "attention", "gelu_linear", "linear_cross_entropy", "sample")
BACKENDS = ("torch", "triton", "cuda")

# Each op of each backend, loaded on first use by a literal import (torch.compile traces
# an import statement, not importlib). An op absent here is not implemented on that
# backend: it is reported as such, never replaced by another backend.
def _triton_softmax():
    from .triton import softmax as module
    return module.softmax


def _triton_gelu_linear():
    from .triton import gelu_linear as module
    return module.gelu_linear


def _triton_attention():
    from .triton import attention as module
    return module.attention


def _triton_layer_norm():
    from .triton import layer_norm as module
    return module.layer_norm


def _triton_add_layer_norm():
    from .triton import layer_norm as module
    return module.add_layer_norm


def _triton_linear_cross_entropy():
    from .triton import linear_cross_entropy as module
    return module.linear_cross_entropy

def _triton_sample():
    from .triton import sample as module
    return module.sample


def _cuda_module():
    from . import cuda as module
    return module


# The cuda backend: one C++ library (csrc/) implements every op.
def _cuda_softmax():
    from .cuda import softmax
    return softmax


def _cuda_layer_norm():
    from .cuda import layer_norm
    return layer_norm


def _cuda_add_layer_norm():
    from .cuda import add_layer_norm
    return add_layer_norm


def _cuda_attention():
    from .cuda import attention
    return attention


def _cuda_gelu_linear():
    from .cuda import gelu_linear
    return gelu_linear


def _cuda_linear_cross_entropy():
    from .cuda import linear_cross_entropy
    return linear_cross_entropy

def _cuda_sample():
    from .cuda import sample
    return sample


_LOADERS = {
    "triton": {
        "softmax": _triton_softmax,
        "gelu_linear": _triton_gelu_linear,
        "attention": _triton_attention,
        "layer_norm": _triton_layer_norm,
        "add_layer_norm": _triton_add_layer_norm,
        "linear_cross_entropy": _triton_linear_cross_entropy,
        "sample": _triton_sample,
    },
    "cuda": {
        "softmax": _cuda_softmax,
        "layer_norm": _cuda_layer_norm,
        "add_layer_norm": _cuda_add_layer_norm,
        "attention": _cuda_attention,
        "gelu_linear": _cuda_gelu_linear,
        "linear_cross_entropy": _cuda_linear_cross_entropy,
        "sample": _cuda_sample,
    },
}
_IMPLS: dict = {}


def philox_seed(generator, device) -> torch.Tensor:
    """A random int64 (shape (1,), on `device`) drawn from `generator` (the device's default
    generator when None), advancing it: the Philox key of the compiled samplers. It stays on
    the device (no host sync), so the draw is also captured by CUDA graphs."""
    return torch.randint(-2**63, 2**63 - 1, (1,), dtype=torch.int64, device=device, generator=generator)


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def autotune_enabled() -> bool:
    """GPTK_AUTOTUNE=0 makes every autotuned Triton kernel use its first eligible config:
    correctness runs (the GPU test suite) then compile each kernel once per specialisation
    instead of once per config. Benchmarks and training leave it on."""
    return os.environ.get("GPTK_AUTOTUNE", "1") not in ("0", "false", "no")


def tma_requested() -> bool:
    """GPTK_TMA=1: on sm_90, the Triton attention kernels load their tiles by tensor-memory
    copies (TMA) from descriptors made on the device, instead of cp.async. Off by default until
    a GPU run has measured it against the cp.async build (benchmarks/NOTES.md)."""
    return os.environ.get("GPTK_TMA", "0") in ("1", "true", "yes")


# Set by benchmarks.stub_driver: Triton launches on CPU tensors go to a stand-in driver that
# compiles for sm_90 and launches nothing (host-path timing without a GPU).
STUB_DRIVER = False

# Set by kernels.triton.compile_check while it records launches on meta tensors: the compute
# capability (80, 90) whose launch choices (attention's sm_90 tiles) to make for them; 0 off.
META_ARCH = 0


def _triton_unavailable_reason(device: torch.device) -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError as e:  # pragma: no cover - triton ships with Linux torch
        return f"triton is not installed ({e}); pip install triton"
    if device.type == "cuda":
        return None
    if device.type == "cpu" and (triton_interpreting() or STUB_DRIVER):
        return None
    if device.type == "cpu":
        return ("the triton backend runs on CUDA tensors; on CPU tensors it runs only under "
                "the Triton interpreter (set TRITON_INTERPRET=1 before importing kernels)")
    return f"the triton backend does not support device type {device.type!r}"


def _cuda_unavailable_reason(device: torch.device) -> str | None:
    if device.type not in ("cpu", "cuda"):
        return f"the cuda backend does not support device type {device.type!r}"
    return _cuda_module().unavailable_reason(device)


def unavailable_reason(backend: str, device: torch.device) -> str | None:
    """None when `backend` can run on `device`, otherwise a sentence saying why not."""
    device = torch.device(device)
    if backend == "torch":
        return None
    if backend == "triton":
        return _triton_unavailable_reason(device)
    if backend == "cuda":
        return _cuda_unavailable_reason(device)
    return f"unknown backend {backend!r}; choose one of {BACKENDS + ('auto',)}"


def available_backends(device="cpu") -> list[str]:
    """The backends that can run on `device`, fastest first among the compiled ones."""
    device = torch.device(device)
    order = ("triton", "cuda", "torch") if device.type == "cuda" else ("cuda", "triton", "torch")
    return [b for b in order if unavailable_reason(b, device) is None]


def missing_ops(backend: str, ops=OPS) -> list[str]:
    """The ops among `ops` that `backend` does not implement (independent of device)."""
    if backend == "torch":
        return []
    if backend not in _LOADERS:
        raise ValueError(f"backend must be one of {BACKENDS + ('auto',)}, got {backend!r}")
    return [op for op in ops if _find_impl(backend, op) is None]


def _find_impl(backend: str, op: str):
    key = (backend, op)
    if key not in _IMPLS:
        loader = _LOADERS[backend].get(op)
        _IMPLS[key] = loader() if loader is not None else None
    return _IMPLS[key]


def choose(op: str, backend: str, device: torch.device, dtype: torch.dtype | None = None,
           size: int | None = None, training: bool = False) -> str:
    """The concrete backend name that `backend` (possibly "auto") means for this call.

    auto on a GPU follows the measured table in kernels/_auto.py (per capability, op, size
    class and inference/training), taking the first available backend it lists; on the CPU
    PyTorch's own kernels are the fastest thing available (the interpreter and our C++ CPU
    code are for testing). float64 only runs on the reference."""
    if not isinstance(backend, str):
        raise ValueError(f"backend must be a string, got {type(backend).__name__}")
    if backend != "auto":
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS + ('auto',)}, got {backend!r}")
        return backend
    if device.type == "cuda" and dtype != torch.float64:
        from . import _auto
        for candidate in _auto.order(op, device, size, training):
            if candidate == "torch":
                return "torch"
            if unavailable_reason(candidate, device) is None and _find_impl(candidate, op) is not None:
                return candidate
    return "torch"


def implementation(op: str, backend: str, device: torch.device):
    """The function implementing `op` on the concrete `backend` for tensors on `device`."""
    if backend == "torch":
        from . import reference
        return getattr(reference, op)
    reason = unavailable_reason(backend, device)
    if reason is not None:
        raise RuntimeError(f"backend={backend!r} cannot run on {device}: {reason}")
    impl = _find_impl(backend, op)
    if impl is None:
        raise RuntimeError(f"backend={backend!r} does not implement {op!r} yet; "
                           f"use backend='torch' (ops it has: {_implemented(backend)})")
    return impl


def _implemented(backend: str) -> list[str]:
    return [op for op in OPS if _find_impl(backend, op) is not None]
