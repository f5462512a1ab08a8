"""Softmax with temperature: y = softmax(x / t) along one dim, forward and backward.

What it fuses: the eager `torch.softmax(x / t)` reads x, writes x / t, reads it back,
then writes y: 4 passes over the tensor. Here the temperature is folded into the
exponent, so a row that fits on chip costs one read and one write.

Roofline (N = numel, s = bytes per element):
  forward   2 N s bytes (read x, write y), ~5 FLOP/element: memory-bound everywhere.
  backward  3 N s bytes (read y and dy, write dx): dx = y * (dy - sum(dy * y)) / t.
Rows longer than MAX_ROW_BLOCK stream through in chunks with an online (running max,
running sum) softmax, one exp per element per pass: 3 N s forward, 5 N s backward, the
re-reads from L2 (the launcher keeps the rows in flight to half of it).

Row data moves in 16-byte vectors for any width and row start: each row splits into a
peeled head and tail and a 16-byte aligned body (kernels/triton/_launch.py). The static
SASS checks of this (tests/test_static_triton.py) run at the benchmark shapes STATIC_SHAPES.

Math is fp32 whatever the storage dtype. The max is taken over raw x, and
(x - max) is scaled afterwards: exp2((x - m) * log2(e) / t). Subtracting first keeps
large logits exact (x - m is exact when x is near m), which scaling first does not.
"""
from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from .. import _checks
from . import _launch

# -----------------------------------------------------------------------------------------
# Kernels
# -----------------------------------------------------------------------------------------


@_launch.jit
def _softmax_fwd_kernel(y_ptr, x_ptr, n_rows, n_cols, x_off, x_row_stride, y_off, y_row_stride, scale_log2,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, VEC: tl.constexpr, Y_ALIGNED: tl.constexpr,
                        HAS_PEEL: tl.constexpr):
    """BLOCK_M whole rows per program, each row held on chip: one read, one write, one exp
    per element. Each row's body moves in 16-byte vectors, its head and tail in one peel
    (HAS_PEEL False: the launcher found every row 16-byte aligned and whole vectors long)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    cols = tl.arange(0, BLOCK_N)
    x_start, head, x_body, body_len = _launch.row_split(rows, x_off, x_row_stride, n_cols, VEC)
    y_start = y_off + rows.to(tl.int64) * y_row_stride
    y_body = y_start + head
    if Y_ALIGNED:
        y_body = tl.multiple_of(y_body, VEC)
    mask = row_ok[:, None] & (cols[None, :] < body_len[:, None])
    x = tl.load(x_ptr + x_body[:, None] + cols[None, :], mask=mask, other=-float("inf")).to(tl.float32)
    row_max = tl.max(x, axis=1)
    if HAS_PEEL:
        pcols, pmask = _launch.peel(head[:, None], body_len[:, None], n_cols, VEC)
        pmask = pmask & row_ok[:, None]
        xp = tl.load(x_ptr + x_start[:, None] + pcols, mask=pmask, eviction_policy="evict_first",
                     other=-float("inf")).to(tl.float32)
        row_max = tl.maximum(row_max, tl.max(xp, axis=1))
    # A row of all -inf gives (-inf) - (-inf) = NaN, as torch does.
    e = tl.exp2((x - row_max[:, None]) * scale_log2)
    row_sum = tl.sum(e, axis=1)
    if HAS_PEEL:
        ep = tl.exp2((xp - row_max[:, None]) * scale_log2)
        row_sum += tl.sum(ep, axis=1)
    # One reciprocal per row, then multiplies: a per-element fp32 divide is a multi-instruction
    # sequence, which 16-bit inputs (twice the elements per byte) cannot hide behind memory.
    inv_sum = 1.0 / row_sum
    tl.store(y_ptr + y_body[:, None] + cols[None, :], (e * inv_sum[:, None]).to(y_ptr.dtype.element_ty), mask=mask)
    if HAS_PEEL:
        tl.store(y_ptr + y_start[:, None] + pcols, (ep * inv_sum[:, None]).to(y_ptr.dtype.element_ty), mask=pmask,
                 eviction_policy="evict_first")


@_launch.jit
def _softmax_fwd_long_kernel(y_ptr, x_ptr, n_rows, n_cols, x_off, x_row_stride, y_off, y_row_stride, scale_log2,
                             BLOCK_N: tl.constexpr, VEC: tl.constexpr, Y_ALIGNED: tl.constexpr):
    """Rows too long for registers, in BLOCK_N chunks, two passes. Pass 1 takes each chunk's
    max (a block reduction), rescales the running sum by one scalar exp when the max grows
    and adds the chunk's exps: one exp per element. Pass 2 re-reads x and writes y: a second
    exp per element. The grid is persistent (programs loop over rows), sized by the launcher
    so the rows in flight fit in L2 and pass 2's re-read comes from L2 rather than HBM."""
    cols = tl.arange(0, BLOCK_N)
    for row in range(tl.program_id(0), n_rows, tl.num_programs(0)):
        x_start, head, x_body, body_len = _launch.row_split(row, x_off, x_row_stride, n_cols, VEC)
        y_start = y_off + tl.cast(row, tl.int64) * y_row_stride
        y_body = y_start + head
        if Y_ALIGNED:
            y_body = tl.multiple_of(y_body, VEC)
        pcols, pmask = _launch.peel(head, body_len, n_cols, VEC)
        xp = tl.load(x_ptr + x_start + pcols, mask=pmask, eviction_policy="evict_first",
                     other=-float("inf")).to(tl.float32)
        run_max = tl.max(xp, axis=0)
        # exps relative to `shift`: the running max, or 0 while it is -inf (no inf - inf).
        shift = tl.where(run_max == -float("inf"), 0.0, run_max)
        run_sum = tl.sum(tl.exp2((xp - shift) * scale_log2), axis=0)
        for start in range(0, body_len, BLOCK_N):
            x = tl.load(x_ptr + x_body + start + cols, mask=start + cols < body_len,
                        other=-float("inf")).to(tl.float32)
            new_max = tl.maximum(run_max, tl.max(x, axis=0))
            new_shift = tl.where(new_max == -float("inf"), 0.0, new_max)
            run_sum = run_sum * tl.exp2((shift - new_shift) * scale_log2) + \
                tl.sum(tl.exp2((x - new_shift) * scale_log2), axis=0)
            run_max, shift = new_max, new_shift
        # NaN anywhere in the row reaches run_sum (exp2(NaN) = NaN) and so every output.
        inv_sum = 1.0 / run_sum
        yp = tl.exp2((xp - run_max) * scale_log2) * inv_sum
        tl.store(y_ptr + y_start + pcols, yp.to(y_ptr.dtype.element_ty), mask=pmask, eviction_policy="evict_first")
        # Pass 2 walks the chunks backwards: the last ones read are the likeliest still in L2.
        n_chunks = tl.cdiv(body_len, BLOCK_N)
        for i in range(0, n_chunks):
            start = (n_chunks - 1 - i) * BLOCK_N
            mask = start + cols < body_len
            x = tl.load(x_ptr + x_body + start + cols, mask=mask, other=-float("inf")).to(tl.float32)
            y = tl.exp2((x - run_max) * scale_log2) * inv_sum
            tl.store(y_ptr + y_body + start + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


@_launch.jit
def _softmax_bwd_kernel(dx_ptr, dy_ptr, y_ptr, n_rows, n_cols, dx_off, dx_row_stride, dy_off, dy_row_stride,
                        y_off, y_row_stride, inv_temperature, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        VEC: tl.constexpr, DX_ALIGNED: tl.constexpr, DY_ALIGNED: tl.constexpr,
                        HAS_PEEL: tl.constexpr):
    """dx = y * (dy - sum(dy * y)) / t, BLOCK_M whole rows per program, split like the forward
    (on y's alignment; dy and dx share it when their rows are congruent)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    cols = tl.arange(0, BLOCK_N)
    y_start, head, y_body, body_len = _launch.row_split(rows, y_off, y_row_stride, n_cols, VEC)
    dy_start = dy_off + rows.to(tl.int64) * dy_row_stride
    dx_start = dx_off + rows.to(tl.int64) * dx_row_stride
    dy_body = dy_start + head
    dx_body = dx_start + head
    if DY_ALIGNED:
        dy_body = tl.multiple_of(dy_body, VEC)
    if DX_ALIGNED:
        dx_body = tl.multiple_of(dx_body, VEC)
    mask = row_ok[:, None] & (cols[None, :] < body_len[:, None])
    y = tl.load(y_ptr + y_body[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + dy_body[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    dot = tl.sum(dy * y, axis=1)
    if HAS_PEEL:
        pcols, pmask = _launch.peel(head[:, None], body_len[:, None], n_cols, VEC)
        pmask = pmask & row_ok[:, None]
        yp = tl.load(y_ptr + y_start[:, None] + pcols, mask=pmask, eviction_policy="evict_first",
                     other=0.0).to(tl.float32)
        dyp = tl.load(dy_ptr + dy_start[:, None] + pcols, mask=pmask, eviction_policy="evict_first",
                      other=0.0).to(tl.float32)
        dot += tl.sum(dyp * yp, axis=1)
    dx = y * (dy - dot[:, None]) * inv_temperature
    tl.store(dx_ptr + dx_body[:, None] + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=mask)
    if HAS_PEEL:
        dxp = yp * (dyp - dot[:, None]) * inv_temperature
        tl.store(dx_ptr + dx_start[:, None] + pcols, dxp.to(dx_ptr.dtype.element_ty), mask=pmask,
                 eviction_policy="evict_first")


@_launch.jit
def _softmax_bwd_long_kernel(dx_ptr, dy_ptr, y_ptr, n_rows, n_cols, dx_off, dx_row_stride, dy_off, dy_row_stride,
                             y_off, y_row_stride, inv_temperature, BLOCK_N: tl.constexpr, VEC: tl.constexpr,
                             DX_ALIGNED: tl.constexpr, DY_ALIGNED: tl.constexpr):
    """Long rows, persistent grid sized like the forward's: pass 1 sums dy * y chunk by chunk,
    pass 2 re-reads y and dy (from L2) and writes dx."""
    cols = tl.arange(0, BLOCK_N)
    for row in range(tl.program_id(0), n_rows, tl.num_programs(0)):
        y_start, head, y_body, body_len = _launch.row_split(row, y_off, y_row_stride, n_cols, VEC)
        dy_start = dy_off + tl.cast(row, tl.int64) * dy_row_stride
        dx_start = dx_off + tl.cast(row, tl.int64) * dx_row_stride
        dy_body = dy_start + head
        dx_body = dx_start + head
        if DY_ALIGNED:
            dy_body = tl.multiple_of(dy_body, VEC)
        if DX_ALIGNED:
            dx_body = tl.multiple_of(dx_body, VEC)
        pcols, pmask = _launch.peel(head, body_len, n_cols, VEC)
        yp = tl.load(y_ptr + y_start + pcols, mask=pmask, eviction_policy="evict_first", other=0.0).to(tl.float32)
        dyp = tl.load(dy_ptr + dy_start + pcols, mask=pmask, eviction_policy="evict_first", other=0.0).to(tl.float32)
        dot = tl.sum(dyp * yp, axis=0)
        for start in range(0, body_len, BLOCK_N):
            mask = start + cols < body_len
            y = tl.load(y_ptr + y_body + start + cols, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + dy_body + start + cols, mask=mask, other=0.0).to(tl.float32)
            dot += tl.sum(dy * y, axis=0)
        dxp = yp * (dyp - dot) * inv_temperature
        tl.store(dx_ptr + dx_start + pcols, dxp.to(dx_ptr.dtype.element_ty), mask=pmask, eviction_policy="evict_first")
        n_chunks = tl.cdiv(body_len, BLOCK_N)
        for i in range(0, n_chunks):  # backwards, as in the forward
            start = (n_chunks - 1 - i) * BLOCK_N
            mask = start + cols < body_len
            y = tl.load(y_ptr + y_body + start + cols, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + dy_body + start + cols, mask=mask, other=0.0).to(tl.float32)
            dx = y * (dy - dot) * inv_temperature
            tl.store(dx_ptr + dx_body + start + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)


# -----------------------------------------------------------------------------------------
# Launchers
# -----------------------------------------------------------------------------------------

_LOG2E = math.log2(math.e)

# Rows wider than MAX_ROW_BLOCK stream in chunks of LONG_CHUNK elements, 64 bytes per thread
# (8 warps for 16-bit dtypes, 16 for fp32: 64-73 registers on sm_90), on a persistent grid of
# LONG_ROWS_IN_FLIGHT_BYTES / row bytes programs (at least one per SM, at most what fits):
# 2 per SM for bf16 rows of 50257 (32 KB of loads in flight per SM), 26 MB of rows in
# flight, half the H100's 50 MB L2, so pass 2 re-reads from L2.
LONG_CHUNK = 8192
LONG_ROWS_IN_FLIGHT_BYTES = 26 << 20


@functools.lru_cache(maxsize=None)
def launch_config(n_cols: int, elem_size: int = 2, backward: bool = False, congruent: bool = True) -> dict:
    """Block shape and warps for a row length: whole rows on chip up to MAX_ROW_BLOCK. The
    long-row backward streams two inputs, so one program per SM fills the L2 budget: it
    takes 16 warps whatever the dtype (8 warps of 16-bit rows spill on sm_90), and chunks of
    64 bytes per thread and input (16384 16-bit or 8192 fp32 values)."""
    cfg = _launch.row_config(n_cols, LONG_CHUNK)
    if cfg["single_pass"] and cfg["BLOCK_N"] * elem_size <= 16:
        # Rows of at most one 16-byte vector: 32 per program. At 64 the misaligned (peeled)
        # builds spill 8-16 B (16-bit forward on sm_80, backward on sm_90): ptxas held them
        # to 64 / 96 registers.
        cfg["BLOCK_M"] = 32
    if cfg["single_pass"] and not backward and cfg["BLOCK_N"] == 8192:
        # 8 warps, not 16: at 16 ptxas held the bf16 peeled build to 40 registers on sm_80 (three
        # programs per SM) and spilled 8 B. On 8 warps the builds take 46-97 registers: 2-5
        # programs of one row per SM, 32-80 KB of 16-bit loads in flight (was 48 KB).
        cfg["num_warps"] = 8
    if not cfg["single_pass"]:
        cfg["num_warps"] = 16 if backward else LONG_CHUNK * elem_size // (64 * 32)
        if backward:  # 64 bytes per thread and input, as in the forward
            cfg["BLOCK_N"] = 16 * 32 * 64 // elem_size
        if not congruent:  # outputs not provably aligned: narrower stores, more registers
            cfg["BLOCK_N"] //= 4 if backward else 2
        cfg["max_programs_per_sm"] = 64 // cfg["num_warps"] // 2
    return cfg


def long_row_programs(n_rows: int, row_bytes: int, cfg: dict, device: torch.device) -> int:
    """Persistent grid of the long-row kernels: rows in flight (`row_bytes` each, every input
    counted) within LONG_ROWS_IN_FLIGHT_BYTES."""
    sms = _launch.sm_count(device)
    per_sm = max(1, min(cfg["max_programs_per_sm"], LONG_ROWS_IN_FLIGHT_BYTES // (row_bytes * sms)))
    if device.type not in ("cuda", "meta"):
        return max(1, min(n_rows, 3))  # the interpreter: enough programs to exercise the row loop
    return max(1, min(n_rows, per_sm * sms))


# (shape, device, dim, replay_key of the inputs) -> the recorded launch (_launch.launch).
_FWD_REPLAYS = _launch.Replays()
_BWD_REPLAYS = _launch.Replays()


def softmax_forward(x: torch.Tensor, temperature: float, dim: int) -> torch.Tensor:
    """y = softmax(x / temperature, dim). Copies x only if `dim` is not unit-stride."""
    y, y_rows = _launch.empty_rows_like(x, dim)
    scale_log2 = _LOG2E / temperature
    key = (x.shape, x.device, dim, _launch.replay_key(x))
    replay = _FWD_REPLAYS.get(key)
    if replay is not None:
        replay(y, x, scale_log2)
        return y
    if x.numel() == 0:
        return y
    x_rows, n_rows, n_cols, x_stride = _launch.rows(x, dim)
    slots = {"y": y, "x": x, "scale_log2": scale_log2} if _FWD_REPLAYS.wanted(key) else None
    x_base, x_off = _launch.aligned_base(x_rows)
    y_base, y_off = _launch.aligned_base(y_rows)
    vec = _launch.vec(x)
    y_aligned = _launch.congruent(vec, (x_off, x_stride, n_rows), (y_off, n_cols, n_rows))
    cfg = launch_config(n_cols, x.element_size(), congruent=y_aligned)
    if cfg["single_pass"]:
        grid = ((n_rows + cfg["BLOCK_M"] - 1) // cfg["BLOCK_M"],)
        replay = _launch.launch(
            _softmax_fwd_kernel, grid, (y_base, x_base, n_rows, n_cols, x_off, x_stride, y_off, n_cols, scale_log2),
            dict(BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], VEC=vec, Y_ALIGNED=y_aligned,
                 HAS_PEEL=_launch.has_peel(vec, n_cols, (x_off, x_stride, n_rows)), num_warps=cfg["num_warps"]),
            slots)
    else:
        grid = (long_row_programs(n_rows, n_cols * x.element_size(), cfg, x.device),)
        replay = _launch.launch(
            _softmax_fwd_long_kernel, grid,
            (y_base, x_base, n_rows, n_cols, x_off, x_stride, y_off, n_cols, scale_log2),
            dict(BLOCK_N=cfg["BLOCK_N"], VEC=vec, Y_ALIGNED=y_aligned, num_warps=cfg["num_warps"]), slots)
    _FWD_REPLAYS.put(key, replay)
    return y


def softmax_backward(dy: torch.Tensor, y: torch.Tensor, temperature: float, dim: int) -> torch.Tensor:
    """dx from the saved output y and the incoming gradient dy."""
    dx, dx_rows = _launch.empty_rows_like(y, dim)
    inv_t = 1.0 / temperature
    key = (y.shape, y.device, dim, _launch.replay_key(y, dy))
    replay = _BWD_REPLAYS.get(key)
    if replay is not None:
        replay(dx, dy, y, inv_t)
        return dx
    if y.numel() == 0:
        return dx
    y_rows, n_rows, n_cols, y_stride = _launch.rows(y, dim)
    dy_rows, _, _, dy_stride = _launch.rows(dy, dim)
    slots = {"dx": dx, "dy": dy, "y": y, "inv_t": inv_t} if _BWD_REPLAYS.wanted(key) else None
    (dx_base, dx_off), (dy_base, dy_off), (y_base, y_off) = (
        _launch.aligned_base(dx_rows), _launch.aligned_base(dy_rows), _launch.aligned_base(y_rows))
    dx_stride = n_cols  # a fresh contiguous tensor
    vec = _launch.vec(y)
    flags = {"VEC": vec, "DX_ALIGNED": _launch.congruent(vec, (y_off, y_stride, n_rows), (dx_off, dx_stride, n_rows)),
             "DY_ALIGNED": _launch.congruent(vec, (y_off, y_stride, n_rows), (dy_off, dy_stride, n_rows))}
    cfg = launch_config(n_cols, y.element_size(), backward=True,
                        congruent=flags["DX_ALIGNED"] and flags["DY_ALIGNED"])
    if cfg["single_pass"]:
        grid = ((n_rows + cfg["BLOCK_M"] - 1) // cfg["BLOCK_M"],)
        replay = _launch.launch(
            _softmax_bwd_kernel, grid,
            (dx_base, dy_base, y_base, n_rows, n_cols, dx_off, dx_stride, dy_off, dy_stride, y_off, y_stride, inv_t),
            dict(BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], **flags,
                 HAS_PEEL=_launch.has_peel(vec, n_cols, (y_off, y_stride, n_rows)), num_warps=cfg["num_warps"]),
            slots)
    else:
        grid = (long_row_programs(n_rows, 2 * n_cols * y.element_size(), cfg, y.device),)
        replay = _launch.launch(
            _softmax_bwd_long_kernel, grid,
            (dx_base, dy_base, y_base, n_rows, n_cols, dx_off, dx_stride, dy_off, dy_stride, y_off, y_stride, inv_t),
            dict(BLOCK_N=cfg["BLOCK_N"], **flags, num_warps=cfg["num_warps"]), slots)
    _BWD_REPLAYS.put(key, replay)
    return dx


# Every configuration the launchers can pick, for the sm_80/sm_90 compile test
# (kernels/triton/compile_check.py records the launches these calls make): each dtype, each
# width class, one row or several, and each alignment class of x, y and dy.
def launch_cases():
    from .compile_check import row_views, width_classes
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for n_cols in width_classes(_launch.MAX_ROW_BLOCK) + [2 * _launch.MAX_ROW_BLOCK]:
            for n_rows in (1, 3):
                views = row_views(n_rows, n_cols, dtype)
                for x in views:
                    yield lambda x=x: softmax_forward(x, 1.0, -1)
                    for dy in views:
                        yield lambda x=x, dy=dy: softmax_backward(dy, x, 1.0, -1)


# The benchmark shapes of issue 14 for the static SASS checks (tests/test_static_triton.py):
# (label, a call of the real launcher on meta tensors, allowed tagged accesses per kernel).
STATIC_SHAPES = ((8192, 4096), (8192, 50257))


def static_cases():
    cases = []
    for dtype in (torch.bfloat16, torch.float32):
        vec = _launch.VEC_BYTES // dtype.itemsize
        fwd, bwd = _launch.peel_allowance(vec, 2), _launch.peel_allowance(vec, 3)  # x, y / y, dy, dx
        allowed = {"_softmax_fwd_kernel": fwd, "_softmax_fwd_long_kernel": fwd,
                   "_softmax_bwd_kernel": bwd, "_softmax_bwd_long_kernel": bwd}
        for n_rows, n_cols in STATIC_SHAPES:
            def x(n_rows=n_rows, n_cols=n_cols, dtype=dtype):
                return torch.empty(n_rows, n_cols, dtype=dtype, device="meta")
            name = f"{n_rows}x{n_cols} {str(dtype)[6:]}"
            cases.append((f"softmax fwd {name}", lambda x=x: softmax_forward(x(), 1.0, -1), allowed))
            cases.append((f"softmax bwd {name}", lambda x=x: softmax_backward(x(), x(), 1.0, -1), allowed))
    return cases


# -----------------------------------------------------------------------------------------
# Registration: opaque custom ops (opcheck and torch.compile(fullgraph=True) trace them on
# every device, the interpreter included) with a fake impl and autograd on top.
# -----------------------------------------------------------------------------------------


def _softmax_impl(x: torch.Tensor, temperature: float, dim: int) -> torch.Tensor:
    # kernels.softmax checks this eagerly; under torch.compile only here, with the real value.
    _checks.positive_finite("temperature", temperature)
    return softmax_forward(x, temperature, dim)


softmax_op = torch.library.custom_op("gptk::softmax_triton", _softmax_impl, mutates_args=())


@softmax_op.register_fake
def _(x, temperature, dim):
    return _launch.empty_rows_like(x, dim)[0]


def _softmax_backward_impl(dy: torch.Tensor, y: torch.Tensor, temperature: float, dim: int) -> torch.Tensor:
    return softmax_backward(dy, y, temperature, dim)


softmax_backward_op = torch.library.custom_op("gptk::softmax_triton_backward", _softmax_backward_impl,
                                              mutates_args=())
_softmax_backward_call = _launch.fast_op(softmax_backward_op, _softmax_backward_impl)


@softmax_backward_op.register_fake
def _(dy, y, temperature, dim):
    return _launch.empty_rows_like(y, dim)[0]


def _setup_context(ctx, inputs, output):
    _, temperature, dim = inputs
    ctx.save_for_backward(output)
    ctx.temperature, ctx.dim = temperature, dim


def _backward(ctx, dy):
    (y,) = ctx.saved_tensors
    return _softmax_backward_call(dy, y, ctx.temperature, ctx.dim), None, None


_softmax_call = _launch.fast_op(softmax_op, _softmax_impl, _setup_context, _backward)


def softmax(x, temperature=1.0, dim=-1):
    """The triton backend's softmax (arguments already validated by kernels.softmax)."""
    return _softmax_call(x, float(temperature), int(dim))
