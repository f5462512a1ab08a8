"""Property tests: random shapes, strides and dtypes for every op on every backend that has it,
against the fp64 reference, forward and backward (attention and gelu_linear: the gradients by
FlashAttention's rule, within 3x of PyTorch's own error in the dtype). Bounded and
derandomized, so CI stays fast and reproducible."""
import pytest
import torch

import kernels
from kernels import reference
from helpers import DEVICE, INTERPRET, TOL, assert_within_torch_error, max_err

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

BACKENDS = [b for b in kernels.available_backends(DEVICE) if b != "torch"]
SETTINGS = settings(max_examples=12, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))
# Backward draws: fewer (each runs the op forward and backward, under the interpreter for triton).
GRAD_SETTINGS = settings(SETTINGS, max_examples=8)
ELEMENTWISE_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def matmul_dtypes(backend):
    """The interpreter's bf16 tl.dot is wrong (Triton issue 11584): bf16 matmul ops are
    GPU-only for the triton backend there."""
    if backend == "triton" and INTERPRET and DEVICE == "cpu":
        return [torch.float32, torch.float16]
    return ELEMENTWISE_DTYPES


def _params(op, backends=BACKENDS):
    return [pytest.param(b, marks=pytest.mark.skipif(bool(kernels.missing_ops(b, (op,))),
                                                     reason=f"backend {b!r} has no {op} yet")) for b in backends]


def _tensor(draw, shape, dtype, scale=2.0, layouts=("contiguous", "row_stride", "transposed")):
    """A random tensor of `shape`, sometimes a strided view (last dim contiguous) or a transposed one."""
    layout = draw(st.sampled_from(layouts))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    if layout == "row_stride" and len(shape) >= 1:
        pad = draw(st.integers(1, 5))
        big = torch.randn(*shape[:-1], shape[-1] + pad, generator=g, dtype=torch.float64)
        return (big * scale).to(device=DEVICE, dtype=dtype)[..., pad:]  # sliced last: arithmetic would compact it
    elif layout == "transposed" and len(shape) >= 2:
        t = torch.randn(*shape[:-2], shape[-1], shape[-2], generator=g, dtype=torch.float64).transpose(-1, -2)
    else:
        t = torch.randn(*shape, generator=g, dtype=torch.float64)
    return (t * scale).to(device=DEVICE, dtype=dtype)


def _slack(dtype):
    """Absolute slack of the FlashAttention rule, for outputs where PyTorch's own error is ~0."""
    return 1e-5 if dtype == torch.float32 else 1e-3


def _check_grads_within_torch_error(ours, torch_same_dtype, inputs, names, dtype, draw):
    """Backward by FlashAttention's rule: each input's gradient from `ours` within 3x of
    PyTorch's own error in `dtype` (`torch_same_dtype` run on the same inputs), both against
    `torch_same_dtype` in fp64, under one random cotangent. Inputs keep their strides."""
    copies = [[t.detach().requires_grad_() for t in inputs], [t.detach().clone().requires_grad_() for t in inputs],
              [t.detach().double().requires_grad_() for t in inputs]]
    outs = [ours(*copies[0]), torch_same_dtype(*copies[1]), torch_same_dtype(*copies[2])]
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    g = torch.randn(outs[0].shape, generator=g, dtype=torch.float64).to(DEVICE, dtype)
    for out in outs:
        out.backward(g.to(out.dtype))
    for name, *grads in zip(names, *([t.grad for t in c] for c in copies)):
        assert_within_torch_error(*grads, 3, slack=_slack(dtype), what=f"{name} {dtype}")


def _check_grad_close(ours, ref64, dtype, what):
    tol = TOL[dtype]
    torch.testing.assert_close(ours.double().cpu(), ref64.double().cpu(), **tol, msg=what)


@pytest.mark.parametrize("backend", _params("softmax"))
@SETTINGS
@given(data=st.data())
def test_softmax_property(backend, data):
    shape = tuple(data.draw(st.lists(st.integers(1, 40), min_size=1, max_size=3)))
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    dtype = data.draw(st.sampled_from(ELEMENTWISE_DTYPES))
    t = data.draw(st.floats(0.05, 20.0))
    x = _tensor(data.draw, shape, dtype).requires_grad_()
    y = kernels.softmax(x, t, dim=dim, backend=backend)
    x64 = x.detach().double().requires_grad_()
    y64 = reference.softmax(x64, t, dim)
    torch.testing.assert_close(y.double().cpu(), y64.cpu(), **TOL[dtype])
    g = torch.randn(shape, dtype=torch.float64).to(DEVICE)
    y.backward(g.to(dtype))
    y64.backward(g.to(dtype).double())
    _check_grad_close(x.grad, x64.grad, dtype, "softmax dx")


@pytest.mark.parametrize("backend", _params("layer_norm"))
@SETTINGS
@given(data=st.data())
def test_layer_norm_property(backend, data):
    shape = (data.draw(st.integers(1, 9)), data.draw(st.integers(1, 300)))
    dtype = data.draw(st.sampled_from(ELEMENTWISE_DTYPES))
    affine = data.draw(st.booleans())
    x = _tensor(data.draw, shape, dtype).requires_grad_()
    w = (torch.randn(shape[-1], dtype=torch.float64) + 1).to(DEVICE, dtype).requires_grad_() if affine else None
    b = torch.randn(shape[-1], dtype=torch.float64).to(DEVICE, dtype).requires_grad_() if affine else None
    y = kernels.layer_norm(x, w, b, 1e-5, backend=backend)
    leaves = [t for t in (x, w, b) if t is not None]
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    y64 = reference.layer_norm(leaves64[0], *(leaves64[1:] if affine else (None, None)), eps=1e-5)
    torch.testing.assert_close(y.double().cpu(), y64.cpu(), **TOL[dtype])
    g = torch.randn(shape, dtype=torch.float64).to(DEVICE, dtype)
    y.backward(g)
    y64.backward(g.double())
    for ours, ref, name in zip(leaves, leaves64, ("dx", "dweight", "dbias")):
        # dweight/dbias sum over rows: compare relative to their magnitude
        scale = ref.grad.abs().max().item() + 1
        assert max_err(ours.grad, ref.grad) <= TOL[dtype]["atol"] * scale * max(1, shape[0] ** 0.5), name


@pytest.mark.parametrize("backend", _params("attention"))
@SETTINGS
@given(data=st.data())
def test_attention_property(backend, data):
    B, H = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3))
    tk = data.draw(st.integers(1, 70))
    causal = data.draw(st.booleans())
    tq = data.draw(st.integers(1, tk if causal else 70))
    D = data.draw(st.sampled_from([16, 32, 64]))
    dtype = data.draw(st.sampled_from(matmul_dtypes(backend)))
    q, k, v = (_tensor(data.draw, (B, H, t, D), dtype, 1.0) for t in (tq, tk, tk))
    if any(t.stride(-1) != 1 and D > 1 for t in (q, k, v)):  # a strided head dim is refused (issue 15)
        with pytest.raises(ValueError, match="unit-stride last dim"):
            kernels.attention(q, k, v, causal=causal, backend=backend)
        return
    out = kernels.attention(q, k, v, causal=causal, backend=backend)
    ref64 = reference.attention_explicit(q.double(), k.double(), v.double(), causal=causal)
    same_dtype = reference.attention_explicit(q, k, v, causal=causal)  # PyTorch's own error in this dtype
    assert max_err(out, ref64) <= 2 * max_err(same_dtype, ref64) + _slack(dtype)


def _draw_gelu_linear(data, backend):
    """(dtype, approximate, [x (M, K), weight (N, K), and sometimes bias (N,)]) of irregular sizes."""
    M, K, N = data.draw(st.integers(1, 40)), data.draw(st.integers(1, 70)), data.draw(st.integers(1, 70))
    dtype = data.draw(st.sampled_from(matmul_dtypes(backend)))
    approximate = data.draw(st.sampled_from(["tanh", "none"]))
    inputs = [_tensor(data.draw, (M, K), dtype, 1.0), _tensor(data.draw, (N, K), dtype, K ** -0.5)]
    if data.draw(st.booleans()):
        inputs.append(_tensor(data.draw, (N,), dtype, 0.5))
    return dtype, approximate, inputs


@pytest.mark.parametrize("backend", _params("gelu_linear"))
@SETTINGS
@given(data=st.data())
def test_gelu_linear_property(backend, data):
    dtype, approximate, (x, w, *bias) = _draw_gelu_linear(data, backend)
    b = bias[0] if bias else None
    out = kernels.gelu_linear(x, w, b, approximate=approximate, backend=backend)
    ref64 = reference.gelu_linear(x.double(), w.double(), None if b is None else b.double(), approximate)
    same = reference.gelu_linear(x, w, b, approximate)  # PyTorch's own error in this dtype
    assert max_err(out, ref64) <= 2 * max_err(same, ref64) + _slack(dtype)


# The backward of the matmul-like ops on every backend here, torch's own included.
@pytest.mark.parametrize("backend", _params("attention", kernels.available_backends(DEVICE)))
@GRAD_SETTINGS
@given(data=st.data())
def test_attention_backward_property(backend, data):
    B, H = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2))
    tq = data.draw(st.integers(1, 33))
    tk = data.draw(st.integers(tq, 48))  # keys at least as many as queries, causal or not
    causal = data.draw(st.booleans())
    D = 8 * data.draw(st.integers(1, 8))  # every multiple of 8 to 64: exact and padded head dims
    dtype = data.draw(st.sampled_from(matmul_dtypes(backend)))
    q, k, v = (_tensor(data.draw, (B, H, t, D), dtype, 1.0, layouts=("contiguous", "row_stride"))
               for t in (tq, tk, tk))
    _check_grads_within_torch_error(
        lambda q, k, v: kernels.attention(q, k, v, causal=causal, backend=backend),
        lambda q, k, v: reference.attention_explicit(q, k, v, causal=causal), (q, k, v), ("dq", "dk", "dv"),
        dtype, data.draw)


@pytest.mark.parametrize("backend", _params("gelu_linear", kernels.available_backends(DEVICE)))
@GRAD_SETTINGS
@given(data=st.data())
def test_gelu_linear_backward_property(backend, data):
    dtype, approximate, inputs = _draw_gelu_linear(data, backend)
    _check_grads_within_torch_error(
        lambda *t: kernels.gelu_linear(*t, approximate=approximate, backend=backend),
        lambda *t: reference.gelu_linear(*t, approximate=approximate), inputs, ("dx", "dweight", "dbias"),
        dtype, data.draw)
