"""Compile Triton kernels for real GPUs without one: sm_80 and sm_90, via triton.compile.

The configurations come from the launchers themselves. Each op module exposes
`launch_cases()`: calls of its real launchers (on meta or small CPU tensors) that between
them reach every launch configuration the launchers can pick: each dtype, each width or
head-dim class, each alignment class and flag combination. `enumerate_configs` runs them as
on each target (launchers that choose by GPU see that one: attention's sm_90 tiles) with
every kernel launch intercepted (nothing is compiled or run) and every autotuner's benchmark
intercepted too (so each config it may try is recorded), and keeps one launch per
configuration: kernel, constexprs, pointer dtypes, num_warps/num_stages/num_ctas and other
options (`launch_key`). Each is compiled for the targets it is launched on, specialised as
Triton specialises that launch's arguments (16-byte aligned pointers, integers divisible by
16, integers equal to 1); shared memory comes from the metadata, registers and spill bytes
from cuobjdump. tests/test_compile_targets.py checks that launches over a wider sweep of
inputs pick only enumerated configurations, and compiles them all (GPTK_COMPILE_ALL=1, or 8+
cores) or the `covering()` subset within CI_COMPILES (--covering). The interpreter replaces
@triton.jit with a Python shim, so this runs in a child process without TRITON_INTERPRET,
the compiles spread over one forked worker per core (GPTK_COMPILE_JOBS=N sets how many):

    python -m kernels.triton.compile_check kernels.triton.softmax [--json] [--covering]
    python -m kernels.triton.compile_check --list kernels.triton.softmax   # the configurations only

With --static, each module's `static_cases()` instead names benchmark shapes and a function
that runs the real launcher on meta tensors (no memory, no GPU). Every kernel launch it makes
is intercepted, specialised the same way, compiled for sm_90, and read back from its SASS
(kernels/triton/sass.py): access widths, local memory, resident warps, bytes of loads in
flight per SM, exp instructions per element:

    python -m kernels.triton.compile_check --static kernels.triton.softmax kernels.triton.layer_norm
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile

# Opt-in shared memory per block (bytes): A100 (sm_80) 163 KiB, H100 (sm_90) 227 KiB.
SHARED_LIMIT = {80: 166912, 90: 232448}
TARGETS = (80, 90)


def _cuobjdump() -> str:
    import triton
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def resource_usage(cubin: bytes) -> dict:
    """Registers and local-memory (spill) bytes per kernel, from `cuobjdump --dump-resource-usage`."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([_cuobjdump(), "--dump-resource-usage", f.name], capture_output=True,
                             text=True, check=True).stdout
    regs = re.search(r"REG:(\d+)", out)
    # ptxas places register spills in the stack frame (STACK), not in LOCAL; count both.
    local = re.search(r"LOCAL:(\d+)", out)
    stack = re.search(r"STACK:(\d+)", out)
    spill = -1 if not (local or stack) else sum(int(m.group(1)) for m in (local, stack) if m)
    return {"registers": int(regs.group(1)) if regs else -1, "spill_bytes": spill}


def compile_case(kernel, signature: dict, constexprs: dict, divisible, options: dict, arch: int) -> dict:
    """Compile one configuration for sm_`arch`: resources from the cubin, a few PTX facts."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    full_signature = dict(signature)
    for name in constexprs:
        full_signature[name] = "constexpr"
    attrs = {(kernel.arg_names.index(name),): [["tt.divisibility", 16]] for name in divisible}
    src = ASTSource(fn=kernel, signature=full_signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(options))
    usage = resource_usage(compiled.asm["cubin"])
    ptx = compiled.asm["ptx"]
    return {
        "kernel": kernel.__name__, "arch": arch, "num_warps": options["num_warps"],
        "num_stages": options["num_stages"], "options": dict(options), "signature": signature,
        "constexprs": _plain(constexprs), "shared_bytes": int(compiled.metadata.shared),
        "shared_limit": SHARED_LIMIT[arch], "divisible": sorted(divisible), "wgmma": "wgmma" in ptx,
        "mma_sync": "mma.sync" in ptx, "fp32_fma": ptx.count("fma.rn.f32"), **usage,
    }


def _plain(constexprs: dict) -> dict:
    return {k: (v if isinstance(v, (int, float, bool, str)) else str(v)) for k, v in constexprs.items()}


# Triton's defaults for a launch that does not name them (CUDAOptions).
DEFAULT_OPTIONS = {"num_warps": 4, "num_stages": 3, "num_ctas": 1}


def module_launchers(module):
    """(kernels, autotuners) defined in an op module: @triton.jit functions and the
    autotuners wrapping them, at module level or one dict deep (e.g. attention's _TUNED)."""
    from triton.runtime.autotuner import Autotuner
    values = list(vars(module).values())
    values += [v for d in values if isinstance(d, dict) for v in d.values()]
    kernels, tuners = [], []
    for v in values:
        if isinstance(v, Autotuner):
            if all(v is not t for t in tuners):
                tuners.append(v)
        elif hasattr(v, "arg_names") and hasattr(v, "run") and hasattr(v, "constexprs"):
            if all(v is not k for k in kernels):
                kernels.append(v)
    return kernels, tuners


class record_launches:
    """Context manager: `kernel[grid](...)` of the given JITFunctions records (kernel, grid,
    args, kwargs) instead of launching. Used on meta tensors, whose data_ptr() is an offset
    from 0, so pointer alignment is what a real allocation of that view would have.
    Autotuners given in `tuners` benchmark by running each config they keep (so each is
    recorded) and time every one at 0, with their cache of choices emptied first."""

    def __init__(self, kernels, tuners=()):
        self.kernels, self.tuners, self.calls = list(kernels), list(tuners), []

    def __enter__(self):
        for k in self.kernels:
            def run(*args, grid, warmup, _k=k, **kwargs):
                self.calls.append((_k, grid, args, kwargs))
            k.run = run
            if hasattr(k, "_fast_launch"):  # _launch.jit's cached launch path
                k._fast_launch = lambda grid, *args, _k=k, **kwargs: self.calls.append((_k, grid, args, kwargs))
        self._caches = []
        for t in self.tuners:
            self._caches.append(t.cache)
            t.cache = {}

            def bench(*args, config, _t=t, **meta):  # run (so record) the config, time it at 0
                _t.fn.run(*args, **meta, **config.all_kwargs())
                return [0.0, 0.0, 0.0]
            t._bench = bench
        self._autotune = os.environ.get("GPTK_AUTOTUNE")
        if self.tuners:
            os.environ["GPTK_AUTOTUNE"] = "1"  # every config a launch may pick, not just the first
        return self.calls

    def __exit__(self, *exc):
        for k in self.kernels:
            del k.run  # back to the class's methods
            if "_fast_launch" in vars(k):
                del k._fast_launch
        for t, cache in zip(self.tuners, self._caches):
            t.cache = cache
            del t._bench
        if self._autotune is None:
            os.environ.pop("GPTK_AUTOTUNE", None)
        else:
            os.environ["GPTK_AUTOTUNE"] = self._autotune


def _bind(kernel, args, kwargs) -> tuple[dict, dict]:
    """(argument values by name, launch options) of one kernel[grid](*args, **kwargs) call."""
    names = kernel.arg_names
    values = dict(zip(names, args))
    options = dict(DEFAULT_OPTIONS)
    for key, v in kwargs.items():
        if key in names:
            values[key] = v
        elif v is not None:
            options[key] = v
    for p in kernel.params:
        if p.name not in values and p.default is not inspect.Parameter.empty:
            values[p.name] = p.default
    return values, options


def launch_key(kernel, args, kwargs) -> tuple:
    """What makes one launch configuration: the kernel, its constexprs, the dtype of each
    pointer argument, and the launch options (num_warps, num_stages, ...). Integer arguments'
    specialisation (== 1, divisible by 16) is not part of it."""
    values, options = _bind(kernel, args, kwargs)
    names = kernel.arg_names
    constexprs = tuple((names[i], values[names[i]]) for i in sorted(kernel.constexprs))
    # A pointer passed as None compiles as a constexpr None: a binary of its own.
    pointers = tuple((n, str(v.dtype).replace("torch.", "") if v is not None else None) for n, v in values.items()
                     if hasattr(v, "data_ptr") or (v is None and names.index(n) not in kernel.constexprs))
    return (kernel.__name__, constexprs, pointers, tuple(sorted(options.items())))


def _specialise(value, specialise: bool = True, align: bool = True):
    """(type, divisible by 16 / constexpr value) exactly as Triton's launcher specialises it;
    `specialise`/`align` False for a parameter marked do_not_specialize(_on_alignment)."""
    try:
        from triton._C.libtriton import native_specialize_impl
        from triton.backends.nvidia.compiler import CUDABackend
        return native_specialize_impl(CUDABackend, value, False, specialise, align)
    except ImportError:  # older Triton: the same rule, spelled out
        if not specialise and isinstance(value, int) and not isinstance(value, bool):
            return ("i32" if -2**31 <= value < 2**31 else "i64"), ""
        import torch
        if hasattr(value, "data_ptr"):
            dt = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.int64: "i64",
                  torch.int32: "i32"}[value.dtype]
            return f"*{dt}", "D" if value.data_ptr() % 16 == 0 else ""
        if isinstance(value, bool):
            return "i1", None
        if isinstance(value, int):
            if value == 1:
                return "constexpr", 1
            return ("i32" if -2**31 <= value < 2**31 else "i64"), "D" if value % 16 == 0 else ""
        return "fp32", None


def launch_spec(kernel, args, kwargs) -> tuple[dict, dict, list, dict]:
    """(signature, constexprs, divisible argument names, options) Triton compiles for this call."""
    values, options = _bind(kernel, args, kwargs)
    signature, constexprs, divisible = {}, {}, []
    for i, name in enumerate(kernel.arg_names):
        v = values[name]
        if i in kernel.constexprs:
            signature[name], constexprs[name] = "constexpr", v
            continue
        param = kernel.params[i]
        ty, key = _specialise(v, not getattr(param, "do_not_specialize", False),
                              not getattr(param, "do_not_specialize_on_alignment", False))
        if ty == "constexpr":
            signature[name], constexprs[name] = "constexpr", key
            continue
        signature[name] = ty
        if key == "D":
            divisible.append(name)
    return signature, constexprs, divisible, options


def compile_launch(kernel, args, kwargs, arch: int = 90):
    """Compile one recorded launch as Triton would at run time; return (compiled, options, constexprs)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature, constexprs, divisible, options = launch_spec(kernel, args, kwargs)
    attrs = {(kernel.arg_names.index(name),): [["tt.divisibility", 16]] for name in divisible}
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs),
                              target=GPUTarget("cuda", arch, 32), options=options)
    return compiled, options, constexprs


@contextlib.contextmanager
def launch_target(arch: int):
    """Launchers that choose by GPU (attention's sm_90 tiles) choose, for meta tensors, as on
    sm_`arch` inside (kernels._backend.META_ARCH)."""
    from .. import _backend
    before = _backend.META_ARCH
    _backend.META_ARCH = arch
    try:
        yield
    finally:
        _backend.META_ARCH = before


def _clear_replays(module) -> None:
    """Empty the module's launch replay tables: a replayed launch skips the kernel call (and so
    the record). Meta launches never form one; this keeps it so if they ever do."""
    from ._launch import Replays
    for v in vars(module).values():
        if isinstance(v, Replays):
            v.clear()


def enumerate_configs(module_name: str) -> list[tuple]:
    """(key, kernel, signature, constexprs, divisible, options, archs) of every launch
    configuration the module's launchers reach over its launch_cases(), run once as on each
    target; one per key, compiled for the targets (archs) it was launched on. The launch of a
    key with the fewest integers specialised to the constant 1 (a loop over one row compiles
    away), the first of those, supplies the argument specialisation (alignment, divisibility)."""
    import torch
    torch.set_num_threads(1)  # no OpenMP pool: compile workers fork from this process
    module = importlib.import_module(module_name)
    kernels, tuners = module_launchers(module)
    found = {}
    for arch in TARGETS:
        with launch_target(arch), record_launches(kernels, tuners) as calls:
            for case in module.launch_cases():
                for t in tuners:  # a tuned choice from an earlier call may not stand for this one
                    t.cache.clear()
                _clear_replays(module)
                case()
                for kernel, _, args, kwargs in calls:
                    key = launch_key(kernel, args, kwargs)
                    spec = launch_spec(kernel, args, kwargs)
                    if key not in found or len(spec[1]) < len(found[key][3]):
                        found[key] = (key, kernel, *spec, found[key][-1] if key in found else [])
                    if arch not in found[key][-1]:
                        found[key][-1].append(arch)
                calls.clear()
    return list(found.values())


def static_report(module_name: str) -> list[dict]:
    """The SASS facts of every kernel launch at each of the module's static_cases()."""
    from . import sass
    module = importlib.import_module(module_name)
    kernels, _ = module_launchers(module)
    results, cache = [], {}
    for label, launch, allowed_narrow in module.static_cases():
        with record_launches(kernels) as calls:
            launch()
        for kernel, grid, args, kwargs in calls:
            compiled, options, constexprs = compile_launch(kernel, args, kwargs)
            key = compiled.hash if hasattr(compiled, "hash") else compiled.asm["cubin"]
            if key not in cache:
                usage = resource_usage(compiled.asm["cubin"])
                cache[key] = sass.analyse(compiled.asm["cubin"], kernel.__name__, options.get("num_warps", 4),
                                          int(compiled.metadata.shared), usage["registers"], usage["spill_bytes"])
            n_programs = 1
            for g in grid:
                n_programs *= g
            rep = dataclasses.replace(cache[key], grid=n_programs)
            elements = constexprs.get("BLOCK_M", 1) * constexprs.get("BLOCK_N", 1)
            # An int: peel/scalar accesses allowed; a string: exempt from all but local memory (why).
            allowed = allowed_narrow.get(kernel.__name__, 0)
            exempt = allowed if isinstance(allowed, str) else ""
            bad = sass.problems(rep, 0 if exempt else allowed)
            if exempt:
                bad = [b for b in bad if b.startswith("local memory")]
            results.append({
                "case": label, "kernel": kernel.__name__, "grid": list(grid),
                "constexprs": {k: v for k, v in constexprs.items() if isinstance(v, (int, bool, str))},
                "num_warps": rep.num_warps, "registers": rep.registers, "shared": rep.shared, "local": rep.local,
                "local_accesses": rep.local_accesses, "loads": rep.loads, "stores": rep.stores,
                "narrow_untagged": rep.narrow(tagged=False), "narrow_tagged": rep.narrow(tagged=True),
                "allowed_tagged": allowed, "exempt": exempt, "ctas_per_sm": rep.ctas_per_sm,
                "warps_per_sm": rep.warps_per_sm,
                "bytes_in_flight_per_sm": rep.bytes_in_flight_per_sm, "ex2": rep.ex2, "barriers": rep.barriers,
                "ex2_per_element": round(rep.ex2_per_element(elements), 3), "line": rep.line(),
                "problems": bad,
            })
    return results


_CASES: list = []  # (kernel, signature, constexprs, divisible, options, arch) tasks, set before the pool forks


def _compile_task(i: int) -> dict:
    kernel, signature, constexprs, divisible, options, arch = _CASES[i]
    try:
        return compile_case(kernel, signature, constexprs, divisible, options, arch)
    except Exception as e:  # reported, and failed on, by the test
        return {"kernel": kernel.__name__, "arch": arch, "num_warps": options["num_warps"],
                "constexprs": _plain(constexprs), "error": f"{type(e).__name__}: {str(e)[:2000]}"}


def jobs() -> int:
    """Compiles at once: GPTK_COMPILE_JOBS, else one per core (each is one CPU-bound process)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, int(os.environ.get("GPTK_COMPILE_JOBS", 0)) or cores)


# Constexprs that size a kernel's tiles; the others (booleans, modes, offsets) select code paths.
_TILE_CONSTEXPRS = ("VEC", "TQ", "GROUP_M")


def _is_tile(name: str) -> bool:
    return name.startswith("BLOCK_") or name in _TILE_CONSTEXPRS


# What CI's 2 cores compile per module (test_compile_targets.py): the count of compiles each
# module's hand-written compile_cases() listed before the configurations came from the
# launchers, plus 15%; attention's grew to what its covering subset needs in full once the
# kv_lengths builds of the tiled forward and flash-decoding were launched (1208 compiles).
# Everything compiles on machines with 8+ cores or GPTK_COMPILE_ALL=1.
CI_COMPILES = {"kernels.triton.softmax": 110, "kernels.triton.layer_norm": 805, "kernels.triton.gelu_linear": 156,
               "kernels.triton.attention": 1210, "kernels.triton.linear_cross_entropy": 69,
               "kernels.triton.sample": 96}

# The covering subset's requirements, most important first (see covering()).
COVERING_LEVELS = ("each kernel x flag combination at its largest tile", "each kernel x pointer dtypes at its "
                   "largest tile", "each tile once", "each tile x flag value", "each kernel x pointer dtypes x "
                   "flag combination at its largest tile", "each tile x pointer dtypes")


def _size_class(pointers) -> tuple:
    """Pointer dtypes with fp16 and bf16 as one class: the same tile holds as many registers."""
    return tuple((n, "16-bit" if d in ("float16", "bfloat16") else d) for n, d in pointers)


def _footprint(key) -> tuple:
    """How heavy a configuration's tile is: tile elements per warp, then in all, then stages."""
    n = 1
    for name, v in key[1]:
        n *= v if _is_tile(name) and isinstance(v, int) else 1
    options = dict(key[3])
    return n / options["num_warps"], n, options["num_stages"]


def covering(configs: list[tuple], budget: int | None = None) -> tuple[set, int]:
    """The launch keys CI compiles: requirements in COVERING_LEVELS order, each met by a
    configuration picked greedily (the one meeting the most requirements still open, the
    heaviest on a tie), until the next pick would take more than `budget` compiles (one per
    target a configuration is launched on; None: no limit). Returns (the keys, how many
    levels are met in full). Within a level the requirements
    of the heaviest tiles come first. A tile is (kernel, pointer dtypes with fp16 = bf16,
    tile constexprs (BLOCK_*, VEC, TQ, GROUP_M), num_warps/num_stages/num_ctas); the other
    constexprs are flags (booleans, modes, head offsets)."""
    def flags(key):
        return tuple(kv for kv in key[1] if not _is_tile(kv[0]))

    def tile(key):
        return key[0], _size_class(key[2]), tuple(kv for kv in key[1] if _is_tile(kv[0])), key[3]

    def largest(groups):  # requirement met only by the heaviest member of each group
        return [{max(g, key=lambda k: (_footprint(k), repr(k)))} for g in groups.values()]

    def grouped(by):
        groups = {}
        for key in keys:
            groups.setdefault(by(key), set()).add(key)
        return groups

    keys = [c[0] for c in configs]
    cost = {c[0]: len(c[-1]) for c in configs}
    by_value = {}
    for k in keys:
        for f in flags(k):
            by_value.setdefault((tile(k), f), set()).add(k)
    levels = [largest(grouped(lambda k: (k[0], flags(k)))),
              largest(grouped(lambda k: (k[0], k[2]))),
              list(grouped(tile).values()),
              list(by_value.values()),
              largest(grouped(lambda k: (k[0], k[2], flags(k)))),
              list(grouped(lambda k: (k[0], k[2], tile(k)[2], k[3])).values())]
    reqs = []  # (level, configurations any one of which meets it)
    for n, level in enumerate(levels):
        level.sort(key=lambda g: (max(_footprint(k) for k in g), sorted(map(repr, g))), reverse=True)
        reqs += [(n, g) for g in level]
    meets = {}  # key -> indices of the requirements it meets
    for i, (_, g) in enumerate(reqs):
        for k in g:
            meets.setdefault(k, []).append(i)
    done, chosen, spent = set(), set(), 0
    for i, (n, g) in enumerate(reqs):
        if i in done:
            continue
        pick = max(g, key=lambda k: (sum(j not in done for j in meets[k]), _footprint(k), repr(k)))
        if budget is not None and spent + cost[pick] > budget:
            return chosen, n
        chosen.add(pick)
        spent += cost[pick]
        done.update(meets[pick])
    return chosen, len(levels)


@contextlib.contextmanager
def matmul_tf32(allow: bool):
    """torch.backends.cuda.matmul.allow_tf32 set to `allow` inside (it picks fp32 tl.dot's
    precision, a constexpr of the matmul kernels)."""
    import torch
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def width_classes(largest: int) -> list[int]:
    """Row widths 1..largest, two per power-of-two class (2^k and 2^k - 1: a whole number of
    16-byte vectors and not), which is how the row launchers size their blocks."""
    widths = []
    for k in range(largest.bit_length()):
        p = 1 << k
        widths += [p - 1, p] if p - 1 > p // 2 else [p]
    return widths


def row_views(n_rows: int, n_cols: int, dtype, device="meta") -> list:
    """n_rows x n_cols views in each alignment class the row launchers tell apart: contiguous;
    rows 16-byte aligned with a stride of whole vectors; the same starting one element past
    a boundary; a row stride that is not a whole number of 16-byte vectors."""
    import torch
    vec = 16 // torch.empty((), dtype=dtype).element_size()
    padded = -(-n_cols // vec) * vec + vec
    return [torch.empty(n_rows, n_cols, dtype=dtype, device=device),
            torch.empty(n_rows, padded, dtype=dtype, device=device)[:, :n_cols],
            torch.empty(n_rows, padded, dtype=dtype, device=device)[:, 1:n_cols + 1],
            torch.empty(n_rows, n_cols + 1, dtype=dtype, device=device)[:, :n_cols]]


def check_module(module_name: str, every: bool = True) -> list[dict]:
    """Every configuration of enumerate_configs(module_name) (or, every=False, its covering()
    subset within CI_COMPILES) compiled for each target it is launched on, in jobs() processes (forked after the
    enumeration, which compiles nothing)."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("compile_check needs real @triton.jit kernels: unset TRITON_INTERPRET")
    import multiprocessing
    configs = enumerate_configs(module_name)
    keep = {c[0] for c in configs} if every else covering(configs, CI_COMPILES.get(module_name))[0]
    _CASES[:] = [(kernel, signature, constexprs, divisible, options, arch)
                 for key, kernel, signature, constexprs, divisible, options, archs in configs if key in keep
                 for arch in archs]
    if jobs() == 1 or len(_CASES) == 1:
        return [_compile_task(i) for i in range(len(_CASES))]
    # Forked workers inherit the cases (kernels do not pickle); results come back in order.
    with multiprocessing.get_context("fork").Pool(jobs()) as pool:
        return pool.map(_compile_task, range(len(_CASES)), chunksize=4)


def problems(results: list[dict]) -> list[str]:
    bad = []
    for r in results:
        where = f"{r['kernel']} sm_{r['arch']} warps={r['num_warps']} {r.get('constexprs')}"
        if "error" in r:
            bad.append(f"{where}: compile failed: {r['error']}")
            continue
        if r["shared_bytes"] > r["shared_limit"]:
            bad.append(f"{where}: {r['shared_bytes']} B shared memory > {r['shared_limit']} B limit")
        if r["spill_bytes"] != 0:
            bad.append(f"{where}: {r['spill_bytes']} B of register spills (registers {r['registers']})")
    return bad


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="+", help="op modules exposing launch_cases()")
    parser.add_argument("--json", action="store_true", help="print one JSON list instead of a table")
    parser.add_argument("--static", action="store_true",
                        help="SASS report of every kernel at the module's benchmark shapes (static_cases())")
    parser.add_argument("--list", action="store_true",
                        help="print the enumerated configurations (* marks the covering subset), compile nothing")
    parser.add_argument("--covering", action="store_true",
                        help="compile only the covering() subset CI compiles (within CI_COMPILES)")
    args = parser.parse_args(argv)
    if args.list:
        for m in args.modules:
            configs = enumerate_configs(m)
            keep, met = covering(configs, CI_COMPILES.get(m))
            if args.json:
                json.dump([{"key": repr(c[0]), "archs": c[-1], "covering": c[0] in keep} for c in configs], sys.stdout)
                continue
            for c in configs:
                print("*" if c[0] in keep else " ", f"sm_{'/'.join(map(str, c[-1]))}", repr(c[0]))
            print(f"{m}: {len(configs)} configurations, {sum(len(c[-1]) for c in configs)} compiles; covering "
                  f"{len(keep)}, {sum(len(c[-1]) for c in configs if c[0] in keep)} compiles (budget "
                  f"{CI_COMPILES.get(m)}), meeting in full: {'; '.join(COVERING_LEVELS[:met]) or 'none'}"
                  + (f"; in part: {COVERING_LEVELS[met]}" if met < len(COVERING_LEVELS) else ""))
        return 0
    if args.static:
        results = [r for m in args.modules for r in static_report(m)]
        if args.json:
            json.dump(results, sys.stdout)
            return 0
        for r in results:
            print(f"{r['case']:<40} {r['kernel']:<28} {r['constexprs']}\n    {r['line']} "
                  f"exp/elt={r['ex2_per_element']}" + (f" ({r['exempt']})" if r["exempt"] else "")
                  + "".join(f"\n    PROBLEM: {p}" for p in r["problems"]))
        return 1 if any(r["problems"] for r in results) else 0
    results = [r for m in args.modules for r in check_module(m, every=not args.covering)]
    if args.json:
        json.dump(results, sys.stdout)
        return 0
    for r in results:
        if "error" in r:
            print(f"{r['kernel']:<32} sm_{r['arch']} ERROR {r['error'][:200]}")
        else:
            print(f"{r['kernel']:<32} sm_{r['arch']} warps={r['num_warps']:<2} regs={r['registers']:<4} "
                  f"spill={r['spill_bytes']:<4} smem={r['shared_bytes']:<6} stages={r['num_stages']} {r['constexprs']}"
                  + (" div16" if r["divisible"] else ""))
    bad = problems(results)
    for b in bad:
        print("PROBLEM:", b)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
