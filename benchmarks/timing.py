"""Timers, peak memory and NVTX labels.

GPU: `triton.testing.do_bench` (CUDA events around each call, L2 flushed between calls,
median over ~`rep_ms` of calls after ~`warmup_ms` of warm-up). CPU: the same shape of loop
with `time.perf_counter` and no cache flush; its figures describe the CPU only.
"""
from __future__ import annotations

import statistics
import time
from contextlib import contextmanager

import torch


def bench(fn, device: torch.device, warmup_ms: float = 25, rep_ms: float = 100) -> float:
    """Median milliseconds per call of `fn()`."""
    if device.type == "cuda":
        try:
            from triton.testing import do_bench
        except ImportError:  # pragma: no cover - triton ships with Linux torch
            return _cuda_events(fn, warmup_ms, rep_ms)
        return float(do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))
    return _cpu_timer(fn, warmup_ms, rep_ms)


def _calls(fn, budget_ms: float, estimate_ms: float, cap: int = 1000) -> int:
    return max(1, min(cap, int(budget_ms / max(estimate_ms, 1e-3))))


def _cpu_timer(fn, warmup_ms, rep_ms) -> float:
    start = time.perf_counter()
    fn()
    estimate = (time.perf_counter() - start) * 1e3
    for _ in range(_calls(fn, warmup_ms, estimate)):
        fn()
    times = []
    for _ in range(_calls(fn, rep_ms, estimate)):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _cuda_events(fn, warmup_ms, rep_ms) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    estimate = start.elapsed_time(end)
    for _ in range(_calls(fn, warmup_ms, estimate)):
        fn()
    times = []
    for _ in range(_calls(fn, rep_ms, estimate)):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def time_calls(fn, device: torch.device, warmup: int = 1, reps: int = 3) -> float:
    """Median ms of whole calls that take long (a training step, a generate loop), synchronized
    around each; do_bench's adaptive loop would spend seconds estimating them."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def peak_memory(device: torch.device):
    """Yields a dict whose "mib" is filled on exit: peak allocated memory above what was
    allocated on entry (the call's working set and outputs). None on a CPU (not tracked)."""
    result = {"mib": None}
    if device.type != "cuda":
        yield result
        return
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    yield result
    sync(device)
    result["mib"] = (torch.cuda.max_memory_allocated(device) - before) / 2**20


def labeled(fn, label: str, *, nvtx: bool = False, record: bool = False):
    """`fn` inside an NVTX range named `label` (Nsight Systems / Compute filter on it) and/or a
    torch.profiler record_function of that name; `fn` itself when neither is asked for, so
    plain timing pays nothing."""
    if not (nvtx or record):
        return fn

    def run():
        if nvtx:
            torch.cuda.nvtx.range_push(label)
        try:
            if record:
                with torch.profiler.record_function(label):
                    return fn()
            return fn()
        finally:
            if nvtx:
                torch.cuda.nvtx.range_pop()
    return run
