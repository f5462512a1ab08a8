"""The benchmark suite itself: it runs on a CPU, covers every op, labels CPU figures, reports a
wrong kernel instead of timing it, and its pytest-benchmark tests and GPU run script work here."""
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

import kernels
from benchmarks import cli, report
from benchmarks.env import describe
from benchmarks.model import GPT_BENCH
from benchmarks.ops import OPS, Case
from benchmarks.runner import Context, run_case

REPO = Path(__file__).resolve().parent.parent
EVERY_OP_MODE = {("softmax", "fwd"), ("softmax", "bwd"), ("layer_norm", "fwd"), ("layer_norm", "bwd"),
                 ("add_layer_norm", "fwd"), ("add_layer_norm", "bwd"), ("attention", "fwd"), ("attention", "bwd"),
                 ("attention", "decode"), ("gelu_linear", "fwd"), ("gelu_linear", "bwd"),
                 ("linear_cross_entropy", "train"), ("gpt", "train"),
                 ("gpt", "decode"), ("sample", "fwd")}
RECORD_FIELDS = ("op", "backend", "provider", "mode", "dtype", "shape", "ms", "gbps", "tflops", "pct_of_peak",
                 "device", "torch", "triton", "driver", "python", "commit", "status", "cpu_figure")


def _env(**extra):
    """A user's environment: no interpreter (the suite must not need it), this checkout first."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def _cpu_context(**kw):
    device = torch.device("cpu")
    return Context(device=device, info=describe(device), ceilings={"copy_gbps": 10.0, "matmul_tflops": {"fp32": 0.1}},
                   warmup_ms=1, rep_ms=2, **kw)


def _case(op="softmax", mode="fwd", **params):
    params = params or {"M": 5, "N": 37}
    return Case(op, mode, torch.float32, params, params.get("N", 0), "N", shape="small")


# The CPU pipeline runs in CI (no GPU); on a GPU machine gpu_run.sh runs the real thing instead,
# so these subprocess runs would only spend its time.
cpu_pipeline = pytest.mark.skipif(torch.cuda.is_available(),
                                  reason="CPU pipeline check (CI); gpu_run.sh runs the GPU suite itself")


@cpu_pipeline
def test_quick_json_on_cpu_covers_every_op(tmp_path):
    out, md, plots = tmp_path / "out.json", tmp_path / "out.md", tmp_path / "plots"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--device", "cpu", "--threads", "1",
                           "--json", str(out), "--markdown", str(md), "--plot", str(plots)],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    records = data["records"]
    ok = {(r["op"], r["mode"]) for r in records if r["status"] == "ok"}
    assert ok == EVERY_OP_MODE, f"ops without a timed provider: {EVERY_OP_MODE - ok}"
    assert not [r for r in records if r["status"] in ("wrong", "error")], \
        [(r["op"], r["mode"], r["provider"], r["reason"]) for r in records if r["status"] in ("wrong", "error")]
    for r in records:
        assert all(k in r for k in RECORD_FIELDS), sorted(set(RECORD_FIELDS) - set(r))
        assert r["cpu_figure"] is True and r["device_type"] == "cpu" and "CPU figure" in r["note"]
        if r["status"] == "ok":
            assert r["ms"] > 0 and r["pct_of_peak"] > 0 and (r["gbps"] or r["tflops"])
            assert r["max_err"] <= r["err_limit"]
        else:
            assert r["reason"], r  # every provider not run says why
    # triton on CPU tensors only under the interpreter, which is off by default
    triton = [r for r in records if r["provider"] == "triton"]
    assert triton and all(r["status"] == "skipped" and "TRITON_INTERPRET" in r["reason"] for r in triton)
    meta = data["meta"]
    assert meta["info"]["cpu_figure"] and meta["ceilings"]["copy_gbps"] > 0
    assert "CPU RUN" in md.read_text() and "CPU figures" in proc.stdout
    pngs = sorted(p.name for p in plots.glob("*.png"))
    assert pngs == sorted(f"{op}_fp32.png" for op in {op for op, _ in EVERY_OP_MODE})
    assert all((plots / p).stat().st_size > 10_000 for p in pngs)


def test_pytest_benchmark_cases_collect_and_skip_cleanly_without_gpu():
    args = [sys.executable, "-m", "pytest", "benchmarks/", "-q", "-p", "no:cacheprovider"]
    if torch.cuda.is_available():
        args.append("--collect-only")  # with a GPU they would really run: gpu_run.sh does that
    proc = subprocess.run(args, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "error" not in out.lower().replace("stderr", ""), out[-3000:]
    if not torch.cuda.is_available():
        assert " skipped" in out and "passed" not in out and "needs a CUDA GPU" in out, out[-3000:]


@cpu_pipeline
def test_gpu_run_script_dry_run(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(["bash", "benchmarks/gpu_run.sh", "--dry-run", "--budget", "300"], cwd=REPO,
                          env=_env(OUT=str(out), PYTHON=sys.executable, BENCH_ARGS="--ops softmax,gpt --modes fwd,train"),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert {"run.log", "bench.json", "summary.md", "plots.tar.gz"} <= set(files), files
    assert len(files) <= 8 and all((out / f).is_file() for f in files)  # what comes back from the GPU machine
    log = (out / "run.log").read_text()
    for step in ("1. card", "2. ceilings", "3. test suite", "4. compute-sanitizer", "5. benchmark suite",
                 "6. pytest-benchmark", "dry run"):
        assert step in log, step
    assert "tests collected" in log
    records = json.loads((out / "bench.json").read_text())["records"]
    assert {(r["op"], r["mode"]) for r in records if r["status"] == "ok"} == {("softmax", "fwd"), ("gpt", "train")}
    with tarfile.open(out / "plots.tar.gz") as tar:
        assert {"plots/softmax_fp32.png", "plots/gpt_fp32.png"} <= set(tar.getnames())


def test_wrong_provider_is_reported_and_not_timed(monkeypatch):
    spec = OPS["softmax"]
    monkeypatch.setattr(type(spec), "eager", lambda self, case, device: lambda x: torch.softmax(x, dim=-1))  # forgets t
    (rec,) = run_case(_case(), ["eager"], _cpu_context())
    assert rec["status"] == "wrong" and rec["ms"] is None and rec["value"] is None
    assert "WRONG" in rec["reason"] and rec["max_err"] > rec["err_limit"]


def test_wrong_gradient_is_reported(monkeypatch):
    spec = OPS["layer_norm"]

    def bad_eager(self, case, device):
        def fn(x, weight, bias):
            y = torch.nn.functional.layer_norm(x, x.shape[-1:], weight, bias, 1e-5)
            return y + (y - y.detach()) * 0.5  # same values, gradients scaled by 1.5
        return fn
    monkeypatch.setattr(type(spec), "eager", bad_eager)
    ok_fwd, = run_case(_case("layer_norm", "fwd"), ["eager"], _cpu_context())
    bad_bwd, = run_case(_case("layer_norm", "bwd"), ["eager"], _cpu_context())
    assert ok_fwd["status"] == "ok"
    assert bad_bwd["status"] == "wrong", bad_bwd


def test_provider_status_follows_what_kernels_provides():
    """Generic over backends: an implemented op is timed, a missing one says so."""
    ctx = _cpu_context()
    for backend in ("triton", "cuda"):
        reason = kernels.unavailable_reason(backend, "cpu")
        for op in ("softmax", "layer_norm"):
            case = _case(op, "fwd")
            if op == "layer_norm":
                case = _case(op, "fwd", M=3, N=40)
            (rec,) = run_case(case, [backend], ctx)
            if reason is not None:
                assert rec["status"] == "skipped" and "unavailable" in rec["reason"]
            elif kernels.missing_ops(backend, [op]):
                assert rec["status"] == "skipped" and "does not implement" in rec["reason"]
            else:
                assert rec["status"] == "ok", rec
                if backend == "triton":
                    assert "interpreter" in rec["note"]


def test_time_budget_skips_the_rest():
    import time
    ctx = _cpu_context(deadline=time.monotonic() - 1, budget_s=0)
    records = run_case(_case(), ["eager", "triton"], ctx)
    assert all(r["status"] == "skipped" and "time budget" in r["reason"] for r in records)


def test_run_order_covers_every_op_before_the_sweep():
    args = cli.parser().parse_args(["--sizes", "standard"])
    cases = cli.build_cases(args, gpu=True, dtypes=[torch.bfloat16])
    assert [c.tier for c in cases] == sorted(c.tier for c in cases)
    sweep = next(i for i, c in enumerate(cases) if c.tier >= 2)
    assert {(c.op, c.mode) for c in cases[:sweep]} == EVERY_OP_MODE
    ops = EVERY_OP_MODE - {("gpt", "train"), ("gpt", "decode")}
    assert {(c.op, c.mode) for c in cases[:len(ops)]} == ops  # round-robin: one size of each op first
    quick = cli.build_cases(cli.parser().parse_args(["--quick"]), gpu=True, dtypes=[torch.bfloat16])
    assert {(c.op, c.mode) for c in quick} == EVERY_OP_MODE and len(quick) < len(cases)


def test_work_formulas():
    bf16 = torch.bfloat16
    att = OPS["attention"]
    p = dict(B=2, H=3, Tq=64, Tk=64, D=32)
    assert att.work(Case("attention", "fwd", bf16, p, 64, "T")) == 4 * 2 * 3 * 64 * 64 * 32 * 0.5
    assert att.work(Case("attention", "bwd", bf16, p, 64, "T")) == 2.5 * 4 * 2 * 3 * 64 * 64 * 32 * 0.5
    dec = dict(B=2, H=3, Tq=1, Tk=100, D=32)
    assert att.work(Case("attention", "decode", bf16, dec, 100, "Tk")) == (2 + 200) * 2 * 3 * 32 * 2
    rows = dict(M=10, N=7)
    assert OPS["softmax"].work(Case("softmax", "fwd", bf16, rows, 7, "N")) == 2 * 70 * 2
    assert OPS["softmax"].work(Case("softmax", "bwd", bf16, rows, 7, "N")) == 3 * 70 * 2
    assert OPS["layer_norm"].work(Case("layer_norm", "fwd", bf16, rows, 7, "N")) == (140 + 14) * 2
    assert OPS["add_layer_norm"].work(Case("add_layer_norm", "bwd", bf16, rows, 7, "N")) == (280 + 21) * 2
    mlp = dict(M=10, K=8, N=32)
    assert OPS["gelu_linear"].work(Case("gelu_linear", "bwd", bf16, mlp, 8, "C")) == 4 * 10 * 8 * 32


def test_help_documents_every_option_op_and_provider():
    text = cli.parser().format_help()
    for word in ("--ops", "--modes", "--providers", "--dtypes", "--sizes", "--quick", "--json", "--plot",
                 "--profile", "--nvtx", "--markdown", "--time-budget", "--device", "ncu", "--launch-skip",
                 "TRITON_INTERPRET", "CPU figure", "4 B H Tq Tk D", "do_bench"):
        assert word in text, word
    for name in list(OPS) + ["gpt", "triton", "cuda", "eager", "compile", "sdpa", "liger"]:
        assert name in text, name


def test_gpt_cases_are_gpt2_124m_on_gpu():
    cases = GPT_BENCH.cases("quick", True, [torch.bfloat16], ("train", "decode"))
    assert {c.mode for c in cases} == {"train", "decode"}
    cfg = GPT_BENCH.config(cases[0])
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.vocab_size) == (12, 12, 768, 50257)


def test_markdown_and_table_say_wrong_and_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(type(OPS["softmax"]), "eager", lambda self, case, device: lambda x: x)
    ctx = _cpu_context()
    records = run_case(_case(), ["eager"], ctx)
    meta = {"info": ctx.info, "ceilings": ctx.ceilings, "argv": "test", "date": "2026-01-01", "seconds": 1.0}
    report.write_markdown(tmp_path / "s.md", records, meta)
    text = (tmp_path / "s.md").read_text()
    assert "Wrong or failing providers" in text and "WRONG" in text and "CPU RUN" in text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_case_is_checked_timed_and_measured():
    device = torch.device("cuda")
    ctx = Context(device=device, info=describe(device), warmup_ms=5, rep_ms=20,
                  ceilings={"copy_gbps": 3000.0, "matmul_tflops": {"bf16": 800.0}})
    for mode in ("fwd", "bwd"):
        case = Case("softmax", mode, torch.bfloat16, {"M": 1024, "N": 4096}, 4096, "N", shape="1024x4096")
        records = {r["provider"]: r for r in run_case(case, ["triton", "eager"], ctx)}
        eager = records["eager"]
        assert eager["status"] == "ok" and eager["ms"] > 0 and eager["gbps"] > 0, eager
        assert eager["peak_mem_mib"] is not None and not eager["cpu_figure"] and eager["driver"]
        if not kernels.missing_ops("triton", ["softmax"]):
            assert records["triton"]["status"] == "ok", records["triton"]
            assert records["triton"]["vs_eager"] > 0
