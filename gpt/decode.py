"""One decode step captured in a CUDA graph and replayed for every new token.

A decode step of GPT-2 124M is ~100 small kernels: launched one by one from Python their host
cost exceeds their GPU time (benchmarks.overhead). Captured once, the whole step replays with
one launch. Replaying needs fixed shapes and addresses, so the step runs on a static KV cache
(gpt.model.KVCache with `static` set: writes at a device-side position, attention over the
whole buffer with per-sequence lengths) with a static token buffer in and a static logits
tensor out. The prompt runs outside the graph (its length varies); so does the recompute
path once the context is full.

One DecodeGraph per (model, batch size, dtype, backend), kept on the model and reused across
`generate` calls: its cache is rewritten from the start by each prompt.
"""
from __future__ import annotations

import weakref

import torch

from .model import KVCache


class DecodeGraph:
    def __init__(self, model, batch_size: int, device, dtype, capture: bool = True):
        self.model = model
        self.cache = KVCache(model.config, batch_size, device, dtype)
        # Attention reads the whole buffer: masked slots get weight 0, and 0 x uninitialised
        # memory could be NaN (the torch backend's SDPA multiplies them all).
        self.cache.k.zero_()
        self.cache.v.zero_()
        self.token = torch.zeros((batch_size, 1), dtype=torch.long, device=device)
        self.capture = capture  # False: run the static step eagerly each time (CPU tests)
        self.graph = None
        self.logits = None

    @property
    def length(self) -> int:
        return self.cache.length

    def prefill(self, idx):
        """Run the prompt (outside the graph) into the cache from position 0; last logits (B, 1, V)."""
        self.cache.length = 0
        self.cache.static = False
        logits, _ = self.model(idx, cache=self.cache, last_only=True)
        self.cache.position.fill_(self.cache.length)
        return logits

    def step(self, token):
        """Logits (B, 1, V) for `token` (B, 1) at the next position: one graph replay."""
        self.token.copy_(token)
        if self.graph is not None:
            self.graph.replay()
            self.cache.length += 1  # the device-side position advanced inside the graph
            return self.logits
        logits = self._static_step()  # eager: compiles and autotunes every kernel before a capture
        if self.capture:
            self._capture()
        return logits

    def _static_step(self):
        self.cache.static = True
        try:
            return self.model(self.token, cache=self.cache)[0]
        finally:
            self.cache.static = False

    def _capture(self):
        # Capturing records the step without running it: the cache, its position and the
        # host-side length are where the eager step left them, so restore the length after.
        length = self.cache.length
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize()
        with torch.cuda.graph(graph):
            self.logits = self._static_step()
        self.cache.length = length
        self.graph = graph


_GRAPHS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> {key: (weights, DecodeGraph)}


def decoder_for(model, batch_size: int, device, dtype) -> DecodeGraph:
    """The model's DecodeGraph for this batch size and dtype (one capture each, reused). A graph
    holds the parameters' addresses: if they moved (`model.to`, a reload), it is captured anew.
    Off a GPU (tests) the static step runs eagerly: everything but the capture itself."""
    device = torch.device(device)
    capture = device.type == "cuda"
    graphs = _GRAPHS.setdefault(model, {})
    key = (batch_size, str(device), dtype, model.config.backend)
    weights = tuple(p.data_ptr() for p in model.parameters())
    if key not in graphs or graphs[key][0] != weights:
        graphs[key] = (weights, DecodeGraph(model, batch_size, device, dtype, capture))
    return graphs[key][1]
