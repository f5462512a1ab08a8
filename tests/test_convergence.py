"""Convergence, as users judge a drop-in backend: the same tiny GPT, seed and data trained for
100 AdamW steps on each backend tracks the torch backend step by step and ends with nearly
the same parameters (fp32 on the CPU)."""
import pytest
import torch

import gpt
import kernels

STEPS = 100
CFG = dict(vocab_size=61, block_size=16, n_layer=1, n_head=2, n_embd=32)
# fp32 on the CPU: every step's loss within 1e-3 relative of the torch backend's (the backends
# round differently, and 100 steps of AdamW carry those differences forward), and every final
# parameter within 1e-3 + 1e-2 relative of the torch backend's.
LOSS_RTOL = 1e-3
PARAM_ATOL, PARAM_RTOL = 1e-3, 1e-2


def _train(backend):
    torch.manual_seed(0)
    model = gpt.GPT(gpt.GPTConfig(**CFG, dropout=0.0, backend=backend))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    data = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(STEPS):
        x = torch.randint(0, CFG["vocab_size"], (2, CFG["block_size"] + 1), generator=data)
        x[:, 1::2] = (x[:, 0::2][:, : x[:, 1::2].shape[1]] * 7 + 3) % CFG["vocab_size"]  # learnable pattern
        _, loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses, {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.fixture(scope="module")
def reference():
    return _train("torch")


@pytest.mark.parametrize("backend", [b for b in kernels.available_backends("cpu") if b != "torch"])
def test_training_tracks_the_torch_backend(reference, backend):
    ref_losses, ref_params = reference
    losses, params = _train(backend)
    assert ref_losses[-1] < 0.8 * ref_losses[0], "the reference run must actually learn"
    for step, (a, b) in enumerate(zip(losses, ref_losses)):
        assert abs(a - b) <= LOSS_RTOL * abs(b), f"step {step}: loss {a} vs torch {b}"
    for name, p in params.items():
        torch.testing.assert_close(p, ref_params[name], atol=PARAM_ATOL, rtol=PARAM_RTOL, msg=name)
