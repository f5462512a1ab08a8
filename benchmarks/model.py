"""Whole-model figures: a GPT-2 124M training step and KV-cached decode, in tokens/s.

Providers: our backends (`gpt.GPT` with backend="triton"/"cuda", every layer on that
backend), eager (the same model on backend="torch": nn.Linear, F.layer_norm and SDPA, i.e.
nanoGPT's fast path), compile (that eager model under `nn.Module.compile`), and for decode
transformers' GPT2LMHeadModel with the same weights: hf (its own eager `generate`) and
hf_patched (after `gpt.patch_hf_gpt2(backend="auto")`). All run with
their parameters in the case's dtype; the check compares loss and gradients (train) or the
last-position logits of a cached decode step (decode) with the fp32 model on the torch backend.
"""
from __future__ import annotations

import copy

import torch

import gpt
import kernels

from .ops import OUR_BACKENDS, Case, Skip, tiered

GPT2_124M = dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
CPU_TINY = dict(vocab_size=50257, block_size=128, n_layer=2, n_head=4, n_embd=128)


class GPTBench:
    """train:  tokens/s = B T / t; model FLOPs per token 6 N + 12 L H Q T (N non-embedding
               params, Q head dim: PaLM's / nanoGPT's MFU count) -> TFLOP/s over the matmul ceiling.
    decode: tokens/s = B n / t for `generate` of n tokens after a P-token prompt (prefill included).
               Each step must read every weight once and the KV cache so far:
               bytes = n W s + sum over steps of 2 L B c C s (c = context length, C = n_embd)
               -> GB/s over the copy ceiling."""
    name = "gpt"
    modes = ("train", "decode")
    baselines = ("eager", "compile", "hf", "hf_patched")
    gpu_train = {"quick": [8], "standard": [8], "full": [4, 16]}
    cpu_train = {"quick": [2], "standard": [2, 4]}
    gpu_decode = {"quick": [1, 16], "standard": [1, 16], "full": [1, 4, 16, 64]}
    cpu_decode = {"quick": [1], "standard": [1, 4]}

    def cases(self, preset, gpu, dtypes, modes):
        cfg = GPT2_124M if gpu else CPU_TINY
        what = "GPT-2 124M" if gpu else f"tiny GPT ({cfg['n_layer']}L {cfg['n_embd']}d)"
        t = 1024 if gpu else 64
        prompt, new = (128, 256) if gpu else (16, 16)
        out = []
        for mode, sizes in (("train", self.gpu_train if gpu else self.cpu_train),
                            ("decode", self.gpu_decode if gpu else self.cpu_decode)):
            if mode not in modes:
                continue
            for b, tier in tiered(preset, sizes):
                params = dict(cfg, B=b, T=t) if mode == "train" else dict(cfg, B=b, P=prompt, new=new)
                shape = f"{what} B{b} " + (f"T{t}" if mode == "train" else f"prompt {prompt} +{new}")
                out += [Case(self.name, mode, dtype, params, b, "batch size", "", max(tier, 1), shape)
                        for dtype in dtypes]
        return out

    @staticmethod
    def config(case: Case, backend: str = "torch") -> gpt.GPTConfig:
        keys = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")
        return gpt.GPTConfig(**{k: case.params[k] for k in keys}, dropout=0.0, bias=True, backend=backend)

    def base(self, case: Case, device) -> gpt.GPT:
        torch.manual_seed(0)
        return gpt.GPT(self.config(case)).to(device)

    def model(self, provider: str, case: Case, base: gpt.GPT, device, compile_backend: str):
        if provider in OUR_BACKENDS:
            reason = kernels.unavailable_reason(provider, device)
            if reason is not None:
                raise Skip(f"{provider} backend unavailable: {reason}")
            missing = kernels.missing_ops(provider, gpt.MODEL_OPS)
            if missing:
                raise Skip(f"the {provider} backend does not implement {', '.join(missing)} yet, "
                           f"so a GPT cannot run on it")
        elif provider not in self.baselines and provider != "auto":
            raise Skip(f"{provider} is not a whole-model provider")
        if provider in ("hf", "hf_patched"):
            return self.hf_model(provider, case, base, device)
        # Training as users run it: fp32 parameters and AdamW state, the forward under autocast
        # (bf16/fp16 matmuls); decode with the weights in the case's dtype.
        train_autocast = case.mode == "train" and case.dtype != torch.float32
        model = copy.deepcopy(base).to(torch.float32 if train_autocast else case.dtype)
        if provider in OUR_BACKENDS or provider == "auto":
            model.set_backend(provider)
        if provider == "compile":
            torch._dynamo.reset()
            model.compile(backend=compile_backend)
        return model

    @staticmethod
    def hf_model(provider: str, case: Case, base: gpt.GPT, device):
        """transformers' GPT2LMHeadModel with `base`'s weights (decode only: its loss shifts the
        labels itself, so a training step would not be the same computation)."""
        if case.mode != "decode":
            raise Skip("transformers' GPT-2 is timed for decode only")
        try:
            import tempfile
            from transformers import GPT2LMHeadModel
        except ImportError as e:
            raise Skip(f"transformers is not installed ({e})") from None
        with tempfile.TemporaryDirectory() as folder:
            gpt.save_hf(base, folder)
            model = GPT2LMHeadModel.from_pretrained(folder, dtype=case.dtype).to(device).eval()
        if provider == "hf_patched":
            gpt.patch_hf_gpt2(model, backend="auto")
        return model

    def batch(self, case: Case, device):
        g = torch.Generator(device="cpu").manual_seed(1)
        p = case.params
        if case.mode == "train":
            x = torch.randint(0, p["vocab_size"], (p["B"], p["T"] + 1), generator=g).to(device)
            return x[:, :-1].contiguous(), x[:, 1:].contiguous()
        return torch.randint(0, p["vocab_size"], (p["B"], p["P"]), generator=g).to(device), None

    def outputs(self, model, case: Case, idx, targets):
        """What the check compares: [loss, all gradients flattened] or [logits of a cached step]."""
        if case.mode == "train":
            with _autocast(case, idx.device):
                _, loss = model(idx, targets)
            grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
            return [loss.detach().float().reshape(1), torch.cat([g.float().flatten() for g in grads])]
        if not isinstance(model, gpt.GPT):  # transformers: the prompt, then one cached step
            with torch.no_grad():
                out = model(idx, use_cache=True)
                step = model(idx[:, :1], past_key_values=out.past_key_values, use_cache=True)
            return [step.logits[:, -1].float()]
        with torch.no_grad():  # the prompt, then one cached step: the shapes `generate` runs first
            cache = gpt.KVCache(model.config, idx.shape[0], idx.device, model.lm_head.weight.dtype)
            model(idx, cache=cache)
            logits, _ = model(idx[:, :1], cache=cache)  # the Tq = 1 decode path
        return [logits[:, -1].float()]

    def runner(self, model, case: Case, idx, targets, device):
        if case.mode == "train":
            opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")

            def step():
                with _autocast(case, device):
                    _, loss = model(idx, targets)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            return step
        new = case.params["new"]
        if not isinstance(model, gpt.GPT):  # transformers: sample exactly `new` tokens, no early stop
            return lambda: model.generate(idx, max_new_tokens=new, min_new_tokens=new, do_sample=True, top_k=0,
                                          pad_token_id=0, attention_mask=torch.ones_like(idx))
        return lambda: model.generate(idx, new, temperature=1.0)

    def work(self, case: Case, base: gpt.GPT) -> tuple[str, float, float]:
        """(metric, amount of work, tokens) of one timed call; see the class docstring."""
        p, s = case.params, case.dtype.itemsize
        L, C = p["n_layer"], p["n_embd"]
        if case.mode == "train":
            tokens = p["B"] * p["T"]
            per_token = 6 * base.num_params() + 12 * L * p["n_head"] * (C // p["n_head"]) * p["T"]
            return "flops", per_token * tokens, tokens
        weights = sum(t.numel() for t in base.parameters()) * s
        contexts = range(p["P"] + 1, p["P"] + p["new"])
        kv = sum(2 * L * p["B"] * c * C * s for c in contexts)
        return "bytes", p["new"] * weights + kv, p["B"] * p["new"]


def _autocast(case: Case, device):
    """The training step's autocast: on for bf16/fp16 cases, off for fp32."""
    return torch.autocast(torch.device(device).type, dtype=case.dtype, enabled=case.dtype != torch.float32)


GPT_BENCH = GPTBench()
