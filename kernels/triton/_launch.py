"""Launch helpers shared by the Triton ops: row views, block sizes, warp counts."""
from __future__ import annotations

import functools

import torch
import triton

# Elements one program keeps on chip for a single-pass row kernel. Past this the row
# streams through in chunks (more passes over memory, but no register spills).
MAX_ROW_BLOCK = 16384


def as_rows(t: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """`t` as a 2-D (rows, n) view with `dim` last, copying only when the kernel needs it.

    The kernels take a row stride but need unit stride along the row; a copy is made
    only when the rows cannot be expressed that way (dim not innermost, or a stride
    pattern reshape cannot flatten).
    """
    if t.dim() == 0:
        return t.reshape(1, 1)
    moved = t.movedim(dim, -1)
    n = moved.shape[-1]
    rows = moved.reshape(-1, n) if moved.numel() else moved.new_empty((0, n))
    if n > 1 and rows.stride(-1) != 1:
        rows = rows.contiguous()
    return rows


def empty_rows_like(t: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """(result, result_rows): a fresh tensor shaped like `t` whose `dim` is innermost and
    contiguous, plus its 2-D row view. Real and fake kernels both allocate through this,
    so their strides agree."""
    if t.dim() == 0:
        out = torch.empty((), dtype=t.dtype, device=t.device)
        return out, out.view(1, 1)
    moved_shape = t.movedim(dim, -1).shape
    buf = torch.empty(moved_shape, dtype=t.dtype, device=t.device)
    rows = buf.view(-1, moved_shape[-1]) if buf.numel() else buf.new_empty((0, moved_shape[-1]))
    return buf.movedim(-1, dim), rows


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def persistent_programs(n_work: int, device: torch.device, per_sm: int = 1) -> int:
    """Grid size for a persistent kernel: per_sm programs per SM (a few under the interpreter,
    enough to exercise the row loop), never more than the work items."""
    if device.type == "cuda":
        return max(1, min(n_work, per_sm * _sm_count(device.index if device.index is not None
                                                    else torch.cuda.current_device())))
    return max(1, min(n_work, 3))


def row_block(n_cols: int) -> int:
    return triton.next_power_of_2(max(int(n_cols), 1))


def row_warps(block_elems: int) -> int:
    """Warps for a program holding `block_elems` values: about 8-16 fp32 values per thread."""
    if block_elems <= 1024:
        return 4
    if block_elems <= 4096:
        return 8
    return 16


def rows_per_program(block_n: int, target: int = 2048, cap: int = 64) -> int:
    """Short rows share a program (a 2-D tile) so each program still moves enough bytes."""
    return max(1, min(cap, target // block_n))


def row_config(n_cols: int, long_block: int) -> dict:
    """Launch shape of a row kernel: whole rows on chip up to MAX_ROW_BLOCK (several short
    rows per program), else one row per program streamed in `long_block` chunks."""
    block_n = row_block(n_cols)
    if block_n > MAX_ROW_BLOCK:
        return {"single_pass": False, "BLOCK_M": 1, "BLOCK_N": long_block, "num_warps": row_warps(long_block)}
    block_m = rows_per_program(block_n)
    return {"single_pass": True, "BLOCK_M": block_m, "BLOCK_N": block_n, "num_warps": row_warps(block_m * block_n)}
