"""The GPT module on the torch backend (and every backend that implements all its ops)."""
import math
import subprocess
import sys

import pytest
import torch

import gpt
import kernels
from helpers import DEVICE

FULL_BACKENDS = [b for b in kernels.available_backends(DEVICE) if not kernels.missing_ops(b, gpt.MODEL_OPS)]


def tiny(backend="torch", **kw):
    cfg = dict(vocab_size=61, block_size=32, n_layer=2, n_head=2, n_embd=32, backend=backend)
    cfg.update(kw)
    return gpt.GPT(gpt.GPTConfig(**cfg)).to(DEVICE)


def test_forward_shapes_and_tied_embedding():
    model = tiny()
    idx = torch.randint(0, 61, (3, 17), device=DEVICE)
    logits, loss = model(idx)
    assert logits.shape == (3, 17, 61) and loss is None
    logits, loss = model(idx, idx)
    assert logits is None and loss.ndim == 0 and math.isfinite(loss.item())
    full, loss_with_logits = model(idx, idx, return_logits=True)
    assert full.shape == (3, 17, 61)
    torch.testing.assert_close(loss, loss_with_logits)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert abs(loss.item() - math.log(61)) < 0.5  # GPT-2 init starts near uniform


def test_loss_falls_on_torch_backend():
    torch.manual_seed(0)
    model = tiny()
    data = torch.arange(0, 61, device=DEVICE).repeat(8)  # a learnable cyclic sequence
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(60):
        i = torch.randint(0, len(data) - 33, (8,))
        x = torch.stack([data[j:j + 32] for j in i])
        y = torch.stack([data[j + 1:j + 33] for j in i])
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::10]


def test_too_long_sequence_is_clear_error():
    with pytest.raises(ValueError, match="block_size"):
        tiny()(torch.zeros(1, 33, dtype=torch.long, device=DEVICE))


def test_greedy_generation_is_deterministic_and_cache_matches_recompute():
    model = tiny().eval()
    idx = torch.randint(0, 61, (2, 5), device=DEVICE)
    a = model.generate(idx, 20, temperature=0)
    b = model.generate(idx, 20, temperature=0)
    c = model.generate(idx, 20, temperature=0, use_cache=False)
    assert torch.equal(a, b) and torch.equal(a, c)
    assert a.shape == (2, 25) and torch.equal(a[:, :5], idx)


def test_generation_past_block_size_crops_context():
    model = tiny().eval()
    idx = torch.randint(0, 61, (1, 30), device=DEVICE)
    out = model.generate(idx, 10, temperature=0)
    assert out.shape == (1, 40)
    assert torch.equal(out, model.generate(idx, 10, temperature=0, use_cache=False))


def test_sampling_is_seeded_and_top_k_restricts():
    model = tiny().eval()
    idx = torch.randint(0, 61, (1, 4), device=DEVICE)
    g1, g2 = torch.Generator(DEVICE).manual_seed(5), torch.Generator(DEVICE).manual_seed(5)
    assert torch.equal(model.generate(idx, 8, 1.0, generator=g1), model.generate(idx, 8, 1.0, generator=g2))
    logits = torch.randn(4, 61, device=DEVICE)
    allowed = torch.topk(logits, 3).indices
    for _ in range(20):
        tok = model.sample(logits, 1.0, top_k=3)
        assert all(t in a for t, a in zip(tok.view(-1).tolist(), allowed.tolist()))


def test_higher_temperature_gives_higher_entropy():
    logits = torch.randn(8, 61, device=DEVICE) * 3

    def entropy(t):
        p = kernels.softmax(logits, t, backend="torch").double()
        return -(p * p.clamp_min(1e-30).log()).sum(-1).mean().item()

    values = [entropy(t) for t in (0.25, 0.5, 1.0, 2.0, 4.0)]
    assert all(a < b for a, b in zip(values, values[1:])), values
    # and the sampled tokens follow it: more distinct tokens at high temperature
    model = tiny().eval()
    g = torch.Generator(DEVICE).manual_seed(0)
    low = {model.sample(logits[:1], 0.1, generator=g).item() for _ in range(50)}
    high = {model.sample(logits[:1], 10.0, generator=g).item() for _ in range(50)}
    assert len(high) > len(low)


def test_bad_generate_arguments():
    model = tiny()
    idx = torch.zeros(1, 3, dtype=torch.long, device=DEVICE)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(idx, 2, temperature=-1)
    with pytest.raises(ValueError, match="top_k"):
        model.generate(idx, 2, top_k=0)
    for top_p in (0.0, 1.5):
        with pytest.raises(ValueError, match="top_p"):
            model.generate(idx, 2, top_p=top_p)


def test_top_p_generation():
    # A tiny top_p keeps only the most likely token: sampling becomes greedy decoding.
    model = tiny().eval()
    idx = torch.randint(0, 61, (2, 5), device=DEVICE)
    g = torch.Generator(DEVICE).manual_seed(0)
    assert torch.equal(model.generate(idx, 6, 1.0, top_p=1e-6, generator=g), model.generate(idx, 6, temperature=0))
    out = model.generate(idx, 6, 0.8, top_k=10, top_p=0.9, generator=g)
    assert out.shape == (2, 11) and torch.equal(out[:, :5], idx)


def test_backend_missing_ops_is_clear_error():
    for backend in ("triton", "cuda"):
        missing = kernels.missing_ops(backend, gpt.MODEL_OPS)
        if not missing:
            continue
        with pytest.raises(RuntimeError, match=missing[0]):
            tiny(backend=backend)
        with pytest.raises(RuntimeError, match=missing[0]):
            tiny().set_backend(backend)
    with pytest.raises(ValueError, match="backend"):
        tiny(backend="jax")


@pytest.mark.parametrize("backend", FULL_BACKENDS)
def test_every_full_backend_matches_torch(backend):
    torch.manual_seed(0)
    model = tiny().eval()
    idx = torch.randint(0, 61, (2, 19), device=DEVICE)
    ref, _ = model(idx)
    model.set_backend(backend)
    out, _ = model(idx)
    torch.testing.assert_close(out, ref, atol=2e-4, rtol=2e-4)


def test_main_job_runs_offline(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("hello world, " * 300)
    cmd = [sys.executable, "-m", "gpt", "train", "--text", str(text), "--iters", "30", "--eval-every", "15",
           "--block-size", "32", "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--sample-tokens", "20",
           "--out-dir", str(tmp_path / "out"), "--quiet", "--backend", "torch"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "ckpt.pt").is_file()
    vals = [float(line.rsplit(" ", 1)[1]) for line in proc.stderr.splitlines() if "val loss" in line]
    assert len(vals) == 2 and vals[1] < vals[0]
    proc = subprocess.run([sys.executable, "-m", "gpt", "sample", "--checkpoint", str(tmp_path / "out"),
                           "--max-tokens", "10", "--prompt", "hello", "--temperature", "0"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("hello")
    proc = subprocess.run([sys.executable, "-m", "gpt", "train", "--text", str(tmp_path / "missing.txt")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr


@pytest.mark.parametrize("backend", FULL_BACKENDS)
def test_trains_under_autocast_bf16(backend):
    # autocast hands bf16 activations to ops whose parameters are fp32: the API follows PyTorch's
    # policy (norms and softmax in fp32, attention and the MLP matmul in bf16), as eager does.
    if DEVICE == "cpu" and backend == "triton":
        pytest.skip("bf16 tl.dot is wrong under the Triton interpreter (Triton issue 11584); runs on a GPU")
    torch.manual_seed(0)
    model = tiny(backend=backend)
    ref = tiny(backend="torch")
    ref.load_state_dict(model.state_dict())
    idx = torch.randint(0, 61, (2, 19), device=DEVICE)
    device_type = torch.device(DEVICE).type
    with torch.autocast(device_type, dtype=torch.bfloat16):
        logits, ref_logits = model(idx)[0], ref(idx)[0]
        _, loss = model(idx, idx)  # the fused loss on `backend`, the plain formula on the reference
        _, ref_loss = ref(idx, idx)
    loss.backward()
    ref_loss.backward()
    assert logits.dtype == ref_logits.dtype
    torch.testing.assert_close(logits.float(), ref_logits.float(), atol=3e-2, rtol=3e-2)
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        assert torch.isfinite(p.grad).all(), name
        torch.testing.assert_close(p.grad, q.grad, atol=5e-2, rtol=5e-2, msg=name)
