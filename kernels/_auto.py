"""backend="auto": which backend runs an op, from committed GPU measurements.

Per compute capability, per op, per size class, and per use (inference: no input needs a
gradient; training: the forward and its backward together), the fastest of triton, cuda and
torch as measured on that card, with the runners-up after it (used when a backend cannot run
here). Where our kernels lose to PyTorch at a size, auto runs torch: it never picks a loser.
A card with no measurements runs torch. `tests/test_auto.py` checks that every op is covered.

H100 run 3 (benchmarks/results/2026-11-25-h100-80gb-hbm3-run3/bench.json, bf16, ms):
  softmax 8192x4096     fwd  cuda 0.056  compile 0.072  triton 0.106  eager 0.159
                        bwd  cuda 0.073  compile 0.142  triton 0.171  eager 0.188
  softmax 8192x50257    fwd  triton 1.112  eager 1.312  cuda 1.398
                        bwd  triton 1.528  compile 1.607  cuda 1.642  eager 2.436
  layer_norm 16384x1024 fwd  cuda 0.040  eager 0.044  triton 0.074;  bwd eager 0.126  cuda 0.142  triton 0.308
  add_layer_norm 16384x1024  fwd cuda 0.053  eager 0.082  triton 0.187;  bwd eager 0.164  cuda 0.233  triton 0.434
  attention B4 H16 T4096 D128 causal  fwd sdpa 0.509  triton 0.661;  bwd sdpa 1.557  triton 2.049
  attention decode B8 H16 Tk4096 D128  sdpa 0.104  triton 0.291  cuda 1.084
  gelu_linear M16384 K1024 N4096  fwd cuda 0.258  eager 0.289  triton 0.313;  bwd eager 0.553  cuda 0.638
Training sums forward and backward: layer_norm cuda 0.182 vs eager 0.170 (torch), add_layer_norm
0.286 vs 0.246 (torch), gelu_linear 0.896 vs 0.841 (torch). Each op was measured at one size
class (softmax at two); the same choice holds for its other sizes until they are measured.
The new ops (linear_cross_entropy, sample) have no GPU measurement yet: torch.
"""
from __future__ import annotations

import functools

import torch

# (major, minor) -> op -> [(largest size in the class or None, inference order, training order)]
# The size of an op: softmax the row width; layer norms the hidden size; attention the query
# length (decode is Tq <= 16); gelu_linear and the rest a single class.
TABLE = {
    (9, 0): {
        "softmax": [(16384, ("cuda", "triton", "torch"), ("cuda", "triton", "torch")),
                    (None, ("triton", "torch"), ("triton", "torch"))],
        "layer_norm": [(None, ("cuda", "torch"), ("torch",))],
        "add_layer_norm": [(None, ("cuda", "torch"), ("torch",))],
        "attention": [(16, ("torch",), ("torch",)), (None, ("torch",), ("torch",))],
        "gelu_linear": [(None, ("cuda", "torch"), ("torch",))],
        "linear_cross_entropy": [(None, ("torch",), ("torch",))],
        "sample": [(None, ("torch",), ("torch",))],
    },
}
# Cards measured under another capability's table: the H200 is the H100's architecture.
SAME_AS = {(9, 0): (9, 0)}


@functools.lru_cache(maxsize=None)
def _capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def table_for(capability) -> dict | None:
    return TABLE.get(SAME_AS.get(tuple(capability), tuple(capability)))


def order(op: str, device: torch.device, size: int | None, training: bool) -> tuple[str, ...]:
    """The backends to try for `op` on this CUDA device, best first (ends with torch)."""
    table = table_for(_capability(device))
    if table is None or op not in table:
        return ("torch",)
    for largest, inference, train in table[op]:
        if largest is None or size is None or size <= largest:
            return train if training else inference
    return ("torch",)
