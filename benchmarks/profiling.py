"""torch.profiler Chrome traces (open in chrome://tracing or https://ui.perfetto.dev).

Traces are taken after timing, never during it: the profiler's own overhead would be timed.
Each provider's calls sit in a record_function (and, with --nvtx, an NVTX range) named
`<op>.<mode>.<provider>`, so one trace compares the providers side by side.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .timing import labeled, sync


def trace(path: Path, runs, device: torch.device, iters: int = 3) -> str:
    """Profile `iters` calls of each (label, fn) in `runs`; write the Chrome trace to `path`."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.profiler.profile(activities=activities) as prof:
        for label, fn in runs:
            marked = labeled(fn, label, record=True)
            for _ in range(iters):
                marked()
            sync(device)
    prof.export_chrome_trace(str(path))
    return str(path)
