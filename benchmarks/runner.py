"""Runs cases: check each provider against the fp32 reference, then time it; one record each.

A provider whose output is off is recorded as "wrong" with its error and never timed; one
that cannot run here is "skipped" with the reason; one that raises is "error" with the
message. The check's limit follows FlashAttention's rule: the larger of a per-dtype floor and
3x the error of PyTorch's own implementation in the same dtype, all against fp32.
"""
from __future__ import annotations

import copy
import math
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .model import GPT_BENCH
from .ops import OPS, Case, Skip
from .timing import bench, labeled, peak_memory, sync, time_calls

# Largest max|a - ref| / max|ref| accepted whatever PyTorch's own error is. Loose enough for
# any correct kernel (TF32 dots included in fp32), tight enough that a broken one fails.
FLOOR = {torch.float32: 2e-3, torch.float16: 1e-2, torch.bfloat16: 4e-2}
MODEL_FLOOR = {torch.float32: 2e-3, torch.float16: 3e-2, torch.bfloat16: 8e-2}
TORCH_ERROR_FACTOR = 3.0
MODEL_COMPILE_SECONDS = 120  # do not start compiling a whole model with less budget left than this


@dataclass
class Context:
    device: torch.device
    info: dict
    ceilings: dict
    warmup_ms: float = 25
    rep_ms: float = 100
    nvtx: bool = False
    compile_backend: str = "inductor"
    profile_dir: Path | None = None
    deadline: float | None = None
    budget_s: float | None = None
    disabled: dict = field(default_factory=dict)   # provider -> why it is not run
    profiled: set = field(default_factory=set)
    traces: list = field(default_factory=list)

    def seconds_left(self) -> float:
        return math.inf if self.deadline is None else self.deadline - time.monotonic()

    def out_of_time(self, need: float = 0.0) -> str | None:
        left = self.seconds_left()
        if left <= need:
            if need:
                return (f"not started: needs ~{need:.0f} s and {max(left, 0):.0f} s of the "
                        f"time budget (--time-budget {self.budget_s:g}) is left")
            return f"time budget used up (--time-budget {self.budget_s:g} s)"
        return None


def as_tuple(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def rel_error(got, ref) -> float:
    """max over tensors of max|got - ref| / max|ref|; inf for a shape mismatch or a NaN/inf
    where the reference is finite."""
    worst = 0.0
    got, ref = as_tuple(got), as_tuple(ref)
    if len(got) != len(ref):
        return math.inf
    for a, r in zip(got, ref):
        if a is None or tuple(a.shape) != tuple(r.shape):
            return math.inf
        if r.numel() == 0:
            continue
        diff = (a.detach().float() - r.float()).abs().max().item()
        scale = r.float().abs().max().item()
        if not math.isfinite(diff):
            return math.inf
        worst = max(worst, diff / max(scale, 1e-30))
    return worst


def base_record(case: Case, provider: str, ctx: Context) -> dict:
    backend = provider if provider in ("triton", "cuda") else ("liger" if provider == "liger" else "torch")
    rec = {
        "op": case.op, "mode": case.mode, "dtype": case.dtype_name, "shape": case.shape,
        "params": {k: v for k, v in case.params.items()}, "x": case.x, "xlabel": case.xlabel,
        "series": case.series, "provider": provider, "backend": backend, "status": "skipped",
        "ms": None, "unit": None, "value": None, "gbps": None, "tflops": None, "tokens_per_s": None,
        "pct_of_peak": None, "peak": None, "peak_value": None, "vs_eager": None, "peak_mem_mib": None,
        "max_err": None, "err_limit": None, "reason": "", "note": "",
    }
    rec.update(ctx.info)
    if ctx.info.get("cpu_figure"):
        rec["note"] = "CPU figure, not a GPU figure"
    if provider == "triton" and ctx.info.get("triton_interpret"):
        rec["note"] = (rec["note"] + "; " if rec["note"] else "") + "Triton interpreter (numpy), not compiled"
    return rec


def fill_figures(rec: dict, metric: str, work: float, ms: float, ctx: Context, tokens: float | None = None):
    """GB/s = bytes / s / 1e9 over the copy ceiling; TFLOP/s = FLOPs / s / 1e12 over the
    matmul ceiling of the record's dtype; tokens/s = tokens / s (whole-model cases)."""
    seconds = ms * 1e-3
    rec["ms"] = ms
    if metric == "bytes":
        rec["gbps"] = rec["value"] = work / seconds / 1e9
        rec["unit"], rec["peak"] = "GB/s", "copy"
        peak = ctx.ceilings.get("copy_gbps")
    else:
        rec["tflops"] = rec["value"] = work / seconds / 1e12
        rec["unit"], rec["peak"] = "TFLOP/s", f"matmul_{rec['dtype']}"
        peak = ctx.ceilings.get("matmul_tflops", {}).get(rec["dtype"])
    if peak:
        rec["peak_value"] = peak
        rec["pct_of_peak"] = 100.0 * rec["value"] / peak
    if tokens is not None:
        rec["tokens_per_s"] = tokens / seconds


def _mark_failed(rec: dict, e: BaseException, device) -> None:
    if isinstance(e, Skip):
        rec["status"], reason = "skipped", str(e)
    else:
        rec["status"] = "error"
        first = (str(e).strip().splitlines() or [""])[0][:300]
        reason = f"{type(e).__name__}: {first}"
    rec["reason"] = reason
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _set_vs_eager(records: list[dict]) -> None:
    eager = next((r for r in records if r["provider"] == "eager" and r["status"] == "ok"), None)
    if eager is None:
        return
    for r in records:
        if r["status"] == "ok":
            r["vs_eager"] = eager["ms"] / r["ms"]


def _seed(case: Case) -> int:
    return zlib.crc32(f"{case.op}{case.mode}{case.shape}{case.dtype_name}".encode())


def _prepared(fn, inputs: dict, grad_names, gouts):
    """The timed call: fn(**inputs) for fwd; for bwd, the forward runs once here and the call
    is the backward alone (autograd.grad with retain_graph, so it can repeat)."""
    if not grad_names:
        return lambda: fn(**inputs)
    outs = as_tuple(fn(**inputs))
    targets = [inputs[n] for n in grad_names]
    return lambda: torch.autograd.grad(outs, targets, gouts, retain_graph=True)


def _evaluate(fn, inputs, grad_names, gouts):
    result = as_tuple(_prepared(fn, inputs, grad_names, gouts)())
    return [t.detach() for t in result]


def run_op_case(case: Case, providers, ctx: Context, step=lambda name: None) -> list[dict]:
    spec, device = OPS[case.op], ctx.device
    records = [base_record(case, p, ctx) for p in providers]
    reason = ctx.out_of_time()
    if reason:
        for rec in records:
            rec["reason"] = reason
        return records
    try:
        return _run_op_case(case, spec, providers, records, ctx, step)
    except Exception as e:  # noqa: BLE001 - the reference itself failed: every provider says so
        for rec in records:
            if rec["status"] == "skipped" and rec["ms"] is None and rec["max_err"] is None:
                _mark_failed(rec, RuntimeError(f"reference failed: {type(e).__name__}: {e}"), device)
        return records


def _run_op_case(case, spec, providers, records, ctx, step):
    device = ctx.device
    torch.manual_seed(_seed(case))
    inputs = spec.inputs(case, device)
    grad_names = spec.grads if case.mode == "bwd" else ()
    for name in grad_names:
        inputs[name].requires_grad_(True)
    # The fp32 reference: the torch backend on fp32 copies of the same inputs.
    ref_fn = spec.call("torch")
    inputs32 = {k: v.detach().float().requires_grad_(k in grad_names) for k, v in inputs.items()}
    gouts = None
    if grad_names:
        gouts = [torch.randn_like(o, dtype=case.dtype) for o in as_tuple(ref_fn(**inputs32))]
    ref = _evaluate(ref_fn, inputs32, grad_names, [g.float() for g in gouts] if gouts else None)
    del inputs32
    limit = max(FLOOR[case.dtype], TORCH_ERROR_FACTOR * rel_error(_evaluate(ref_fn, inputs, grad_names, gouts), ref))
    metric, work = spec.metric_for(case), spec.work(case)
    profile = ctx.profile_dir is not None and (case.op, case.mode, case.dtype_name) not in ctx.profiled
    kept = []
    for provider, rec in zip(providers, records):
        step(provider)
        label = f"{case.label}.{provider}"
        try:
            reason = ctx.out_of_time()
            if reason:
                raise Skip(reason)
            if provider in ctx.disabled:
                raise Skip(ctx.disabled[provider])
            fn = spec.provider(provider, case, device, ctx.compile_backend)
            _prepared(fn, inputs, grad_names, gouts)()      # warm-up: compiles, autotunes
            with peak_memory(device) as mem:
                run = _prepared(fn, inputs, grad_names, gouts)
                got = as_tuple(run())
            err = rel_error(got, ref)
            del got
            rec.update(max_err=err, err_limit=limit, peak_mem_mib=mem["mib"])
            if not err <= limit:
                rec["status"] = "wrong"
                rec["reason"] = f"WRONG: max error {err:.2e} > limit {limit:.2e}; not timed"
                continue
            ms = bench(labeled(run, label, nvtx=ctx.nvtx), device, ctx.warmup_ms, ctx.rep_ms)
            fill_figures(rec, metric, work, ms, ctx)
            rec["status"] = "ok"
            if profile:
                kept.append((label, run))
        except Exception as e:  # noqa: BLE001 - one broken provider must not stop the run
            _mark_failed(rec, e, device)
    if profile and kept:
        from .profiling import trace
        ctx.profiled.add((case.op, case.mode, case.dtype_name))
        ctx.traces.append(trace(ctx.profile_dir / f"{case.op}_{case.mode}_{case.dtype_name}.json",
                                kept, device))
    _set_vs_eager(records)
    return records


def run_gpt_case(case: Case, providers, ctx: Context, step=lambda name: None) -> list[dict]:
    bench_, device = GPT_BENCH, ctx.device
    records = [base_record(case, p, ctx) for p in providers]
    reason = ctx.out_of_time()
    if reason:
        for rec in records:
            rec["reason"] = reason
        return records
    try:
        return _run_gpt_case(case, bench_, providers, records, ctx, step)
    except Exception as e:  # noqa: BLE001
        for rec in records:
            if rec["status"] == "skipped" and rec["ms"] is None and rec["max_err"] is None:
                _mark_failed(rec, RuntimeError(f"reference failed: {type(e).__name__}: {e}"), device)
        return records


def _run_gpt_case(case, bench_, providers, records, ctx, step):
    device = ctx.device
    base = bench_.base(case, device)
    idx, targets = bench_.batch(case, device)
    ref = bench_.outputs(base, case, idx, targets)
    torch_err = rel_error(bench_.outputs(copy.deepcopy(base).to(case.dtype), case, idx, targets), ref)
    limit = max(MODEL_FLOOR[case.dtype], TORCH_ERROR_FACTOR * torch_err)
    metric, work, tokens = bench_.work(case, base)
    profile = (ctx.profile_dir is not None and case.mode == "train"
               and (case.op, case.mode, case.dtype_name) not in ctx.profiled)
    kept = []
    for provider, rec in zip(providers, records):
        step(provider)
        label = f"{case.label}.{provider}"
        model = None
        try:
            need = MODEL_COMPILE_SECONDS if provider == "compile" and device.type == "cuda" else 0.0
            reason = ctx.out_of_time(need)
            if reason:
                raise Skip(reason)
            if provider in ctx.disabled:
                raise Skip(ctx.disabled[provider])
            model = bench_.model(provider, case, base, device, ctx.compile_backend)
            err = rel_error(bench_.outputs(model, case, idx, targets), ref)
            rec.update(max_err=err, err_limit=limit)
            if not err <= limit:
                rec["status"] = "wrong"
                rec["reason"] = f"WRONG: loss/gradient or logit error {err:.2e} > limit {limit:.2e}; not timed"
                continue
            run = labeled(bench_.runner(model, case, idx, targets, device), label, nvtx=ctx.nvtx)
            with peak_memory(device) as mem:
                run()  # warm-up; a training step's peak includes the optimizer state
            rec["peak_mem_mib"] = mem["mib"]
            ms = time_calls(run, device, warmup=0, reps=5 if case.mode == "train" else 3)
            fill_figures(rec, metric, work, ms, ctx, tokens)
            rec["status"] = "ok"
            if profile:
                kept.append((label, run))
        except Exception as e:  # noqa: BLE001
            _mark_failed(rec, e, device)
        finally:
            model = None  # a profiled provider's model lives on in its `run` until the trace
            sync(device)
    if profile and kept:
        from .profiling import trace
        ctx.profiled.add((case.op, case.mode, case.dtype_name))
        ctx.traces.append(trace(ctx.profile_dir / f"gpt_train_{case.dtype_name}.json", kept, device,
                                iters=1))
    if device.type == "cuda":
        torch.cuda.empty_cache()
    _set_vs_eager(records)
    return records


def run_case(case: Case, providers, ctx: Context, step=lambda name: None) -> list[dict]:
    if case.op == "gpt":
        return run_gpt_case(case, providers, ctx, step)
    records = run_op_case(case, providers, ctx, step)
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()
    return records
