"""Test setup: the Triton interpreter on machines without a GPU, shared helpers and fixtures.

TRITON_INTERPRET must be set before any @triton.jit kernel is defined, so this runs
before the tests import `kernels`. On a GPU machine tests run the real kernels
(CUDA tensors) and the interpreter stays off.
"""
import os
import shutil
import subprocess


def _gpu_present() -> bool:
    if os.environ.get("GPTK_FORCE_CPU"):
        return False
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


if "TRITON_INTERPRET" not in os.environ and not _gpu_present():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped with the reason on CPU machines)")
    config.addinivalue_line("markers", "slow: heavier cases (long rows, builds)")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
