"""The CUDA part of the cuda backend, checked without a GPU: every csrc/cuda/*.cu compiles
for sm_80 and sm_90a with no register spill, and the full extension (torch glue +
kernels + cuBLASLt) compiles and links. The link is cached per source hash (see
kernels/cuda/_build.py), so only the first run after a change pays for it."""
import json
import os
import subprocess
import sys

import pytest

from kernels.cuda import _build, compile_check

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_NVCC = compile_check.nvcc_path() is None
needs_nvcc = pytest.mark.skipif(NO_NVCC, reason="nvcc not found (set CUDA_HOME)")


def test_ptxas_parser_reads_kernels_spills_and_registers():
    log = ("ptxas info    : Compiling entry function '_Z3fooPf' for 'sm_90a'\n"
           "ptxas info    : Function properties for _Z3fooPf\n"
           "    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n"
           "ptxas info    : Used 40 registers, used 1 barriers, 128 bytes smem, 416 bytes cmem[0]\n"
           "ptxas info    : Compiling entry function '_Z3barv' for 'sm_80'\n"
           "    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"
           "ptxas info    : Used 20 registers, 0 bytes smem\n")
    recs = compile_check.parse_ptxas(log, "x.cu")
    assert [(r["kernel"], r["arch"], r["registers"], r["spill_stores"], r["spill_loads"], r["smem"]) for r in recs] == [
        ("_Z3fooPf", "sm_90a", 40, 4, 12, 128), ("_Z3barv", "sm_80", 20, 0, 0, 0)]
    for r in recs:
        r["name"] = r["kernel"]
    assert len(compile_check.problems(recs)) == 1


@needs_nvcc
def test_every_cu_compiles_for_sm80_sm90a_without_spills():
    files = compile_check.cu_files()
    assert {os.path.basename(f) for f in files} >= {"softmax.cu", "layer_norm.cu", "attention.cu", "gelu_linear.cu",
                                                    "linear_cross_entropy.cu"}
    records = compile_check.check(files)
    assert {r["arch"] for r in records} == {"sm_80", "sm_90a"}
    assert {r["file"] for r in records} == {os.path.basename(f) for f in files}
    assert all(r["registers"] for r in records), [r["name"] for r in records if not r["registers"]]
    # the tensor-core attention kernels (forward, dQ, dK/dV) are there for every 16-bit dtype
    # and padded head dim (16, 32, 64, 96, 128, 192, 256: every multiple of 8 up to 256), on both archs
    for kernel in ("attn_fwd_mma", "attn_bwd_dq_mma", "attn_bwd_dkdv_mma"):
        mma = {(r["arch"], r["name"].split("<")[1].split(">")[0]) for r in records if f"{kernel}<" in r["name"]}
        assert len(mma) == 2 * 2 * 7, (kernel, sorted(mma))
    assert all(r["smem"] <= 48 * 1024 for r in records)
    bad = compile_check.problems(records)
    assert not bad, "\n".join(bad)


@pytest.mark.skipif(_build.cuda_unbuildable_reason() is not None,
                    reason=f"the CUDA part cannot build here: {_build.cuda_unbuildable_reason()}")
def test_full_cuda_extension_compiles_and_links():
    env = dict(os.environ, GPTK_BUILD_CUDA="1", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "kernels.cuda", "--cuda"], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    info = json.loads(proc.stdout)
    assert info["with_cuda"] and os.path.isfile(info["library"])
    assert set(info["arch_list"].split(";")) >= {"8.0", "9.0a"}
