"""Compile Triton kernels for real GPUs without one: sm_80 and sm_90, via triton.compile.

Each op module exposes `compile_cases()`: (kernel, runtime-arg signature, constexprs,
num_warps[, num_stages[, divisible[, archs]]]) for every configuration its launcher can pick;
`divisible` names the arguments to compile as multiples of 16 (pointers 16-byte aligned),
the specialisation Triton makes at launch for such values; `archs` limits a case to the
targets its launcher picks it on (default: all). For each we compile for
both targets and read shared memory from the metadata, registers and spill bytes
from cuobjdump. The interpreter replaces @triton.jit with a Python shim, so this runs
in a child process without TRITON_INTERPRET, the compiles spread over one forked worker per
core (GPTK_COMPILE_JOBS=N sets how many):

    python -m kernels.triton.compile_check kernels.triton.softmax [--json]

With --static, each module's `static_cases()` instead names benchmark shapes and a function
that runs the real launcher on meta tensors (no memory, no GPU). Every kernel launch it makes
is intercepted, specialised the way Triton's launcher specialises those argument values
(16-byte aligned pointers, integers divisible by 16, integers equal to 1), compiled for
sm_90, and read back from its SASS (kernels/triton/sass.py): access widths, local memory,
resident warps, bytes of loads in flight per SM, exp instructions per element:

    python -m kernels.triton.compile_check --static kernels.triton.softmax kernels.triton.layer_norm
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
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


def compile_case(kernel, signature: dict, constexprs: dict, num_warps: int, arch: int,
                 num_stages: int = 3, divisible=(), options=None) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    full_signature = dict(signature)
    for name in constexprs:
        full_signature[name] = "constexpr"
    attrs = {(kernel.arg_names.index(name),): [["tt.divisibility", 16]] for name in divisible}
    src = ASTSource(fn=kernel, signature=full_signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages, **(options or {})})
    usage = resource_usage(compiled.asm["cubin"])
    ptx = compiled.asm["ptx"]
    return {
        "kernel": kernel.__name__, "arch": arch, "num_warps": num_warps, "num_stages": num_stages,
        "signature": signature, "constexprs": {k: (v if isinstance(v, (int, float, bool, str)) else str(v))
                                               for k, v in constexprs.items()},
        "shared_bytes": int(compiled.metadata.shared), "shared_limit": SHARED_LIMIT[arch],
        "divisible": sorted(divisible), "wgmma": "wgmma" in ptx, "mma_sync": "mma.sync" in ptx,
        "fp32_fma": ptx.count("fma.rn.f32"), **usage,
    }


class record_launches:
    """Context manager: `kernel[grid](...)` of the given JITFunctions records (kernel, grid,
    args, kwargs) instead of launching. Used on meta tensors, whose data_ptr() is an offset
    from 0, so pointer alignment is what a real allocation of that view would have."""

    def __init__(self, kernels):
        self.kernels, self.calls = list(kernels), []

    def __enter__(self):
        for k in self.kernels:
            def run(*args, grid, warmup, _k=k, **kwargs):
                self.calls.append((_k, grid, args, kwargs))
            k.run = run
            if hasattr(k, "_fast_launch"):  # _launch.jit's cached launch path
                k._fast_launch = lambda grid, *args, _k=k, **kwargs: self.calls.append((_k, grid, args, kwargs))
        return self.calls

    def __exit__(self, *exc):
        for k in self.kernels:
            del k.run  # back to the class's methods
            if "_fast_launch" in vars(k):
                del k._fast_launch


def _specialise(value):
    """(type, divisible by 16 / constexpr value) exactly as Triton's launcher specialises it."""
    try:
        from triton._C.libtriton import native_specialize_impl
        from triton.backends.nvidia.compiler import CUDABackend
        return native_specialize_impl(CUDABackend, value, False, True, True)
    except ImportError:  # older Triton: the same rule, spelled out
        import torch
        if hasattr(value, "data_ptr"):
            dt = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[value.dtype]
            return f"*{dt}", "D" if value.data_ptr() % 16 == 0 else ""
        if isinstance(value, bool):
            return "i1", None
        if isinstance(value, int):
            if value == 1:
                return "constexpr", 1
            return ("i32" if -2**31 <= value < 2**31 else "i64"), "D" if value % 16 == 0 else ""
        return "fp32", None


def compile_launch(kernel, args, kwargs, arch: int = 90):
    """Compile one recorded launch as Triton would at run time; return (compiled, options)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = kernel.arg_names
    values = dict(zip(names, args))
    options = {}
    for key, v in kwargs.items():
        if key in names:
            values[key] = v
        else:
            options[key] = v
    signature, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(names):
        v = values[name]
        if i in kernel.constexprs:
            signature[name], constexprs[name] = "constexpr", v
            continue
        ty, key = _specialise(v)
        if ty == "constexpr":
            signature[name], constexprs[name] = "constexpr", key
            continue
        signature[name] = ty
        if key == "D":
            attrs[(i,)] = [["tt.divisibility", 16]]
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs),
                              target=GPUTarget("cuda", arch, 32), options=options)
    return compiled, options, constexprs


def static_report(module_name: str) -> list[dict]:
    """The SASS facts of every kernel launch at each of the module's static_cases()."""
    from . import sass
    module = importlib.import_module(module_name)
    kernels = [v for v in vars(module).values() if hasattr(v, "arg_names") and hasattr(v, "run")]
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


_CASES: list = []  # (module, case, arch) tasks, set before the pool forks


def _compile_task(i: int) -> dict:
    module, case, arch = _CASES[i]
    kernel, signature, constexprs, num_warps, *rest = case
    num_stages = rest[0] if rest else 3
    divisible = tuple(rest[1]) if len(rest) > 1 else ()
    # Compile options a launcher passes with a kernel (e.g. enable_fp_fusion), by kernel name.
    options = getattr(module, "LAUNCH_OPTIONS", {}).get(kernel.__name__)
    try:
        return compile_case(kernel, signature, constexprs, num_warps, arch, num_stages, divisible, options)
    except Exception as e:  # reported, and failed on, by the test
        return {"kernel": getattr(kernel, "__name__", str(kernel)), "arch": arch,
                "num_warps": num_warps, "constexprs": {k: str(v) for k, v in constexprs.items()},
                "error": f"{type(e).__name__}: {str(e)[:2000]}"}


def jobs() -> int:
    """Compiles at once: GPTK_COMPILE_JOBS, else one per core (each is one CPU-bound process)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, int(os.environ.get("GPTK_COMPILE_JOBS", 0)) or cores)


def check_module(module_name: str) -> list[dict]:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("compile_check needs real @triton.jit kernels: unset TRITON_INTERPRET")
    import multiprocessing
    module = importlib.import_module(module_name)
    _CASES[:] = [(module, case, arch) for case in module.compile_cases()
                 for arch in (tuple(case[6]) if len(case) > 6 else TARGETS)]
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
    parser.add_argument("modules", nargs="+", help="op modules exposing compile_cases()")
    parser.add_argument("--json", action="store_true", help="print one JSON list instead of a table")
    parser.add_argument("--static", action="store_true",
                        help="SASS report of every kernel at the module's benchmark shapes (static_cases())")
    args = parser.parse_args(argv)
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
    results = [r for m in args.modules for r in check_module(m)]
    if args.json:
        json.dump(results, sys.stdout)
        return 0
    for r in results:
        if "error" in r:
            print(f"{r['kernel']:<32} sm_{r['arch']} ERROR {r['error'][:200]}")
        else:
            print(f"{r['kernel']:<32} sm_{r['arch']} warps={r['num_warps']:<2} regs={r['registers']:<4} "
                  f"spill={r['spill_bytes']:<4} smem={r['shared_bytes']:<6} {r['constexprs']}"
                  + (" div16" if r["divisible"] else ""))
    bad = problems(results)
    for b in bad:
        print("PROBLEM:", b)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
