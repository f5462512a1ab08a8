"""Build and call the CUDA kernels of csrc/cuda/ on the CPU (tests/cuda_emulator/).

The .cu sources are compiled by g++ with tests/cuda_emulator/emulator.h force-included,
after a textual rewrite (kernel launches and __shared__ declarations; see emulator.h),
with the emulator's cuda/ptx.cuh ahead of csrc/cuda/ptx.cuh on the include path, with
-fsanitize=alignment (emulator.cpp turns its reports into misaligned-address faults) and
FMA contraction as nvcc does it. Objects are cached per hash of their inputs under
~/.cache/gptk/build/emulator (GPTK_BUILD_DIR moves it), so only the first test session
after a change pays the ~1 min build, and only for the units it touches.

The wrappers below take CPU tensors and drive the launchers of csrc/cuda/launch.h the way
csrc/cuda/entry.cpp does (same allocations, workspaces and launcher sequence; MIRRORS),
so a test of them runs the very kernels a GPU would, lane by lane.

GPTK_EMU_CSRC=<a copy of csrc> runs the whole suite on that copy's kernels (to see which
tests catch a deliberate mutation); broken_csrc() and variant() do it inside one test.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import fcntl
import glob
import hashlib
import os
import re
import shutil
import subprocess

import torch

from kernels.cuda import _build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMU_DIR = os.path.join(ROOT, "tests", "cuda_emulator")
CSRC = _build.CSRC  # the C++/CUDA sources, wherever the package keeps them
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}

_LAUNCH = re.compile(r"\b([A-Za-z_]\w*(?:<[^<>;]*>)?)\s*<<<(.*?)>>>\s*\((.*?)\)\s*;", re.S)


def cuda_include_dir() -> str | None:
    """A directory holding cuda_runtime.h and cuda_fp16.h (the toolkit's or a pip wheel's)."""
    home = _build.cuda_home()
    candidates = [os.path.join(home, "include")] if home else []
    candidates += _build.nvidia_pip_dirs()[0]
    for inc in candidates:
        if all(os.path.exists(os.path.join(inc, h)) for h in ("cuda_runtime.h", "cuda_fp16.h", "cuda_bf16.h")):
            return inc
    return None


def unavailable_reason() -> str | None:
    if shutil.which("g++") is None:
        return "g++ is not installed"
    if cuda_include_dir() is None:
        return "the CUDA headers (cuda_runtime.h, cuda_fp16.h) were not found: install the CUDA toolkit"
    return None


def _keeping_lines(template):
    """A re.sub replacement that keeps the match's line count (compiler messages and
    #line stay right)."""
    def replace(m):
        text = m.expand(template) if isinstance(template, str) else template(m)
        return text.replace("\n", " ") + "\n" * m.group(0).count("\n")
    return replace


_SHARED = re.compile(r"(?:alignas\((\d+)\)\s*)?__shared__\s+(?:alignas\((\d+)\)\s*)?([^;{}]+);")
_DECLARATOR = re.compile(r"(.*?)\b([A-Za-z_]\w*)\s*((?:\[[^\]]*\]\s*)*)$", re.S)


def _split_top_level(text: str) -> list[str]:
    """`text` cut at the commas outside brackets, parentheses and template arguments (a <
    or > inside brackets or parentheses is a comparison: [T > 32 ? T / 32 : 1])."""
    pieces, depth, angle, start = [], 0, 0, 0
    for i, ch in enumerate(text):
        depth += ch in "[({"
        depth -= ch in "])}"
        if depth == 0:
            angle += (ch == "<") - (ch == ">")
        if ch == "," and depth == 0 and angle == 0:
            pieces.append(text[start:i])
            start = i + 1
    return pieces + [text[start:]]


def _shared_declaration(m) -> str:
    """`__shared__ T a[N], b[M];` as references into the block's shared memory (emulator.h)."""
    align = m.group(1) or m.group(2) or "0"
    pieces = _split_top_level(m.group(3))
    first = _DECLARATOR.match(pieces[0].strip())
    type_ = first.group(1).strip() if first else ""
    out = []
    for i, piece in enumerate(pieces):
        d = first if i == 0 else _DECLARATOR.match(piece.strip())
        if not type_ or d is None or (i > 0 and d.group(1).strip()):
            raise RuntimeError(f"a __shared__ declaration the emulator cannot rewrite: {m.group(0)!r}")
        name, dims = d.group(2), re.sub(r"\s+", " ", d.group(3)).strip()
        # the type through an alias: a bound such as [T > 32 ? T / 32 : 1] cannot be a
        # template argument as written (its > would close the list)
        out.append(f"using gptk_emu_type_{name} = {type_}{dims}; static ::gptk_emu::SharedSlot gptk_emu_slot_{name}; "
                   f"auto& {name} = ::gptk_emu::shared<gptk_emu_type_{name}, {align}>(gptk_emu_slot_{name});")
    return " ".join(out)


def rewrite(source: str, name: str) -> str:
    """The .cu text with launches made emulator calls and `__shared__` declarations
    references into the running block's shared memory."""
    out, launches = _LAUNCH.subn(_keeping_lines(r"::gptk_emu::launch(::gptk_emu::config(\2), \1, \3);"), source)
    out = _SHARED.sub(_keeping_lines(_shared_declaration), out)
    if "<<<" in out or re.search(r"\basm\b", out) or "__shared__" in out:
        raise RuntimeError(f"{name}: a kernel launch or __shared__ declaration the emulator cannot rewrite, or "
                           f"inline PTX outside csrc/cuda/ptx.cuh, is left")
    if source.count("<<<") != launches:
        raise RuntimeError(f"{name}: rewrote {launches} of {source.count('<<<')} launches")
    return out


def _headers(csrc: str) -> list[str]:
    """Every file a unit may include: csrc's headers and the emulator's own."""
    files = glob.glob(os.path.join(csrc, "cuda", "*.h")) + glob.glob(os.path.join(csrc, "cuda", "*.cuh"))
    files += glob.glob(os.path.join(csrc, "common", "*.h"))
    files += glob.glob(os.path.join(EMU_DIR, "**", "*.h"), recursive=True)
    files += glob.glob(os.path.join(EMU_DIR, "**", "*.cuh"), recursive=True)
    return sorted(set(files))


def cpu_has_fma() -> bool:
    """Whether this CPU runs fused multiply-adds (x86-64: the fma flag; aarch64: always)."""
    if os.uname().machine != "x86_64":
        return os.uname().machine == "aarch64"
    try:
        with open("/proc/cpuinfo") as f:
            return re.search(r"^flags\s*:.*\bfma\b", f.read(), re.M) is not None
    except OSError:
        return False


def _fma_flags() -> list[str]:
    """What makes g++ fuse a * b + c into one FMA as nvcc does (-fmad=true, its default):
    -ffp-contract=fast (off under -std=c++20), the pass that contracts (at -O1 only with
    -fexpensive-optimizations) and, on x86-64, FMA instructions where the CPU has them.
    contracts() probes the result."""
    flags = ["-ffp-contract=fast", "-fexpensive-optimizations"]
    return flags + ["-mfma"] if cpu_has_fma() and os.uname().machine == "x86_64" else flags


def _flags(csrc: str) -> list[str]:
    # EMU_DIR first: its cuda/ptx.cuh replaces csrc/cuda/ptx.cuh. csrc is named relative to
    # the compiler's working directory, so objects of a copy (tests' broken variants) and of
    # the checkout are interchangeable. -fsanitize=alignment: emulator.cpp handles the checks.
    return ["g++", "-std=c++20", "-O1", "-fPIC", "-w", "-fsanitize=alignment", *_fma_flags(), "-I", EMU_DIR,
            "-I", os.path.basename(csrc), "-I", cuda_include_dir(), "-include", os.path.join(EMU_DIR, "emulator.h")]


def build(csrc: str | None = None) -> str:
    """The emulator library's path for the sources in `csrc` (default: the checkout's),
    building what changed: objects are cached per hash of their unit, headers and flags,
    so a copy of csrc with one .cu edited recompiles that unit only."""
    reason = unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    csrc = os.path.abspath(csrc or CSRC)
    root = os.path.join(_build.build_root(), "emulator")
    os.makedirs(os.path.join(root, "objects"), exist_ok=True)
    flags = _flags(csrc)
    common = hashlib.sha256(" ".join(flags).encode())
    for path in _headers(csrc):
        common.update(os.path.relpath(path, os.path.dirname(csrc) if path.startswith(csrc) else ROOT).encode())
        with open(path, "rb") as f:
            common.update(f.read())
    units = []  # (text, object path)
    for cu in sorted(glob.glob(os.path.join(csrc, "cuda", "*.cu"))):
        rel = os.path.relpath(cu, os.path.dirname(csrc))
        with open(cu) as f:
            units.append(f'#line 1 "{rel}"\n' + rewrite(f.read(), os.path.basename(cu)))
    for src in ("emulator.cpp", "harness.cpp"):
        with open(os.path.join(EMU_DIR, src)) as f:
            units.append(f'#line 1 "{os.path.join(EMU_DIR, src)}"\n' + f.read())
    objects = []
    for text in units:
        h = common.copy()
        h.update(text.encode())
        objects.append(os.path.join(root, "objects", h.hexdigest()[:24] + ".o"))
    final = os.path.join(root, "gptk_emu_" + hashlib.sha256("".join(objects).encode()).hexdigest()[:16] + ".so")
    if os.path.isfile(final):
        return final
    # One build at a time (pytest-xdist workers start together on a cold cache): the
    # others wait, then find the library.
    with open(os.path.join(root, "build.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isfile(final):
            return final
        return _build_library(csrc, root, flags, units, objects, final)


def _build_library(csrc, root, flags, units, objects, final) -> str:
    work = os.path.join(root, f"work_{os.getpid()}")
    os.makedirs(work, exist_ok=True)

    def compile_one(i):
        if os.path.isfile(objects[i]):
            return
        src = os.path.join(work, f"unit{i}.cpp")
        with open(src, "w") as f:
            f.write(units[i])
        tmp = os.path.join(work, f"unit{i}.o")
        proc = subprocess.run(flags + ["-c", src, "-o", tmp], capture_output=True, text=True,
                              cwd=os.path.dirname(csrc))
        if proc.returncode != 0:
            raise RuntimeError(f"emulator build of {units[i].splitlines()[0]} failed:\n{proc.stderr[-6000:]}")
        os.replace(tmp, objects[i])

    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(compile_one, range(len(units))))
    tmp = os.path.join(work, "lib.so")
    proc = subprocess.run(["g++", "-shared", "-o", tmp] + objects, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"emulator link failed:\n{proc.stderr[-4000:]}")
    os.replace(tmp, final)
    shutil.rmtree(work, ignore_errors=True)
    return final


_LIB = None
_SYMBOLS = None


def lib() -> ctypes.CDLL:
    """The emulator library in use: the checkout's (or GPTK_EMU_CSRC's), or a variant's
    inside variant()."""
    global _LIB
    if _LIB is None:
        _LIB = _load(build(os.environ.get("GPTK_EMU_CSRC")))
    return _LIB


def _load(path: str) -> ctypes.CDLL:
    library = ctypes.CDLL(path)
    library.emu_column_chunks.restype = ctypes.c_int64
    library.emu_multiply_add.restype = ctypes.c_float
    library.gptk_emu_path = path
    return library


@contextlib.contextmanager
def variant(csrc: str):
    """Run the wrappers below on the kernels of another copy of csrc (a deliberately
    broken one: the tests show each check fails on it)."""
    global _LIB, _SYMBOLS
    saved = lib(), _SYMBOLS
    _LIB, _SYMBOLS = _load(build(csrc)), None
    try:
        yield _LIB
    finally:
        _LIB, _SYMBOLS = saved


def broken_csrc(tmp_path, edits) -> str:
    """A copy of csrc/ under tmp_path with `edits` [(file relative to csrc, old, new)]
    applied, each `old` found exactly once: a deliberately broken variant for variant()."""
    csrc = os.path.join(str(tmp_path), "csrc")
    shutil.copytree(CSRC, csrc)
    for rel, old, new in edits:
        path = os.path.join(csrc, rel)
        with open(path) as f:
            text = f.read()
        assert text.count(old) == 1, f"{rel}: {old!r} found {text.count(old)} times (update the broken variant)"
        with open(path, "w") as f:
            f.write(text.replace(old, new))
    return csrc


def contracts() -> bool:
    """Whether the build fuses a * b + c into one rounding, as nvcc does by default."""
    a = 1.0 + 2.0 ** -13  # a * a = 1 + 2^-12 + 2^-26: the 2^-26 survives only a fused multiply-add
    return lib().emu_multiply_add(ctypes.c_float(a), ctypes.c_float(a), ctypes.c_float(-(1.0 + 2.0 ** -12))) != 0.0


SCHEDULES = {"forward": 0, "reverse": 1, "shuffle": 2, "warp_serial": 3, "warp_serial_reverse": 4}


def set_schedule(name: str, seed: int = 0, eager_copies: bool = False):
    """The order a block's threads take turns between barriers, and whether cp.async
    copies land at once or at the wait (see emulator.h)."""
    lib().emu_set_schedule(SCHEDULES[name], ctypes.c_uint(seed), int(eager_copies))


def set_smem_limit(bytes_: int = 227 * 1024):
    """The opt-in shared memory per block the launchers see (an H100's by default): smaller
    values send short rows down the paths meant for rows longer than shared memory."""
    lib().emu_set_smem_limit(int(bytes_))


def recorded_launches(call, dry: bool = True) -> list[dict]:
    """Run `call(lib())` and return each kernel launch it made as {"kernel": demangled
    name, "grid", "block": 3-tuples, "smem": dynamic bytes}. Dry (the default): no kernel
    executes, so made-up device pointers of full-size shapes are fine."""
    emu = lib()
    emu.emu_set_dry_run(int(dry))
    emu.emu_clear_launches()
    try:
        call(emu)
    finally:
        emu.emu_set_dry_run(0)
    names = _symbols()
    out = []
    for i in range(emu.emu_launch_count()):
        offset, smem = ctypes.c_uint64(), ctypes.c_uint64()
        grid, block = (ctypes.c_uint * 3)(), (ctypes.c_uint * 3)()
        emu.emu_launch_record(i, ctypes.byref(offset), grid, block, ctypes.byref(smem))
        out.append({"kernel": names.get(offset.value, hex(offset.value)), "grid": tuple(grid), "block": tuple(block),
                    "smem": smem.value})
    return out


def _symbols() -> dict[int, str]:
    """Address -> demangled name of every function in the emulator library (`nm` reads the
    local symbols of the kernels' anonymous namespaces too, which dladdr cannot)."""
    global _SYMBOLS
    if _SYMBOLS is None:
        proc = subprocess.run(["nm", "-C", "--defined-only", lib().gptk_emu_path], capture_output=True, text=True,
                              check=True)
        _SYMBOLS = {}
        for line in proc.stdout.splitlines():
            parts = line.split(" ", 2)
            if len(parts) == 3 and parts[1] in ("t", "T", "w", "W"):
                _SYMBOLS[int(parts[0], 16)] = parts[2]
    return _SYMBOLS


# ---- argument helpers ----
def _p(t):
    return ctypes.c_void_p(t.data_ptr() if t is not None else 0)


def _i(v):
    return ctypes.c_int64(int(v))


def _f(v):
    return ctypes.c_float(float(v))


def _strides3(t):
    return (ctypes.c_int64 * 3)(*t.stride()[:3])


def _check(rc, what):
    if rc == 0:
        return
    buf, offset = ctypes.create_string_buffer(1024), ctypes.c_uint64()
    if lib().emu_take_fault(buf, len(buf), ctypes.byref(offset)):
        kernel = _symbols().get(offset.value, hex(offset.value))
        raise RuntimeError(f"{what}: cudaError {rc} in kernel {kernel}: {buf.value.decode()}")
    raise RuntimeError(f"{what}: launch failed with cudaError {rc}")


def _rows(x):
    """(rows, n) view parameters of a tensor whose last dim is unit-stride and whose leading
    dims collapse to one row stride (what the entry points pass)."""
    n = x.shape[-1]
    x2 = x.reshape(-1, n)
    return x2, x2.stride(0) if x2.shape[0] > 1 else n


# ---- the host glue: each wrapper below does what one C++ function does ----
# MIRRORS names them (wrapper: the C++ functions, in csrc/cuda/entry.cpp or
# csrc/common/lce.h, and the tensors of theirs the wrapper leaves to its caller: the
# matmuls' operands and results, which no emulated kernel touches). The grid, block,
# shared memory and kernel of every launch are the launchers' (csrc/cuda/*.cu, compiled
# as they are); what the glue decides, and test_host_glue_mirrors_entry_cpp compares by
# parsing both, is: which tensors it allocates empty and which zeros, which it zeroes
# later, which inputs it copies to aligned rows, and the launchers it calls, in order.
# Use the same names as the C++ (a trailing _ is dropped: `sum_` mirrors `sum`).
MIRRORS = {
    "softmax": (("softmax_cuda",), ()),
    "softmax_backward": (("softmax_backward_cuda",), ()),
    "layer_norm": (("norm_forward",), ()),
    "layer_norm_backward": (("norm_backward",), ()),
    "gelu": (("gelu_linear_cuda",), ("pre", "pre2")),
    "gelu_backward": (("gelu_linear_backward_cuda",), ()),
    "attention": (("attention_cuda",), ()),
    "attention_backward": (("attention_backward_cuda",), ()),
    "lce_rows": (("lce_chunks", "lce_row_step_cuda"), ("dx", "dw_acc", "db_acc")),
    "sample": (("sample_cuda",), ()),
}


def _empty(*shape, dtype):
    """at::empty: memory the kernels must overwrite. Filled with NaN (integers: the most
    negative value), so an element no kernel writes shows in the result."""
    if dtype.is_floating_point:
        return torch.full(shape, float("nan"), dtype=dtype)
    return torch.full(shape, torch.iinfo(dtype).min, dtype=dtype)


def _zeros(*shape, dtype):
    """at::zeros: what the glue promises the kernels is zero."""
    return torch.zeros(*shape, dtype=dtype)


def _aligned(t):
    """entry.cpp's aligned(): a copy of the rare (B, H, T, D) operand whose rows are not
    16-byte aligned."""
    vec = 16 // t.element_size()
    ok = t.data_ptr() % 16 == 0 and all(st % vec == 0 for st in t.stride()[:3])
    return t if ok else t.clone(memory_format=torch.contiguous_format)


def softmax(x, temperature):
    x_rows, xs = _rows(x)
    y = _empty(*x_rows.shape, dtype=x.dtype)
    c = 1.4426950408889634 / temperature
    _check(lib().emu_softmax_forward(DTYPE_CODES[x.dtype], _p(x_rows), _i(xs), _p(y), _i(y.shape[-1]),
                                     _i(x_rows.shape[0]), _i(x_rows.shape[1]), _f(c)), "softmax_forward")
    return y.view(x.shape)


def sample(logits, seed, temperature, top_k=0, top_p=1.0):
    """Tokens (B,) int64 from logits (B, V) as entry.cpp's sample_cuda launches them."""
    rows, n = logits.shape
    out = _empty(rows, dtype=torch.int64)
    if rows == 0:
        return out
    x = logits.contiguous() if n > 1 and logits.stride(1) != 1 else logits
    seed_t = torch.tensor([seed], dtype=torch.int64)
    c = 0.0 if temperature == 0 else min(1.4426950408889634 / temperature, 3.0e38)
    _check(lib().emu_sample(DTYPE_CODES[x.dtype], _p(x), _i(x.stride(0)), _p(seed_t), _p(out), _i(rows), _i(n),
                            _f(c), _i(top_k), _f(top_p), int(temperature == 0)), "sample")
    return out


def softmax_backward(dy, y, temperature):
    dy2, dys = _rows(dy)
    y2, ys = _rows(y)
    dx = _empty(*y2.shape, dtype=y.dtype)
    _check(lib().emu_softmax_backward(DTYPE_CODES[y.dtype], _p(dy2), _i(dys), _p(y2), _i(ys), _p(dx),
                                      _i(dx.shape[-1]), _i(y2.shape[0]), _i(y2.shape[1]), _f(1.0 / temperature)),
           "softmax_backward")
    return dx.view(y.shape)


def layer_norm(x, weight, bias, eps=1e-5, residual=None):
    """(y, mean, rstd, sum); sum is None without a residual."""
    x2, xs = _rows(x)
    rows, n = x2.shape
    r2, rs = _rows(residual) if residual is not None else (None, 0)
    y = _empty(rows, n, dtype=x.dtype)
    sum_ = _empty(rows, n, dtype=x.dtype) if residual is not None else None
    mean = _empty(rows, dtype=torch.float32)
    rstd = _empty(rows, dtype=torch.float32)
    _check(lib().emu_layer_norm_forward(DTYPE_CODES[x.dtype], _p(x2), _i(xs), _p(r2), _i(rs), _p(sum_), _p(weight),
                                        _p(bias), _p(y), _p(mean), _p(rstd), _i(rows), _i(n), _f(eps)),
           "layer_norm_forward")
    return y.view(x.shape), mean, rstd, (sum_.view(x.shape) if sum_ is not None else None)


def _column_sum(partial, chunks, n, out):
    _check(lib().emu_column_sum(DTYPE_CODES[out.dtype], _p(partial), _i(chunks), _i(n), _p(out)), "column_sum")


def layer_norm_backward(dy, x, weight, mean, rstd, dsum=None, params=True):
    """(dx, dweight, dbias) from the normalised input x (x + residual for add_layer_norm).
    params=False stops before the column sums (dweight, dbias None; the launcher still
    forms their partials): those do not depend on the row length, so long-row tests skip
    their many blocks."""
    x2, xs = _rows(x)
    dy2, dys = _rows(dy)
    ds2, dss = _rows(dsum) if dsum is not None else (None, 0)
    rows, n = x2.shape
    dx = _empty(rows, n, dtype=x.dtype)
    dw = _empty(n, dtype=x.dtype)
    db = _empty(n, dtype=x.dtype)
    if rows == 0 or n == 0:
        dw.zero_()
        db.zero_()
        return dx.view(x.shape), dw, db
    chunks = lib().emu_column_chunks(_i(rows))
    partial = _empty(2, chunks, n, dtype=torch.float32)
    pw, pb = partial[0], partial[1]
    _check(lib().emu_layer_norm_backward(DTYPE_CODES[x.dtype], _p(dy2), _i(dys), _p(ds2), _i(dss), _p(x2), _i(xs),
                                         _p(weight), _p(mean), _p(rstd), _p(dx), _p(pw), _p(pb), _i(rows), _i(n)),
           "layer_norm_backward")
    if not params:
        return dx.view(x.shape), None, None
    _column_sum(pw, chunks, n, dw)
    _column_sum(pb, chunks, n, db)
    return dx.view(x.shape), dw, db


def gelu(pre, tanh_form):
    """gelu_linear's epilogue when the matmul did not fuse it: out = gelu(pre)."""
    pre = pre.contiguous()
    out = _empty(*pre.shape, dtype=pre.dtype)
    _check(lib().emu_gelu_forward(DTYPE_CODES[pre.dtype], _p(pre), _p(out), _i(pre.numel()), int(tanh_form)),
           "gelu_forward")
    return out


def gelu_backward(dout, pre, tanh_form):
    """(dpre, dbias) as gelu_linear's backward forms them before its matmuls."""
    rows, n = pre.reshape(-1, pre.shape[-1]).shape
    db = _empty(n, dtype=pre.dtype)
    dpre = _empty(rows, n, dtype=pre.dtype)
    if rows == 0 or n == 0:
        db.zero_()
    else:
        d2, ds = _rows(dout)
        p2, ps = _rows(pre)
        chunks = lib().emu_column_chunks(_i(rows))
        partial = _empty(chunks, n, dtype=torch.float32)
        _check(lib().emu_gelu_backward_partials(DTYPE_CODES[pre.dtype], _p(d2), _i(ds), _p(p2), _i(ps), _p(dpre),
                                                _p(partial), _i(rows), _i(n), int(tanh_form)), "gelu_backward_partials")
        _column_sum(partial, chunks, n, db)
    return dpre.view(pre.shape), db


def attention_key_splits(q, k, causal, sm_count):
    b, h, tq, d = q.shape
    return lib().emu_attention_key_splits(DTYPE_CODES[q.dtype], _i(b), _i(h), _i(tq), _i(k.shape[2]), d, int(causal),
                                          sm_count)


def attention(q_in, k_in, v_in, causal, scale=None, sm_count=132):
    """(out, lse); sm_count sizes the decode key split as a GPU of that many SMs would."""
    b, h, tq, d = q_in.shape
    tk = k_in.shape[2]
    scale = d ** -0.5 if scale is None else scale
    out = _empty(b, h, tq, d, dtype=q_in.dtype)
    lse = _empty(b, h, tq, dtype=torch.float32)
    if out.numel() == 0:
        return out, lse
    q, k, v = _aligned(q_in), _aligned(k_in), _aligned(v_in)
    splits = attention_key_splits(q, k, causal, sm_count)
    partial = None
    if splits > 1:
        partial = _empty(b * h * tq * splits * (d + 2), dtype=torch.float32)
    _check(lib().emu_attention_forward(DTYPE_CODES[q.dtype], _p(q), _strides3(q), _p(k), _strides3(k), _p(v),
                                       _strides3(v), _p(out), _p(lse), _i(b), _i(h), _i(tq), _i(tk), d, int(causal),
                                       _f(scale * 1.4426950408889634), splits, _p(partial)), "attention_forward")
    return out, lse


def attention_with_lengths(q, k, v, kv_lengths, causal, scale=None, sm_count=132):
    """attention() over the first kv_lengths[b] keys of sequence b, passed to the same
    launches as int64 (as entry.cpp does)."""
    lengths = kv_lengths.to(torch.int64).contiguous()
    lib().emu_set_kv_lengths(_p(lengths))
    try:
        return attention(q, k, v, causal, scale, sm_count)
    finally:
        lib().emu_set_kv_lengths(_p(None))


def attention_backward(dout_in, q_in, k_in, v_in, out, lse, causal, scale=None):
    b, h, tq, d = q_in.shape
    tk = k_in.shape[2]
    scale = d ** -0.5 if scale is None else scale
    dq = _empty(b, h, tq, d, dtype=q_in.dtype)
    dk = _empty(b, h, tk, d, dtype=q_in.dtype)
    dv = _empty(b, h, tk, d, dtype=q_in.dtype)
    if b * h == 0:
        return dq, dk, dv
    if tq == 0:  # no query sees any key
        dk.zero_()
        dv.zero_()
        return dq, dk, dv
    q, k, v, dout = _aligned(q_in), _aligned(k_in), _aligned(v_in), _aligned(dout_in)
    delta = _empty(b, h, tq, dtype=torch.float32)
    _check(lib().emu_attention_backward(DTYPE_CODES[q.dtype], _p(q), _strides3(q), _p(k), _strides3(k), _p(v),
                                        _strides3(v), _p(out), _p(lse), _i(b), _i(h), _i(tq), _i(tk), d, int(causal),
                                        _f(scale * 1.4426950408889634), _p(dout), _strides3(dout), _p(delta), _p(dq),
                                        _p(dk), _p(dv), _f(scale)), "attention_backward")
    return dq, dk, dv


def lce_rows(z, target, scale, temperature, ignore_index, want_grad, per_token=False, ld=None):
    """(loss, dz): linear_cross_entropy's row step over logits z (rows, V), laid out in a
    buffer of row stride `ld` (V rounded up to 8 elements, as csrc/common/lce.h pads it)."""
    rows, n = z.shape
    ld = ld or (n + 7) // 8 * 8
    zbuf = _empty(rows, ld, dtype=z.dtype)
    zbuf[:, :n] = z
    losses = _zeros(rows, dtype=torch.float32)
    _check(lib().emu_lce_rows(DTYPE_CODES[z.dtype], _p(zbuf), _i(ld), _i(rows), _i(n), _p(target), _p(scale),
                              int(per_token), _f(1.0 / temperature),
                              _i(ignore_index), int(want_grad), _p(losses)), "lce_rows")
    return losses, zbuf[:, :n]
