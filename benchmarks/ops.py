"""The op cases: shapes per size preset, the providers timed on each, and the work each must do.

Each op below says, next to the code that computes it, how many bytes or FLOPs one call
must move or do at minimum (performance.md): a figure is that work over the median time,
and its % of peak is over the ceiling measured at the start of the same run.

Providers (every one checked against the fp32 reference before it is timed):
  triton, cuda  our backends, through the public API (`kernels.<op>(..., backend=...)`)
  eager         what a PyTorch user writes: plain torch / F.* calls in the input dtype
  compile       torch.compile of exactly that eager function (static shapes)
  sdpa          F.scaled_dot_product_attention (attention only)
  liger         Liger-Kernel's softmax / LayerNorm, when liger-kernel is installed
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import kernels
from kernels import reference

from .env import SHORT

OUR_BACKENDS = ("triton", "cuda")
AUTO = "auto"  # backend="auto": what users get by default (kernels/_auto.py's measured table)
BASELINES = ("eager", "compile", "sdpa", "liger", "hf", "hf_patched")
PROVIDERS = OUR_BACKENDS + (AUTO,) + BASELINES


class Skip(Exception):
    """This provider cannot run this case; the message says why (it goes into the record)."""


@dataclass
class Case:
    op: str
    mode: str
    dtype: torch.dtype
    params: dict
    x: int                      # the swept size (x axis of the plots)
    xlabel: str
    series: str = ""            # a second size dimension held fixed along one plot line
    tier: int = 0               # run order: 0 = the quick set, then model cases, then the sweep
    shape: str = field(default="", compare=False)

    @property
    def dtype_name(self) -> str:
        return SHORT[self.dtype]

    @property
    def label(self) -> str:
        return f"{self.op}.{self.mode}"


def tiered(preset: str, sizes: dict) -> list[tuple[object, int]]:
    """(size, tier) pairs for a preset from {"quick": [...], "standard": [...], "full": [...]}:
    quick sizes run first (tier 0), the rest of the sweep later (tiers 2, 3)."""
    quick, standard, full = sizes["quick"], sizes.get("standard", ()), sizes.get("full", ())
    chosen = [(v, 0) for v in quick]
    if preset in ("standard", "full"):
        chosen += [(v, 2) for v in standard if v not in quick]
    if preset == "full":
        chosen += [(v, 3) for v in full if v not in quick and v not in standard]
    return chosen


def _randn(shape, case, device, scale=1.0, shift=0.0):
    return (torch.randn(shape, device=device, dtype=torch.float32) * scale + shift).to(case.dtype)


def our_provider(op: str, backend: str, device: torch.device) -> None:
    """Raise Skip unless `backend` runs `op` on `device` here."""
    reason = kernels.unavailable_reason(backend, device)
    if reason is not None:
        raise Skip(f"{backend} backend unavailable: {reason}")
    if kernels.missing_ops(backend, [op]):
        raise Skip(f"the {backend} backend does not implement {op} yet")


def liger_function(name: str):
    """LigerSoftmaxFunction / LigerLayerNormFunction, or Skip with the reason."""
    try:
        if name == "softmax":
            from liger_kernel.ops.softmax import LigerSoftmaxFunction as fn
        else:
            from liger_kernel.ops.layer_norm import LigerLayerNormFunction as fn
    except ImportError as e:
        raise Skip(f"liger-kernel is not installed or lacks {name} ({e})")
    return fn


class OpBench:
    """One op: its sizes, inputs, providers and the work a call does. Subclasses fill these in."""
    name: str
    modes: tuple[str, ...] = ("fwd", "bwd")
    grads: tuple[str, ...] = ()          # inputs that get gradients in "bwd" mode
    baselines: tuple[str, ...] = ("eager", "compile")
    metric: str = "bytes"                # "bytes" (GB/s over copy bandwidth) or "flops" (TFLOP/s over matmul)

    def cases(self, preset: str, gpu: bool, dtypes, modes) -> list[Case]:
        raise NotImplementedError

    def inputs(self, case: Case, device) -> dict:
        raise NotImplementedError

    def call(self, backend: str):
        """fn(**inputs) through the public API on `backend` ("torch" is the reference)."""
        raise NotImplementedError

    def eager(self, case: Case, device):
        raise NotImplementedError

    def work(self, case: Case) -> float:
        """Minimum bytes moved (metric "bytes") or FLOPs done (metric "flops") by one call."""
        raise NotImplementedError

    def metric_for(self, case: Case) -> str:
        return self.metric

    def extra(self, provider: str, case: Case, device):
        raise Skip(f"{provider} does not provide {self.name}")

    def provider(self, provider: str, case: Case, device, compile_backend: str = "inductor"):
        """fn(**inputs) for `provider` on this case, or raise Skip."""
        if provider in OUR_BACKENDS:
            our_provider(self.name, provider, device)
            return self.call(provider)
        if provider == AUTO:
            return self.call(AUTO)
        if provider not in self.baselines:
            raise Skip(f"{provider} is not a baseline for {self.name}")
        if provider == "eager":
            return self.eager(case, device)
        if provider == "compile":
            return compiled(self.eager(case, device), compile_backend)
        return self.extra(provider, case, device)


def compiled(fn, backend: str):
    """torch.compile of `fn`, specialized to this case's shapes (the best torch.compile can do).
    Dynamo's cache is cleared first: every case compiles afresh, never hitting the recompile
    limit (past it dynamo silently runs eager code, which would be timed as "compile")."""
    torch._dynamo.reset()
    return torch.compile(fn, dynamic=False, fullgraph=True, backend=backend)


# ---------------------------------------------------------------------------------------------
# Row ops: softmax, layer_norm, add_layer_norm (memory-bound: GB/s over the copy ceiling)
# ---------------------------------------------------------------------------------------------

class RowOp(OpBench):
    gpu_rows = 16384    # tokens: batch 16 x context 1024
    cpu_rows = 256
    gpu_sizes: dict
    cpu_sizes: dict
    xlabel = "hidden size N"

    def cases(self, preset, gpu, dtypes, modes):
        sizes = self.gpu_sizes if gpu else self.cpu_sizes
        rows = self.gpu_rows if gpu else self.cpu_rows
        return [Case(self.name, mode, dtype, {"M": rows, "N": n}, n, self.xlabel, tier=tier,
                     shape=f"{rows}x{n}")
                for mode in self.modes if mode in modes for dtype in dtypes
                for n, tier in tiered(preset, sizes)]


class Softmax(RowOp):
    """softmax(x / t) over rows of length N (vocab-sized rows: next-token sampling).
    fwd: read x, write y            -> 2 M N s bytes
    bwd: read y and dy, write dx    -> 3 M N s bytes   (s = bytes per element)"""
    name = "softmax"
    grads = ("x",)
    baselines = ("eager", "compile", "liger")
    gpu_rows = 8192     # logits of 8 x 1024 tokens
    xlabel = "row length N"
    gpu_sizes = {"quick": [4096, 50257], "standard": [1024, 2048, 4096, 8192, 16384, 32768, 50257],
                 "full": [512, 65536, 131072]}
    cpu_sizes = {"quick": [1000], "standard": [256, 1000, 4096], "full": [50257]}
    temperature = 0.8

    def inputs(self, case, device):
        # Logits of std 1: eager's `x / t` rounds in the input dtype, and bf16's step grows with
        # the logit (0.06 past 8), which would push eager itself toward the check's limit.
        return {"x": _randn((case.params["M"], case.params["N"]), case, device)}

    def call(self, backend):
        t = self.temperature
        return lambda x: kernels.softmax(x, t, -1, backend=backend)

    def eager(self, case, device):
        t = self.temperature
        return lambda x: torch.softmax(x / t, dim=-1)

    def extra(self, provider, case, device):
        if provider != "liger":
            return super().extra(provider, case, device)
        fn, t = liger_function("softmax"), self.temperature
        return lambda x: fn.apply(x / t)  # Liger has no temperature: the user divides first

    def work(self, case):
        n = case.params["M"] * case.params["N"] * case.dtype.itemsize
        return 2 * n if case.mode == "fwd" else 3 * n


class LayerNorm(RowOp):
    """layer_norm over the last dim N with weight and bias.
    fwd: read x (M N), w and b (N), write y (M N)              -> (2 M N + 2 N) s bytes
    bwd: read x, dy, w; write dx, dw, db (statistics recomputed) -> (3 M N + 3 N) s bytes"""
    name = "layer_norm"
    grads = ("x", "weight", "bias")
    baselines = ("eager", "compile", "liger")
    gpu_sizes = {"quick": [1024, 4096], "standard": [768, 1024, 1600, 2048, 4096, 8192],
                 "full": [12288, 16384]}
    cpu_sizes = {"quick": [768], "standard": [256, 768, 1024], "full": [4096]}

    def inputs(self, case, device):
        m, n = case.params["M"], case.params["N"]
        return {"x": _randn((m, n), case, device), "weight": _randn((n,), case, device, 0.1, 1.0),
                "bias": _randn((n,), case, device, 0.1)}

    def call(self, backend):
        return lambda x, weight, bias: kernels.layer_norm(x, weight, bias, 1e-5, backend=backend)

    def eager(self, case, device):
        return lambda x, weight, bias: F.layer_norm(x, x.shape[-1:], weight, bias, 1e-5)

    def extra(self, provider, case, device):
        if provider != "liger":
            return super().extra(provider, case, device)
        fn = liger_function("layer_norm")
        return lambda x, weight, bias: fn.apply(x, weight, bias, 1e-5)

    def work(self, case):
        m, n, s = case.params["M"], case.params["N"], case.dtype.itemsize
        return (2 * m * n + 2 * n) * s if case.mode == "fwd" else (3 * m * n + 3 * n) * s


class AddLayerNorm(LayerNorm):
    """(layer_norm(x + r), x + r): a pre-LN block's residual add fused into its norm.
    fwd: read x, r, w, b; write y and the sum s                     -> (4 M N + 2 N) s bytes
    bwd: read s, dy, ds, w; write one dx (it is also dr), dw, db    -> (4 M N + 3 N) s bytes"""
    name = "add_layer_norm"
    grads = ("x", "residual", "weight", "bias")

    def inputs(self, case, device):
        d = super().inputs(case, device)
        return {"x": d["x"], "residual": _randn(d["x"].shape, case, device), "weight": d["weight"],
                "bias": d["bias"]}

    def call(self, backend):
        return lambda x, residual, weight, bias: kernels.add_layer_norm(x, residual, weight, bias, 1e-5,
                                                                        backend=backend)

    def eager(self, case, device):
        def add_layer_norm(x, residual, weight, bias):
            total = x + residual
            return F.layer_norm(total, total.shape[-1:], weight, bias, 1e-5), total
        return add_layer_norm

    def extra(self, provider, case, device):
        if provider != "liger":
            return super().extra(provider, case, device)
        fn = liger_function("layer_norm")

        def liger_add_layer_norm(x, residual, weight, bias):
            total = x + residual  # Liger's LayerNorm has no fused residual: the user adds first
            return fn.apply(total, weight, bias, 1e-5), total
        return liger_add_layer_norm

    def work(self, case):
        m, n, s = case.params["M"], case.params["N"], case.dtype.itemsize
        return (4 * m * n + 2 * n) * s if case.mode == "fwd" else (4 * m * n + 3 * n) * s


# ---------------------------------------------------------------------------------------------
# Attention (fwd/bwd: TFLOP/s over matmul; decode: GB/s over copy, it streams the KV cache)
# ---------------------------------------------------------------------------------------------

class Attention(OpBench):
    """Causal attention, q (B, H, Tq, D), k/v (B, H, Tk, D).
    fwd:    4 B H Tq Tk D FLOPs (QK^T and PV, 2 each), x0.5 causal (Tq = Tk: FlashAttention's convention)
    bwd:    2.5 x fwd (dV, dP, dQ, dK: 4 matmuls, plus recomputing QK^T)
    decode: Tq = 1 against a Tk-long KV cache: memory-bound, it must read q, K, V and write o
            -> (2 B H Tq D + 2 B H Tk D) s bytes
    Shapes follow FlashAttention's benchmark: hidden 2048 (H = 2048 / D), B x T = 16k tokens."""
    name = "attention"
    modes = ("fwd", "bwd", "decode")
    grads = ("q", "k", "v")
    baselines = ("eager", "compile", "sdpa")
    metric = "flops"
    gpu_tokens, gpu_hidden = 16384, 2048
    gpu_sizes = {"quick": [(1024, 64), (4096, 128)],
                 "standard": [(t, d) for d in (64, 128) for t in (512, 1024, 2048, 4096, 8192, 16384)]}
    cpu_sizes = {"quick": [(128, 32)], "standard": [(t, 32) for t in (64, 128, 256)]}
    gpu_decode = {"quick": [4096], "standard": [512, 1024, 2048, 4096, 8192, 16384], "full": [32768]}
    cpu_decode = {"quick": [256], "standard": [128, 256, 1024]}
    decode_batch, decode_heads, decode_dim = 8, 16, 128
    # GPT-2 124M's decode step (B1 H12 D64: 12 heads cannot fill the GPU, the keys split) beside it
    gpu_decode_shapes = {"quick": [(1, 12, 1024, 64)], "standard": [(1, 12, 256, 64), (1, 12, 4096, 64)]}

    def cases(self, preset, gpu, dtypes, modes):
        out = []
        sizes = self.gpu_sizes if gpu else self.cpu_sizes
        for mode in ("fwd", "bwd"):
            if mode not in modes:
                continue
            for (t, d), tier in tiered(preset, sizes):
                if gpu:
                    b, h = max(1, self.gpu_tokens // t), self.gpu_hidden // d
                else:
                    b, h = 2, 4
                out += [Case(self.name, mode, dtype, dict(B=b, H=h, Tq=t, Tk=t, D=d), t, "sequence length T",
                             f"D={d}", tier, f"B{b} H{h} T{t} D{d}") for dtype in dtypes]
        if "decode" in modes:
            b, h, d = (self.decode_batch, self.decode_heads, self.decode_dim) if gpu else (2, 4, 32)
            decode = self.gpu_decode if gpu else self.cpu_decode
            for t, tier in tiered(preset, decode):
                out += [Case(self.name, "decode", dtype, dict(B=b, H=h, Tq=1, Tk=t, D=d), t, "KV cache length Tk",
                             f"D={d}", tier, f"B{b} H{h} Tq1 Tk{t} D{d}") for dtype in dtypes]
            for (b, h, t, d), tier in tiered(preset, self.gpu_decode_shapes if gpu else {"quick": []}):
                out += [Case(self.name, "decode", dtype, dict(B=b, H=h, Tq=1, Tk=t, D=d), t, "KV cache length Tk",
                             f"B{b} H{h} D={d}", tier, f"B{b} H{h} Tq1 Tk{t} D{d}") for dtype in dtypes]
        return out

    def inputs(self, case, device):
        p = case.params
        return {"q": _randn((p["B"], p["H"], p["Tq"], p["D"]), case, device),
                "k": _randn((p["B"], p["H"], p["Tk"], p["D"]), case, device),
                "v": _randn((p["B"], p["H"], p["Tk"], p["D"]), case, device)}

    def call(self, backend):
        return lambda q, k, v: kernels.attention(q, k, v, causal=True, backend=backend)

    def metric_for(self, case):
        return "bytes" if case.mode == "decode" else "flops"

    def eager(self, case, device):
        """nanoGPT's slow path: the (Tq, Tk) score matrix written out, masked, softmaxed."""
        p = case.params
        scale = 1.0 / math.sqrt(p["D"])
        if p["Tq"] == 1:  # one query at the end of the keys sees all of them: no mask
            return lambda q, k, v: torch.softmax((q @ k.transpose(-2, -1)) * scale, dim=-1) @ v
        masked = ~reference.causal_mask(p["Tq"], p["Tk"], device)  # built once, like nanoGPT's buffer

        def attention(q, k, v):
            scores = ((q @ k.transpose(-2, -1)) * scale).masked_fill(masked, float("-inf"))
            return torch.softmax(scores, dim=-1) @ v
        return attention

    def provider(self, provider, case, device, compile_backend="inductor"):
        if provider in ("eager", "compile") and device.type == "cuda":
            self._check_score_memory(case, device)
        return super().provider(provider, case, device, compile_backend)

    def _check_score_memory(self, case, device):
        p = case.params
        # scores, probabilities and (bwd) their gradients, each B H Tq Tk elements
        need = p["B"] * p["H"] * p["Tq"] * p["Tk"] * case.dtype.itemsize * (3 if case.mode != "bwd" else 6)
        free = torch.cuda.mem_get_info(device)[0]
        if need > 0.6 * free:
            raise Skip(f"materializes the (Tq, Tk) scores: ~{need / 2**30:.0f} GiB, "
                       f"{free / 2**30:.0f} GiB free")

    def extra(self, provider, case, device):
        if provider != "sdpa":
            return super().extra(provider, case, device)
        tq, tk = case.params["Tq"], case.params["Tk"]
        if tq == 1:
            return lambda q, k, v: F.scaled_dot_product_attention(q, k, v)
        if tq == tk:
            return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)
        mask = reference.causal_mask(tq, tk, device)
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def work(self, case):
        p, s = case.params, case.dtype.itemsize
        if case.mode == "decode":
            return (2 * p["Tq"] + 2 * p["Tk"]) * p["B"] * p["H"] * p["D"] * s
        flops = 4 * p["B"] * p["H"] * p["Tq"] * p["Tk"] * p["D"]
        flops *= 0.5 if p["Tq"] == p["Tk"] else _visible_fraction(p["Tq"], p["Tk"])
        return flops * (2.5 if case.mode == "bwd" else 1.0)


def _visible_fraction(tq: int, tk: int) -> float:
    """Share of (query, key) pairs a causal end-aligned mask keeps: query i sees Tk - Tq + i + 1 keys."""
    return (tq * (tk - tq) + tq * (tq + 1) / 2) / (tq * tk)


# ---------------------------------------------------------------------------------------------
# GELU MLP up-projection (compute-bound: TFLOP/s over matmul)
# ---------------------------------------------------------------------------------------------

class GeluLinear(OpBench):
    """gelu(x @ W^T + b), x (M, C), W (4C, C): GPT-2's MLP up-projection on M = B x T tokens.
    fwd: 2 M K N FLOPs (K = C in, N = 4C out; the bias and GELU epilogue are not counted)
    bwd: 4 M K N FLOPs (dX = dH W and dW = dH^T X; db and GELU' are not counted)"""
    name = "gelu_linear"
    grads = ("x", "weight", "bias")
    metric = "flops"
    gpu_tokens, cpu_tokens = 16384, 256
    gpu_sizes = {"quick": [1024, 4096], "standard": [768, 1024, 1600, 2048, 4096, 8192]}
    cpu_sizes = {"quick": [128], "standard": [64, 128, 256]}

    def cases(self, preset, gpu, dtypes, modes):
        sizes = self.gpu_sizes if gpu else self.cpu_sizes
        m = self.gpu_tokens if gpu else self.cpu_tokens
        return [Case(self.name, mode, dtype, {"M": m, "K": c, "N": 4 * c}, c, "hidden size C", tier=tier,
                     shape=f"M{m} K{c} N{4 * c}")
                for mode in self.modes if mode in modes for dtype in dtypes
                for c, tier in tiered(preset, sizes)]

    def inputs(self, case, device):
        p = case.params
        return {"x": _randn((p["M"], p["K"]), case, device),
                "weight": _randn((p["N"], p["K"]), case, device, p["K"] ** -0.5),
                "bias": _randn((p["N"],), case, device, 0.1)}

    def call(self, backend):
        return lambda x, weight, bias: kernels.gelu_linear(x, weight, bias, approximate="tanh", backend=backend)

    def eager(self, case, device):
        return lambda x, weight, bias: F.gelu(F.linear(x, weight, bias), approximate="tanh")

    def work(self, case):
        p = case.params
        return 2 * p["M"] * p["K"] * p["N"] * (2 if case.mode == "bwd" else 1)


# ---------------------------------------------------------------------------------------------
# Fused unembedding + cross-entropy (compute-bound: TFLOP/s over matmul; peak memory matters)
# ---------------------------------------------------------------------------------------------

class LinearCrossEntropy(OpBench):
    """loss = cross_entropy(x @ W^T, target), x (N, C), W (V, C): GPT-2's unembedding and loss
    (C 768, V 50257) on N = B x T tokens. One "train" call is the forward and the backward
    together (loss, dx, dW): our backends form the gradient during the forward pass, so the
    two only make sense timed as one.
    train: 6 N V C FLOPs (logits, dX, dW); the softmax and the loss are not counted.
    eager materialises the (N, V) logits, their log-softmax and gradients (~4 N V s bytes held);
    ours holds a chunk of them ("mem MiB" shows it)."""
    name = "linear_cross_entropy"
    modes = ("train",)
    metric = "flops"
    hidden, vocab = 768, 50257
    gpu_sizes = {"quick": [8192], "standard": [8192, 16384], "full": [4096, 32768]}
    cpu_sizes = {"quick": [128], "standard": [64, 128]}
    cpu_hidden, cpu_vocab = 64, 1001

    def __init__(self):
        self._target = None  # the case's targets: the runner casts every input to float for its reference

    def cases(self, preset, gpu, dtypes, modes):
        if "train" not in modes:
            return []
        c, v = (self.hidden, self.vocab) if gpu else (self.cpu_hidden, self.cpu_vocab)
        sizes = self.gpu_sizes if gpu else self.cpu_sizes
        return [Case(self.name, "train", dtype, {"N": n, "C": c, "V": v}, n, "tokens N", tier=tier,
                     shape=f"N{n} C{c} V{v}")
                for dtype in dtypes for n, tier in tiered(preset, sizes)]

    def inputs(self, case, device):
        p = case.params
        g = torch.Generator(device="cpu").manual_seed(2)
        target = torch.randint(0, p["V"], (p["N"],), generator=g)
        target[::50] = -100  # a few ignored positions (padding), as in real batches
        self._target = target.to(device)
        return {"x": _randn((p["N"], p["C"]), case, device),
                "weight": _randn((p["V"], p["C"]), case, device, 2 * p["C"] ** -0.5)}

    def _train(self, loss_fn):
        """(loss, dx, dW) of loss_fn(x, weight, target): one forward + backward."""
        def step(x, weight):
            x, weight = x.detach().requires_grad_(), weight.detach().requires_grad_()
            loss = loss_fn(x, weight, self._target)
            dx, dw = torch.autograd.grad(loss, (x, weight))
            return loss.detach().float().reshape(1), dx, dw
        return step

    def call(self, backend):
        return self._train(lambda x, w, t: kernels.linear_cross_entropy(x, w, t, backend=backend))

    def _eager_loss(self):
        return lambda x, w, t: F.cross_entropy(F.linear(x, w), t)

    def eager(self, case, device):
        return self._train(self._eager_loss())

    def provider(self, provider, case, device, compile_backend="inductor"):
        if provider == "compile":  # the loss compiled; autograd.grad stays outside the graph
            return self._train(compiled(self._eager_loss(), compile_backend))
        return super().provider(provider, case, device, compile_backend)

    def work(self, case):
        p = case.params
        return 6 * p["N"] * p["V"] * p["C"]


# Sampling (memory-bound: GB/s over copy, though at B <= 64 launches and passes dominate)
# ---------------------------------------------------------------------------------------------

class Sample(OpBench):
    """Next-token sampling from logits (B, V): temperature, then top_k=50 or top_p=0.9, then the draw.
    fwd: read the logits once, write B int64 -> B V s + 8 B bytes (the floor; see
         kernels/triton/sample.py for the passes the kernels make over each row on chip).
    eager/compile: torch's sequence, topk + masked_fill + softmax + multinomial, or sort +
    softmax + cumsum + masked_fill + multinomial + gather for top-p.
    The check: one token per row sits 40 above the rest of its random row, at a column below
    64, so every correct sampler draws it (the others weigh < e^-30, below any sampler's
    resolution) and the relative check on the token ids is exact; the top-k and top-p
    searches still run over the whole row."""
    name = "sample"
    modes = ("fwd",)
    temperature = 0.8
    gpu_vocab, cpu_vocab = 50257, 1000
    gpu_sizes = {"quick": [1, 16, 64], "standard": [1, 4, 16, 64, 256]}
    cpu_sizes = {"quick": [4], "standard": [1, 4, 16]}
    filters = ({"top_k": 50}, {"top_p": 0.9})

    def cases(self, preset, gpu, dtypes, modes):
        sizes = self.gpu_sizes if gpu else self.cpu_sizes
        v = self.gpu_vocab if gpu else self.cpu_vocab
        return [Case(self.name, mode, dtype, {"B": b, "V": v, **f}, b, "batch B",
                     series=",".join(f"{k}={x}" for k, x in f.items()), tier=tier,
                     shape=f"B{b} V{v} " + ",".join(f"{k}={x}" for k, x in f.items()))
                for mode in self.modes if mode in modes for dtype in dtypes for f in self.filters
                for b, tier in tiered(preset, sizes)]

    def inputs(self, case, device):
        b, v = case.params["B"], case.params["V"]
        logits = torch.randn((b, v), device=device, dtype=torch.float32)
        cols = torch.randint(0, min(64, v), (b, 1), device=device)
        logits.scatter_(1, cols, logits.gather(1, cols) + 40.0)
        # The filter travels with the inputs (the runner calls `call(backend)` without the case) as
        # host scalars: top_k 0 and top_p 1 mean none.
        return {"logits": logits.to(case.dtype), "top_k": torch.tensor(case.params.get("top_k", 0)),
                "top_p": torch.tensor(case.params.get("top_p", 1.0))}

    def call(self, backend):
        t = self.temperature

        def sample(logits, top_k, top_p):
            return kernels.sample(logits, t, top_k=int(top_k) or None, top_p=float(top_p), backend=backend)
        return sample

    def eager(self, case, device):
        t, k, p = self.temperature, case.params.get("top_k"), case.params.get("top_p")  # constants here

        def top_k_sample(logits, top_k, top_p):
            kth = torch.topk(logits, k, dim=-1).values[:, -1:]
            probs = torch.softmax(logits.masked_fill(logits < kth, float("-inf")).float() / t, dim=-1)
            return torch.multinomial(probs, 1).squeeze(1)

        def top_p_sample(logits, top_k, top_p):
            ordered, order = torch.sort(logits, dim=-1, descending=True)
            probs = torch.softmax(ordered.float() / t, dim=-1)
            probs = probs.masked_fill(probs.cumsum(dim=-1) - probs >= p, 0.0)  # keeps the crossing token
            return order.gather(1, torch.multinomial(probs, 1)).squeeze(1)

        return top_k_sample if "top_k" in case.params else top_p_sample

    def work(self, case):
        p = case.params
        return p["B"] * p["V"] * case.dtype.itemsize + 8 * p["B"]


OPS = {spec.name: spec for spec in (Softmax(), LayerNorm(), AddLayerNorm(), Attention(), GeluLinear(),
                                    LinearCrossEntropy(), Sample())}


def reference_call(op: str):
    """The torch backend: the fp32 ground truth (on fp32 copies) and PyTorch's own error (in dtype)."""
    return OPS[op].call("torch")
