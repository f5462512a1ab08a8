"""GPU-only checks of the CUDA kernels (skipped without a GPU, with the reason): parity
with the C++ CPU implementation and fp64 across every launch configuration, and
compute-sanitizer memcheck/racecheck over every op. tests/test_cuda_backend.py also runs
its whole parity suite on the CUDA kernels when a GPU is present."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

import kernels
from helpers import DTYPES, HAS_CUDA, TOL, assert_op_within_torch_error
from kernels import reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (the CUDA kernels cannot run here)")


def _ready():
    reason = kernels.unavailable_reason("cuda", "cuda")
    if reason is not None:
        pytest.fail(f"a GPU is present but the cuda backend cannot use it: {reason}")


def _pair(*shape, dtype, scale=1.0):
    x = (torch.randn(*shape, dtype=torch.float64) * scale).to(dtype)
    return x.cuda().requires_grad_(), x.clone().requires_grad_()


# Row lengths covering the warp-per-row, block-per-row and streamed kernels, aligned or not.
ROW_LENGTHS = [1, 7, 33, 256, 257, 1000, 1024, 4096, 4097, 16384, 16385, 50257]


def _close_to_cpu(gpu, cpu, dtype, what):
    # Both implementations round once from fp32: they differ by at most two roundings.
    tol = TOL[dtype]
    torch.testing.assert_close(gpu.detach().cpu().double(), cpu.detach().double(), atol=2 * tol["atol"],
                               rtol=2 * tol["rtol"], msg=what)


ROW_OPS = {
    "softmax": lambda x: kernels.softmax(x, 0.7, backend="cuda"),
    "layer_norm": lambda x: kernels.layer_norm(x, None, None, backend="cuda"),
    "add_layer_norm": lambda x: kernels.add_layer_norm(x, x * 0.5, None, None, backend="cuda")[0],
}


@pytest.mark.parametrize("op", sorted(ROW_OPS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", ROW_LENGTHS)
def test_row_kernels_match_cpu_every_config(n, dtype, op):
    """Same op on the GPU kernels and on the C++ CPU implementation (checked against fp64
    in test_cuda_backend.py), for every row length class, aligned and sliced rows."""
    _ready()
    fn = ROW_OPS[op]
    for sliced in (False, True):  # a sliced row start breaks 16-byte alignment: scalar kernels
        xg, xc = _pair(3, n + int(sliced), dtype=dtype, scale=3.0)
        xg_, xc_ = (xg[:, 1:], xc[:, 1:]) if sliced else (xg, xc)
        yg, yc = fn(xg_), fn(xc_)
        _close_to_cpu(yg, yc, dtype, f"{op} forward n={n} sliced={sliced}")
        g = torch.randn(*xg_.shape, dtype=dtype)
        (gg,) = torch.autograd.grad(yg, xg, g.cuda())
        (gc,) = torch.autograd.grad(yc, xc, g)
        _close_to_cpu(gg, gc, dtype, f"{op} backward n={n} sliced={sliced}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", [(1, 37, 64, True), (17, 17, 16, True), (70, 70, 128, True), (200, 333, 64, True),
                                  (33, 65, 32, False), (9, 4, 64, False), (1, 1, 128, True), (1, 4097, 128, True),
                                  (3, 1000, 32, False), (70, 90, 8, True), (40, 40, 40, False), (65, 70, 80, True),
                                  (33, 50, 160, True), (70, 66, 192, False), (40, 90, 256, True), (1, 3000, 256, True),
                                  (3, 777, 72, True)], ids=str)
def test_attention_kernels_vs_fp64(case, dtype):
    """tq > 16 in fp16/bf16 runs the tensor-core kernels (forward and backward); fp32 and
    decode the CUDA-core forward, whose long-KV decode cases (Tk 1000, 4097) split the keys
    over warps; fp32 the CUDA-core backward."""
    _ready()
    tq, tk, d, causal = case
    q, k, v = (torch.randn(2, 3, t, d, dtype=torch.float64).to(dtype).cuda() for t in (tq, tk, tk))
    assert_op_within_torch_error(lambda *t: kernels.attention(*t, causal=causal, backend="cuda"),
                                 lambda *t: reference.attention(*t, causal=causal),
                                 lambda *t: reference.attention_explicit(*t, causal=causal),
                                 (q, k, v), ("dq", "dk", "dv"))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("approximate", ["tanh", "none"])
@pytest.mark.parametrize("shape", [(5, 33, 47), (256, 768, 3072), (7, 64, 13)], ids=str)
def test_gelu_linear_cublaslt_vs_fp64(shape, approximate, dtype):
    """(256, 768, 3072) tanh in fp16/bf16 takes cuBLASLt's GELU_AUX_BIAS epilogue; fp32, the erf
    form and odd widths take the bias epilogue (or torch's mm) and our GELU kernel."""
    _ready()
    m, kin, n = shape
    x, w, b = (torch.randn(*s, dtype=torch.float64).to(dtype).cuda() for s in ((m, kin), (n, kin), (n,)))
    w = (w * kin ** -0.5).to(dtype)
    assert_op_within_torch_error(lambda *t: kernels.gelu_linear(*t, approximate=approximate, backend="cuda"),
                                 lambda *t: reference.gelu_linear(*t, approximate=approximate),
                                 lambda *t: reference.gelu_linear(*t, approximate=approximate),
                                 (x, w, b), ("dx", "dw", "db"))


def test_attention_misaligned_views_are_copied_not_misread():
    _ready()
    flat = torch.randn(2 * 3 * 20 * 64 + 1, device="cuda", dtype=torch.float16)
    q = flat[1:].view(2, 3, 20, 64)  # contiguous, but 2 bytes off 16-byte alignment
    out = kernels.attention(q, q, q, causal=True, backend="cuda")
    ref = reference.attention_explicit(q.double(), q.double(), q.double(), causal=True)
    assert (out.double() - ref).abs().max().item() < 1e-2


def test_cuda_backend_is_deterministic_on_gpu():
    _ready()
    x = torch.randn(4096, 768, device="cuda", requires_grad=True)
    w = torch.randn(768, device="cuda", requires_grad=True)
    results = []
    for _ in range(2):
        x.grad = w.grad = None
        kernels.layer_norm(x, w, None, backend="cuda").backward(torch.ones(4096, 768, device="cuda"))
        results.append((x.grad.clone(), w.grad.clone()))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def _sanitizer():
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    from kernels.cuda._build import cuda_home
    home = cuda_home()
    path = os.path.join(home, "bin", "compute-sanitizer") if home else None
    return path if path and os.path.exists(path) else None


@pytest.mark.parametrize("tool", ["memcheck", "racecheck"])
def test_compute_sanitizer(tool):
    _ready()
    sanitizer = _sanitizer()
    if sanitizer is None:
        pytest.skip("compute-sanitizer is not installed with this CUDA toolkit")
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sanitizer, "--tool", tool, "--error-exitcode", "1", sys.executable,
                           os.path.join(ROOT, "tests", "cuda_ops_smoke.py")],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=3000)
    assert proc.returncode == 0 and "ok" in proc.stdout, (proc.stdout[-3000:] + proc.stderr[-3000:])
