"""Fused sampling: temperature, top-k, top-p and the draw in one kernel, one launch per call.

What it fuses: torch's sequence (`topk`, `masked_fill`, `softmax`, `sort` + `cumsum` for
top-p, `multinomial`) launches 5-10 kernels and writes several (B, V) tensors (the masked
logits, the probabilities, the sorted copy and its prefix sums). Here one program owns a
row (or, for short rows, BLOCK_M rows) and nothing of size V is written: the output is one
int64 per row. No sort: every threshold is found by bisection with counts over the row.

The rule (identical in kernels.reference.sample, the C++ and the CUDA kernel):
  * keys: each logit as an int32 whose order is the float order (-0.0 folded into +0.0);
    every comparison is on the raw logits, so probabilities never tie where logits don't.
  * top_k keeps every token whose logit is >= the k-th largest logit (ties at the boundary
    are all kept, as nanoGPT and transformers' TopKLogitsWarper do).
  * top_p then keeps every token whose logit is >= v*, the largest logit value v with
    mass(logit >= v) >= top_p * mass(top-k set): the token that crosses top_p is kept, and
    so are its ties.
  * the draw: u = the top 24 bits of Philox4x32-10(counter=(row, 0, 0, 0), key=seed) / 2^24
    (tl.randint's stream; csrc/common/philox.h computes the same numbers), then the first
    kept token whose running mass exceeds u * mass(kept set), columns in order.
  * temperature 0: argmax, ties to the lowest index. A row with a NaN logit gives -1; with
    temperature > 0 so does a row whose max is +inf or -inf (softmax is NaN there).

Passes over a row of V logits of s bytes (the row is re-read from L1/L2 after the first):
  stats 1 (max, argmax, NaN, smallest key) -> greedy stops here, V s bytes from HBM;
  top-k bisection on the keys: <= 32 counting passes (a pass also finds the nearest keys on
  each side of the pivot with their weight, so it stops as soon as the pivot lands next to
  the k-th value; typically 15-25);
  mass 1 (the kept set's sum of exp); top-p bisection: <= 32 mass passes (one exp2 per
  element per pass); draw 1 (prefix sum over tiles).
HBM traffic is V s bytes per row (plus 8 bytes out); the rest is on-chip/L2 traffic and
is bounded by (3 + 32 + 32) V s bytes per row, independent of B. A 50257-wide bf16 row is
100 KB, within one SM's L1.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .. import _backend

INT32_MAX = tl.constexpr(2147483647)
INT32_MIN = tl.constexpr(-2147483648)

# -----------------------------------------------------------------------------------------
# Kernels
# -----------------------------------------------------------------------------------------


@triton.jit
def _ordered_key(x):
    """fp32 -> int32 with the same order (-0.0 and +0.0 are one value)."""
    bits = tl.where(x == 0.0, 0.0, x).to(tl.int32, bitcast=True)
    return tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)


@triton.jit
def _uniform(seed, offset):
    """U[0, 1) with 24 random bits from Philox: the formula csrc/common/philox.h shares."""
    r = tl.randint(seed, offset)
    return (r >> 8).to(tl.float32) * (1.0 / 16777216.0)


@triton.jit
def _threshold(x_ptr, rows64, row_stride, active, n_cols, lo, up, floor, target, w_lo, m, scale_log2,
               MASS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The largest key v in [lo, up) with W(>= v) >= target, W summing the weight of the
    tokens with key >= floor (weight 1 = counts, or exp2((x - m) * scale_log2) = mass).

    Invariant per row: W(>= lo) >= target (lo is a token's key) and W(>= up) < target.
    Each pass halves (lo, up) at mid and also returns a (the smallest key >= mid) and b (the
    largest key < mid) with their weights, so a row stops as soon as the answer is a or b.
    Returns (v, W(>= v)) per row."""
    cols = tl.arange(0, BLOCK_N)
    active = active & (up > lo + 1)
    while tl.max(active.to(tl.int32), axis=0) > 0:
        mid = ((lo.to(tl.int64) + up.to(tl.int64)) >> 1).to(tl.int32)
        c_acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        a_acc = tl.full([BLOCK_M, BLOCK_N], INT32_MAX, tl.int32)
        wa_acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        b_acc = tl.full([BLOCK_M, BLOCK_N], INT32_MIN, tl.int32)
        wb_acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for start in range(0, n_cols, BLOCK_N):
            c = start + cols
            mask = active[:, None] & (c[None, :] < n_cols)
            x = tl.load(x_ptr + rows64[:, None] * row_stride + c[None, :], mask=mask, other=0.0).to(tl.float32)
            k = _ordered_key(x)
            valid = mask & (k >= floor[:, None])
            if MASS:
                w = tl.exp2((x - m[:, None]) * scale_log2)
            else:
                w = tl.full(x.shape, 1.0, tl.float32)
            ge = valid & (k >= mid[:, None])
            lt = valid & (k < mid[:, None])
            c_acc += tl.where(ge, w, 0.0)
            ka = tl.where(ge, k, INT32_MAX)
            wa_acc = tl.where(ka < a_acc, w, tl.where(ge & (ka == a_acc), wa_acc + w, wa_acc))
            a_acc = tl.minimum(a_acc, ka)
            kb = tl.where(lt, k, INT32_MIN)
            wb_acc = tl.where(kb > b_acc, w, tl.where(lt & (kb == b_acc), wb_acc + w, wb_acc))
            b_acc = tl.maximum(b_acc, kb)
        total = tl.sum(c_acc, axis=1)
        a = tl.min(a_acc, axis=1)
        wa = tl.sum(tl.where(a_acc == a[:, None], wa_acc, 0.0), axis=1)
        b = tl.max(b_acc, axis=1)
        wb = tl.sum(tl.where(b_acc == b[:, None], wb_acc, 0.0), axis=1)
        reach = total >= target
        exact_a = reach & (total - wa < target)      # nothing above a reaches: the answer is a
        exact_b = (~reach) & (total + wb >= target)  # b reaches, nothing above it does: b
        new_lo = tl.where(reach, a, tl.where(exact_b, b, lo))
        new_w = tl.where(reach, total, tl.where(exact_b, total + wb, w_lo))
        new_up = tl.where(exact_a, a + 1, tl.where(exact_b, b + 1, tl.where(reach, up, mid)))
        lo = tl.where(active, new_lo, lo)
        w_lo = tl.where(active, new_w, w_lo)
        up = tl.where(active, new_up, up)
        active = active & (up > lo + 1)
    return lo, w_lo


# top_k is never specialised: at top_k = 1 Triton would compile a constant-1 variant, which
# spilled 8 B (sm_90 fp32 64x16, sm_80 fp32/bf16 4096), for no gain over the general one.
@triton.jit(do_not_specialize=["top_k"])
def _sample_kernel(out_ptr, x_ptr, seed_ptr, n_rows, n_cols, row_stride, scale_log2, top_k, top_p,
                   GREEDY: tl.constexpr, TOP_K: tl.constexpr, TOP_P: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """BLOCK_M rows per program, each streamed in BLOCK_N-column tiles (see the docstring)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    rows64 = rows.to(tl.int64)
    cols = tl.arange(0, BLOCK_N)

    # Pass 1: max and first argmax (lanes see columns in increasing order, so a strict > keeps
    # the earliest; a lane's first column seeds it so an all -inf row gives column 0), NaN,
    # and the smallest key.
    m_acc = tl.full([BLOCK_M, BLOCK_N], -float("inf"), tl.float32)
    i_acc = tl.full([BLOCK_M, BLOCK_N], INT32_MAX, tl.int32)
    kmin_acc = tl.full([BLOCK_M, BLOCK_N], INT32_MAX, tl.int32)
    nan_acc = tl.zeros([BLOCK_M, BLOCK_N], tl.int32)
    for start in range(0, n_cols, BLOCK_N):
        c = start + cols
        mask = row_ok[:, None] & (c[None, :] < n_cols)
        x = tl.load(x_ptr + rows64[:, None] * row_stride + c[None, :], mask=mask, other=-float("inf")).to(tl.float32)
        nan_acc = tl.where(x != x, 1, nan_acc)
        better = mask & ((x > m_acc) | (i_acc == INT32_MAX))
        m_acc = tl.where(better, x, m_acc)
        i_acc = tl.where(better, c[None, :], i_acc)
        kmin_acc = tl.minimum(kmin_acc, tl.where(mask, _ordered_key(x), INT32_MAX))
    m = tl.max(m_acc, axis=1)
    bad = tl.max(nan_acc, axis=1) > 0
    if GREEDY:
        argmax = tl.min(tl.where(m_acc == m[:, None], i_acc, INT32_MAX), axis=1)
        tl.store(out_ptr + rows, tl.where(bad, -1, argmax).to(tl.int64), mask=row_ok)
    else:
        bad = bad | (m == float("inf")) | (m == -float("inf"))
        m = tl.where(bad, 0.0, m)
        active = row_ok & (~bad)
        kmax = _ordered_key(m)
        floor = tl.min(kmin_acc, axis=1)
        if TOP_K:
            floor, _ = _threshold(x_ptr, rows64, row_stride, active, n_cols, floor, kmax + 1, floor,
                                  tl.zeros([BLOCK_M], tl.float32) + top_k, tl.zeros([BLOCK_M], tl.float32),
                                  m, scale_log2, False, BLOCK_M, BLOCK_N)
        # The kept set's mass (exp2 relative to the row max: the max token weighs 1).
        z_acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for start in range(0, n_cols, BLOCK_N):
            c = start + cols
            mask = active[:, None] & (c[None, :] < n_cols)
            x = tl.load(x_ptr + rows64[:, None] * row_stride + c[None, :], mask=mask, other=0.0).to(tl.float32)
            keep = mask & (_ordered_key(x) >= floor[:, None])
            z_acc += tl.where(keep, tl.exp2((x - m[:, None]) * scale_log2), 0.0)
        z = tl.sum(z_acc, axis=1)
        if TOP_P:
            floor, z = _threshold(x_ptr, rows64, row_stride, active, n_cols, floor, kmax + 1, floor,
                                  z * top_p, z, m, scale_log2, True, BLOCK_M, BLOCK_N)
        # The draw: the first kept column whose running mass exceeds u * z. If rounding leaves
        # the target unreached, the last kept column with mass.
        target = _uniform(tl.load(seed_ptr), rows) * z
        run = tl.zeros([BLOCK_M], tl.float32)
        chosen = tl.full([BLOCK_M], INT32_MAX, tl.int32)
        last = tl.full([BLOCK_M], -1, tl.int32)
        for start in range(0, n_cols, BLOCK_N):
            c = start + cols
            mask = active[:, None] & (c[None, :] < n_cols)
            x = tl.load(x_ptr + rows64[:, None] * row_stride + c[None, :], mask=mask, other=0.0).to(tl.float32)
            w = tl.where(mask & (_ordered_key(x) >= floor[:, None]), tl.exp2((x - m[:, None]) * scale_log2), 0.0)
            cum = tl.cumsum(w, axis=1) + run[:, None]
            hit = (w > 0.0) & (cum > target[:, None])
            chosen = tl.minimum(chosen, tl.min(tl.where(hit, c[None, :], INT32_MAX), axis=1))
            last = tl.maximum(last, tl.max(tl.where(w > 0.0, c[None, :], -1), axis=1))
            run += tl.sum(w, axis=1)
        token = tl.where(chosen < INT32_MAX, chosen, last)
        tl.store(out_ptr + rows, tl.where(bad, -1, token).to(tl.int64), mask=row_ok)


# -----------------------------------------------------------------------------------------
# Launcher
# -----------------------------------------------------------------------------------------

LONG_ROW_BLOCK = 4096  # the column tile of rows wider than 2048 (one row per program)
SHORT_ROW_ELEMS = 1024  # short rows share a program up to this many elements
# The interpreter runs one program at a time in numpy, ~30 us per op whatever its size: far
# wider tiles there keep 20,000-row statistical tests fast. The kernel's logic does not
# depend on the tile shape (rows are independent lanes); the GPU shapes are compile-tested.
INTERPRETER_ROW_ELEMS, INTERPRETER_MAX_ROWS = 1 << 18, 4096


def launch_config(n_cols: int, interpreter: bool = False) -> dict:
    """Shapes that ptxas keeps spill-free for every variant (compile-checked; e.g. a 512-wide
    tile at 1-8 warps leaves 8 bytes on the stack, so 512-wide rows use the 1024 tile)."""
    block_n = triton.next_power_of_2(max(int(n_cols), 1))
    if block_n > 2048:
        return {"BLOCK_M": 1, "BLOCK_N": LONG_ROW_BLOCK * (4 if interpreter else 1), "num_warps": 16}
    if interpreter:
        return {"BLOCK_M": max(1, min(INTERPRETER_MAX_ROWS, INTERPRETER_ROW_ELEMS // block_n)),
                "BLOCK_N": block_n, "num_warps": 4}
    if block_n == 2048:
        # 16 warps, as the long rows' tile: the same 2048 elements in flight per program as 4
        # warps, which leave 8 bytes on the stack on sm_90 (fp32 top-p), as do 2 and 8.
        return {"BLOCK_M": 1, "BLOCK_N": 2048, "num_warps": 16}
    if block_n > 256:
        # 16 warps too: the 1024 tile leaves 8 bytes on the stack at 1, 2, 4 and 8 (2: sm_90,
        # fp32 top-p); the same 1024 elements per program either way.
        return {"BLOCK_M": 1, "BLOCK_N": 1024, "num_warps": 16}
    # 4 warps, except where ptxas left bytes on the stack (compile check): one-column rows
    # (1024 per program; 16 B on sm_80 with top-p) take 8, and the 4 x 256 tile (16 B on sm_80
    # with top-k; 8 warps spill on sm_90, 2 on both) takes 16.
    warps = {1: 8, 256: 16}.get(block_n, 4)
    return {"BLOCK_M": SHORT_ROW_ELEMS // block_n, "BLOCK_N": block_n, "num_warps": warps}


def draw_seed(generator, device) -> torch.Tensor:
    return _backend.philox_seed(generator, device)


def sample_forward(logits: torch.Tensor, seed: torch.Tensor, temperature: float, top_k: int,
                   top_p: float) -> torch.Tensor:
    """Next tokens (B,) int64; top_k <= 0 means none, top_p >= 1 means none."""
    n_rows, n_cols = logits.shape
    out = torch.empty(n_rows, dtype=torch.int64, device=logits.device)
    if n_rows == 0:
        return out
    x = logits if logits.stride(-1) == 1 or n_cols == 1 else logits.contiguous()
    cfg = launch_config(n_cols, logits.device.type == "cpu" and _backend.triton_interpreting())
    greedy = temperature == 0
    # log2(e) / t, capped so that (x - max) * scale stays 0 at the max for tiny t.
    scale_log2 = 0.0 if greedy else min(math.log2(math.e) / temperature, 3.0e38)
    grid = (triton.cdiv(n_rows, cfg["BLOCK_M"]),)
    _sample_kernel[grid](out, x, seed, n_rows, n_cols, x.stride(0), scale_log2, int(top_k), float(top_p),
                         GREEDY=greedy, TOP_K=(not greedy and 0 < top_k < n_cols),
                         TOP_P=(not greedy and top_p < 1.0),
                         BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], num_warps=cfg["num_warps"])
    return out


# Every configuration the launcher can pick, for the sm_80/sm_90 compile test
# (kernels/triton/compile_check.py records the launches these calls make): each dtype, each
# width class and greedy, plain, top-k, top-p and both.
def launch_cases():
    from .compile_check import width_classes
    seed = torch.empty(1, dtype=torch.int64, device="meta")
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for n_cols in width_classes(2 * LONG_ROW_BLOCK):
            logits = torch.empty(3, n_cols, dtype=dtype, device="meta")
            # top_k is not specialised (top_k = 1 and 50 launch one binary): 1 stands for any
            for temperature, top_k, top_p in ((0.0, 0, 1.0), (1.0, 0, 1.0), (1.0, 1, 1.0), (1.0, 0, 0.9),
                                              (1.0, 1, 0.9)):
                yield lambda x=logits, t=temperature, k=top_k, p=top_p: sample_forward(x, seed, t, k, p)


# -----------------------------------------------------------------------------------------
# Registration: an opaque custom op (no autograd: sampling is not differentiable). The
# generator cannot be an op argument: the wrapper draws the Philox seed from it first.
# -----------------------------------------------------------------------------------------


@torch.library.custom_op("gptk::sample_triton", mutates_args=())
def sample_op(logits: torch.Tensor, seed: torch.Tensor, temperature: float, top_k: int,
              top_p: float) -> torch.Tensor:
    # kernels.sample checks these eagerly; under torch.compile only here, with the real values.
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be finite and >= 0 (0 = greedy), got {temperature}")
    if top_k < 0 or not 0 < top_p <= 1:
        raise ValueError(f"top_k must be >= 1 and top_p in (0, 1], got top_k={top_k or None}, top_p={top_p}")
    return sample_forward(logits, seed, temperature, top_k, top_p)


@sample_op.register_fake
def _(logits, seed, temperature, top_k, top_p):
    return logits.new_empty((logits.shape[0],), dtype=torch.int64)


def sample(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """The triton backend's sample (arguments already validated by kernels.sample)."""
    seed = draw_seed(generator, logits.device)
    return sample_op(logits, seed, float(temperature), int(top_k or 0), float(1.0 if top_p is None else top_p))
