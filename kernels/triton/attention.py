"""Causal flash attention: forward, backward, and a GEMV-shaped kernel for KV-cache decode.

o = softmax(q k^T * scale + mask) v per (batch, head); q (B, H, Tq, D), k/v (B, H, Tk, D).
Queries are aligned to the END of the keys: query i sits at absolute position
shift + i with shift = Tk - Tq, and with causal=True it sees keys j <= shift + i.
With kv_lengths (inference on a static KV cache) sequence b has kv_lengths[b] keys
instead of Tk, read on the device by the GEMV decode kernel (Tq <= 4): the same launches
serve every step of a CUDA graph; more query rows (flash-decoding, or a prompt run into a
static cache through the tiled forward) read them the same way.

What it fuses: the eager path writes and re-reads the (Tq, Tk) score and probability
matrices (4 B H Tq Tk bytes each in fp32). Here K/V tiles stream through on-chip memory
against a resident Q tile with an online (running max, running sum) fp32 softmax, so the
score matrix never reaches memory and the extra state is one logsumexp per query row.

Roofline (s = bytes per element, causal halves the FLOPs):
  forward   4 B H Tq Tk D FLOP; reads q, k, v and writes o: ~2 B H (Tq + Tk) D s bytes
            (k/v re-read per query block, mostly from L2). Compute-bound from T ~ 256.
  backward  2.5x the forward FLOPs (recomputes p, then dv, dp, dk, dq); reads q, k, v, o,
            do, lse; writes dq, dk, dv.
  decode    Tq ~ 1: 4 B H Tk D FLOP against 2 B H Tk D s bytes of K/V: memory-bound. Tq <= 4
            rows stay in registers (no 16-row MMA tile) while a program's warps stream its
            keys; only when B H cannot fill the GPU are the keys split across programs
            too, each writing a partial (o, lse) that a combine kernel merges. Tq 5..16
            takes flash-decoding on the 16-row MMA tile.

Numerics: scores are scaled by scale * log2(e) and exponentiated with exp2; the saved
logsumexp is in that base-2, pre-scaled domain (lse2 = max + log2(sum)). fp32 inputs
use IEEE fp32 dots (TF32 would be ~1e3x less accurate than PyTorch's fp32 attention).
Backward is deterministic: dk/dv come from one program per key block looping over
queries, dq from one program per query block looping over keys; no atomics.

Head dims: every multiple of 8 from 8 to 256, padded to a power-of-two tile with masks.

Tiles: on sm_90, 16-bit launches whose addresses and strides are multiples of 16 take tiles
with 64 rows per warpgroup (_HOPPER_SPACE), so the dots run on warpgroup MMA (HGMMA) fed from
cp.async rings in shared memory; every other launch takes the sm_80-sized tiles (_SPACE).
With GPTK_TMA=1 those sm_90 launches (no kv_lengths; not the D = 256 dK/dV) fill the rings by
TMA from per-head tensor descriptors made in the kernel instead (opt-in until timed on a GPU).

Strides: any strides with a unit-stride last dim (transposed views of a fused qkv
projection, slices of a preallocated KV cache) run without a copy; q, k or v with a
non-unit last-dim stride is a ValueError (never a silent copy). Outputs are laid out (B, Tq, H, D) in memory (returned as the
(B, H, Tq, D) view), so the model's transpose back to (B, T, C) is free.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import math

import torch
import triton
import triton.language as tl

from . import _launch as _fast
from .. import _checks
from .. import _backend
from .._backend import autotune_enabled, triton_interpreting

INTERPRETING = triton_interpreting()
# Tensor-memory copies (TMA) for the sm_90 tiles' loads: GPTK_TMA=1 (kernels._backend).
TMA = _backend.tma_requested()

# -----------------------------------------------------------------------------------------
# Kernels
# -----------------------------------------------------------------------------------------


@triton.jit
def _head(H):
    """(b, h, b * H + h) of this program: grid axes 1 and 2 are head and batch."""
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    return b, h, b * H + h


@triton.jit
def _keys(Tk, lengths_ptr, b, HAS_LENGTHS: tl.constexpr):
    """Keys sequence b attends to: its kv_lengths entry, read on the device (a captured CUDA
    graph replays it with new lengths; the grid and key split depend only on Tk), at most Tk
    and at least 0 so a bad length cannot read outside it; Tk without lengths."""
    if HAS_LENGTHS:
        return tl.maximum(tl.minimum(tl.load(lengths_ptr + b).to(tl.int32), Tk), 0)
    else:
        return Tk


@triton.jit
def _nonzero(l):
    """The softmax denominator to divide by: 1 for a row that saw no key (its sum is 0, and so
    is its accumulator; kv_lengths[b] < Tq, or a bad length), so the row comes out 0, as
    PyTorch's SDPA gives it, with lse -inf; NaN stays NaN."""
    return tl.where(l == 0.0, 1.0, l)


@triton.jit
def _row_mask(ok, offs_d, D, EVEN_D: tl.constexpr):
    """(rows, BLOCK_D) mask: row `ok` and, unless the head dim fills BLOCK_D, column < D."""
    if EVEN_D:
        return ok[:, None]
    else:
        return ok[:, None] & (offs_d[None, :] < D)


@triton.jit
def _load_rows(base, rows, stride, ok, D, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr):
    """The (len(rows), BLOCK_D) tile of rows `stride` apart; rows not `ok` and the padding
    columns >= D read as 0."""
    offs_d = tl.arange(0, BLOCK_D)
    return tl.load(base + rows[:, None] * stride + offs_d[None, :], mask=_row_mask(ok, offs_d, D, EVEN_D), other=0.0)


@triton.jit
def _store_rows(base, rows, stride, ok, value, D, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr):
    offs_d = tl.arange(0, BLOCK_D)
    tl.store(base + rows[:, None] * stride + offs_d[None, :], value.to(base.dtype.element_ty),
             mask=_row_mask(ok, offs_d, D, EVEN_D))


@triton.jit
def _load_keys(base, cols, stride, key_end, offs_d, D, MASKED: tl.constexpr, EVEN_D: tl.constexpr,
               TRANS: tl.constexpr):
    """A K or V tile of the keys `cols`: (BLOCK_D, BLOCK_N) if TRANS else (BLOCK_N, BLOCK_D).
    MASKED tiles zero keys >= key_end; a head dim short of BLOCK_D zeroes the padding."""
    if TRANS:
        ptrs = base + cols[None, :] * stride + offs_d[:, None]
        key_ok = cols[None, :] < key_end
        d_ok = offs_d[:, None] < D
    else:
        ptrs = base + cols[:, None] * stride + offs_d[None, :]
        key_ok = cols[:, None] < key_end
        d_ok = offs_d[None, :] < D
    if MASKED:
        if EVEN_D:
            return tl.load(ptrs, mask=key_ok, other=0.0)
        else:
            return tl.load(ptrs, mask=key_ok & d_ok, other=0.0)
    else:
        if EVEN_D:
            return tl.load(ptrs)
        else:
            return tl.load(ptrs, mask=d_ok, other=0.0)


@triton.jit
def _causal_key_bounds(start_m, Tq, Tk, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """For the query block starting at start_m: (full_hi, hi). Key tiles below full_hi are
    visible to every row and in bounds (no mask); tiles in [full_hi, hi) need the mask;
    keys from hi on are masked for every row, so those tiles are skipped."""
    if CAUSAL:
        first_pos = start_m + Tk - Tq
        full_hi = tl.minimum(first_pos + 1, Tk)
        hi = tl.minimum(first_pos + BLOCK_M, Tk)
    else:
        full_hi = Tk
        hi = Tk
    return (full_hi // BLOCK_N) * BLOCK_N, hi


@triton.jit
def _visible(cols, q_pos, key_end, CAUSAL: tl.constexpr):
    """(rows, keys) mask: key in bounds and, if CAUSAL, not after the row's position."""
    visible = cols[None, :] < key_end
    if CAUSAL:
        visible = visible & (cols[None, :] <= q_pos[:, None])
    return visible


@triton.jit
def _fwd_tiles(acc, m_i, l_i, q, k_base, v_base, stride_kn, stride_vn, q_pos, lo, hi, key_end, qk_scale, D,
               MASKED: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
               BLOCK_N: tl.constexpr, TMA: tl.constexpr = False):
    """Online-softmax update of (acc, m_i, l_i) with keys [lo, hi). MASKED tiles mask keys
    >= key_end and, if CAUSAL, keys after each row's position q_pos. TMA: k_base and v_base
    are this head's (keys, D) tensor descriptors, whose copies zero keys >= Tk and the head
    dim's padding in hardware (no per-thread addresses or masks)."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        if TMA:
            kt = tl.trans(k_base.load([start_n, 0]))
        else:
            kt = _load_keys(k_base, cols, stride_kn, key_end, offs_d, D, MASKED, EVEN_D, True)  # (BLOCK_D, BLOCK_N)
        qk = tl.dot(q, kt, input_precision="ieee") * qk_scale
        if MASKED:
            qk = tl.where(_visible(cols, q_pos, key_end, CAUSAL), qk, -float("inf"))
        m_new = tl.maximum(m_i, tl.max(qk, axis=1))
        # A row that has seen only masked keys keeps m = -inf; shift by 0 to avoid inf - inf.
        m_use = tl.where(m_new == -float("inf"), 0.0, m_new)
        p = tl.exp2(qk - m_use[:, None])
        alpha = tl.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if TMA:
            v = v_base.load([start_n, 0])
        else:
            v = _load_keys(v_base, cols, stride_vn, key_end, offs_d, D, MASKED, EVEN_D, False)  # (BLOCK_N, BLOCK_D)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision="ieee")
        m_i = m_new
    return acc, m_i, l_i


@_fast.jit(do_not_specialize=["D8"])
def _attn_fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, lengths_ptr,
                     stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                     stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om,
                     H, Tq, Tk, qk_scale, D8, TQ_BUCKET, TK_BUCKET,
                     BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, CAUSAL: tl.constexpr,
                     HAS_LENGTHS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     TMA: tl.constexpr = False):
    """One program per (BLOCK_M queries, batch*head): streams the visible K/V tiles, writes
    o and lse2. The head dim is D = 8 * D8 (so the compiler knows it is a multiple of 8)
    padded to BLOCK_D; TQ_BUCKET/TK_BUCKET only key the autotuner. HAS_LENGTHS: sequence b
    has lengths_ptr[b] keys (queries end-aligned to them), else Tk (lengths_ptr is None).
    TMA (sm_90, 16-byte aligned heads and rows, no lengths): q, K and V tiles arrive by
    tensor-memory copies from per-head descriptors made here (the launcher provides their
    global scratch), which zero rows past Tq/Tk and columns past D."""
    D = D8 * 8
    start_m = tl.program_id(0) * BLOCK_M
    b, h, bh = _head(H)
    Tk = _keys(Tk, lengths_ptr, b, HAS_LENGTHS)
    q_base = q_ptr + b * stride_qb + h * stride_qh
    k_base = k_ptr + b * stride_kb + h * stride_kh
    v_base = v_ptr + b * stride_vb + h * stride_vh
    offs_m = start_m + tl.arange(0, BLOCK_M)
    row_ok = offs_m < Tq
    if TMA:
        q = tl.make_tensor_descriptor(q_base, [Tq, D], [stride_qm, 1], [BLOCK_M, BLOCK_D]).load([start_m, 0])
        k_base = tl.make_tensor_descriptor(k_base, [Tk, D], [stride_kn, 1], [BLOCK_N, BLOCK_D])
        v_base = tl.make_tensor_descriptor(v_base, [Tk, D], [stride_vn, 1], [BLOCK_N, BLOCK_D])
    else:
        q = _load_rows(q_base, offs_m, stride_qm, row_ok, D, BLOCK_D, EVEN_D)
    q_pos = offs_m + (Tk - Tq)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], -float("inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    full_hi, hi = _causal_key_bounds(start_m, Tq, Tk, CAUSAL, BLOCK_M, BLOCK_N)
    if HAS_LENGTHS:  # rows before a short length's first key: no unmasked tiles, none at negative keys
        full_hi = tl.maximum(full_hi, 0)
    acc, m_i, l_i = _fwd_tiles(acc, m_i, l_i, q, k_base, v_base, stride_kn, stride_vn, q_pos, 0, full_hi, Tk,
                               qk_scale, D, False, CAUSAL, BLOCK_D, EVEN_D, BLOCK_N, TMA)
    acc, m_i, l_i = _fwd_tiles(acc, m_i, l_i, q, k_base, v_base, stride_kn, stride_vn, q_pos, full_hi, hi, Tk,
                               qk_scale, D, True, CAUSAL, BLOCK_D, EVEN_D, BLOCK_N, TMA)
    o = acc / _nonzero(l_i)[:, None]
    _store_rows(o_ptr + b * stride_ob + h * stride_oh, offs_m, stride_om, row_ok, o, D, BLOCK_D, EVEN_D)
    tl.store(lse_ptr + bh * Tq + offs_m, m_i + tl.log2(l_i), mask=row_ok)


@_fast.jit(do_not_specialize=["D8"])
def _attn_fwd_split_kernel(q_ptr, k_ptr, v_ptr, o_part_ptr, lse_part_ptr, lengths_ptr,
                           stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                           stride_vb, stride_vh, stride_vn,
                           H, Tq, Tk, qk_scale, D8, chunk, n_splits, TQ_BUCKET, TK_BUCKET,
                           BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, CAUSAL: tl.constexpr,
                           HAS_LENGTHS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Flash-decoding: program (split, batch*head) attends all Tq (<= BLOCK_M) queries to
    keys [split * chunk, (split + 1) * chunk) and writes an fp32 partial o and its lse2
    (-inf, o = 0 for a row that sees none of those keys, or a split wholly past the
    sequence's kv_lengths entry: the split is cut from the static Tk)."""
    D = D8 * 8
    split = tl.program_id(0)
    b, h, bh = _head(H)
    Tk = _keys(Tk, lengths_ptr, b, HAS_LENGTHS)
    q_base = q_ptr + b * stride_qb + h * stride_qh
    k_base = k_ptr + b * stride_kb + h * stride_kh
    v_base = v_ptr + b * stride_vb + h * stride_vh
    offs_m = tl.arange(0, BLOCK_M)
    row_ok = offs_m < Tq
    q = _load_rows(q_base, offs_m, stride_qm, row_ok, D, BLOCK_D, EVEN_D)
    q_pos = offs_m + (Tk - Tq)
    lo = split * chunk
    hi = tl.minimum(lo + chunk, Tk)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], -float("inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc, m_i, l_i = _fwd_tiles(acc, m_i, l_i, q, k_base, v_base, stride_kn, stride_vn, q_pos, lo, hi, hi,
                               qk_scale, D, True, CAUSAL, BLOCK_D, EVEN_D, BLOCK_N)
    seen = l_i > 0.0
    l_safe = tl.where(seen, l_i, 1.0)
    o = acc / l_safe[:, None]
    lse = tl.where(seen, m_i + tl.log2(l_safe), -float("inf"))
    part = bh * n_splits + split
    _store_rows(o_part_ptr + part * Tq * D, offs_m, D, row_ok, o, D, BLOCK_D, EVEN_D)
    tl.store(lse_part_ptr + part * Tq + offs_m, lse, mask=row_ok)


@_fast.jit(do_not_specialize=["D8", "n_splits"])
def _attn_decode_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, o_part_ptr, lse_part_ptr, lengths_ptr,
                        stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                        stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om,
                        H, Tq, Tk, qk_scale, D8, chunk, n_splits,
                        BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, TQ: tl.constexpr, BLOCK_N: tl.constexpr,
                        HAS_LENGTHS: tl.constexpr):
    """Decode, GEMV-shaped: program (split, head, batch) holds its Tq <= TQ (<= DECODE_GEMV_TQ)
    query rows in registers, with no 16-row MMA tile to fill, and streams the keys
    [split * chunk, + chunk) in tiles of BLOCK_N keys spread over its warps, K and V of a
    tile loaded together (16-byte loads along D); scores and P V are fp32 FMAs.

    Each of the BLOCK_N key slots (and query row) keeps its own online softmax (max, sum,
    o) over the keys slot, slot + BLOCK_N, ...: per tile the only reduction is each score's
    dot over D, none across keys, warps or shared memory; the slots merge once at the end
    (as flash-decoding's splits do). n_splits > 1: keys cut across programs too (B H cannot
    fill the GPU), each writing a partial (o, lse2) that _attn_combine_kernel merges;
    otherwise this one launch writes o and lse2. The head dim is always masked (D = 8 * D8
    keeps 16-byte vectors): one binary per (BLOCK_D, TQ, HAS_LENGTHS). HAS_LENGTHS: as in
    _attn_fwd_kernel; a split wholly past the sequence's length writes the empty partial."""
    D = D8 * 8
    split = tl.program_id(0)
    b, h, bh = _head(H)
    Tk = _keys(Tk, lengths_ptr, b, HAS_LENGTHS)
    offs_m = tl.arange(0, TQ)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < Tq
    q = _load_rows(q_ptr + b * stride_qb + h * stride_qh, offs_m, stride_qm, row_ok, D, BLOCK_D, False)
    q = q.to(tl.float32)[:, None, :]                                              # (TQ, 1, BLOCK_D)
    k_base = k_ptr + b * stride_kb + h * stride_kh
    v_base = v_ptr + b * stride_vb + h * stride_vh
    q_pos = offs_m + (Tk - Tq)
    lo = split * chunk
    hi = tl.minimum(lo + chunk, Tk)
    acc = tl.zeros([TQ, BLOCK_N, BLOCK_D], dtype=tl.float32)
    m_s = tl.full([TQ, BLOCK_N], -float("inf"), dtype=tl.float32)
    l_s = tl.zeros([TQ, BLOCK_N], dtype=tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        k = _load_keys(k_base, cols, stride_kn, hi, offs_d, D, True, False, False)  # (BLOCK_N, BLOCK_D)
        v = _load_keys(v_base, cols, stride_vn, hi, offs_d, D, True, False, False)
        qk = tl.sum(q * k.to(tl.float32)[None, :, :], axis=2) * qk_scale          # (TQ, BLOCK_N)
        # One row (TQ = 1 means Tq = 1) sits at the last key: causal hides nothing below hi.
        qk = tl.where(_visible(cols, q_pos, hi, CAUSAL and TQ > 1), qk, -float("inf"))
        m_new = tl.maximum(m_s, qk)
        m_use = tl.where(m_new == -float("inf"), 0.0, m_new)  # a slot that has seen no key yet
        alpha = tl.exp2(m_s - m_use)
        p = tl.exp2(qk - m_use)
        l_s = l_s * alpha + p
        acc = acc * alpha[:, :, None] + p[:, :, None] * v.to(tl.float32)[None, :, :]
        m_s = m_new
    # Merge the slots: weights 2^(m_slot - m) (0 for a slot that saw no key).
    m_i = tl.max(m_s, axis=1)
    m_use = tl.where(m_i == -float("inf"), 0.0, m_i)
    w = tl.exp2(m_s - m_use[:, None])
    l_i = tl.sum(l_s * w, axis=1)
    o = tl.sum(acc * w[:, :, None], axis=1)                                        # (TQ, BLOCK_D)
    if n_splits > 1:
        seen = l_i > 0.0
        l_safe = tl.where(seen, l_i, 1.0)
        part = bh * n_splits + split
        _store_rows(o_part_ptr + part * Tq * D, offs_m, D, row_ok, o / l_safe[:, None], D, BLOCK_D, False)
        tl.store(lse_part_ptr + part * Tq + offs_m, tl.where(seen, m_i + tl.log2(l_safe), -float("inf")),
                 mask=row_ok)
    else:
        _store_rows(o_ptr + b * stride_ob + h * stride_oh, offs_m, stride_om, row_ok, o / _nonzero(l_i)[:, None], D,
                    BLOCK_D, False)
        tl.store(lse_ptr + bh * Tq + offs_m, m_i + tl.log2(l_i), mask=row_ok)


@_fast.jit(do_not_specialize=["D8"])
def _attn_combine_kernel(o_part_ptr, lse_part_ptr, o_ptr, lse_ptr, stride_ob, stride_oh, stride_om,
                         H, Tq, n_splits, D8, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr):
    """One program per (query row, batch*head): o = sum_s 2^(lse_s - lse) o_s over the
    splits, lse = log2(sum_s 2^lse_s). Reads n_splits * (D + 1) fp32 values per row."""
    D = D8 * 8
    m = tl.program_id(0)
    b, h, bh = _head(H)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    lse_row = lse_part_ptr + bh * n_splits * Tq + m
    run_max = tl.full([BLOCK_S], -float("inf"), dtype=tl.float32)
    for s0 in range(0, n_splits, BLOCK_S):
        lse_s = tl.load(lse_row + (s0 + offs_s) * Tq, mask=s0 + offs_s < n_splits, other=-float("inf"))
        run_max = tl.maximum(run_max, lse_s)
    top = tl.max(run_max, axis=0)
    top = tl.where(top == -float("inf"), 0.0, top)  # no split saw a key: weights 0, o = 0
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    total = tl.zeros([BLOCK_S], dtype=tl.float32)
    for s0 in range(0, n_splits, BLOCK_S):
        ok = s0 + offs_s < n_splits
        lse_s = tl.load(lse_row + (s0 + offs_s) * Tq, mask=ok, other=-float("inf"))
        w = tl.exp2(lse_s - top)
        o_s = tl.load(o_part_ptr + ((bh * n_splits + s0 + offs_s[:, None]) * Tq + m) * D + offs_d[None, :],
                      mask=ok[:, None] & (offs_d[None, :] < D), other=0.0)
        acc += tl.sum(w[:, None] * o_s, axis=0)
        total += w
    l = tl.sum(total, axis=0)
    o = acc / _nonzero(l)
    tl.store(o_ptr + b * stride_ob + h * stride_oh + m * stride_om + offs_d, o.to(o_ptr.dtype.element_ty),
             mask=offs_d < D)
    tl.store(lse_ptr + bh * Tq + m, top + tl.log2(l))


@_fast.jit(do_not_specialize=["D8"])
def _attn_bwd_preprocess_kernel(o_ptr, do_ptr, delta_ptr, stride_ob, stride_oh, stride_om,
                                stride_dob, stride_doh, stride_dom, H, Tq, D8,
                                BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta = rowsum(do * o) in fp32: the softmax-backward term, one read of o and do."""
    D = D8 * 8
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    b, h, bh = _head(H)
    row_ok = offs_m < Tq
    o = _load_rows(o_ptr + b * stride_ob + h * stride_oh, offs_m, stride_om, row_ok, D, BLOCK_D, False)
    do = _load_rows(do_ptr + b * stride_dob + h * stride_doh, offs_m, stride_dom, row_ok, D, BLOCK_D, False)
    o, do = o.to(tl.float32), do.to(tl.float32)
    tl.store(delta_ptr + bh * Tq + offs_m, tl.sum(o * do, axis=1), mask=row_ok)


@triton.jit
def _bwd_dkdv_tiles(dk, dv, k, v, q_base, do_base, lse_row, delta_row, stride_qm, stride_dom,
                    key_pos, shift, lo, hi, Tq, qk_scale, D,
                    MASKED: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, BLOCK_M: tl.constexpr,
                    TMA: tl.constexpr = False):
    """Accumulate dk (unscaled) and dv of one key block over the query blocks in [lo, hi),
    transposed (keys x queries) so both products land in (BLOCK_N, D) without a transpose
    of the accumulators. MASKED applies the causal mask (key <= shift + query). TMA: q_base
    and do_base are this head's (queries, D) tensor descriptors."""
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < Tq
        if TMA:
            q = q_base.load([start_m, 0])
            do = do_base.load([start_m, 0])
        else:
            q = _load_rows(q_base, offs_m, stride_qm, row_ok, D, BLOCK_D, EVEN_D)
            do = _load_rows(do_base, offs_m, stride_dom, row_ok, D, BLOCK_D, EVEN_D)
        # Rows past Tq read lse = +inf: their probabilities are exactly 0.
        lse = tl.load(lse_row + offs_m, mask=row_ok, other=float("inf"))
        delta = tl.load(delta_row + offs_m, mask=row_ok, other=0.0)
        pt = tl.exp2(tl.dot(k, tl.trans(q), input_precision="ieee") * qk_scale - lse[None, :])  # (BLOCK_N, BLOCK_M)
        if MASKED:
            pt = tl.where(key_pos[:, None] <= (offs_m + shift)[None, :], pt, 0.0)
        dv = tl.dot(pt.to(do.dtype), do, dv, input_precision="ieee")
        if q.dtype == tl.float32:  # IEEE dots on the FMA units: the plain form keeps fewer registers
            dst = pt * (tl.dot(v, tl.trans(do), input_precision="ieee") - delta[None, :])
        else:  # dP^T - delta with -delta as the accumulator's start: delta is not live during the MMA
            dst = pt * tl.dot(v, tl.trans(do), tl.zeros_like(pt) - delta[None, :], input_precision="ieee")
        dk = tl.dot(dst.to(q.dtype), q, dk, input_precision="ieee")
    return dk, dv


@_fast.jit(do_not_specialize=["D8"])
def _attn_bwd_dkdv_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
                          stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                          stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_dom,
                          stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn,
                          H, Tq, Tk, qk_scale, scale, D8, TQ_BUCKET, TK_BUCKET,
                          BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, CAUSAL: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TMA: tl.constexpr = False):
    """One program per (BLOCK_N keys, head, batch): k and v stay on chip while the query
    blocks that see them stream past; dk and dv are written once (no atomics). TMA: k, v,
    and the q and do tiles arrive by tensor-memory copies (as in _attn_fwd_kernel)."""
    D = D8 * 8
    start_n = tl.program_id(0) * BLOCK_N
    b, h, bh = _head(H)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    key_ok = offs_n < Tk
    q_base = q_ptr + b * stride_qb + h * stride_qh
    do_base = do_ptr + b * stride_dob + h * stride_doh
    if TMA:
        k = tl.make_tensor_descriptor(k_ptr + b * stride_kb + h * stride_kh, [Tk, D], [stride_kn, 1],
                                      [BLOCK_N, BLOCK_D]).load([start_n, 0])
        v = tl.make_tensor_descriptor(v_ptr + b * stride_vb + h * stride_vh, [Tk, D], [stride_vn, 1],
                                      [BLOCK_N, BLOCK_D]).load([start_n, 0])
        q_base = tl.make_tensor_descriptor(q_base, [Tq, D], [stride_qm, 1], [BLOCK_M, BLOCK_D])
        do_base = tl.make_tensor_descriptor(do_base, [Tq, D], [stride_dom, 1], [BLOCK_M, BLOCK_D])
    else:
        k = _load_rows(k_ptr + b * stride_kb + h * stride_kh, offs_n, stride_kn, key_ok, D, BLOCK_D, EVEN_D)
        v = _load_rows(v_ptr + b * stride_vb + h * stride_vh, offs_n, stride_vn, key_ok, D, BLOCK_D, EVEN_D)
    lse_row = lse_ptr + bh * Tq
    delta_row = delta_ptr + bh * Tq
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    shift = Tk - Tq
    if CAUSAL:
        # Query blocks before lo see none of these keys; from full_lo on they see all of them.
        lo = (tl.maximum(start_n - shift, 0) // BLOCK_M) * BLOCK_M
        full_lo = tl.cdiv(tl.maximum(start_n + BLOCK_N - 1 - shift, 0), BLOCK_M) * BLOCK_M
        dk, dv = _bwd_dkdv_tiles(dk, dv, k, v, q_base, do_base, lse_row, delta_row, stride_qm, stride_dom,
                                 offs_n, shift, lo, tl.minimum(full_lo, Tq), Tq, qk_scale, D, True, BLOCK_D, EVEN_D,
                                 BLOCK_M, TMA)
    else:
        full_lo = 0
    dk, dv = _bwd_dkdv_tiles(dk, dv, k, v, q_base, do_base, lse_row, delta_row, stride_qm, stride_dom,
                             offs_n, shift, full_lo, Tq, Tq, qk_scale, D, False, BLOCK_D, EVEN_D, BLOCK_M, TMA)
    _store_rows(dk_ptr + b * stride_dkb + h * stride_dkh, offs_n, stride_dkn, key_ok, dk * scale, D, BLOCK_D,
                EVEN_D)
    _store_rows(dv_ptr + b * stride_dvb + h * stride_dvh, offs_n, stride_dvn, key_ok, dv, D, BLOCK_D, EVEN_D)


@triton.jit
def _bwd_dq_tiles(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_vn, q_pos, lo, hi, key_end, qk_scale, D,
                  MASKED: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
                  BLOCK_N: tl.constexpr, TMA: tl.constexpr = False):
    """Accumulate dq (unscaled) of one query block over the key tiles in [lo, hi). TMA:
    k_base and v_base are this head's (keys, D) tensor descriptors."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        if TMA:
            kt = tl.trans(k_base.load([start_n, 0]))
            vt = tl.trans(v_base.load([start_n, 0]))
        else:
            kt = _load_keys(k_base, cols, stride_kn, key_end, offs_d, D, MASKED, EVEN_D, True)  # (BLOCK_D, BLOCK_N)
            vt = _load_keys(v_base, cols, stride_vn, key_end, offs_d, D, MASKED, EVEN_D, True)
        p = tl.exp2(tl.dot(q, kt, input_precision="ieee") * qk_scale - lse[:, None])
        if MASKED:
            p = tl.where(_visible(cols, q_pos, key_end, CAUSAL), p, 0.0)
        dp = tl.dot(do, vt, input_precision="ieee")
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(kt.dtype), tl.trans(kt), dq, input_precision="ieee")
    return dq


@_fast.jit(do_not_specialize=["D8"])
def _attn_bwd_dq_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
                        stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                        stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_dom,
                        stride_dqb, stride_dqh, stride_dqm,
                        H, Tq, Tk, qk_scale, scale, D8, TQ_BUCKET, TK_BUCKET,
                        BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, CAUSAL: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TMA: tl.constexpr = False):
    """One program per (BLOCK_M queries, head, batch): q, do, lse, delta stay on chip while
    the visible K/V tiles stream past, as in the forward (TMA as there)."""
    D = D8 * 8
    start_m = tl.program_id(0) * BLOCK_M
    b, h, bh = _head(H)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    row_ok = offs_m < Tq
    q_base = q_ptr + b * stride_qb + h * stride_qh
    do_base = do_ptr + b * stride_dob + h * stride_doh
    k_base = k_ptr + b * stride_kb + h * stride_kh
    v_base = v_ptr + b * stride_vb + h * stride_vh
    if TMA:
        q = tl.make_tensor_descriptor(q_base, [Tq, D], [stride_qm, 1], [BLOCK_M, BLOCK_D]).load([start_m, 0])
        do = tl.make_tensor_descriptor(do_base, [Tq, D], [stride_dom, 1], [BLOCK_M, BLOCK_D]).load([start_m, 0])
        k_base = tl.make_tensor_descriptor(k_base, [Tk, D], [stride_kn, 1], [BLOCK_N, BLOCK_D])
        v_base = tl.make_tensor_descriptor(v_base, [Tk, D], [stride_vn, 1], [BLOCK_N, BLOCK_D])
    else:
        q = _load_rows(q_base, offs_m, stride_qm, row_ok, D, BLOCK_D, EVEN_D)
        do = _load_rows(do_base, offs_m, stride_dom, row_ok, D, BLOCK_D, EVEN_D)
    lse = tl.load(lse_ptr + bh * Tq + offs_m, mask=row_ok, other=float("inf"))
    delta = tl.load(delta_ptr + bh * Tq + offs_m, mask=row_ok, other=0.0)
    q_pos = offs_m + (Tk - Tq)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    full_hi, hi = _causal_key_bounds(start_m, Tq, Tk, CAUSAL, BLOCK_M, BLOCK_N)
    dq = _bwd_dq_tiles(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_vn, q_pos, 0, full_hi, Tk,
                       qk_scale, D, False, CAUSAL, BLOCK_D, EVEN_D, BLOCK_N, TMA)
    dq = _bwd_dq_tiles(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_vn, q_pos, full_hi, hi, Tk,
                       qk_scale, D, True, CAUSAL, BLOCK_D, EVEN_D, BLOCK_N, TMA)
    _store_rows(dq_ptr + b * stride_dqb + h * stride_dqh, offs_m, stride_dqm, row_ok, dq * scale, D, BLOCK_D,
                EVEN_D)


# -----------------------------------------------------------------------------------------
# Launch configurations and launchers
# -----------------------------------------------------------------------------------------

DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
# Head dims: every multiple of 8 from 8 to 256, padded to BLOCK_D, the next power of two
# >= max(D, 16) (tl.dot needs 16); the padding columns load as 0 and are never stored.
# A kernel is compiled per (BLOCK_D, EVEN_D = D == BLOCK_D): D itself is a runtime
# argument, so these classes are every binary the launchers can make.
BLOCK_DS = (16, 32, 64, 128, 256)
MAX_HEAD_DIM = 256


def block_d(head_dim: int) -> int:
    return max(16, _fast.next_power_of_2(head_dim))


# Tuning space per kernel, as (BLOCK_M, BLOCK_N, num_warps, num_stages), for 16-bit and
# fp32 inputs and small (BLOCK_D <= 64), large (128) or huge (256) head dims. fp32 runs
# IEEE dots on the FMA units: smaller tiles. Each list is what the autotuner tries for that
# (dtype, BLOCK_D). Every entry compiles without register spills for sm_80 and sm_90,
# every BLOCK_D and dtype of its class, padded or not (kernels.triton.compile_check): the
# D=128 and backward tiles take 8 warps or smaller tiles rather than spill.
_SPACE = {
    "fwd": {("16", "small"): [(128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 4)],
            ("16", "large"): [(128, 64, 8, 3), (64, 64, 8, 3), (64, 32, 4, 3)],
            ("32", "small"): [(64, 32, 8, 2)],
            ("32", "large"): [(32, 16, 8, 2)],
            # (32, 32, 8, 2) spills 8 B on sm_80 when the strides are multiples of 16
            ("16", "huge"): [(64, 16, 8, 2)],
            ("32", "huge"): [(16, 16, 4, 2)]},  # (16, 32, 8, 2) and (16, 16, 8, 2) spill
    # 32-query tiles spill at D = 8 on sm_80; 16 x 128 on 8 warps with 2-3 stages spills 8-16 B
    # on sm_80 at a padded D = 24 (causal): ptxas holds it to 128 registers
    "dkdv": {("16", "small"): [(16, 64, 4, 3), (16, 128, 8, 1)],
             ("16", "large"): [(64, 32, 8, 3), (32, 32, 8, 3)],
             ("32", "small"): [(32, 32, 8, 2)],
             ("32", "large"): [(16, 32, 8, 2), (32, 16, 8, 2)],
             ("16", "huge"): [(32, 32, 8, 2), (16, 32, 8, 2)],
             # 2 stages: 1 spills 8 B on sm_80 at D = 256 (causal, sizes multiples of 16)
             ("32", "huge"): [(16, 16, 8, 2)]},
    # (128, 64, 8, 3) spilled 64 B on sm_80 at D = 64 when the strides are multiples of 16
    "dq": {("16", "small"): [(128, 32, 8, 3), (64, 32, 4, 3)],
           ("16", "large"): [(32, 64, 8, 2), (32, 32, 8, 3)],
           # 32 queries: 64 x 32 on 8 warps spills 8 B on sm_80 at a padded D of 32 (non-causal);
           # the key tile (the bytes streamed per step) stays 32 wide.
           ("32", "small"): [(32, 32, 8, 2), (32, 32, 4, 2)],
           # 16 queries: 32 x 32 spills 184 B on sm_90 at D = 128 with every stride and size a
           # multiple of 16 (the 32-key tile streamed per step unchanged)
           ("32", "large"): [(16, 32, 8, 2), (32, 16, 8, 2)],
           ("16", "huge"): [(32, 16, 8, 2), (16, 32, 8, 2)],
           # the one-stage tile on 8 warps: on 4 it spills 8 B on sm_80 at a padded D (non-causal)
           ("32", "huge"): [(16, 16, 4, 2), (16, 16, 8, 1)]},
    # flash-decoding: BLOCK_M holds all DECODE_MAX_TQ query rows; only the key tile is tuned
    # 16 x 64 on 4 warps (2-4 stages) or 8 spills 8 B on sm_90 at a padded D = 8 (causal):
    # ptxas stops at 96 or 80 registers there
    "split": {("16", "small"): [(16, 128, 8, 3), (16, 128, 8, 2)],
              # 8 warps: (16, 64, 4, 3) spills 8 B on sm_90 at a padded D = 128 (causal)
              ("16", "large"): [(16, 64, 8, 3), (16, 64, 8, 4), (16, 32, 4, 3)],
              ("32", "small"): [(16, 64, 8, 2)],  # 4 warps spill 8 B on sm_80 at a padded D = 64
              ("32", "large"): [(16, 16, 4, 2)],
              # 8 warps: (16, 32, 4, 2) spills 8 B on sm_80 at a padded D (bf16, non-causal);
              # (16, 64, 8, 2 or 1) 8 B on sm_90 at a padded D (causal)
              ("16", "huge"): [(16, 32, 8, 2)],
              ("32", "huge"): [(16, 16, 4, 2), (16, 32, 8, 2)]},
}
# sm_90 (Hopper), 16-bit inputs, every pointer and stride a multiple of 16 (what `_hopper`
# checks: contiguous tensors and fused-qkv views when D is a multiple of 16). Every tile gives each warpgroup (4 warps) a 64-row slice of its MMAs' M dimension
# (queries in fwd/dq, keys in dK/dV), so tl.dot lowers to warpgroup MMA (HGMMA) with both
# operands or B read from shared memory, and the K/V (fwd, dQ) or Q/dO (dK/dV) tiles stream
# in through a cp.async ring of num_stages buffers. Only that specialisation is compiled for
# these tiles: with a stride not a multiple of 16, Triton loads tiles element by element
# through registers and the D = 128 dK/dV tiles spill. The D = 256 dK/dV keeps the sm_80
# tiles (two 64 x 256 fp32 accumulators per warpgroup would take all 255 registers).
_HOPPER_SPACE = {
    "fwd": {"small": [(128, 128, 8, 3), (128, 64, 8, 3), (64, 128, 4, 3), (64, 64, 4, 4)],
            "large": [(128, 128, 8, 2), (128, 64, 8, 3), (64, 64, 4, 3)],
            "huge": [(128, 64, 8, 2), (64, 32, 4, 3)]},
    "dkdv": {"small": [(64, 128, 8, 3), (32, 128, 8, 3), (64, 64, 4, 3)],
             # 64 x 128 (2 or 1 stages) spills 8-16 B causal with Triton 3.8 when Tq, Tk and
             # the head dim are multiples of 16 too (as launches specialise them; 40 B with 3.6)
             "large": [(32, 128, 8, 2), (32, 128, 8, 3)]},
    "dq": {"small": [(128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3)],
           "large": [(128, 64, 8, 2), (128, 32, 8, 3), (64, 64, 4, 3)],
           "huge": [(128, 32, 8, 2)]},
}
# kv_lengths builds (a prompt into a static cache, flash-decoding over one) hold the length
# read on the device in a register where the others read Tk from the parameter bank: at these
# classes the tiles above then spill 8-16 B on sm_80 or sm_90 (fp32 64 x 32: 16 B at padded
# D; 16-bit 64 x 64 x 4 warps and 128 x 128 at D = 32-64, non-causal, sm_80; split fp32 16 x 64
# on 8 warps, padded D = 32). These replace them; the other classes keep their lists.
_LENGTHS_SPACE = {
    "fwd": {("16", "small"): [(128, 64, 8, 3), (64, 32, 4, 3)],
            ("32", "small"): [(32, 32, 4, 2)]},
    "split": {("32", "small"): [(16, 64, 4, 2)]},
}
# Under the interpreter (no driver, no autotuning): one fixed, deliberately unequal tiling,
# so the causal tile bounds are exercised with BLOCK_M != BLOCK_N.
_INTERPRETER = {"fwd": (64, 32, 4, 1), "dkdv": (32, 64, 4, 1), "dq": (64, 32, 4, 1), "split": (16, 32, 4, 1)}

# Decode with Tq <= DECODE_GEMV_TQ takes the GEMV-shaped kernel (rows in registers); up to
# DECODE_MAX_TQ rows take flash-decoding on a 16-row MMA tile (the "split" kernel).
DECODE_GEMV_TQ = 4
DECODE_TILE_BYTES = 8192  # one K (and one V) tile of the GEMV decode kernel, for one query row
DECODE_MAX_TQ = 16    # query rows one flash-decoding program holds: every split config's BLOCK_M
# Keys per split are a multiple of this (a multiple of every split BLOCK_N), so tiles are whole.
DECODE_UNIT = 32 if INTERPRETING else 128
MAX_SPLITS = 256
COMBINE_BLOCK_S = 16
PRE_BLOCK_M = 64


def _pre_block_m(bd: int) -> int:
    return PRE_BLOCK_M if bd <= 128 else 16  # 64 rows of o and do at D = 256 spill
MAX_GRID_YZ = 65535  # heads and batches run on grid axes 1 and 2


def _space_key(dtype, head_dim: int) -> tuple[str, str]:
    name = dtype if isinstance(dtype, str) else DTYPE_NAMES[dtype]
    padded = block_d(head_dim)
    return ("32" if name == "fp32" else "16", "small" if padded <= 64 else "large" if padded <= 128 else "huge")


def configs_for(kind: str, dtype, head_dim: int, hopper: bool = False,
                lengths: bool = False) -> list[tuple[int, int, int, int]]:
    """The (BLOCK_M, BLOCK_N, num_warps, num_stages) a launch of `kind` may use for head dim D,
    in order of preference (the first is the one used with autotuning off); `hopper`: on sm_90
    with every pointer and stride a multiple of 16 (`_hopper`); `lengths`: with kv_lengths."""
    if INTERPRETING:
        return [_INTERPRETER[kind]]
    width, size = _space_key(dtype, head_dim)
    if hopper and width == "16" and size in _HOPPER_SPACE.get(kind, {}):
        return _HOPPER_SPACE[kind][size]
    if lengths and (width, size) in _LENGTHS_SPACE.get(kind, {}):
        return _LENGTHS_SPACE[kind][width, size]
    return _SPACE[kind][width, size]


@functools.lru_cache(maxsize=None)
def _capability(device_index: int) -> int:
    major, minor = torch.cuda.get_device_capability(device_index)
    return 10 * major + minor


def _arch(device: torch.device) -> int:
    """The compute capability (90 = sm_90) kernels for `device` are compiled for; 0 off GPU."""
    if device.type == "cuda":
        return _capability(device.index if device.index is not None else torch.cuda.current_device())
    if _backend.STUB_DRIVER:  # compiling for a stand-in GPU (benchmarks.stub_driver)
        return triton.runtime.driver.active.get_current_target().arch
    if device.type == "meta":  # the compile check recording one target's launches
        return _backend.META_ARCH
    return 0


def _aligned16(tensors, strides) -> bool:
    return all(t.data_ptr() % 16 == 0 for t in tensors) and all(s % 16 == 0 for s in strides)


def _hopper(device: torch.device, tensors, strides) -> bool:
    """Whether a launch takes the Hopper tiles: sm_90, every tensor's address 16-byte aligned
    and every stride a multiple of 16 elements, the specialisation Triton compiles those tiles
    in (the compile check compiles each launch as specialised)."""
    return _arch(device) == 90 and _aligned16(tensors, strides)


# Triton offsets each program's descriptor scratch in 32-bit arithmetic: at most 4
# descriptors of 128 B per program, for at most this many programs per launch.
TMA_MAX_PROGRAMS = 2 ** 31 // (4 * 128)


def _tma(hopper: bool, dtype, tensors, strides, programs: int, lengths: bool = False) -> bool:
    """Whether a forward/dK/dV/dQ launch of up to `programs` programs loads its tiles by TMA:
    asked for (TMA), the Hopper tiles of 16-bit inputs, whose alignment is TMA's (16-byte
    bases, 16-byte row strides), rows that advance (`strides` are (batch, head, row) triples:
    an expanded row stride of 0 keeps cp.async), no kv_lengths (a descriptor bounds a head at
    Tk, not at its length). Under the interpreter, any such layout (the tests run the TMA
    code path there)."""
    if not TMA or lengths or dtype == torch.float32 or programs > TMA_MAX_PROGRAMS:
        return False
    if not all(s > 0 for s in strides[2::3]):
        return False
    return hopper or (INTERPRETING and _aligned16(tensors, strides))


def _programs(B: int, H: int, T: int) -> int:
    # The most programs a tiled launch over T rows can have: the smallest tile is 32 rows.
    return B * H * _cdiv(T, 32)


def _bucket(n: int) -> int:
    # Autotune per power-of-two size class, not per length: decode grows Tk by one per step.
    return _fast.next_power_of_2(n)


def _tuned(kind: str, kernel, hopper: bool):
    """`kernel` autotuned over its (dtype, head dim) space (the Hopper one if `hopper`), keyed
    on the bucketed sizes and (implicitly, by the autotuner) the tensors' dtypes; the raw kernel
    under the interpreter. One autotuner per space: its cache key cannot tell them apart."""
    if INTERPRETING:
        return None
    every = {c for space in _SPACE[kind].values() for c in space}
    every |= {c for space in _HOPPER_SPACE.get(kind, {}).values() for c in space}
    every |= {c for space in _LENGTHS_SPACE.get(kind, {}).values() for c in space}
    table = {c: _as_config(c) for c in sorted(every)}

    def prune(configs, named_args, **kwargs):
        eligible = [table[c] for c in configs_for(kind, named_args["q_ptr"].dtype, 8 * named_args["D8"], hopper,
                                                  named_args.get("lengths_ptr") is not None)]
        return eligible if autotune_enabled() else eligible[:1]

    # TMA: absent from a launch without it (the autotuner skips key names not passed)
    key = ["TQ_BUCKET", "TK_BUCKET", "D8", "CAUSAL", "TMA"] + (["HAS_LENGTHS"] if kind in ("fwd", "split") else [])
    return triton.autotune(list(table.values()), key=key,
                           prune_configs_by={"early_config_prune": prune})(kernel)


def _as_config(c):
    return triton.Config({"BLOCK_M": c[0], "BLOCK_N": c[1]}, num_warps=c[2], num_stages=c[3])


_KERNELS = {"fwd": _attn_fwd_kernel, "split": _attn_fwd_split_kernel, "dkdv": _attn_bwd_dkdv_kernel,
            "dq": _attn_bwd_dq_kernel}
_TUNED = {(kind, hopper): _tuned(kind, kernel, hopper) for kind, kernel in _KERNELS.items()
          for hopper in (False, True)}


def _launch(kind, grid_of, args, configs=None, hopper=False, slots=None, tma=False, **constexprs):
    """Run kernel `kind`: with `configs[kind]` if given (tests pin tilings that way), else
    through its autotuner (over the Hopper space if `hopper`) on a GPU, else with the
    interpreter's one fixed config. With `slots`, returns the launch's replay (see
    _launch.launch; None when it cannot be formed): for an autotuned launch, of the
    configuration the autotuner just ran, so repeat calls skip the autotuner's Python too.
    `tma`: the kernel makes tensor descriptors; its launches and replay get device scratch."""
    if not tma:
        return _run(kind, grid_of, args, configs, hopper, slots, **constexprs)
    with _fast.device_scratch():  # replays of it need the same around them (attention_backward)
        return _run(kind, grid_of, args, configs, hopper, slots, TMA=True, **constexprs)


def _run(kind, grid_of, args, configs, hopper, slots, **constexprs):
    config = (configs or {}).get(kind)
    tuned = _TUNED[kind, hopper]
    if config is None and tuned is not None:
        tuned[lambda meta: grid_of(meta["BLOCK_M"], meta["BLOCK_N"])](*args, **constexprs)
        if slots is None:
            return None
        chosen = tuned.best_config  # the config that call launched, with its options in its order
        kwargs = {**constexprs, **chosen.all_kwargs()}
        return _fast.replay(_KERNELS[kind], grid_of(kwargs["BLOCK_M"], kwargs["BLOCK_N"]), args, kwargs, slots)
    block_m, block_n, warps, stages = config or _INTERPRETER[kind]
    return _fast.launch(_KERNELS[kind], grid_of(block_m, block_n), args,
                        dict(**constexprs, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=stages),
                        slots)


def empty_bthd(shape, dtype, device) -> torch.Tensor:
    """A (B, H, T, D) tensor laid out as (B, T, H, D): the layout of every output here."""
    B, H, T, D = shape
    return torch.empty(B, T, H, D, dtype=dtype, device=device).transpose(1, 2)


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    # Only for tensors autograd hands the backward (an incoming gradient may be expanded or
    # transposed): user inputs with a strided last dim are refused, not copied.
    return t if t.stride(-1) == 1 else t.contiguous()


def _head_dim_args(D: int, causal: bool, configs) -> dict:
    return dict(BLOCK_D=block_d(D), EVEN_D=D == block_d(D), CAUSAL=causal, configs=configs)


def _bhm(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    if _backend.STUB_DRIVER:  # compiling for a stand-in GPU (benchmarks.stub_driver): its SMs
        return triton.runtime.driver.active.utils.get_device_properties(0)["multiprocessor_count"]
    return 8  # the interpreter: enough to exercise several splits on small shapes


def decode_tiling(tq: int, dtype, head_dim: int) -> tuple[int, int, int]:
    """(TQ, BLOCK_N, num_warps) of the GEMV decode kernel: TQ rows held (1, or
    DECODE_GEMV_TQ), and a key tile of DECODE_TILE_BYTES per K and V for one row (a TQ x
    BLOCK_N x BLOCK_D fp32 product lives in registers, so more rows mean fewer keys per tile,
    and 8 warps: 4 spill at D=128 on sm_90). Spill-free for sm_80/sm_90 (the compile check)."""
    tq_rows = 1 if tq == 1 else DECODE_GEMV_TQ
    size = 4 if dtype in (torch.float32, "fp32") else 2
    least = 8 if block_d(head_dim) == 256 else 16  # 16 keys x 4 rows x 256 spill
    return tq_rows, max(least, DECODE_TILE_BYTES // (block_d(head_dim) * size * tq_rows)), 4 if tq_rows == 1 else 8


def decode_gemv_splits(tk: int, batch_heads: int, block_n: int, device) -> tuple[int, int]:
    """(n_splits, chunk) of the GEMV decode kernel: one program per head when B H fills the
    GPU, i.e. two programs per SM (each has a K and a V tile, 2 x DECODE_TILE_BYTES, in
    flight: 32 KB per SM, what an H100 needs), in one launch; otherwise each head's keys are
    cut into chunks of whole tiles for about two programs per SM, then a combine launch."""
    sms = _sm_count(torch.device(device))
    tiles = _cdiv(max(tk, 1), block_n)
    if batch_heads >= 2 * sms:
        return 1, tiles * block_n
    want = min(_cdiv(2 * sms, max(batch_heads, 1)), MAX_SPLITS)
    chunk = _cdiv(tiles, max(1, min(tiles, want))) * block_n
    return _cdiv(tk, chunk), chunk


def decode_splits(tq: int, tk: int, batch_heads: int, device) -> int:
    """How many key splits the flash-decoding path uses; 0 means the regular forward.

    Small Tq against Tk >= DECODE_UNIT takes the split path (its programs hold only
    DECODE_MAX_TQ query rows); the keys are cut so that about two programs per SM stream K/V."""
    if tq > DECODE_MAX_TQ or tk < DECODE_UNIT:
        return 0
    units = _cdiv(tk, DECODE_UNIT)
    want = _cdiv(2 * _sm_count(torch.device(device)), max(batch_heads, 1))
    chunk = _cdiv(units, max(1, min(units, want, MAX_SPLITS))) * DECODE_UNIT
    return _cdiv(tk, chunk)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)  # triton.cdiv is a ConstexprFunction (microseconds per call) in Triton 3.8


def _device_guard(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def attention_forward(q, k, v, causal: bool, scale: float, split: bool | None = None, configs=None,
                      kv_lengths=None):
    """(o, lse2): o (B, H, Tq, D) in q's dtype and the base-2 logsumexp (B, H, Tq) fp32.
    `split` forces (True) or forbids (False) the flash-decoding path; None chooses.
    `configs` maps "fwd"/"split" to a (BLOCK_M, BLOCK_N, warps, stages) to pin (tests).
    kv_lengths: None, or an int32/int64 (B,) tensor of keys per sequence, read by the kernels
    on the device (copied only when not contiguous); every launch (paths, grids, key splits)
    is chosen from the shapes alone, so a CUDA graph can capture it."""
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    o = empty_bthd(q.shape, q.dtype, q.device)
    lse = torch.empty(B, H, Tq, dtype=torch.float32, device=q.device)
    if o.numel() == 0:
        return o, lse
    if Tk == 0:  # non-causal with no keys: the empty sum, as the reference gives
        return o.zero_(), lse.fill_(-float("inf"))
    for name, t in (("q", q), ("k", k), ("v", v)):
        _checks.unit_last_dim(name, t)
    qk_scale = scale * math.log2(math.e)
    if kv_lengths is not None and not kv_lengths.is_contiguous():
        kv_lengths = kv_lengths.contiguous()  # e.g. an expanded (B,) view: the kernels index it densely
    if split is None and Tq <= DECODE_GEMV_TQ:
        with _device_guard(q):
            return _decode(q, k, v, o, lse, causal, qk_scale, kv_lengths=kv_lengths)
    n_splits = decode_splits(Tq, Tk, B * H, q.device)
    if split is not None:
        n_splits = max(n_splits, 2) if split else 0
    if n_splits and Tq > DECODE_MAX_TQ:
        raise ValueError(f"the flash-decoding path holds at most {DECODE_MAX_TQ} query rows, got Tq={Tq}")
    common = _head_dim_args(D, causal, configs)
    common["HAS_LENGTHS"] = kv_lengths is not None
    with _device_guard(q):
        if not n_splits:
            strides = (*_bhm(q), *_bhm(k), *_bhm(v), *_bhm(o))
            args = (q, k, v, o, lse, kv_lengths, *strides, H, Tq, Tk, qk_scale, D // 8, _bucket(Tq), _bucket(Tk))
            hopper = _hopper(q.device, args[:5], strides)
            _launch("fwd", lambda bm, bn: (_cdiv(Tq, bm), H, B), args, hopper=hopper,
                    tma=_tma(hopper, q.dtype, args[:5], strides, _programs(B, H, Tq), kv_lengths is not None),
                    **common)
            return o, lse
        chunk = _cdiv(_cdiv(Tk, DECODE_UNIT), n_splits) * DECODE_UNIT
        n_splits = _cdiv(Tk, chunk)
        o_part = torch.empty(B * H, n_splits, Tq, D, dtype=torch.float32, device=q.device)
        lse_part = torch.empty(B * H, n_splits, Tq, dtype=torch.float32, device=q.device)
        args = (q, k, v, o_part, lse_part, kv_lengths, *_bhm(q), *_bhm(k), *_bhm(v), H, Tq, Tk, qk_scale, D // 8,
                chunk, n_splits, _bucket(Tq), _bucket(Tk))
        _launch("split", lambda bm, bn: (n_splits, H, B), args, **common)
        _attn_combine_kernel[(Tq, H, B)](o_part, lse_part, o, lse, *_bhm(o), H, Tq, n_splits, D // 8,
                                         BLOCK_D=block_d(D), BLOCK_S=COMBINE_BLOCK_S, num_warps=4)
    return o, lse


def _decode_partials(q, o, lse, n_splits: int):
    """(o_part, lse_part): fp32 per-split partial outputs and logsumexps, or (o, lse), unused,
    when one split covers the keys."""
    if n_splits == 1:
        return o, lse
    B, H, Tq, D = q.shape
    return (torch.empty((B * H, n_splits, Tq, D), dtype=torch.float32, device=q.device),
            torch.empty((B * H, n_splits, Tq), dtype=torch.float32, device=q.device))


# (shapes, strides, flags, replay_key of the inputs) -> (splits, the recorded launches).
_DECODE_REPLAYS = _fast.Replays()


def _decode(q, k, v, o, lse, causal, qk_scale, splits=None, kv_lengths=None):
    """The GEMV decode path (Tq <= DECODE_GEMV_TQ): one launch, or key splits and a combine.
    `splits` forces a split count (tests); kv_lengths: contiguous (B,) or None."""
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    key = (q.shape, Tk, q.stride(), k.stride(), v.stride(), causal, splits, q.device,
           _fast.replay_key(q, k, v, kv_lengths))
    plan = _DECODE_REPLAYS.get(key)
    if plan is not None:
        n_splits, replays = plan
        o_part, lse_part = _decode_partials(q, o, lse, n_splits)
        for replay in replays:
            replay(q, k, v, o, lse, o_part, lse_part, kv_lengths, qk_scale)
        return o, lse
    tq_rows, block_n, warps = decode_tiling(Tq, q.dtype, D)
    n_splits, chunk = decode_gemv_splits(Tk, B * H, block_n, q.device)
    if splits is not None:
        chunk = _cdiv(_cdiv(Tk, block_n), splits) * block_n
        n_splits = _cdiv(Tk, chunk)
    o_part, lse_part = _decode_partials(q, o, lse, n_splits)
    slots = ({"q": q, "k": k, "v": v, "o": o, "lse": lse, "o_part": o_part, "lse_part": lse_part,
              "kv_lengths": kv_lengths, "qk_scale": qk_scale} if _DECODE_REPLAYS.wanted(key) else None)
    replays = [_fast.launch(
        _attn_decode_kernel, (n_splits, H, B),
        (q, k, v, o, lse, o_part, lse_part, kv_lengths, *_bhm(q), *_bhm(k), *_bhm(v), *_bhm(o), H, Tq, Tk,
         qk_scale, D // 8, chunk, n_splits),
        dict(BLOCK_D=block_d(D), CAUSAL=causal, TQ=tq_rows, BLOCK_N=block_n, HAS_LENGTHS=kv_lengths is not None,
             num_warps=warps, num_stages=1), slots)]
    if n_splits > 1:
        replays.append(_fast.launch(
            _attn_combine_kernel, (Tq, H, B), (o_part, lse_part, o, lse, *_bhm(o), H, Tq, n_splits, D // 8),
            dict(BLOCK_D=block_d(D), BLOCK_S=COMBINE_BLOCK_S, num_warps=4), slots))
    if slots is not None and all(r is not None for r in replays):
        _DECODE_REPLAYS.put(key, (n_splits, replays))
    return o, lse


# (shapes, strides, causal, device, replay_key of the inputs) -> the recorded launches
# (preprocess, dK/dV, dQ): a repeat backward (every training step) skips the binder and the
# autotuners' Python (~90 us per call on the host path before).
_BWD_REPLAYS = _fast.Replays()


def attention_backward(do, q, k, v, o, lse, causal: bool, scale: float, configs=None):
    """(dq, dk, dv) from the saved output o and base-2 logsumexp lse; `configs` as in the forward."""
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    dq = empty_bthd(q.shape, q.dtype, q.device)
    dk = empty_bthd(k.shape, k.dtype, k.device)
    dv = empty_bthd(v.shape, v.dtype, v.device)
    if B * H == 0:
        return dq, dk, dv
    if Tq == 0 or Tk == 0:  # nothing attends: every gradient is zero
        return dq.zero_(), dk.zero_(), dv.zero_()
    do, o = _unit_last(do), _unit_last(o)
    qk_scale = scale * math.log2(math.e)
    delta = torch.empty(B, H, Tq, dtype=torch.float32, device=q.device)
    # A replay exists only for strides that passed the checks below (they are in the key).
    key = (q.shape, Tk, q.stride(), k.stride(), v.stride(), do.stride(), o.stride(), causal, q.device, TMA,
           _fast.replay_key(q, k, v, do, o, lse)) if configs is None else None
    plan = _BWD_REPLAYS.get(key) if key is not None else None
    if plan is not None:
        with _device_guard(q):
            replays, tma = plan
            if tma:
                with _fast.device_scratch():
                    for replay in replays:
                        replay(q, k, v, do, o, lse, delta, dq, dk, dv, qk_scale, scale)
                return dq, dk, dv
            for replay in replays:
                replay(q, k, v, do, o, lse, delta, dq, dk, dv, qk_scale, scale)
        return dq, dk, dv
    for name, t in (("q", q), ("k", k), ("v", v)):
        _checks.unit_last_dim(name, t)
    slots = ({"q": q, "k": k, "v": v, "do": do, "o": o, "lse": lse, "delta": delta, "dq": dq, "dk": dk, "dv": dv,
              "qk_scale": qk_scale, "scale": scale} if key is not None and _BWD_REPLAYS.wanted(key) else None)
    common = _head_dim_args(D, causal, configs)
    with _device_guard(q):
        pre_m = _pre_block_m(block_d(D))
        replays = [_fast.launch(
            _attn_bwd_preprocess_kernel, (_cdiv(Tq, pre_m), H, B), (o, do, delta, *_bhm(o), *_bhm(do), H, Tq, D // 8),
            dict(BLOCK_D=block_d(D), BLOCK_M=pre_m, num_warps=4), slots)]
        strides = (*_bhm(q), *_bhm(k), *_bhm(v), *_bhm(do), *_bhm(dk), *_bhm(dv))
        args = (q, k, v, do, lse, delta, dk, dv, *strides, H, Tq, Tk, qk_scale, scale, D // 8, _bucket(Tq),
                _bucket(Tk))
        hopper = _hopper(q.device, args[:8], strides)
        tma_dkdv = _tma(hopper, q.dtype, args[:8], strides, _programs(B, H, Tk)) and block_d(D) < 256
        # D = 256 keeps the sm_80 dK/dV tiles (mma.sync): with TMA their tiles cross shared
        # memory into registers and spilled 744-808 B (sm_90, causal).
        replays.append(_launch("dkdv", lambda bm, bn: (_cdiv(Tk, bn), H, B), args, hopper=hopper, slots=slots,
                               tma=tma_dkdv, **common))
        strides = (*_bhm(q), *_bhm(k), *_bhm(v), *_bhm(do), *_bhm(dq))
        args = (q, k, v, do, lse, delta, dq, *strides, H, Tq, Tk, qk_scale, scale, D // 8, _bucket(Tq), _bucket(Tk))
        hopper = _hopper(q.device, args[:7], strides)
        replays.append(_launch("dq", lambda bm, bn: (_cdiv(Tq, bm), H, B), args, hopper=hopper, slots=slots,
                               tma=(tma_dq := _tma(hopper, q.dtype, args[:7], strides, _programs(B, H, Tq))),
                               **common))
    if slots is not None and all(r is not None for r in replays):
        _BWD_REPLAYS.put(key, (replays, tma_dkdv or tma_dq))
    return dq, dk, dv


# Every configuration the launchers and autotuners can pick, for the sm_80/sm_90 compile test
# (kernels/triton/compile_check.py records the launches these calls make as on each target,
# every config each autotuner may try included): each dtype, BLOCK_D with an exact and a
# padded head dim (D is a runtime argument), causal or not, and each path: the tiled forward
# and backward (on sm_90 the Hopper tiles when every address and stride is a multiple of 16,
# the sm_80 tiles otherwise: a transposed q), flash-decoding (Tq 5..16) and the GEMV decode
# (Tq <= 4) in one launch or with key splits, each with and without kv_lengths.
def launch_cases():
    def t(*shape, dtype):
        return torch.empty(*shape, dtype=dtype, device="meta")

    many = 4 * _sm_count(torch.device("meta"))  # heads enough to fill the GPU: no key split
    lengths = [torch.empty(1, dtype=dt, device="meta") for dt in (torch.int64, torch.int32)]
    for dtype, bd, causal in itertools.product((torch.float32, torch.float16, torch.bfloat16), BLOCK_DS,
                                               (True, False)):
        # Exact and padded head dims; a padded one that is a multiple of 16 too where there is
        # one (D = 48 at BLOCK_D 64): the sm_90 tiles need strides that are multiples of 16.
        for D in (bd, bd - 8) + ((bd - 16,) if bd - 16 > bd // 2 else ()):
            # (B, H, Tq, Tk): prefill; flash-decoding; GEMV decode of 1 and of 4 rows, in one
            # launch and split over the keys.
            for B, H, tq, tk in ((1, 2, 64, 64), (1, 2, 8, 4 * DECODE_UNIT), (1, many, 1, 64), (1, many, 3, 64),
                                 (1, 1, 1, 4096), (1, 1, 4, 4096)):
                q, k = t(B, H, tq, D, dtype=dtype), t(B, H, tk, D, dtype=dtype)
                yield lambda q=q, k=k, c=causal: attention_forward(q, k, k, c, 0.5)
                for n in lengths:
                    yield lambda q=q, k=k, c=causal, n=n: attention_forward(q, k, k, c, 0.5, kv_lengths=n)
            lse = torch.empty(1, 2, 64, device="meta")
            qt = t(1, 64, 2, D + 8, dtype=dtype)[..., :D].transpose(1, 2)  # head stride D + 8
            for x in (t(1, 2, 64, D, dtype=dtype), qt):
                yield lambda x=x, c=causal: attention_forward(x, x, x, c, 0.5)
                yield lambda x=x, lse=lse, c=causal: attention_backward(x, x, x, x, x, lse, c, 0.5)
                # the same with TMA asked for (GPTK_TMA=1): the sm_90 16-bit launches take it
                yield _with_tma(lambda x=x, c=causal: attention_forward(x, x, x, c, 0.5))
                yield _with_tma(lambda x=x, lse=lse, c=causal: attention_backward(x, x, x, x, x, lse, c, 0.5))


def _with_tma(call):
    def tma_call():
        global TMA
        before, TMA = TMA, True
        try:
            return call()
        finally:
            TMA = before
    return tma_call


# -----------------------------------------------------------------------------------------
# Registration: opaque custom ops (opcheck and torch.compile(fullgraph=True) trace them on
# every device, the interpreter included) with a fake impl and autograd on top.
# -----------------------------------------------------------------------------------------


def _attention_impl(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float,
                    kv_lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    _checks.finite("scale", scale)  # re-checked with the real value under torch.compile
    return attention_forward(q, k, v, causal, scale, kv_lengths=kv_lengths)


attention_op = torch.library.custom_op("gptk::attention_triton", _attention_impl, mutates_args=())


@attention_op.register_fake
def _(q, k, v, causal, scale, kv_lengths=None):
    B, H, Tq, _ = q.shape
    return empty_bthd(q.shape, q.dtype, q.device), q.new_empty((B, H, Tq), dtype=torch.float32)


def _attention_backward_impl(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                             lse: torch.Tensor, causal: bool,
                             scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return attention_backward(do, q, k, v, o, lse, causal, scale)


attention_backward_op = torch.library.custom_op("gptk::attention_triton_backward", _attention_backward_impl,
                                                mutates_args=())
_attention_backward_call = _fast.fast_op(attention_backward_op, _attention_backward_impl)


@attention_backward_op.register_fake
def _(do, q, k, v, o, lse, causal, scale):
    return (empty_bthd(q.shape, q.dtype, q.device), empty_bthd(k.shape, k.dtype, k.device),
            empty_bthd(v.shape, v.dtype, v.device))


def _setup_context(ctx, inputs, output):
    q, k, v, causal, scale = inputs[:5]
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse)
    ctx.causal, ctx.scale = causal, scale
    ctx.kv_lengths = len(inputs) > 5 and inputs[5] is not None
    ctx.mark_non_differentiable(lse)


def _backward(ctx, do, _dlse):
    if ctx.kv_lengths:  # kernels.attention refuses such a call up front; this guards the bare op
        raise RuntimeError("gptk::attention_triton with kv_lengths is forward only: no gradient flows through it")
    q, k, v, o, lse = ctx.saved_tensors
    dq, dk, dv = _attention_backward_call(do, q, k, v, o, lse, ctx.causal, ctx.scale)
    return dq, dk, dv, None, None, None


_attention_call = _fast.fast_op(attention_op, _attention_impl, _setup_context, _backward)


def attention(q, k, v, causal=True, scale=None, kv_lengths=None):
    """The triton backend's attention (arguments already validated by kernels.attention)."""
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if q.shape[0] > MAX_GRID_YZ or q.shape[1] > MAX_GRID_YZ:
        raise ValueError(f"the triton attention kernels take batch size and head count up to {MAX_GRID_YZ} "
                         f"(CUDA grid y/z limit), got B={q.shape[0]}, H={q.shape[1]}")
    if kv_lengths is not None:
        return _attention_call(q, k, v, bool(causal), float(scale), kv_lengths)[0]
    return _attention_call(q, k, v, bool(causal), float(scale))[0]
