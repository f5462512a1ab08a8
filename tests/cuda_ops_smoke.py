"""Every cuda-backend op, forward and backward, on small irregular CUDA inputs that reach
every launch path (warp/block/streamed rows, packed and scalar access, tensor-core and
CUDA-core attention, cuBLASLt epilogue and fallback). Run under compute-sanitizer by
tests/test_cuda_gpu.py; also usable by hand: python tests/cuda_ops_smoke.py"""
import torch

import kernels


def main():
    torch.manual_seed(0)
    dev = "cuda"
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for n in (1, 33, 256, 1000, 4097, 16385, 20000):
            for x in (torch.randn(3, n, device=dev, dtype=dtype), torch.randn(3, n + 1, device=dev, dtype=dtype)[:, 1:]):
                x = x.detach().requires_grad_()
                kernels.softmax(x, 0.7, backend="cuda").sum().backward()
                w = torch.randn(x.shape[-1], device=dev, dtype=dtype, requires_grad=True)
                y, s = kernels.add_layer_norm(x, x.detach() * 0.5, w, w.detach() * 0.1, backend="cuda")
                (y.float().sum() + s.float().sum()).backward()
        for (tq, tk, d, causal) in ((1, 37, 64, True), (17, 17, 16, True), (70, 70, 128, True), (33, 65, 32, False),
                                    (9, 4, 64, False)):
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
    torch.cuda.synchronize()
    print("ok")


if __name__ == "__main__":
    main()
