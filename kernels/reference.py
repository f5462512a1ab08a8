"""Plain-PyTorch implementations of every op: the "torch" backend and the tests' ground truth.

Each takes already-validated arguments (see kernels._checks), computes in at least
fp32 and returns the input dtype. Called with float64 tensors they are the fp64
references the parity tests compare against.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def softmax(x, temperature=1.0, dim=-1):
    return torch.softmax(x.to(_compute_dtype(x)) / temperature, dim=dim).to(x.dtype)


def layer_norm(x, weight=None, bias=None, eps=1e-5):
    return F.layer_norm(x, x.shape[-1:], weight, bias, eps)


def add_layer_norm(x, residual, weight=None, bias=None, eps=1e-5):
    total = x + residual
    return F.layer_norm(total, total.shape[-1:], weight, bias, eps), total


def causal_mask(tq: int, tk: int, device=None) -> torch.Tensor:
    """(Tq, Tk) boolean mask, True where query i (at absolute position Tk - Tq + i) may attend."""
    return torch.ones(tq, tk, dtype=torch.bool, device=device).tril(diagonal=tk - tq)


def length_mask(kv_lengths, tq: int, tk: int, causal: bool) -> torch.Tensor:
    """(B, 1, Tq, Tk) boolean mask: key j is visible to query i of sequence b when
    j < kv_lengths[b] (and, causal, j <= kv_lengths[b] - Tq + i), a length past the cache
    taken as tk, as the kernels clamp it."""
    lengths = kv_lengths.view(-1, 1, 1, 1).long().clamp(max=tk)
    keys = torch.arange(tk, device=kv_lengths.device).view(1, 1, 1, tk)
    mask = keys < lengths
    if causal:
        mask = mask & (keys <= lengths - tq + torch.arange(tq, device=kv_lengths.device).view(1, 1, tq, 1))
    return mask


def attention(q, k, v, causal=True, scale=None, kv_lengths=None):
    tq, tk = q.shape[2], k.shape[2]
    if kv_lengths is not None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=length_mask(kv_lengths, tq, tk, causal), scale=scale)
    if causal and tq == tk:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    mask = causal_mask(tq, tk, q.device) if causal else None
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def attention_explicit(q, k, v, causal=True, scale=None, kv_lengths=None):
    """softmax(Q K^T * scale) V written out, in q's dtype: the fp64 ground truth for tests."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale
    if kv_lengths is not None:
        scores = scores.masked_fill(~length_mask(kv_lengths, q.shape[2], k.shape[2], causal), float("-inf"))
    elif causal:
        scores = scores.masked_fill(~causal_mask(q.shape[2], k.shape[2], q.device), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def gelu_linear(x, weight, bias=None, approximate="tanh"):
    return F.gelu(F.linear(x, weight, bias), approximate=approximate)


def linear_cross_entropy(x, weight, target, bias=None, temperature=1.0, ignore_index=-100, reduction="mean"):
    """F.cross_entropy((x W^T + b) / temperature, target) as eager runs it under autocast: the
    full logits from a matmul in x's dtype, the softmax and loss in float32 (F.cross_entropy is
    on autocast's float32 list). The loss is float32 (float64 for float64 inputs), shaped like
    target for "none"."""
    logits = F.linear(x, weight, bias).to(_compute_dtype(x))
    if temperature != 1.0:
        logits = logits / temperature
    loss = F.cross_entropy(logits.reshape(-1, weight.shape[0]), target.reshape(-1), ignore_index=ignore_index,
                           reduction=reduction)
    loss = loss.to(_compute_dtype(x))
    return loss.view(target.shape) if reduction == "none" else loss

def sample(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """The plain sequence: max-shift, topk + masked_fill, sort + cumsum for top_p, softmax,
    multinomial. The rule (ties at each boundary all kept, NaN rows -> -1) is
    kernels/triton/sample.py's; float64 logits give the fp64 ground truth."""
    x = logits.to(_compute_dtype(logits))
    n_rows, n_cols = x.shape
    if n_rows == 0:
        return torch.empty((0,), dtype=torch.int64, device=x.device)
    bad = torch.isnan(x).any(dim=-1)
    if temperature == 0:
        return torch.where(bad, -1, x.argmax(dim=-1))
    top = x.max(dim=-1, keepdim=True).values
    bad = bad | ~torch.isfinite(top.squeeze(-1))
    # Bad rows draw from zeros (any valid row) and are overwritten with -1 at the end.
    x = torch.where(bad[:, None], 0.0, x - top)
    if top_k is not None and top_k < n_cols:
        kth = torch.topk(x, top_k, dim=-1).values[:, -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        ordered = torch.sort(x, dim=-1, descending=True).values
        mass = torch.softmax(ordered / temperature, dim=-1).cumsum(dim=-1)
        crossing = (mass < top_p).sum(dim=-1, keepdim=True).clamp(max=n_cols - 1)
        x = x.masked_fill(x < ordered.gather(-1, crossing), float("-inf"))
    probs = torch.softmax(x / temperature, dim=-1)
    token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return torch.where(bad, -1, token)
