"""CUDA-graph decode (gpt/decode.py): everything but the capture runs here. The static step
(device-side position, whole-cache attention with kv_lengths) must give exactly the tokens of
the plain KV-cache decode; the capture and replay themselves run in tests/test_cuda_gpu.py."""
import pytest
import torch

import gpt
import kernels
from gpt import decode

CFG = dict(vocab_size=97, block_size=24, n_layer=2, n_head=2, n_embd=32)


def _model(backend):
    torch.manual_seed(0)
    return gpt.GPT(gpt.GPTConfig(**CFG, backend=backend)).eval()


def _static_backends():
    """The backends these CPU models run on: torch, cuda (its C++ CPU code), triton under
    TRITON_INTERPRET=1."""
    return ["torch"] + [b for b in kernels.available_backends("cpu") if b != "torch"]


def test_cuda_graph_needs_cuda():
    model = _model("torch")
    idx = torch.randint(0, 97, (2, 5))
    with pytest.raises(ValueError, match="cuda_graph=True"):
        model.generate(idx, 3, cuda_graph=True)
    with pytest.raises(ValueError, match="cuda_graph must be"):
        model.generate(idx, 3, cuda_graph="yes")
    assert model.generate(idx, 3, temperature=0, cuda_graph=False).shape == (2, 8)


# (20, 12) overflows block_size 24. The Triton interpreter runs every program in Python:
# triton takes the first case only (the overflow's recompute path has no kv_lengths).
@pytest.mark.parametrize("backend,prompt,new", [(b, 5, 6) for b in _static_backends()]
                         + [(b, 20, 12) for b in _static_backends() if b != "triton"])
def test_static_decode_gives_the_same_tokens(monkeypatch, backend, prompt, new):
    model = _model(backend)
    idx = torch.randint(0, 97, (3, prompt), generator=torch.Generator().manual_seed(1))
    plain = model.generate(idx, new, temperature=0, cuda_graph=False)
    monkeypatch.setattr(gpt.GPT, "_use_cuda_graph", lambda self, cuda_graph, idx: True)
    static = model.generate(idx, new, temperature=0)
    assert torch.equal(plain, static)
    (dec,) = [d for _, d in decode._GRAPHS[model].values()]
    assert dec.length == min(prompt + new - 1, CFG["block_size"])  # the static steps ran


@pytest.mark.parametrize("prompt,new", [(5, 6), (20, 12)])
def test_decoder_is_reused_and_rewritten(monkeypatch, prompt, new):
    model = _model("torch")
    idx = torch.randint(0, 97, (3, prompt), generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(gpt.GPT, "_use_cuda_graph", lambda self, cuda_graph, idx: True)
    model.generate(idx, new, temperature=0)
    # The decoder (its cache) is reused by the next call and rewritten from position 0.
    again = model.generate(idx[:, :prompt - 1], new, temperature=0)
    assert torch.equal(again, model.generate(idx[:, :prompt - 1], new, temperature=0, cuda_graph=False))
    assert len(decode._GRAPHS[model]) == 1


def test_one_decoder_per_batch_and_dtype_rebuilt_when_weights_move():
    model = _model("torch")
    first = decode.decoder_for(model, 2, "cpu", torch.float32)
    assert decode.decoder_for(model, 2, "cpu", torch.float32) is first
    assert decode.decoder_for(model, 3, "cpu", torch.float32) is not first
    model.double().float()  # new parameter storage: a captured graph would read stale addresses
    assert decode.decoder_for(model, 2, "cpu", torch.float32) is not first


def test_static_step_matches_plain_logits():
    model = _model("torch")
    idx = torch.randint(0, 97, (2, 7))
    with torch.no_grad():
        cache = gpt.KVCache(model.config, 2, "cpu", torch.float32)
        model(idx, cache=cache)
        plain, _ = model(idx[:, :1], cache=cache)
        dec = decode.decoder_for(model, 2, "cpu", torch.float32)
        dec.prefill(idx)
        static = dec.step(idx[:, :1])
    torch.testing.assert_close(static, plain, rtol=1e-5, atol=1e-5)
    assert dec.length == 8 and int(dec.cache.position) == 8


def test_kv_lengths_attention_matches_sliced_keys():
    torch.manual_seed(0)
    q = torch.randn(3, 2, 1, 16, dtype=torch.float64)
    k, v = torch.randn(3, 2, 10, 16, dtype=torch.float64), torch.randn(3, 2, 10, 16, dtype=torch.float64)
    lengths = torch.tensor([1, 4, 10])
    out = kernels.attention(q, k, v, kv_lengths=lengths, backend="torch")
    for b, n in enumerate(lengths.tolist()):
        ref = kernels.attention(q[b:b + 1], k[b:b + 1, :, :n], v[b:b + 1, :, :n], backend="torch")
        torch.testing.assert_close(out[b:b + 1], ref)


def test_kv_lengths_bad_input():
    q = torch.randn(2, 1, 1, 16)
    k = torch.randn(2, 1, 5, 16)
    with pytest.raises(TypeError, match="kv_lengths"):
        kernels.attention(q, k, k, kv_lengths=torch.tensor([1.0, 2.0]), backend="torch")
    with pytest.raises(ValueError, match="shape"):
        kernels.attention(q, k, k, kv_lengths=torch.tensor([1, 2, 3]), backend="torch")
    with pytest.raises(ValueError, match="no_grad"):
        kernels.attention(q.requires_grad_(), k, k, kv_lengths=torch.tensor([1, 2]), backend="torch")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (graph capture and replay)")
@pytest.mark.parametrize("backend", ["torch", "triton", "cuda", "auto"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_graph_decode_gives_the_same_greedy_tokens_on_gpu(backend, dtype):
    if backend != "auto" and kernels.unavailable_reason(backend, "cuda") is not None:
        pytest.skip(kernels.unavailable_reason(backend, "cuda"))
    assert kernels.supports_kv_lengths(backend)
    model = _model(backend).cuda().to(dtype)
    idx = torch.randint(0, 97, (3, 6), generator=torch.Generator().manual_seed(2)).cuda()
    plain = model.generate(idx, 30, temperature=0, cuda_graph=False)  # 6 + 30 > 24: overflow too
    graphed = model.generate(idx, 30, temperature=0, cuda_graph=True)
    assert torch.equal(plain, graphed)
    (dec,) = [d for _, d in decode._GRAPHS[model].values()]
    assert dec.graph is not None, "the decode step was not captured"
    graph = dec.graph
    assert torch.equal(model.generate(idx, 30, temperature=0), plain)
    assert dec.graph is graph, "the captured step must be reused by the next call"
