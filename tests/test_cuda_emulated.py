"""The CUDA kernels themselves (csrc/cuda/*.cu), run on the CPU by the emulator of
tests/cuda_emulator/, against fp64: every launch path of every op (tensor-core and
CUDA-core attention forward and backward, the flash-decoding key split, warp/block/
streamed row kernels, the deterministic column reductions), with the FlashAttention rule
for attention and the row-op tolerances of helpers.TOL elsewhere.

This is how a machine without a GPU checks the kernels' indexing, fragment layouts,
masking, synchronisation, alignment and reads of memory never written (emulator.h);
tests/test_cuda_gpu.py checks them on real hardware."""
import ast
import os
import re

import pytest
import torch
import torch.nn.functional as F

import cuda_emu
from helpers import DTYPES, TOL, assert_close, assert_lengths_attention, assert_within_torch_error
from kernels import reference

pytestmark = pytest.mark.skipif(cuda_emu.unavailable_reason() is not None,
                                reason=f"CUDA emulator: {cuda_emu.unavailable_reason()}")


def _randn(*shape, dtype, scale=1.0):
    return (torch.randn(*shape, dtype=torch.float64) * scale).to(dtype)


# ---------------------------------------------------------------------------------------
# attention
# ---------------------------------------------------------------------------------------
def _attention_case(b, h, tq, tk, d, causal, dtype, layout="contiguous", sm_count=132):
    if layout == "packed":  # q, k, v as strided views of one (B, T, 3, H, D) projection, as a GPT makes them
        assert tq == tk
        qkv = _randn(b, tq, 3, h, d, dtype=dtype)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    else:
        q, k, v = (_randn(b, h, t, d, dtype=dtype) for t in (tq, tk, tk))
    out, lse = cuda_emu.attention(q, k, v, causal, sm_count=sm_count)
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    qt, kt, vt = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out64 = reference.attention_explicit(q64, k64, v64, causal=causal)
    out_t = reference.attention(qt, kt, vt, causal=causal)
    assert_within_torch_error(out, out_t, out64, 2, what=f"out {dtype}")
    g = _randn(b, h, tq, d, dtype=dtype)
    out64.backward(g.double())
    out_t.backward(g)
    grads = cuda_emu.attention_backward(g, q, k, v, out, lse, causal)
    for name, ours, t, r in zip(("dq", "dk", "dv"), grads, (qt, kt, vt), (q64, k64, v64)):
        assert_within_torch_error(ours, t.grad, r.grad, 3, what=f"{name} {dtype}")
    return out, lse, grads


# (tq, tk, d, causal): tq > 16 in fp16/bf16 takes the tensor-core kernels (forward and
# backward); fp32 and decode (tq <= 16) the CUDA-core forward; fp32 the CUDA-core backward.
# Sizes straddle the 64-row blocks and the 16/32-row streamed tiles.
ATTENTION_CASES = [(70, 70, 64, True), (17, 17, 16, True), (33, 65, 32, False), (20, 100, 128, True),
                   (65, 130, 128, False), (129, 129, 32, True), (1, 37, 64, True), (9, 4, 64, False),
                   (1, 1, 128, True), (200, 333, 64, True), (130, 257, 128, False)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", ATTENTION_CASES, ids=str)
def test_attention_kernels(case, dtype):
    tq, tk, d, causal = case
    _attention_case(1, 2, tq, tk, d, causal, dtype)


# Head dims that fill no tile, run padded (with_head_dim's buckets): D=40 and 80 on the
# tensor-core kernels with their D in registers (padded to 64 and 96), 160 and 256 on the
# wide ones (Q/K/V fragments re-read per tile, dK/dV and dQ split into column slices), 8 and
# 24 on the CUDA-core decode path; fp32 takes the CUDA-core kernels throughout.
# (tq, tk, d, causal, dtype); tq > 16 in fp16/bf16 takes the tensor-core kernels.
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
HEAD_DIM_CASES = [(37, 37, 40, True, F16), (37, 37, 40, True, F32), (20, 45, 80, False, F16),
                  (20, 45, 80, False, BF16), (18, 23, 160, True, F16), (18, 23, 160, True, F32),
                  (17, 20, 256, True, BF16), (24, 17, 256, False, F16), (24, 17, 256, False, F32),
                  (19, 19, 8, True, F16), (19, 19, 8, True, F32), (3, 40, 24, True, BF16), (3, 40, 24, True, F32)]


@pytest.mark.parametrize("case", HEAD_DIM_CASES, ids=str)
def test_attention_padded_head_dims(case):
    tq, tk, d, causal, dtype = case
    _attention_case(1, 2, tq, tk, d, causal, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_attention_strided_qkv_views(dtype):
    _attention_case(2, 2, 40, 40, 32, True, dtype, layout="packed")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_attention_decode_key_split_matches_unsplit(dtype):
    """Decode against a long KV cache splits each row's keys over warps (flash-decoding) and
    merges the partials; the merge must agree with one warp walking all keys."""
    q, k, v = _randn(2, 2, 1, 64, dtype=dtype), _randn(2, 2, 1000, 64, dtype=dtype), _randn(2, 2, 1000, 64, dtype=dtype)
    assert cuda_emu.attention_key_splits(q, k, True, sm_count=132) == 8  # 1000 keys, >= 128 per chunk
    assert cuda_emu.attention_key_splits(q, k, True, sm_count=0) == 1
    split, lse_split = cuda_emu.attention(q, k, v, True, sm_count=132)
    whole, lse_whole = cuda_emu.attention(q, k, v, True, sm_count=0)
    torch.testing.assert_close(split.double(), whole.double(), **TOL[dtype])
    torch.testing.assert_close(lse_split, lse_whole, atol=1e-5, rtol=1e-5)
    _attention_case(2, 2, 3, 1000, 64, True, dtype, sm_count=132)  # and against fp64


def test_attention_split_chunks_may_be_empty():
    # 300 keys in 3 splits of 128: the last chunk has 44 keys; with 9 splits of 64 keys (via
    # 32-key rounding) some chunks are empty and must weigh nothing.
    q, k, v = (_randn(1, 1, t, 32, dtype=torch.float32) for t in (2, 300, 300))
    for sm_count in (1, 132):
        out, lse = cuda_emu.attention(q, k, v, False, sm_count=sm_count)
        ref = reference.attention_explicit(q.double(), k.double(), v.double(), causal=False)
        torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
        assert torch.isfinite(lse).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("tq", [1, 3, 16, 40])
def test_attention_kv_lengths(tq, causal, dtype):
    """Per-sequence key counts read on the device (a static KV cache read whole: CUDA-graph
    decode): lengths tq, all 300 keys, tq + 5 and one between. fp32 (the row kernel) and
    fp16/bf16 decode (tq <= 16) cut the static keys into 3 splits, the later ones wholly past
    the short lengths (empty partials the combine weighs 0); fp16/bf16 tq 40 runs the
    tensor-core forward."""
    b, tk, d = 4, 300, 32
    q, k, v = (_randn(b, 1, t, d, dtype=dtype) for t in (tq, tk, tk))
    lengths = torch.tensor([tq, tk, tq + 5, 177], dtype=torch.int32)
    assert cuda_emu.attention_key_splits(q, k, causal, sm_count=132) == (1 if tq > 16 and dtype != F32 else 3)
    out, lse = cuda_emu.attention_with_lengths(q, k, v, lengths, causal)
    ref64 = reference.attention_explicit(q.double(), k.double(), v.double(), causal, kv_lengths=lengths)
    same = reference.attention_explicit(q, k, v, causal, kv_lengths=lengths)
    assert_within_torch_error(out, same, ref64, 2, what=f"out {dtype}")
    assert torch.isfinite(lse).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("tq", [3, 40])
def test_attention_kv_lengths_shorter_than_the_queries(tq, dtype):
    """Lengths 0, under tq (causal rows before the first key see none), past the cache and
    negative: a row that sees no key is 0 (PyTorch's SDPA), the rest match the reference;
    fp16 tq 40 runs the tensor-core forward, whose blocks mix rows with and without keys."""
    b, tk, d = 4, 70, 32
    q, k, v = (_randn(b, 1, t, d, dtype=dtype) for t in (tq, tk, tk))
    lengths = torch.tensor([0, tq // 2 + 1, tk + 50, -3], dtype=torch.int32)
    out, lse = cuda_emu.attention_with_lengths(q, k, v, lengths, True)
    assert_lengths_attention(out, q, k, v, lengths, True, what=f"out {dtype}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_attention_backward_is_deterministic(dtype):
    q, k, v = (_randn(1, 2, 80, 64, dtype=dtype) for _ in range(3))
    out, lse = cuda_emu.attention(q, k, v, True)
    g = _randn(1, 2, 80, 64, dtype=dtype)
    first = cuda_emu.attention_backward(g, q, k, v, out, lse, True)
    second = cuda_emu.attention_backward(g, q, k, v, out, lse, True)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_attention_fp32_backward_recomputes_the_forwards_probabilities():
    # One key: p is exactly 1, so dv is exactly dout (a recomputed score that differs from the
    # forward's by a rounding would make p = 1 +- 1e-6; the GPU run caught that once).
    q, k, v = (_randn(2, 3, 1, 128, dtype=torch.float32) for _ in range(3))
    out, lse = cuda_emu.attention(q, k, v, True)
    g = _randn(2, 3, 1, 128, dtype=torch.float32)
    _, dk, dv = cuda_emu.attention_backward(g, q, k, v, out, lse, True)
    assert torch.equal(dv, g)
    assert torch.equal(out, v)


def test_attention_without_keys_gives_zeros():
    q = _randn(1, 2, 5, 16, dtype=torch.float16)
    k = v = _randn(1, 2, 0, 16, dtype=torch.float16)
    out, lse = cuda_emu.attention(q, k, v, False)
    assert torch.equal(out, torch.zeros_like(out)) and bool((lse == float("-inf")).all())
    dq, dk, dv = cuda_emu.attention_backward(torch.ones_like(out), q, k, v, out, lse, False)
    assert torch.equal(dq, torch.zeros_like(dq)) and dk.numel() == dv.numel() == 0


# ---------------------------------------------------------------------------------------
# row ops: softmax and layer norm, every launch shape (warp per row, block per row, streamed)
# ---------------------------------------------------------------------------------------
ROW_LENGTHS = [1, 7, 33, 256, 257, 1000, 4097, 16385]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", ROW_LENGTHS)
@pytest.mark.parametrize("sliced", [False, True], ids=["aligned", "sliced"])
def test_softmax_kernels(n, dtype, sliced):
    base = _randn(3, n + int(sliced), dtype=dtype, scale=3.0)
    x = base[:, 1:] if sliced else base  # an odd row start: the scalar (unvectorised) kernels
    y = cuda_emu.softmax(x, 0.7)
    x64 = x.double().requires_grad_()
    y64 = torch.softmax(x64 / 0.7, dim=-1)
    assert_close(y, y64, dtype, msg="y")
    g = _randn(3, n, dtype=dtype)
    y64.backward(g.double())
    dx = cuda_emu.softmax_backward(g, y, 0.7)
    # The backward starts from our rounded y: its error follows y's.
    assert_close(dx, x64.grad, dtype, msg="dx")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", ROW_LENGTHS)
@pytest.mark.parametrize("residual", [False, True], ids=["layer_norm", "add_layer_norm"])
def test_layer_norm_kernels(n, dtype, residual):
    x = _randn(5, n, dtype=dtype, scale=2.0) + 3.0
    r = _randn(5, n, dtype=dtype) if residual else None
    w, b = _randn(n, dtype=dtype), _randn(n, dtype=dtype)
    y, mean, rstd, s = cuda_emu.layer_norm(x, w, b, 1e-5, residual=r)
    if residual:
        assert torch.equal(s, x + r)  # rounded to the storage dtype, as torch's add
    normed = s if residual else x
    x64, w64, b64 = (t.double().requires_grad_() for t in (normed, w, b))
    y64 = F.layer_norm(x64, (n,), w64, b64, 1e-5)
    assert_close(y, y64, dtype, msg="y")
    torch.testing.assert_close(mean.double(), x64.detach().mean(-1), atol=1e-5, rtol=1e-5)
    g = _randn(5, n, dtype=dtype)
    y64.backward(g.double())
    dsum = _randn(5, n, dtype=dtype) if residual else None
    dx, dw, db = cuda_emu.layer_norm_backward(g, normed, w, mean, rstd, dsum=dsum)
    expected_dx = x64.grad + (dsum.double() if residual else 0)
    for name, ours, ref in (("dx", dx, expected_dx), ("dw", dw, w64.grad), ("db", db, b64.grad)):
        # dw/db sum over rows: the tolerance scales with their magnitude (rtol) as usual.
        assert_close(ours, ref, dtype, msg=name)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [7, 768, 20000])
@pytest.mark.parametrize("value", [0.0, 3.7, -1e4])
def test_layer_norm_constant_rows_give_exactly_the_bias(n, dtype, value):
    x = torch.full((3, n), value, dtype=dtype)
    w, b = _randn(n, dtype=dtype), _randn(n, dtype=dtype)
    y, mean, rstd, _ = cuda_emu.layer_norm(x, w, b, 1e-5)
    assert torch.equal(y, b.expand_as(y))
    assert torch.equal(mean, torch.full((3,), float(torch.tensor(value, dtype=dtype)), dtype=torch.float32))


# ---------------------------------------------------------------------------------------
# GELU epilogues of gelu_linear
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("approximate", ["tanh", "none"])
@pytest.mark.parametrize("shape", [(1, 1), (7, 33), (70, 96)], ids=str)
def test_gelu_kernels(shape, approximate, dtype):
    pre = _randn(*shape, dtype=dtype, scale=3.0)
    tanh_form = approximate == "tanh"
    out = cuda_emu.gelu(pre, tanh_form)
    pre64 = pre.double().requires_grad_()
    out64 = F.gelu(pre64, approximate=approximate)
    assert_close(out, out64, dtype, msg="gelu")
    g = _randn(*shape, dtype=dtype)
    out64.backward(g.double())
    dpre, db = cuda_emu.gelu_backward(g, pre, tanh_form)
    assert_close(dpre, pre64.grad, dtype, msg="dpre")
    assert_close(db, pre64.grad.sum(0), dtype, msg="dbias")


# ---------------------------------------------------------------------------------------
# barriers: results must not depend on the order threads take their turns
# ---------------------------------------------------------------------------------------
@pytest.fixture
def schedules():
    yield [("forward", 0, False), ("reverse", 0, False), ("shuffle", 1, False), ("warp_serial", 0, False),
           ("warp_serial_reverse", 0, False), ("warp_serial", 0, True), ("warp_serial_reverse", 0, True)]
    cuda_emu.set_schedule("forward")


def _attention_once(dtype, d, tq, tk, sm_count=132):
    q, k, v = (_randn(1, 2, t, d, dtype=dtype) for t in (tq, tk, tk))
    out, lse = cuda_emu.attention(q, k, v, True, sm_count=sm_count)
    return [out, lse, *cuda_emu.attention_backward(_randn(1, 2, tq, d, dtype=dtype), q, k, v, out, lse, True)]


def _attention_tiles(d):
    """Every attention kernel the launchers pick at padded head dim d, each streaming at
    least two tiles through its shared buffers: fp16 on tensor cores (key tiles of 64, 32
    or 16 by d, dK/dV's query tiles of 64 or 16), fp16 decode with and without the key
    split (its merge layout depends on d), fp32 on CUDA cores, split too."""
    assert cuda_emu.attention_key_splits(*(torch.empty(1, 2, t, d, dtype=torch.float16) for t in (1, 140)), True,
                                         132) == 2
    tq, tk = (70, 100) if d <= 64 else (20, 40) if d <= 128 else (17, 20)
    outs = _attention_once(torch.float16, d, tq, tk)
    outs += _attention_once(torch.float16, d, 3, 40)  # decode, one chunk
    outs += _attention_once(torch.float16, d, 1, 140)  # decode, 2 key chunks and their merge
    outs += _attention_once(torch.float32, d, 5, 40)
    outs += _attention_once(torch.float32, d, 1, 140)
    return outs


def _rows_once(dtype):
    outs = []
    sizes = (33, 1000, 16385) if dtype == torch.float32 else (1000,)
    for n in sizes:  # warp and block rows in registers, a row in shared memory
        x = _randn(4, n, dtype=dtype)
        y = cuda_emu.softmax(x, 0.7)
        outs += [y, cuda_emu.softmax_backward(torch.ones_like(y), y, 0.7)]
        y, mean, rstd, s = cuda_emu.layer_norm(x, None, None, residual=x)
        grads = cuda_emu.layer_norm_backward(torch.ones_like(y), s, x[0], mean, rstd, params=n < 16385)
        outs += [y, mean, rstd, s, *(g for g in grads if g is not None)]
    if dtype == torch.float32:
        return outs
    for n in (7, 1001):  # operands at different phases: staged rows, in place updates of the staged sum
        xb = _randn(3, n + 1, dtype=dtype)[:, 1:]
        y = cuda_emu.softmax(xb, 0.7)
        outs += [y, cuda_emu.softmax_backward(xb, y, 0.7)]
        w = _randn(n, dtype=dtype)
        y, mean, rstd, s = cuda_emu.layer_norm(xb, w, w, residual=xb)
        outs += [y, mean, rstd, s, *cuda_emu.layer_norm_backward(xb, s, w, mean, rstd, dsum=xb)]
    return outs


def _others_once(dtype):
    outs = list(cuda_emu.gelu_backward(torch.ones(40, 70, dtype=dtype), _randn(40, 70, dtype=dtype), True))
    # linear_cross_entropy's row step reads the target logit before the row is overwritten
    outs += list(cuda_emu.lce_rows(_randn(3, 1001, dtype=dtype), torch.tensor([5, 1000, 0]), torch.ones(1), 1.0,
                                   -100, True))
    for n in (30, 3000):  # the 128- and 512-thread samplers
        outs.append(cuda_emu.sample(_randn(3, n, dtype=dtype, scale=2.0), 9, 0.9, top_k=5, top_p=0.8))
    return outs


# Each case runs under every schedule. bf16 takes fp16's code (the same templates) but
# its own instantiations: the two largest tilings run in bf16 too.
SCHEDULE_CASES = {
    **{f"attention-D{d}": (lambda d=d: _attention_tiles(d)) for d in (16, 32, 64, 96, 128, 192, 256)},
    "attention-bf16": lambda: _attention_once(torch.bfloat16, 128, 70, 100) + _attention_once(torch.bfloat16, 256,
                                                                                               17, 17),
    "rows-fp32": lambda: _rows_once(torch.float32),
    "rows-fp16": lambda: _rows_once(torch.float16),
    "rows-bf16": lambda: _rows_once(torch.bfloat16),
    "gelu-lce-sample-fp32": lambda: _others_once(torch.float32),
    "gelu-lce-sample-fp16": lambda: _others_once(torch.float16),
}


@pytest.mark.parametrize("case", list(SCHEDULE_CASES))
def test_kernels_do_not_depend_on_thread_order(case, schedules):
    """Thread orders and cp.async landing times are all legal on hardware: a kernel's
    results must be the same under each (a missing barrier or cp.async wait shows here).
    Only the attention kernels use cp.async: the others skip its eager variants."""
    if not case.startswith("attention"):
        schedules = [sch for sch in schedules if not sch[2]]
    results = []
    for name, seed, eager in schedules:
        cuda_emu.set_schedule(name, seed, eager)
        torch.manual_seed(0)
        results.append(SCHEDULE_CASES[case]())
    for i, a in enumerate(results[0]):
        assert not (a.is_floating_point() and a.isnan().any()), f"{case}: output {i} has NaN"
    for (name, seed, eager), outs in zip(schedules[1:], results[1:]):
        for i, (a, b) in enumerate(zip(results[0], outs)):
            assert torch.equal(a, b), (f"{case}: output {i} differs between the forward schedule and {name}({seed}) "
                                       f"with {'eager' if eager else 'lazy'} cp.async")


# ---------------------------------------------------------------------------------------
# linear_cross_entropy: the row step after the chunk's cuBLAS GEMM
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,ld", [(3, None), (1001, None), (1001, 1001), (50257, None), (700, 703)],
                         ids=["V3", "V1001-vec", "V1001-scalar", "V50257", "V700-unaligned"])
def test_lce_row_step(dtype, n, ld):
    rows = 5 if n > 10000 else 9
    z = _randn(rows, n, dtype=dtype, scale=3.0)
    target = torch.randint(0, n, (rows,))
    target[::4] = -100
    target[1] = n - 1  # the last column: the scalar tail or the last vector
    temperature = 0.8
    z64 = z.double() / temperature
    lse = torch.logsumexp(z64, dim=1)
    counted = target != -100
    safe = target.clamp(min=0)
    loss64 = torch.where(counted, lse - z64.gather(1, safe[:, None])[:, 0], 0.0)
    for per_token in (False, True):
        scale = torch.rand(rows, dtype=torch.float32) if per_token else torch.tensor([0.25])
        loss, dz = cuda_emu.lce_rows(z, target, scale, temperature, -100, True, per_token=per_token, ld=ld)
        torch.testing.assert_close(loss.double(), loss64, atol=1e-5, rtol=1e-5)
        s = (scale.double() if per_token else scale.double().expand(rows)) * counted / temperature
        onehot = torch.zeros(rows, n, dtype=torch.float64).scatter_(1, safe[:, None], 1.0)
        dz64 = (torch.softmax(z64, dim=1) - onehot) * s[:, None]
        assert_close(dz, dz64, dtype)
    loss_only, untouched = cuda_emu.lce_rows(z, target, torch.ones(1), temperature, -100, False, ld=ld)
    torch.testing.assert_close(loss_only, loss)
    assert torch.equal(untouched, z)  # without a gradient the logits stay


# ---------------------------------------------------------------------------------------
# rows at any alignment, long rows in shared memory, and the paths beyond it: each case
# asserts the launch path it means to cover (the launches are recorded as they run)
# ---------------------------------------------------------------------------------------
def _run_recording(fn):
    out = []
    launches = cuda_emu.recorded_launches(lambda emu: out.append(fn()), dry=False)
    return out[0], [rec["kernel"] for rec in launches]


def _rows_input(rows, n, dtype, layout, scale=1.0, shift=0.0):
    if layout == "sliced":  # rows start one element past a 16-byte boundary, stride n + 1
        return (_randn(rows, n + 1, dtype=dtype, scale=scale) + shift)[:, 1:]
    return _randn(rows, n, dtype=dtype, scale=scale) + shift  # contiguous: odd n starts rows at every phase


@pytest.fixture
def smem_limit():
    yield cuda_emu.set_smem_limit
    cuda_emu.set_smem_limit()


# (n, layout, smem limit or None, the kernel family each direction must take)
SOFTMAX_PATHS = [
    (9, "contiguous", None, "softmax_fwd_regs<", "softmax_bwd_regs<"),        # a warp per row, 4 rows per block
    (1001, "contiguous", None, "softmax_fwd_regs<", "softmax_bwd_regs<"),     # rows at 8 phases, one block per row
    (9, "sliced", None, "softmax_fwd_smem<", "softmax_bwd_smem<"),            # x and y at different phases
    (3001, "sliced", None, "softmax_fwd_smem<", "softmax_bwd_smem<"),
    (50257, "contiguous", None, "softmax_fwd_smem<", None),                   # the vocabulary row: 512 threads
    (20001, "sliced", None, "softmax_fwd_smem<", "softmax_bwd_smem<"),
    (3001, "sliced", 2048, "softmax_fwd_stream<", "softmax_bwd_stream<"),     # beyond shared memory: scalar stream
    (20001, "contiguous", 2048, "softmax_fwd_stream<", "softmax_bwd_stream<"),  # 16-byte stream, peeled
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", SOFTMAX_PATHS, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def test_softmax_rows_at_any_alignment(case, dtype, smem_limit):
    n, layout, limit, fwd_kernel, bwd_kernel = case
    if limit:
        smem_limit(limit)
    rows = 2 if n > 20000 else 3
    x = _rows_input(rows, n, dtype, layout, scale=3.0)
    y, kernels = _run_recording(lambda: cuda_emu.softmax(x, 0.7))
    assert len(kernels) == 1 and kernels[0].split("::")[-1].startswith(fwd_kernel), kernels
    x64 = x.double().requires_grad_()
    y64 = torch.softmax(x64 / 0.7, dim=-1)
    assert_close(y, y64, dtype, msg="y")
    g = _rows_input(rows, n, dtype, layout)  # dy sliced like x: its phase differs from y's
    dx, kernels = _run_recording(lambda: cuda_emu.softmax_backward(g, y, 0.7))
    if bwd_kernel:
        assert kernels[0].split("::")[-1].startswith(bwd_kernel), kernels
    y64.backward(g.double())
    assert_close(dx, x64.grad, dtype, msg="dx")


def test_softmax_staged_rows_take_one_exp_where_their_fp32_copy_fits(smem_limit):
    # Staged rows widen to fp32 so their exponentials overwrite them in place (one exp2 per
    # element); a 16-bit row whose fp32 copy does not fit stays raw and recomputes exp2.
    x = _rows_input(2, 20001, torch.bfloat16, "contiguous", scale=3.0)
    for limit, kernel in ((227 * 1024, "softmax_fwd_smem<__nv_bfloat16, float, 512>"),
                          (64 * 1024, "softmax_fwd_smem<__nv_bfloat16, __nv_bfloat16, 1024>")):
        smem_limit(limit)
        y, kernels = _run_recording(lambda: cuda_emu.softmax(x, 0.7))
        assert len(kernels) == 1 and kernels[0].split("::")[-1].startswith(kernel), kernels
        assert_close(y, torch.softmax(x.double() / 0.7, dim=-1), torch.bfloat16, msg=kernel)


def test_softmax_rows_propagate_nan_and_inf_on_every_path(smem_limit):
    for n, layout, limit in ((33, "contiguous", None), (33, "sliced", None), (20001, "contiguous", None),
                             (20001, "contiguous", 2048)):
        smem_limit(limit or 227 * 1024)
        x = _rows_input(4, n, torch.float32, layout)
        x[0, 5], x[1, n - 1], x[2, :] = float("nan"), float("inf"), float("-inf")
        y = cuda_emu.softmax(x, 1.0)
        ref = torch.softmax(x.double(), dim=-1)
        assert torch.equal(y.isnan(), ref.isnan()), (n, layout, limit)
        torch.testing.assert_close(y[3].double(), ref[3], atol=1e-6, rtol=1e-5)


LN_PATHS = [
    (7, "one_row", None, "ln_fwd_regs<", "ln_bwd_regs<"),          # registers with a scalar tail (x + r stored exactly)
    (7, "contiguous", None, "ln_fwd_smem<", "ln_bwd_smem<"),       # odd width: rows at phases the weight is not
    (1024, "contiguous", None, "ln_fwd_regs<", "ln_bwd_fused<"),   # the register path (a block per row)
    (40, "contiguous", None, "ln_fwd_regs<", "ln_bwd_fused<"),     # a warp per row
    (1001, "sliced", None, "ln_fwd_smem<", "ln_bwd_smem<"),
    (8201, "contiguous", None, "ln_fwd_smem<", "ln_bwd_smem<"),    # long rows: 512 threads
    (1001, "sliced", 2048, "ln_fwd_stream<", "ln_bwd_stream<"),    # beyond shared memory
]


# fp16 takes bf16's paths (same element size, so the same phases and packs): left to the
# shape tests above, to keep the emulator's time down.
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("residual", [False, True], ids=["layer_norm", "add_layer_norm"])
@pytest.mark.parametrize("case", LN_PATHS, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def test_layer_norm_rows_at_any_alignment(case, residual, dtype, smem_limit):
    n, layout, limit, fwd_kernel, bwd_kernel = case
    if limit:
        smem_limit(limit)
    rows, layout = (1, "contiguous") if layout == "one_row" else (2, layout)
    x = _rows_input(rows, n, dtype, layout, scale=2.0, shift=3.0)
    r = _rows_input(rows, n, dtype, layout) if residual else None
    w, b = _randn(n, dtype=dtype), _randn(n, dtype=dtype)
    (y, mean, rstd, s), kernels = _run_recording(lambda: cuda_emu.layer_norm(x, w, b, 1e-5, residual=r))
    assert kernels[0].split("::")[-1].startswith(fwd_kernel), kernels
    if residual:
        assert torch.equal(s, x + r)
    normed = s if residual else x
    x64, w64, b64 = (t.double().requires_grad_() for t in (normed, w, b))
    y64 = F.layer_norm(x64, (n,), w64, b64, 1e-5)
    assert_close(y, y64, dtype, msg="y")
    torch.testing.assert_close(mean.double(), x64.detach().mean(-1), atol=1e-5, rtol=1e-5)
    g = _rows_input(rows, n, dtype, layout)
    dsum = _rows_input(rows, n, dtype, layout) if residual else None
    y64.backward(g.double())
    (dx, dw, db), kernels = _run_recording(lambda: cuda_emu.layer_norm_backward(g, normed, w, mean, rstd,
                                                                               dsum=dsum))
    assert kernels[0].split("::")[-1].startswith(bwd_kernel), kernels
    expected_dx = x64.grad + (dsum.double() if residual else 0)
    for name, ours, ref in (("dx", dx, expected_dx), ("dw", dw, w64.grad), ("db", db, b64.grad)):
        assert_close(ours, ref, dtype, msg=name)


@pytest.mark.parametrize("n,layout", [(7, "contiguous"), (1024, "contiguous"), (1001, "sliced"), (8201, "contiguous")])
def test_layer_norm_constant_rows_are_exact_on_every_path(n, layout):
    for value in (0.0, 3.7, -1e4):
        x = _rows_input(2, n, torch.bfloat16, layout, scale=0.0, shift=value)
        w, b = _randn(n, dtype=torch.bfloat16), _randn(n, dtype=torch.bfloat16)
        y, mean, rstd, _ = cuda_emu.layer_norm(x, w, b, 1e-5)
        assert torch.equal(y, b.expand_as(y)), (n, layout, value)
        y, _, _, s = cuda_emu.layer_norm(x, None, b, 1e-5, residual=torch.zeros_like(x))
        assert torch.equal(y, b.expand_as(y)), (n, layout, value)


def test_layer_norm_backward_reads_aligned_rows_once():
    # Rows 16-byte aligned and whole packs wide: dx and the dw/db partials in one kernel (x and
    # dy read once), 70 rows in 3 chunks of 24 (16 lanes per block: the last iterations have
    # idle lanes); misaligned rows: dx, then the scalar partials kernel reads them again.
    x, g = _randn(70, 64, dtype=torch.bfloat16) + 2.0, _randn(70, 64, dtype=torch.bfloat16)
    w = _randn(64, dtype=torch.bfloat16)
    _, mean, rstd, _ = cuda_emu.layer_norm(x, w, None)
    (dx, dw, db), kernels = _run_recording(lambda: cuda_emu.layer_norm_backward(g, x, w, mean, rstd))
    assert [k.split("::")[-1].split("<")[0] for k in kernels] == ["ln_bwd_fused", "column_sum_kernel",
                                                                  "column_sum_kernel"], kernels
    xs = (_randn(70, 65, dtype=torch.bfloat16) + 2.0)[:, 1:]  # misaligned rows: the scalar partials
    _, mean, rstd, _ = cuda_emu.layer_norm(xs, w, None)
    (dx2, dw2, db2), kernels = _run_recording(lambda: cuda_emu.layer_norm_backward(g, xs, w, mean, rstd))
    assert any("norm_param_partials_kernel<" in k for k in kernels), kernels
    for xx, dxx, dwx, dbx in ((x, dx, dw, db), (xs, dx2, dw2, db2)):
        x64, w64 = xx.double().requires_grad_(), w.double().requires_grad_()
        F.layer_norm(x64, (64,), w64, None, 1e-5).backward(g.double())
        assert_close(dxx, x64.grad, torch.bfloat16, msg="dx")
        assert_close(dwx, w64.grad, torch.bfloat16, msg="dw")
        assert_close(dbx, g.double().sum(0), torch.bfloat16, msg="db")


# ---------------------------------------------------------------------------------------
# sample: the kernel draws what the C++ CPU implementation draws (same Philox uniform per
# row, same rule; tests/test_sample.py checks that one against the exact distribution)
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, dtype", [(1, torch.float32), (2, torch.bfloat16), (30, torch.float16),
                                      (30, torch.bfloat16), (2049, torch.float32), (50257, torch.bfloat16)],
                         ids=str)  # the 128-thread (n <= 2048) and 512-thread blocks
def test_sample_kernel_matches_the_cpu_implementation(n, dtype):
    import kernels
    if kernels.unavailable_reason("cuda", "cpu") is not None:
        pytest.skip(kernels.unavailable_reason("cuda", "cpu"))
    rows = 8 if n <= 2048 else 2
    base = _randn(rows, n + 3, dtype=dtype, scale=2.0)
    logits = base[:, 3:]  # a row stride other than n
    logits[0, n // 2] = float("nan")
    seed = torch.tensor([1234567890123], dtype=torch.int64)
    for t, k, p in ((0.0, 0, 1.0), (1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.6), (0.9, 40, 0.9)):
        got = cuda_emu.sample(logits, int(seed), t, k, p)
        want = torch.ops.gptk.sample_cuda(logits, seed, t, k, p)
        assert torch.equal(got, want), (t, k, p, (got != want).nonzero().flatten().tolist())
        assert got[0].item() == -1


# ---------------------------------------------------------------------------------------
# what hardware leaves undefined, made to show (emulator.h), each check shown to fail on a
# deliberately broken copy of the kernels (only the edited unit recompiles: seconds)
# ---------------------------------------------------------------------------------------
def _offset_rows(rows, n, dtype, scale=1.0, shift=0.0):
    """Rows of a view at storage offset 1: the first starts one element past a 16-byte
    boundary, and for odd n each of the others at another phase."""
    return (_randn(rows * n + 1, dtype=dtype, scale=scale) + shift)[1:].view(rows, n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n", [1001, 50257])
def test_row_kernels_peel_misaligned_row_starts(n, dtype):
    """softmax, layer_norm and add_layer_norm, forward and backward, on misaligned rows:
    they move rows in 16-byte packs, and the emulator faults on any access not aligned to
    its width (test_misaligned_vector_access_faults); the kernels peel a scalar head up to
    the first 16-byte boundary, so none is, and the results are right."""
    x, g = _offset_rows(2, n, dtype, scale=2.0, shift=1.0), _offset_rows(2, n, dtype)
    r, w, b = _offset_rows(2, n, dtype), _offset_rows(1, n, dtype)[0], _offset_rows(1, n, dtype)[0]
    assert x.data_ptr() % 16 != 0 and w.data_ptr() % 16 != 0
    y = cuda_emu.softmax(x, 0.7)
    x64 = x.double().requires_grad_()
    y64 = torch.softmax(x64 / 0.7, dim=-1)
    y64.backward(g.double())
    assert_close(y, y64, dtype, msg="softmax y")
    assert_close(cuda_emu.softmax_backward(g, y, 0.7), x64.grad, dtype, msg="softmax dx")
    for residual in (None, r):
        y, mean, rstd, s = cuda_emu.layer_norm(x, w, b, 1e-5, residual=residual)
        normed = x if residual is None else s
        x64, w64, b64 = (t.double().requires_grad_() for t in (normed, w, b))
        y64 = F.layer_norm(x64, (n,), w64, b64, 1e-5)
        y64.backward(g.double())
        assert_close(y, y64, dtype, msg="layer_norm y")
        dsum = None if residual is None else g
        # the launcher forms the dweight/dbias partials at every width; their column sums do
        # not depend on the row length (test_layer_norm_backward_reads_aligned_rows_once)
        dx, dw, db = cuda_emu.layer_norm_backward(g, normed, w, mean, rstd, dsum=dsum, params=n < 50000)
        assert_close(dx, x64.grad + (0 if dsum is None else dsum.double()), dtype, msg="layer_norm dx")
        if dw is not None:
            assert_close(dw, w64.grad, dtype, msg="layer_norm dw")
            assert_close(db, b64.grad, dtype, msg="layer_norm db")


def test_misaligned_vector_access_faults(tmp_path):
    """softmax's register kernel with its head peel disabled issues 16-byte loads from
    rows that start 4 bytes past a boundary: the launch fails naming the kernel, the
    access, its address and width, and the source line."""
    csrc = cuda_emu.broken_csrc(tmp_path, [("cuda/softmax.cu", "  const RowSpan<T> sp(xr, n);\n  const int t",
                                            "  RowSpan<T> sp(xr, n);\n  sp.head = 0, sp.packs = n / VEC, "
                                            "sp.tail0 = sp.packs * VEC, sp.tail = n - sp.tail0;\n  const int t")])
    x = _randn(3, 1001, dtype=torch.float32)  # row 1 starts 1001 * 4 bytes in
    with cuda_emu.variant(csrc), pytest.raises(RuntimeError) as fault:
        cuda_emu.softmax(x, 1.0)
    assert re.search(r"softmax_forward: cudaError 716 in kernel void gptk::cuda::\(anonymous namespace\)::"
                     r"softmax_fwd_regs<float, 64>\(.*\): misaligned address: .* 'const struct Pack' at "
                     r"0x[0-9a-f]*[4c] is not 16-byte aligned at csrc/cuda/common.cuh:\d+", str(fault.value)), \
        str(fault.value)
    cuda_emu.softmax(x, 1.0)  # the real kernels, after the fault: nothing left over


def test_shared_memory_starts_as_nan(tmp_path):
    """column_sum adding all 32 lanes when only the lanes that had a chunk stored theirs:
    right if shared memory started zeroed, wrong on hardware. Every block's shared memory
    starts as NaN here, so the sum is NaN."""
    csrc = cuda_emu.broken_csrc(tmp_path, [("cuda/gelu_linear.cu", "  lanes[threadIdx.y][threadIdx.x] = s;",
                                            "  if (threadIdx.y < chunks) lanes[threadIdx.y][threadIdx.x] = s;")])
    g, pre = _randn(40, 70, dtype=torch.float32), _randn(40, 70, dtype=torch.float32)  # 40 rows: 2 chunks
    with cuda_emu.variant(csrc):
        _, db = cuda_emu.gelu_backward(g, pre, True)
    assert db.isnan().all()
    assert torch.isfinite(cuda_emu.gelu_backward(g, pre, True)[1]).all()


def test_outputs_start_as_nan(tmp_path):
    """softmax's register kernel forgetting the peeled head's outputs: the glue allocates
    outputs as entry.cpp does (at::empty) and fills them with NaN, so the unwritten
    elements show whatever the allocator would have left there."""
    csrc = cuda_emu.broken_csrc(tmp_path, [("cuda/softmax.cu", "  if (has_head) yr[t] = from_float<T>(he * inv);\n",
                                            "")])
    x = _randn(3, 1001, dtype=torch.float32)  # row 1 starts 1 element past a boundary: a head of 3
    with cuda_emu.variant(csrc):
        y = cuda_emu.softmax(x, 1.0)
    assert y[1, :3].isnan().all() and not y[0].isnan().any() and not y[1, 3:].isnan().any()


def test_build_fuses_multiply_add_as_nvcc_does():
    """nvcc fuses a * b + c into one rounding by default; the emulator's build does too
    (emulator.h states what still differs), so a kernel that needs a product rounded on
    its own (attention's scaled_score, by __fmul_rn) must say so here as on the GPU."""
    if not cuda_emu.cpu_has_fma():
        pytest.skip("this CPU has no FMA instructions: the emulator rounds a * b + c twice (emulator.h)")
    assert cuda_emu.contracts()


def test_shared_declarations_rewrite_with_comparisons_in_their_bounds():
    """A bound such as [T > 32 ? T / 32 : 1] (ln_bwd_fused) reaches the shared-memory slot
    through a type alias, and its > neither closes a template list nor hides a comma."""
    out = cuda_emu.rewrite("__shared__ Pack<float, 4> a[T > 32 ? T / 32 : 1], b[N];\n", "case")
    assert "using gptk_emu_type_a = Pack<float, 4>[T > 32 ? T / 32 : 1];" in out
    assert "using gptk_emu_type_b = Pack<float, 4>[N];" in out
    assert "shared<gptk_emu_type_a, 0>(gptk_emu_slot_a)" in out and out.count("\n") == 1


# ---------------------------------------------------------------------------------------
# host glue: tests/cuda_emu.py's wrappers do what csrc/cuda/entry.cpp (and common/lce.h)
# do around the launchers, so the emulated kernels run on what the GPU's run on
# ---------------------------------------------------------------------------------------
_CPP_KEYWORDS = {"if", "for", "while", "switch", "return", "catch", "sizeof", "decltype", "static_assert"}


def _cpp_functions(text):
    """{name: body} of the function definitions in C++ source `text` (comments and string
    literals blanked first; bodies are skipped, so nested lambdas are not listed)."""
    text = re.sub(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\])*"', lambda m: " " * len(m.group(0)), text, flags=re.S)
    out, pos = {}, 0
    head = re.compile(r"\b([A-Za-z_]\w*)\s*\(")
    while (m := head.search(text, pos)) is not None:
        pos = m.end()
        if m.group(1) in _CPP_KEYWORDS:
            continue
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        after = re.match(r"\s*(?:const\s*)?(?:noexcept\s*)?\{", text[i:])
        if after is None:
            continue
        start = i + after.end()
        depth, j = 1, start
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        out[m.group(1)] = text[start:j - 1]
        pos = j
    return out


def _cpp_glue(body):
    """What a C++ entry function decides around its launchers."""
    allocs = {m.group(1): m.group(2) for m in re.finditer(r"(\w+)\s*=\s*(?:[^;=]*\?\s*)?at::(empty|zeros)\(", body)}
    allocs.update({m.group(1): "empty" for m in re.finditer(r"\[\s*(\w+)\s*,[^\]]*\]\s*=\s*empty_rows_like\(", body)})
    return {"allocations": allocs,
            "zeroed": set(re.findall(r"(\w+)\.zero_\(\)", body)),
            "aligned": set(re.findall(r"(\w+)\s*=\s*aligned\(", body)),
            "launchers": re.findall(r"(?<![:\w])cuda::(\w+)\(", body)}


def _py_glue(name, functions, launchers):
    """The same facts of the wrapper `name`, walking into the module's helpers it calls;
    `launchers` are launch.h's (the harness calls them emu_<name>)."""
    facts = {"allocations": {}, "zeroed": set(), "aligned": set(), "launchers": []}
    kinds = {"_empty": "empty", "_zeros": "zeros"}

    def visit(node):
        if isinstance(node, ast.Assign):
            # x = _empty(..), or x = _empty(..) if a else None
            value = node.value.body if isinstance(node.value, ast.IfExp) else node.value
            kind = kinds.get(getattr(value.func, "id", None)) if isinstance(value, ast.Call) else None
            for target in node.targets:
                if isinstance(target, ast.Name) and kind:
                    facts["allocations"][target.id.rstrip("_")] = kind
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Tuple):  # q, k = _aligned(q_in), ...
            for target, value in zip(getattr(node.targets[0], "elts", ()), node.value.elts):
                if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "_aligned":
                    facts["aligned"].add(target.id)
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Attribute) and f.attr == "zero_" and isinstance(f.value, ast.Name):
                facts["zeroed"].add(f.value.id.rstrip("_"))
            elif isinstance(f, ast.Attribute) and f.attr.startswith("emu_") and f.attr[len("emu_"):] in launchers:
                facts["launchers"].append(f.attr[len("emu_"):])
            elif isinstance(f, ast.Name) and f.id in functions:
                for stmt in functions[f.id].body:
                    visit(stmt)
        for child in ast.iter_child_nodes(node):
            visit(child)

    for stmt in functions[name].body:
        visit(stmt)
    return facts


def _glue_drift(cpp_sources, py_source):
    """Each difference between the wrappers of cuda_emu.MIRRORS and the C++ they mirror,
    and each C++ function that calls a launcher but has no mirror."""
    cpp = {}
    for text in cpp_sources:
        cpp.update(_cpp_functions(text))
    with open(os.path.join(cuda_emu.CSRC, "cuda", "launch.h")) as f:
        launchers = set(re.findall(r"^(?:cudaError_t|int64_t|int)\s+(\w+)\(", f.read(), re.M))
    py = {n.name: n for n in ast.parse(py_source).body if isinstance(n, ast.FunctionDef)}
    problems = []
    mirrored = set()
    for wrapper, (functions, left_out) in cuda_emu.MIRRORS.items():
        want = {"allocations": {}, "zeroed": set(), "aligned": set(), "launchers": []}
        for fn in functions:
            mirrored.add(fn)
            facts = _cpp_glue(cpp[fn])
            want["allocations"].update({k: v for k, v in facts["allocations"].items() if k not in left_out})
            want["zeroed"] |= facts["zeroed"] - set(left_out)
            want["aligned"] |= facts["aligned"]
            want["launchers"] += facts["launchers"]
        got = _py_glue(wrapper, py, launchers)
        for key in want:
            if got[key] != want[key]:
                problems.append(f"cuda_emu.{wrapper} vs {'+'.join(functions)}: {key} {got[key]} != {want[key]}")
    for fn, body in cpp.items():
        if _cpp_glue(body)["launchers"] and fn not in mirrored:
            problems.append(f"{fn} calls launchers {_cpp_glue(body)['launchers']} but no cuda_emu wrapper mirrors it")
    return problems


def _glue_sources():
    def read(path):
        with open(path) as f:
            return f.read()
    cpp = [read(os.path.join(cuda_emu.CSRC, "cuda", "entry.cpp")), read(os.path.join(cuda_emu.CSRC, "common", "lce.h"))]
    return cpp, read(cuda_emu.__file__)


def test_host_glue_mirrors_entry_cpp():
    """Allocation kind (empty/zeros) of every tensor the launchers write, later zero_()
    calls, aligned copies of inputs and the launcher sequence agree between each wrapper
    and the C++ it mirrors; an entry point with launchers and no wrapper fails too. (Grid,
    block, shared memory and kernel choices are the launchers' own, compiled as they are.)"""
    cpp_sources, py_source = _glue_sources()
    assert _glue_drift(cpp_sources, py_source) == []
    # the drift this test exists for: dK/dV zero-filled on one side only
    entry, lce = cpp_sources
    zeros = entry.replace("at::Tensor dk = at::empty(", "at::Tensor dk = at::zeros(")
    assert any("attention_backward" in p and "'dk': 'zeros'" in p for p in _glue_drift([zeros, lce], py_source))
    py_zeros = py_source.replace("dv = _empty(b, h, tk, d", "dv = _zeros(b, h, tk, d")
    assert any("'dv': 'zeros'" in p for p in _glue_drift(cpp_sources, py_zeros))
    # a launcher added to an entry point, an aligned() copy dropped, a new entry point
    extra = entry.replace("C10_CUDA_CHECK(cuda::column_sum(dt, pb,", "C10_CUDA_CHECK(cuda::column_sum(dt, pb + 0,")
    extra = extra.replace("cuda::layer_norm_backward(", "cuda::column_chunks(rows); cuda::layer_norm_backward(")
    assert any("norm_backward" in p and "launchers" in p for p in _glue_drift([extra, lce], py_source))
    unaligned = entry.replace("dout = aligned(dout_in);", "dout = dout_in;")
    assert any("aligned" in p for p in _glue_drift([unaligned, lce], py_source))
    new_op = entry + "\nvoid new_op_cuda(at::Tensor& x) { C10_CUDA_CHECK(cuda::gelu_forward(x)); }\n"
    assert any("new_op_cuda" in p for p in _glue_drift([new_op, lce], py_source))
