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
    backend = provider if provider in ("triton", "cuda", "auto") else ("liger" if provider == "liger" else "torch")
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


class OpSetup:
    """One op case, set up once for all its providers: random inputs, the fp32 reference
    (the torch backend on fp32 copies of the same inputs), the check's limit, the work."""

    def __init__(self, case: Case, ctx: Context):
        self.case, self.ctx, self.spec = case, ctx, OPS[case.op]
        torch.manual_seed(_seed(case))
        self.inputs = self.spec.inputs(case, ctx.device)
        self.grad_names = self.spec.grads if case.mode == "bwd" else ()
        for name in self.grad_names:
            self.inputs[name].requires_grad_(True)
        ref_fn = self.spec.call("torch")
        inputs32 = {k: v.detach().float().requires_grad_(k in self.grad_names) for k, v in self.inputs.items()}
        self.gouts = None
        if self.grad_names:
            self.gouts = [torch.randn_like(o, dtype=case.dtype) for o in as_tuple(ref_fn(**inputs32))]
        gouts32 = [g.float() for g in self.gouts] if self.gouts else None
        self.ref = _evaluate(ref_fn, inputs32, self.grad_names, gouts32)
        del inputs32
        torch_err = rel_error(_evaluate(ref_fn, self.inputs, self.grad_names, self.gouts), self.ref)
        self.limit = max(FLOOR[case.dtype], TORCH_ERROR_FACTOR * torch_err)
        self.metric, self.work, self.tokens = self.spec.metric_for(case), self.spec.work(case), None

    def needs_seconds(self, provider: str) -> float:
        return 0.0

    def checked(self, provider: str, rec: dict):
        """The provider's timed call after a warm-up (compiles, autotunes) and the check; None
        when its result is wrong (rec says so). Raises Skip when it cannot run here."""
        fn = self.spec.provider(provider, self.case, self.ctx.device, self.ctx.compile_backend)
        _prepared(fn, self.inputs, self.grad_names, self.gouts)()
        with peak_memory(self.ctx.device) as mem:
            run = _prepared(fn, self.inputs, self.grad_names, self.gouts)
            got = as_tuple(run())
        err = rel_error(got, self.ref)
        rec.update(max_err=err, err_limit=self.limit, peak_mem_mib=mem["mib"])
        if not err <= self.limit:
            rec["status"] = "wrong"
            rec["reason"] = f"WRONG: max error {err:.2e} > limit {self.limit:.2e}; not timed"
            return None
        return run

    def time(self, run) -> float:
        return bench(run, self.ctx.device, self.ctx.warmup_ms, self.ctx.rep_ms)

    def trace_name(self) -> str | None:
        return f"{self.case.op}_{self.case.mode}_{self.case.dtype_name}.json"


class GPTSetup:
    """One whole-model case: the fp32 reference model (torch backend), a batch, the check's
    limit (PyTorch's own error with the same model in the case's dtype), the work per call."""

    def __init__(self, case: Case, ctx: Context):
        self.case, self.ctx, self.spec = case, ctx, GPT_BENCH
        self.base = self.spec.base(case, ctx.device)
        self.idx, self.targets = self.spec.batch(case, ctx.device)
        self.ref = self.spec.outputs(self.base, case, self.idx, self.targets)
        lowp = copy.deepcopy(self.base).to(case.dtype)
        torch_err = rel_error(self.spec.outputs(lowp, case, self.idx, self.targets), self.ref)
        del lowp
        self.limit = max(MODEL_FLOOR[case.dtype], TORCH_ERROR_FACTOR * torch_err)
        self.metric, self.work, self.tokens = self.spec.work(case, self.base)

    def needs_seconds(self, provider: str) -> float:
        return MODEL_COMPILE_SECONDS if provider == "compile" and self.ctx.device.type == "cuda" else 0.0

    def checked(self, provider: str, rec: dict):
        model = self.spec.model(provider, self.case, self.base, self.ctx.device, self.ctx.compile_backend)
        err = rel_error(self.spec.outputs(model, self.case, self.idx, self.targets), self.ref)
        rec.update(max_err=err, err_limit=self.limit)
        if not err <= self.limit:
            rec["status"] = "wrong"
            rec["reason"] = f"WRONG: loss/gradient or logit error {err:.2e} > limit {self.limit:.2e}; not timed"
            return None
        run = self.spec.runner(model, self.case, self.idx, self.targets, self.ctx.device)
        with peak_memory(self.ctx.device) as mem:
            run()  # warm-up; a training step's peak includes the optimizer state
        rec["peak_mem_mib"] = mem["mib"]
        return run

    def time(self, run) -> float:
        return time_calls(run, self.ctx.device, warmup=0, reps=5 if self.case.mode == "train" else 3)

    def trace_name(self) -> str | None:
        return f"gpt_train_{self.case.dtype_name}.json" if self.case.mode == "train" else None


def setup(case: Case, ctx: Context):
    return GPTSetup(case, ctx) if case.op == "gpt" else OpSetup(case, ctx)


def run_case(case: Case, providers, ctx: Context, step=lambda name: None) -> list[dict]:
    """Records for every provider of `case`: checked, then timed (or why not)."""
    device = ctx.device
    records = [base_record(case, p, ctx) for p in providers]
    reason = ctx.out_of_time()
    if reason:
        for rec in records:
            rec["reason"] = reason
        return records
    try:
        state = setup(case, ctx)
    except Exception as e:  # noqa: BLE001 - the reference itself failed: every provider says so
        for rec in records:
            _mark_failed(rec, RuntimeError(f"reference failed: {type(e).__name__}: {e}"), device)
        return records
    key = (case.op, case.mode, case.dtype_name)
    profile = ctx.profile_dir is not None and state.trace_name() and key not in ctx.profiled
    kept = []
    for provider, rec in zip(providers, records):
        step(provider)
        try:
            reason = ctx.out_of_time(state.needs_seconds(provider))
            if reason:
                raise Skip(reason)
            if provider in ctx.disabled:
                raise Skip(ctx.disabled[provider])
            run = state.checked(provider, rec)
            if run is None:
                continue
            label = f"{case.label}.{provider}"
            fill_figures(rec, state.metric, state.work, state.time(labeled(run, label, nvtx=ctx.nvtx)), ctx,
                         state.tokens)
            rec["status"] = "ok"
            if profile:
                kept.append((label, run))
        except Exception as e:  # noqa: BLE001 - one broken provider must not stop the run
            _mark_failed(rec, e, device)
        finally:
            run = None
            sync(device)
    if kept:
        from .profiling import trace
        ctx.profiled.add(key)
        ctx.traces.append(trace(ctx.profile_dir / state.trace_name(), kept, device,
                                iters=1 if case.op == "gpt" else 3))
    del state, kept
    if device.type == "cuda":
        torch.cuda.empty_cache()
    _set_vs_eager(records)
    return records
