"""The first call of every op on every backend may happen inside torch.compile(fullgraph=True)
in a fresh process: whatever a backend loads or builds on first use runs outside the traced
region (issue: the cuda backend's build checked files while Dynamo traced it)."""
import os
import subprocess
import sys

import pytest

import kernels
from helpers import DEVICE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SCRIPT = r"""
import sys, torch, kernels
backend, device = sys.argv[1], sys.argv[2]
x = torch.randn(3, 16, device=device)
w, b = torch.randn(16, device=device), torch.randn(16, device=device)
q = torch.randn(1, 2, 4, 16, device=device)
calls = {
    "softmax": lambda: kernels.softmax(x, 0.5, backend=backend),
    "layer_norm": lambda: kernels.layer_norm(x, w, b, backend=backend),
    "add_layer_norm": lambda: kernels.add_layer_norm(x, x, w, b, backend=backend)[0],
    "attention": lambda: kernels.attention(q, q, q, backend=backend),
    "gelu_linear": lambda: kernels.gelu_linear(x, torch.randn(8, 16, device=device), backend=backend),
    "sample": lambda: kernels.sample(x, 0.8, top_k=5, top_p=0.9, backend=backend).float(),
}
compile_backend = "inductor" if device == "cuda" else "aot_eager"
for op, call in calls.items():
    out = torch.compile(call, fullgraph=True, backend=compile_backend)()
    assert torch.isfinite(out).all(), op
print("ok")
"""


@pytest.mark.parametrize("backend", ["torch"] + [b for b in kernels.available_backends(DEVICE) if b != "torch"])
def test_first_call_of_every_op_inside_torch_compile(backend):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, backend, str(DEVICE)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
