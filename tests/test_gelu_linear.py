"""gelu(x @ W^T + b): parity with fp64 under the FlashAttention error rule, gradients, edge
values, bad input, registration, and the GPT built on the triton backend."""
import pytest
import torch

import gpt
import kernels
from kernels import reference
from helpers import (DEVICE, HAS_CUDA, INTERPRET, assert_close, assert_within_torch_error, backends_here,
                     needs_gpu, randn)

BACKENDS = backends_here()
pytestmark = pytest.mark.skipif(not BACKENDS, reason="no compiled backend runs here")

# (leading dims of x, K, N): the (M, K, N) cases plus a 3-D input.
SHAPES = [((33,), 64, 96), ((5,), 100, 17), ((128,), 256, 512), ((1,), 8, 8), ((3, 7), 40, 24)]
APPROX = ["tanh", "none"]
BF16_ON_CPU = "the Triton interpreter's bf16 tl.dot is wrong (Triton issue 11584): bf16 runs on a GPU only"


def _inputs(lead, k, n, dtype, bias=True, requires_grad=True):
    x = randn(*lead, k, dtype=dtype)
    w = randn(n, k, dtype=dtype, scale=k ** -0.5 if k else 1.0)
    b = randn(n, dtype=dtype, scale=0.5) if bias else None
    for t in (x, w, b):
        if t is not None and requires_grad:
            t.requires_grad_()
    return x, w, b


def _double(*ts):
    return [None if t is None else t.detach().double().requires_grad_(t.requires_grad) for t in ts]


def _fresh(*ts):
    return [None if t is None else t.detach().clone().requires_grad_(t.requires_grad) for t in ts]


def _grads(y, g, *ts):
    y.backward(g)
    return [None if t is None else t.grad for t in ts]


def _check_against_fp64(backend, lead, k, n, dtype, bias, approximate, grads):
    """Ours and PyTorch's own same-dtype result, both against fp64: ours within 2x (forward)
    and 3x (backward) of PyTorch's error."""
    x, w, b = _inputs(lead, k, n, dtype, bias)
    y = kernels.gelu_linear(x, w, b, approximate=approximate, backend=backend)
    assert y.dtype == dtype and y.shape == (*lead, n)
    xt, wt, bt = _fresh(x, w, b)
    yt = reference.gelu_linear(xt, wt, bt, approximate)
    x64, w64, b64 = _double(x, w, b)
    y64 = reference.gelu_linear(x64, w64, b64, approximate)
    what = f"{backend} {dtype} {lead}x{k}->{n} bias={bias} {approximate}"
    assert_within_torch_error(y, yt, y64, 2, what=what + " forward")
    if not grads:
        return
    g = randn(*lead, n, dtype=dtype)
    ours = _grads(y, g, x, w, b)
    theirs = _grads(yt, g, xt, wt, bt)
    exact = _grads(y64, g.double(), x64, w64, b64)
    for name, o, t, e in zip(("dx", "dW", "db"), ours, theirs, exact):
        if e is None:
            continue
        assert o.dtype == dtype and o.shape == e.shape
        assert_within_torch_error(o, t, e, 3, what=f"{what} {name}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("approximate", APPROX)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("lead,k,n", SHAPES, ids=str)
@pytest.mark.parametrize("dtype,grads", [(torch.float32, True), (torch.float16, False)],
                         ids=["fp32-fwd-bwd", "fp16-fwd"])
def test_parity_with_fp64(backend, lead, k, n, bias, approximate, dtype, grads):
    _check_against_fp64(backend, lead, k, n, dtype, bias, approximate, grads)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("approximate", APPROX)
def test_fp16_gradients(backend, approximate):
    _check_against_fp64(backend, (33,), 64, 96, torch.float16, True, approximate, grads=True)


@needs_gpu
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("approximate", APPROX)
@pytest.mark.parametrize("lead,k,n", SHAPES + [((4, 256), 768, 3072), ((77,), 1000, 333)], ids=str)
def test_bf16_forward_and_gradients_gpu(backend, lead, k, n, approximate):
    _check_against_fp64(backend, lead, k, n, torch.bfloat16, True, approximate, grads=True)


def test_bf16_is_gpu_only_here():
    if not HAS_CUDA:
        pytest.skip(BF16_ON_CPU)


@needs_gpu
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("lead,k,n", [((4, 256), 768, 3072), ((77,), 1000, 333), ((2048,), 64, 256)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_gpt_sizes_gpu(backend, lead, k, n, dtype):
    # Real autotuning over every config, at GPT-like and odd (unaligned) sizes.
    _check_against_fp64(backend, lead, k, n, dtype, True, "tanh", grads=True)


@needs_gpu
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("allow_tf32", [False, True])
def test_fp32_follows_the_tf32_flag_gpu(backend, allow_tf32):
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    try:
        x, w, b = _inputs((256,), 512, 384, torch.float32, requires_grad=False)
        y = kernels.gelu_linear(x, w, b, backend=backend)
        err = (y.double() - reference.gelu_linear(*_double(x, w, b), "tanh")).abs().max().item()
        # IEEE fp32 is ~1e-6 here; TF32 (10-bit mantissa) is ~1e-3.
        assert (err > 1e-4) == allow_tf32, err
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs_and_gradient(backend):
    base = randn(9, 2, 70)
    w_t = randn(70, 33, scale=70 ** -0.5)  # weight as the transpose of a (K, N) tensor: strides (1, N)
    cases = [base[:, 0], base.transpose(0, 1), base[:, :, ::2][..., :35]]
    for x in cases:
        k = x.shape[-1]
        w = w_t[:k].t().detach().requires_grad_()
        b = randn(33).requires_grad_()
        x = x.detach().requires_grad_()
        assert not x.is_contiguous() and not w.is_contiguous()
        y = kernels.gelu_linear(x, w, b, backend=backend)
        x64, w64, b64 = _double(x, w, b)
        y64 = reference.gelu_linear(x64, w64, b64, "tanh")
        assert_close(y, y64, torch.float32)
        g = randn(33, *x.shape[:-1]).movedim(0, -1)  # a non-contiguous gradient too
        for o, e in zip(_grads(y, g, x, w, b), _grads(y64, g.double(), x64, w64, b64)):
            assert_close(o, e, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("lead,k,n", [((0,), 16, 8), ((2, 0), 16, 8), ((4,), 16, 0), ((5,), 0, 7)], ids=str)
def test_empty(backend, lead, k, n):
    x, w, b = _inputs(lead, k, n, torch.float32)
    y = kernels.gelu_linear(x, w, b, backend=backend)
    x64, w64, b64 = _double(x, w, b)
    y64 = reference.gelu_linear(x64, w64, b64, "tanh")
    assert y.shape == y64.shape
    assert_close(y, y64, torch.float32)
    g = randn(*y.shape)
    for o, e in zip(_grads(y, g, x, w, b), _grads(y64, g.double(), x64, w64, b64)):
        assert o.shape == e.shape
        assert_close(o, e, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("approximate", APPROX)
def test_nan_propagates_like_torch(backend, approximate):
    x, w, b = _inputs((6,), 40, 24, torch.float32, requires_grad=False)
    x[1, 3] = float("nan")   # poisons row 1
    w[5, 7] = float("nan")   # poisons column 5
    if approximate == "tanh":
        x[3, 0] = float("inf")  # +-inf pre-activations: gelu_tanh(inf) = inf, gelu_tanh(-inf) = NaN
    y = kernels.gelu_linear(x, w, b, approximate=approximate, backend=backend)
    expected = reference.gelu_linear(x, w, b, approximate)
    torch.testing.assert_close(y, expected, equal_nan=True, atol=1e-5, rtol=1e-5)
    assert y[1].isnan().all() and y[:, 5].isnan().all() and not y[0, :5].isnan().any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic(backend):
    x, w, b = _inputs((70,), 96, 80, torch.float32)
    g = randn(70, 80)
    runs = []
    for _ in range(2):
        for t in (x, w, b):
            t.grad = None
        y = kernels.gelu_linear(x, w, b, backend=backend)
        runs.append([y.detach().clone(), *[t.clone() for t in _grads(y, g, x, w, b)]])
    assert all(torch.equal(a, c) for a, c in zip(*runs))


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_grad_skips_the_preactivation(backend):
    import kernels.triton.gelu_linear as gl
    x, w, b = _inputs((9,), 16, 24, torch.float32, requires_grad=False)
    y, z = gl.gelu_linear_op(x, w, b, "tanh", False)
    assert z.numel() == 0
    y2, z2 = gl.gelu_linear_op(x, w, b, "tanh", True)
    assert torch.equal(y, y2) and z2.shape == y.shape
    assert_close(z2, torch.nn.functional.linear(x.double(), w.double(), b.double()), torch.float32)
    with torch.no_grad():
        assert_close(kernels.gelu_linear(x.requires_grad_(), w, b, backend=backend),
                     reference.gelu_linear(*_double(x, w, b), "tanh"), torch.float32)
    # The op called directly without the saved pre-activation says so on backward.
    y3, _ = gl.gelu_linear_op(x, w, b, "tanh", False)
    with pytest.raises(RuntimeError, match="save_preact"):
        y3.sum().backward()


@pytest.mark.parametrize("backend", BACKENDS + ["torch"])
def test_bad_input(backend):
    x, w, b = _inputs((4,), 8, 6, torch.float32, requires_grad=False)
    with pytest.raises(ValueError, match="in_features"):
        kernels.gelu_linear(x, randn(6, 9), b, backend=backend)
    with pytest.raises(ValueError, match="bias"):
        kernels.gelu_linear(x, w, randn(5), backend=backend)
    with pytest.raises(ValueError, match="bias"):
        kernels.gelu_linear(x, w, randn(1, 6), backend=backend)
    with pytest.raises(ValueError, match="weight"):
        kernels.gelu_linear(x, randn(6, 8, 1), b, backend=backend)
    with pytest.raises(TypeError, match="weight"):
        kernels.gelu_linear(x, w.half(), b, backend=backend)
    with pytest.raises(TypeError, match="bias"):
        kernels.gelu_linear(x, w, b.half(), backend=backend)
    with pytest.raises(ValueError, match="device"):
        kernels.gelu_linear(x, w.to("meta"), b, backend=backend)
    for bad in ("tanh ", "exact", None, "erf"):
        with pytest.raises(ValueError, match="approximate"):
            kernels.gelu_linear(x, w, b, approximate=bad, backend=backend)
    for dtype in (torch.int64, torch.int32, torch.bool):
        with pytest.raises(TypeError, match="floating-point"):
            kernels.gelu_linear(x.to(dtype), w, b, backend=backend)
    with pytest.raises(ValueError, match="0-d"):
        kernels.gelu_linear(torch.tensor(1.0, device=DEVICE), w, b, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_only_on_torch(backend):
    x, w, b = _inputs((4,), 8, 6, torch.float64, requires_grad=False)
    with pytest.raises(TypeError, match="float64"):
        kernels.gelu_linear(x, w, b, backend=backend)
    assert kernels.gelu_linear(x, w, b).dtype == torch.float64  # auto picks the reference


def test_triton_opcheck():
    if "triton" not in BACKENDS:
        pytest.skip("triton backend not usable here")
    import kernels.triton.gelu_linear as gl
    x, w, b = _inputs((5,), 24, 20, torch.float32)
    torch.library.opcheck(gl.gelu_linear_op, (x, w, b, "tanh", True))
    torch.library.opcheck(gl.gelu_linear_op, (randn(2, 3, 24), w, None, "none", True))
    torch.library.opcheck(gl.gelu_linear_op, (x.detach(), w.detach(), b.detach(), "tanh", False))
    z = torch.nn.functional.linear(x, w, b).detach()
    torch.library.opcheck(gl.gelu_linear_backward_op, (randn(5, 20), x.detach(), w.detach(), z, True, "tanh"))
    torch.library.opcheck(gl.gelu_linear_backward_op, (randn(5, 20), x.detach(), w.detach(), z, False, "none"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    compile_backend = "inductor" if DEVICE == "cuda" else "aot_eager"

    def f(x, w, b):
        return kernels.gelu_linear(x * 2, w, b, approximate="none", backend=backend).sum(-1)

    compiled = torch.compile(f, fullgraph=True, backend=compile_backend)
    x, w, b = _inputs((3, 5), 24, 40, torch.float32)
    out = compiled(x, w, b)
    out.sum().backward()
    x2, w2, b2 = _fresh(x, w, b)
    ref = f(x2, w2, b2)
    ref.sum().backward()
    assert_close(out, ref.detach(), torch.float32)
    for o, e in zip((x.grad, w.grad, b.grad), (x2.grad, w2.grad, b2.grad)):
        assert_close(o, e, torch.float32)


# -----------------------------------------------------------------------------------------
# The GPT on the triton backend
# -----------------------------------------------------------------------------------------

TRITON_GPT_MISSING = kernels.missing_ops("triton", gpt.MODEL_OPS)
needs_triton_gpt = pytest.mark.skipif(
    "triton" not in BACKENDS or bool(TRITON_GPT_MISSING),
    reason=(f"the triton backend does not implement {', '.join(TRITON_GPT_MISSING)} yet"
            if TRITON_GPT_MISSING else "triton backend not usable here"))


def _tiny_gpt(backend):
    torch.manual_seed(0)
    cfg = gpt.GPTConfig(vocab_size=61, block_size=32, n_layer=2, n_head=2, n_embd=32, backend=backend)
    return gpt.GPT(cfg).to(DEVICE)


def _train_losses(model, steps):
    data = torch.arange(0, 61, device=DEVICE).repeat(8)  # a learnable cyclic sequence
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        i = torch.randint(0, len(data) - 17, (4,), generator=gen)
        x = torch.stack([data[j:j + 16] for j in i])
        y = torch.stack([data[j + 1:j + 17] for j in i])
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_training_helper_learns_on_torch():
    # The recipe the triton test below uses, checked on the reference backend.
    losses = _train_losses(_tiny_gpt("torch"), 25)
    assert losses[-1] < 0.6 * losses[0], losses[::5]


@needs_triton_gpt
def test_tiny_gpt_trains_on_triton_and_matches_torch():
    model = _tiny_gpt("triton")
    ref = _tiny_gpt("torch")
    ref.load_state_dict(model.state_dict())
    idx = torch.randint(0, 61, (2, 19), device=DEVICE)
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], ref(idx)[0], atol=2e-4, rtol=2e-4)
    losses = _train_losses(model, 25)
    assert losses[-1] < 0.6 * losses[0], losses[::5]
    # Same weights after training, on both backends: same logits.
    ref.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], ref(idx)[0], atol=2e-4, rtol=2e-4)
