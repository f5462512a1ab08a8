"""Every cuda-backend op, forward and backward, on small irregular inputs that reach every
launch path (warp/block/streamed rows, packed and scalar access, tensor-core and CUDA-core
attention, the decode key split, cuBLASLt epilogue and fallback), then bad calls that must
raise. Run on CUDA tensors under compute-sanitizer by tests/test_cuda_gpu.py, and on CPU
tensors (the C++ implementation) under AddressSanitizer by tests/test_cuda_backend.py;
by hand: python tests/cuda_ops_smoke.py [cuda|cpu]"""
import sys

import torch

import kernels


def bad_calls(dev):
    """Each must raise (a TORCH_CHECK or TORCH_CHECK_VALUE): the error path allocates and unwinds too."""
    ones = lambda *s, **kw: torch.ones(*s, device=dev, **kw)  # noqa: E731
    calls = [
        lambda: torch.ops.gptk.softmax_cuda(ones(2, 3), 0.0, -1),
        lambda: torch.ops.gptk.softmax_cuda(ones(2, 3, dtype=torch.int64), 1.0, -1),
        lambda: torch.ops.gptk.add_layer_norm_cuda(ones(2, 3), ones(3, 3), None, None, 1e-5),
        lambda: torch.ops.gptk.layer_norm_cuda_backward(ones(2, 3), ones(2, 3), None, ones(3), ones(2)),
        lambda: torch.ops.gptk.attention_cuda(ones(1, 1, 2, 44), ones(1, 1, 2, 44), ones(1, 1, 2, 44), True, 1.0),
        lambda: torch.ops.gptk.gelu_linear_cuda(ones(2, 3), ones(4, 3), None, "exact"),
    ]
    for call in calls:
        try:
            call()
        except (RuntimeError, ValueError):  # TORCH_CHECK / TORCH_CHECK_VALUE
            continue
        raise AssertionError("a bad call did not raise")


def main(dev="cuda"):
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for n in (1, 33, 256, 1000, 4097, 16385, 20000):
            for x in (torch.randn(3, n, device=dev, dtype=dtype), torch.randn(3, n + 1, device=dev, dtype=dtype)[:, 1:]):
                x = x.detach().requires_grad_()
                kernels.softmax(x, 0.7, backend="cuda").sum().backward()
                w = torch.randn(x.shape[-1], device=dev, dtype=dtype, requires_grad=True)
                y, s = kernels.add_layer_norm(x, x.detach() * 0.5, w, w.detach() * 0.1, backend="cuda")
                (y.float().sum() + s.float().sum()).backward()
        for (tq, tk, d, causal) in ((1, 37, 64, True), (17, 17, 16, True), (70, 70, 128, True), (33, 65, 32, False),
                                    (9, 4, 64, False), (1, 1000, 64, True)):
            q = torch.randn(2, 3, tq, d, device=dev, dtype=dtype, requires_grad=True)
            k = torch.randn(2, 3, tk, d, device=dev, dtype=dtype, requires_grad=True)
            v = torch.randn(2, 3, tk, d, device=dev, dtype=dtype, requires_grad=True)
            kernels.attention(q, k, v, causal=causal, backend="cuda").float().sum().backward()
        for approximate in ("tanh", "none"):
            for (m, kin, n) in ((5, 33, 47), (64, 128, 96), (1, 8, 13)):
                x = torch.randn(m, kin, device=dev, dtype=dtype, requires_grad=True)
                w = torch.randn(n, kin, device=dev, dtype=dtype, requires_grad=True)
                b = torch.randn(n, device=dev, dtype=dtype, requires_grad=True)
                kernels.gelu_linear(x, w, b, approximate=approximate, backend="cuda").float().sum().backward()
    bad_calls(dev)
    if dev == "cuda":
        torch.cuda.synchronize()
    print("ok")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "cuda")
