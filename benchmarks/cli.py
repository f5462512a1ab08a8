"""`python -m benchmarks`: the command line (its --help is the user's documentation)."""
from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import time
from collections import OrderedDict
from pathlib import Path

import torch

from .env import DTYPE_NAMES, card_slug, describe, measure_ceilings, pick_device
from .model import GPT_BENCH
from .ops import AUTO, OPS, OUR_BACKENDS, PROVIDERS

ALL_OPS = tuple(OPS) + ("gpt",)
ALL_MODES = ("fwd", "bwd", "decode", "train")

EPILOG = """\
what is measured
  ops       softmax (fwd, bwd), layer_norm and add_layer_norm (fwd, bwd), attention (fwd, bwd,
            decode), gelu_linear (fwd, bwd), linear_cross_entropy (train: loss + gradients
            in one call), gpt (train: a GPT-2 124M training step; decode: KV-cached
            generate), every op x backend that `kernels` provides at run time.
  providers triton, cuda (ours, through kernels.<op>(..., backend=...)); eager (the plain
            torch / F.* calls a user writes); compile (torch.compile of that same eager
            function); sdpa (F.scaled_dot_product_attention, attention); liger (Liger-Kernel
            softmax / LayerNorm, when installed). Whole model: gpt.GPT on our backends, on
            backend="torch" (eager) and under nn.Module.compile (compile).
  check     each provider's output (fwd) or input gradients (bwd) is compared with the
            torch backend on fp32 copies of the same random inputs before timing:
            max|out - ref| / max|ref| must be <= max(dtype floor, 3 x PyTorch's own error in
            the same dtype). A provider that fails is reported WRONG and not timed.
  timing    GPU: triton.testing.do_bench median (CUDA events, L2 flushed between calls);
            bwd times the backward alone (the forward graph is built once). Whole model:
            median of synchronized calls. CPU: time.perf_counter median, no cache flush.
  figures   memory-bound (softmax, norms, attention decode, gpt decode): GB/s = minimum
            bytes moved / time, % of the copy bandwidth measured at the start of the run.
            compute-bound (attention fwd/bwd, gelu_linear, gpt train): TFLOP/s = FLOPs /
            time, % of the dense matmul of the same dtype (8192^3) measured at the start.
            Attention FLOPs = 4 B H Tq Tk D, x0.5 causal, x2.5 backward. Formulas sit in the
            docstrings of benchmarks/ops.py and benchmarks/model.py. "vs eager" = eager ms /
            provider ms on the same case. "mem MiB" = peak allocated memory above the inputs
            during one call (bwd: forward + backward; train: one step).
  CPU       with no GPU the suite runs the CPU backends at small sizes and labels every
            line and record as a CPU figure. triton runs on CPU tensors only through the
            interpreter, which is not a performance path: it is included only when
            TRITON_INTERPRET=1 is set. torch.compile is left out on CPU unless named in
            --providers.

outputs
  --json FILE    {"meta": {device, versions, commit, ceilings, ...}, "records": [...]}, one
                 record per case x provider: op, mode, dtype, shape, provider, backend,
                 status (ok / wrong / error / skipped), ms, unit, value, gbps, tflops,
                 tokens_per_s, pct_of_peak, vs_eager, peak_mem_mib, max_err, note, device,
                 cpu_figure, torch, triton, driver, python, commit.
  --plot DIR     one PNG per op and dtype: throughput against size, one line per provider.
  --profile DIR  torch.profiler Chrome traces of each op/mode (first size) and of a GPT
                 training step, all providers in one trace (chrome://tracing, Perfetto).
  --nvtx         NVTX range "<op>.<mode>.<provider>" around every call, for Nsight:
                 ncu --nvtx --nvtx-include "softmax.fwd.triton/" -k regex:softmax
                     --launch-skip 5 --launch-count 1 python -m benchmarks --nvtx --ops softmax ...

examples
  python -m benchmarks --quick
  python -m benchmarks --ops attention --modes fwd,bwd --dtypes bf16,fp16 --plot plots/
  python -m benchmarks --sizes full --json out.json --markdown out.md --plot plots/
  python -m benchmarks --ops gpt --profile traces/
"""


def _csv(choices, name):
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"{name}: unknown {bad or text!r}; choose from {', '.join(choices)}")
        return items
    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=(
        "Benchmark gptk's kernels and GPT-2 against eager PyTorch, torch.compile, SDPA and Liger, "
        "as GB/s or TFLOP/s and % of the ceilings measured at the start of the run."),
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", type=_csv(ALL_OPS, "--ops"), default=list(ALL_OPS),
                   help=f"comma list of ops (default: all: {','.join(ALL_OPS)})")
    p.add_argument("--modes", type=_csv(ALL_MODES, "--modes"), default=list(ALL_MODES),
                   help="comma list of fwd,bwd,decode (attention),train (gpt, linear_cross_entropy) "
                        "(default: all)")
    p.add_argument("--providers", type=_csv(PROVIDERS, "--providers"), default=None,
                   help=f"comma list of {','.join(PROVIDERS)} (default: all; on CPU all but compile)")
    p.add_argument("--dtypes", type=_csv(tuple(DTYPE_NAMES), "--dtypes"), default=None,
                   help="comma list of bf16,fp16,fp32 (default: bf16 on a GPU, fp32 on CPU)")
    p.add_argument("--sizes", choices=("quick", "standard", "full"), default="standard",
                   help="size sweep: quick (2 sizes per op: hidden 1024/4096, rows 4096/50257, "
                        "T 1024/4096...), standard (hidden 768-8192, vocab rows to 50257, "
                        "T 512-16384, D 64 and 128), full (adds longer rows and more batches). "
                        "On CPU every preset uses small shapes. Default: standard")
    p.add_argument("--quick", action="store_true", help="same as --sizes quick")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cuda or cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice; on a busy machine 1 thread "
                        "gives steadier CPU timings)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write every record as JSON")
    p.add_argument("--markdown", type=Path, metavar="FILE", help="write a markdown summary")
    p.add_argument("--plot", type=Path, metavar="DIR", help="write PNG line plots per op")
    p.add_argument("--profile", type=Path, metavar="DIR", help="write torch.profiler Chrome traces")
    p.add_argument("--nvtx", action="store_true", help="NVTX range around every timed call (Nsight; GPU runs only)")
    p.add_argument("--time-budget", type=float, metavar="SECONDS", default=None,
                   help="stop starting cases after this long (the rest are recorded as skipped); "
                        "cases run quick sizes of every op first, then the whole-model cases, "
                        "then the rest of the sweep")
    p.add_argument("--warmup-ms", type=float, default=25.0, help="do_bench warm-up (default 25)")
    p.add_argument("--rep-ms", type=float, default=100.0, help="do_bench measuring time (default 100)")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend of the compile provider (default inductor)")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument("--ceilings-only", action="store_true", help="measure and print the ceilings, then exit")
    p.add_argument("--strict", action="store_true", help="exit 1 if any provider is wrong or errors")
    return p


def build_cases(args, gpu: bool, dtypes) -> list:
    preset = "quick" if args.quick else args.sizes
    cases = []
    for op in args.ops:
        spec = GPT_BENCH if op == "gpt" else OPS[op]
        cases += spec.cases(preset, gpu, dtypes, args.modes)
    return order(cases)


def order(cases: list) -> list:
    """Run order under a time budget: tier by tier, and within a tier round-robin over
    (op, mode, dtype), smallest size first, so every op is covered before any is swept."""
    out = []
    for tier in sorted({c.tier for c in cases}):
        groups = OrderedDict()
        for c in cases:
            if c.tier == tier:
                groups.setdefault((c.op, c.mode, c.dtype_name), []).append(c)
        queues = [sorted(g, key=lambda c: (c.series, c.x)) for g in groups.values()]
        while any(queues):
            for q in queues:
                if q:
                    out.append(q.pop(0))
    return out


def providers_for(op: str, wanted) -> list[str]:
    spec = GPT_BENCH if op == "gpt" else OPS[op]
    return [p for p in wanted if p in OUR_BACKENDS or p == AUTO or p in spec.baselines]


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.quick:
        args.sizes = "quick"
    device = pick_device(args.device)
    gpu = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    dtypes = [DTYPE_NAMES[d] for d in (args.dtypes or (["bf16"] if gpu else ["fp32"]))]
    wanted = args.providers or list(PROVIDERS)
    disabled = {}
    if not gpu:
        disabled["liger"] = "Liger-Kernel's Triton kernels run on CUDA tensors only"
    if not gpu and args.providers is None:
        disabled["compile"] = ("torch.compile is not timed on CPU by default (name it in --providers "
                               "to include it)")
    cases = build_cases(args, gpu, dtypes)
    if args.list:
        for c in cases:
            print(f"tier {c.tier}  {c.op:15s} {c.mode:7s} {c.dtype_name:5s} {c.shape:40s} "
                  f"providers: {','.join(providers_for(c.op, wanted))}")
        return 0

    from . import report
    from .runner import Context, run_case

    start = time.monotonic()
    info = describe(device)
    if info["cpu_figure"]:
        print("No GPU in use: running the CPU backends at small sizes. These are CPU figures, "
              "not GPU figures.", file=sys.stderr)
        load, cores = os.getloadavg()[0], os.cpu_count() or 1
        if load > cores and torch.get_num_threads() > 1:
            print(f"The machine is busy (load {load:.1f} on {cores} cores): multi-threaded CPU timings "
                  f"stall on descheduled threads; --threads 1 gives steadier figures.", file=sys.stderr)
    ceilings = measure_ceilings(device, dtypes, args.warmup_ms, args.rep_ms)
    meta = {"info": info, "ceilings": ceilings, "argv": "python -m benchmarks " + shlex.join(sys.argv[1:] if argv is None else argv),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "sizes": args.sizes, "providers": wanted, "time_budget_s": args.time_budget}
    print(report.ceilings_line(meta) + (" (CPU)" if info["cpu_figure"] else ""), file=sys.stderr)
    if args.ceilings_only:
        print("\n".join(report.header_lines(meta)))
        print(f"results folder: benchmarks/results/{meta['date'][:10]}-{card_slug(info)}/")
        return 0
    ctx = Context(device=device, info=info, ceilings=ceilings, warmup_ms=args.warmup_ms, rep_ms=args.rep_ms,
                  nvtx=args.nvtx and gpu, compile_backend=args.compile_backend, profile_dir=args.profile,
                  deadline=None if args.time_budget is None else start + args.time_budget,
                  budget_s=args.time_budget, disabled=disabled)
    records = run_all(cases, wanted, ctx, run_case)
    meta["seconds"] = time.monotonic() - start
    meta["traces"] = ctx.traces
    report.print_table(records, meta)
    if args.json:
        report.write_json(args.json, records, meta)
    if args.markdown:
        report.write_markdown(args.markdown, records, meta)
    if args.plot:
        meta["plots"] = report.write_plots(args.plot, records, meta)
        print(f"plots: {len(meta['plots'])} PNG files in {args.plot}", file=sys.stderr)
    if ctx.traces:
        print(f"traces: {', '.join(ctx.traces)}", file=sys.stderr)
    bad = [r for r in records if r["status"] in ("wrong", "error")]
    if bad:
        print(f"{len(bad)} provider(s) wrong or failing: see the status column", file=sys.stderr)
    return 1 if bad and args.strict else 0


def run_all(cases, wanted, ctx, run_case) -> list[dict]:
    """Every case's records. Ctrl-C (or `timeout -s INT`) stops the run but keeps what is done:
    the remaining cases are recorded as skipped and the outputs are still written."""
    records = []
    try:
        _run_all(cases, wanted, ctx, run_case, records)
    except KeyboardInterrupt:
        from .runner import base_record
        done = {(r["op"], r["mode"], r["dtype"], r["shape"]) for r in records}
        for case in cases:
            if (case.op, case.mode, case.dtype_name, case.shape) not in done:
                for provider in providers_for(case.op, wanted):
                    rec = base_record(case, provider, ctx)
                    rec["reason"] = "interrupted before this case ran"
                    records.append(rec)
        print("interrupted: writing what was measured", file=sys.stderr)
    return records


def _run_all(cases, wanted, ctx, run_case, records) -> None:
    try:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    except ImportError:
        for i, case in enumerate(cases):
            print(f"[{i + 1}/{len(cases)}] {case.label} {case.dtype_name} {case.shape}", file=sys.stderr)
            records += run_case(case, providers_for(case.op, wanted), ctx)
        return
    from rich.console import Console
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task("cases", total=len(cases))
        for case in cases:
            what = f"{case.label} {case.dtype_name} {case.shape}"
            step = lambda provider, what=what: progress.update(task, description=f"{what} [{provider}]")  # noqa: E731
            records += run_case(case, providers_for(case.op, wanted), ctx, step)
            progress.advance(task)
        progress.update(task, description="done")
