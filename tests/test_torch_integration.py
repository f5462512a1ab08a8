"""torch integration for every op of every backend through the functional API: torch.compile(fullgraph=True)
with no graph break (aot_eager on CPU, inductor on a GPU), bitwise determinism, and the whole GPT compiled.
`torch.library.opcheck` runs in each op's own test file, on that op's custom ops (their schemas
carry extra outputs such as the saved logsumexp)."""
import pytest
import torch

import gpt
import kernels
from helpers import DEVICE, HAS_CUDA, assert_close, randn

BACKENDS = [b for b in kernels.available_backends(DEVICE) if b != "torch"]
COMPILE_BACKEND = "inductor" if HAS_CUDA else "aot_eager"


def _args(op):
    """Positional arguments of the functional op."""
    if op == "softmax":
        return (randn(5, 37, scale=2.0), 0.8, -1)
    if op == "layer_norm":
        return (randn(5, 40), randn(40), randn(40), 1e-5)
    if op == "add_layer_norm":
        return (randn(5, 40), randn(5, 40), randn(40), randn(40), 1e-5)
    if op == "attention":
        return (randn(1, 2, 9, 16), randn(1, 2, 13, 16), randn(1, 2, 13, 16), True, 0.25)
    if op == "gelu_linear":
        return (randn(7, 24), randn(20, 24) * 0.2, randn(20), "tanh")
    if op == "linear_cross_entropy":
        target = torch.randint(0, 50, (2, 9), device=DEVICE)
        target[0, ::4] = -100
        return (randn(2, 9, 16), randn(50, 16) * 0.3, target, randn(50), 0.9)
    raise AssertionError(op)


def _kw_call(op, args, backend):
    if op == "attention":
        q, k, v, causal, scale = args
        return kernels.attention(q, k, v, causal=causal, scale=scale, backend=backend)
    if op == "gelu_linear":
        x, w, b, approximate = args
        return kernels.gelu_linear(x, w, b, approximate=approximate, backend=backend)
    if op == "linear_cross_entropy":
        x, w, t, b, temperature = args
        return kernels.linear_cross_entropy(x, w, t, b, temperature=temperature, backend=backend)
    return getattr(kernels, op)(*args, backend=backend)


# Not differentiable and random: its compile and seeded-replay tests are in test_sample.py.
OWN_TESTS = ("sample",)


def _pairs():
    out = []
    for backend in BACKENDS:
        for op in (op for op in kernels.OPS if op not in OWN_TESTS):
            marks = [pytest.mark.skipif(bool(kernels.missing_ops(backend, (op,))),
                                        reason=f"backend {backend!r} has no {op} yet")]
            out.append(pytest.param(backend, op, marks=marks, id=f"{backend}-{op}"))
    return out


def _grad_inputs(args):
    return tuple(a.detach().clone().requires_grad_(a.is_floating_point()) if isinstance(a, torch.Tensor) else a
                 for a in args)


def _flat(out):
    return out if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize("backend,op", _pairs())
def test_compile_fullgraph_forward_backward(backend, op):
    torch._dynamo.reset()  # each case compiles the same `f` code object: start from a clean cache
    args = _grad_inputs(_args(op))

    def f(*a):
        return sum(o.float().square().sum() for o in _flat(_kw_call(op, a, backend)))

    compiled = torch.compile(f, fullgraph=True, backend=COMPILE_BACKEND)
    loss = compiled(*args)
    loss.backward()
    eager_args = _grad_inputs(args)
    eager = f(*eager_args)
    eager.backward()
    assert_close(loss, eager, torch.float32)
    for a, e in zip(args, eager_args):
        if isinstance(a, torch.Tensor) and a.requires_grad:
            assert_close(a.grad, e.grad, torch.float32)


@pytest.mark.parametrize("backend,op", _pairs())
def test_bitwise_deterministic(backend, op):
    args = _grad_inputs(_args(op))
    runs = []
    for _ in range(2):
        for a in args:
            if isinstance(a, torch.Tensor) and a.requires_grad:
                a.grad = None
        outs = _flat(_kw_call(op, args, backend))
        sum(o.float().sum() * (j + 1) for j, o in enumerate(outs)).backward()
        runs.append([o.detach().clone() for o in outs] +
                    [a.grad.clone() for a in args if isinstance(a, torch.Tensor) and a.requires_grad])
    for x, y in zip(*runs):
        assert torch.equal(x, y)


FULL = [b for b in kernels.available_backends(DEVICE) if not kernels.missing_ops(b, gpt.MODEL_OPS)]


@pytest.mark.parametrize("backend", FULL)
def test_gpt_compiles_fullgraph_forward_backward(backend):
    torch.manual_seed(0)
    model = gpt.GPT(gpt.GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32,
                                  backend=backend)).to(DEVICE)
    idx = torch.randint(0, 64, (2, 11), device=DEVICE)
    compiled = torch.compile(model, fullgraph=True, backend=COMPILE_BACKEND)
    _, loss = compiled(idx, idx)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    _, eager_loss = model(idx, idx)
    eager_loss.backward()
    assert_close(loss, eager_loss, torch.float32)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g, p.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_scalars_rejected_under_compile(backend):
    # The API's scalar checks may see symbols while tracing; the op re-checks the real value.
    if kernels.missing_ops(backend, ("softmax", "layer_norm")):
        pytest.skip(f"backend {backend!r} lacks softmax or layer_norm")
    torch._dynamo.reset()
    x = randn(3, 8)

    @torch.compile(fullgraph=True, backend=COMPILE_BACKEND)
    def soft(x, t):
        return kernels.softmax(x, t, backend=backend)

    @torch.compile(fullgraph=True, backend=COMPILE_BACKEND)
    def norm(x, eps):
        return kernels.layer_norm(x, None, None, eps, backend=backend)

    soft(x, 0.5)
    with pytest.raises((ValueError, RuntimeError), match="temperature"):
        soft(x, 0.0)
    norm(x, 1e-5)
    with pytest.raises((ValueError, RuntimeError), match="eps"):
        norm(x, -1.0)
