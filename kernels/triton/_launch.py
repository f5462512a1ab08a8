"""Launch helpers shared by the Triton ops: a cheaper launch path, the eager/compiled
dispatch, row views, block sizes, warp counts."""
from __future__ import annotations

import contextlib
import functools
import inspect
import os

import torch
import triton
import triton.language as tl
from triton import knobs

# -----------------------------------------------------------------------------------------
# Launching: `jit` is triton.jit whose repeat launches skip Triton's generic binder.
# -----------------------------------------------------------------------------------------
# `kernel[grid](...)` costs 6-15 us of Python per call in Triton 3.6-3.8 (binding, per-argument
# specialisation, a string cache key, option parsing); a cached CompiledKernel launches in
# ~0.5 us. The fast path keys each call on exactly what Triton specialises on (pointer dtype
# and 16-byte alignment, integer == 1 / divisible by 16 / 32-bit range, constexpr values,
# launch options, the device), so two calls with equal keys get the same compiled kernel
# Triton itself would pick; tests/test_host_path.py checks that against Triton's own lookup.
# A first call, a profiler's launch hook or an argument of any other type takes Triton's path.


def _tensor_key(t):
    return (t.dtype, t.data_ptr() & 15 == 0)


def _int_key(i):
    if not -0x8000000000000000 <= i < 0x8000000000000000:
        raise KeyError(i)  # u64 range: let Triton handle it
    return (i == 1) | ((i & 15 == 0) << 1) | ((-0x80000000 <= i < 0x80000000) << 2)


_ARG_KEYS = {
    torch.Tensor: _tensor_key,
    torch.nn.Parameter: _tensor_key,
    int: _int_key,
    float: lambda f: 0.5,  # fp32, never specialised on its value
    bool: lambda b: b,
    type(None): lambda n: None,
}


def _hook_active(hook) -> bool:
    # Triton 3.6+ keeps launch hooks in a HookChain (never None): active when it has calls.
    return hook is not None and bool(getattr(hook, "calls", True))


def _instrumented() -> bool:
    """Whether Triton would compile a different kernel than our caches hold: an instrumentation
    mode (proton) or a stage-inspection hook, both part of Triton's own cache key."""
    return bool(getattr(knobs.compilation, "instrumentation_mode", "")
                or getattr(knobs.runtime, "add_stages_inspection_hook", None) is not None)


def _arg_key(a):
    return _ARG_KEYS[type(a)](a)


def _key_function(params, constexpr):
    """A function of the kernel's own signature returning (all arguments in order, cache key),
    generated once per kernel (as Triton generates its binder): no per-call loops, and the
    common argument types (tensors, ints) keyed inline without a call."""
    args, full, key = [], [], []
    namespace = {"K": _arg_key, "T": torch.Tensor}
    for p, const in zip(params, constexpr):
        n = p.name
        if p.default is inspect.Parameter.empty:
            args.append(n)
        else:
            namespace[f"default_{n}"] = p.default
            args.append(f"{n}=default_{n}")
        full.append(n)
        if const:
            key.append(n)
        else:  # the inline forms of _tensor_key and _int_key
            key.append(f"(({n}.dtype, {n}.data_ptr() & 15 == 0) if type({n}) is T else "
                       f"(({n} == 1) | (({n} & 15 == 0) << 1) | ((-0x80000000 <= {n} < 0x80000000) << 2) | "
                       f"(({n} >= 0x8000000000000000) << 3)) if type({n}) is int else "
                       f"0.5 if type({n}) is float else K({n}))")
    source = (f"def key_function({', '.join(args + ['**options'])}):\n"
              f"    return ({', '.join(full)},), ({', '.join(key)}, tuple(options.items()))\n")
    exec(source, namespace)
    return namespace["key_function"]


def _make_fast_jit():
    from triton import knobs
    from triton.runtime.driver import driver
    from triton.runtime.jit import JITFunction

    class FastJITFunction(JITFunction):
        def __init__(self, fn, **kwargs):
            super().__init__(fn, **kwargs)
            params = list(self.signature.parameters.values())
            self._fast_names = tuple(p.name for p in params)
            self._fast_key = _key_function(params, [kp.is_constexpr for kp in self.params])
            self._fast_cache = {}

        def __getitem__(self, grid):
            return functools.partial(self._fast_launch, grid)

        def run(self, *args, grid, warmup, **kwargs):  # what Autotuner and __getitem__ callers reach
            if warmup:
                return super().run(*args, grid=grid, warmup=warmup, **kwargs)
            return self._fast_launch(grid, *args, **kwargs)

        def _fast_launch(self, grid, *args, **kwargs):
            runtime = knobs.runtime
            try:
                if self.pre_run_hooks or _hook_active(runtime.launch_enter_hook) or _instrumented():
                    raise KeyError("hooks")
                full, key = self._fast_key(*args, **kwargs)
                device = driver.active.get_current_device()
                hit = self._fast_cache.get((device, runtime.debug, key))
            except (KeyError, TypeError):  # an argument type we do not key on, hooks, a bad call
                return super().run(*args, grid=grid, warmup=False, **kwargs)
            if hit is None:
                kernel = super().run(*args, grid=grid, warmup=False, **kwargs)
                if kernel is not None and not hasattr(kernel, "result"):  # not a pending async compile
                    self._fast_cache[(device, runtime.debug, key)] = (kernel, kernel.run, kernel.function,
                                                                      kernel.packed_metadata)
                return kernel
            kernel, launcher, function, packed_metadata = hit
            if callable(grid):
                grid = grid(dict(zip(self._fast_names, full)))
            n = len(grid)
            exit_hook = runtime.launch_exit_hook
            launcher(grid[0], grid[1] if n > 1 else 1, grid[2] if n > 2 else 1,
                     driver.active.get_current_stream(device), function, packed_metadata,
                     None, None, exit_hook if _hook_active(exit_hook) else None, *full)
            return kernel

    return FastJITFunction


def launch(kernel, grid, args, kwargs, slots=None):
    """kernel[grid](*args, **kwargs). With `slots` ({name: value}), also returns a replay: a
    function of those values, by position in `slots`' order, that launches the same compiled
    kernel with them in place of the arguments that are those objects (tensors and floats,
    matched by identity) and every other argument as it was here; or None when this launch
    cannot be replayed (the interpreter, a pending compile, a grid function, a tensor or
    float argument that is not a slot, an argument of any other type than those and
    int/bool/str/None).

    The caller keys the replay on everything the int/bool/str arguments were derived from
    (shapes, strides, dim, dtypes, 16-byte alignment of each pointer, device, flags): then
    Triton would pick the same compiled kernel and every fixed argument repeats (fresh
    outputs are allocated, hence aligned, alike), so a replay costs one
    launcher call, about a microsecond, instead of the binder's key over every argument.
    It checks what the caller cannot see (current device, debug knob, launch hooks,
    instrumentation) and otherwise takes the ordinary path."""
    kernel[grid](*args, **kwargs)
    if slots is None:
        return None
    return replay(kernel, grid, args, kwargs, slots)


class Replays:
    """One launcher's replays by key. A key's replay is formed on its second ordinary call, so
    shapes seen once (a decode step whose cache length grows, a one-off batch) never pay for
    generating one, and at most LIMIT are kept (past that the table starts over)."""
    LIMIT = 256

    def __init__(self):
        self._replays, self._seen = {}, set()
        self.get = self._replays.get  # the per-call lookup, without a Python frame (never rebound)

    def wanted(self, key) -> bool:
        """Whether this ordinary call should form a replay (its key was seen before)."""
        if key in self._seen:
            return True
        if len(self._seen) >= 4 * self.LIMIT:
            self._seen.clear()
        self._seen.add(key)
        return False

    def put(self, key, replay) -> None:
        if replay is not None:
            if len(self._replays) >= self.LIMIT:
                self._replays.clear()
            self._replays[key] = replay

    def clear(self) -> None:
        self._replays.clear()
        self._seen.clear()

    def __len__(self) -> int:
        return len(self._replays)


def replay_key(*tensors):
    """What a replay (see launch) depends on beyond shapes and flags: per tensor (None
    allowed) its dtype, contiguity and 16-byte alignment."""
    return tuple([None if t is None else (t.dtype, t.is_contiguous(), t.data_ptr() & 15) for t in tensors])


def replay(kernel, grid, args, kwargs, slots):
    """The replay of a launch that already ran (see launch), or None."""
    if not hasattr(kernel, "_fast_key") or not isinstance(grid, tuple) or not 1 <= len(grid) <= 3:
        return None
    from triton import knobs
    from triton.runtime.driver import driver
    full, key = kernel._fast_key(*args, **kwargs)
    device = driver.active.get_current_device()
    hit = kernel._fast_cache.get((device, knobs.runtime.debug, key))
    if hit is None:
        return None
    _, launcher, function, packed = hit
    names = list(slots)
    by_id = {}
    for name, value in slots.items():
        if isinstance(value, (torch.Tensor, float)):
            by_id.setdefault(id(value), name)
    if any(id(v) in by_id for v in kwargs.values()):
        return None  # a slot passed by keyword would stay fixed in the fallback call
    ns = {"KERNEL": kernel, "GRID": grid, "KW": kwargs, "LAUNCHER": launcher, "FUNCTION": function,
          "PACKED": packed, "RT": knobs.runtime, "CK": knobs.compilation, "DEBUG": knobs.runtime.debug,
          "DEVICE": device, "CURRENT": driver.active.get_current_device,
          "STREAM": driver.active.get_current_stream, "HOOK_ON": _hook_active}
    values = []
    for i, a in enumerate(full):
        if isinstance(a, (torch.Tensor, float)) and id(a) in by_id:
            values.append(by_id[id(a)])
        elif type(a) in (int, bool, str) or a is None:  # floats are per-call values: slots only
            ns[f"C{i}"] = a
            values.append(f"C{i}")
        else:
            return None  # a tensor the caller did not name (a temporary): not replayable
    n_call = len(args)  # the ordinary path takes the positional arguments and kwargs as given
    g = tuple(grid) + (1,) * (3 - len(grid))
    # The guard reads what the caller's key cannot see, inline (each call saved is ~0.1 us):
    # _hook_active's test on a hook chain, then _instrumented's two attributes.
    hooks = []
    for i, name in enumerate(("launch_enter_hook", "launch_exit_hook")):
        chain = getattr(knobs.runtime, name)
        if chain is not None and hasattr(chain, "calls"):  # a HookChain: active when it has calls
            ns[f"CHAIN{i}"] = chain
            hooks.append(f"RT.{name} is not CHAIN{i} or CHAIN{i}.calls")
        else:
            hooks.append(f"HOOK_ON(RT.{name})")
    if hasattr(knobs.compilation, "instrumentation_mode"):  # as _instrumented reads them
        hooks.append("CK.instrumentation_mode")
    if hasattr(knobs.runtime, "add_stages_inspection_hook"):
        hooks.append("RT.add_stages_inspection_hook is not None")
    source = (f"def replay({', '.join(names)}):\n"
              f"    if (RT.debug != DEBUG or CURRENT() != DEVICE or {' or '.join(hooks)}):\n"
              f"        return KERNEL[GRID]({', '.join(values[:n_call])}, **KW)\n"
              f"    LAUNCHER({g[0]}, {g[1]}, {g[2]}, STREAM(DEVICE), FUNCTION, PACKED, None, None, None, "
              f"{', '.join(values)})\n")
    exec(source, ns)
    return ns["replay"]


def _torch_scratch(size: int, alignment: int, stream):
    # torch's caching allocator, on the current device and stream: blocks are 512-byte aligned
    # (TMA descriptors need 128), and freed memory is reused only by later work on the stream.
    return torch.empty(size, dtype=torch.uint8, device="cuda")


@contextlib.contextmanager
def device_scratch():
    """Launches inside may run kernels that make tensor descriptors on the device: Triton's
    launcher asks the allocator that triton.set_allocator sets (a context variable) for their
    global scratch. The caller's allocator if one is set; otherwise torch's caching allocator
    for these launches only (gptk sets no process-wide Triton state)."""
    from triton.runtime import _allocation
    if not isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
        yield
        return
    token = _allocation._allocator.set(_torch_scratch)
    try:
        yield
    finally:
        _allocation._allocator.reset(token)


def jit(fn=None, **kwargs):
    """triton.jit with a cheaper repeat launch (under the interpreter: plain triton.jit)."""
    if fn is None:
        return lambda f: jit(f, **kwargs)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return triton.jit(fn, **kwargs)
    return _fast_jit_class()(fn, **kwargs)


@functools.lru_cache(maxsize=None)
def _fast_jit_class():
    return _make_fast_jit()

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


def rows(t: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, int, int, int]:
    """(tensor, n_rows, n_cols, row_stride) for a row kernel over `dim`. The common case (the
    last dim of a contiguous tensor) passes `t` itself: no view is built. Otherwise as_rows."""
    if (dim == -1 or dim == t.dim() - 1) and t.dim() > 0 and t.is_contiguous():
        n_cols = t.shape[-1]
        return t, (t.numel() // n_cols if n_cols else 0), n_cols, n_cols
    r = as_rows(t, dim)
    return r, r.shape[0], r.shape[1], r.stride(0)


def empty_rows_like(t: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """(result, result_rows): a fresh tensor shaped like `t` whose `dim` is innermost and
    contiguous, plus its 2-D row view. Real and fake kernels both allocate through this,
    so their strides agree."""
    if t.dim() == 0:
        out = torch.empty((), dtype=t.dtype, device=t.device)
        return out, out.view(1, 1)
    if (dim == -1 or dim == t.dim() - 1) and t.is_contiguous():
        out = torch.empty_like(t)  # contiguous like t; its rows are t's rows
        return out, out
    moved_shape = t.movedim(dim, -1).shape
    buf = torch.empty(moved_shape, dtype=t.dtype, device=t.device)
    rows = buf.view(-1, moved_shape[-1]) if buf.numel() else buf.new_empty((0, moved_shape[-1]))
    if dim == -1 or dim == t.dim() - 1:
        return buf, rows  # not a view: a fresh output (autograd nodes may only own fresh ones)
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


def next_power_of_2(n: int) -> int:
    """triton.next_power_of_2 without its per-call cost (a ConstexprFunction in Triton 3.8)."""
    return 1 << (max(int(n), 1) - 1).bit_length()


def sm_count(device: torch.device) -> int:
    """SMs of a CUDA device; 132 (an H100) for meta tensors, which the static SASS checks
    launch on; 1 elsewhere."""
    if device.type == "cuda":
        return _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    return 132 if device.type == "meta" else 1


def row_block(n_cols: int) -> int:
    return next_power_of_2(n_cols)


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


# -----------------------------------------------------------------------------------------
# 16-byte row access for any row width and any row start
# -----------------------------------------------------------------------------------------
# A row whose first element is not 16-byte aligned (odd widths such as 50257 in bf16, or a
# slice like x[:, 1:]) would make Triton fall back to scalar accesses for the whole row.
# Instead each row splits into a head (elements before its first 16-byte boundary), a body
# of whole 16-byte vectors, and a tail: the body moves in 16-byte accesses, head and tail
# (under 2 x VEC elements in all) in one small masked "peel" access. The kernels receive a
# base pointer rounded down to 16 bytes plus the element offset `off` of the tensor's first
# element from it, so a row's start `off + row * stride` and its split are plain integer
# arithmetic (identical under the interpreter), and Triton proves the body aligned from the
# specialised base pointer and tl.multiple_of on the offsets. Peel accesses (and per-row
# scalars such as layer norm's mean and rstd) carry eviction_policy="evict_first": they are
# touched once, and the tag (LDG.E.EF / STG.E.EF in SASS) lets the static check
# (kernels/triton/sass.py) tell them from row data, which must move in 16-byte accesses.

VEC_BYTES = 16


def vec(t: torch.Tensor) -> int:
    """Elements per 16-byte vector."""
    return VEC_BYTES // t.element_size()


def aligned_base(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(base, off): a view of t's storage starting at the 16-byte boundary at or before t's
    first element, and the number of elements in between. If the storage itself is not
    aligned that far back, (t, 0): still correct, the compiler just cannot prove alignment."""
    e = t.element_size()
    ptr = t.data_ptr()
    off = (ptr % VEC_BYTES) // e
    if ptr % e or off == 0 or off > t.storage_offset():
        return t, 0
    return t.as_strided((1,), (1,), t.storage_offset() - off), off


def congruent(vec_elems: int, *layouts) -> bool:
    """Whether rows of several tensors, given as (off, row_stride, n_rows), start at the same
    offset modulo a 16-byte vector: then one head/body/tail split serves all of them."""
    (off0, stride0, n_rows), *rest = layouts
    return all((off - off0) % vec_elems == 0 and (n_rows <= 1 or (stride - stride0) % vec_elems == 0)
               for off, stride, _ in rest)


def has_peel(vec_elems: int, n_cols: int, layout) -> bool:
    """Whether rows given as (off, row_stride, n_rows) can have a head or a tail: not when
    every row starts on a 16-byte boundary and is a whole number of vectors long."""
    off, stride, n_rows = layout
    return not (off % vec_elems == 0 and (n_rows <= 1 or stride % vec_elems == 0) and n_cols % vec_elems == 0)


def peel_allowance(vec: int, row_tensors: int, scalars: int = 0) -> int:
    """Narrow tagged accesses (static count per thread) a kernel is entitled to in the SASS
    checks: Triton may split a row's 2 x VEC peel into a few scalar accesses per thread,
    VEC / 2 + 1 per row tensor bounds that well below a scalar body; plus per-row scalars."""
    return row_tensors * (vec // 2 + 1) + scalars


@triton.jit
def row_split(rows, off, row_stride, n_cols, VEC: tl.constexpr):
    """(start, head, body, body_len) of rows: element offsets from the aligned base of the
    row start and of its first 16-byte boundary (`body`, a multiple of VEC), the number of
    elements before it (`head`) and the body's length (a multiple of VEC)."""
    start = off + tl.cast(rows, tl.int64) * row_stride
    head = tl.minimum((VEC - start % VEC) % VEC, n_cols)
    body = tl.multiple_of(start + head, VEC)
    body_len = tl.multiple_of((n_cols - head) // VEC * VEC, VEC)
    return start, head, body, body_len


@triton.jit
def peel(head, body_len, n_cols, VEC: tl.constexpr):
    """(cols, mask) of a row's head and tail in one 2 x VEC access: lanes [0, VEC) are the
    head, lanes [VEC, 2 VEC) the tail after the body. head/body_len broadcast over rows."""
    k = tl.arange(0, 2 * VEC)
    cols = tl.where(k < VEC, k, head + body_len + k - VEC)
    return cols, tl.where(k < VEC, k < head, cols < n_cols)


# The eager/traced dispatch every backend shares (kernels/_eager.py).
from .._eager import eager, fast_op, once_differentiable  # noqa: E402,F401
