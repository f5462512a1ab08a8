"""Where a call's time goes: host overhead vs GPU time, per op x backend (GPU only).

    python -m benchmarks.overhead [--dtype bf16]

For each case it prints the do_bench median (what users see back to back), the CUDA-graph
replay time (GPU work alone: graph replay removes Python and launch costs) and the host
time per call (Python + dispatch + launch, measured without synchronising). When host time
exceeds GPU time, the op is launch-bound at that size and a CUDA graph or torch.compile of
the caller is what helps, not a faster kernel.
"""
from __future__ import annotations

import argparse
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    args = parser.parse_args(argv)
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
