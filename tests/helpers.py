"""Helpers for parity tests: fp64 references, error ratios, dtype tolerances."""
from __future__ import annotations

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
DEVICE = "cuda" if HAS_CUDA else "cpu"
DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Elementwise/row ops computed in fp32 then rounded once: error vs fp64 is about one
# rounding of the output dtype (fp16: 2^-11, bf16: 2^-8) plus fp32 noise.
TOL = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float16: dict(atol=1e-3, rtol=1e-3),
    torch.bfloat16: dict(atol=8e-3, rtol=8e-3),
    torch.float64: dict(atol=1e-10, rtol=1e-10),
}


def triton_backend_usable():
    return HAS_CUDA or INTERPRET


needs_triton = pytest.mark.skipif(not triton_backend_usable(),
                                  reason="triton backend needs a GPU or TRITON_INTERPRET=1")
needs_gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


def backends_here() -> list[str]:
    import kernels
    return [b for b in kernels.available_backends(DEVICE) if b != "torch"]


def randn(*shape, dtype=torch.float32, scale=1.0, device=DEVICE):
    return (torch.randn(*shape, dtype=torch.float64) * scale).to(device=device, dtype=dtype)


def assert_close(actual, expected, dtype, msg=""):
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), **TOL[dtype], msg=msg)


def max_err(a, b) -> float:
    return (a.double().cpu() - b.double().cpu()).abs().max().item() if a.numel() else 0.0


def assert_op_within_torch_error(ours, torch_same_dtype, ref64, inputs, names):
    """FlashAttention's rule for an op and its gradients: `ours`, `torch_same_dtype` and
    `ref64` each run on their own copy of `inputs` (the last in float64); the output must be
    within 2x and each input's gradient (under one random cotangent) within 3x of PyTorch's
    own error in the same dtype."""
    copies = [[t.detach().clone().requires_grad_() for t in inputs],
              [t.detach().clone().requires_grad_() for t in inputs],
              [t.detach().double().requires_grad_() for t in inputs]]
    outs = [fn(*args) for fn, args in zip((ours, torch_same_dtype, ref64), copies)]
    assert_within_torch_error(*outs, 2, what="out")
    g = torch.randn_like(outs[0])
    for out in outs:
        out.backward(g.to(out.dtype))
    for name, *leaves in zip(names, *copies):
        assert_within_torch_error(*(t.grad for t in leaves), 3, what=name)


def assert_within_torch_error(ours, torch_same_dtype, ref64, factor, slack=1e-6, what=""):
    """FlashAttention's rule: our error vs fp64 is at most `factor` x PyTorch's own error in
    the same dtype (plus a tiny absolute slack for the case where PyTorch's error is 0)."""
    ours_err = max_err(ours, ref64)
    torch_err = max_err(torch_same_dtype, ref64)
    assert ours_err <= factor * torch_err + slack, (
        f"{what}: error {ours_err:.3e} > {factor} x torch's {torch_err:.3e} (+{slack:g})")


def assert_lengths_attention(out, q, k, v, lengths, causal, what=""):
    """Attention with kv_lengths against the fp64 reference, rows that see no key included:
    those (the explicit softmax's NaN rows) must be exactly 0, as SDPA gives them; the rest
    within 2x PyTorch's own error (FlashAttention's forward rule)."""
    from kernels import reference
    ref64 = reference.attention_explicit(q.double(), k.double(), v.double(), causal, kv_lengths=lengths)
    unseen = ref64.isnan()
    assert (~unseen).any()
    assert torch.equal(out[unseen], torch.zeros_like(out[unseen])), f"{what}: a row that sees no key must be 0"
    same = reference.attention_explicit(q, k, v, causal, kv_lengths=lengths)
    assert_within_torch_error(out[~unseen], same[~unseen], ref64[~unseen], 2, what=what)
