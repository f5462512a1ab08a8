"""Softmax with temperature: y = softmax(x / t) along one dim, forward and backward.

What it fuses: the eager `torch.softmax(x / t)` reads x, writes x / t, reads it back,
then writes y: 4 passes over the tensor. Here the temperature is folded into the
exponent, so a row that fits on chip costs one read and one write.

Roofline (N = numel, s = bytes per element):
  forward   2 N s bytes (read x, write y), ~5 FLOP/element: memory-bound everywhere.
  backward  3 N s bytes (read y and dy, write dx): dx = y * (dy - sum(dy * y)) / t.
Rows longer than MAX_ROW_BLOCK stream through in chunks with an online (running max,
running sum) softmax: 3 N s forward (x is read twice; the second read often hits L2),
4 N s backward.

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
def _softmax_fwd_kernel(y_ptr, x_ptr, n_rows, n_cols, x_row_stride, y_row_stride, scale_log2,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """BLOCK_M whole rows per program, each row held on chip: one read, one write."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    rows64 = rows.to(tl.int64)[:, None]
    x = tl.load(x_ptr + rows64 * x_row_stride + cols[None, :], mask=mask, other=-float("inf")).to(tl.float32)
    row_max = tl.max(x, axis=1)
    # A row of all -inf gives (-inf) - (-inf) = NaN, as torch does.
    e = tl.exp2((x - row_max[:, None]) * scale_log2)
    # One reciprocal per row, then multiplies: a per-element fp32 divide is a multi-instruction
    # sequence, which 16-bit inputs (twice the elements per byte) cannot hide behind memory.
    y = e * (1.0 / tl.sum(e, axis=1))[:, None]
    tl.store(y_ptr + rows64 * y_row_stride + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)


@_launch.jit
def _softmax_fwd_long_kernel(y_ptr, x_ptr, n_rows, n_cols, x_row_stride, y_row_stride, scale_log2,
                             BLOCK_N: tl.constexpr):
    """Rows too long for the chip, streamed in BLOCK_N chunks: pass 1 keeps a per-lane
    running max and sum (online softmax), pass 2 re-reads x and writes y. The grid is
    persistent (one program per SM, looping over rows) so the rows in flight fit in L2
    and pass 2's re-read comes from L2 rather than HBM."""
    cols = tl.arange(0, BLOCK_N)
    for row in range(tl.program_id(0), n_rows, tl.num_programs(0)):
        x_row = x_ptr + tl.cast(row, tl.int64) * x_row_stride
        y_row = y_ptr + tl.cast(row, tl.int64) * y_row_stride
        run_max = tl.full([BLOCK_N], -float("inf"), tl.float32)
        run_sum = tl.zeros([BLOCK_N], tl.float32)
        for start in range(0, n_cols, BLOCK_N):
            x = tl.load(x_row + start + cols, mask=start + cols < n_cols, other=-float("inf")).to(tl.float32)
            new_max = tl.maximum(run_max, x)
            # Lanes that have seen only -inf keep a zero sum; shifting by 0 avoids inf - inf.
            shift = tl.where(new_max == -float("inf"), 0.0, new_max)
            run_sum = run_sum * tl.exp2((run_max - shift) * scale_log2) + tl.exp2((x - shift) * scale_log2)
            run_max = new_max
        row_max = tl.max(run_max, axis=0)
        shift = tl.where(run_max == -float("inf"), 0.0, run_max)
        row_sum = tl.sum(run_sum * tl.exp2((shift - row_max) * scale_log2), axis=0)
        # NaN anywhere in the row reaches run_sum (exp2(NaN) = NaN) and so every output.
        inv_sum = 1.0 / row_sum
        for start in range(0, n_cols, BLOCK_N):
            mask = start + cols < n_cols
            x = tl.load(x_row + start + cols, mask=mask, other=-float("inf")).to(tl.float32)
            y = tl.exp2((x - row_max) * scale_log2) * inv_sum
            tl.store(y_row + start + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


@_launch.jit
def _softmax_bwd_kernel(dx_ptr, dy_ptr, y_ptr, n_rows, n_cols, dx_row_stride, dy_row_stride,
                        y_row_stride, inv_temperature, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dx = y * (dy - sum(dy * y)) / t, BLOCK_M whole rows per program."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    rows64 = rows.to(tl.int64)[:, None]
    y = tl.load(y_ptr + rows64 * y_row_stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + rows64 * dy_row_stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    dot = tl.sum(dy * y, axis=1)
    dx = y * (dy - dot[:, None]) * inv_temperature
    tl.store(dx_ptr + rows64 * dx_row_stride + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=mask)


@_launch.jit
def _softmax_bwd_long_kernel(dx_ptr, dy_ptr, y_ptr, n_rows, n_cols, dx_row_stride, dy_row_stride, y_row_stride,
                             inv_temperature, BLOCK_N: tl.constexpr):
    """Long rows, persistent grid: pass 1 accumulates sum(dy * y) per lane, pass 2 writes dx."""
    cols = tl.arange(0, BLOCK_N)
    for row in range(tl.program_id(0), n_rows, tl.num_programs(0)):
        y_row = y_ptr + tl.cast(row, tl.int64) * y_row_stride
        dy_row = dy_ptr + tl.cast(row, tl.int64) * dy_row_stride
        dx_row = dx_ptr + tl.cast(row, tl.int64) * dx_row_stride
        acc = tl.zeros([BLOCK_N], tl.float32)
        for start in range(0, n_cols, BLOCK_N):
            mask = start + cols < n_cols
            y = tl.load(y_row + start + cols, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_row + start + cols, mask=mask, other=0.0).to(tl.float32)
            acc += dy * y
        dot = tl.sum(acc, axis=0)
        for start in range(0, n_cols, BLOCK_N):
            mask = start + cols < n_cols
            y = tl.load(y_row + start + cols, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_row + start + cols, mask=mask, other=0.0).to(tl.float32)
            dx = y * (dy - dot) * inv_temperature
            tl.store(dx_row + start + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)


# -----------------------------------------------------------------------------------------
# Launchers
# -----------------------------------------------------------------------------------------

_LOG2E = math.log2(math.e)
LONG_ROW_BLOCK = 4096  # chunk width when a row does not fit on chip


@functools.lru_cache(maxsize=None)
def launch_config(n_cols: int) -> dict:
    """Block shape and warps for a row length: whole rows on chip up to MAX_ROW_BLOCK."""
    cfg = _launch.row_config(n_cols, LONG_ROW_BLOCK)
    if not cfg["single_pass"]:
        # Two running fp32 vectors per lane: 16 warps keep them in registers (8 warps spilled
        # 8 bytes on sm_80 under triton 3.6).
        cfg["num_warps"] = 16
    return cfg


def softmax_forward(x: torch.Tensor, temperature: float, dim: int) -> torch.Tensor:
    """y = softmax(x / temperature, dim). Copies x only if `dim` is not unit-stride."""
    y, y_rows = _launch.empty_rows_like(x, dim)
    if x.numel() == 0:
        return y
    x_rows, n_rows, n_cols, x_stride = _launch.rows(x, dim)
    cfg = launch_config(n_cols)
    scale_log2 = _LOG2E / temperature
    if cfg["single_pass"]:
        grid = ((n_rows + cfg["BLOCK_M"] - 1) // cfg["BLOCK_M"],)
        _softmax_fwd_kernel[grid](y_rows, x_rows, n_rows, n_cols, x_stride, n_cols,
                                  scale_log2, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
                                  num_warps=cfg["num_warps"])
    else:
        _softmax_fwd_long_kernel[(_launch.persistent_programs(n_rows, x.device),)](
            y_rows, x_rows, n_rows, n_cols, x_stride, n_cols, scale_log2,
            BLOCK_N=cfg["BLOCK_N"], num_warps=cfg["num_warps"])
    return y


def softmax_backward(dy: torch.Tensor, y: torch.Tensor, temperature: float, dim: int) -> torch.Tensor:
    """dx from the saved output y and the incoming gradient dy."""
    dx, dx_rows = _launch.empty_rows_like(y, dim)
    if y.numel() == 0:
        return dx
    y_rows, n_rows, n_cols, y_stride = _launch.rows(y, dim)
    dy_rows, _, _, dy_stride = _launch.rows(dy, dim)
    cfg = launch_config(n_cols)
    inv_t = 1.0 / temperature
    strides = (n_cols, dy_stride, y_stride)
    if cfg["single_pass"]:
        grid = ((n_rows + cfg["BLOCK_M"] - 1) // cfg["BLOCK_M"],)
        _softmax_bwd_kernel[grid](dx_rows, dy_rows, y_rows, n_rows, n_cols, *strides, inv_t,
                                  BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], num_warps=cfg["num_warps"])
    else:
        _softmax_bwd_long_kernel[(_launch.persistent_programs(n_rows, y.device),)](
            dx_rows, dy_rows, y_rows, n_rows, n_cols, *strides, inv_t,
            BLOCK_N=cfg["BLOCK_N"], num_warps=cfg["num_warps"])
    return dx


# Every configuration the launchers can pick, for the sm_80/sm_90 compile test.
def compile_cases():
    cases = []
    for dtype in ("fp32", "fp16", "bf16"):
        for n_cols in (1, 33, 1000, 4097, _launch.MAX_ROW_BLOCK):
            cfg = launch_config(n_cols)
            meta = {"BLOCK_M": cfg["BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"]}
            cases.append((_softmax_fwd_kernel, {"y_ptr": f"*{dtype}", "x_ptr": f"*{dtype}", "n_rows": "i32",
                          "n_cols": "i32", "x_row_stride": "i32", "y_row_stride": "i32", "scale_log2": "fp32"},
                          meta, cfg["num_warps"]))
            cases.append((_softmax_bwd_kernel, {"dx_ptr": f"*{dtype}", "dy_ptr": f"*{dtype}", "y_ptr": f"*{dtype}",
                          "n_rows": "i32", "n_cols": "i32", "dx_row_stride": "i32", "dy_row_stride": "i32",
                          "y_row_stride": "i32", "inv_temperature": "fp32"}, meta, cfg["num_warps"]))
        cfg = launch_config(_launch.MAX_ROW_BLOCK + 1)
        meta = {"BLOCK_N": cfg["BLOCK_N"]}
        cases.append((_softmax_fwd_long_kernel, {"y_ptr": f"*{dtype}", "x_ptr": f"*{dtype}", "n_rows": "i32",
                      "n_cols": "i32",
                      "x_row_stride": "i32", "y_row_stride": "i32", "scale_log2": "fp32"}, meta, cfg["num_warps"]))
        cases.append((_softmax_bwd_long_kernel, {"dx_ptr": f"*{dtype}", "dy_ptr": f"*{dtype}", "y_ptr": f"*{dtype}",
                      "n_rows": "i32", "n_cols": "i32", "dx_row_stride": "i32", "dy_row_stride": "i32", "y_row_stride": "i32",
                      "inv_temperature": "fp32"}, meta, cfg["num_warps"]))
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
