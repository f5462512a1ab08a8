"""Fused sampling: draws follow the exact filtered distribution (chi-square), never leave it,
replay from a seed; greedy is argmax; NaN rows, bad input, torch.compile, per backend.

The expected distribution is computed here in fp64 straight from the rule in
kernels.sample's docstring (sort, keep ties at each boundary), independently of the
backends' threshold searches.
"""
import pytest
import torch

import kernels
from helpers import DEVICE, backends_here

ALL = ["torch"] + backends_here()
# A fixed significance threshold: a backend fails when the chi-square p-value of its draws
# against the exact distribution is below this (seeds are fixed, so the test is deterministic).
P_MIN = 1e-4
N_DRAWS = 20000


def _needs(backend):
    if backend != "torch" and kernels.missing_ops(backend, ["sample"]):
        pytest.skip(f"the {backend} backend does not implement sample")


def _logits(v, scale=2.0, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(v, generator=g, dtype=torch.float64) * scale).to(dtype)


def expected_probs(row, temperature, top_k=None, top_p=None):
    """fp64 distribution over the row's tokens after temperature, top-k and top-p."""
    x = row.double().cpu()
    order = torch.sort(x, descending=True).values
    keep = torch.ones_like(x, dtype=torch.bool)
    if top_k is not None and top_k < x.numel():
        keep &= x >= order[top_k - 1]
    if top_p is not None and top_p < 1:
        kept = torch.sort(x[keep], descending=True).values
        mass = torch.softmax(kept / temperature, 0).cumsum(0)
        # The test data must not sit on the boundary, where fp32 and fp64 may disagree.
        assert (mass - top_p).abs().min() > 1e-4, "top_p too close to a cumulative mass"
        crossing = int((mass < top_p).sum().clamp(max=kept.numel() - 1))
        keep &= x >= kept[crossing]
    return torch.softmax(torch.where(keep, x, float("-inf")) / temperature, 0)


def chi_square_p(counts, probs):
    """p-value of Pearson's chi-square test; bins expected below 5 draws are pooled."""
    n = counts.sum().item()
    expected = probs * n
    big = expected >= 5
    obs = torch.cat([counts[big].double(), counts[~big].double().sum().view(1)])
    exp = torch.cat([expected[big], expected[~big].sum().view(1)])
    if exp[-1] < 5:  # fold a small pooled bin into the last big one
        obs = torch.cat([obs[:-2], (obs[-2] + obs[-1]).view(1)])
        exp = torch.cat([exp[:-2], (exp[-2] + exp[-1]).view(1)])
    if exp.numel() < 2:
        return 1.0
    stat = ((obs - exp) ** 2 / exp).sum()
    dof = torch.tensor(exp.numel() - 1.0, dtype=torch.float64)
    return torch.special.gammaincc(dof / 2, stat / 2).item()


CASES = [  # (V, temperature, top_k, top_p, dtype)
    (2, 1.0, None, None, torch.float32),
    (30, 0.8, None, None, torch.float32),
    (30, 1.5, 5, None, torch.float32),
    (30, 1.0, None, 0.7, torch.float16),
    (29, 0.7, 12, 0.8, torch.bfloat16),
    (30, 1.2, 30, 1.0, torch.float32),   # top_k = V and top_p = 1 keep everything
]


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"V{c[0]}-t{c[1]}-k{c[2]}-p{c[3]}-{str(c[4])[6:]}")
def test_draws_follow_the_filtered_distribution(backend, case):
    _needs(backend)
    v, t, k, p, dtype = case
    row = _logits(v, dtype=dtype)
    probs = expected_probs(row, t, k, p)
    # N_DRAWS identical rows in one call (stride 0: the kernels read one row N times).
    logits = row.to(DEVICE).expand(N_DRAWS, v)
    g = torch.Generator(DEVICE).manual_seed(1234)
    tokens = kernels.sample(logits, t, top_k=k, top_p=p, generator=g, backend=backend)
    assert tokens.dtype == torch.int64 and tokens.shape == (N_DRAWS,)
    counts = torch.bincount(tokens.cpu(), minlength=v)
    assert counts.numel() == v, "a token outside [0, V) was drawn"
    assert counts[probs == 0].sum() == 0, f"drawn outside the kept set: {counts[probs == 0]}"
    pval = chi_square_p(counts, probs)
    assert pval > P_MIN, f"chi-square p = {pval:.3g}; counts {counts.tolist()} vs {(probs * N_DRAWS).tolist()}"


@pytest.mark.parametrize("backend", ALL)
def test_boundary_ties_are_all_kept(backend):
    _needs(backend)
    # Logits 3, 2, 2, 2, 1, 0: top_k=2 ends inside the tie at 2 and keeps all three.
    row = torch.tensor([1.0, 2.0, 0.0, 2.0, 3.0, 2.0])
    logits = row.to(DEVICE).expand(4000, 6)
    g = torch.Generator(DEVICE).manual_seed(7)
    counts = torch.bincount(kernels.sample(logits, 1.0, top_k=2, generator=g, backend=backend).cpu(), minlength=6)
    assert counts[[0, 2]].sum() == 0 and (counts[[1, 3, 4, 5]] > 0).all(), counts
    probs = expected_probs(row, 1.0, 2)
    assert chi_square_p(counts, probs) > P_MIN
    # top_p: mass(3) = 0.42 < 0.5, so the crossing logit is 2: all of its ties are kept.
    counts = torch.bincount(kernels.sample(logits, 1.0, top_p=0.5, generator=g, backend=backend).cpu(), minlength=6)
    assert counts[[0, 2]].sum() == 0 and (counts[[1, 3, 4, 5]] > 0).all(), counts


@pytest.mark.parametrize("backend", ALL)
def test_strided_and_wide_rows_stay_in_the_kept_set(backend):
    _needs(backend)
    v = 50257
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(2, v + 11, generator=gen, dtype=torch.float64)
    # 300 scattered tokens far above the rest hold ~all the mass, so top_p=0.9 crosses where
    # each token weighs ~0.3%: far from any fp32/fp64 disagreement at the boundary.
    hot = torch.randperm(v, generator=gen)[:300]
    base[:, hot] += 12 + torch.rand(2, 300, generator=gen, dtype=torch.float64) * 2
    logits = base.float().to(DEVICE)[:, :v]  # row stride v + 11
    g = torch.Generator(DEVICE).manual_seed(0)
    assert torch.equal(kernels.sample(logits, 0.0, backend=backend).cpu(), base[:, :v].argmax(-1))
    for k, p in ((50, None), (None, 0.9), (50, 0.9)):
        tokens = kernels.sample(logits, 0.9, top_k=k, top_p=p, generator=g, backend=backend).cpu()
        for row, tok in zip(base[:, :v].float(), tokens.tolist()):
            assert expected_probs(row, 0.9, k, p)[tok] > 0, (k, p, tok)


@pytest.mark.parametrize("backend", ALL)
def test_seeded_calls_replay(backend):
    _needs(backend)
    logits = _logits(40).to(DEVICE).expand(64, 40)

    def draw(seed, **kw):
        return kernels.sample(logits, 1.0, generator=torch.Generator(DEVICE).manual_seed(seed), backend=backend, **kw)

    assert torch.equal(draw(5), draw(5))
    assert torch.equal(draw(5, top_k=7, top_p=0.8), draw(5, top_k=7, top_p=0.8))
    assert not torch.equal(draw(5), draw(6))
    g = torch.Generator(DEVICE).manual_seed(5)
    first = kernels.sample(logits, 1.0, generator=g, backend=backend)
    assert not torch.equal(first, kernels.sample(logits, 1.0, generator=g, backend=backend)), "generator must advance"
    torch.manual_seed(11)  # generator=None: the default generator
    a = kernels.sample(logits, 1.0, backend=backend)
    torch.manual_seed(11)
    assert torch.equal(a, kernels.sample(logits, 1.0, backend=backend))


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("v", [1, 2, 50257])
def test_greedy_is_argmax_with_ties_to_the_lowest_index(backend, v):
    _needs(backend)
    logits = torch.randn(3, v, generator=torch.Generator().manual_seed(v)).to(DEVICE)
    logits[1, v // 2:] = logits[1].max() + 1  # a tie at the max: the lowest index wins
    logits[2] = float("-inf")                  # all -inf: argmax says 0
    out = kernels.sample(logits, 0, top_k=1, top_p=0.5, backend=backend)
    assert torch.equal(out, logits.argmax(-1))
    assert out[1].item() == v // 2 and out[2].item() == 0


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("v", [1, 2])
def test_tiny_vocabularies(backend, v):
    _needs(backend)
    logits = torch.tensor([[0.3, -0.2][:v]]).to(DEVICE).expand(2000, v)
    g = torch.Generator(DEVICE).manual_seed(0)
    for k, p in ((None, None), (1, None), (None, 0.3), (2, 0.99)):
        tokens = kernels.sample(logits, 1.0, top_k=k, top_p=p, generator=g, backend=backend).cpu()
        probs = expected_probs(logits[0], 1.0, k, p)
        counts = torch.bincount(tokens, minlength=v)
        assert counts.numel() == v and counts[probs == 0].sum() == 0
        assert chi_square_p(counts, probs) > P_MIN


@pytest.mark.parametrize("backend", ALL)
def test_nan_and_infinite_rows_give_minus_one(backend):
    _needs(backend)
    logits = torch.randn(5, 20, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    logits[1, 7] = float("nan")
    logits[2, 3] = float("inf")
    logits[3] = float("-inf")
    logits[4, :10] = float("-inf")  # some -inf logits are fine: never drawn
    g = torch.Generator(DEVICE).manual_seed(0)
    for k, p in ((None, None), (3, 0.9)):
        out = kernels.sample(logits, 1.0, top_k=k, top_p=p, generator=g, backend=backend).cpu()
        assert out[1:4].tolist() == [-1, -1, -1], out
        assert 0 <= out[0] < 20 and 10 <= out[4] < 20
    greedy = kernels.sample(logits, 0.0, backend=backend).cpu()
    assert greedy[1].item() == -1 and greedy[2].item() == 3 and greedy[3].item() == 0


@pytest.mark.parametrize("backend", ALL)
def test_empty_batch(backend):
    _needs(backend)
    out = kernels.sample(torch.empty(0, 7, device=DEVICE), 1.0, backend=backend)
    assert out.shape == (0,) and out.dtype == torch.int64


BAD = [
    (dict(temperature=-0.1), ValueError, "temperature"),
    (dict(temperature=float("inf")), ValueError, "temperature"),
    (dict(temperature=float("nan")), ValueError, "temperature"),
    (dict(top_k=0), ValueError, "top_k"),
    (dict(top_k=2.5), TypeError, "top_k"),
    (dict(top_k=True), TypeError, "top_k"),
    (dict(top_p=0.0), ValueError, "top_p"),
    (dict(top_p=1.5), ValueError, "top_p"),
    (dict(top_p=float("nan")), ValueError, "top_p"),
    (dict(generator="seed"), TypeError, "generator"),
    (dict(logits=torch.zeros(2, 3, 4)), ValueError, "logits"),
    (dict(logits=torch.zeros(5)), ValueError, "logits"),
    (dict(logits=torch.zeros(2, 3, dtype=torch.int64)), TypeError, "logits"),
    (dict(logits=torch.zeros(2, 0)), ValueError, "logits"),
]


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("bad", BAD, ids=lambda b: f"{list(b[0])[0]}-{b[1].__name__}")
def test_bad_input(backend, bad):
    _needs(backend)
    kw, error, name = bad
    args = dict(logits=torch.zeros(2, 3, device=DEVICE), temperature=1.0)
    args.update(kw)
    logits, t = args.pop("logits"), args.pop("temperature")
    if logits.device.type != DEVICE:
        logits = logits.to(DEVICE)
    with pytest.raises(error, match=name):
        kernels.sample(logits, t, backend=backend, **args)


def test_generator_on_another_device():
    other = torch.device("cpu") if DEVICE == "cuda" else torch.device("cuda", 0)

    class Elsewhere(torch.Generator):  # a generator that reports another device (none is needed)
        @property
        def device(self):
            return other

    logits = torch.zeros(2, 3, device=DEVICE)
    for backend in ALL:
        with pytest.raises(ValueError, match="generator"):
            kernels.sample(logits, 1.0, generator=Elsewhere(), backend=backend)


def test_triton_opcheck():
    if "triton" not in ALL:
        pytest.skip("triton backend not usable here")
    import kernels.triton.sample as ts
    seed = torch.tensor([42], dtype=torch.int64, device=DEVICE)
    torch.library.opcheck(ts.sample_op, (_logits(37).to(DEVICE).expand(3, 37).contiguous(), seed, 0.8, 5, 0.9))
    torch.library.opcheck(ts.sample_op, (_logits(9).to(DEVICE).view(1, 9), seed, 0.0, 0, 1.0))


def test_triton_and_cuda_draw_the_same_tokens():
    # Both take the same Philox uniform per (seed, row) and apply the same rule: given one
    # seed they agree token for token (csrc/common/sample.h mirrors tl.randint's stream).
    for b in ("triton", "cuda"):
        if b not in ALL or kernels.missing_ops(b, ["sample"]):
            pytest.skip(f"needs the {b} backend")
    logits = torch.randn(300, 45, generator=torch.Generator().manual_seed(2)).to(DEVICE) * 2
    seed = torch.tensor([987654321987], dtype=torch.int64, device=DEVICE)
    import kernels.triton.sample as ts
    for t, k, p in ((1.0, 0, 1.0), (0.7, 6, 1.0), (1.2, 0, 0.75), (0.9, 20, 0.9)):
        a = ts.sample_op(logits, seed, t, k, p)
        b = torch.ops.gptk.sample_cuda(logits, seed, t, k, p)
        assert torch.equal(a, b), (t, k, p, (a != b).sum().item())


def test_cuda_opcheck():
    if "cuda" not in ALL or kernels.missing_ops("cuda", ["sample"]):
        pytest.skip("cuda backend not usable here")
    seed = torch.tensor([42], dtype=torch.int64, device=DEVICE)
    torch.library.opcheck(torch.ops.gptk.sample_cuda.default, (_logits(37).to(DEVICE).expand(3, 37), seed, 0.8, 5, 0.9))
    torch.library.opcheck(torch.ops.gptk.sample_cuda.default, (_logits(9).to(DEVICE).view(1, 9), seed, 0.0, 0, 1.0))


@pytest.mark.parametrize("backend", ALL)
def test_torch_compile_fullgraph(backend):
    _needs(backend)
    compile_backend = "inductor" if DEVICE == "cuda" else "aot_eager"
    row = _logits(24)

    def f(x):
        return kernels.sample(x * 1.0, 0.8, top_k=6, top_p=0.9, backend=backend)

    compiled = torch.compile(f, fullgraph=True, backend=compile_backend)
    logits = row.to(DEVICE).expand(200, 24).contiguous()
    torch.manual_seed(3)
    out = compiled(logits)
    assert out.shape == (200,) and out.dtype == torch.int64
    assert (expected_probs(row, 0.8, 6, 0.9)[out.cpu()] > 0).all()
    if backend != "torch":  # our ops draw one seed from the default generator: eager replays it
        torch.manual_seed(3)
        assert torch.equal(out, f(logits))

