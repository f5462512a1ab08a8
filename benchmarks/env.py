"""What a figure was measured on: device, versions, commit, and the ceilings it is judged against.

A number from another card, driver or commit is not comparable (performance.md), so every
record carries these fields. The ceilings are measured in the same run, never copied from a
datasheet: a kernel's `pct_of_peak` is over what this card really does today.
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

import torch

from .timing import bench

REPO = Path(__file__).resolve().parent.parent
DTYPE_NAMES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SHORT = {v: k for k, v in DTYPE_NAMES.items()}


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is visible to torch")
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"--device must be auto, cpu or cuda, got {name!r}")
    return device


def _run(cmd: list[str], cwd=None) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit() -> str:
    """HEAD of the checkout the package runs from, "+dirty" when it has uncommitted changes."""
    head = _run(["git", "rev-parse", "HEAD"], cwd=REPO)
    if head is None:
        return "unknown"
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO)
    return head + ("+dirty" if dirty else "")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU: {cpu_name()} ({os.cpu_count()} threads, torch uses {torch.get_num_threads()})"


def versions(device: torch.device) -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    driver = None
    if device.type == "cuda":
        out = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        driver = out.splitlines()[0].strip() if out else None
    return {
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda_runtime": torch.version.cuda,
        "driver": driver,
        "python": platform.python_version(),
    }


def describe(device: torch.device) -> dict:
    """The fields every record repeats, so that any one record stands on its own."""
    is_cpu = device.type != "cuda"
    info = {
        "device": device_name(device),
        "device_type": device.type,
        "cpu_figure": is_cpu,
        **versions(device),
        "commit": git_commit(),
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["sm"] = f"{props.major}{props.minor}"
        info["sm_count"] = props.multi_processor_count
        info["memory_gib"] = round(props.total_memory / 2**30, 1)
    return info


def card_slug(info: dict) -> str:
    """A short folder-safe card name for benchmarks/results/<date>-<card>/."""
    name = info["device"].lower()
    if info["device_type"] != "cuda":
        return "cpu"
    for word in ("nvidia", "geforce", "tesla"):
        name = name.replace(word, "")
    return "-".join(part for part in "".join(c if c.isalnum() else " " for c in name).split())


# ---------------------------------------------------------------------------------------------
# Ceilings
# ---------------------------------------------------------------------------------------------

def measure_ceilings(device: torch.device, dtypes, warmup_ms: float = 25, rep_ms: float = 100) -> dict:
    """HBM copy bandwidth and dense matmul throughput per dtype, on this device, now.

    copy:   dst.copy_(src) of a buffer far larger than L2; GB/s = 2 * nbytes / t
            (bytes read + bytes written, the same accounting as the kernels' figures).
    matmul: a @ b with a, b (n, n) random, n = 8192 on a GPU; TFLOP/s = 2 * n^3 / t.
    On a CPU both are small (64 MiB, n = 1024) and describe the CPU, not any GPU.
    """
    gpu = device.type == "cuda"
    nbytes = (1 << 30) if gpu else (64 << 20)
    src = torch.randn(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src), device, warmup_ms, rep_ms)
    copy_gbps = 2 * nbytes / (ms * 1e-3) / 1e9
    del src, dst
    n = 8192 if gpu else 1024
    matmul = {}
    wanted = {torch.bfloat16, torch.float16} if gpu else set()
    for dtype in sorted(wanted | set(dtypes), key=str):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        ms = bench(lambda: a @ b, device, warmup_ms, rep_ms)
        matmul[SHORT[dtype]] = 2 * n ** 3 / (ms * 1e-3) / 1e12
        del a, b
    if gpu:
        torch.cuda.empty_cache()
    return {"copy_gbps": copy_gbps, "matmul_tflops": matmul, "copy_bytes": nbytes, "matmul_n": n}
