"""Packaging: our `kernels` import name must not break transformers, which probes for
Hugging Face's `kernels` hub package under the same name."""
import pytest
import torch


def test_transformers_imports_and_runs_gpt2_with_ours_installed():
    transformers = pytest.importorskip("transformers")
    import kernels  # ours  # noqa: F401
    from transformers.utils import import_utils
    # Our distribution (gptk 0.x) must not pass for the hub's `kernels` (>= 0.18.2).
    if hasattr(import_utils, "is_kernels_available"):
        assert not import_utils.is_kernels_available()
    config = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=1, n_head=2)
    model = transformers.GPT2LMHeadModel(config).eval()
    out = model(torch.randint(0, 50, (2, 7)))
    assert out.logits.shape == (2, 7, 50)


def test_public_api_names():
    import gpt
    import kernels
    for name in ("softmax", "layer_norm", "add_layer_norm", "attention", "gelu_linear", "available_backends"):
        assert callable(getattr(kernels, name))
    for name in ("GPT", "GPTConfig"):
        assert hasattr(gpt, name)
    assert "torch" in kernels.available_backends("cpu")


def test_unusable_backend_says_why():
    # A child process without the interpreter and without a GPU: triton cannot run on CPU tensors.
    import os
    import subprocess
    import sys
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: triton is usable")
    code = ("import torch, kernels\n"
            "try:\n    kernels.softmax(torch.randn(2, 3), backend='triton')\n"
            "except RuntimeError as e:\n    print('RuntimeError:', e)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "RuntimeError:" in out.stdout and "TRITON_INTERPRET=1" in out.stdout, out.stdout + out.stderr
