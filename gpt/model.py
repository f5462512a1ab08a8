"""GPT-2 in one page, every fused op routed through `kernels` on a chosen backend.

Layout and parameter names follow nanoGPT / GPT-2 (transformer.wte, .h[i].attn.c_attn,
...). The "torch" backend is the readable reference path; "triton" and "cuda" swap
in fused kernels for the layer norms, attention, the MLP's up-projection and the
sampling softmax. No kernel logic lives here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import kernels

MODEL_OPS = ("layer_norm", "add_layer_norm", "attention", "gelu_linear", "linear_cross_entropy", "sample")


@dataclass
class GPTConfig:
    vocab_size: int = 50257
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    backend: str = "auto"

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


def check_backend(backend: str) -> str:
    """A model may only use a backend that implements every op it calls (no silent fallback)."""
    if backend not in kernels.BACKENDS + ("auto",):
        raise ValueError(f"backend must be one of {kernels.BACKENDS + ('auto',)}, got {backend!r}")
    if backend != "auto":
        missing = kernels.missing_ops(backend, MODEL_OPS)
        if missing:
            raise RuntimeError(f"backend={backend!r} does not implement {', '.join(missing)} yet, "
                               f"so a GPT cannot run on it; use backend='torch' or 'auto'")
    return backend


class LayerNorm(nn.Module):
    """LayerNorm with optional bias. Given `residual`, it fuses the residual add:
    returns (norm(x + residual), x + residual)."""

    def __init__(self, ndim, bias, backend="auto"):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None
        self.backend = backend

    def forward(self, x, residual=None):
        if residual is None:
            return kernels.layer_norm(x, self.weight, self.bias, 1e-5, backend=self.backend)
        return kernels.add_layer_norm(x, residual, self.weight, self.bias, 1e-5, backend=self.backend)


class KVCache:
    """Preallocated keys and values for every layer: (n_layer, B, n_head, block_size, head_dim).

    A step either appends at the Python-side `length` (slices: prefill and plain decode), or,
    as a static step (gpt/decode.py), writes at the device-side `position` and attends to the
    whole buffer with per-sequence lengths: every shape is then the same at every step, so one
    decode step can be captured in a CUDA graph and replayed."""

    def __init__(self, config, batch_size, device, dtype):
        shape = (config.n_layer, batch_size, config.n_head, config.block_size, config.n_embd // config.n_head)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.length = 0  # tokens already cached (the same for every layer)
        self.position = torch.zeros(1, dtype=torch.long, device=device)  # `length` on the device
        self.static = False
        self._write, self._lengths = None, None

    def positions(self, T, device):
        """Absolute positions of the next T tokens; a static step also prepares its writes."""
        if not self.static:
            return torch.arange(self.length, self.length + T, dtype=torch.long, device=device)
        self._write = self.position + torch.arange(T, device=device)  # (T,)
        self._lengths = self.position.expand(self.k.shape[1]) + T    # (B,) keys after this step, contiguous
        return self._write

    def append(self, layer, k, v):
        """Store this step's k, v; return the keys and values to attend to and, for a static
        step, the number of valid keys per sequence (None: all of them)."""
        if self.static:
            self.k[layer].index_copy_(2, self._write, k)
            self.v[layer].index_copy_(2, self._write, v)
            return self.k[layer], self.v[layer], self._lengths
        start, end = self.length, self.length + k.shape[2]
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end], None

    def advance(self, T):
        self.length += T
        if self.static:
            self.position += T  # on the device: a captured step advances itself at each replay


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd = config.n_head, config.n_embd
        self.backend = config.backend

    def forward(self, x, cache=None, layer=0):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        kv_lengths = None
        if cache is not None:
            k, v, kv_lengths = cache.append(layer, k, v)  # (B, nh, cached + T, hs)
        y = kernels.attention(q, k, v, causal=True, kv_lengths=kv_lengths, backend=self.backend)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.backend = config.backend

    def forward(self, x):
        h = kernels.gelu_linear(x, self.c_fc.weight, self.c_fc.bias, approximate="tanh", backend=self.backend)
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    """A pre-LN block. It takes the residual stream `x` and the previous block's MLP output
    `pending` (not yet added), so that every norm fuses the residual add in front of it."""

    def __init__(self, config):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, config.bias, config.backend)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, config.bias, config.backend)
        self.mlp = MLP(config)

    def forward(self, x, pending=None, cache=None, layer=0):
        if pending is None:
            h = self.ln_1(x)
        else:
            h, x = self.ln_1(pending, residual=x)            # x = x + pending
        h, x = self.ln_2(self.attn(h, cache, layer), residual=x)  # x = x + attn(ln_1(x))
        return x, self.mlp(h)                                # the MLP output is added by the next norm


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        check_backend(config.backend)
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, config.bias, config.backend),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied unembedding
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scaled init of residual projections
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @classmethod
    def from_hf(cls, model_or_path, backend: str = "auto") -> "GPT":
        """A GPT with the weights of a transformers GPT-2: a GPT2LMHeadModel, a local checkpoint
        folder, or a hub name (needs network). See gpt/hf.py."""
        from .hf import from_hf
        return from_hf(model_or_path, backend=backend)

    @property
    def backend(self):
        return self.config.backend

    def set_backend(self, backend: str):
        """Switch every layer's kernels in place; returns self."""
        self.config.backend = check_backend(backend)
        for module in self.modules():
            if hasattr(module, "backend") and not isinstance(module, GPT):
                module.backend = backend
        return self

    def num_params(self, non_embedding=True):
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def forward(self, idx, targets=None, cache=None, last_only=False, return_logits=False):
        """(logits, loss). With targets the loss is fused with the unembedding and the logits are
        never formed: (None, loss), unless return_logits=True. Targets of -1 are ignored."""
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence length {start + T} exceeds block_size {self.config.block_size}")
        pos = cache.positions(T, idx.device) if cache is not None else torch.arange(T, device=idx.device)  # (T,)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        pending = None
        for layer, block in enumerate(self.transformer.h):
            x, pending = block(x, pending, cache, layer)
        x = self.transformer.ln_f(x) if pending is None else self.transformer.ln_f(pending, residual=x)[0]
        if cache is not None:
            cache.advance(T)
        if targets is None:
            # Sampling needs only the last position: skip a (B, T, vocab) matmul on prefill.
            return self.lm_head(x[:, -1:, :] if last_only else x), None
        if return_logits:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
            return logits, loss
        loss = kernels.linear_cross_entropy(x, self.lm_head.weight, targets, self.lm_head.bias, ignore_index=-1,
                                            backend=self.backend)
        return None, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, use_cache=True,
                 generator=None, *, cuda_graph=None):
        """Append `max_new_tokens` sampled tokens to idx (B, T); temperature=0 is greedy decoding.
        On a CUDA model each decode step replays a CUDA graph (cuda_graph=False turns it off)."""
        for token in self.stream(idx, max_new_tokens, temperature, top_k, top_p, use_cache, generator,
                                 cuda_graph=cuda_graph):
            idx = torch.cat((idx, token), dim=1)
        return idx

    @torch.no_grad()
    def stream(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, use_cache=True,
               generator=None, *, cuda_graph=None):
        """Yield the next token (B, 1) step by step. With use_cache the prompt runs once, then one
        token per step against a preallocated KV cache (on a CUDA model, one CUDA-graph replay per
        step: gpt/decode.py); once the context is full it is cropped to block_size and recomputed
        (learned positions shift, so the cache cannot be reused)."""
        if not math.isfinite(temperature) or temperature < 0:
            raise ValueError(f"temperature must be finite and >= 0 (0 = greedy), got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")
        if idx.dim() != 2 or idx.shape[1] < 1:
            raise ValueError(f"idx must be (B, T) with T >= 1, got shape {tuple(idx.shape)}")
        graphed = self._use_cuda_graph(cuda_graph, idx) and use_cache
        block = self.config.block_size
        cache = None
        if use_cache and idx.shape[1] <= block:
            if graphed:
                from .decode import decoder_for
                cache = decoder_for(self, idx.shape[0], idx.device, self.lm_head.weight.dtype)
            else:
                cache = KVCache(self.config, idx.shape[0], idx.device, self.lm_head.weight.dtype)
        if graphed and cache is not None:
            logits = cache.prefill(idx)
        else:
            logits, _ = self(idx[:, -block:], cache=cache, last_only=True)  # prefill
        for step in range(max_new_tokens):
            token = self.sample(logits[:, -1, :], temperature, top_k, top_p, generator)
            yield token
            if step + 1 == max_new_tokens:
                break
            idx = torch.cat((idx, token), dim=1)
            if cache is not None and cache.length < block:
                # decode: only the newest token (a graph replay when graphed)
                logits = cache.step(token) if graphed else self(token, cache=cache)[0]
            else:
                logits, _ = self(idx[:, -block:], last_only=True)

    def _use_cuda_graph(self, cuda_graph, idx) -> bool:
        if cuda_graph not in (None, True, False):
            raise ValueError(f"cuda_graph must be None (on for CUDA models), True or False, got {cuda_graph!r}")
        on_cuda = idx.is_cuda and self.lm_head.weight.is_cuda
        if cuda_graph and not on_cuda:
            raise ValueError(f"cuda_graph=True needs a model and idx on a CUDA device, got {idx.device}; "
                             f"use cuda_graph=None or False on the CPU")
        # Dropout draws random numbers per step; a captured step would replay the same mask.
        usable = kernels.supports_kv_lengths(self.config.backend) and not (self.training and self.config.dropout > 0)
        if cuda_graph and not usable:
            raise ValueError(f"cuda_graph=True: backend={self.config.backend!r} cannot attend to a static KV cache "
                             f"(kv_lengths) yet, or the model is training with dropout")
        return bool(on_cuda and cuda_graph is not False and usable)

    def sample(self, logits, temperature=1.0, top_k=None, top_p=None, generator=None):
        """Next token (B, 1) from last-position logits (B, V): temperature 0 is argmax, else
        softmax(logits / temperature) cut to the top_k tokens, then to the top_p mass, and drawn."""
        token = kernels.sample(logits, temperature, top_k=top_k, top_p=top_p, generator=generator,
                               backend=self.config.backend)  # (B,)
        return token.unsqueeze(1)
