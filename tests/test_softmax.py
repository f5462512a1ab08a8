"""Softmax with temperature: parity with fp64, gradients, edge values and bad input, per backend."""
import math

import pytest
import torch

import kernels
from kernels import reference
from helpers import DEVICE, DTYPES, INTERPRET, assert_close, backends_here, randn

BACKENDS = backends_here()
pytestmark = pytest.mark.skipif(not BACKENDS, reason="no compiled backend runs here")

SHAPES = [(1, 1), (7, 1000), (3, 5, 33), (4, 50257), (2, 4097), (1, 16385)]


def _ref64(x, t, dim):
    return reference.softmax(x.detach().double(), t, dim)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_backward(backend, dtype, shape):
    t = 0.7
    x = randn(*shape, dtype=dtype, scale=3.0).requires_grad_()
    y = kernels.softmax(x, t, backend=backend)
    assert y.dtype == dtype and y.shape == x.shape
    x64 = x.detach().double().requires_grad_()
    y64 = reference.softmax(x64, t, -1)
    assert_close(y, y64, dtype)
    g = randn(*shape, dtype=dtype)
    (y * g).sum().backward()
    (y64 * g.double()).sum().backward()
    assert x.grad.dtype == dtype
    assert_close(x.grad, x64.grad, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_vocab_row_262144(backend, dtype):
    x = randn(1, 262144, dtype=dtype, scale=4.0)
    assert_close(kernels.softmax(x, 1.3, backend=backend), _ref64(x, 1.3, -1), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dim", [0, 1, -2])
def test_non_last_dim(backend, dim):
    x = randn(5, 33, 7, scale=2.0).requires_grad_()
    y = kernels.softmax(x, 1.7, dim=dim, backend=backend)
    x64 = x.detach().double().requires_grad_()
    y64 = reference.softmax(x64, 1.7, dim)
    assert_close(y, y64, torch.float32)
    g = randn(5, 33, 7)
    (y * g).sum().backward()
    (y64 * g.double()).sum().backward()
    assert_close(x.grad, x64.grad, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    base = randn(9, 1000, scale=2.0)
    for x in (base[:, 3:500], base[::2], base.t(), base[:, ::3]):
        x = x.detach().requires_grad_()
        y = kernels.softmax(x, 0.5, backend=backend)
        assert_close(y, _ref64(x, 0.5, -1), torch.float32)
        g = randn(*x.shape).t().contiguous().t()  # a non-contiguous gradient too
        (y * g).sum().backward()
        x64 = x.detach().double().requires_grad_()
        (reference.softmax(x64, 0.5, -1) * g.double()).sum().backward()
        assert_close(x.grad, x64.grad, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_temperature_is_runtime_and_matches(backend):
    x = randn(3, 100, scale=2.0)
    for t in (0.1, 1.0, 3.0, 1e3):
        assert_close(kernels.softmax(x, t, backend=backend), _ref64(x, t, -1), torch.float32)
    # A 0-d tensor temperature is accepted too.
    assert_close(kernels.softmax(x, torch.tensor(2.0), backend=backend), _ref64(x, 2.0, -1), torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n", [33, 20000])  # single-pass and streamed kernels
def test_special_values_match_torch(backend, n):
    x = randn(5, n, scale=3.0)
    x[0, 7] = float("nan")            # NaN poisons its row only
    x[1] = float("-inf")              # a fully -inf row is NaN in torch
    x[2, :n // 2] = float("-inf")     # partly -inf is fine
    x[3, 5] = 1e4                     # very large logits stay exact
    x[3, 6] = 1e4 - 1
    x[4, 3] = float("inf")            # +inf makes the row NaN in torch
    y = kernels.softmax(x, 1.0, backend=backend)
    torch.testing.assert_close(y.cpu(), torch.softmax(x.double(), -1).float().cpu(), equal_nan=True,
                               atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(0, 5), (3, 0), (0,), (2, 0, 4)], ids=str)
def test_empty(backend, shape):
    x = torch.empty(shape, device=DEVICE).requires_grad_()
    y = kernels.softmax(x, 2.0, backend=backend)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_dim_tensor(backend):
    x = torch.tensor(3.0, device=DEVICE)
    assert kernels.softmax(x, 2.0, dim=0, backend=backend).item() == 1.0


@pytest.mark.parametrize("backend", BACKENDS + ["torch"])
@pytest.mark.parametrize("t", [0.0, -1.0, float("nan"), float("inf"), -float("inf"), "hot"])
def test_bad_temperature(backend, t):
    with pytest.raises(ValueError, match="temperature"):
        kernels.softmax(randn(2, 3), t, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS + ["torch"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.uint8])
def test_non_floating_is_type_error(backend, dtype):
    with pytest.raises(TypeError, match="floating-point"):
        kernels.softmax(torch.ones(2, 3, device=DEVICE).to(dtype), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_only_on_torch(backend):
    x = randn(2, 3, dtype=torch.float64)
    with pytest.raises(TypeError, match="float64"):
        kernels.softmax(x, backend=backend)
    assert kernels.softmax(x, backend="torch").dtype == torch.float64
    assert kernels.softmax(x).dtype == torch.float64  # auto picks the reference for fp64


def test_bad_dim_and_backend():
    x = randn(2, 3)
    with pytest.raises(ValueError, match="dim"):
        kernels.softmax(x, dim=2)
    with pytest.raises(ValueError, match="backend"):
        kernels.softmax(x, backend="numpy")
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        kernels.softmax([1.0, 2.0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic(backend):
    x = randn(6, 5000, scale=2.0).requires_grad_()
    g = randn(6, 5000)
    outs = []
    for _ in range(2):
        x.grad = None
        y = kernels.softmax(x, 0.9, backend=backend)
        y.backward(g)
        outs.append((y.detach().clone(), x.grad.clone()))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_triton_opcheck():
    pytest.importorskip("triton")
    if "triton" not in BACKENDS:
        pytest.skip("triton backend not usable here")
    import kernels.triton.softmax as sm
    x = randn(4, 37, scale=2.0).requires_grad_()
    torch.library.opcheck(sm.softmax_op, (x, 1.5, -1))
    torch.library.opcheck(sm.softmax_op, (randn(3, 8, 5), 0.5, 1))
    torch.library.opcheck(sm.softmax_backward_op, (randn(4, 37), torch.softmax(randn(4, 37), -1), 1.5, -1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    compile_backend = "inductor" if DEVICE == "cuda" else "aot_eager"

    def f(x):
        return kernels.softmax(x * 2, 0.8, backend=backend).sum(-1)

    compiled = torch.compile(f, fullgraph=True, backend=compile_backend)
    x = randn(3, 50).requires_grad_()
    out = compiled(x)
    out.sum().backward()
    x2 = x.detach().clone().requires_grad_()
    f(x2).sum().backward()
    assert_close(out, f(x2).detach(), torch.float32)
    assert_close(x.grad, x2.grad, torch.float32)


def test_no_recompile_per_temperature():
    # temperature is a runtime kernel argument: the jit cache does not grow with new values
    if "triton" not in BACKENDS or INTERPRET:
        pytest.skip("needs compiled triton kernels (GPU)")
    import kernels.triton.softmax as sm
    x = randn(4, 100)
    kernels.softmax(x, 1.0, backend="triton")

    def compiled_variants():
        return sum(len(c[0]) for c in sm._softmax_fwd_kernel.device_caches.values())

    before = compiled_variants()
    for t in (0.3, 0.7, 2.0, 9.0):
        kernels.softmax(x, t, backend="triton")
    assert compiled_variants() == before


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_row_alignment_paths(backend, dtype):
    # Rows of every phase against a 16-byte boundary: aligned rows (no peel), an odd width
    # (each row's head and tail peeled), a slice starting one element in, an output whose
    # rows are not congruent with the input's, and a long row streamed in chunks.
    base = randn(4, 1033, dtype=dtype, scale=3.0)
    for x in (base[:, :1024], base[:, :1001], base[:, 1:], base[:, 3:700], randn(2, 16411, dtype=dtype)[:, 5:]):
        x = x.detach().requires_grad_()
        y = kernels.softmax(x, 0.9, backend=backend)
        x64 = x.detach().double().requires_grad_()
        y64 = reference.softmax(x64, 0.9, -1)
        assert_close(y, y64, dtype)
        g = randn(*x.shape, dtype=dtype)
        (y * g).sum().backward()
        (y64 * g.double()).sum().backward()
        assert_close(x.grad, x64.grad, dtype)
