"""Layer norm and the fused residual-add layer norm: parity with fp64, all gradients, edge
values, bad input, determinism and registration, per compiled backend."""
import pytest
import torch
import torch.nn.functional as F

import kernels
from helpers import DEVICE, DTYPES, INTERPRET, assert_close, backends_here, needs_gpu, randn

BACKENDS = backends_here()
pytestmark = pytest.mark.skipif(not BACKENDS, reason="no compiled backend runs here")

SHAPES = [(1, 1, 1), (4, 768), (3, 7, 1023), (2, 4097)]
WIDE = (8, 65536)  # the widest supported row: streamed in chunks
AFFINE = ["weight+bias", "weight", "bias", "none"]


def _params(n, dtype, affine):
    # Non-trivial weight and bias, so a swapped or dropped term shows.
    w = randn(n, dtype=dtype, scale=0.5) + 1.0 if "weight" in affine else None
    b = randn(n, dtype=dtype, scale=0.5) if "bias" in affine else None
    return [p.to(dtype).requires_grad_() if p is not None else None for p in (w, b)]


def _leaf64(t):
    return t.detach().double().requires_grad_() if t is not None else None


def _check_grads(ours, refs, dtype):
    for name, a, r in zip(("x", "weight", "bias"), ours, refs):
        if a is None:
            continue
        assert a.grad is not None, f"no gradient for {name}"
        assert a.grad.dtype == a.dtype and a.grad.shape == a.shape, name
        assert_close(a.grad, r.grad, dtype, msg=name)


def _layer_norm_case(backend, dtype, shape, affine, x=None):
    x = (randn(*shape, dtype=dtype, scale=2.0) + 0.5 if x is None else x).requires_grad_()
    w, b = _params(shape[-1], dtype, affine)
    y = kernels.layer_norm(x, w, b, 1e-5, backend=backend)
    assert y.dtype == dtype and y.shape == x.shape
    x64, w64, b64 = map(_leaf64, (x, w, b))
    y64 = F.layer_norm(x64, shape[-1:], w64, b64, 1e-5)
    assert_close(y, y64, dtype, msg="y")
    g = randn(*shape, dtype=dtype)
    y.backward(g)
    y64.backward(g.double())
    _check_grads((x, w, b), (x64, w64, b64), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_layer_norm_forward_backward(backend, dtype, shape, affine):
    _layer_norm_case(backend, dtype, shape, affine)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("affine", ["weight+bias", "none"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_layer_norm_wide_rows(backend, dtype, affine):
    # The chunked forward and the two-kernel backward, at the widest supported row.
    _layer_norm_case(backend, dtype, WIDE, affine)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n", [8192, 8193, 16384, 16385])  # each side of the fwd and bwd path switches
def test_layer_norm_path_boundaries(backend, n):
    _layer_norm_case(backend, torch.float32, (3, n), "weight+bias")


def _add_layer_norm_case(backend, dtype, shape, affine, use=("y", "s"), x=None, r=None):
    x = (randn(*shape, dtype=dtype, scale=2.0) if x is None else x).requires_grad_()
    r = (randn(*shape, dtype=dtype, scale=2.0) + 1.0 if r is None else r).requires_grad_()
    w, b = _params(shape[-1], dtype, affine)
    y, s = kernels.add_layer_norm(x, r, w, b, 1e-5, backend=backend)
    assert y.dtype == s.dtype == dtype and y.shape == s.shape == x.shape
    # s is x + r rounded to the storage dtype (exactly what torch returns), and y is the
    # norm of that s: the fp64 reference starts from it as a leaf.
    # The interpreter truncates fp32 -> bf16 (no round-to-nearest, even with "rtne"), so s
    # can be one bf16 ulp off there; compiled kernels round like torch and match exactly.
    ulp = 2.0 ** -7 if INTERPRET and dtype == torch.bfloat16 else 0.0
    torch.testing.assert_close(s, (x + r).detach(), atol=0, rtol=ulp)
    s64, w64, b64 = map(_leaf64, (s, w, b))
    y64 = F.layer_norm(s64, shape[-1:], w64, b64, 1e-5)
    assert_close(y, y64, dtype, msg="y")
    gy, gs = randn(*shape, dtype=dtype), randn(*shape, dtype=dtype)
    loss = sum((out * g).sum() for name, out, g in (("y", y, gy), ("s", s, gs)) if name in use)
    loss64 = sum((out * g.double()).sum() for name, out, g in (("y", y64, gy), ("s", s64, gs)) if name in use)
    loss.backward()
    loss64.backward()
    # x and residual both get d(loss)/ds: the norm's gradient plus s's own.
    for name, leaf in (("x", x), ("residual", r)):
        assert leaf.grad.dtype == dtype and leaf.grad.shape == shape
        assert_close(leaf.grad, s64.grad, dtype, msg=name)
    for name, p, p64 in (("weight", w, w64), ("bias", b, b64)):
        if p is None:
            continue
        if "y" in use:
            assert_close(p.grad, p64.grad, dtype, msg=name)
        else:
            # an unused output: no gradient (triton), or an all-zero one (the C++ ops return both)
            assert p.grad is None or not p.grad.any()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("affine", ["weight+bias", "none"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_add_layer_norm_forward_backward(backend, dtype, shape, affine):
    _add_layer_norm_case(backend, dtype, shape, affine)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("use", [("y",), ("s",)], ids=str)
@pytest.mark.parametrize("shape", [(4, 768), (2, 16385)], ids=str)
def test_add_layer_norm_one_output_used(backend, use, shape):
    _add_layer_norm_case(backend, torch.float32, shape, "weight+bias", use=use)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_add_layer_norm_wide_rows(backend, dtype):
    _add_layer_norm_case(backend, dtype, WIDE, "weight+bias")


@pytest.mark.parametrize("backend", BACKENDS)
def test_add_layer_norm_same_tensor_twice(backend):
    # x + x: both gradients land on the one leaf and add up.
    x = randn(5, 300, scale=2.0).requires_grad_()
    w, b = _params(300, torch.float32, "weight+bias")
    y, s = kernels.add_layer_norm(x, x, w, b, backend=backend)
    x64 = _leaf64(x)
    y64, s64 = kernels.add_layer_norm(x64, x64, _leaf64(w), _leaf64(b), backend="torch")
    g = randn(5, 300)
    ((y + s) * g).sum().backward()
    ((y64 + s64) * g.double()).sum().backward()
    assert_close(x.grad, x64.grad, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_rows_are_not_copied(backend):
    from kernels.triton import _launch
    base = randn(9, 1000, scale=2.0)
    for x in (base[:, 3:500], base[::2], base.view(3, 3, 1000)[:, :, 7:900], base[4]):
        assert _launch.as_rows(x).data_ptr() == x.data_ptr()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n", [500, 20000])
def test_non_contiguous_inputs(backend, n):
    base = randn(9, 2 * n, scale=2.0) + 1.0
    cases = (base[:, 3:3 + n], base[::2, :n], base.view(3, 3, 2 * n)[:, 1:, 1:n + 1], base[:, ::2])
    for x in cases:
        _layer_norm_case(backend, torch.float32, tuple(x.shape), "weight+bias", x=x.detach())
        r = randn(*reversed(x.shape)).t() if x.dim() == 2 else randn(*x.shape)  # transposed: copied
        _add_layer_norm_case(backend, torch.float32, tuple(x.shape), "weight+bias", x=x.detach(), r=r)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_gradients(backend):
    x = randn(6, 333, scale=2.0).requires_grad_()
    w, b = _params(333, torch.float32, "weight+bias")
    y = kernels.layer_norm(x, w, b, backend=backend)
    x64, w64, b64 = map(_leaf64, (x, w, b))
    y64 = F.layer_norm(x64, (333,), w64, b64)
    g = randn(333, 6).t()  # strided gradient rows
    y.backward(g)
    y64.backward(g.double())
    _check_grads((x, w, b), (x64, w64, b64), torch.float32)
    # The broadcast gradient of .sum() has stride 0.
    x.grad = None
    kernels.layer_norm(x, w, None, backend=backend).sum().backward()
    x64.grad = None
    F.layer_norm(x64, (333,), w64, None).sum().backward()
    assert_close(x.grad, x64.grad, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_repeat_calls_follow_weight_updates(backend):
    # Rows of an odd width start at every 16-byte phase: the triton forward reads w and b
    # from per-call phase copies, which its replayed launch (from the second call on, on a
    # GPU: the interpreter forms no replays; tests/test_host_path.py checks the replay's
    # arguments on kernels compiled for sm_90) must make again from the current values, as
    # an optimizer step changes them in place.
    x, r = randn(5, 1023, scale=2.0), randn(5, 1023)
    w, b = _params(1023, torch.float32, "weight+bias")
    for step in range(4):
        y = kernels.layer_norm(x, w, b, backend=backend)
        y2, s2 = kernels.add_layer_norm(x, r, w, b, backend=backend)
        ref = F.layer_norm(x.double(), (1023,), w.double(), b.double())
        assert_close(y, ref, torch.float32, msg=f"step {step}")
        assert_close(y2, F.layer_norm(s2.double(), (1023,), w.double(), b.double()), torch.float32)
        with torch.no_grad():
            w.mul_(1.5).add_(0.25)
            b.sub_(0.5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_weight_and_bias(backend):
    x = randn(4, 300, scale=2.0).requires_grad_()
    w_strided = (randn(300, 2) + 1.0)[:, 0].requires_grad_()  # columns of a matrix: stride 2
    b_strided = randn(300, 2)[:, 1].requires_grad_()
    assert w_strided.stride() == (2,) and b_strided.stride() == (2,)
    y = kernels.layer_norm(x, w_strided, b_strided, backend=backend)
    x64, w64, b64 = map(_leaf64, (x, w_strided, b_strided))
    y64 = F.layer_norm(x64, (300,), w64, b64)
    assert_close(y, y64, torch.float32)
    g = randn(4, 300)
    y.backward(g)
    y64.backward(g.double())
    _check_grads((x, w_strided, b_strided), (x64, w64, b64), torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("grad_of", ["x", "residual"])
def test_add_layer_norm_one_input_requires_grad(backend, grad_of):
    x, r = randn(3, 200, scale=2.0), randn(3, 200)
    leaf = (x if grad_of == "x" else r).requires_grad_()
    y, s = kernels.add_layer_norm(x, r, None, None, backend=backend)
    g = randn(3, 200)
    (y * g).sum().backward()
    s64 = s.detach().double().requires_grad_()
    (F.layer_norm(s64, (200,)) * g.double()).sum().backward()
    assert_close(leaf.grad, s64.grad, torch.float32)
    assert (r if grad_of == "x" else x).grad is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_dim_input_and_partial_requires_grad(backend):
    x = randn(777, scale=3.0).requires_grad_()
    w, b = _params(777, torch.float32, "weight+bias")
    w.requires_grad_(False)  # a frozen weight: no dw, the rest as usual
    g = randn(777)
    kernels.layer_norm(x, w, b, backend=backend).backward(g)
    assert w.grad is None
    x64, b64 = _leaf64(x), _leaf64(b)
    F.layer_norm(x64, (777,), w.double(), b64).backward(g.double())
    _check_grads((x, None, b), (x64, None, b64), torch.float32)
    # Only the weight needs a gradient.
    w.requires_grad_()
    kernels.layer_norm(x.detach(), w, None, backend=backend).backward(g)
    w64 = _leaf64(w)
    F.layer_norm(x.detach().double(), (777,), w64).backward(g.double())
    assert_close(w.grad, w64.grad, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [1, 768, 20000])
@pytest.mark.parametrize("value", [0.0, 3.7, -1e4])
def test_constant_rows_stay_finite(backend, dtype, n, value):
    x = torch.full((3, n), value, device=DEVICE, dtype=dtype).requires_grad_()
    w, b = _params(n, dtype, "weight+bias")
    y = kernels.layer_norm(x, w, b, backend=backend)
    assert torch.isfinite(y).all()
    # var = 0: y is exactly the bias (the row is centred exactly), like fp64 torch.
    assert torch.equal(y, b.detach().expand_as(y))
    g = randn(3, n, dtype=dtype)
    y.backward(g)
    x64, w64, b64 = map(_leaf64, (x, w, b))
    F.layer_norm(x64, (n,), w64, b64).backward(g.double())
    for t in (x.grad, w.grad, b.grad):
        assert torch.isfinite(t).all()
    _check_grads((x, w, b), (x64, w64, b64), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n", [33, 20000])  # single-pass and chunked forward
def test_special_values_match_torch(backend, n):
    x = randn(5, n, scale=3.0)
    x[0, 7] = float("nan")      # NaN poisons its row only
    x[1, 0] = float("inf")      # inf (here the first element, the shift) makes the row NaN
    x[2, 5] = -float("inf")
    x[3, 1] = 1e15              # huge but finite (its square too): fine
    w, b = _params(n, torch.float32, "weight+bias")
    y = kernels.layer_norm(x, w, b, backend=backend)
    expected = F.layer_norm(x.double(), (n,), w.double(), b.double())
    torch.testing.assert_close(y.double().cpu(), expected.cpu(), equal_nan=True, atol=1e-5, rtol=1e-5)
    assert torch.isnan(y[:3]).all() and torch.isfinite(y[3:]).all()
    y2, s = kernels.add_layer_norm(x, torch.zeros_like(x), w, b, backend=backend)
    torch.testing.assert_close(y2, y, equal_nan=True, atol=0, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(0, 5), (3, 0), (0,), (2, 0, 4)], ids=str)
def test_empty(backend, shape):
    x = torch.empty(shape, device=DEVICE).requires_grad_()
    w, b = _params(shape[-1], torch.float32, "weight+bias")
    y = kernels.layer_norm(x, w, b, backend=backend)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))
    r = torch.empty(shape, device=DEVICE).requires_grad_()
    y, s = kernels.add_layer_norm(x, r, w, b, backend=backend)
    assert y.shape == s.shape == x.shape
    (y.sum() + s.sum()).backward()
    assert r.grad.shape == r.shape


# ------------------------------------------------------------------------------------------
# Bad input: the same error on every backend
# ------------------------------------------------------------------------------------------

ALL = BACKENDS + ["torch"]


@pytest.mark.parametrize("backend", ALL)
def test_bad_weight_and_bias_shapes(backend):
    x = randn(4, 10)
    for kwargs, name in ((dict(weight=randn(9)), "weight"), (dict(bias=randn(10, 1)), "bias"),
                         (dict(weight=randn(4, 10)), "weight"), (dict(bias=randn(())), "bias")):
        with pytest.raises(ValueError, match=rf"{name} must have shape \(10,\)"):
            kernels.layer_norm(x, backend=backend, **kwargs)
        with pytest.raises(ValueError, match=rf"{name} must have shape \(10,\)"):
            kernels.add_layer_norm(x, randn(4, 10), backend=backend, **kwargs)
    with pytest.raises(ValueError, match="residual must have x's shape"):
        kernels.add_layer_norm(x, randn(4, 11), backend=backend)
    with pytest.raises(ValueError, match="0-d"):
        kernels.layer_norm(randn(()), backend=backend)


@pytest.mark.parametrize("backend", ALL)
def test_mismatched_dtypes_and_devices(backend):
    x = randn(4, 10)
    half = randn(10, dtype=torch.float16)
    with pytest.raises(TypeError, match="weight has dtype torch.float16 but x has torch.float32"):
        kernels.layer_norm(x, half, backend=backend)
    with pytest.raises(TypeError, match="bias has dtype torch.float16"):
        kernels.layer_norm(x, randn(10), half, backend=backend)
    with pytest.raises(TypeError, match="residual has dtype torch.bfloat16"):
        kernels.add_layer_norm(x, randn(4, 10, dtype=torch.bfloat16), backend=backend)
    meta = torch.empty(10, device="meta")
    with pytest.raises(ValueError, match="weight is on meta"):
        kernels.layer_norm(x, meta, backend=backend)
    with pytest.raises(ValueError, match="residual is on meta"):
        kernels.add_layer_norm(x, torch.empty(4, 10, device="meta"), backend=backend)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.uint8])
def test_non_floating_is_type_error(backend, dtype):
    ints = torch.ones(2, 3, device=DEVICE).to(dtype)
    with pytest.raises(TypeError, match="x must be a floating-point"):
        kernels.layer_norm(ints, backend=backend)
    with pytest.raises(TypeError, match="weight must be a floating-point"):
        kernels.layer_norm(randn(2, 3), ints[0], backend=backend)
    with pytest.raises(TypeError, match="residual must be a floating-point"):
        kernels.add_layer_norm(randn(2, 3), ints, backend=backend)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("eps", [0.0, -1e-5, float("nan"), float("inf"), "small"])
def test_bad_eps(backend, eps):
    with pytest.raises(ValueError, match="eps"):
        kernels.layer_norm(randn(2, 3), eps=eps, backend=backend)
    with pytest.raises(ValueError, match="eps"):
        kernels.add_layer_norm(randn(2, 3), randn(2, 3), eps=eps, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_too_wide_rows_name_the_limit(backend):
    from kernels._checks import NORM_MAX_HIDDEN
    if backend not in NORM_MAX_HIDDEN:
        pytest.skip(f"backend {backend!r} has no row-length limit")
    limit = NORM_MAX_HIDDEN[backend]
    assert limit >= 65536
    x = torch.zeros(1, limit + 1, device=DEVICE)
    with pytest.raises(ValueError, match=rf"x.shape\[-1\]={limit + 1} exceeds {limit}"):
        kernels.layer_norm(x, backend=backend)
    with pytest.raises(ValueError, match=str(limit)):
        kernels.add_layer_norm(x, x, backend=backend)
    assert kernels.layer_norm(x, backend="torch").shape == x.shape  # the reference has no limit


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_only_on_torch(backend):
    x = randn(2, 3, dtype=torch.float64)
    with pytest.raises(TypeError, match="float64"):
        kernels.layer_norm(x, backend=backend)
    assert kernels.layer_norm(x).dtype == torch.float64  # auto picks the reference for fp64


# ------------------------------------------------------------------------------------------
# Determinism and registration
# ------------------------------------------------------------------------------------------


def _assert_bitwise_repeatable(backend, shape):
    x = randn(*shape, scale=2.0).requires_grad_()
    r = randn(*shape).requires_grad_()
    w, b = _params(shape[-1], torch.float32, "weight+bias")
    g, g2 = randn(*shape), randn(*shape)
    runs = []
    for _ in range(2):
        for t in (x, r, w, b):
            t.grad = None
        y, s = kernels.add_layer_norm(x, r, w, b, backend=backend)
        y2 = kernels.layer_norm(s, w, b, backend=backend)
        ((y + y2) * g + s * g2).sum().backward()
        runs.append([t.detach().clone() for t in (y, s, y2, x.grad, r.grad, w.grad, b.grad)])
    for a, c in zip(*runs):
        assert torch.equal(a, c)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(37, 1000), (3, 20000)], ids=str)
def test_deterministic(backend, shape):
    _assert_bitwise_repeatable(backend, shape)


def test_triton_opcheck():
    pytest.importorskip("triton")
    if "triton" not in BACKENDS:
        pytest.skip("triton backend not usable here")
    import kernels.triton.layer_norm as ln
    x, r = randn(4, 37, scale=2.0).requires_grad_(), randn(4, 37).requires_grad_()
    w, b = randn(37).requires_grad_(), randn(37).requires_grad_()
    torch.library.opcheck(ln.layer_norm_op, (x, w, b, 1e-5))
    torch.library.opcheck(ln.layer_norm_op, (randn(3, 2, 5).requires_grad_(), None, None, 1e-3))
    torch.library.opcheck(ln.add_layer_norm_op, (x, r, w, b, 1e-5))
    torch.library.opcheck(ln.add_layer_norm_op, (x, r, None, b, 1e-5))
    y, stats = ln.layer_norm_op(x.detach(), w.detach(), b.detach(), 1e-5)
    for ds in (None, randn(4, 37)):
        for need in ((True, True), (False, True), (False, False)):
            torch.library.opcheck(ln.layer_norm_backward_op, (randn(4, 37), x.detach(), w.detach(), stats,
                                                              ds, *need))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    compile_backend = "inductor" if DEVICE == "cuda" else "aot_eager"

    def f(x, r, w, b):
        h, s = kernels.add_layer_norm(x * 2, r, w, b, backend=backend)
        return kernels.layer_norm(h + s, w, None, backend=backend).sum(-1) + s.mean(-1)

    compiled = torch.compile(f, fullgraph=True, backend=compile_backend)
    args = [randn(3, 50).requires_grad_(), randn(3, 50).requires_grad_(), randn(50).requires_grad_(),
            randn(50).requires_grad_()]
    out = compiled(*args)
    out.sum().backward()
    args2 = [a.detach().clone().requires_grad_() for a in args]
    expected = f(*args2)
    expected.sum().backward()
    assert_close(out, expected.detach(), torch.float32)
    for a, a2 in zip(args, args2):
        assert_close(a.grad, a2.grad, torch.float32)


# ------------------------------------------------------------------------------------------
# GPU only: many rows (many dw/db partials per column, as on a real chip)
# ------------------------------------------------------------------------------------------


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(8192, 768), (4096, 1600), (256, 20000), (64, 65536)], ids=str)
def test_gpu_many_rows(dtype, shape):
    _layer_norm_case("triton", dtype, shape, "weight+bias")
    _add_layer_norm_case("triton", dtype, shape, "weight+bias")


@needs_gpu
@pytest.mark.parametrize("shape", [(16384, 1024), (512, 30000)], ids=str)
def test_gpu_deterministic_many_partials(shape):
    _assert_bitwise_repeatable("triton", shape)


# ------------------------------------------------------------------------------------------
# In the model: the GPT's norms (ln_1, ln_2 with the fused residual add, ln_f) on this backend
# ------------------------------------------------------------------------------------------


def _graph_node_names(fn):
    seen, todo = set(), [fn]
    while todo:
        node = todo.pop()
        if node is not None and node not in seen:
            seen.add(node)
            todo += [next_fn for next_fn, _ in node.next_functions]
    return {node.name() for node in seen}


@pytest.mark.parametrize("backend", BACKENDS)
def test_gpt_norms_match_torch(backend):
    import copy

    import gpt
    ref = gpt.GPT(gpt.GPTConfig(vocab_size=61, block_size=16, n_layer=2, n_head=2, n_embd=48,
                                backend="torch")).to(DEVICE)
    for p in ref.parameters():  # norms away from their (1, 0) init, so their grads matter
        torch.nn.init.normal_(p, mean=0.1 if p.dim() == 1 else 0.0, std=0.1)
    ours = copy.deepcopy(ref)
    norms = [m for m in ours.modules() if isinstance(m, gpt.model.LayerNorm)]
    assert len(norms) == 2 * 2 + 1
    for m in norms:  # only the norms: the other ops of this backend may not exist yet
        m.backend = backend
    idx = torch.randint(0, 61, (3, 16), device=DEVICE)
    logits, loss = ours(idx, idx, return_logits=True)
    logits_ref, loss_ref = ref(idx, idx, return_logits=True)
    assert_close(logits, logits_ref, torch.float32)
    if backend == "triton":  # both ops really ran (ln_1 of block 0 has no residual to fuse)
        ops = _graph_node_names(loss.grad_fn)
        assert any("gptk_add_layer_norm_triton" in n for n in ops)
        assert any("gptk_layer_norm_triton" in n for n in ops)
    loss.backward()
    loss_ref.backward()
    for (name, p), p_ref in zip(ours.named_parameters(), ref.parameters()):
        assert_close(p.grad, p_ref.grad, torch.float32, msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_row_alignment_paths(backend, dtype):
    # The 16-byte split: aligned rows (body only), a single odd-width row (body + peeled
    # tail), rows starting off a 16-byte boundary (x[:, 1:]: plain masked rows), and a
    # residual whose rows are aligned differently from x's.
    base = randn(5, 1025, dtype=dtype, scale=2.0)
    for x in (base[:, :1024], base[1, :1001], base[:, 1:], base[:3, 7:]):
        _layer_norm_case(backend, dtype, tuple(x.shape), "weight+bias", x=x.detach())
    r = randn(5, 1026, dtype=dtype, scale=2.0)[:, 2:]
    _add_layer_norm_case(backend, dtype, (5, 1024), "weight+bias", x=base[:, 1:].detach(), r=r)
