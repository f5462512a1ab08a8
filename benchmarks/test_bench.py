"""The benchmark cases through pytest-benchmark, for the regression view:

    pytest benchmarks/ --benchmark-json out.json          # all quick GPU cases
    pytest benchmarks/ -m "not compile and not model"    # our backends and eager only
    pytest-benchmark compare 0001 0002                    # two saved runs (--benchmark-autosave)

Each case is checked against the fp32 reference first (a wrong provider fails its test); the
pytest-benchmark timing is of synchronized calls; extra_info holds the do_bench median and
its GB/s or TFLOP/s and % of the ceiling measured in this session, like `python -m benchmarks`.
"""
import pytest
import torch

from benchmarks.cli import providers_for
from benchmarks.model import GPT_BENCH
from benchmarks.ops import OPS, PROVIDERS, Skip
from benchmarks.runner import base_record, fill_figures, setup

DTYPES = [torch.bfloat16]


def _params():
    params = []
    for spec in list(OPS.values()) + [GPT_BENCH]:
        for case in spec.cases("quick", True, DTYPES, ("fwd", "bwd", "decode", "train")):
            for provider in providers_for(case.op, PROVIDERS):
                marks = [pytest.mark.compile] if provider == "compile" else []
                if case.op == "gpt":
                    marks.append(pytest.mark.model)
                ident = f"{case.op}-{case.mode}-{case.dtype_name}-{case.shape.replace(' ', '')}-{provider}"
                params.append(pytest.param(case, provider, id=ident, marks=marks))
    return params


_SETUPS = {}


def _setup(case, ctx):
    """One setup per case (inputs and reference), shared by that case's providers."""
    key = (case.op, case.mode, case.dtype_name, case.shape)
    if key not in _SETUPS:
        _SETUPS.clear()  # the previous case's tensors are no longer needed
        torch.cuda.empty_cache()
        _SETUPS[key] = setup(case, ctx)
    return _SETUPS[key]


@pytest.mark.parametrize("case,provider", _params())
def test_benchmark(benchmark, bench_context, case, provider):
    ctx = bench_context
    state = _setup(case, ctx)
    rec = base_record(case, provider, ctx)
    try:
        run = state.checked(provider, rec)
    except Skip as e:
        pytest.skip(str(e))
    if run is None:
        pytest.fail(f"{provider} gives a wrong result on {case.label} {case.shape}: {rec['reason']}")
    fill_figures(rec, state.metric, state.work, state.time(run), ctx, state.tokens)

    def synced():
        run()
        torch.cuda.synchronize()
    rounds = 3 if case.op == "gpt" else max(5, min(100, int(200 / max(rec["ms"], 1e-3))))
    benchmark.pedantic(synced, rounds=rounds, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update({k: rec[k] for k in (
        "op", "mode", "dtype", "shape", "provider", "backend", "unit", "gbps", "tflops", "tokens_per_s",
        "pct_of_peak", "peak", "peak_value", "peak_mem_mib", "max_err", "device", "torch", "triton", "driver",
        "python", "commit")})
    benchmark.extra_info["do_bench_ms"] = rec["ms"]
