"""Layer norm over the last dim, and the pre-LN residual add fused into it, forward and backward.

    layer_norm(x, w, b)        y = (x - mean) * rstd * w + b,  rstd = 1 / sqrt(var + eps)
    add_layer_norm(x, r, w, b) s = x + r (rounded to the storage dtype), y = layer_norm(s)

What it fuses: eager `x + r` then `F.layer_norm` reads x and r, writes s, reads s back and
writes y. Here a row is read once and both outputs are written from the same registers;
y is the norm of the *rounded* s, exactly the tensor returned, so y == layer_norm(s).
Statistics are fp32 whatever the storage dtype; the forward saves mean and rstd (fp32,
one pair (mean, rstd) per row, in one (rows, 2) buffer) for the backward.

Roofline (M rows of N elements, e bytes per element; w, b and the fp32 per-row stats are
O(N + M), negligible next to M N):
  layer_norm      fwd 2 M N e  (read x, write y)
                  bwd 3 M N e  (read x and dy, write dx)
  add_layer_norm  fwd 4 M N e  (read x and r, write y and s)
                  bwd 4 M N e  (read s, dy and ds, write dx: dx is also the residual's
                                gradient, one tensor written once; 3 M N e when s is unused)
  plus, per weight/bias gradient, a P x N fp32 partials buffer written and read once
  (P = 4 x SM count: small next to M N e once M >> P).
Backward math per row: xhat = (x - mean) rstd, g = dy w,
  dx = rstd (g - xhat mean(g xhat) - mean(g)) [+ ds];   dw = sum_rows dy xhat;  db = sum_rows dy.
dw and db are deterministic: each program owns one row of a fp32 partials buffer (it sums a
fixed, strided set of row tiles in a fixed order), then a reduce kernel sums the partials
in a fixed order. No atomics.

Rows wider than the on-chip block stream through in chunks (no register spills):
  fwd  N > MAX_ROW_BLOCK: pass 1 keeps per-lane Welford (mean, M2) of the shifted row,
       combined with Chan's formula; pass 2 re-reads the row (s, for add_layer_norm) and
       writes y: 3 M N e (5 M N e fused), the re-read often from L2.
  bwd  N > BWD_MAX_ROW_BLOCK: a row kernel computes the two row means, then a column-tiled
       kernel writes dx and the partials: 5 M N e (x and dy are read twice).
The row is shifted by its first element before the statistics (mean = shift + mean(x -
shift)): a constant row gives exactly mean = x, var = 0, y = b and finite gradients
(rstd = 1/sqrt(eps)), and large offsets lose no precision. On chip the forward takes the
sum and the sum of squares of the shifted row in the same pass (var = E[d^2] - E[d]^2,
exact for a constant row). NaN or inf in a row makes the whole row NaN, as in torch.

Rows move in 16-byte vectors. The forward splits each row at x's alignment as softmax does
(a head and tail peeled, any width and row start, in single-row programs); r, y and s move
in 16-byte vectors where their rows are congruent with x's (contiguous tensors of any
width), w and b always (read from copies at each of the VEC phases when x's rows start at
varying phases). The backward needs rows 16-byte aligned and a whole number of vectors
wide. Other layouts take plain masked accesses (correct, narrower).

Input rows may have any row stride; only the last dim must be unit-stride. `as_rows`
copies only a tensor whose rows cannot be expressed that way (e.g. a transposed x, or
the broadcast gradient of a `.sum()`).
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import torch
import triton
import triton.language as tl

from . import _launch
from .. import _backend, _checks, _eager
from .._checks import NORM_MAX_HIDDEN

MAX_HIDDEN = NORM_MAX_HIDDEN["triton"]

# -----------------------------------------------------------------------------------------
# Kernels
# -----------------------------------------------------------------------------------------


@_launch.jit
def _ln_fwd_kernel(y_ptr, s_ptr, stats_ptr, x_ptr, r_ptr, w_ptr, b_ptr, n_rows, n_cols,
                   y_off, y_row_stride, s_off, s_row_stride, x_off, x_row_stride, r_off, r_row_stride,
                   w_off, b_off, wb_phase_stride, eps,
                   HAS_RES: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, STORE_STATS: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, VEC: tl.constexpr,
                   SPLIT: tl.constexpr, ALIGNED: tl.constexpr, R_ALIGNED: tl.constexpr, OUT_ALIGNED: tl.constexpr):
    """BLOCK_M whole rows per program held on chip: read x (and r) once, write y (and s).
    Bytes: 2 M N e, or 4 M N e with the residual; plus 8 bytes per row (mean, rstd) when
    STORE_STATS (a gradient will be needed).

    Every load is issued first (weight, bias, the rows, their first elements), then s is
    stored, then one fused (sum, sum of squares) reduction of the rows shifted by their first
    element gives mean and variance.
    SPLIT (single-row programs whose rows may start anywhere, e.g. odd widths or x[:, 1:]):
    each row splits at x's alignment, as in softmax: the body moves in 16-byte vectors, the
    head and tail in one peel; r, y and s bodies are 16-byte aligned where their rows are
    congruent with x's (R_ALIGNED, OUT_ALIGNED), and w and b always: the launcher passes
    them congruent with x's rows, or VEC copies of each at every phase (row `phase` of the
    copies starts at phase * wb_phase_stride, congruent with x's rows of that phase).
    Otherwise ALIGNED: every row starts on a 16-byte boundary and is whole vectors wide (the
    launcher checks it); neither: plain masked rows (multi-row tiles of odd layouts, where a
    peel per row spills)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    rows64 = rows.to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    r_body = r_off + rows64 * r_row_stride
    y_body = y_off + rows64 * y_row_stride
    s_body = s_off + rows64 * s_row_stride
    if SPLIT:
        x_start, head, x_body, body_len = _launch.row_split(rows, x_off, x_row_stride, n_cols, VEC)
        phase = x_start % VEC
        w_row = w_off + phase * wb_phase_stride  # x's row phase: the w/b copy congruent with it
        b_row = b_off + phase * wb_phase_stride
        w_cols = tl.multiple_of(w_row + head, VEC)[:, None] + cols[None, :]
        b_cols = tl.multiple_of(b_row + head, VEC)[:, None] + cols[None, :]
        r_body, y_body, s_body = r_body + head, y_body + head, s_body + head
        mask = row_ok[:, None] & (cols[None, :] < body_len[:, None])
        wmask = cols[None, :] < body_len[:, None]
    else:
        x_start = x_off + rows64 * x_row_stride
        x_body = x_start
        body_len = n_cols
        if ALIGNED:
            x_body = tl.multiple_of(x_body, VEC)
            body_len = tl.multiple_of(n_cols // VEC * VEC, VEC)
        # w and b as given (w_off, b_off unused), one row broadcast over the tile's rows.
        w_cols, b_cols = cols, cols
        wmask = cols < body_len
        mask = row_ok[:, None] & wmask[None, :]
    if R_ALIGNED:
        r_body = tl.multiple_of(r_body, VEC)
    if OUT_ALIGNED:
        y_body, s_body = tl.multiple_of(y_body, VEC), tl.multiple_of(s_body, VEC)
    if HAS_W:
        w = tl.load(w_ptr + w_cols, mask=wmask, other=0.0).to(tl.float32)
    if HAS_B:
        b = tl.load(b_ptr + b_cols, mask=wmask, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + x_body[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        r = tl.load(r_ptr + r_body[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    # The first element of each row (x + r rounded when fused): the shift.
    x0 = tl.load(x_ptr + x_start, mask=row_ok, other=0.0, eviction_policy="evict_first").to(tl.float32)
    if HAS_RES:
        r0 = tl.load(r_ptr + r_off + rows64 * r_row_stride, mask=row_ok, other=0.0,
                     eviction_policy="evict_first").to(tl.float32)
    if SPLIT:
        pcols, pok = _launch.peel(head[:, None], body_len[:, None], n_cols, VEC)
        pmask = row_ok[:, None] & pok
        if HAS_W:
            pw = tl.load(w_ptr + w_row[:, None] + pcols, mask=pok, other=0.0,
                         eviction_policy="evict_first").to(tl.float32)
        if HAS_B:
            pb = tl.load(b_ptr + b_row[:, None] + pcols, mask=pok, other=0.0,
                         eviction_policy="evict_first").to(tl.float32)
        xp = tl.load(x_ptr + x_start[:, None] + pcols, mask=pmask, other=0.0,
                     eviction_policy="evict_first").to(tl.float32)
        if HAS_RES:
            rp = tl.load(r_ptr + (r_body - head)[:, None] + pcols, mask=pmask, other=0.0,
                         eviction_policy="evict_first").to(tl.float32)
    if HAS_RES:
        s = (x + r).to(s_ptr.dtype.element_ty)
        tl.store(s_ptr + s_body[:, None] + cols[None, :], s, mask=mask)
        x = s.to(tl.float32)  # normalize what is returned as s
        x0 = (x0 + r0).to(s_ptr.dtype.element_ty).to(tl.float32)
        if SPLIT:
            sp = (xp + rp).to(s_ptr.dtype.element_ty)
            tl.store(s_ptr + (s_body - head)[:, None] + pcols, sp, mask=pmask, eviction_policy="evict_first")
            xp = sp.to(tl.float32)
    d = tl.where(mask, x - x0[:, None], 0.0)
    sum_d, sum_dd = tl.sum(d, axis=1), tl.sum(d * d, axis=1)
    if SPLIT:
        dp = tl.where(pmask, xp - x0[:, None], 0.0)
        sum_d += tl.sum(dp, axis=1)
        sum_dd += tl.sum(dp * dp, axis=1)
    mean_d = sum_d / n_cols
    # Centred on the first element, E[d^2] - E[d]^2 is exact for a constant row (0 - 0) and
    # loses nothing to a large common offset; clamped at 0 against rounding by a select, not
    # a max, so an inf in the row (inf - inf = NaN here) still makes the row NaN.
    var = sum_dd / n_cols - mean_d * mean_d
    rstd = tl.rsqrt(tl.where(var < 0.0, 0.0, var) + eps)
    y = (d - mean_d[:, None]) * rstd[:, None]
    if HAS_W:
        y = y * w
    if HAS_B:
        y = y + b
    tl.store(y_ptr + y_body[:, None] + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)
    if SPLIT:
        yp = (dp - mean_d[:, None]) * rstd[:, None]
        if HAS_W:
            yp = yp * pw
        if HAS_B:
            yp = yp + pb
        tl.store(y_ptr + (y_body - head)[:, None] + pcols, yp.to(y_ptr.dtype.element_ty), mask=pmask,
                 eviction_policy="evict_first")
    if STORE_STATS:
        # stats (n_rows, 2): (mean, rstd) pairs, so one address serves both
        tl.store(stats_ptr + 2 * rows, x0 + mean_d, mask=row_ok, eviction_policy="evict_first")
        tl.store(stats_ptr + 2 * rows + 1, rstd, mask=row_ok, eviction_policy="evict_first")


@_launch.jit
def _ln_fwd_long_kernel(y_ptr, s_ptr, stats_ptr, x_ptr, r_ptr, w_ptr, b_ptr, n_cols,
                        y_row_stride, s_row_stride, x_row_stride, r_row_stride, eps,
                        HAS_RES: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, STORE_STATS: tl.constexpr,
                        BLOCK_N: tl.constexpr):
    """One row per program in BLOCK_N chunks: pass 1 per-lane Welford statistics (and s),
    pass 2 re-reads the row (s when fused) and writes y.
    Bytes: 3 M N e, or 5 M N e with the residual (read x, r and s, write s and y)."""
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * x_row_stride
    r_row = r_ptr + row * r_row_stride
    s_row = s_ptr + row * s_row_stride
    cols = tl.arange(0, BLOCK_N)
    shift = tl.load(x_row).to(tl.float32)
    if HAS_RES:
        shift = (shift + tl.load(r_row).to(tl.float32)).to(s_ptr.dtype.element_ty).to(tl.float32)
    lane_mean = tl.zeros([BLOCK_N], tl.float32)
    lane_m2 = tl.zeros([BLOCK_N], tl.float32)
    lane_cnt = tl.zeros([BLOCK_N], tl.float32)
    count = 0.0
    for start in range(0, n_cols, BLOCK_N):
        mask = start + cols < n_cols
        x = tl.load(x_row + start + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_RES:
            s = (x + tl.load(r_row + start + cols, mask=mask, other=0.0).to(tl.float32)).to(s_ptr.dtype.element_ty)
            tl.store(s_row + start + cols, s, mask=mask)
            x = s.to(tl.float32)
        # Lanes in range have all been in range in every earlier chunk: one count for all.
        count += 1.0
        inv_count = 1.0 / count
        d = x - shift
        delta = d - lane_mean
        lane_mean += tl.where(mask, delta * inv_count, 0.0)
        lane_m2 += tl.where(mask, delta * (d - lane_mean), 0.0)
        lane_cnt += mask.to(tl.float32)
    mean_d = tl.sum(lane_cnt * lane_mean, axis=0) / n_cols
    spread = tl.where(lane_cnt > 0, lane_cnt * (lane_mean - mean_d) * (lane_mean - mean_d), 0.0)
    rstd = tl.rsqrt((tl.sum(lane_m2, axis=0) + tl.sum(spread, axis=0)) / n_cols + eps)
    if STORE_STATS:
        tl.store(stats_ptr + 2 * row, shift + mean_d)  # stats (n_rows, 2): (mean, rstd) pairs
        tl.store(stats_ptr + 2 * row + 1, rstd)
    # Pass 2 reads s back: make pass 1's stores visible to every thread of the program.
    tl.debug_barrier()
    src_row = s_row if HAS_RES else x_row
    for start in range(0, n_cols, BLOCK_N):
        mask = start + cols < n_cols
        x = tl.load(src_row + start + cols, mask=mask, other=0.0).to(tl.float32)
        y = (x - shift - mean_d) * rstd
        if HAS_W:
            y = y * tl.load(w_ptr + start + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_B:
            y = y + tl.load(b_ptr + start + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + row * y_row_stride + start + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


@_launch.jit
def _ln_bwd_row_means_kernel(c1_ptr, c2_ptr, dy_ptr, x_ptr, w_ptr, stats_ptr, n_cols,
                             dy_row_stride, x_row_stride, HAS_W: tl.constexpr, BLOCK_N: tl.constexpr):
    """Wide rows, step 1: c1 = mean(g xhat), c2 = mean(g) per row (g = dy w), in chunks.
    Bytes: 2 M N e (read x and dy)."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mean = tl.load(stats_ptr + 2 * row)  # stats (n_rows, 2): (mean, rstd) pairs
    rstd = tl.load(stats_ptr + 2 * row + 1)
    acc1 = tl.zeros([BLOCK_N], tl.float32)
    acc2 = tl.zeros([BLOCK_N], tl.float32)
    for start in range(0, n_cols, BLOCK_N):
        mask = start + cols < n_cols
        x = tl.load(x_ptr + row * x_row_stride + start + cols, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(dy_ptr + row * dy_row_stride + start + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_W:
            g = g * tl.load(w_ptr + start + cols, mask=mask, other=0.0).to(tl.float32)
        acc1 += tl.where(mask, (x - mean) * rstd, 0.0) * g
        acc2 += g
    tl.store(c1_ptr + row, tl.sum(acc1, axis=0) / n_cols)
    tl.store(c2_ptr + row, tl.sum(acc2, axis=0) / n_cols)


# No FMA contraction in the dx kernel: fused, g - c2 (g = dy w, c2 = mean(g)) becomes
# fma(dy, w, -c2), the rounding error of dy w, which rstd (up to 1/sqrt(eps) = 316) then
# amplifies: hidden size 1 gave dx = 1.7e-5 instead of exactly 0 on the H100.
LAUNCH_OPTIONS = {"_ln_bwd_kernel": {"enable_fp_fusion": False}}


@_launch.jit
def _ln_bwd_kernel(dx_ptr, pw_ptr, pb_ptr, dy_ptr, x_ptr, w_ptr, stats_ptr, ds_ptr, c1_ptr, c2_ptr,
                   n_rows, n_cols, inv_n_cols, dx_row_stride, dy_row_stride, x_row_stride, ds_row_stride,
                   HAS_W: tl.constexpr, COMPUTE_DW: tl.constexpr, COMPUTE_DB: tl.constexpr,
                   HAS_DS: tl.constexpr, ROW_MEANS_GIVEN: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, VEC: tl.constexpr, ALIGNED: tl.constexpr,
                   PREFETCH: tl.constexpr):
    """dx, and this program's row of the dw/db partials, for column block program_id(0).

    Program (c, p) of a (column blocks, P) grid takes row tiles p, p + P, p + 2P, ... in
    order and keeps dy * xhat and dy summed over them in registers: a fixed order, so the
    partials (and the final dw/db) are bitwise reproducible. With ROW_MEANS_GIVEN False
    the block spans the whole row and c1/c2 are reduced on chip (one read of x and dy).
    With PREFETCH the next tile's x and dy are loaded before the current one is used, so two
    tiles per program can be in flight; ds, needed only at the end, is loaded at the top of
    its tile. (Without: tiny rows and the wide-row path, where it costs a stack slot.)
    ALIGNED (the launcher checks it): every row of every tensor starts on a 16-byte boundary
    and the width is a whole number of vectors, which tl.multiple_of tells the compiler so
    rows move in 16-byte accesses (other rows: plain masked accesses, correct but narrower).
    Bytes: 3 M N e (read x, dy; write dx), + M N e with ds; + 4 N bytes per program and
    gradient for the partials.
    """
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    part = tl.program_id(1)
    n_parts = tl.num_programs(1)
    n_tiles = tl.cdiv(n_rows, BLOCK_M)
    width = n_cols
    if ALIGNED:
        width = tl.multiple_of(n_cols // VEC * VEC, VEC)
    col_ok = cols < width
    if HAS_W:
        w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    acc_dw = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    acc_db = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    if PREFETCH:  # the first tile's rows (an empty mask if this program has none)
        rows = part * BLOCK_M + tl.arange(0, BLOCK_M)
        mask = (rows < n_rows)[:, None] & col_ok[None, :]
        rows64 = rows.to(tl.int64)
        x_offs = rows64 * x_row_stride
        dy_offs = rows64 * dy_row_stride
        if ALIGNED:
            x_offs, dy_offs = tl.multiple_of(x_offs, VEC), tl.multiple_of(dy_offs, VEC)
        x_next = tl.load(x_ptr + x_offs[:, None] + cols[None, :], mask=mask, other=0.0)
        dy_next = tl.load(dy_ptr + dy_offs[:, None] + cols[None, :], mask=mask, other=0.0)
    for tile in range(part, n_tiles, n_parts):
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < n_rows
        mask = row_ok[:, None] & col_ok[None, :]
        rows64 = rows.to(tl.int64)
        if PREFETCH:
            x = x_next.to(tl.float32)
            dy = dy_next.to(tl.float32)
        else:
            x_offs = rows64 * x_row_stride
            dy_offs = rows64 * dy_row_stride
            if ALIGNED:
                x_offs, dy_offs = tl.multiple_of(x_offs, VEC), tl.multiple_of(dy_offs, VEC)
            x = tl.load(x_ptr + x_offs[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + dy_offs[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if HAS_DS:  # this tile's ds, in flight while the row sums reduce
            ds_offs = rows64 * ds_row_stride
            if ALIGNED:
                ds_offs = tl.multiple_of(ds_offs, VEC)
            ds = tl.load(ds_ptr + ds_offs[:, None] + cols[None, :], mask=mask, other=0.0)
        if PREFETCH:  # the next tile of this program (masked off past the last row)
            nrows = rows + n_parts * BLOCK_M
            nmask = (nrows < n_rows)[:, None] & col_ok[None, :]
            nrows64 = nrows.to(tl.int64)
            nx_offs = nrows64 * x_row_stride
            ndy_offs = nrows64 * dy_row_stride
            if ALIGNED:
                nx_offs, ndy_offs = tl.multiple_of(nx_offs, VEC), tl.multiple_of(ndy_offs, VEC)
            x_next = tl.load(x_ptr + nx_offs[:, None] + cols[None, :], mask=nmask, other=0.0)
            dy_next = tl.load(dy_ptr + ndy_offs[:, None] + cols[None, :], mask=nmask, other=0.0)
        mean = tl.load(stats_ptr + 2 * rows, mask=row_ok, other=0.0, eviction_policy="evict_first")
        rstd = tl.load(stats_ptr + 2 * rows + 1, mask=row_ok, other=0.0, eviction_policy="evict_first")
        xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        # The partials first: dy is then dead across the row reductions below.
        if COMPUTE_DW:
            acc_dw += dy * xhat
        if COMPUTE_DB:
            acc_db += dy
        g = dy
        if HAS_W:
            g = dy * w[None, :]
        if ROW_MEANS_GIVEN:
            c1 = tl.load(c1_ptr + rows, mask=row_ok, other=0.0, eviction_policy="evict_first")
            c2 = tl.load(c2_ptr + rows, mask=row_ok, other=0.0, eviction_policy="evict_first")
        else:
            # A multiply: IEEE division (what no-contraction compiles `/` to) calls a slow
            # path with a stack frame.
            c1 = tl.sum(xhat * g, axis=1) * inv_n_cols
            c2 = tl.sum(g, axis=1) * inv_n_cols
        dx = (g - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
        if HAS_DS:
            dx += ds.to(tl.float32)
        dx_offs = rows64 * dx_row_stride
        if ALIGNED:
            dx_offs = tl.multiple_of(dx_offs, VEC)
        tl.store(dx_ptr + dx_offs[:, None] + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=mask)
    if COMPUTE_DW:
        tl.store(pw_ptr + part * n_cols + cols, tl.sum(acc_dw, axis=0), mask=col_ok)
    if COMPUTE_DB:
        tl.store(pb_ptr + part * n_cols + cols, tl.sum(acc_db, axis=0), mask=col_ok)


@_launch.jit
def _ln_bwd_reduce_kernel(dw_ptr, db_ptr, pw_ptr, pb_ptr, n_parts, n_cols,
                          COMPUTE_DW: tl.constexpr, COMPUTE_DB: tl.constexpr,
                          BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    """dw, db = column sums of the (n_parts, n_cols) fp32 partials, in a fixed order.
    Bytes: 4 P N read and N e written per gradient."""
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < n_cols
    parts = tl.arange(0, BLOCK_P)
    acc_dw = tl.zeros([BLOCK_P, BLOCK_N], tl.float32)
    acc_db = tl.zeros([BLOCK_P, BLOCK_N], tl.float32)
    for start in range(0, n_parts, BLOCK_P):
        mask = ((start + parts) < n_parts)[:, None] & col_ok[None, :]
        offs = (start + parts).to(tl.int64)[:, None] * n_cols + cols[None, :]
        if COMPUTE_DW:
            acc_dw += tl.load(pw_ptr + offs, mask=mask, other=0.0)
        if COMPUTE_DB:
            acc_db += tl.load(pb_ptr + offs, mask=mask, other=0.0)
    if COMPUTE_DW:
        tl.store(dw_ptr + cols, tl.sum(acc_dw, axis=0).to(dw_ptr.dtype.element_ty), mask=col_ok)
    if COMPUTE_DB:
        tl.store(db_ptr + cols, tl.sum(acc_db, axis=0).to(db_ptr.dtype.element_ty), mask=col_ok)


# -----------------------------------------------------------------------------------------
# Launchers
# -----------------------------------------------------------------------------------------

# Backward holds x, dy, w and two accumulators per element: past 4096 a whole row no longer
# fits in registers without spilling, so wider rows take the two-kernel path.
BWD_MAX_ROW_BLOCK = 4096
LONG_FWD_BLOCK = 4096            # forward chunk for rows wider than MAX_ROW_BLOCK
LONG_BWD_ROW_MEANS_BLOCK = 4096  # chunk of the wide-row c1/c2 kernel
LONG_BWD_TILE = (1, 1024)        # (BLOCK_M, BLOCK_N) of the column-tiled wide-row backward
BWD_TILE_ELEMS = 2048            # row tile of the backward for rows under 512 bytes
BWD_PROGRAMS_PER_SM = 4          # backward programs (and rows of dw/db partials) per SM
# The partials reduce: one program per REDUCE_COLS columns (two fp32 16-byte vectors: N / 8
# programs, 128 at hidden 1024), summing all P partial rows of its columns in fixed order,
# in tiles of REDUCE_P rows: P = 4 x 132 = 528 on an H100 is one round trip of 16 KB per
# program (32 x 16 tiles took 17 dependent round trips on N / 16 programs). One tile for
# every P (fewer rows are masked off, more loop): one configuration to compile.
REDUCE_COLS = 8
REDUCE_P = 1024
REDUCE_WARPS = 8
# The Triton interpreter pays ~20 ms per program of this kernel (it re-patches
# triton.language on every tl.sum): 65536 columns took 3 minutes as N / 16 programs. The
# same code over wider column blocks; the compiled kernel keeps reduce_config's tiles.
INTERPRETER_REDUCE_BLOCK = (32, 1024)


def reduce_config() -> dict:
    """Tile of the partials reduce."""
    if _backend.triton_interpreting():
        block_p, block_n = INTERPRETER_REDUCE_BLOCK
        return {"BLOCK_P": block_p, "BLOCK_N": block_n, "num_warps": 4}
    return {"BLOCK_P": REDUCE_P, "BLOCK_N": REDUCE_COLS, "num_warps": REDUCE_WARPS}


@functools.lru_cache(maxsize=None)
def forward_config(n_cols: int, elem_size: int = 2) -> dict:
    """Whole rows on chip up to MAX_ROW_BLOCK, else chunks. A row of at least 1 KB gets its
    own program with 32 bytes (two 16-byte vectors) per thread and tensor: no second row
    in the tile, so weight and bias broadcast without a layout change through shared memory.
    Shorter rows share a program as before."""
    cfg = _launch.row_config(n_cols, LONG_FWD_BLOCK)
    row_bytes = cfg["BLOCK_N"] * elem_size
    if cfg["single_pass"] and row_bytes > 32768:  # x, r, w, b loaded first: 64 KB rows spill
        cfg = {"single_pass": False, "BLOCK_M": 1, "BLOCK_N": LONG_FWD_BLOCK}
    if cfg["single_pass"] and row_bytes >= 1024:
        # Up to 32 warps: a 32 KB row on 16 (64 bytes per thread) spills 8-24 B on sm_90 (16-bit,
        # plain rows or a peeled one with a residual); on 32 every variant is spill-free.
        cfg.update(BLOCK_M=1, num_warps=max(1, min(32, row_bytes // 1024)))
    if not cfg["single_pass"]:
        cfg["num_warps"] = 16  # 8 spill on sm_80 with 16-byte accesses
    return cfg


def plain_warps(cfg: dict) -> int:
    """Warps for the plain (unsplit) forward path: every element carries its own mask bit,
    and at 8 per thread sm_80/sm_90 spill a predicate register (fp16 64x32 tile, compile
    test), so a 2-D tile gets twice the warps: at most 4 masked values per thread."""
    return min(16, 2 * cfg["num_warps"]) if cfg["BLOCK_M"] > 1 else cfg["num_warps"]


def split_warps(cfg: dict, row_bytes: int) -> int:
    """Warps for a forward row split at x's alignment (SPLIT): 2 KB and 16 KB rows get twice
    forward_config's (16 bytes per thread and tensor, not 32). With those, ptxas held three
    split builds to 56-64 registers and spilled 8-24 B (fp32 and 16-bit 2 KB rows on 2 warps,
    sm_90; fp32 16 KB rows with a residual and a weight on 16 warps, sm_80: the compile
    check); every split build compiles spill-free with these."""
    return 2 * cfg["num_warps"] if row_bytes in (2048, 16384) else cfg["num_warps"]


def _bwd_warps(tile_elems: int) -> int:
    # ~8 values per thread keeps the backward near 80 registers (compile test), so
    # several programs share an SM; 16 warps is the most a program may have.
    return max(4, min(16, tile_elems // 256))


@functools.lru_cache(maxsize=None)
def backward_config(n_cols: int, elem_size: int = 2, aligned: bool = True) -> dict:
    """Row tiles on chip up to BWD_MAX_ROW_BLOCK, else the wide-row path. A row of 512 bytes
    or more is spread over as many warps (up to 16) as give each thread one 16-byte vector
    of it, so the weight's layout is the tile's column slice (no shuffle through shared
    memory). With BWD_PROGRAMS_PER_SM programs per SM, each needs ~8 KB of loads in flight:
    16-bit rows of one vector per thread take two rows per tile (sm_90: 128 registers, 4
    programs of 4 warps at 1024 wide, 40 KB in flight per SM), except at 8 KB, where two
    rows would need 16 warps and spill on sm_80: one row of two vectors per thread on 8
    warps instead (2 programs per SM, 48 KB); fp32 rows one. fp32 rows prefetch the next tile
    (16-bit 4 KB rows do not: it spilled 8 B on sm_80; two programs' x and dy, 32 KB per SM,
    are in flight without it).
    Shorter rows: ~BWD_TILE_ELEMS per tile, no prefetch (it costs them a stack slot).

    Not aligned (a row start or the width off the 16-byte grid): every element carries its
    own mask bit, and ptxas spilled 8-16 B in 2-D tiles (the full compile check): 16-bit
    rows of 256-1024 then take one row per tile (two spilled even on twice the warps), and
    the short-row tiles (64 rows of 16-32 columns spilled) twice the warps, as the forward's
    plain path does."""
    block_n = _launch.row_block(n_cols)
    row_bytes = block_n * elem_size
    if block_n <= BWD_MAX_ROW_BLOCK and row_bytes >= 512:
        warps = min(16, row_bytes // 512)
        prefetch = True
        if elem_size == 2 and warps == 16:  # 8 warps, two vectors per thread: no room to prefetch
            warps, prefetch = 8, False
        if elem_size == 2 and warps == 8:  # 4 KB rows: prefetching spilled 8 B on sm_80 (bf16)
            prefetch = False
        vectors = row_bytes // (warps * 32 * _launch.VEC_BYTES)
        # Two rows at 8 warps spill on sm_80 (2048-wide bf16): two rows only on 4 warps or fewer,
        # and then no prefetch (it spilled 16 B on sm_80).
        block_m = 2 if elem_size == 2 and vectors == 1 and warps <= 4 else 1
        cfg = {"single_pass": True, "BLOCK_M": block_m, "BLOCK_N": block_n, "num_warps": warps,
               "prefetch": prefetch and block_m == 1}
    elif block_n > BWD_MAX_ROW_BLOCK:
        block_m, block_n = LONG_BWD_TILE
        # One 16-byte vector per thread in fp32 (8 warps): two (4 warps) spilled 8 B on sm_90.
        cfg = {"single_pass": False, "BLOCK_M": block_m, "BLOCK_N": block_n, "prefetch": False,
               "num_warps": max(_bwd_warps(block_m * block_n), block_n * elem_size // 512),
               "means_block": LONG_BWD_ROW_MEANS_BLOCK,
               "means_warps": _launch.row_warps(LONG_BWD_ROW_MEANS_BLOCK)}
    else:
        block_m = _launch.rows_per_program(block_n, target=BWD_TILE_ELEMS)
        cfg = {"single_pass": True, "BLOCK_M": block_m, "BLOCK_N": block_n, "prefetch": False,
               "num_warps": _bwd_warps(block_m * block_n)}
    if not aligned and cfg["single_pass"] and row_bytes >= 512:
        cfg["BLOCK_M"] = 1  # 16-bit rows of 256-1024: two rows spilled even on twice the warps
    elif not aligned and cfg["BLOCK_M"] > 1:
        cfg["num_warps"] = min(16, 2 * cfg["num_warps"])
    return cfg


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    if device.type == "meta":
        return 132  # the static SASS checks model an H100
    return 1  # the interpreter runs one program at a time: few partials, same code paths


def n_partials(device: torch.device, n_row_tiles: int, n_col_blocks: int) -> int:
    """Row groups P of the backward grid: BWD_PROGRAMS_PER_SM programs per SM in all, never
    more groups than row tiles. Depends only on the device and shape, so results repeat
    bitwise."""
    return max(1, min(n_row_tiles, BWD_PROGRAMS_PER_SM * _sm_count(device) // n_col_blocks))


def _unit_stride(p: torch.Tensor) -> torch.Tensor:
    return p if p.stride(-1) == 1 else p.contiguous()  # weight/bias: O(N), a copy is cheap


def _stats_like(x: torch.Tensor) -> torch.Tensor:
    """The statistics buffer, fp32 (rows, 2): each row's (mean, rstd). Only the
    backward reads it. One buffer, not two: an allocation is ~1.5 us of the host path."""
    return torch.empty(_rows_of(x), 2, dtype=torch.float32, device=x.device)  # int sizes: ~0.6 us cheaper


def _rows_of(x: torch.Tensor) -> int:
    n_cols = x.shape[-1]
    return x.numel() // n_cols if n_cols else math.prod(x.shape[:-1])


def forward_split(vec: int, cfg: dict, n_rows: int, n_cols: int, x_layout, r_layout, out_layouts,
                  w_layouts) -> dict:
    """Constexprs of the forward's 16-byte access for row tensors given as (off, row stride,
    n_rows) of their aligned bases (_launch.aligned_base): ALIGNED when every x row starts on
    a 16-byte boundary and is whole vectors wide; else SPLIT (single-row programs: each row
    split at x's alignment), or plain masked rows in multi-row tiles, where a peel per row
    spills, and in 32 KB rows (32 warps, 64 registers a thread: the split's per-row
    addressing spills 8-64 B there on sm_80/sm_90). R_ALIGNED / OUT_ALIGNED: r's / every one
    of `out_layouts`' (y's, s's) rows congruent with x's.
    PHASE_COPIES: w and b (their offsets `w_layouts`) are not congruent with every x row, so
    the kernel reads copies of them at each phase (wb_phase_copies)."""
    peel = _launch.has_peel(vec, n_cols, x_layout)
    split = peel and cfg["BLOCK_M"] == 1 and cfg["num_warps"] < 32
    aligned_rows = not peel or split
    return {"VEC": vec, "SPLIT": split, "ALIGNED": not peel,
            "R_ALIGNED": aligned_rows and _launch.congruent(vec, x_layout, r_layout),
            "OUT_ALIGNED": aligned_rows and _launch.congruent(vec, x_layout, *out_layouts),
            "PHASE_COPIES": split and not all(_launch.congruent(vec, x_layout, (off, 0, n_rows))
                                              for off in w_layouts)}


def wb_phase_copies(params, vec: int, n_cols: int):
    """VEC copies of each of `params` (weight, bias; None stays None) in one buffer, copy q
    starting at element q * stride with stride = 1 (mod VEC): 16-byte aligned storage, so
    copy q starts q elements past a 16-byte boundary, congruent with x rows of phase q.
    Returns (tensors to pass, stride). O(VEC N) bytes, one copy kernel: only for rows that
    start at varying phases (odd widths) or off w's phase."""
    stride = -(-n_cols // vec) * vec + 1
    present = [p for p in params if p is not None]
    buf = present[0].new_empty((len(present), vec * stride))
    buf.as_strided((len(present), vec, n_cols), (vec * stride, stride, 1)).copy_(
        torch.stack(present)[:, None, :].expand(len(present), vec, n_cols))
    copies = iter(buf)
    return [next(copies) if p is not None else None for p in params], stride


# (shape, device, replay_key of the inputs) -> the recorded forward launch (_launch.launch).
_FWD_REPLAYS = _launch.Replays()


def forward(x, residual, weight, bias, eps, stats: bool = True, out=None):
    """(y, s, stats); s is None without a residual. stats: fp32 (rows, 2), each row's (mean,
    rstd) (see _stats_like); with stats=False (no gradient to come) it is neither computed
    nor allocated: None. `out`, if given, is (y, s, stats) already allocated (contiguous)."""
    contiguous, want_stats = x.is_contiguous(), stats
    if out is not None:
        y, s, stats = out
        y_rows, s_rows = y, s
    elif contiguous and x.dim():
        y = y_rows = torch.empty_like(x)
        s = s_rows = torch.empty_like(x) if residual is not None else None
    else:
        y, y_rows = _launch.empty_rows_like(x)
        s, s_rows = _launch.empty_rows_like(x) if residual is not None else (None, None)
    if out is None:
        stats = _stats_like(x) if want_stats else None
    # _launch.replay_key's content, inline: the per-call key is ~0.5 us cheaper.
    key = (x.shape, x.device, want_stats, x.dtype, contiguous, x.data_ptr() & 15,
           None if residual is None else (residual.dtype, residual.is_contiguous(), residual.data_ptr() & 15),
           None if weight is None else (weight.dtype, weight.is_contiguous(), weight.data_ptr() & 15),
           None if bias is None else (bias.dtype, bias.is_contiguous(), bias.data_ptr() & 15))
    entry = _FWD_REPLAYS.get(key)
    if entry is not None:
        replay, phase_copies = entry
        w_c = b_c = None
        if phase_copies:  # made again each call: w and b may have changed since
            (w_c, b_c), _ = wb_phase_copies((weight, bias), _launch.vec(x), x.shape[-1])
        replay(y, s, stats, x, residual, weight, bias, w_c, b_c, eps)
        return y, s, stats
    if x.numel() == 0:
        if want_stats:
            stats.fill_(float("nan"))  # rows of zero width (torch gives NaN statistics too)
        return y, s, stats
    x_rows, n_rows, n_cols, x_stride = _launch.rows(x)
    r_rows, _, _, r_stride = _launch.rows(residual) if residual is not None else (x_rows, 0, 0, x_stride)
    if s_rows is None:
        s_rows = y_rows  # never written: HAS_RES is False
    w_arg = _unit_stride(weight) if weight is not None else x_rows
    b_arg = _unit_stride(bias) if bias is not None else x_rows
    flags = {"HAS_RES": residual is not None, "HAS_W": weight is not None, "HAS_B": bias is not None,
             "STORE_STATS": want_stats}
    stats_arg = stats if want_stats else y_rows  # never written without stats
    cfg = forward_config(n_cols, x.element_size())
    slots = {"y": y, "s": s, "stats": stats, "x": x, "r": residual, "w": weight, "b": bias, "w_c": None,
             "b_c": None, "eps": eps} if _FWD_REPLAYS.wanted(key) else None
    phase_copies = False
    if cfg["single_pass"]:
        (y_b, y_o), (s_b, s_o), (x_b, x_o), (r_b, r_o), (w_b, w_o), (b_b, b_o) = (
            _launch.aligned_base(t) for t in (y_rows, s_rows, x_rows, r_rows, w_arg, b_arg))
        vec = _launch.vec(x)
        split = forward_split(vec, cfg, n_rows, n_cols, (x_o, x_stride, n_rows),
                              (r_o, r_stride, n_rows) if residual is not None else (x_o, x_stride, n_rows),
                              ((y_o, n_cols, n_rows), (s_o, n_cols, n_rows)),
                              [o for o, p in ((w_o, weight), (b_o, bias)) if p is not None])
        phase_stride = 0
        if not split["SPLIT"]:  # w and b read as given
            w_b, b_b, w_o, b_o = w_arg, b_arg, 0, 0
        phase_copies = split.pop("PHASE_COPIES")
        if phase_copies:  # slots of the replay, made again on each call
            (w_c, b_c), phase_stride = wb_phase_copies((w_arg if weight is not None else None,
                                                        b_arg if bias is not None else None), vec, n_cols)
            w_b, b_b, w_o, b_o = (w_c if w_c is not None else x_rows), (b_c if b_c is not None else x_rows), 0, 0
            if slots is not None:
                slots["w_c"], slots["b_c"] = w_c, b_c
        plain = not (split["SPLIT"] or split["ALIGNED"])
        num_warps = (plain_warps(cfg) if plain else split_warps(cfg, cfg["BLOCK_N"] * x.element_size())
                     if split["SPLIT"] else cfg["num_warps"])
        replay = _launch.launch(
            _ln_fwd_kernel, (-(-n_rows // cfg["BLOCK_M"]),),
            (y_b, s_b, stats_arg, x_b, r_b, w_b, b_b, n_rows, n_cols, y_o, n_cols, s_o, n_cols,
             x_o, x_stride, r_o, r_stride, w_o, b_o, phase_stride, eps),
            dict(**flags, **split, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], num_warps=num_warps),
            slots)
    else:
        # y and s: fresh contiguous rows
        replay = _launch.launch(
            _ln_fwd_long_kernel, (n_rows,),
            (y_rows, s_rows, stats_arg, x_rows, r_rows, w_arg, b_arg, n_cols, n_cols, n_cols, x_stride,
             r_stride, eps),
            dict(**flags, BLOCK_N=cfg["BLOCK_N"], num_warps=cfg["num_warps"]), slots)
    if replay is not None:
        _FWD_REPLAYS.put(key, (replay, phase_copies))
    return y, s, stats


def _bwd_scratch(x, stats, parts: int, cfg: dict, need_dw: bool, need_db: bool):
    """(pw, pb, c1, c2): per-program dw/db partials and the wide-row path's row means (each
    `stats`, an unused placeholder, where not needed)."""
    n_cols = x.shape[-1]
    pw = torch.empty(parts, n_cols, dtype=torch.float32, device=x.device) if need_dw else stats
    pb = torch.empty(parts, n_cols, dtype=torch.float32, device=x.device) if need_db else stats
    if cfg["single_pass"]:
        return pw, pb, stats, stats
    return pw, pb, stats.new_empty(stats.shape[0]), stats.new_empty(stats.shape[0])


# (shape, device, needs, replay_key of the inputs) -> (partials, backward config, the
# recorded launches in order).
_BWD_REPLAYS = _launch.Replays()


def backward(dy, x, weight, stats, ds, need_dw: bool, need_db: bool):
    """(dx, dw, db) from the saved x (s for add_layer_norm) and its forward's statistics
    (rows, 2). dx includes ds when given. dw/db are empty (0,) tensors when not needed."""
    dx, dx_rows = _launch.empty_rows_like(x)
    n_cols = x.shape[-1]
    dw = x.new_empty(n_cols if need_dw else 0)  # sizes as ints, not tuples: ~0.7 us cheaper each
    db = x.new_empty(n_cols if need_db else 0)
    key = (x.shape, x.device, need_dw, need_db, _launch.replay_key(dy, x, weight, stats, ds))
    plan = _BWD_REPLAYS.get(key)
    if plan is not None:
        parts, cfg, replays = plan
        pw, pb, c1, c2 = _bwd_scratch(x, stats, parts, cfg, need_dw, need_db)
        inv_n = 1.0 / n_cols
        for replay in replays:
            replay(dx, dw, db, pw, pb, c1, c2, dy, x, weight, stats, ds, inv_n)
        return dx, dw, db
    if x.numel() == 0:
        return dx, dw.zero_(), db.zero_()
    x_rows, n_rows, _, x_stride = _launch.rows(x)
    dy_rows, _, _, dy_stride = _launch.rows(dy)
    ds_rows, _, _, ds_stride = _launch.rows(ds) if ds is not None else (dy_rows, 0, 0, dy_stride)
    vec = _launch.vec(x)
    aligned = n_cols % vec == 0 and all(t.data_ptr() % _launch.VEC_BYTES == 0
                                        and (n_rows <= 1 or stride % vec == 0)
                                        for t, stride in ((dx_rows, n_cols), (dy_rows, dy_stride),
                                                          (x_rows, x_stride), (ds_rows, ds_stride)))
    cfg = backward_config(n_cols, x.element_size(), aligned)
    n_col_blocks = -(-n_cols // cfg["BLOCK_N"])
    parts = n_partials(x.device, -(-n_rows // cfg["BLOCK_M"]), n_col_blocks)
    pw, pb, c1, c2 = _bwd_scratch(x, stats, parts, cfg, need_dw, need_db)
    inv_n = 1.0 / n_cols
    slots = {"dx": dx, "dw": dw, "db": db, "pw": pw, "pb": pb, "c1": c1, "c2": c2, "dy": dy, "x": x,
             "w": weight, "stats": stats, "ds": ds, "inv_n": inv_n} if _BWD_REPLAYS.wanted(key) else None
    replays = []
    w_arg = _unit_stride(weight) if weight is not None else x_rows
    if not cfg["single_pass"]:
        replays.append(_launch.launch(
            _ln_bwd_row_means_kernel, (n_rows,),
            (c1, c2, dy_rows, x_rows, w_arg, stats, n_cols, dy_stride, x_stride),
            dict(HAS_W=weight is not None, BLOCK_N=cfg["means_block"], num_warps=cfg["means_warps"]), slots))
    replays.append(_launch.launch(
        _ln_bwd_kernel, (n_col_blocks, parts),
        (dx_rows, pw, pb, dy_rows, x_rows, w_arg, stats, ds_rows, c1, c2, n_rows, n_cols, inv_n,
         n_cols, dy_stride, x_stride, ds_stride),
        dict(HAS_W=weight is not None, COMPUTE_DW=need_dw, COMPUTE_DB=need_db, HAS_DS=ds is not None,
             ROW_MEANS_GIVEN=not cfg["single_pass"], BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], VEC=vec,
             ALIGNED=aligned, PREFETCH=cfg["prefetch"], num_warps=cfg["num_warps"],
             **LAUNCH_OPTIONS["_ln_bwd_kernel"]), slots))
    if need_dw or need_db:
        rcfg = reduce_config()
        replays.append(_launch.launch(
            _ln_bwd_reduce_kernel, (-(-n_cols // rcfg["BLOCK_N"]),),
            (dw if need_dw else db, db if need_db else dw, pw, pb, parts, n_cols),
            dict(COMPUTE_DW=need_dw, COMPUTE_DB=need_db, BLOCK_P=rcfg["BLOCK_P"], BLOCK_N=rcfg["BLOCK_N"],
                 num_warps=rcfg["num_warps"]), slots))
    if all(r is not None for r in replays):
        _BWD_REPLAYS.put(key, (parts, cfg, replays))
    return dx, dw, db


# Every configuration the launchers can pick, for the sm_80/sm_90 compile test
# (kernels/triton/compile_check.py records the launches these calls make): each dtype,
# width class, alignment class and flag combination, statistics stored or not.
def launch_cases():
    import itertools

    from .compile_check import row_views, width_classes
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for n_cols, n_rows in itertools.product(width_classes(MAX_HIDDEN), (1, 3)):  # one row: any stride splits
            views = row_views(n_rows, n_cols, dtype)
            w = torch.empty(n_cols, dtype=dtype, device="meta")
            stats = torch.empty((n_rows, 2), dtype=torch.float32, device="meta")
            for x in views:
                # Every residual layout: r's rows congruent with x's or not (R_ALIGNED).
                for res, has_w, has_b, keep in itertools.product((None, *views), (None, w), (None, w),
                                                                 (False, True)):
                    yield lambda x=x, r=res, wt=has_w, b=has_b, k=keep: forward(x, r, wt, b, 1e-5, stats=k)
                for dy in views[:2]:
                    for has_w, need_dw, need_db, ds in itertools.product((None, w), (False, True), (False, True),
                                                                        (None, views[0])):
                        if need_dw and has_w is None:
                            continue  # no weight, no weight gradient
                        yield lambda x=x, dy=dy, wt=has_w, dw=need_dw, db=need_db, ds=ds: backward(
                            dy, x, wt, stats, ds, dw, db)


# The benchmark shapes of issue 14 for the static SASS checks (tests/test_static_triton.py):
# (label, a call of the real launcher on meta tensors, allowed tagged accesses per kernel:
# the peel of each row tensor and the per-row scalars: first elements, mean, rstd, c1, c2),
# and a forward whose rows start at every phase (an odd width: each row split at x's
# alignment, w and b read from their phase copies).
STATIC_SHAPES = ((16384, 1024), (16384, 4096))
STATIC_MISALIGNED_FORWARD = (16384, 1023)


def static_cases():
    cases = []
    for dtype in (torch.bfloat16, torch.float32):
        vec = _launch.VEC_BYTES // dtype.itemsize
        # The partials reduce reads P x N fp32 (P = 4 x 132 rows: ~4% of the backward's
        # bytes) and writes dw, db: not row data; only its local memory is checked.
        # Forward: the peels of x, r, y, s, w and b (those of w and b counted twice: fp32 rows
        # split at every phase take up to 5 scalar accesses per peel), and x0, r0, mean, rstd.
        allowed = {"_ln_fwd_kernel": _launch.peel_allowance(vec, 8, scalars=4), "_ln_bwd_kernel": 4,
                   "_ln_bwd_reduce_kernel": "exempt: P x N fp32 partials, ~4% of the backward's bytes"}
        for n_rows, n_cols in STATIC_SHAPES:
            def t(shape=(n_rows, n_cols), dtype=dtype):
                return torch.empty(shape, dtype=dtype, device="meta")

            def stats(n_rows=n_rows):
                return torch.empty((n_rows, 2), dtype=torch.float32, device="meta")
            name = f"{n_rows}x{n_cols} {str(dtype)[6:]}"
            w = lambda n_cols=n_cols, t=t: t((n_cols,))  # noqa: E731
            cases += [
                (f"layer_norm fwd {name}", lambda t=t, w=w: forward(t(), None, w(), w(), 1e-5), allowed),
                (f"add_layer_norm fwd {name}", lambda t=t, w=w: forward(t(), t(), w(), w(), 1e-5), allowed),
                (f"layer_norm bwd {name}", lambda t=t, w=w, stats=stats: backward(
                    t(), t(), w(), stats(), None, True, True), allowed),
                (f"add_layer_norm bwd {name}", lambda t=t, w=w, stats=stats: backward(
                    t(), t(), w(), stats(), t(), True, True), allowed),
            ]
        n_rows, n_cols = STATIC_MISALIGNED_FORWARD
        t = functools.partial(torch.empty, dtype=dtype, device="meta")
        name = f"{n_rows}x{n_cols} {str(dtype)[6:]}"
        cases += [(f"layer_norm fwd {name}", lambda t=t: forward(t(n_rows, n_cols), None, t(n_cols), t(n_cols), 1e-5),
                   allowed),
                  (f"add_layer_norm fwd {name}", lambda t=t: forward(t(n_rows, n_cols), t(n_rows, n_cols), t(n_cols),
                                                                      t(n_cols), 1e-5), allowed)]
    return cases


# -----------------------------------------------------------------------------------------
# Registration: opaque custom ops with fake impls and autograd on top. The forward ops also
# return the fp32 statistics (rows, 2) (saved for backward, marked non-differentiable); the
# public functions below return only y, or (y, s).
# -----------------------------------------------------------------------------------------


def _layer_norm_impl(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                     eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    _checks.positive_finite("eps", eps)  # re-checked with the real value under torch.compile
    y, _, stats = forward(x, None, weight, bias, eps)
    return y, stats


layer_norm_op = torch.library.custom_op("gptk::layer_norm_triton", _layer_norm_impl, mutates_args=())


@layer_norm_op.register_fake
def _(x, weight, bias, eps):
    return _launch.empty_rows_like(x)[0], _stats_like(x)


def _add_layer_norm_impl(x: torch.Tensor, residual: torch.Tensor, weight: Optional[torch.Tensor],
                         bias: Optional[torch.Tensor], eps: float
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _checks.positive_finite("eps", eps)  # re-checked with the real value under torch.compile
    return forward(x, residual, weight, bias, eps)


add_layer_norm_op = torch.library.custom_op("gptk::add_layer_norm_triton", _add_layer_norm_impl, mutates_args=())


@add_layer_norm_op.register_fake
def _(x, residual, weight, bias, eps):
    return _launch.empty_rows_like(x)[0], _launch.empty_rows_like(x)[0], _stats_like(x)


def _layer_norm_backward_impl(dy: torch.Tensor, x: torch.Tensor, weight: Optional[torch.Tensor],
                              stats: torch.Tensor, ds: Optional[torch.Tensor],
                              need_dw: bool, need_db: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return backward(dy, x, weight, stats, ds, need_dw, need_db)


layer_norm_backward_op = torch.library.custom_op("gptk::layer_norm_triton_backward", _layer_norm_backward_impl,
                                                 mutates_args=())
_layer_norm_backward_call = _launch.fast_op(layer_norm_backward_op, _layer_norm_backward_impl)


@layer_norm_backward_op.register_fake
def _(dy, x, weight, stats, ds, need_dw, need_db):
    n_cols = x.shape[-1]
    return (_launch.empty_rows_like(x)[0], x.new_empty((n_cols,) if need_dw else (0,)),
            x.new_empty((n_cols,) if need_db else (0,)))


def _norm_grads(ctx, dy, ds, w_index):
    """(dx, dw, db) of the saved norm input; dx includes ds. None where not needed."""
    normed, weight, stats = ctx.saved_tensors
    need = ctx.needs_input_grad
    need_dw = weight is not None and need[w_index]
    need_db = ctx.has_bias and need[w_index + 1]
    dx, dw, db = _layer_norm_backward_call(dy, normed, weight, stats, ds, need_dw, need_db)
    return dx, (dw if need_dw else None), (db if need_db else None)


def _setup_context(ctx, inputs, output):
    weight, bias = inputs[-3], inputs[-2]
    stats = output[-1]
    ctx.mark_non_differentiable(stats)
    # Unused outputs' gradients arrive as None: no zero tensors to read back.
    ctx.set_materialize_grads(False)
    ctx.has_bias = bias is not None
    # layer_norm saves its input x; add_layer_norm saves s = x + residual (an output).
    normed = output[1] if len(output) == 3 else inputs[0]
    ctx.save_for_backward(normed, weight, stats)


def _layer_norm_backward(ctx, dy, _dstats):
    if dy is None:
        return None, None, None, None
    dx, dw, db = _norm_grads(ctx, dy, None, 1)
    return dx, dw, db, None


def _add_layer_norm_backward(ctx, dy, ds, _dstats):
    if dy is None:  # only s was used: its gradient goes straight to x and residual
        return ds, ds, None, None, None
    dsum, dw, db = _norm_grads(ctx, dy, ds, 2)
    return dsum, dsum, dw, db, None


def _inference(x, residual, weight, bias, eps):
    return forward(x, residual, weight, bias, eps, stats=False)  # (y, s, None): no statistics


def _layer_norm_inference(x, weight, bias, eps):
    return forward(x, None, weight, bias, eps, stats=False)


# Eager calls that record a gradient: the op's formulas (_norm_grads) in a Function whose
# outputs are only the differentiable ones (each output of a Python Function costs ~0.5 us to
# wrap, and the statistics need no non-differentiable marking when saved, not returned).
def _layer_norm_eager_forward(ctx, x, weight, bias, eps):
    y, _, stats = forward(x, None, weight, bias, eps)
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x, weight, stats)
    return y


def _layer_norm_eager_backward(ctx, dy):
    dx, dw, db = _norm_grads(ctx, dy, None, 1)
    return dx, dw, db, None


def _add_layer_norm_eager_forward(ctx, x, residual, weight, bias, eps):
    y, s, stats = forward(x, residual, weight, bias, eps)
    ctx.set_materialize_grads(False)  # an unused y or s: its gradient arrives as None
    ctx.has_bias = bias is not None
    ctx.save_for_backward(s, weight, stats)
    return y, s


def _add_layer_norm_eager_backward(ctx, dy, ds):
    if dy is None:  # only s was used: its gradient goes straight to x and residual
        return ds, ds, None, None, None
    dsum, dw, db = _norm_grads(ctx, dy, ds, 2)
    return dsum, dsum, dw, db, None


# Named as _eager.fast_op names its Functions: autograd graphs read like the traced ones.
_LayerNormEager = type("gptk_layer_norm_triton_eager", (torch.autograd.Function,), {
    "forward": staticmethod(_layer_norm_eager_forward),
    "backward": staticmethod(_launch.once_differentiable(_layer_norm_eager_backward))})
_AddLayerNormEager = type("gptk_add_layer_norm_triton_eager", (torch.autograd.Function,), {
    "forward": staticmethod(_add_layer_norm_eager_forward),
    "backward": staticmethod(_launch.once_differentiable(_add_layer_norm_eager_backward))})


# The same formulas through a C++ node when the C++ library is there (_eager.PythonNode):
# ~5 us less per forward than the Functions above, which remain the path without it.
def _layer_norm_node_backward(needs, saved, grads):
    x, weight, stats = saved
    need_dw, need_db = weight is not None and needs[1], needs[2]
    dx, dw, db = _layer_norm_backward_call(grads[0], x, weight, stats, None, need_dw, need_db)
    return dx, (dw if need_dw else None), (db if need_db else None)


def _add_layer_norm_node_backward(needs, saved, grads):
    dy, ds = grads
    if dy is None:  # only s was used: its gradient goes straight to x and residual
        return ds, ds, None, None
    s, weight, stats = saved
    need_dw, need_db = weight is not None and needs[2], needs[3]
    dsum, dw, db = _layer_norm_backward_call(dy, s, weight, stats, ds, need_dw, need_db)
    return dsum, dsum, (dw if need_dw else None), (db if need_db else None)


_LAYER_NORM_NODE = _eager.PythonNode("gptk_layer_norm_triton_eager", _layer_norm_node_backward)
# s's gradient alone passes straight through: the saved tensors are read only for y's.
_ADD_LAYER_NORM_NODE = _eager.PythonNode("gptk_add_layer_norm_triton_eager", _add_layer_norm_node_backward,
                                         saved_for=(0,))


_set_grad_enabled = torch._C._set_grad_enabled  # callers hold grad mode on: they record a node


def _layer_norm_grad(x, weight, bias, eps):
    node = _LAYER_NORM_NODE
    attach = node.attach
    if attach is _eager.UNRESOLVED:
        attach = node.resolve()
    if attach is None:
        return _LayerNormEager.apply(x, weight, bias, eps), None
    y, stats = node.empty_outputs(x, 1, _rows_of(x))
    _set_grad_enabled(False)  # as in a Function's forward: a copy of x's rows records nothing
    try:
        forward(x, None, weight, bias, eps, out=(y, None, stats))
    finally:
        _set_grad_enabled(True)
    attach((y,), (x, weight, bias), (x, weight, stats))
    return y, None


def _add_layer_norm_grad(x, residual, weight, bias, eps):
    node = _ADD_LAYER_NORM_NODE
    attach = node.attach
    if attach is _eager.UNRESOLVED:
        attach = node.resolve()
    if attach is None:
        return (*_AddLayerNormEager.apply(x, residual, weight, bias, eps), None)
    y, s, stats = node.empty_outputs(x, 2, _rows_of(x))
    _set_grad_enabled(False)  # as in a Function's forward: copies of rows record nothing
    try:
        forward(x, residual, weight, bias, eps, out=(y, s, stats))
    finally:
        _set_grad_enabled(True)
    attach((y, s), (x, residual, weight, bias), (s, weight, stats))
    return y, s, None


_layer_norm_call = _launch.fast_op(layer_norm_op, _layer_norm_impl, _setup_context, _layer_norm_backward,
                                   inference=_layer_norm_inference, grad_impl=_layer_norm_grad)
_add_layer_norm_call = _launch.fast_op(add_layer_norm_op, _add_layer_norm_impl, _setup_context,
                                       _add_layer_norm_backward, inference=_inference, grad_impl=_add_layer_norm_grad)


def layer_norm(x, weight=None, bias=None, eps=1e-5):
    """The triton backend's layer norm (arguments already validated by kernels.layer_norm)."""
    return _layer_norm_call(x, weight, bias, float(eps))[0]


def add_layer_norm(x, residual, weight=None, bias=None, eps=1e-5):
    """(layer_norm(x + residual), x + residual) in one pass (arguments already validated)."""
    y, s, _ = _add_layer_norm_call(x, residual, weight, bias, float(eps))
    return y, s
