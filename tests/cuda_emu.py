"""Build and call the CUDA kernels of csrc/cuda/ on the CPU (tests/cuda_emulator/).

The .cu sources are compiled by g++ with tests/cuda_emulator/emulator.h force-included,
after one textual rewrite (kernel launches; see emulator.h), with the emulator's
cuda/ptx.cuh ahead of csrc/cuda/ptx.cuh on the include path. The
library is cached per hash of every input under ~/.cache/gptk/emulator (GPTK_BUILD_DIR
moves it), so only the first test session after a change pays the ~1 min build.

The wrappers below take CPU tensors and drive the launchers of csrc/cuda/launch.h the way
csrc/cuda/entry.cpp does (same workspaces, same kernel sequence), so a test of them runs
the very kernels a GPU would, lane by lane.
"""
from __future__ import annotations

import concurrent.futures
import ctypes
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
        text = m.expand(template)
        return text.replace("\n", " ") + "\n" * m.group(0).count("\n")
    return replace


def rewrite(source: str, name: str) -> str:
    """The .cu text with launches and mma made emulator calls."""
    out, launches = _LAUNCH.subn(_keeping_lines(r"::gptk_emu::launch(::gptk_emu::config(\2), \1, \3);"), source)
    # `static alignas(16) T x[]` is ill-formed: the attribute goes first.
    out = re.sub(r"__shared__\s+(alignas\(\d+\))", r"\1 __shared__", out)
    if "<<<" in out or re.search(r"\basm\b", out):
        raise RuntimeError(f"{name}: a kernel launch the emulator cannot rewrite, or inline PTX outside "
                           f"csrc/cuda/ptx.cuh, is left")
    if source.count("<<<") != launches:
        raise RuntimeError(f"{name}: rewrote {launches} of {source.count('<<<')} launches")
    return out


def _inputs() -> list[str]:
    files = sorted(glob.glob(os.path.join(_build.CSRC, "cuda", "*.cu")))
    files += sorted(glob.glob(os.path.join(_build.CSRC, "cuda", "*.h*")) + glob.glob(os.path.join(_build.CSRC, "cuda", "*.cuh")))
    files += sorted(glob.glob(os.path.join(_build.CSRC, "common", "*.h")))
    files += sorted(glob.glob(os.path.join(EMU_DIR, "**", "*.*"), recursive=True))
    return sorted(set(files)) + [os.path.abspath(__file__)]


def _hash() -> str:
    h = hashlib.sha256()
    for path in _inputs():
        h.update(os.path.relpath(path, ROOT).encode())
        with open(path, "rb") as f:
            h.update(f.read())
    h.update(str(cuda_include_dir()).encode())
    return h.hexdigest()[:16]


def build() -> str:
    """The emulator library's path, building it when the sources changed."""
    reason = unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    root = os.path.join(_build.build_root(), "emulator")
    final = os.path.join(root, f"gptk_emu_{_hash()}.so")
    if os.path.isfile(final):
        return final
    work = os.path.join(root, f"work_{os.getpid()}")
    os.makedirs(work, exist_ok=True)
    units = []
    for cu in sorted(glob.glob(os.path.join(_build.CSRC, "cuda", "*.cu"))):
        with open(cu) as f:
            text = rewrite(f.read(), os.path.basename(cu))
        path = os.path.join(work, os.path.basename(cu)[:-3] + "_emu.cpp")
        with open(path, "w") as f:
            f.write(f'#line 1 "{cu}"\n' + text)
        units.append(path)
    units += [os.path.join(EMU_DIR, "emulator.cpp"), os.path.join(EMU_DIR, "harness.cpp")]
    # EMU_DIR first: its cuda/ptx.cuh replaces csrc/cuda/ptx.cuh.
    flags = ["g++", "-std=c++20", "-O1", "-fPIC", "-w", "-I", EMU_DIR, "-I", _build.CSRC, "-I", cuda_include_dir(),
             "-include", os.path.join(EMU_DIR, "emulator.h")]

    def compile_one(src):
        obj = os.path.join(work, os.path.basename(src) + ".o")
        proc = subprocess.run(flags + ["-c", src, "-o", obj], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"emulator build of {os.path.basename(src)} failed:\n{proc.stderr[-6000:]}")
        return obj

    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        objects = list(pool.map(compile_one, units))
    tmp = os.path.join(work, "lib.so")
    proc = subprocess.run(["g++", "-shared", "-o", tmp] + objects, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"emulator link failed:\n{proc.stderr[-4000:]}")
    os.replace(tmp, final)
    shutil.rmtree(work, ignore_errors=True)
    return final


_LIB = None


def lib() -> ctypes.CDLL:
    global _LIB
    if _LIB is None:
        _LIB = ctypes.CDLL(build())
        _LIB.emu_column_chunks.restype = ctypes.c_int64
    return _LIB


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


_SYMBOLS = None


def _symbols() -> dict[int, str]:
    """Address -> demangled name of every function in the emulator library (`nm` reads the
    local symbols of the kernels' anonymous namespaces too, which dladdr cannot)."""
    global _SYMBOLS
    if _SYMBOLS is None:
        proc = subprocess.run(["nm", "-C", "--defined-only", build()], capture_output=True, text=True, check=True)
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
    if rc != 0:
        raise RuntimeError(f"{what}: launch failed with cudaError {rc}")


def _rows(x):
    """(rows, n) view parameters of a tensor whose last dim is unit-stride and whose leading
    dims collapse to one row stride (what the entry points pass)."""
    n = x.shape[-1]
    x2 = x.reshape(-1, n)
    return x2, x2.stride(0) if x2.shape[0] > 1 else n


# ---- ops, sequenced as csrc/cuda/entry.cpp does ----
def softmax(x, temperature):
    x2, xs = _rows(x)
    y = torch.empty_like(x2)
    c = 1.4426950408889634 / temperature
    _check(lib().emu_softmax_forward(DTYPE_CODES[x.dtype], _p(x2), _i(xs), _p(y), _i(y.shape[-1]), _i(x2.shape[0]),
                                     _i(x2.shape[1]), _f(c)), "softmax_forward")
    return y.view(x.shape)


def sample(logits, seed, temperature, top_k=0, top_p=1.0):
    """Tokens (B,) int64 from logits (B, V) as entry.cpp's sample_cuda launches them."""
    x2, xs = _rows(logits)
    out = torch.empty(x2.shape[0], dtype=torch.int64)
    seed_t = torch.tensor([seed], dtype=torch.int64)
    c = 0.0 if temperature == 0 else min(1.4426950408889634 / temperature, 3.0e38)
    _check(lib().emu_sample(DTYPE_CODES[logits.dtype], _p(x2), _i(xs), _p(seed_t), _p(out), _i(x2.shape[0]),
                            _i(x2.shape[1]), _f(c), _i(top_k), _f(top_p), int(temperature == 0)), "sample")
    return out


def softmax_backward(dy, y, temperature):
    dy2, dys = _rows(dy)
    y2, ys = _rows(y)
    dx = torch.empty_like(y2)
    _check(lib().emu_softmax_backward(DTYPE_CODES[y.dtype], _p(dy2), _i(dys), _p(y2), _i(ys), _p(dx),
                                      _i(dx.shape[-1]), _i(y2.shape[0]), _i(y2.shape[1]), _f(1.0 / temperature)),
           "softmax_backward")
    return dx.view(y.shape)


def layer_norm(x, weight, bias, eps=1e-5, residual=None):
    """(y, mean, rstd, sum); sum is None without a residual."""
    x2, xs = _rows(x)
    rows, n = x2.shape
    r2, rs = _rows(residual) if residual is not None else (None, 0)
    s = torch.empty_like(x2) if residual is not None else None
    y = torch.empty_like(x2)
    mean = torch.empty(rows, dtype=torch.float32)
    rstd = torch.empty(rows, dtype=torch.float32)
    _check(lib().emu_layer_norm_forward(DTYPE_CODES[x.dtype], _p(x2), _i(xs), _p(r2), _i(rs), _p(s), _p(weight),
                                        _p(bias), _p(y), _p(mean), _p(rstd), _i(rows), _i(n), _f(eps)),
           "layer_norm_forward")
    return y.view(x.shape), mean, rstd, (s.view(x.shape) if s is not None else None)


def _column_sum(partial, chunks, n, dtype):
    out = torch.empty(n, dtype=dtype)
    _check(lib().emu_column_sum(DTYPE_CODES[dtype], _p(partial), _i(chunks), _i(n), _p(out)), "column_sum")
    return out


def layer_norm_backward(dy, x, weight, mean, rstd, dsum=None):
    """(dx, dweight, dbias) from the normalised input x (x + residual for add_layer_norm)."""
    x2, xs = _rows(x)
    dy2, dys = _rows(dy)
    ds2, dss = _rows(dsum) if dsum is not None else (None, 0)
    rows, n = x2.shape
    dx = torch.empty_like(x2)
    dt = DTYPE_CODES[x.dtype]
    _check(lib().emu_layer_norm_backward_dx(dt, _p(dy2), _i(dys), _p(ds2), _i(dss), _p(x2), _i(xs), _p(weight),
                                            _p(mean), _p(rstd), _p(dx), _i(rows), _i(n)), "layer_norm_backward_dx")
    chunks = lib().emu_column_chunks(_i(rows))
    pw = torch.empty(chunks, n, dtype=torch.float32)
    pb = torch.empty(chunks, n, dtype=torch.float32)
    _check(lib().emu_norm_param_partials(dt, _p(dy2), _i(dys), _p(x2), _i(xs), _p(mean), _p(rstd), _p(pw), _p(pb),
                                         _i(rows), _i(n)), "norm_param_partials")
    return dx.view(x.shape), _column_sum(pw, chunks, n, x.dtype), _column_sum(pb, chunks, n, x.dtype)


def gelu(pre, tanh_form):
    pre = pre.contiguous()
    out = torch.empty_like(pre)
    _check(lib().emu_gelu_forward(DTYPE_CODES[pre.dtype], _p(pre), _p(out), _i(pre.numel()), int(tanh_form)),
           "gelu_forward")
    return out


def gelu_backward(dout, pre, tanh_form):
    """(dpre, dbias) as gelu_linear's backward forms them before its matmuls."""
    d2, ds = _rows(dout)
    p2, ps = _rows(pre)
    rows, n = p2.shape
    dpre = torch.empty_like(p2)
    chunks = lib().emu_column_chunks(_i(rows))
    pb = torch.empty(max(chunks, 1), n, dtype=torch.float32)
    _check(lib().emu_gelu_backward_partials(DTYPE_CODES[pre.dtype], _p(d2), _i(ds), _p(p2), _i(ps), _p(dpre), _p(pb),
                                            _i(rows), _i(n), int(tanh_form)), "gelu_backward_partials")
    return dpre.view(pre.shape), _column_sum(pb, chunks, n, pre.dtype)


def attention_key_splits(q, k, causal, sm_count):
    b, h, tq, d = q.shape
    return lib().emu_attention_key_splits(DTYPE_CODES[q.dtype], _i(b), _i(h), _i(tq), _i(k.shape[2]), d, int(causal),
                                          sm_count)


def attention(q, k, v, causal, scale=None, sm_count=132):
    """(out, lse); sm_count sizes the decode key split as a GPU of that many SMs would."""
    b, h, tq, d = q.shape
    tk = k.shape[2]
    scale = d ** -0.5 if scale is None else scale
    out = torch.empty(b, h, tq, d, dtype=q.dtype)
    lse = torch.empty(b, h, tq, dtype=torch.float32)
    splits = attention_key_splits(q, k, causal, sm_count)
    partial = torch.empty(b * h * tq * splits * (d + 2), dtype=torch.float32) if splits > 1 else None
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


def attention_backward(dout, q, k, v, out, lse, causal, scale=None):
    b, h, tq, d = q.shape
    tk = k.shape[2]
    scale = d ** -0.5 if scale is None else scale
    dq = torch.empty(b, h, tq, d, dtype=q.dtype)
    dk = torch.zeros(b, h, tk, d, dtype=q.dtype)
    dv = torch.zeros(b, h, tk, d, dtype=q.dtype)
    if b * h == 0 or tq == 0:
        return dq, dk, dv
    delta = torch.empty(b, h, tq, dtype=torch.float32)
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
    buf = torch.zeros(rows, ld, dtype=z.dtype)
    buf[:, :n] = z
    loss = torch.empty(rows, dtype=torch.float32)
    _check(lib().emu_lce_rows(DTYPE_CODES[z.dtype], _p(buf), _i(ld), _i(rows), _i(n), _p(target), _p(scale),
                              int(per_token), _f(1.0 / temperature),
                              _i(ignore_index), int(want_grad), _p(loss)), "lce_rows")
    return loss, buf[:, :n]
