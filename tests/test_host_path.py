"""The host path: eager calls reach the kernels without the dispatcher, and the cached Triton
launch picks exactly the compiled kernel Triton itself would pick.

The launch check compiles real kernels for sm_90 through a stand-in driver whose launcher
does nothing (benchmarks/stub_driver.py), in a subprocess without the interpreter.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

import kernels

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_LAUNCH_CHECK = r"""
import json, torch
from benchmarks import stub_driver
stub_driver.install()
from triton.runtime.jit import JITFunction
from kernels.triton import softmax as sm, layer_norm as ln

def same_kernel(kernel, grid, *args, **kw):
    kernel[grid](*args, **kw)           # first call: Triton's own path, cached by the fast path
    kernel[grid](*args, **kw)           # second call: the fast path
    ours = [hit[0] for hit in kernel._fast_cache.values()]
    theirs = JITFunction.run(kernel, *args, grid=grid, warmup=True, **kw)
    return theirs in ours, theirs

base = torch.zeros(4 * 4096 + 64, dtype=torch.bfloat16)
checks, picked = {}, {}
for offset in (0, 1, 8):                 # 16-byte aligned, 2-byte aligned, 16-byte aligned again
    for n_cols in (1, 16, 17):            # Triton specialises ints == 1 and divisible by 16
        x = base[offset:offset + 4 * n_cols].view(4, n_cols)
        y = torch.empty_like(x)
        cfg = sm.launch_config(n_cols)
        ok, picked[offset, n_cols] = same_kernel(sm._softmax_fwd_kernel, (1,), y, x, 4, n_cols, 0, n_cols, 0,
                                                 n_cols, 1.25, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
                                                 VEC=8, Y_ALIGNED=True, HAS_PEEL=True, num_warps=cfg["num_warps"])
        checks[f"softmax offset={offset} n={n_cols}"] = ok
# Where Triton's specialisation differs the kernels differ (alignment, n == 1 vs 16 vs 17),
# and where it agrees they are shared (offsets 0 and 8 elements are both 16-byte aligned).
checks["alignment keys apart"] = picked[0, 16] is not picked[1, 16]
checks["ints key apart"] = len({id(picked[0, n]) for n in (1, 16, 17)}) == 3
checks["equal keys share"] = picked[0, 17] is picked[8, 17]
for big in (2**31 - 1, 2**31, 2**40):    # i32 / i64 range
    x = base[:64].view(1, 64)
    y = torch.empty_like(x)
    ok, _ = same_kernel(sm._softmax_fwd_kernel, (1,), y, x, 1, 64, 0, big, 0, 64, 1.0, BLOCK_M=1, BLOCK_N=64,
                        VEC=8, Y_ALIGNED=True, HAS_PEEL=True, num_warps=4)
    checks[f"softmax stride={big}"] = ok
# Every op and backend runs its whole eager path (forward, forward with grad, backward).
import kernels
for backend in ("triton",):
    x = torch.randn(3, 40, requires_grad=True)
    w, b = torch.randn(40, requires_grad=True), torch.randn(40, requires_grad=True)
    kernels.softmax(x, 0.5, backend=backend).sum().backward()
    kernels.layer_norm(x, w, b, backend=backend).sum().backward()
    y, s = kernels.add_layer_norm(x, x.detach(), w, b, backend=backend)
    (y.sum() + s.sum()).backward()
    q = torch.randn(1, 2, 3, 16, requires_grad=True)
    kernels.attention(q, q, q, backend=backend).sum().backward()
    kernels.gelu_linear(x, torch.randn(24, 40), torch.randn(24), backend=backend).sum().backward()
checks["every op ran"] = True
print(json.dumps(checks))
"""


def _run_without_interpreter(script):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env["GPTK_AUTOTUNE"] = "0"
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_cached_launch_picks_tritons_own_kernel():
    checks = _run_without_interpreter(_LAUNCH_CHECK)
    failed = [name for name, ok in checks.items() if not ok]
    assert not failed, f"the fast launch path disagrees with Triton's kernel cache: {failed}"


def _backends():
    return [b for b in ("triton", "cuda") if b in kernels.available_backends("cpu")]


@pytest.mark.parametrize("backend", _backends())
def test_eager_calls_skip_the_dispatcher(backend):
    x = torch.randn(3, 40, requires_grad=True)
    y = kernels.softmax(x, 0.7, backend=backend)
    # The eager path records our eager autograd node (a Python Function on triton, a C++ node
    # from csrc/eager.cpp on cuda), not the custom op's autograd node.
    assert "eager" in y.grad_fn.name().lower(), y.grad_fn.name()
    y.sum().backward()
    ref = torch.softmax(x.detach().double() / 0.7, -1)
    torch.testing.assert_close(y.detach().double(), ref, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        assert kernels.softmax(x, 0.7, backend=backend).grad_fn is None


@pytest.mark.parametrize("backend", _backends())
def test_traced_calls_use_the_custom_op(backend):
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        x = torch.randn(3, 40)
        y = kernels.softmax(x, 0.7, backend=backend)  # through register_fake: no kernel runs
    assert y.shape == (3, 40)
    from torch.fx.experimental.proxy_tensor import make_fx
    graph = make_fx(lambda t: kernels.softmax(t, 0.7, backend=backend))(torch.randn(3, 40))
    assert any("gptk" in str(node.target) for node in graph.graph.nodes), graph.graph


_REPLAY_CHECK = r"""
import json, torch
from benchmarks import stub_driver
stub_driver.install()
import kernels
from kernels.triton import softmax as sm, layer_norm as ln

def recorded(fn, inputs):
    # The launches of one call, tensors named by role: an input by position, a returned
    # tensor by its place in the result (two fresh outputs of one shape swapped would look
    # alike by appearance), anything else by its first appearance (so aliasing between
    # arguments is compared too).
    stub_driver.launches = []
    result = fn()
    calls, stub_driver.launches = stub_driver.launches, None
    names, out = {t.data_ptr(): f"in{i}" for i, t in enumerate(inputs)}, []
    for i, t in enumerate(result if isinstance(result, tuple) else (result,)):
        if isinstance(t, torch.Tensor) and t.numel():
            names.setdefault(t.data_ptr(), f"out{i}")
    for grid, launcher, args in calls:
        row = []
        for a in args:
            if isinstance(a, torch.Tensor):
                name = names.setdefault(a.data_ptr(), f"new{len(names)}")
                row.append((name, str(a.dtype), a.numel()))
            else:
                row.append(a)
        out.append((grid, id(launcher), row))
    return out

def same_as_ordinary_path(fn, inputs, caches):
    inputs = [t for t in inputs if t is not None]
    for c in caches:
        c.clear()
    fn()
    fn()                                     # the ordinary path's second call forms a replay
    before = sum(len(c) for c in caches)
    replayed = recorded(fn, inputs)          # the replay (if the layout allows one)
    for c in caches:
        c.clear()
    ordinary = recorded(fn, inputs)          # the ordinary path again
    return {"equal": replayed == ordinary, "replays": before, "launches": len(ordinary)}

g = torch.Generator().manual_seed(0)
results = {}
for dtype in (torch.bfloat16, torch.float32):
    for n in (64, 1001, 20000):
        base = torch.randn(3 * n + 8, generator=g).to(dtype)
        x = base[:3 * n].view(3, n)
        x_odd = base[1:3 * n + 1].view(3, n)      # starts 2 or 4 bytes past a 16-byte boundary
        r, dy = torch.randn(3, n, generator=g).to(dtype), torch.randn(3, n, generator=g).to(dtype)
        w, b = torch.randn(n, generator=g).to(dtype), torch.randn(n, generator=g).to(dtype)
        y = sm.softmax_forward(x, 0.7, -1)
        tag = f"{dtype} n={n}"
        for label, xx in (("aligned", x), ("misaligned", x_odd), ("strided", x.t().contiguous().t())):
            results[f"softmax fwd {label} {tag}"] = same_as_ordinary_path(
                lambda: sm.softmax_forward(xx, 0.7, -1), [xx], [sm._FWD_REPLAYS])
        results[f"softmax bwd {tag}"] = same_as_ordinary_path(
            lambda: sm.softmax_backward(dy, y, 0.7, -1), [dy, y], [sm._BWD_REPLAYS])
        for stats in (True, False):
            for ww, bb in ((w, b), (None, b), (None, None)):
                results[f"layer_norm stats={stats} w={ww is not None} b={bb is not None} {tag}"] = \
                    same_as_ordinary_path(lambda: ln.forward(x, None, ww, bb, 1e-5, stats), [x, ww, bb],
                                          [ln._FWD_REPLAYS])
        results[f"add_layer_norm {tag}"] = same_as_ordinary_path(
            lambda: ln.forward(x, r, w, b, 1e-5), [x, r, w, b], [ln._FWD_REPLAYS])
        _, s, stats = ln.forward(x, r, w, b, 1e-5)
        for need in ((True, True), (True, False), (False, False)):
            results[f"layer_norm bwd need={need} {tag}"] = same_as_ordinary_path(
                lambda: ln.backward(dy, s, w, stats, dy, *need), [dy, s, w, stats],
                [ln._BWD_REPLAYS])
from kernels.triton import gelu_linear as gl
for dtype in (torch.bfloat16, torch.float32):
    for m, n, k in ((4, 96, 64), (7, 33, 40)):
        x, w, b = (torch.randn(*s, generator=g).to(dtype) for s in ((m, k), (n, k), (n,)))
        for bias in (b, None):
            for save in (True, False):
                results[f"gelu_linear {dtype} {m}x{n}x{k} bias={bias is not None} save={save}"] = \
                    same_as_ordinary_path(lambda: gl.gelu_linear_forward(x, w, bias, "tanh", save), [x, w, bias],
                                          [gl._FWD_REPLAYS])
from kernels.triton import attention as at
for dtype in (torch.bfloat16, torch.float32):
    for B, H, Tq, Tk, D in ((1, 2, 1, 64, 64), (2, 3, 3, 700, 40), (1, 2, 1, 4096, 128)):
        q = torch.randn(B, Tq, H, D, generator=g).to(dtype).transpose(1, 2)   # the model's layout
        k, v = (torch.randn(B, H, Tk, D, generator=g).to(dtype) for _ in range(2))
        lengths = torch.full((B,), Tk - 1, dtype=torch.int32)
        for causal in (True, False):
            for kv in (None, lengths):
                results[f"attention decode {dtype} B{B} H{H} Tq{Tq} Tk{Tk} D{D} causal={causal} "
                        f"lengths={kv is not None}"] = same_as_ordinary_path(
                    lambda: at.attention_forward(q, k, v, causal, D ** -0.5, kv_lengths=kv), [q, k, v, kv],
                    [at._DECODE_REPLAYS])
# The backward: preprocess, then the autotuned dK/dV and dQ launches, replayed with the
# configuration the autotuner ran (one case: each compiles three kernels for sm_90).
q, k, v = (torch.randn(1, 64, 2, 64, generator=g).bfloat16().transpose(1, 2) for _ in range(3))
o, lse = at.attention_forward(q, k, v, True, 0.125)
do = torch.randn(o.shape, generator=g).bfloat16()
results["attention bwd bf16 B1 H2 T64 D64 causal"] = same_as_ordinary_path(
    lambda: at.attention_backward(do, q, k, v, o, lse, True, 0.125), [do, q, k, v, o, lse], [at._BWD_REPLAYS])
print(json.dumps(results))
"""


@pytest.mark.slow
def test_replayed_launches_match_the_ordinary_path():
    # A replay (kernels/triton/_launch.launch) must launch exactly what the ordinary path
    # would: the same compiled kernel, grid and arguments, for every layout it is keyed on.
    # Misaligned and strided layouts never form one (they take the ordinary path).
    results = _run_without_interpreter(_REPLAY_CHECK)
    wrong = [k for k, v in results.items() if not v["equal"]]
    assert not wrong, wrong
    assert all(v["launches"] >= 1 for v in results.values())
    aligned = [k for k in results if "misaligned" not in k and "strided" not in k]
    assert all(results[k]["replays"] >= 1 for k in aligned), [k for k in aligned if not results[k]["replays"]]
    assert not any(results[k]["replays"] for k in results if "misaligned" in k or "strided" in k)



def _op_calls(backend, dtype=torch.float32):
    """[(name, f(x), x)] for each differentiable op: x is the input the test differentiates;
    the other arguments are fixed draws (the same values for every backend and dtype)."""
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g).to(dtype)  # noqa: E731
    w, b, res, wf, bf, wv = r(16), r(16), r(3, 16), r(8, 16), r(8), r(20, 16)
    target = torch.randint(0, 20, (3,), generator=g)
    return [
        ("softmax", lambda x: kernels.softmax(x, 0.7, backend=backend), r(3, 16)),
        ("layer_norm", lambda x: kernels.layer_norm(x, w, b, backend=backend), r(3, 16)),
        ("add_layer_norm", lambda x: kernels.add_layer_norm(x, res, w, b, backend=backend)[0], r(3, 16)),
        ("attention", lambda q: kernels.attention(q, q, q, backend=backend), r(1, 2, 5, 16)),
        ("gelu_linear", lambda x: kernels.gelu_linear(x, wf, bf, backend=backend), r(3, 16)),
        ("linear_cross_entropy", lambda x: kernels.linear_cross_entropy(x, wv, target, backend=backend), r(3, 16)),
    ]


@pytest.mark.parametrize("backend", _backends())
def test_double_backward_fails_loudly(backend):
    # The backward kernels run outside autograd: a second derivative (a gradient penalty
    # differentiating the gradient again) must raise, not miss terms silently; the first
    # derivative under create_graph=True stays exact.
    for (name, f, x), (_, f_ref, x_ref) in zip(_op_calls(backend), _op_calls("torch", torch.float64)):
        x, x_ref = x.requires_grad_(), x_ref.requires_grad_()
        (grad,) = torch.autograd.grad(f(x).sum(), x, create_graph=True)
        (grad_ref,) = torch.autograd.grad(f_ref(x_ref).sum(), x_ref)
        torch.testing.assert_close(grad.double(), grad_ref, atol=1e-4, rtol=1e-4, msg=name)
        with pytest.raises(RuntimeError, match="double backward"):
            grad.pow(2).sum().backward()


@pytest.mark.parametrize("backend", _backends())
def test_add_layer_norm_sum_only_leaves_norm_params_without_grad(backend):
    # Only x + residual used: weight and bias get None, as with PyTorch's ops (a zero
    # gradient would still move them under AdamW's momentum and weight decay).
    x, r = torch.randn(3, 16, requires_grad=True), torch.randn(3, 16)
    w, b = torch.randn(16, requires_grad=True), torch.randn(16, requires_grad=True)
    _, s = kernels.add_layer_norm(x, r, w, b, backend=backend)
    s.sum().backward()
    assert w.grad is None and b.grad is None
    torch.testing.assert_close(x.grad, torch.ones_like(x))


@pytest.mark.parametrize("backend", _backends())
def test_forward_mode_ad_is_refused(backend):
    # No forward-mode formulas: a dual input must raise, not lose its tangent silently.
    import torch.autograd.forward_ad as fwAD
    for name, f, x in _op_calls(backend):
        with fwAD.dual_level():
            dual = fwAD.make_dual(x, torch.randn_like(x))
            with pytest.raises(NotImplementedError, match="forward-mode AD"):
                f(dual)
    with fwAD.dual_level():  # the reference backend supports it
        x = torch.randn(3, 16)
        y = kernels.softmax(fwAD.make_dual(x, torch.ones_like(x)), 0.7, backend="torch")
        assert fwAD.unpack_dual(y).tangent is not None


# -----------------------------------------------------------------------------------------
# The triton layer norms' eager gradient node: a C++ node with a Python backward
# (kernels/_eager.PythonNode, csrc/eager.cpp PythonBackward) when the C++ library loads
# without a build, else an autograd.Function with the same formulas. Both paths, always.
# -----------------------------------------------------------------------------------------
from helpers import DEVICE  # noqa: E402


def _triton_here():
    return "triton" in kernels.available_backends(DEVICE)


@pytest.fixture(params=["cpp node", "function"])
def triton_grad_path(request, monkeypatch):
    if not _triton_here():
        pytest.skip("triton backend not usable here")
    import kernels.triton.layer_norm as ln
    from kernels import _eager
    nodes = (ln._LAYER_NORM_NODE, ln._ADD_LAYER_NORM_NODE)
    if request.param == "cpp node":
        from kernels import cuda
        reason = cuda.unavailable_reason("cpu")  # builds the library if needed, as the cuda tests do
        assert reason is None, reason  # not a skip: the node path would go untested silently
        for node in nodes:
            monkeypatch.setattr(node, "attach", _eager.UNRESOLVED)
    else:
        for node in nodes:
            monkeypatch.setattr(node, "attach", None)
    return request.param


def _is_python_function(grad_fn) -> bool:
    return isinstance(grad_fn, torch.autograd.function.BackwardCFunction)


def _norm_case(dtype=torch.float32, shape=(3, 5, 24)):
    g = torch.Generator().manual_seed(3)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return r(*shape), r(*shape), r(shape[-1]), r(shape[-1])


def _layout(t, layout):
    """`t` (a leaf) as the op sees it: contiguous, a column slice, or a transposed copy."""
    if layout == "sliced":  # rows with a gap between them: unit last stride, not contiguous
        return torch.cat([t, t], -1)[..., : t.shape[-1]]
    if layout == "transposed":  # last-dim stride != 1: the launcher copies the rows
        return t.transpose(0, 1).contiguous().transpose(0, 1)
    return t


@pytest.mark.parametrize("with_w,with_b,x_grad,layout", [(True, True, True, "contiguous"),
                                                         (False, True, True, "sliced"),
                                                         (True, False, False, "contiguous"),
                                                         (False, False, True, "transposed")])
def test_triton_norm_gradients_on_either_node(triton_grad_path, with_w, with_b, x_grad, layout):
    x64, r64, w64, b64 = _norm_case()
    w64, b64 = (w64 if with_w else None), (b64 if with_b else None)
    leaves = lambda ts: [None if t is None else t.float().to(DEVICE).requires_grad_() for t in ts]  # noqa: E731
    for add in (False, True):
        x_leaf, r, w, b = leaves((x64, r64, w64, b64))
        x_leaf.requires_grad_(x_grad)
        x = _layout(x_leaf, layout)
        xr, rr, wr, br = (None if t is None else t.clone().requires_grad_() for t in (x64, r64, w64, b64))
        xr.requires_grad_(x_grad)
        if add:
            y, s = kernels.add_layer_norm(x, r, w, b, backend="triton")
            sr = xr + rr
            yr = torch.nn.functional.layer_norm(sr, (24,), wr, br)
            outs, refs = (y, s), (yr, sr)
        else:
            y = kernels.layer_norm(x, w, b, backend="triton")
            yr = torch.nn.functional.layer_norm(xr, (24,), wr, br)
            outs, refs = (y,), (yr,)
        assert _is_python_function(y.grad_fn) == (triton_grad_path == "function"), type(y.grad_fn)
        assert "eager" in y.grad_fn.name(), y.grad_fn.name()
        assert x.is_contiguous() == (layout == "contiguous")
        wanted = [t for t in ((x_leaf, r) if add else (x_leaf,)) + (w, b) if t is not None and t.requires_grad]
        wanted_ref = [t for t in ((xr, rr) if add else (xr,)) + (wr, br) if t is not None and t.requires_grad]
        seeds = [torch.randn_like(o) for o in outs]
        got = torch.autograd.grad(outs, wanted, seeds)
        ref = torch.autograd.grad(refs, wanted_ref, [sd.double().cpu() for sd in seeds])
        for a, e in zip(got, ref):
            torch.testing.assert_close(a.double().cpu(), e, atol=1e-4, rtol=1e-4)


def test_triton_norm_node_keeps_autograd_contracts(triton_grad_path):
    x64, r64, w64, b64 = _norm_case()
    x, r, w, b = (t.float().to(DEVICE).requires_grad_() for t in (x64, r64, w64, b64))
    # A second backward through a freed graph raises; retain_graph keeps it.
    y = kernels.layer_norm(x, w, b, backend="triton")
    y.sum().backward(retain_graph=True)
    y.sum().backward()
    with pytest.raises(RuntimeError, match="second time"):
        y.sum().backward()
    # A saved tensor changed in place after the forward is caught at backward.
    y, s = kernels.add_layer_norm(x.detach(), r, w, b, backend="triton")
    s.add_(1.0)  # s is saved (y = layer_norm(s)): its version moved on
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()
    # Saved-tensor hooks (what activation offloading and checkpointing use) see every save.
    packed = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t) or t, lambda t: t):
        y = kernels.layer_norm(x, w, b, backend="triton")
    assert len(packed) == 3, len(packed)  # x, weight, the statistics
    (gx,) = torch.autograd.grad(y.sum(), x)
    # Checkpointing recomputes the forward in backward: the same gradient.
    from torch.utils.checkpoint import checkpoint
    yc = checkpoint(lambda t: kernels.layer_norm(t, w, b, backend="triton"), x, use_reentrant=False)
    (gc,) = torch.autograd.grad(yc.sum(), x)
    torch.testing.assert_close(gc, gx)
    # Anomaly mode and a tensor hook on the output.
    with torch.autograd.detect_anomaly():
        y = kernels.layer_norm(x, w, b, backend="triton")
        seen = []
        y.register_hook(lambda g: seen.append(g.shape))
        y.sum().backward()
    assert seen == [y.shape]


def test_triton_norm_node_reads_saved_tensors_only_when_needed(triton_grad_path):
    # s's gradient alone passes straight through add_layer_norm: as with x + r then
    # F.layer_norm, changing s in place or freeing y's graph first must not fail it.
    x, r, w, b = (t.float().to(DEVICE).requires_grad_() for t in _norm_case())
    y, s = kernels.add_layer_norm(x, r, w, b, backend="triton")
    s.mul_(2)
    s.sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 2.0))
    x.grad = None
    y, s = kernels.add_layer_norm(x, r, w, b, backend="triton")
    y.pow(2).sum().backward()
    (s * 3).sum().backward()  # y's part of the graph is freed; s's still runs


def test_triton_norm_forward_records_no_graph_inside(triton_grad_path, monkeypatch):
    # As in a Function's forward, copies the launcher makes (a transposed x's rows) record
    # no graph of their own.
    import kernels.triton.layer_norm as ln
    seen = []
    real = ln._launch.launch

    def spy(kernel, grid, args, kwargs, slots=None):
        seen.extend(a.grad_fn for a in args if isinstance(a, torch.Tensor))  # as launched
        return real(kernel, grid, args, kwargs, slots)
    monkeypatch.setattr(ln._launch, "launch", spy)
    x, r, w, b = (t.float().to(DEVICE).requires_grad_() for t in _norm_case(shape=(24, 24)))
    for xx in (x.t(), x):
        kernels.add_layer_norm(xx, r, w, b, backend="triton")  # the forward's launches only
    assert seen and all(fn is None for fn in seen), seen


@pytest.mark.parametrize("backend", _backends())
def test_eager_calls_under_compiled_autograd(backend):
    # An eager forward whose backward runs under compiled autograd: the C++ nodes (the cuda
    # backend's, the triton layer norms') have no compiled-autograd form, so the op's
    # Function records the gradient while the flag is on; the same gradients either way.
    x, r, w, b = (t.float().requires_grad_() for t in _norm_case())
    wf = torch.randn(8, 24, requires_grad=True)
    calls = [lambda: kernels.layer_norm(x, w, b, backend=backend),
             lambda: kernels.add_layer_norm(x, r, w, b, backend=backend)[0],
             lambda: kernels.gelu_linear(x, wf, None, backend=backend)]
    for f in calls:
        expected = torch.autograd.grad(f().pow(2).sum(), (x, wf, w), allow_unused=True, materialize_grads=True)
        for t in (x, wf, w):
            t.grad = None
        torch._dynamo.reset()
        with torch._dynamo.config.patch(compiled_autograd=True):
            loss = f().pow(2).sum()
            torch.compile(lambda l: l.backward(), backend="eager")(loss)
        torch._dynamo.reset()
        for got, want in zip((x.grad, wf.grad, w.grad), expected):
            torch.testing.assert_close(got if got is not None else torch.zeros_like(want), want)


def test_triton_norm_node_frees_its_graph(triton_grad_path):
    # The node saves s (an output) through a detached alias: no reference cycle, so the
    # outputs' storage goes when the caller drops them.
    import gc

    from torch.multiprocessing.reductions import StorageWeakRef
    x, r, w, b = (t.float().to(DEVICE).requires_grad_() for t in _norm_case())
    y, s = kernels.add_layer_norm(x, r, w, b, backend="triton")
    refs = [StorageWeakRef(t.untyped_storage()) for t in (y, s)]
    del y, s
    gc.collect()  # the Triton interpreter leaves Python cycles; a C++ one no collection frees
    assert all(ref.expired() for ref in refs)


def test_triton_norm_node_backward_errors_keep_their_type(triton_grad_path, monkeypatch):
    import kernels.triton.layer_norm as ln

    def broken(*args):
        raise ValueError("a backward that fails")
    monkeypatch.setattr(ln, "_layer_norm_backward_call", broken)
    x, _, w, b = (t.float().to(DEVICE).requires_grad_() for t in _norm_case())
    y = kernels.layer_norm(x, w, b, backend="triton")
    with pytest.raises(ValueError, match="a backward that fails"):
        y.sum().backward()


def test_python_node_from_threads():
    # The C++ node from 4 threads at once, each running forward and backward: it takes the
    # GIL for its Python formula. (Stand-in kernels: torch ops outside autograd. The Triton
    # interpreter itself is not thread-safe.)
    from concurrent.futures import ThreadPoolExecutor

    from kernels import _eager, cuda
    assert cuda.unavailable_reason("cpu") is None, cuda.unavailable_reason("cpu")
    node = _eager.PythonNode("gptk_test_cube", lambda needs, saved, grads: (3 * saved[0] ** 2 * grads[0],))
    assert node.resolve() is not None

    def cube(x):
        (y,) = node.empty_outputs(x, 1, -1)
        with torch.no_grad():
            torch.pow(x, 3, out=y)
        node.attach((y,), (x,), (x,))
        return y

    def run(i):
        x = torch.linspace(-1, 1, 50, dtype=torch.float64).add(i).requires_grad_()
        for _ in range(20):
            (gx,) = torch.autograd.grad(cube(x).sum(), x)
        return gx

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, range(16)))
    for i, gx in enumerate(results):
        torch.testing.assert_close(gx, 3 * torch.linspace(-1, 1, 50, dtype=torch.float64).add(i) ** 2)


def test_triton_never_builds_the_cpp_library(monkeypatch):
    # Without a built library the triton backend records its Function, never starting a build.
    from kernels import _eager, cuda
    from kernels.cuda import _build
    monkeypatch.setitem(cuda._STATE, "loaded", False)
    monkeypatch.setitem(cuda._STATE, "error", None)
    monkeypatch.setattr(_build, "ready_library", lambda: None)

    def no_build(*args, **kwargs):
        raise AssertionError("the triton backend started a C++ build")
    monkeypatch.setattr(_build, "jit_build", no_build)
    node = _eager.PythonNode("gptk_test_node", lambda needs, saved, grads: (None,))
    assert node.resolve() is None
