"""Attention: parity with an fp64 explicit softmax(QK^T)V, gradients, the flash-decoding
split path, strided views, edge values, bad input and the KV-cache model path, per backend.

Accuracy follows FlashAttention's rule (helpers.assert_within_torch_error): our error vs
fp64 is at most 2x (forward) / 3x (backward) PyTorch's own error in the same dtype, where
PyTorch's result is reference.attention_explicit run on the low-precision inputs.
"""
import math

import pytest
import torch

import gpt
import kernels
from kernels import reference
from helpers import (DEVICE, INTERPRET, TOL, assert_close, assert_lengths_attention, assert_within_torch_error,
                     backends_here, needs_gpu, randn)

BACKENDS = [b for b in backends_here() if "attention" not in kernels.missing_ops(b, ("attention",))]
pytestmark = pytest.mark.skipif(not BACKENDS, reason="no compiled backend implements attention here")

BF16_REASON = ("bf16 tl.dot is wrong under the Triton interpreter (it multiplies raw bit patterns; "
               "Triton issue 11584): bf16 attention is tested on a GPU")

# (B, H, Tq, Tk, D): training shapes, a prefill chunk against a cache (Tq < Tk), decode
# rows against long keys (the flash-decoding split path), a block-unaligned everything.
CASES = [
    (2, 3, 77, 77, 64),
    (1, 2, 128, 128, 32),
    (1, 4, 1, 200, 64),      # decode, one row: split path
    (2, 1, 13, 40, 16),      # a few rows against more keys: split path
    (1, 1, 257, 257, 128),
    (1, 2, 24, 100, 32),     # prefill chunk appended to a cache
    (2, 2, 4, 130, 16),      # decode, 4 rows; the last split holds keys no earlier row sees
    (1, 3, 33, 65, 128),
]


def _qkv(B, H, Tq, Tk, D, dtype, scale=1.0):
    return (randn(B, H, Tq, D, dtype=dtype, scale=scale), randn(B, H, Tk, D, dtype=dtype, scale=scale),
            randn(B, H, Tk, D, dtype=dtype, scale=scale))


def _grads(fn, q, k, v, do):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    out.backward(do.to(out.dtype))
    return out.detach(), q.grad, k.grad, v.grad


def _check_parity(backend, B, H, Tq, Tk, D, causal, dtype, backward):
    q, k, v = _qkv(B, H, Tq, Tk, D, dtype)
    do = randn(B, H, Tq, D, dtype=torch.float64)

    def ours(q, k, v):
        return kernels.attention(q, k, v, causal=causal, backend=backend)

    def explicit(q, k, v):
        return reference.attention_explicit(q, k, v, causal)

    if not backward:
        out = ours(q, k, v)
        assert out.dtype == dtype and out.shape == (B, H, Tq, D)
        ref64 = explicit(q.double(), k.double(), v.double())
        assert_within_torch_error(out, explicit(q, k, v), ref64, 2, what=f"{dtype} forward")
        return
    got = _grads(ours, q, k, v, do)
    same = _grads(explicit, q, k, v, do)
    ref = _grads(explicit, q.double(), k.double(), v.double(), do)
    for name, g, s, r, factor in zip(("out", "dq", "dk", "dv"), got, same, ref, (2, 3, 3, 3)):
        assert g.dtype == dtype
        assert_within_torch_error(g, s, r, factor, what=f"{dtype} {name}")


def _interpreted(backend):
    return backend == "triton" and INTERPRET


# Every dtype, forward and backward, except under the Triton interpreter: there fp16 runs
# forward only (the interpreter is slow) and bf16 not at all (its tl.dot is wrong). The
# cuda backend's C++ CPU implementation runs them all.
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_parity(backend, case, causal, dtype):
    if dtype == torch.bfloat16 and _interpreted(backend):
        pytest.skip(BF16_REASON)
    backward = not (dtype == torch.float16 and _interpreted(backend))
    _check_parity(backend, *case, causal, dtype, backward)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", [(2, 3, 77, 77, 64), (2, 2, 4, 130, 16)], ids=str)
def test_fp16_backward(backend, case):
    _check_parity(backend, *case, True, torch.float16, backward=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", [(1, 2, 40, 17, 32), (2, 1, 5, 1, 16)], ids=str)
def test_non_causal_more_queries_than_keys(backend, case):
    _check_parity(backend, *case, False, torch.float32, backward=True)


# Every multiple of 8 from 8 to 256 runs, padded to the kernels' tiles: the dims models bring
# (80, 96, 256; 8 for a tiny GPT) and ones that fill no power-of-two tile (24, 40, 72, 160,
# 192). Two shapes each: a block-unaligned causal prefill and rows against a longer cache
# (non-causal; the flash-decoding split path on the triton backend). Small for the
# interpreter, smallest for the widest dims.
HEAD_DIMS = [8, 24, 40, 72, 80, 96, 160, 192, 256]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("D", HEAD_DIMS)
def test_head_dims(backend, D, dtype):
    if dtype == torch.bfloat16 and _interpreted(backend):
        pytest.skip(BF16_REASON)
    backward = not (dtype == torch.float16 and _interpreted(backend))
    prefill, cache = ((1, 2, 21, 21), (1, 2, 3, 70)) if D < 160 else ((1, 1, 9, 9), (1, 1, 2, 40))
    _check_parity(backend, *prefill, D, True, dtype, backward)
    _check_parity(backend, *cache, D, False, dtype, backward)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gpt_with_head_dim_8(backend):
    """n_embd 16 over 2 heads: the smallest head dim, through the whole model on the backend
    (forward, and generation with and without the KV cache)."""
    torch.manual_seed(0)
    cfg = gpt.GPTConfig(vocab_size=37, block_size=32, n_layer=1, n_head=2, n_embd=16, backend="torch")
    model = gpt.GPT(cfg).to(DEVICE).eval()
    idx = torch.randint(0, 37, (2, 11), device=DEVICE)
    torch_logits, _ = model(idx)
    model.set_backend(backend)
    logits, _ = model(idx)
    assert_close(logits, torch_logits, torch.float32)
    cached = model.generate(idx, 6, temperature=0)
    assert torch.equal(cached, model.generate(idx, 6, temperature=0, use_cache=False))


@pytest.mark.parametrize("backend", BACKENDS)
def test_scale_and_large_logits(backend):
    q, k, v = _qkv(2, 2, 37, 53, 32, torch.float32, scale=4.0)  # peaked softmax: large score range
    for scale in (None, 0.05, 1.0, -0.3):
        out = kernels.attention(q, k, v, causal=True, scale=scale, backend=backend)
        ref64 = reference.attention_explicit(q.double(), k.double(), v.double(), True, scale)
        assert_within_torch_error(out, reference.attention_explicit(q, k, v, True, scale), ref64, 2,
                                  what=f"scale={scale}")


# -- kv_lengths: a static KV cache read whole (CUDA-graph decode) ----------------------------

def _lengths_case(B, H, Tq, Tk, D, dtype):
    """q, k, v and per-sequence lengths: Tq (the fewest a causal call allows), Tk (all),
    Tq + 5 (every key split but the first past it) and one in between; int32."""
    q, k, v = _qkv(B, H, Tq, Tk, D, dtype)
    lengths = torch.tensor([Tq, Tk, Tq + 5, (Tq + Tk) // 2][:B], dtype=torch.int32, device=DEVICE)
    return q, k, v, lengths


def _check_lengths(out, q, k, v, lengths, causal, what=""):
    ref64 = reference.attention_explicit(q.double(), k.double(), v.double(), causal, kv_lengths=lengths)
    same = reference.attention_explicit(q, k, v, causal, kv_lengths=lengths)
    assert out.dtype == q.dtype and out.shape == q.shape
    assert_within_torch_error(out, same, ref64, 2, what=what)


# Tq 1 and 3: the triton GEMV decode kernel (its keys split, later splits past the short
# lengths), 16: flash-decoding on the MMA tile, 40: the regular forward (a prefill against a
# static cache); the cuda backend's C++ CPU code here, its kernels in test_cuda_emulated.py.
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("Tq", [1, 3, 16, 40])
def test_kv_lengths_parity(backend, Tq, causal, dtype):
    if dtype == torch.bfloat16 and _interpreted(backend):
        pytest.skip(BF16_REASON)
    q, k, v, lengths = _lengths_case(4, 1, Tq, 200, 32, dtype)
    with torch.no_grad():
        out = kernels.attention(q, k, v, causal=causal, kv_lengths=lengths, backend=backend)
    _check_lengths(out, q, k, v, lengths, causal, what=f"{dtype} Tq={Tq}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_kv_lengths_equal_slicing_each_sequence(backend):
    """int64 lengths as gpt.KVCache makes them (and an expanded view of one length, which
    the triton launcher copies to index densely): sequence b sees exactly its first
    lengths[b] keys, the same as a call on the sliced cache."""
    q, k, v, lengths = _lengths_case(4, 2, 1, 70, 16, torch.float32)
    with torch.no_grad():
        out = kernels.attention(q, k, v, kv_lengths=lengths.long(), backend=backend)
        for b, n in enumerate(lengths.tolist()):
            alone = kernels.attention(q[b:b + 1], k[b:b + 1, :, :n], v[b:b + 1, :, :n], backend=backend)
            assert_close(out[b:b + 1], alone, torch.float32)
        same = torch.full((1,), 33, dtype=torch.long, device=DEVICE).expand(4)
        out = kernels.attention(q, k, v, kv_lengths=same, backend=backend)
        assert_close(out, kernels.attention(q, k[:, :, :33], v[:, :, :33], backend=backend), torch.float32)


# Lengths a caller should not pass but the kernels must survive: 0, shorter than the queries
# (causal rows before the first key see nothing), past the cache (clamped to Tk), negative.
# A row that sees no key is 0, as PyTorch's SDPA gives it (the explicit softmax's NaN rows);
# the rest match the reference.
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("Tq", [3, 16, 40])
def test_kv_lengths_shorter_than_the_queries(backend, Tq, causal):
    Tk = 70
    q, k, v = _qkv(4, 2, Tq, Tk, 24, torch.float32)
    lengths = torch.tensor([0, Tq // 2 + 1, Tk + 50, -3], device=DEVICE)
    with torch.no_grad():
        out = kernels.attention(q, k, v, causal=causal, kv_lengths=lengths, backend=backend)
    assert_lengths_attention(out, q, k, v, lengths, causal, what=f"Tq={Tq}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_kv_lengths_op_is_forward_only(backend):
    """kernels.attention refuses kv_lengths with a gradient (test_decode_graph.py); the bare op
    raises at backward rather than give the gradient of the unmasked attention."""
    if backend == "triton":
        from kernels.triton.attention import attention_op as op
    else:
        op = torch.ops.gptk.attention_cuda
    q = randn(2, 1, 3, 16).requires_grad_()
    lengths = torch.tensor([3, 3], device=DEVICE)
    out, _ = op(q, q.detach(), q.detach(), True, 0.25, lengths)
    with pytest.raises(RuntimeError, match="kv_lengths is forward only"):
        out.sum().backward()


# -- triton internals: the split path, pinned tilings -------------------------------------

def _triton_module():
    if "triton" not in BACKENDS:
        pytest.skip("triton backend not usable here")
    import kernels.triton.attention as attn
    return attn


@pytest.mark.parametrize("shape", [(1, 4, 1, 200, 64), (2, 1, 13, 40, 16), (2, 2, 4, 130, 16),
                                   (1, 2, 16, 300, 32)], ids=str)
def test_decode_shapes_take_the_split_path_and_match_the_regular_kernel(shape):
    attn = _triton_module()
    B, H, Tq, Tk, D = shape
    if attn.decode_splits(Tq, Tk, B * H, DEVICE) < 2:
        pytest.skip(f"Tk={Tk} is below two decode units ({attn.DECODE_UNIT} keys) on this device")
    q, k, v = _qkv(B, H, Tq, Tk, D, torch.float32)
    for causal in (True, False):
        o_split, lse_split = attn.attention_forward(q, k, v, causal, D ** -0.5, split=True)
        o_full, lse_full = attn.attention_forward(q, k, v, causal, D ** -0.5, split=False)
        assert_close(o_split, o_full, torch.float32)
        assert_close(lse_split, lse_full, torch.float32)
        ref64 = reference.attention_explicit(q.double(), k.double(), v.double(), causal)
        assert_within_torch_error(o_split, reference.attention_explicit(q, k, v, causal), ref64, 2)


@pytest.mark.parametrize("Tq", [1, 3, 16])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_decode_paths_match_the_regular_kernel(Tq, causal, dtype):
    """Tq <= DECODE_GEMV_TQ: the GEMV-shaped kernel (rows in registers), in one launch or with
    its keys split across programs and combined; up to 16 rows: flash-decoding on the MMA
    tile. Irregular Tk (partial tiles, a last split shorter than the others)."""
    attn = _triton_module()
    B, H, Tk, D = 2, 3, 97, 40
    q, k, v = _qkv(B, H, Tq, Tk, D, dtype)
    scale = D ** -0.5
    ref64 = reference.attention_explicit(q.double(), k.double(), v.double(), causal)
    same = reference.attention_explicit(q, k, v, causal)
    _, lse_full = attn.attention_forward(q, k, v, causal, scale, split=False)
    runs = [attn.attention_forward(q, k, v, causal, scale)]  # the launcher's choice
    if Tq <= attn.DECODE_GEMV_TQ:
        for splits in (1, 2, 4):
            o, lse = attn.empty_bthd(q.shape, dtype, q.device), torch.empty(B, H, Tq, device=q.device)
            runs.append(attn._decode(q, k, v, o, lse, causal, scale * math.log2(math.e), splits=splits))
    for out, lse in runs:
        assert_within_torch_error(out, same, ref64, 2, what=f"Tq={Tq}")
        assert_close(lse, lse_full, torch.float32)


@pytest.mark.parametrize("Tq", [1, 3, 16])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_kv_lengths_on_every_decode_path(Tq, causal):
    """Each path a decode with kv_lengths can take, the key splits cut from the static Tk:
    the GEMV kernel unsplit and with 2 and 4 splits (the later ones wholly past the short
    lengths: empty partials the combine must weigh 0), flash-decoding, the regular forward.
    Output and lse agree across them and with the reference."""
    attn = _triton_module()
    B, H, Tk, D = 4, 1, 150, 40
    q, k, v, lengths = _lengths_case(B, H, Tq, Tk, D, torch.float32)
    scale = D ** -0.5
    with torch.no_grad():
        o_full, lse_full = attn.attention_forward(q, k, v, causal, scale, split=False, kv_lengths=lengths)
        runs = {"split": attn.attention_forward(q, k, v, causal, scale, split=True, kv_lengths=lengths),
                "chosen": attn.attention_forward(q, k, v, causal, scale, kv_lengths=lengths)}
        if Tq <= attn.DECODE_GEMV_TQ:
            for splits in (1, 2, 4):
                o, lse = attn.empty_bthd(q.shape, q.dtype, q.device), torch.empty(B, H, Tq, device=q.device)
                runs[f"gemv/{splits}"] = attn._decode(q, k, v, o, lse, causal, scale * math.log2(math.e),
                                                      splits=splits, kv_lengths=lengths)
    _check_lengths(o_full, q, k, v, lengths, causal, what="regular forward")
    for name, (out, lse) in runs.items():
        _check_lengths(out, q, k, v, lengths, causal, what=name)
        assert_close(lse, lse_full, torch.float32, msg=name)


def test_training_shapes_do_not_split():
    attn = _triton_module()
    assert attn.decode_splits(77, 77, 6, DEVICE) == 0
    assert attn.decode_splits(1, 8, 6, DEVICE) == 0  # too few keys to be worth splitting


# Tilings the autotuner may pick on a GPU, pinned here so the interpreter checks the causal
# tile bounds with BLOCK_M < BLOCK_N, ==, and > (the default interpreter tiling is fixed).
PINNED = [{"fwd": (16, 64, 4, 1), "dkdv": (64, 16, 4, 1), "dq": (16, 64, 4, 1)},
          {"fwd": (32, 32, 4, 1), "dkdv": (32, 32, 4, 1), "dq": (32, 32, 4, 1)},
          {"fwd": (64, 16, 4, 1), "dkdv": (16, 64, 4, 1), "dq": (64, 16, 4, 1), "split": (16, 64, 4, 1)},
          # the largest tiles of the sm_90 space (kernels.triton.attention._HOPPER_SPACE)
          {"fwd": (128, 128, 8, 1), "dkdv": (64, 128, 8, 1), "dq": (128, 64, 8, 1)}]


@pytest.mark.parametrize("configs", PINNED, ids=lambda c: "fwd%dx%d" % c["fwd"][:2])
@pytest.mark.parametrize("shape", [(1, 2, 45, 100, 32), (2, 1, 70, 70, 16), (1, 2, 3, 100, 16)], ids=str)
def test_pinned_tilings(configs, shape):
    attn = _triton_module()
    B, H, Tq, Tk, D = shape
    q, k, v = _qkv(B, H, Tq, Tk, D, torch.float32)
    do = randn(B, H, Tq, D)
    scale = D ** -0.5
    o, lse = attn.attention_forward(q, k, v, True, scale, configs=configs)
    grads = attn.attention_backward(do, q, k, v, o, lse, True, scale, configs=configs)
    ref = _grads(lambda q, k, v: reference.attention_explicit(q, k, v, True), q.double(), k.double(), v.double(),
                 do.double())
    same = _grads(lambda q, k, v: reference.attention_explicit(q, k, v, True), q, k, v, do)
    for name, g, s, r, factor in zip(("out", "dq", "dk", "dv"), (o, *grads), same, ref, (2, 3, 3, 3)):
        assert_within_torch_error(g, s, r, factor, what=name)


# TMA loads (GPTK_TMA=1 on sm_90): the tensor descriptors' copies zero the rows past Tq/Tk and
# the head dim's padding in place of the masked loads. Under the interpreter the same kernels
# run with emulated descriptors; on an sm_90 GPU, the real copies.
# Layouts: contiguous (B, H, T, D), and (B, T, H, D) read through a transposed view (the
# model's layout: row strides H D, head strides D).
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("configs", [None, PINNED[3]], ids=["default", "sm90_largest"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("shape", [(1, 2, 45, 100, 48), (2, 1, 70, 70, 16), (1, 1, 33, 65, 80), "bthd"], ids=str)
def test_tma_loads(monkeypatch, shape, causal, configs, dtype):
    attn = _triton_module()
    if not INTERPRET and attn._arch(torch.device(DEVICE)) != 90:
        pytest.skip("TMA loads run on sm_90 only")
    if dtype == torch.bfloat16 and INTERPRET:
        pytest.skip(BF16_REASON)
    monkeypatch.setattr(attn, "TMA", True)
    launched = []
    plain = attn._launch
    monkeypatch.setattr(attn, "_launch", lambda kind, *a, tma=False, **kw: (launched.append((kind, tma)),
                                                                              plain(kind, *a, tma=tma, **kw))[1])
    if shape == "bthd":
        B, H, Tq, Tk, D = 2, 3, 37, 37, 32
        q, k, v, do = (randn(B, Tq, H, D, dtype=dtype).transpose(1, 2) for _ in range(4))
    else:
        B, H, Tq, Tk, D = shape
        q, k, v = _qkv(B, H, Tq, Tk, D, dtype)
        do = randn(B, H, Tq, D, dtype=dtype)
    scale = D ** -0.5
    o, lse = attn.attention_forward(q, k, v, causal, scale, split=False, configs=configs)
    grads = attn.attention_backward(do, q, k, v, o, lse, causal, scale, configs=configs)
    assert sorted(launched) == [("dkdv", True), ("dq", True), ("fwd", True)]
    # Repeat backwards (on a GPU the third replays the recorded launches, inside device scratch).
    for _ in range(2):
        again = attn.attention_backward(do, q, k, v, o, lse, causal, scale, configs=configs)
        assert all(torch.equal(a, g) for a, g in zip(again, grads))
    explicit = lambda q, k, v: reference.attention_explicit(q, k, v, causal)  # noqa: E731
    ref = _grads(explicit, q.double(), k.double(), v.double(), do.double())
    same = _grads(explicit, q, k, v, do)
    for name, g, s, r, factor in zip(("out", "dq", "dk", "dv"), (o, *grads), same, ref, (2, 3, 3, 3)):
        assert_within_torch_error(g, s, r, factor, what=f"TMA {name}")


def test_tma_only_where_its_layout_holds(monkeypatch):
    attn = _triton_module()
    q = torch.empty(2, 3, 40, 64, dtype=torch.float16)
    bhm, n = q.stride()[:3], attn._programs(2, 3, 40)
    monkeypatch.setattr(attn, "TMA", False)
    assert not attn._tma(True, q.dtype, (q,), bhm, n)                           # not asked for
    monkeypatch.setattr(attn, "TMA", True)
    assert attn._tma(True, q.dtype, (q,), bhm, n)
    assert not attn._tma(True, q.dtype, (q,), bhm, n, lengths=True)             # kv_lengths: bounded at Tk
    assert not attn._tma(True, torch.float32, (q,), bhm, n)                     # fp32 keeps the sm_80 tiles
    assert not attn._tma(True, q.dtype, (q,), (bhm[0], bhm[1], 0), n)           # an expanded row: stride 0
    assert not attn._tma(True, q.dtype, (q,), bhm, attn.TMA_MAX_PROGRAMS + 1)   # scratch offsets past 2^31
    assert not attn._tma(False, q.dtype, (q[..., 1:],), bhm, n)                 # misaligned, not the Hopper tiles
    if not INTERPRET:
        assert not attn._tma(False, q.dtype, (q,), bhm, n)                      # not the Hopper tiles


def test_device_scratch_is_scoped_to_our_launches():
    # Triton's launcher asks a context variable for descriptor scratch: ours only inside, and a
    # caller's own allocator is left in place.
    from triton.runtime import _allocation

    from kernels.triton import _launch
    before = _allocation._allocator.get()
    assert isinstance(before, _allocation.NullAllocator)
    with _launch.device_scratch():
        assert _allocation._allocator.get() is _launch._torch_scratch
    assert _allocation._allocator.get() is before

    def theirs(size, alignment, stream):
        return None
    token = _allocation._allocator.set(theirs)
    try:
        with _launch.device_scratch():
            assert _allocation._allocator.get() is theirs
        assert _allocation._allocator.get() is theirs
    finally:
        _allocation._allocator.reset(token)


def test_sm90_tiles_only_for_aligned_launches_on_sm90(monkeypatch):
    # The Hopper tile space was compiled (and checked spill-free) for pointers and strides that
    # are multiples of 16; any other launch, or any other GPU, keeps the general space.
    attn = _triton_module()
    q = torch.empty(2, 3, 40, 64)
    monkeypatch.setattr(attn, "_arch", lambda device: 90)
    assert attn._hopper(q.device, (q,), q.stride()[:3])
    assert not attn._hopper(q.device, (q[..., 1:],), q.stride()[:3])          # address 4 bytes past alignment
    odd = torch.empty(2, 3, 40, 72)
    assert not attn._hopper(odd.device, (odd,), odd.stride()[:3])             # D = 72: head stride 72
    monkeypatch.setattr(attn, "_arch", lambda device: 80)
    assert not attn._hopper(q.device, (q,), q.stride()[:3])


# -- layouts ---------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_qkv_views_and_gradients(backend):
    B, T, nh, hs = 2, 37, 3, 32
    qkv = randn(B, T, 3 * nh * hs).requires_grad_()

    def heads(x):
        q, k, v = x.split(nh * hs, dim=2)
        return [t.view(B, T, nh, hs).transpose(1, 2) for t in (q, k, v)]  # (B, nh, T, hs), strided

    q, k, v = heads(qkv)
    assert not q.is_contiguous() and q.stride(-1) == 1
    out = kernels.attention(q, k, v, causal=True, backend=backend)
    if backend == "triton":
        assert out.transpose(1, 2).is_contiguous()  # laid out (B, T, H, D): the model's view back is free
    g = randn(B, nh, T, hs)
    out.backward(g)
    qkv64 = qkv.detach().double().requires_grad_()
    ref = reference.attention_explicit(*heads(qkv64), True)
    ref.backward(g.double())
    assert_close(out, ref, torch.float32)
    assert_close(qkv.grad, qkv64.grad, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS + ["torch"])
def test_strided_last_dim_is_refused_not_copied(backend):
    # A head dim with a non-unit stride would need a silent copy of q, k or v: refused on
    # every backend, naming the argument; the views a model makes have unit-stride rows.
    qkv = randn(2, 9, 3 * 64)
    q = qkv[..., :64].view(2, 9, 2, 32).transpose(1, 2)
    cache = randn(3, 2, 2, 50, 32)[1, :, :, :20]  # a layer's slice of a preallocated KV cache
    assert kernels.attention(q, cache, cache, backend=backend).shape == (2, 2, 9, 32)
    strided = randn(2, 9, 2, 64)[..., ::2].transpose(1, 2)  # (2, 2, 9, 32), D stride 2
    assert strided.stride(-1) == 2
    for name, args in (("q", (strided, q, q)), ("k", (q, strided, q)), ("v", (q, q, strided))):
        with pytest.raises(ValueError, match=f"{name} must have a unit-stride last dim"):
            kernels.attention(*args, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_arbitrary_strides(backend):
    base = randn(3, 40, 2, 128)
    q = base[:2, 5:30, :, :64].transpose(1, 2)          # (2, 2, 25, 64), unit last dim
    k = randn(2, 60, 2, 64).transpose(1, 2)              # (2, 2, 60, 64) tokens strided by 2 * 64
    v = randn(1, 2, 60, 64).expand(2, 2, 60, 64)         # stride 0 over the batch
    for causal in (True, False):
        out = kernels.attention(q, k, v, causal=causal, backend=backend)
        assert_close(out, reference.attention_explicit(q.double(), k.double(), v.double(), causal), torch.float32)


# -- edge cases ------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(0, 2, 5, 5, 16), (2, 0, 5, 5, 16), (1, 2, 0, 7, 32), (1, 2, 0, 0, 16)], ids=str)
def test_empty(backend, shape):
    B, H, Tq, Tk, D = shape
    q, k, v = (t.requires_grad_() for t in _qkv(B, H, Tq, Tk, D, torch.float32))
    out = kernels.attention(q, k, v, causal=True, backend=backend)
    assert out.shape == (B, H, Tq, D)
    out.sum().backward()
    assert q.grad.shape == q.shape and k.grad.shape == k.shape and v.grad.shape == v.shape
    assert not k.grad.any() and not v.grad.any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_keys_non_causal_is_zero_like_reference(backend):
    q, k, v = _qkv(1, 2, 3, 0, 16, torch.float32)
    q.requires_grad_()
    out = kernels.attention(q, k, v, causal=False, backend=backend)
    torch.testing.assert_close(out, reference.attention(q, k, v, causal=False))
    out.sum().backward()
    assert not q.grad.any()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("Tq,Tk", [(20, 20), (3, 70)])  # regular and split paths
def test_nan_propagates_like_torch(backend, Tq, Tk):
    q, k, v = _qkv(1, 1, Tq, Tk, 16, torch.float32)
    shift = Tk - Tq
    q[0, 0, 1, 3] = float("nan")             # poisons its own row only
    k[0, 0, shift + 2, 5] = float("nan")     # rows at or after absolute position shift+2 see it
    out = kernels.attention(q, k, v, causal=True, backend=backend)
    ref = reference.attention_explicit(q.double(), k.double(), v.double(), True)
    bad = torch.zeros(Tq, dtype=torch.bool)
    bad[1] = True
    bad[2:] = True
    assert torch.isnan(out[0, 0, bad]).all()
    assert not torch.isnan(out[0, 0, ~bad]).any()
    assert_close(out[0, 0, ~bad], ref[0, 0, ~bad], torch.float32)
    # NaN in v at key j reaches every row that attends to j.
    q, k, v = _qkv(1, 1, Tq, Tk, 16, torch.float32)
    v[0, 0, shift + 1, 0] = float("nan")
    out = kernels.attention(q, k, v, causal=True, backend=backend)
    assert torch.isnan(out[0, 0, 1:, 0]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_inf_query_matches_torch(backend):
    q, k, v = _qkv(1, 2, 9, 9, 16, torch.float32)
    q[0, 1, 4, 2] = float("inf")
    out = kernels.attention(q, k, v, causal=True, backend=backend)
    ref = reference.attention(q.double(), k.double(), v.double(), causal=True)
    torch.testing.assert_close(out.double().cpu(), ref.cpu(), equal_nan=True, **TOL[torch.float32])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(2, 2, 45, 45, 32), (1, 3, 2, 150, 16)], ids=str)
def test_deterministic(backend, shape):
    q, k, v = (t.requires_grad_() for t in _qkv(*shape, torch.float32))
    g = randn(*shape[:3], shape[4])
    runs = []
    for _ in range(2):
        q.grad = k.grad = v.grad = None
        out = kernels.attention(q, k, v, causal=True, backend=backend)
        out.backward(g)
        runs.append([out.detach().clone(), q.grad.clone(), k.grad.clone(), v.grad.clone()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


# -- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS + ["torch"])
def test_bad_input(backend):
    q, k, v = _qkv(2, 3, 5, 7, 16, torch.float32)
    with pytest.raises(ValueError, match="4-D"):
        kernels.attention(q[0], k, v, backend=backend)
    with pytest.raises(ValueError, match="batch size"):
        kernels.attention(q, k[:1], v[:1], backend=backend)
    with pytest.raises(ValueError, match="head count"):
        kernels.attention(q, k[:, :2], v[:, :2], backend=backend)
    with pytest.raises(ValueError, match="head dim"):
        kernels.attention(q, randn(2, 3, 7, 32), randn(2, 3, 7, 32), backend=backend)
    with pytest.raises(ValueError, match="same shape"):
        kernels.attention(q, k, v[:, :, :6], backend=backend)
    with pytest.raises(ValueError, match="Tq <= Tk"):
        kernels.attention(randn(2, 3, 8, 16), k, v, causal=True, backend=backend)
    with pytest.raises(TypeError, match="must match"):
        kernels.attention(q, k.half(), v.half(), backend=backend)
    with pytest.raises(TypeError, match="floating-point"):
        kernels.attention(q.long(), k.long(), v.long(), backend=backend)
    with pytest.raises(ValueError, match="scale"):
        kernels.attention(q, k, v, scale=float("nan"), backend=backend)
    with pytest.raises(ValueError, match="k must have a unit-stride last dim"):
        kernels.attention(q, k.transpose(2, 3).contiguous().transpose(2, 3), v, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("D", [4, 12, 100, 264])
def test_unsupported_head_dim(backend, D):
    q, k, v = _qkv(1, 2, 5, 5, D, torch.float32)
    with pytest.raises(ValueError, match=f"head dim D={D} .*multiple of 8 from 8 to 256"):
        kernels.attention(q, k, v, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_refused(backend):
    q, k, v = _qkv(1, 2, 5, 5, 16, torch.float64)
    with pytest.raises(TypeError, match="float64"):
        kernels.attention(q, k, v, backend=backend)


def test_grid_limit_is_clear_error():
    _triton_module()
    q = randn(1, 1, 1, 16).expand(70000, 1, 1, 16)
    with pytest.raises(ValueError, match="batch size and head count"):
        kernels.attention(q, q, q, backend="triton")


@needs_gpu
def test_device_mismatch():
    q, k, v = _qkv(1, 2, 5, 5, 16, torch.float32)
    with pytest.raises(ValueError, match="device|cuda"):
        kernels.attention(q, k.cpu(), v.cpu())


# -- torch.library integration -----------------------------------------------------------------

def test_triton_opcheck():
    attn = _triton_module()
    for B, H, Tq, Tk, D, causal in ((1, 2, 19, 19, 16, True), (2, 1, 3, 70, 32, True), (1, 2, 9, 5, 16, False)):
        q, k, v = (t.requires_grad_() for t in _qkv(B, H, Tq, Tk, D, torch.float32))
        torch.library.opcheck(attn.attention_op, (q, k, v, causal, 0.3))
        o, lse = attn.attention_op(q.detach(), k.detach(), v.detach(), causal, 0.3)
        torch.library.opcheck(attn.attention_backward_op, (randn(B, H, Tq, D), q.detach(), k.detach(), v.detach(),
                                                           o, lse, causal, 0.3))
        lengths = torch.full((B,), Tq, dtype=torch.int32, device=DEVICE)
        torch.library.opcheck(attn.attention_op, (q.detach(), k.detach(), v.detach(), causal, 0.3, lengths))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    compile_backend = "inductor" if DEVICE == "cuda" else "aot_eager"

    def f(x, k, v):
        return kernels.attention(x * 2, k, v, causal=True, backend=backend).square().sum(-1)

    compiled = torch.compile(f, fullgraph=True, backend=compile_backend)
    q, k, v = (t.requires_grad_() for t in _qkv(2, 2, 11, 20, 16, torch.float32))
    out = compiled(q, k, v)
    out.sum().backward()
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    expected = f(q2, k2, v2)
    expected.sum().backward()
    assert_close(out, expected.detach(), torch.float32)
    for a, b in ((q, q2), (k, k2), (v, v2)):
        assert_close(a.grad, b.grad, torch.float32)


# -- the KV cache ------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_growing_cache_matches_full_recompute(backend):
    B, H, D, prompt, steps, max_len = 2, 2, 32, 29, 12, 64
    q_all, k_all, v_all = _qkv(B, H, prompt + steps, prompt + steps, D, torch.float32)
    full = kernels.attention(q_all, k_all, v_all, causal=True, backend=backend)
    cache_k = torch.empty(3, B, H, max_len, D, device=DEVICE)  # (layer, B, H, T, D) as in gpt.KVCache
    cache_v = torch.empty_like(cache_k)
    cache_k[1, :, :, :prompt], cache_v[1, :, :, :prompt] = k_all[:, :, :prompt], v_all[:, :, :prompt]
    out = kernels.attention(q_all[:, :, :prompt], cache_k[1, :, :, :prompt], cache_v[1, :, :, :prompt],
                            backend=backend)
    assert_close(out, full[:, :, :prompt], torch.float32)
    for t in range(prompt, prompt + steps):
        cache_k[1, :, :, t], cache_v[1, :, :, t] = k_all[:, :, t], v_all[:, :, t]
        out = kernels.attention(q_all[:, :, t:t + 1], cache_k[1, :, :, :t + 1], cache_v[1, :, :, :t + 1],
                                backend=backend)
        assert_close(out, full[:, :, t:t + 1], torch.float32, msg=f"step {t}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_model_kv_cache_generation_matches_recompute(backend):
    # The other model ops may not exist on this backend yet: run only attention on it.
    torch.manual_seed(0)
    cfg = gpt.GPTConfig(vocab_size=61, block_size=64, n_layer=2, n_head=2, n_embd=32, backend="torch")
    model = gpt.GPT(cfg).to(DEVICE).eval()
    idx = torch.randint(0, 61, (2, 35), device=DEVICE)
    torch_logits, _ = model(idx)
    for block in model.transformer.h:
        block.attn.backend = backend
    logits, _ = model(idx)
    assert_close(logits, torch_logits, torch.float32)
    cached = model.generate(idx, 12, temperature=0)
    recomputed = model.generate(idx, 12, temperature=0, use_cache=False)
    assert torch.equal(cached, recomputed)


# -- GPU-only: autotuned configs at realistic sizes ------------------------------------------

@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", [(2, 12, 1024, 1024, 64), (1, 8, 777, 1500, 128), (4, 12, 1, 4096, 64),
                                  (1, 16, 7, 3000, 128), (1, 4, 517, 517, 16), (2, 4, 300, 300, 32)], ids=str)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_gpu_autotuned_sizes(dtype, case, causal):
    _check_parity("triton", *case, causal, dtype, backward=True)


@needs_gpu
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("head_dim", [16, 32, 40, 64, 72, 128, 160, 256])
def test_gpu_every_config(dtype, head_dim):
    """Each config of the tuning space, pinned, on a shape that needs masking everywhere."""
    attn = _triton_module()
    torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    shapes = {"fwd": (2, 3, 300, 333), "dkdv": (2, 3, 300, 333), "dq": (2, 3, 300, 333), "split": (2, 3, 5, 1000)}
    for kind, space in attn._SPACE.items():
        B, H, Tq, Tk = shapes[kind]
        q, k, v = _qkv(B, H, Tq, Tk, head_dim, torch_dtype)
        do = randn(B, H, Tq, head_dim, dtype=torch_dtype)
        ref = _grads(lambda q, k, v: reference.attention_explicit(q, k, v, True), q.double(), k.double(), v.double(),
                     do.double())
        same = _grads(lambda q, k, v: reference.attention_explicit(q, k, v, True), q, k, v, do)
        for config in space[attn._space_key(dtype, head_dim)]:
            pinned = {kind: config}
            o, lse = attn.attention_forward(q, k, v, True, head_dim ** -0.5, split=kind == "split" or None,
                                            configs=pinned)
            assert_within_torch_error(o, same[0], ref[0], 2, what=f"{kind} {config} out")
            if kind in ("dkdv", "dq"):
                grads = attn.attention_backward(do, q, k, v, o, lse, True, head_dim ** -0.5, configs=pinned)
                for name, g, s, r in zip(("dq", "dk", "dv"), grads, same[1:], ref[1:]):
                    assert_within_torch_error(g, s, r, 3, what=f"{kind} {config} {name}")


@needs_gpu
def test_gpu_decode_over_a_growing_cache():
    # Tk grows by one per step; the autotuner keys on its power-of-two bucket, not on Tk.
    attn = _triton_module()
    q, k, v = _qkv(1, 12, 1, 2048, 64, torch.float16)
    with torch.no_grad():
        for tk in (1500, 1501, 1600, 2048):
            out = kernels.attention(q, k[:, :, :tk], v[:, :, :tk], backend="triton")
            ref64 = reference.attention_explicit(q.double(), k[:, :, :tk].double(), v[:, :, :tk].double(), True)
            assert_within_torch_error(out, reference.attention_explicit(q, k[:, :, :tk], v[:, :, :tk], True),
                                      ref64, 2)
    block_n = attn.decode_tiling(1, q.dtype, 64)[1]
    assert attn.decode_gemv_splits(2048, 12, block_n, q.device)[0] >= 2  # 12 heads cannot fill the GPU
