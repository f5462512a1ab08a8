"""Bad input on every op x backend: a clear TypeError/ValueError naming the argument, never a
crash; empty tensors give empty results. The functional API validates before dispatch, so
these hold on every backend, including ones still missing the op."""
import pytest
import torch

import kernels
from helpers import DEVICE

BACKENDS = ["torch"] + [b for b in kernels.available_backends(DEVICE) if b != "torch"]


def r(*shape, dtype=torch.float32, device=DEVICE):
    return torch.randn(*shape, device=device).to(dtype)


def i(*shape):
    return torch.ones(*shape, dtype=torch.int64, device=DEVICE)


# (id, call(backend), exception, regex the message must match)
CASES = [
    ("softmax-int", lambda b: kernels.softmax(i(2, 3), backend=b), TypeError, "x must be a floating"),
    ("softmax-t0", lambda b: kernels.softmax(r(2, 3), 0.0, backend=b), ValueError, "temperature"),
    ("softmax-tnan", lambda b: kernels.softmax(r(2, 3), float("nan"), backend=b), ValueError, "temperature"),
    ("softmax-dim", lambda b: kernels.softmax(r(2, 3), dim=5, backend=b), ValueError, "dim"),
    ("ln-int", lambda b: kernels.layer_norm(i(2, 8), backend=b), TypeError, "x must be a floating"),
    ("ln-weight-shape", lambda b: kernels.layer_norm(r(2, 8), r(7), backend=b), ValueError, "weight must have shape"),
    ("ln-bias-shape", lambda b: kernels.layer_norm(r(2, 8), r(8), r(8, 1), backend=b), ValueError,
     "bias must have shape"),
    ("ln-eps0", lambda b: kernels.layer_norm(r(2, 8), eps=0.0, backend=b), ValueError, "eps"),
    ("ln-eps-neg", lambda b: kernels.layer_norm(r(2, 8), eps=-1e-5, backend=b), ValueError, "eps"),
    ("ln-dtype-mix", lambda b: kernels.layer_norm(r(2, 8), r(8, dtype=torch.float16), backend=b), TypeError,
     "weight has dtype"),
    ("ln-device-mix", lambda b: kernels.layer_norm(r(2, 8), r(8, device="meta"), backend=b), ValueError,
     "weight is on meta"),
    ("ln-0d", lambda b: kernels.layer_norm(torch.tensor(1.0, device=DEVICE), backend=b), ValueError, "at least one dim"),
    ("addln-shape", lambda b: kernels.add_layer_norm(r(2, 8), r(3, 8), backend=b), ValueError, "residual"),
    ("addln-dtype", lambda b: kernels.add_layer_norm(r(2, 8), r(2, 8, dtype=torch.float16), backend=b), TypeError,
     "residual has dtype"),
    ("addln-eps", lambda b: kernels.add_layer_norm(r(2, 8), r(2, 8), eps=float("inf"), backend=b), ValueError,
     "eps"),
    ("attn-rank", lambda b: kernels.attention(r(2, 4, 16), r(2, 4, 16), r(2, 4, 16), backend=b), ValueError,
     "must be 4-D"),
    ("attn-batch", lambda b: kernels.attention(r(1, 2, 4, 16), r(2, 2, 4, 16), r(2, 2, 4, 16), backend=b),
     ValueError, "batch size"),
    ("attn-heads", lambda b: kernels.attention(r(1, 2, 4, 16), r(1, 3, 4, 16), r(1, 3, 4, 16), backend=b),
     ValueError, "head count"),
    ("attn-headdim", lambda b: kernels.attention(r(1, 2, 4, 16), r(1, 2, 4, 32), r(1, 2, 4, 32), backend=b),
     ValueError, "head dim"),
    ("attn-kv", lambda b: kernels.attention(r(1, 2, 4, 16), r(1, 2, 4, 16), r(1, 2, 5, 16), backend=b),
     ValueError, "k and v"),
    ("attn-causal", lambda b: kernels.attention(r(1, 2, 5, 16), r(1, 2, 4, 16), r(1, 2, 4, 16), backend=b),
     ValueError, "Tq <= Tk"),
    ("attn-stride", lambda b: kernels.attention(r(1, 2, 4, 16), r(1, 2, 16, 4).transpose(2, 3),
                                                r(1, 2, 4, 16), backend=b), ValueError, "k must have a unit-stride"),
    ("attn-dtype", lambda b: kernels.attention(r(1, 2, 4, 16), r(1, 2, 4, 16, dtype=torch.float16),
                                               r(1, 2, 4, 16), backend=b), TypeError, "k has dtype"),
    ("attn-int", lambda b: kernels.attention(i(1, 2, 4, 16), i(1, 2, 4, 16), i(1, 2, 4, 16), backend=b),
     TypeError, "q must be a floating"),
    ("attn-scale", lambda b: kernels.attention(r(1, 1, 2, 16), r(1, 1, 2, 16), r(1, 1, 2, 16),
                                               scale=float("nan"), backend=b), ValueError, "scale"),
    ("attn-lengths-dtype", lambda b: kernels.attention(r(2, 1, 1, 16), r(2, 1, 3, 16), r(2, 1, 3, 16),
                                                       kv_lengths=r(2), backend=b), TypeError,
     "kv_lengths must be an int32 or int64"),
    ("attn-lengths-shape", lambda b: kernels.attention(r(2, 1, 1, 16), r(2, 1, 3, 16), r(2, 1, 3, 16),
                                                       kv_lengths=i(3), backend=b), ValueError,
     r"kv_lengths must have shape \(B,\) = \(2,\)"),
    ("attn-lengths-grad", lambda b: kernels.attention(r(2, 1, 1, 16).requires_grad_(), r(2, 1, 3, 16),
                                                      r(2, 1, 3, 16), kv_lengths=i(2), backend=b), ValueError,
     "no_grad"),
    ("gl-inf", lambda b: kernels.gelu_linear(r(3, 8), r(5, 7), backend=b), ValueError, "in_features"),
    ("gl-bias", lambda b: kernels.gelu_linear(r(3, 8), r(5, 8), r(4), backend=b), ValueError, "bias must have"),
    ("gl-approx", lambda b: kernels.gelu_linear(r(3, 8), r(5, 8), approximate="sigmoid", backend=b), ValueError,
     "approximate"),
    ("gl-weight-rank", lambda b: kernels.gelu_linear(r(3, 8), r(8), backend=b), ValueError, "weight must be 2-D"),
    ("gl-int", lambda b: kernels.gelu_linear(i(3, 8), r(5, 8), backend=b), TypeError, "x must be a floating"),
    ("gl-dtype", lambda b: kernels.gelu_linear(r(3, 8), r(5, 8, dtype=torch.bfloat16), backend=b), TypeError,
     "weight has dtype"),
    ("gl-device", lambda b: kernels.gelu_linear(r(3, 8), r(5, 8, device="meta"), backend=b), ValueError,
     "weight is on meta"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call,exc,match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(backend, call, exc, match):
    with pytest.raises(exc, match=match):
        call(backend)


# Under torch.compile the same calls raise the same errors (not the C++ ops' RuntimeError):
# the value checks, which used to run in eager calls only, and one shape and dtype case.
COMPILED = ("softmax-t0", "ln-eps-neg", "addln-eps", "attn-scale", "attn-lengths-shape", "gl-dtype")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call,exc,match", [c[1:] for c in CASES if c[0] in COMPILED],
                         ids=[c[0] for c in CASES if c[0] in COMPILED])
def test_bad_input_under_torch_compile(backend, call, exc, match):
    torch._dynamo.reset()
    with pytest.raises(exc, match=match):
        torch.compile(lambda: call(backend), backend="aot_eager")()


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "torch"])
@pytest.mark.parametrize("d", [20, 264])
def test_unsupported_head_dim_on_kernel_backends(backend, d):
    q = r(1, 1, 4, d)
    with pytest.raises(ValueError, match=f"head dim D={d} .*multiple of 8 from 8 to 256"):
        kernels.attention(q, q, q, backend=backend)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "torch"])
@pytest.mark.parametrize("op", ["softmax", "layer_norm", "gelu_linear"])
def test_float64_rejected_on_kernel_backends(backend, op):
    x = r(2, 8, dtype=torch.float64)
    with pytest.raises(TypeError, match="float64"):
        if op == "gelu_linear":
            kernels.gelu_linear(x, r(3, 8, dtype=torch.float64), backend=backend)
        else:
            getattr(kernels, op)(x, backend=backend)


def _has(backend, op):
    return not kernels.missing_ops(backend, (op,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_tensors_give_empty_results(backend):
    if _has(backend, "softmax"):
        assert kernels.softmax(r(0, 5), backend=backend).shape == (0, 5)
    if _has(backend, "layer_norm"):
        assert kernels.layer_norm(r(0, 8), r(8), r(8), backend=backend).shape == (0, 8)
    if _has(backend, "add_layer_norm"):
        y, s = kernels.add_layer_norm(r(0, 8), r(0, 8), backend=backend)
        assert y.shape == s.shape == (0, 8)
    if _has(backend, "attention"):
        q = r(0, 2, 3, 16)
        assert kernels.attention(q, q, q, backend=backend).shape == (0, 2, 3, 16)
    if _has(backend, "gelu_linear"):
        assert kernels.gelu_linear(r(0, 8), r(5, 8), r(5), backend=backend).shape == (0, 5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_layer_norm_constant_rows_stay_finite(backend):
    if not _has(backend, "layer_norm"):
        pytest.skip(f"backend {backend!r} has no layer_norm yet")
    x = torch.full((3, 33), 7.25, device=DEVICE)
    y = kernels.layer_norm(x, r(33), r(33), backend=backend)
    assert torch.isfinite(y).all()
