"""The cuda backend (csrc/): parity with fp64 for every op, forward and backward, on the
device here (its C++ CPU implementation without a GPU, the CUDA kernels with one).

Softmax's parity suite is tests/test_softmax.py, which runs every available backend,
this one included; the other ops' cases live here. Also: the C++ entry checks, opcheck
and torch.compile over the C++ ops, determinism, a tiny GPT trained on this backend
against the torch backend, and the build's error reporting. Compile checks of the CUDA
sources (ptxas spills, the full extension link) are in tests/test_cuda_build.py.
"""
import math
import os

import pytest
import torch

import gpt
import kernels
from helpers import DEVICE, DTYPES, TOL, assert_close, assert_within_torch_error, max_err, randn
from kernels import reference

REASON = kernels.unavailable_reason("cuda", DEVICE)
needs_ext = pytest.mark.skipif(REASON is not None, reason=f"cuda backend unavailable: {REASON}")
B = "cuda"


def test_extension_builds_on_cpu():
    # Not a skip: without a working build every other test here would skip silently.
    assert kernels.unavailable_reason("cuda", "cpu") is None
    assert "cuda" in kernels.available_backends("cpu")
    assert kernels.missing_ops("cuda") == []


def _grads(out, inputs, seed_shape_like=None):
    """Backprop a fixed random cotangent through `out` (a tensor or a tuple)."""
    outs = out if isinstance(out, tuple) else (out,)
    gs = [randn(*o.shape, dtype=o.dtype) for o in outs]
    torch.autograd.backward(outs, gs)
    return gs


def _leaf(t):
    return t.detach().clone().requires_grad_()


def _f64(t):
    return None if t is None else t.detach().double().requires_grad_()


# -----------------------------------------------------------------------------------------
# layer_norm and add_layer_norm
# -----------------------------------------------------------------------------------------

NORM_SHAPES = [(1, 1), (7, 33), (3, 5, 100), (2, 4097), (4, 768)]


def _norm_inputs(shape, dtype, affine):
    x = randn(*shape, dtype=dtype, scale=2.0) + 0.5
    n = shape[-1]
    w = randn(n, dtype=dtype) if affine else None
    b = randn(n, dtype=dtype) if affine else None
    return x, w, b


@needs_ext
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", NORM_SHAPES, ids=str)
def test_layer_norm_forward_backward(shape, dtype, affine):
    x, w, b = _norm_inputs(shape, dtype, affine)
    params = [t for t in (x, w, b) if t is not None]
    ours_in = [_leaf(t) for t in params]
    ref_in = [_f64(t) for t in params]
    y = kernels.layer_norm(ours_in[0], *(ours_in[1:] or [None, None]), 1e-5, backend=B)
    y64 = reference.layer_norm(ref_in[0], *(ref_in[1:] or [None, None]), 1e-5)
    assert y.dtype == dtype and y.shape == x.shape
    assert_close(y, y64, dtype)
    g = randn(*shape, dtype=dtype)
    y.backward(g)
    y64.backward(g.double())
    for name, a, r in zip("xwb", ours_in, ref_in):
        assert a.grad.dtype == dtype
        _assert_grad(a.grad, r.grad, dtype, f"d{name}")


def _assert_grad(ours, ref64, dtype, what):
    # Gradients are fp32 sums rounded once: one rounding of the result's own magnitude.
    scale = ref64.abs().max().item() if ref64.numel() else 1.0
    tol = TOL[dtype]
    err = max_err(ours, ref64)
    assert err <= tol["atol"] * max(scale, 1.0) + tol["rtol"] * scale, f"{what}: error {err:.3e}, scale {scale:.3e}"


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 1), (3, 5, 33), (2, 4097)], ids=str)
def test_add_layer_norm_forward_backward_both_outputs(shape, dtype):
    x, w, b = _norm_inputs(shape, dtype, True)
    r = randn(*shape, dtype=dtype)
    ours_in = [_leaf(t) for t in (x, r, w, b)]
    ref_in = [_f64(t) for t in (x, r, w, b)]
    y, s = kernels.add_layer_norm(*ours_in, 1e-5, backend=B)
    # The reference normalises the sum rounded to the storage dtype, as the fused op does.
    s64 = (ref_in[0] + ref_in[1]).to(dtype).double()
    y64 = reference.layer_norm(s64, ref_in[2], ref_in[3], 1e-5)
    assert_close(s, ref_in[0] + ref_in[1], dtype)
    assert_close(y, y64, dtype)
    gy, gs = randn(*shape, dtype=dtype), randn(*shape, dtype=dtype)
    torch.autograd.backward((y, s), (gy, gs))
    y64_true = reference.layer_norm(ref_in[0] + ref_in[1], ref_in[2], ref_in[3], 1e-5)
    torch.autograd.backward((y64_true, ref_in[0] + ref_in[1]), (gy.double(), gs.double()))
    for name, a, ref in zip(("x", "residual", "weight", "bias"), ours_in, ref_in):
        _assert_grad(a.grad, ref.grad, dtype, f"d{name}")
    assert torch.equal(ours_in[0].grad, ours_in[1].grad)


@needs_ext
def test_add_layer_norm_sum_unused_and_no_affine():
    x, r = randn(4, 50).requires_grad_(), randn(4, 50).requires_grad_()
    y, _ = kernels.add_layer_norm(x, r, None, None, backend=B)
    y.sum().backward()
    x64, r64 = _f64(x), _f64(r)
    reference.layer_norm(x64 + r64).sum().backward()
    assert_close(x.grad, x64.grad, torch.float32)
    assert_close(r.grad, r64.grad, torch.float32)


@needs_ext
def test_layer_norm_non_contiguous_and_special_values():
    base = randn(6, 80, scale=3.0)
    for x in (base[:, 5:60], base[::2], base.t().contiguous().t()[:, :33]):
        x = _leaf(x)
        y = kernels.layer_norm(x, None, None, backend=B)
        x64 = _f64(x)
        y64 = reference.layer_norm(x64)
        assert_close(y, y64, torch.float32)
        g = randn(*x.shape).t().contiguous().t()
        y.backward(g)
        y64.backward(g.double())
        assert_close(x.grad, x64.grad, torch.float32)
    x = randn(4, 30)
    x[1, 3] = float("nan")
    x[2, 7] = float("inf")
    w, b = randn(30), randn(30)
    ours = kernels.layer_norm(x, w, b, backend=B)
    torch.testing.assert_close(ours, reference.layer_norm(x, w, b), equal_nan=True, atol=1e-5, rtol=1e-5)


# -----------------------------------------------------------------------------------------
# attention
# -----------------------------------------------------------------------------------------

# (B, H, Tq, Tk, D, causal): square, Tq < Tk (end-aligned), decode (Tq = 1), non-causal
# including Tq > Tk, every supported head dim.
ATTN_CASES = [
    (1, 1, 1, 1, 16, True),
    (2, 3, 17, 17, 32, True),
    (1, 2, 5, 23, 64, True),
    (2, 1, 1, 37, 128, True),
    (1, 2, 70, 70, 64, True),
    (2, 2, 19, 13, 32, False),
    (1, 1, 9, 4, 16, False),
    (1, 2, 33, 65, 128, False),
]


def _attn_inputs(case, dtype):
    b, h, tq, tk, d, _ = case
    return randn(b, h, tq, d, dtype=dtype), randn(b, h, tk, d, dtype=dtype), randn(b, h, tk, d, dtype=dtype)


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", ATTN_CASES, ids=str)
def test_attention_forward_backward(case, dtype):
    causal = case[-1]
    q, k, v = (_leaf(t) for t in _attn_inputs(case, dtype))
    qt, kt, vt = (_leaf(t) for t in (q, k, v))
    q64, k64, v64 = (_f64(t) for t in (q, k, v))
    out = kernels.attention(q, k, v, causal=causal, backend=B)
    out_t = reference.attention(qt, kt, vt, causal=causal)
    out64 = reference.attention_explicit(q64, k64, v64, causal=causal)
    assert out.dtype == dtype and out.shape == q.shape
    assert_within_torch_error(out, out_t, out64, 2, what=f"out {case}")
    g = randn(*out.shape, dtype=dtype)
    for o, gg in ((out, g), (out_t, g), (out64, g.double())):
        o.backward(gg)
    for name, a, t, r in (("dq", q, qt, q64), ("dk", k, kt, k64), ("dv", v, vt, v64)):
        assert_within_torch_error(a.grad, t.grad, r.grad, 3, what=f"{name} {case}")


@needs_ext
def test_attention_model_layout_is_strided_not_copied():
    # The model's q/k/v come from (B, T, H, D).transpose(1, 2): unit-stride D, other dims strided.
    b, t, h, d = 2, 11, 3, 32
    qkv = randn(b, t, 3 * h * d).requires_grad_()
    q, k, v = (z.view(b, t, h, d).transpose(1, 2) for z in qkv.split(h * d, dim=2))
    assert not q.is_contiguous()
    out = kernels.attention(q, k, v, causal=True, backend=B)
    qkv64 = _f64(qkv)
    q64, k64, v64 = (z.view(b, t, h, d).transpose(1, 2) for z in qkv64.split(h * d, dim=2))
    out64 = reference.attention_explicit(q64, k64, v64, causal=True)
    assert_close(out, out64, torch.float32)
    g = randn(*out.shape)
    out.backward(g)
    out64.backward(g.double())
    assert_close(qkv.grad, qkv64.grad, torch.float32)
    # and a last dim that is not unit-stride is refused with the rule (issue 15), never misread
    qs = randn(1, 1, 4, 64)[..., ::2]
    with pytest.raises(ValueError, match="unit-stride last dim"):
        kernels.attention(qs, qs, qs, backend=B)


@needs_ext
def test_attention_scale_and_decode_step_matches_full():
    q, k, v = _attn_inputs((1, 2, 6, 6, 64, True), torch.float32)
    full = kernels.attention(q, k, v, causal=True, scale=0.3, backend=B)
    assert_close(full, reference.attention_explicit(q.double(), k.double(), v.double(), True, 0.3), torch.float32)
    last = kernels.attention(q[:, :, -1:], k, v, causal=True, scale=0.3, backend=B)
    torch.testing.assert_close(last, full[:, :, -1:], atol=1e-6, rtol=1e-6)


# -----------------------------------------------------------------------------------------
# gelu_linear
# -----------------------------------------------------------------------------------------

# (x shape, out_features)
GELU_CASES = [((1, 1), 1), ((3, 5, 33), 47), ((64, 128), 96), ((7, 768), 300)]


@needs_ext
@pytest.mark.parametrize("approximate", ["tanh", "none"])
@pytest.mark.parametrize("has_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", GELU_CASES, ids=str)
def test_gelu_linear_forward_backward(case, dtype, has_bias, approximate):
    shape, n = case
    k = shape[-1]
    x = randn(*shape, dtype=dtype)
    w = randn(n, k, dtype=dtype, scale=k ** -0.5)
    bias = randn(n, dtype=dtype) if has_bias else None
    params = [t for t in (x, w, bias) if t is not None]
    ours, torch_in = [_leaf(t) for t in params], [_leaf(t) for t in params]
    ref = [_f64(t) for t in params]
    args = lambda ts: (ts[0], ts[1], ts[2] if has_bias else None)  # noqa: E731
    out = kernels.gelu_linear(*args(ours), approximate=approximate, backend=B)
    out_t = reference.gelu_linear(*args(torch_in), approximate=approximate)
    out64 = reference.gelu_linear(*args(ref), approximate=approximate)
    assert out.dtype == dtype and out.shape == (*shape[:-1], n)
    assert_within_torch_error(out, out_t, out64, 2, what="out")
    g = randn(*out.shape, dtype=dtype)
    for o, gg in ((out, g), (out_t, g), (out64, g.double())):
        o.backward(gg)
    for name, a, t, r in zip(("dx", "dweight", "dbias"), ours, torch_in, ref):
        assert_within_torch_error(a.grad, t.grad, r.grad, 3, what=name)


@needs_ext
def test_gelu_linear_strided_inputs_and_special_values():
    x = randn(8, 40)[:, 3:36]
    w = randn(33, 20).t()  # (20, 33) with transposed strides, as a tied/transposed weight is
    out = kernels.gelu_linear(x, w, None, backend=B)
    assert_close(out, reference.gelu_linear(x.double(), w.double()), torch.float32)
    x = randn(3, 4)
    x[1, 2] = float("nan")
    w = randn(5, 4)
    torch.testing.assert_close(kernels.gelu_linear(x, w, backend=B), reference.gelu_linear(x, w), equal_nan=True,
                               atol=1e-5, rtol=1e-5)


# -----------------------------------------------------------------------------------------
# Every op: empty input, bad input at the C++ boundary, opcheck, torch.compile, determinism
# -----------------------------------------------------------------------------------------

@needs_ext
def test_empty_inputs_every_op():
    e = torch.empty
    x = e(0, 8, device=DEVICE).requires_grad_()
    w, b = randn(8).requires_grad_(), randn(8).requires_grad_()
    y = kernels.layer_norm(x, w, b, backend=B)
    y.sum().backward()
    assert y.shape == (0, 8) and torch.equal(w.grad, torch.zeros_like(w))
    y, s = kernels.add_layer_norm(x, x, w, b, backend=B)
    assert y.shape == s.shape == (0, 8)
    y = kernels.layer_norm(e(3, 0, device=DEVICE), None, None, backend=B)
    assert y.shape == (3, 0)
    for shape in ((0, 2, 5, 16), (2, 0, 5, 16), (1, 2, 0, 16)):
        q = e(*shape, device=DEVICE).requires_grad_()
        o = kernels.attention(q, q, q, causal=True, backend=B)
        o.sum().backward()
        assert o.shape == shape and q.grad.shape == shape
    q = randn(1, 1, 3, 16)
    kv = e(1, 1, 0, 16, device=DEVICE)
    torch.testing.assert_close(kernels.attention(q, kv, kv, causal=False, backend=B),
                               reference.attention(q, kv, kv, causal=False))
    x = e(0, 5, device=DEVICE).requires_grad_()
    w = randn(7, 5).requires_grad_()
    bias = randn(7).requires_grad_()
    out = kernels.gelu_linear(x, w, bias, backend=B)
    out.sum().backward()
    assert out.shape == (0, 7) and torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(bias.grad, torch.zeros_like(bias))
    out = kernels.gelu_linear(e(4, 0, device=DEVICE), e(3, 0, device=DEVICE), torch.ones(3, device=DEVICE), backend=B)
    assert_close(out, reference.gelu_linear(torch.zeros(4, 0).double(), torch.zeros(3, 0).double(),
                                            torch.ones(3).double()), torch.float32)


@needs_ext
def test_bad_input_through_the_api_reads_like_every_backend():
    x = randn(2, 8)
    with pytest.raises(ValueError, match="weight must have shape"):
        kernels.layer_norm(x, randn(7), None, backend=B)
    with pytest.raises(TypeError, match="floating-point"):
        kernels.layer_norm(torch.ones(2, 3, dtype=torch.int32), backend=B)
    with pytest.raises(TypeError, match="float64"):
        kernels.gelu_linear(x.double(), randn(3, 8).double(), backend=B)
    with pytest.raises(ValueError, match="head dim"):
        kernels.attention(randn(1, 1, 2, 44), randn(1, 1, 2, 44), randn(1, 1, 2, 44), backend=B)
    with pytest.raises(ValueError, match="Tq <= Tk"):
        kernels.attention(randn(1, 1, 5, 16), randn(1, 1, 2, 16), randn(1, 1, 2, 16), backend=B)
    with pytest.raises(ValueError, match="residual"):
        kernels.add_layer_norm(x, randn(2, 7), None, None, backend=B)
    with pytest.raises(ValueError, match="eps"):
        kernels.layer_norm(x, None, None, eps=0.0, backend=B)


@needs_ext
@pytest.mark.parametrize("call, match", [
    (lambda: torch.ops.gptk.softmax_cuda(torch.ones(2, 3, dtype=torch.int64), 1.0, -1), "x must be float32"),
    (lambda: torch.ops.gptk.softmax_cuda(torch.ones(2, 3), 0.0, -1), "temperature must be finite and > 0"),
    (lambda: torch.ops.gptk.softmax_cuda(torch.ones(2, 3), 1.0, 2), "dim=2 is out of range"),
    (lambda: torch.ops.gptk.softmax_cuda_backward(torch.ones(2, 4), torch.ones(2, 3), 1.0, -1), "dy must have y's shape"),
    (lambda: torch.ops.gptk.layer_norm_cuda(torch.ones(2, 3), torch.ones(4), None, 1e-5), r"weight must have shape \(3,\)"),
    (lambda: torch.ops.gptk.layer_norm_cuda(torch.ones(2, 3), None, torch.ones(3).half(), 1e-5), "bias has dtype"),
    (lambda: torch.ops.gptk.layer_norm_cuda(torch.ones(2, 3), None, None, -1.0), "eps must be finite and > 0"),
    (lambda: torch.ops.gptk.layer_norm_cuda(torch.tensor(1.0), None, None, 1e-5), "at least one dim"),
    (lambda: torch.ops.gptk.add_layer_norm_cuda(torch.ones(2, 3), torch.ones(3, 3), None, None, 1e-5),
     "residual must have x's shape"),
    (lambda: torch.ops.gptk.layer_norm_cuda_backward(torch.ones(2, 3), torch.ones(2, 3), None, torch.ones(3),
                                                      torch.ones(2)), "mean must hold one value per row"),
    (lambda: torch.ops.gptk.attention_cuda(torch.ones(1, 1, 2, 44), torch.ones(1, 1, 2, 44),
                                           torch.ones(1, 1, 2, 44), True, 1.0), "head dim D=44"),
    (lambda: torch.ops.gptk.attention_cuda(torch.ones(1, 1, 2, 16), torch.ones(1, 1, 3, 16),
                                           torch.ones(1, 1, 4, 16), True, 1.0), "k and v must have the same shape"),
    (lambda: torch.ops.gptk.attention_cuda(torch.ones(1, 1, 5, 16), torch.ones(1, 1, 3, 16),
                                           torch.ones(1, 1, 3, 16), True, 1.0), "Tq <= Tk"),
    (lambda: torch.ops.gptk.attention_cuda(torch.ones(1, 2, 16), torch.ones(1, 2, 16),
                                           torch.ones(1, 2, 16), True, 1.0), "q must be 4-D"),
    (lambda: torch.ops.gptk.attention_cuda(torch.ones(1, 1, 2, 32)[..., ::2], torch.ones(1, 1, 2, 16),
                                           torch.ones(1, 1, 2, 16), True, 1.0), "unit-stride last dim"),
    (lambda: torch.ops.gptk.attention_cuda(torch.ones(1, 1, 2, 16), torch.ones(1, 1, 2, 16).half(),
                                           torch.ones(1, 1, 2, 16), True, 1.0), "k has dtype"),
    (lambda: torch.ops.gptk.gelu_linear_cuda(torch.ones(2, 3), torch.ones(4, 5), None, "tanh"), "in_features mismatch"),
    (lambda: torch.ops.gptk.gelu_linear_cuda(torch.ones(2, 3), torch.ones(4, 3), None, "exact"),
     "approximate must be 'tanh' or 'none'"),
    (lambda: torch.ops.gptk.gelu_linear_cuda(torch.ones(2, 3), torch.ones(4, 3), torch.ones(3), "tanh"),
     r"bias must have shape \(4,\)"),
])
def test_cpp_entry_checks_name_the_argument(call, match):
    # TORCH_CHECK raises RuntimeError; TORCH_CHECK_VALUE (head dim, strides) ValueError.
    with pytest.raises((RuntimeError, ValueError), match=match):
        call()


@needs_ext
def test_cpp_kv_lengths_checks():
    q = torch.ones(2, 1, 1, 16, device=DEVICE)
    ok = torch.tensor([1, 2], device=DEVICE)
    with pytest.raises(TypeError, match="kv_lengths must be an int32 or int64 tensor"):
        torch.ops.gptk.attention_cuda(q, q, q, True, 1.0, ok.float())
    with pytest.raises(ValueError, match=r"kv_lengths must have shape \(B,\) = \(2,\)"):
        torch.ops.gptk.attention_cuda(q, q, q, True, 1.0, ok[:1])
    if DEVICE == "cuda":
        with pytest.raises(ValueError, match="kv_lengths is on cpu"):
            torch.ops.gptk.attention_cuda(q, q, q, True, 1.0, ok.cpu())


@needs_ext
def test_opcheck_every_op():
    x = randn(3, 5, 19, scale=2.0)
    w, b = randn(19), randn(19)
    ops = torch.ops.gptk
    torch.library.opcheck(ops.softmax_cuda.default, (x.requires_grad_(), 0.7, 1))
    torch.library.opcheck(ops.layer_norm_cuda.default, (_leaf(x), _leaf(w), _leaf(b), 1e-5))
    torch.library.opcheck(ops.layer_norm_cuda.default, (_leaf(x), None, None, 1e-5))
    torch.library.opcheck(ops.add_layer_norm_cuda.default, (_leaf(x), randn(3, 5, 19).requires_grad_(), _leaf(w),
                                                            None, 1e-5))
    y, mean, rstd = ops.layer_norm_cuda(x.detach(), w, b, 1e-5)
    torch.library.opcheck(ops.layer_norm_cuda_backward.default, (randn(3, 5, 19), x.detach(), w, mean, rstd))
    q, k, v = (randn(2, 2, 7, 16).requires_grad_() for _ in range(3))
    torch.library.opcheck(ops.attention_cuda.default, (q, k, v, True, 0.25))
    out, lse = ops.attention_cuda(q.detach(), k.detach(), v.detach(), True, 0.25)
    torch.library.opcheck(ops.attention_cuda_backward.default, (randn(2, 2, 7, 16), q.detach(), k.detach(), v.detach(),
                                                                out, lse, True, 0.25))
    lengths = torch.tensor([7, 4], dtype=torch.int32, device=DEVICE)
    torch.library.opcheck(ops.attention_cuda.default, (q.detach(), k.detach(), v.detach(), False, 0.25, lengths))
    xl, wl, bl = randn(4, 9).requires_grad_(), randn(6, 9).requires_grad_(), randn(6).requires_grad_()
    torch.library.opcheck(ops.gelu_linear_cuda.default, (xl, wl, bl, "tanh"))
    torch.library.opcheck(ops.gelu_linear_cuda.default, (xl, wl, None, "none"))


@needs_ext
def test_torch_compile_fullgraph_every_op():
    compile_backend = "inductor" if DEVICE == "cuda" else "aot_eager"

    def block(x, r, w, b, wf, bf):
        h, s = kernels.add_layer_norm(x, r, w, b, backend=B)
        q = h.view(2, 5, 2, 16).transpose(1, 2)
        a = kernels.attention(q, q, q, causal=True, backend=B).transpose(1, 2).reshape(2, 5, 32)
        z = kernels.gelu_linear(kernels.layer_norm(a + s, w, b, backend=B), wf, bf, backend=B)
        return kernels.softmax(z, 0.9, backend=B).sum(-1) + z.mean(-1)

    inputs = [randn(2, 5, 32), randn(2, 5, 32), randn(32), randn(32), randn(40, 32, scale=0.2), randn(40)]
    compiled = torch.compile(block, fullgraph=True, backend=compile_backend)
    a_in = [_leaf(t) for t in inputs]
    e_in = [_leaf(t) for t in inputs]
    out = compiled(*a_in)
    ref = block(*e_in)
    out.sum().backward()
    ref.sum().backward()
    assert_close(out, ref, torch.float32)
    for a, e in zip(a_in, e_in):
        assert_close(a.grad, e.grad, torch.float32)


@needs_ext
def test_deterministic_and_thread_count_independent():
    x, w, b = _leaf(randn(300, 96)), _leaf(randn(96)), _leaf(randn(96))
    q, k, v = (_leaf(randn(2, 2, 40, 32)) for _ in range(3))
    wf, bf = _leaf(randn(50, 96)), _leaf(randn(50))
    threads = torch.get_num_threads()
    results = []
    try:
        for n_threads in (threads, 1, threads):
            torch.set_num_threads(n_threads)
            for t in (x, w, b, q, k, v, wf, bf):
                t.grad = None
            y = kernels.layer_norm(x, w, b, backend=B)
            o = kernels.attention(q, k, v, backend=B)
            h = kernels.gelu_linear(x, wf, bf, backend=B)
            torch.autograd.backward((y, o, h), (torch.ones_like(y), torch.ones_like(o), torch.ones_like(h)))
            results.append([t.detach().clone() for t in (y, o, h)] +
                           [t.grad.clone() for t in (x, w, b, q, k, v, wf, bf)])
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert all(torch.equal(a, c) for a, c in zip(results[0], other))


# -----------------------------------------------------------------------------------------
# A tiny GPT trained on this backend follows the torch backend step for step
# -----------------------------------------------------------------------------------------

@needs_ext
def test_tiny_gpt_trains_on_cuda_backend_like_torch():
    cfg = dict(vocab_size=61, block_size=32, n_layer=2, n_head=2, n_embd=32)
    torch.manual_seed(0)
    ours = gpt.GPT(gpt.GPTConfig(**cfg, backend=B)).to(DEVICE)
    ref = gpt.GPT(gpt.GPTConfig(**cfg, backend="torch")).to(DEVICE)
    ref.load_state_dict(ours.state_dict())
    opts = [torch.optim.AdamW(m.parameters(), lr=3e-3) for m in (ours, ref)]
    data = torch.arange(0, 61, device=DEVICE).repeat(8)
    g = torch.Generator().manual_seed(0)
    losses = []
    for step in range(40):
        i = torch.randint(0, len(data) - 33, (8,), generator=g)
        x = torch.stack([data[j:j + 32] for j in i])
        y = torch.stack([data[j + 1:j + 33] for j in i])
        pair = []
        for model, opt in zip((ours, ref), opts):
            _, loss = model(x, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            pair.append(loss.item())
        losses.append(pair)
    for step, (a, r) in enumerate(losses):
        assert math.isclose(a, r, rel_tol=2e-3, abs_tol=2e-4), (step, a, r)
    assert losses[-1][0] < 0.5 * losses[0][0], losses[::10]
    for (name, p), (_, pr) in zip(ours.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p, pr, atol=5e-3, rtol=5e-3, msg=name)
    # and KV-cached greedy decoding gives the torch backend's tokens
    idx = torch.randint(0, 61, (2, 5), device=DEVICE)
    ours.eval(), ref.eval()
    assert torch.equal(ours.generate(idx, 12, temperature=0), ref.generate(idx, 12, temperature=0))


# -----------------------------------------------------------------------------------------
# The library beside the Triton ops, and a failed build
# -----------------------------------------------------------------------------------------

@needs_ext
def test_cpp_library_and_triton_custom_ops_share_the_namespace():
    pytest.importorskip("triton")
    from helpers import triton_backend_usable
    import kernels.triton.softmax  # noqa: F401  registers gptk::softmax_triton in Python
    assert hasattr(torch.ops.gptk, "softmax_triton") and hasattr(torch.ops.gptk, "softmax_cuda")
    x = randn(3, 40)
    ours = kernels.softmax(x, 0.5, backend=B)
    if triton_backend_usable():
        torch.testing.assert_close(ours, kernels.softmax(x, 0.5, backend="triton"), atol=1e-6, rtol=1e-6)


def test_failed_build_reports_first_error_and_log(monkeypatch, tmp_path):
    from kernels.cuda import _build
    bad = tmp_path / "broken.cpp"
    bad.write_text("int f() { return undefined_symbol_here; }\n")
    monkeypatch.setenv("GPTK_BUILD_DIR", str(tmp_path / "build"))
    monkeypatch.setattr(_build, "sources", lambda with_cuda: [str(bad)])
    monkeypatch.setattr(_build, "flags", lambda with_cuda: {"extra_cflags": ["-O0"]})
    monkeypatch.setattr(_build, "source_hash", lambda with_cuda: "broken")
    with pytest.raises(_build.BuildError) as info:
        _build.jit_build(False)
    msg = str(info.value)
    assert "broken.cpp" in msg and "error" in msg and "undefined_symbol_here" in msg
    log = msg.split("full log: ")[1].split(";")[0]
    assert "undefined_symbol_here" in open(log).read()


def test_failed_build_leaves_other_backends_working(monkeypatch):
    import kernels.cuda as ext
    monkeypatch.setattr(ext, "_STATE", dict(ext._STATE, loaded=False, error="x.cpp:1: error: boom (full log: /l)"))
    assert "cuda" not in kernels.available_backends("cpu")
    assert "failed to build" in kernels.unavailable_reason("cuda", "cpu")
    with pytest.raises(RuntimeError, match="failed to build: x.cpp:1: error: boom"):
        kernels.layer_norm(randn(2, 3), backend=B)
    kernels.layer_norm(randn(2, 3), backend="torch")
    assert kernels.softmax(randn(2, 3).double()).dtype == torch.float64  # auto still resolves


def test_first_error_line_parsing():
    from kernels.cuda._build import first_error_line
    log = ("ninja: build stopped\n[1/3] c++ -c a.cpp\nFAILED: a.o\n"
           "/src/a.cpp:3:5: error: 'x' was not declared\n/src/a.cpp:9:1: error: second\n")
    assert first_error_line(log) == "/src/a.cpp:3:5: error: 'x' was not declared"
    assert first_error_line("ld: cannot find -lfoo\n") == "ld: cannot find -lfoo"


def _asan_runtime():
    """(libasan, libstdc++) to preload, or None: g++ prints the bare name when it has none."""
    import shutil
    import subprocess
    if shutil.which("g++") is None:
        return None
    libs = [subprocess.run(["g++", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
            for name in ("libasan.so", "libstdc++.so")]
    return libs if all(os.path.isabs(p) and os.path.exists(p) for p in libs) else None


@pytest.mark.skipif(_asan_runtime() is None, reason="g++'s AddressSanitizer runtime (libasan) is not installed")
def test_cpu_implementation_is_clean_under_address_sanitizer():
    """The C++ CPU code, built with -fsanitize=address (GPTK_SANITIZE, a separate cached
    build), runs every op forward and backward on every launch path and the error paths of
    bad calls (tests/cuda_ops_smoke.py) with no heap, stack or use-after-free error."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, GPTK_SANITIZE="address", GPTK_BUILD_CUDA="0", PYTHONPATH=root,
               LD_PRELOAD=" ".join(_asan_runtime()),
               ASAN_OPTIONS="detect_leaks=0:verify_asan_link_order=0:abort_on_error=1")
    proc = subprocess.run([sys.executable, os.path.join(root, "tests", "cuda_ops_smoke.py"), "cpu"],
                          capture_output=True, text=True, env=env, timeout=1800)
    assert proc.returncode == 0 and "AddressSanitizer" not in proc.stderr, proc.stderr[-6000:]
    assert proc.stdout.strip().endswith("ok")
