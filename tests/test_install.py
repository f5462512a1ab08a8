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


def test_wheel_installed_outside_the_checkout_keeps_the_cuda_backend(tmp_path):
    """A built wheel carries csrc/ (as kernels/_csrc): installed into a directory outside the
    checkout, the cuda backend builds (or finds in the cache) its C++ part and runs."""
    import glob
    import os
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    # Build isolation: the wheel is built the way pip builds it for users (no torch at build time,
    # so no ahead-of-time library: the sources are what must ship).
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), repo],
                           capture_output=True, text=True, timeout=900)
    if build.returncode != 0 and "Could not find a version" in build.stderr + build.stdout:
        pytest.skip("no package index reachable to build the wheel in isolation")
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = glob.glob(str(wheels / "gptk-*.whl"))
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                              wheel], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    assert (target / "kernels" / "_csrc" / "ops.cpp").is_file()
    code = ("import torch, kernels\n"
            "assert kernels.__file__.startswith(%r), kernels.__file__\n"
            "print(kernels.unavailable_reason('cuda', 'cpu'))\n"
            "y = kernels.softmax(torch.randn(3, 7), 0.5, backend='cuda')\n"
            "torch.testing.assert_close(y.sum(-1), torch.ones(3))\n"
            "print('ok')\n") % str(target)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET")}
    env["PYTHONPATH"] = str(target)
    run = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), env=env, capture_output=True,
                         text=True, timeout=1200)
    assert run.returncode == 0 and run.stdout.split() == ["None", "ok"], run.stdout + run.stderr[-3000:]
