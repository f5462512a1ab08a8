"""Fused unembedding + cross-entropy: loss and every gradient against fp64 under the
FlashAttention error rule, per backend (torch, triton, cuda), every reduction, ignored tokens,
temperature, strided and empty inputs, bad input, opcheck and torch.compile."""
import math

import pytest
import torch

import kernels
from kernels import reference
from helpers import DEVICE, INTERPRET, assert_within_torch_error, backends_here, randn

BACKENDS = ["torch"] + [b for b in backends_here() if not kernels.missing_ops(b, ["linear_cross_entropy"])]
BF16_ON_CPU = "the Triton interpreter's bf16 tl.dot is wrong (Triton issue 11584): bf16 runs on a GPU only"

# (leading dims, C, V, dtype, reduction, temperature, bias, ignore_index)
CASES = [
    ((37,), 40, 1001, torch.float32, "mean", 1.0, True, -100),
    ((3, 11), 24, 1001, torch.float16, "none", 0.7, False, -100),
    ((20,), 24, 3, torch.float32, "sum", 1.3, True, 1),       # an ignore_index inside [0, V)
    ((29,), 40, 1001, torch.bfloat16, "mean", 0.8, True, -1),
    ((6,), 33, 130, torch.float16, "mean", 2.0, True, -100),
    ((5,), 8, 50257, torch.float32, "mean", 0.9, True, -100),  # GPT-2's vocabulary, few tokens
]


def _skip_unrunnable(backend, dtype):
    if backend == "triton" and dtype == torch.bfloat16 and INTERPRET:
        pytest.skip(BF16_ON_CPU)


def _inputs(lead, c, v, dtype, bias, ignore_index):
    x = randn(*lead, c, dtype=dtype)
    w = randn(v, c, dtype=dtype, scale=2 * c ** -0.5)
    b = randn(v, dtype=dtype, scale=0.5) if bias else None
    t = torch.randint(0, v, lead, device=DEVICE)
    t.view(-1)[::5] = ignore_index  # every fifth token ignored
    return x, w, b, t


def _loss_and_grads(fn, x, w, b, t, g, **kw):
    leaves = [p.detach().clone().requires_grad_() if p is not None else None for p in (x, w, b)]
    loss = fn(leaves[0], leaves[1], t, leaves[2], **kw)
    loss.backward(g.to(loss.dtype))
    return loss.detach(), [p.grad for p in leaves if p is not None]


def _check(backend, x, w, b, t, reduction, temperature, ignore_index):
    kw = dict(temperature=temperature, ignore_index=ignore_index, reduction=reduction)
    loss = kernels.linear_cross_entropy(x, w, t, b, backend=backend, **kw)
    expected_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    assert loss.dtype == expected_dtype and loss.shape == (t.shape if reduction == "none" else ())
    g = torch.randn(loss.shape, dtype=torch.float64, device=x.device)
    ours = _loss_and_grads(lambda *a, **k: kernels.linear_cross_entropy(*a, backend=backend, **k), x, w, b, t, g, **kw)
    theirs = _loss_and_grads(reference.linear_cross_entropy, x, w, b, t, g, **kw)
    ref = _loss_and_grads(reference.linear_cross_entropy, *(p.double() if p is not None else None for p in (x, w, b)),
                          t, g, **kw)
    what = f"{backend} {x.dtype} x{tuple(x.shape)} V={w.shape[0]} {reduction} T={temperature}"
    assert_within_torch_error(ours[0], theirs[0], ref[0], 2, what=what + " loss")
    for name, a, b_, r in zip(("dx", "dweight", "dbias"), ours[1], theirs[1], ref[1]):
        assert a.dtype == x.dtype and a.shape == r.shape
        assert_within_torch_error(a, b_, r, 3, what=f"{what} {name}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-C{c[1]}-V{c[2]}-{str(c[3])[6:]}-{c[4]}")
def test_parity_with_fp64(backend, case):
    lead, c, v, dtype, reduction, temperature, bias, ignore_index = case
    _skip_unrunnable(backend, dtype)
    if v > 10000 and backend == "torch":
        pytest.skip("the reference is the formula itself")
    x, w, b, t = _inputs(lead, c, v, dtype, bias, ignore_index)
    _check(backend, x, w, b, t, reduction, temperature, ignore_index)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_every_reduction_fp32(backend, reduction):
    x, w, b, t = _inputs((19,), 16, 70, torch.float32, True, -100)
    _check(backend, x, w, b, t, reduction, 1.5, -100)


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_inputs(backend):
    # x: every other column of a wider buffer, tokens transposed; weight: a column slice.
    x = randn(7, 12, 2, dtype=torch.float32)[:, :, 0].t()  # (12, 7), strides (2, 24)
    w = randn(90, 14, dtype=torch.float32, scale=0.4)[:, 3:10]  # (90, 7), row stride 14
    b = randn(180, dtype=torch.float32)[::2]
    t = torch.randint(0, 90, (12,), device=DEVICE)
    assert not x.is_contiguous() and not w.is_contiguous() and not b.is_contiguous()
    _check(backend, x, w, b, t, "mean", 1.0, -100)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_empty_and_all_ignored(backend, reduction):
    w = randn(11, 6, dtype=torch.float32).requires_grad_()
    x = randn(0, 6, dtype=torch.float32).requires_grad_()
    loss = kernels.linear_cross_entropy(x, w, torch.zeros(0, dtype=torch.long, device=DEVICE), reduction=reduction,
                                        backend=backend)
    expected = reference.linear_cross_entropy(x.detach(), w.detach(), torch.zeros(0, dtype=torch.long, device=DEVICE),
                                              reduction=reduction)
    torch.testing.assert_close(loss, expected, equal_nan=True)
    loss.sum().backward()
    assert x.grad.shape == x.shape and not w.grad.any()
    # Every token ignored: "mean" is NaN like PyTorch, the gradients are zero.
    x = randn(4, 6, dtype=torch.float32).requires_grad_()
    t = torch.full((4,), -100, device=DEVICE)
    loss = kernels.linear_cross_entropy(x, w, t, reduction=reduction, backend=backend)
    expected = reference.linear_cross_entropy(x.detach(), w.detach(), t, reduction=reduction)
    torch.testing.assert_close(loss, expected, equal_nan=True)
    w.grad = None
    loss.sum().backward()
    assert not x.grad.any() and not w.grad.any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_grad_and_int32_target(backend):
    x, w, b, t = _inputs((9,), 12, 40, torch.float32, True, -100)
    with torch.no_grad():
        loss = kernels.linear_cross_entropy(x, w, t.int(), b, backend=backend)
    torch.testing.assert_close(loss, reference.linear_cross_entropy(x, w, t, b))


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_of_range_target_raises(backend):
    if DEVICE == "cuda":
        pytest.skip("on CUDA an out-of-range target is a device-side assert (it would abort the context)")
    x, w, _, _ = _inputs((4,), 8, 10, torch.float32, False, -100)
    for bad in (10, -3):
        t = torch.tensor([0, bad, 2, 3], device=DEVICE)
        with pytest.raises(IndexError):
            kernels.linear_cross_entropy(x, w, t, backend=backend)


def _bad(backend, **changes):
    x, w, b, t = _inputs((4,), 8, 10, torch.float32, True, -100)
    args = dict(x=x, weight=w, target=t, bias=b)
    args.update(changes)
    kw = {k: args.pop(k) for k in list(args) if k not in ("x", "weight", "target", "bias")}
    return kernels.linear_cross_entropy(args["x"], args["weight"], args["target"], args["bias"], backend=backend, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input(backend):
    cases = [
        (dict(temperature=0.0), ValueError, "temperature"),
        (dict(temperature=-1.0), ValueError, "temperature"),
        (dict(temperature=float("inf")), ValueError, "temperature"),
        (dict(temperature=float("nan")), ValueError, "temperature"),
        (dict(weight=randn(10, 9)), ValueError, "weight.shape"),
        (dict(weight=randn(10, 8, 1)), ValueError, "weight"),
        (dict(target=torch.zeros(4, device=DEVICE)), TypeError, "target"),
        (dict(target=torch.zeros(4, dtype=torch.bool, device=DEVICE)), TypeError, "target"),
        (dict(target=torch.zeros(5, dtype=torch.long, device=DEVICE)), ValueError, "target"),
        (dict(target=[0, 1, 2, 3]), TypeError, "target"),
        (dict(reduction="avg"), ValueError, "reduction"),
        (dict(bias=randn(9)), ValueError, "bias"),
        (dict(ignore_index=1.5), TypeError, "ignore_index"),
        (dict(x=randn(4, 8, dtype=torch.float16)), TypeError, "dtype"),
        (dict(x=torch.zeros(4, 8, dtype=torch.long, device=DEVICE)), TypeError, "x"),
    ]
    for changes, error, words in cases:
        with pytest.raises(error, match=words):
            _bad(backend, **changes)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "torch"])
def test_torch_compile_fullgraph(backend):
    compile_backend = "inductor" if DEVICE == "cuda" else "aot_eager"
    x, w, b, t = _inputs((2, 9), 16, 50, torch.float32, True, -100)

    def f(x, w, b, t):
        return kernels.linear_cross_entropy(x, w, t, b, temperature=0.9, backend=backend) * 2

    compiled = torch.compile(f, fullgraph=True, backend=compile_backend)
    eager = _loss_and_grads(lambda x, w, t, b: f(x, w, b, t), x, w, b, t, torch.tensor(1.0, device=DEVICE))
    comp = _loss_and_grads(lambda x, w, t, b: compiled(x, w, b, t), x, w, b, t, torch.tensor(1.0, device=DEVICE))
    torch.testing.assert_close(comp[0], eager[0])
    for a, e in zip(comp[1], eager[1]):
        torch.testing.assert_close(a, e)


@pytest.mark.skipif(not INTERPRET and DEVICE != "cuda", reason="triton backend unavailable")
def test_triton_opcheck():
    from kernels.triton import linear_cross_entropy as lce
    x, w, b, t = _inputs((7,), 16, 40, torch.float32, True, -100)
    x, w, b = (p.requires_grad_() for p in (x, w, b))
    torch.library.opcheck(lce.lce_op, (x, w, b, t, 0.8, -100, "mean", True))
    torch.library.opcheck(lce.lce_op, (x, w, None, t, 1.0, -100, "none", True))
    torch.library.opcheck(lce.lce_op, (x.detach(), w.detach(), b.detach(), t, 1.0, -100, "sum", False))
    torch.library.opcheck(lce.lce_backward_op, (randn(7), x.detach(), w.detach(), b.detach(), t, 1.0, -100))


@pytest.mark.skipif("cuda" not in BACKENDS, reason="cuda backend unavailable or without linear_cross_entropy")
def test_cuda_opcheck():
    x, w, b, t = _inputs((7,), 16, 40, torch.float32, True, -100)
    x, w, b = (p.requires_grad_() for p in (x, w, b))
    op = torch.ops.gptk.linear_cross_entropy_cuda
    torch.library.opcheck(op, (x, w, b, t, 0.8, -100, "mean", True))
    torch.library.opcheck(op, (x, w, None, t, 1.0, -100, "none", True))
    torch.library.opcheck(torch.ops.gptk.linear_cross_entropy_cuda_backward,
                          (randn(7), x.detach(), w.detach(), b.detach(), t, 1.0, -100))


def test_model_loss_matches_logits_path():
    import gpt
    model = gpt.GPT(gpt.GPTConfig(vocab_size=61, block_size=16, n_layer=1, n_head=2, n_embd=16, backend="torch"))
    idx = torch.randint(0, 61, (2, 9))
    targets = torch.randint(0, 61, (2, 9))
    targets[0, :3] = -1
    logits, loss = model(idx, targets)
    assert logits is None and math.isfinite(loss.item())
    logits, loss_ref = model(idx, targets, return_logits=True)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits.view(-1, 61), targets.view(-1),
                                                                       ignore_index=-1))
    torch.testing.assert_close(loss, loss_ref)
