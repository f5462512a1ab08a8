"""Every Triton kernel configuration a launcher can pick compiles for real GPUs (sm_80, sm_90)
without one: it must compile, fit shared memory, and not spill registers.

The configurations come from the launchers themselves (kernels.triton.compile_check records
what each module's launch_cases() launch as on each target, every autotune config included),
and a wider sweep of inputs (tests/launch_sweep.py) must pick nothing outside them. The
interpreter swaps @triton.jit for a Python shim, so both run in child processes without
TRITON_INTERPRET.

What compiles where: every configuration with GPTK_COMPILE_ALL=1, and by default on machines
with at least FULL_MIN_CORES cores (the GPU machine: 16); elsewhere (CI's 2 cores)
compile_check.covering()'s subset within compile_check.CI_COMPILES per module (`python -m
kernels.triton.compile_check --list MODULE` prints both and which requirements the subset
meets). The compiles spread over the machine's cores either way (GPTK_COMPILE_JOBS).
"""
import functools
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")
# Under pytest-xdist (--dist loadgroup) the tests sharing a module's compiles (_run) run on
# one worker; attention's, the longest (~850 compiles), is its own group so that another
# worker takes the rest alongside it.
pytestmark = pytest.mark.xdist_group("triton_compile")
ATTENTION = "kernels.triton.attention"

# One entry per op module; each exposes launch_cases() reaching every launch config.
MODULES = ["kernels.triton.softmax", "kernels.triton.layer_norm", "kernels.triton.gelu_linear",
           "kernels.triton.attention", "kernels.triton.linear_cross_entropy", "kernels.triton.sample"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL_MIN_CORES = 8


def _child(args, timeout):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def compile_every_config() -> bool:
    flag = os.environ.get("GPTK_COMPILE_ALL")
    if flag is not None:
        return flag not in ("", "0")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cores >= FULL_MIN_CORES


@functools.lru_cache(maxsize=None)  # one compile run per module, shared by the tests below
def _run(module):
    subset = [] if compile_every_config() else ["--covering"]
    return _child(["-m", "kernels.triton.compile_check", module, "--json", *subset], timeout=5400)


@pytest.mark.parametrize("module", MODULES)
def test_launchers_pick_only_enumerated_configs(module):
    r = _child([os.path.join("tests", "launch_sweep.py"), module], timeout=1200)[0]
    assert r["launched"] and r["enumerated"], r
    assert not r["missing"], (f"{module}: {len(r['missing'])} configurations launched over the sweep are "
                              f"missing from launch_cases():\n" + "\n".join(r["missing"][:20]))


@pytest.mark.parametrize("module", [pytest.param(m, marks=pytest.mark.xdist_group("triton_compile_attention"))
                                    if m == ATTENTION else m for m in MODULES])
def test_compiles_for_sm80_sm90_without_spills(module):
    from kernels.triton.compile_check import problems
    results = _run(module)
    assert results, f"{module}.launch_cases() launched nothing"
    assert {r["arch"] for r in results} == {80, 90}
    bad = problems(results)
    assert not bad, "\n".join(bad)


def test_gelu_linear_uses_wgmma_on_sm90():
    # Tensor-core operands (fp16, bf16, fp32 as TF32) must lower to Hopper's wgmma, not the
    # sm_80 mma.sync path; IEEE fp32 has no tensor-core form and runs on FMA units.
    results = [r for r in _run("kernels.triton.gelu_linear") if r["kernel"] == "_gelu_linear_fwd_kernel"]
    tensor_core = [r for r in results if r["arch"] == 90 and "error" not in r
                   and (r["constexprs"]["INPUT_PRECISION"] == "tf32" or "fp32" not in r["signature"]["w_ptr"])]
    assert tensor_core, "no sm_90 tensor-core cases compiled"
    missing = [f"{r['kernel']} {r['signature']['w_ptr']} {r['constexprs']}" for r in tensor_core if not r["wgmma"]]
    assert not missing, "sm_90 PTX without wgmma:\n" + "\n".join(missing)
    assert all(r["mma_sync"] for r in results if r["arch"] == 80 and "error" not in r
               and (r["constexprs"]["INPUT_PRECISION"] == "tf32" or "fp32" not in r["signature"]["w_ptr"]))


def test_layer_norm_dx_kernel_does_not_contract_to_fma():
    # dx = (g - (xhat c1 + c2)) rstd with g = dy w: fused, g - c2 keeps dy w's rounding error,
    # which rstd amplifies (hidden size 1 gave 1.7e-5 instead of 0 on the H100).
    results = [r for r in _run("kernels.triton.layer_norm") if r["kernel"] == "_ln_bwd_kernel"]
    assert results and all("error" not in r for r in results)
    assert all(r["fp32_fma"] == 0 for r in results), [(r["arch"], r["constexprs"]) for r in results if r["fp32_fma"]]
