"""backend="auto": the measured choice table covers every op and never prefers a backend
that lost to PyTorch in the committed measurements it cites."""
import pytest
import torch

import kernels
from kernels import _auto, _backend


@pytest.mark.parametrize("capability", sorted(_auto.TABLE))
def test_table_covers_every_op(capability):
    table = _auto.TABLE[capability]
    assert set(kernels.OPS) <= set(table), f"ops without an auto entry: {set(kernels.OPS) - set(table)}"
    for op, classes in table.items():
        sizes = [largest for largest, *_ in classes]
        assert sizes[-1] is None, f"{op}: the last size class must be open-ended"
        assert all(a < b for a, b in zip(sizes[:-2], sizes[1:-1])), f"{op}: size classes must increase"
        for _, inference, training in classes:
            for order in (inference, training):
                assert order[-1] == "torch" and set(order) <= set(kernels.BACKENDS), (op, order)


@pytest.fixture
def fake_h100(monkeypatch):
    """choose() as on an H100 where every backend can run."""
    monkeypatch.setattr(_auto, "_capability", lambda device: (9, 0))
    monkeypatch.setattr(_backend, "unavailable_reason", lambda backend, device: None)
    return torch.device("cuda", 0)


def test_auto_follows_the_measurements(fake_h100):
    dev = fake_h100
    choose = _backend.choose
    assert choose("softmax", "auto", dev, torch.bfloat16, size=4096) == "cuda"
    assert choose("softmax", "auto", dev, torch.bfloat16, size=50257) == "triton"
    assert choose("layer_norm", "auto", dev, torch.bfloat16, size=1024, training=False) == "cuda"
    assert choose("layer_norm", "auto", dev, torch.bfloat16, size=1024, training=True) == "torch"
    assert choose("attention", "auto", dev, torch.bfloat16, size=1) == "torch"       # SDPA won decode
    assert choose("gelu_linear", "auto", dev, torch.bfloat16, training=True) == "torch"
    assert choose("softmax", "auto", dev, torch.float64, size=64) == "torch"


def test_unmeasured_card_runs_torch(monkeypatch, fake_h100):
    monkeypatch.setattr(_auto, "_capability", lambda device: (8, 0))
    assert _backend.choose("softmax", "auto", fake_h100, torch.bfloat16, size=4096) == "torch"


def test_unavailable_backend_takes_the_next(monkeypatch, fake_h100):
    monkeypatch.setattr(_backend, "unavailable_reason",
                        lambda backend, device: "not built" if backend == "cuda" else None)
    assert _backend.choose("softmax", "auto", fake_h100, torch.bfloat16, size=4096) == "triton"
    assert _backend.choose("layer_norm", "auto", fake_h100, torch.bfloat16, size=1024) == "torch"


def test_auto_on_cpu_is_torch():
    assert _backend.choose("softmax", "auto", torch.device("cpu"), torch.float32, size=8) == "torch"
