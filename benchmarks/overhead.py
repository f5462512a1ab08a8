"""Where a call's time goes: host overhead vs GPU time, per op x backend.

    python -m benchmarks.overhead [--dtype bf16]          # on a GPU: do_bench | graph replay | host
    python -m benchmarks.overhead --host [--calls 1500]   # anywhere: the host path alone

--host times the whole Python path of each op call (API checks, dispatch, allocation, the
Triton launcher) with the GPU launch replaced by a no-op (benchmarks/stub_driver.py: kernels
are compiled for sm_90 and launched nowhere; the cuda backend runs its C++ CPU code on tiny
tensors), beside PyTorch's own op on the same tensors, interleaved call by call so that a
busy machine slows both alike. Figures are p10 microseconds per call and ratios to PyTorch;
they are CPU figures. Modes: fwd (no input needs grad), fwd+grad (records autograd), bwd
(torch.autograd.grad over the recorded output).

For each case it prints the do_bench median (what users see back to back), the CUDA-graph
replay time (GPU work alone: graph replay removes Python and launch costs) and the host
time per call (Python + dispatch + launch, measured without synchronising). When host time
exceeds GPU time, the op is launch-bound at that size and a CUDA graph or torch.compile of
the caller is what helps, not a faster kernel.
"""
from __future__ import annotations

import argparse
import os
import time

import torch

import kernels

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _cases(dtype):
    r = lambda *s: torch.randn(*s, device="cuda", dtype=dtype)  # noqa: E731
    yield "softmax 8192x4096", lambda b: kernels.softmax(x1, 0.7, backend=b), (x1 := r(8192, 4096).requires_grad_(),)
    yield "layer_norm 16384x768", lambda b: kernels.layer_norm(x2, w2, b2, backend=b), \
        (x2 := r(16384, 768).requires_grad_(), w2 := r(768).requires_grad_(), b2 := r(768).requires_grad_())
    yield "attention 8x12x1024x64", lambda b: kernels.attention(q3, k3, v3, backend=b), \
        (q3 := r(8, 12, 1024, 64).requires_grad_(), k3 := r(8, 12, 1024, 64).requires_grad_(),
         v3 := r(8, 12, 1024, 64).requires_grad_())
    yield "gelu_linear 8192x768->3072", lambda b: kernels.gelu_linear(x4, w4, b4, backend=b), \
        (x4 := r(8192, 768).requires_grad_(), w4 := (r(3072, 768) * 0.03).requires_grad_(),
         b4 := r(3072).requires_grad_())


def _measure(fn):
    from triton.testing import do_bench
    median = do_bench(fn, warmup=25, rep=100, return_mode="median")
    fn()
    torch.cuda.synchronize()
    n = 50
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    host = (time.perf_counter() - t0) / n * 1e3
    torch.cuda.synchronize()
    graph_ms = float("nan")
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        graph_ms = do_bench(graph.replay, warmup=25, rep=100, return_mode="median")
    except Exception as e:  # some paths cannot be captured; say so rather than guess
        print(f"    (graph capture failed: {type(e).__name__}: {str(e)[:120]})")
    return median, graph_ms, host


# -----------------------------------------------------------------------------------------
# --host: the Python path per call, without a GPU
# -----------------------------------------------------------------------------------------

def host_cases(dtype):
    """(name, inputs, PyTorch's own op, ours(backend)) on tiny tensors: the host path dominates."""
    import torch.nn.functional as F
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    x, res, w, b = r(4, 64), r(4, 64), r(64), r(64)
    yield ("softmax", (x,), lambda x: torch.softmax(x / 0.8, -1),
           lambda be: lambda x: kernels.softmax(x, 0.8, backend=be))
    yield ("layer_norm", (x, w, b), lambda x, w, b: F.layer_norm(x, (64,), w, b),
           lambda be: lambda x, w, b: kernels.layer_norm(x, w, b, backend=be))

    def add_ln(x, res, w, b):
        s = x + res
        return F.layer_norm(s, (64,), w, b), s
    yield ("add_layer_norm", (x, res, w, b), add_ln,
           lambda be: lambda x, res, w, b: kernels.add_layer_norm(x, res, w, b, backend=be))
    q, k, v = r(1, 2, 1, 64), r(1, 2, 64, 64), r(1, 2, 64, 64)
    yield ("attention decode Tq1 Tk64", (q, k, v),
           lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
           lambda be: lambda q, k, v: kernels.attention(q, k, v, causal=True, backend=be))
    xm, wm, bm = r(4, 64), r(96, 64), r(96)
    yield ("gelu_linear", (xm, wm, bm), lambda x, w, b: F.gelu(F.linear(x, w, b), approximate="tanh"),
           lambda be: lambda x, w, b: kernels.gelu_linear(x, w, b, backend=be))


def _p10_interleaved(fns, calls, warmup=30):
    for f in fns:
        for _ in range(warmup):
            f()
    times = [[] for _ in fns]
    clock = time.perf_counter
    for _ in range(calls):
        for i, f in enumerate(fns):
            t0 = clock()
            f()
            times[i].append(clock() - t0)
    return [sorted(t)[len(t) // 10] * 1e6 for t in times]


def host_rows(dtype=torch.bfloat16, calls=1500, backends=("triton", "cuda")):
    """[(op, mode, torch_us, {backend: us})]: run after stub_driver.install()."""
    rows = []
    for name, inputs, ref, ours in host_cases(dtype):
        usable = [b for b in backends if kernels.unavailable_reason(b, "cpu") is None
                  and not kernels.missing_ops(b, (name.split()[0],))]
        fns = [ref] + [ours(b) for b in usable]
        grads_in = tuple(t.detach().clone().requires_grad_() for t in inputs)
        fwd = _p10_interleaved([lambda f=f: f(*inputs) for f in fns], calls)
        fwd_grad = _p10_interleaved([lambda f=f: f(*grads_in) for f in fns], calls)
        bwd_calls = []
        for f in fns:
            out = f(*grads_in)
            outs = out if isinstance(out, tuple) else (out,)
            seeds = tuple(torch.randn_like(o) for o in outs)
            bwd_calls.append(lambda outs=outs, seeds=seeds: torch.autograd.grad(outs, grads_in, seeds,
                                                                                retain_graph=True))
        bwd = _p10_interleaved(bwd_calls, calls)
        for mode, figures in (("fwd", fwd), ("fwd+grad", fwd_grad), ("bwd", bwd)):
            rows.append((name, mode, figures[0], dict(zip(usable, figures[1:]))))
    return rows


def host_main(args) -> int:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("--host compiles real kernels: unset TRITON_INTERPRET")
        return 2
    # One config per autotuned kernel: the stand-in cannot time configs, and a tuned call
    # costs the same host path whichever config won.
    os.environ["GPTK_AUTOTUNE"] = "0"
    from . import stub_driver
    stub_driver.install()
    dtype = DTYPES[args.dtype]
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = host_rows(dtype, args.calls)
    backends = sorted({b for *_, ours in rows for b in ours}, key=("triton", "cuda").index)
    print(f"host path per call, CPU figures (p10 of {args.calls} interleaved calls, {args.dtype}, "
          f"torch {torch.__version__}); GPU launch replaced by a no-op; ratio = ours / PyTorch")
    head = f"{'op':28} {'mode':9} {'PyTorch us':>10}" + "".join(f" {b + ' us':>10} {'ratio':>6}" for b in backends)
    print(head)
    worst = 0.0
    for name, mode, ref_us, ours in rows:
        line = f"{name:28} {mode:9} {ref_us:10.1f}"
        for b in backends:
            if b in ours:
                worst = max(worst, ours[b] / ref_us)
                line += f" {ours[b]:10.1f} {ours[b] / ref_us:6.2f}"
            else:
                line += f" {'-':>10} {'':6}"
        print(line)
    print(f"worst ratio: {worst:.2f} (target <= 2.0)")
    if args.json:
        import json
        with open(args.json, "w") as f:
            json.dump([{"op": n, "mode": m, "torch_us": t, **{f"{b}_us": u for b, u in o.items()}}
                       for n, m, t, o in rows], f, indent=1)
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    parser.add_argument("--host", action="store_true", help="time the host path alone (no GPU needed)")
    parser.add_argument("--calls", type=int, default=1500, help="--host: calls per case (p10 is reported)")
    parser.add_argument("--threads", type=int, default=1, help="--host: torch CPU threads (steadier at 1)")
    parser.add_argument("--json", help="--host: write the rows here")
    args = parser.parse_args(argv)
    if args.host:
        return host_main(args)
    if not torch.cuda.is_available():
        print("benchmarks.overhead needs a CUDA GPU; nothing measured")
        return 0
    dtype = DTYPES[args.dtype]
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__}; ms per call: "
          f"do_bench median | CUDA-graph replay (GPU only) | host time per call")
    cpu_rng = torch.Generator().manual_seed(0)
    cases = list(_cases(dtype))  # every input drawn before any graph capture touches the RNG
    for name, call, inputs in cases:
        for backend in ["torch"] + [b for b in kernels.available_backends("cuda") if b != "torch"]:
            if kernels.missing_ops(backend, (name.split()[0],)):
                continue
            try:
                out = call(backend)
                outs = out if isinstance(out, tuple) else (out,)
                # Drawn on the CPU: a failed graph capture leaves the CUDA generator unusable
                # (run 3: "Offset increment outside graph capture"), which broke every later case.
                grads = [torch.randn(o.shape, generator=cpu_rng).to(o.device, o.dtype) for o in outs]
                fwd = _measure(lambda: call(backend))
                bwd = _measure(lambda: torch.autograd.grad(outs, inputs, grads, retain_graph=True))
                print(f"{name:28} {backend:7} fwd {fwd[0]:8.4f} | {fwd[1]:8.4f} | {fwd[2]:8.4f}   "
                      f"bwd {bwd[0]:8.4f} | {bwd[1]:8.4f} | {bwd[2]:8.4f}")
            except Exception as e:
                print(f"{name:28} {backend:7} ERROR {type(e).__name__}: {str(e)[:200]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
