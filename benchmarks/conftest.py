"""pytest-benchmark setup for `pytest benchmarks/` (the repository's `python -m pytest` collects
tests/ only). These cases are GPU figures: without a GPU every test skips with that reason.
Unlike tests/conftest.py this never turns on the Triton interpreter."""
import pytest
import torch


def pytest_configure(config):
    config.addinivalue_line("markers", "compile: the torch.compile provider (compiles per case)")
    config.addinivalue_line("markers", "model: whole-model GPT-2 cases")


try:
    import pytest_benchmark  # noqa: F401
except ImportError:  # the tests still collect, and say what is missing
    @pytest.fixture
    def benchmark():
        pytest.skip("pytest-benchmark is not installed (pip install pytest-benchmark)")


@pytest.fixture(scope="session")
def bench_context():
    """The device, versions and ceilings every case's extra_info repeats (measured once)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU: these are GPU figures (python -m benchmarks runs the CPU backends)")
    from benchmarks.env import describe, measure_ceilings
    from benchmarks.runner import Context
    device = torch.device("cuda")
    return Context(device=device, info=describe(device),
                   ceilings=measure_ceilings(device, [torch.bfloat16]))
