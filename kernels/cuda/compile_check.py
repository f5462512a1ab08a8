"""Compile every csrc/cuda/*.cu for real GPUs without one and report each kernel's
registers, spills and shared memory (ptxas -v), per architecture.

    python -m kernels.cuda.compile_check            # table; exit 1 on any spill
    python -m kernels.cuda.compile_check --json

The .cu files include no torch headers (entry.cpp holds the torch glue), so each
compiles in seconds. The -gencode targets are those of the default
TORCH_CUDA_ARCH_LIST: sm_80 (A100) and sm_90a (H100).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

from ._build import CSRC, cuda_home

GENCODES = ("-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90a,code=sm_90a")
# What torch.utils.cpp_extension passes nvcc, so these builds see the same code.
TORCH_NVCC_FLAGS = ("-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
                    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
                    "--expt-relaxed-constexpr")

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\w+)'")
_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def cu_files() -> list[str]:
    return sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cu")))


def nvcc_path() -> str | None:
    home = cuda_home()
    return os.path.join(home, "bin", "nvcc") if home else shutil.which("nvcc")


def parse_ptxas(log: str, source: str) -> list[dict]:
    """One record per (kernel, arch) from `ptxas -v` output."""
    records, current = [], None
    for line in log.splitlines():
        m = _ENTRY.search(line)
        if m:
            current = {"file": os.path.basename(source), "kernel": m.group(1), "arch": m.group(2),
                       "registers": None, "spill_stores": 0, "spill_loads": 0, "stack": 0, "smem": 0}
            records.append(current)
            continue
        if current is None:
            continue
        m = _SPILL.search(line)
        if m:
            current["stack"], current["spill_stores"], current["spill_loads"] = map(int, m.groups())
        m = _USED.search(line)
        if m:
            current["registers"] = int(m.group(1))
            current["smem"] = int(m.group(2) or 0)
    return records


def demangle(names: list[str]) -> dict[str, str]:
    if not names or shutil.which("c++filt") is None:
        return {n: n for n in names}
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}


def compile_one(source: str, nvcc: str) -> tuple[list[dict], str]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [nvcc, "-std=c++17", "-O3", f"-I{CSRC}", *TORCH_NVCC_FLAGS, *GENCODES, "-Xptxas", "-v", "-c", source,
               "-o", os.path.join(tmp, "out.o")]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"nvcc failed on {source}:\n{log[-4000:]}")
    return parse_ptxas(log, source), log


def check(files: list[str] | None = None, jobs: int = 2) -> list[dict]:
    nvcc = nvcc_path()
    if nvcc is None:
        raise RuntimeError("nvcc not found (set CUDA_HOME)")
    files = files or cu_files()
    records = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        for recs, _ in pool.map(lambda f: compile_one(f, nvcc), files):
            records += recs
    names = demangle(sorted({r["kernel"] for r in records}))
    for r in records:
        r["name"] = names[r["kernel"]]
    return records


def problems(records: list[dict]) -> list[str]:
    return [f"{r['arch']} {r['file']}: {r['name']} spills {r['spill_stores']} B stores / {r['spill_loads']} B loads "
            f"({r['registers']} registers)" for r in records if r["spill_stores"] or r["spill_loads"]]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernels.cuda.compile_check", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("files", nargs="*", help="default: every csrc/cuda/*.cu")
    args = parser.parse_args(argv)
    records = check(args.files or None, jobs=int(os.environ.get("MAX_JOBS", "2")))
    if args.json:
        print(json.dumps(records, indent=1))
    else:
        for r in records:
            print(f"{r['arch']:7} regs {r['registers']:3} spill {r['spill_stores']:3}/{r['spill_loads']:3} "
                  f"smem {r['smem']:6}  {r['file']}: {r['name']}")
    bad = problems(records)
    for line in bad:
        print("SPILL:", line, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
