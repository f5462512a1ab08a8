"""GPT-2 interop with Hugging Face transformers: load, save, and patch in place.

- `from_hf(model_or_path)` builds our `GPT` from a `GPT2LMHeadModel` (or `GPT2Model`), a local
  checkpoint folder (config.json + model.safetensors / pytorch_model.bin, read offline), or a
  hub name handed to transformers (needs network).
- `save_hf(model, folder)` writes a folder `GPT2LMHeadModel.from_pretrained` loads; the round
  trip ours -> folder -> `from_hf` is exact.
- `patch_hf_gpt2(hf_model)` makes a transformers GPT-2 run our kernels in place: its layer norms,
  its core attention (registered through transformers' AttentionInterface, so transformers keeps
  its own projections and KV cache), and its MLP up-projection + GELU. `unpatch_hf_gpt2` undoes it.

GPT-2's Conv1D stores weights as (in_features, out_features); nn.Linear, and so our model, as
(out, in): every Conv1D weight is transposed on the way in and out. transformers is imported
only when one of these functions needs it.
"""
from __future__ import annotations

import json
import math
import os
import warnings
import weakref
from pathlib import Path

import torch
import torch.nn as nn

import kernels

from .model import GPT, GPTConfig, check_backend

# patch_hf_gpt2 is tested on these transformers releases; setup.py's "hf" extra pins the same range.
SUPPORTED_TRANSFORMERS = (5, 6)  # >= 5.0, < 6
TESTED_TRANSFORMERS = ("5.0.0", "5.17.0", "5.24.0")

# GPT-2 activation names -> F.gelu's `approximate`. gelu_fast is the same tanh formula, regrouped.
_GELU = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_python_tanh": "tanh", "gelu_fast": "tanh",
         "gelu": "none", "gelu_python": "none"}
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_PER_LAYER = ("ln_1.weight", "ln_1.bias", "attn.c_attn.bias", "attn.c_proj.bias", "ln_2.weight", "ln_2.bias",
              "mlp.c_fc.bias", "mlp.c_proj.bias") + _CONV1D
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers in old checkpoints
_EPS = 1e-5  # our LayerNorm's eps (GPT-2's layer_norm_epsilon)


# ----------------------------------------------------------------------------- load / save

def from_hf(model_or_path, backend: str = "auto") -> GPT:
    """Our GPT with the weights of a transformers GPT-2.

    `model_or_path`: a `GPT2LMHeadModel` / `GPT2Model` instance (the result lands on its device
    and dtype), a local folder with config.json and model.safetensors, sharded safetensors or
    pytorch_model.bin (read offline; result in float32 on the CPU), or a hub name such as "gpt2",
    which is passed to transformers and needs network. Dropout is 0 in the result (inference).
    Raises ValueError for a GPT-2 variant our model cannot represent.
    """
    check_backend(backend)
    if isinstance(model_or_path, (str, os.PathLike)):
        path = Path(model_or_path).expanduser()
        if path.is_dir():
            config = _read_config(path)
            _our_config(config, backend)  # a config we cannot represent fails before the weights load
            state = _read_weights(path)
            device, dtype = torch.device("cpu"), torch.float32
        elif _looks_like_path(str(model_or_path)):
            raise FileNotFoundError(f"no GPT-2 checkpoint folder at {path} (expected a folder with config.json "
                                    f"and model.safetensors or pytorch_model.bin)")
        else:
            return from_hf(_from_hub(str(model_or_path)), backend)
    else:
        hf = _gpt2_base(model_or_path, "from_hf")
        config = model_or_path.config.to_dict()
        state = model_or_path.state_dict()
        param = next(hf.parameters())
        device, dtype = param.device, param.dtype
    cfg = _our_config(config, backend)
    state = _to_our_state(state, cfg.n_layer)
    with torch.device(device):  # build in place, no CPU detour for a GPU model
        model = GPT(cfg)
    model.load_state_dict(state, strict=True)
    return model.to(dtype)


def save_hf(model: GPT, folder, safe_serialization: bool = True) -> Path:
    """Write `model` as a transformers GPT-2 folder (config.json + model.safetensors, or
    pytorch_model.bin with safe_serialization=False): `GPT2LMHeadModel.from_pretrained(folder)`
    and `from_hf(folder)` load it. Returns the folder."""
    if not isinstance(model, GPT):
        raise TypeError(f"save_hf expects a gpt.GPT, got {type(model).__name__}")
    cfg = model.config
    if not cfg.bias:
        raise ValueError("GPT-2 has biases everywhere: a GPT built with bias=False cannot be saved as GPT-2")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    special = 50256 if cfg.vocab_size == 50257 else None  # GPT-2's <|endoftext|>
    config = {
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
        "vocab_size": cfg.vocab_size, "n_positions": cfg.block_size, "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": None, "activation_function": "gelu_new",
        "layer_norm_epsilon": _EPS, "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout, "initializer_range": 0.02, "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True, "bos_token_id": special, "eos_token_id": special, "use_cache": True,
        "torch_dtype": str(model.lm_head.weight.dtype).removeprefix("torch."),
    }
    if cfg.vocab_size == 256:
        config["gptk_tokenizer"] = "bytes"  # lets `python -m gpt sample` pick the byte tokenizer
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    state = _to_hf_state(model)
    if safe_serialization:
        from safetensors.torch import save_file
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(state, folder / "pytorch_model.bin")
    return folder


def _looks_like_path(name: str) -> bool:
    # hub names are "gpt2" or "owner/name"; anything else is meant as a local path
    return (name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep in name.replace("/", "")
            or name.endswith("/"))


def _from_hub(name: str):
    try:
        from transformers import GPT2LMHeadModel
    except ImportError as e:
        raise RuntimeError(f"loading {name!r} by name needs transformers ({e}); pip install transformers, "
                           f"or pass a local checkpoint folder") from None
    try:
        return GPT2LMHeadModel.from_pretrained(name)
    except Exception as e:  # noqa: BLE001 - hub/network errors come in many types; one line says it
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RuntimeError(f"could not load {name!r} through transformers: {first} -- without network, "
                           f"pass a local folder with config.json and model.safetensors "
                           f"(or pytorch_model.bin)") from None


def _read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json, so it is not a transformers checkpoint folder")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def _read_weights(folder: Path) -> dict:
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file
        return load_file(str(folder / "model.safetensors"))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        from safetensors.torch import load_file
        state = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            state.update(load_file(str(folder / shard)))
        return state
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{folder} has no weights: expected model.safetensors, "
                            f"model.safetensors.index.json or pytorch_model.bin")


def _our_config(config: dict, backend: str) -> GPTConfig:
    """GPTConfig for a GPT-2 config dict; ValueError naming the field for what we cannot represent."""
    def get(key, default=None):
        return config.get(key, default)

    if get("model_type", "gpt2") != "gpt2":
        raise ValueError(f"not a GPT-2 checkpoint: model_type is {get('model_type')!r}, expected 'gpt2'")
    n_embd = get("n_embd", get("hidden_size"))
    rules = [
        (_GELU.get(get("activation_function", "gelu_new")) == "tanh",
         f"activation_function={get('activation_function')!r}: our MLP is the tanh GELU "
         f"(gelu_new / gelu_pytorch_tanh)"),
        (get("n_inner") in (None, 4 * n_embd), f"n_inner={get('n_inner')}: our MLP is 4 x n_embd = {4 * n_embd}"),
        (math.isclose(get("layer_norm_epsilon", _EPS), _EPS, rel_tol=1e-6),
         f"layer_norm_epsilon={get('layer_norm_epsilon')}: our LayerNorm uses {_EPS}"),
        (get("scale_attn_weights", True), "scale_attn_weights=False: our attention scales by 1/sqrt(head_dim)"),
        (not get("scale_attn_by_inverse_layer_idx", False),
         "scale_attn_by_inverse_layer_idx=True: our attention does not scale by layer"),
        (not get("add_cross_attention", False), "add_cross_attention=True: our GPT has no cross-attention"),
        (get("tie_word_embeddings", True), "tie_word_embeddings=False: our unembedding is tied to wte"),
    ]
    for ok, why in rules:
        if not ok:
            raise ValueError(f"this GPT-2 cannot be represented by gpt.GPT: {why}")
    return GPTConfig(vocab_size=get("vocab_size"), block_size=get("n_positions", get("max_position_embeddings")),
                     n_layer=get("n_layer", get("num_hidden_layers")),
                     n_head=get("n_head", get("num_attention_heads")), n_embd=n_embd, dropout=0.0, bias=True,
                     backend=backend)


def _to_our_state(state: dict, n_layer: int) -> dict:
    """transformers GPT-2 keys (with or without the "transformer." prefix) -> our state dict."""
    src = {}
    for key, value in state.items():
        if key.endswith(_IGNORED_SUFFIXES):
            continue
        src[key.removeprefix("transformer.")] = value
    wte = src.get("wte.weight")
    lm_head = src.pop("lm_head.weight", None)
    if wte is not None and lm_head is not None and not torch.equal(lm_head.to(wte.device), wte):
        raise ValueError("lm_head.weight differs from wte.weight: the unembedding is not tied, "
                         "which gpt.GPT cannot represent")
    expected = ["wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"]
    expected += [f"h.{i}.{name}" for i in range(n_layer) for name in _PER_LAYER]
    missing = [k for k in expected if k not in src]
    unexpected = sorted(set(src) - set(expected))
    if missing or unexpected:
        raise ValueError(f"the GPT-2 weights do not match its config: missing {missing[:4]}"
                         f"{' ...' if len(missing) > 4 else ''}, unexpected {unexpected[:4]}"
                         f"{' ...' if len(unexpected) > 4 else ''}")
    ours = {}
    for key in expected:
        value = src[key]
        ours["transformer." + key] = value.t() if key.endswith(_CONV1D) else value
    ours["lm_head.weight"] = src["wte.weight"]  # tied: the same tensor under both names
    return ours


def _to_hf_state(model: GPT) -> dict:
    state = {}
    for key, value in model.state_dict().items():
        if key == "lm_head.weight":
            continue  # tied to transformer.wte.weight; transformers re-ties it on load
        value = value.detach()
        state[key] = (value.t() if key.endswith(_CONV1D) else value).contiguous().cpu()
    return state


# ----------------------------------------------------------------------------- patch

_IMPL = "gptk"  # our name in transformers' AttentionInterface / AttentionMaskInterface


def patch_hf_gpt2(hf_model, backend: str = "auto", *, layer_norm: bool = True, attention: bool = True,
                  mlp: bool = True):
    """Make a transformers GPT-2 run our kernels, in place; returns `hf_model`.

    Swaps in `kernels.layer_norm` for every LayerNorm, `kernels.attention` for the core attention
    (transformers keeps its projections, masks and KV cache: `generate` works as before) and
    `kernels.gelu_linear` for the MLP's up-projection + GELU. The weights stay the same
    Parameters, so optimizers, state dicts and `save_pretrained` are unaffected. Undo with
    `unpatch_hf_gpt2`; calling this again switches the backend.

    Attention falls back to transformers' SDPA, with a one-time warning, for a mask our kernel
    cannot express (padded batches, static caches); attention dropout in training mode raises.
    Works on GPT2LMHeadModel, GPT2Model and the other GPT-2 heads; anything else is a TypeError.
    """
    base = _gpt2_base(hf_model, "patch_hf_gpt2")
    _check_transformers_version()
    ops = [op for op, on in (("layer_norm", layer_norm), ("attention", attention), ("gelu_linear", mlp)) if on]
    if backend not in kernels.BACKENDS + ("auto",):
        raise ValueError(f"backend must be one of {kernels.BACKENDS + ('auto',)}, got {backend!r}")
    if backend != "auto" and kernels.missing_ops(backend, ops):
        raise RuntimeError(f"backend={backend!r} does not implement "
                           f"{', '.join(kernels.missing_ops(backend, ops))} yet; use backend='torch' or 'auto'")
    config = base.config
    approximate = _GELU.get(config.activation_function)
    if mlp and approximate is None:
        raise ValueError(f"patch_hf_gpt2: the MLP activation {config.activation_function!r} is not a GELU our "
                         f"gelu_linear computes; pass mlp=False to leave the MLP as it is")
    if getattr(hf_model, "_gptk_patch", None) is not None:
        unpatch_hf_gpt2(hf_model)
    from transformers.models.gpt2.modeling_gpt2 import GPT2MLP

    state = {"backend": backend, "attn_implementation": None}
    for module in base.modules():
        if layer_norm and type(module) is nn.LayerNorm and len(module.normalized_shape) == 1:
            module.__class__ = GptkLayerNorm
            module.gptk_backend = backend
        elif mlp and type(module) is GPT2MLP:
            module.__class__ = _gptk_mlp_class()
            module.gptk_backend, module.gptk_approximate = backend, approximate
    if attention:
        _register_attention()
        state["attn_implementation"] = config._attn_implementation
        for module in base.modules():
            if hasattr(module, "c_attn") and hasattr(module, "scaling"):  # GPT2Attention
                module.gptk_backend = backend
        config._attn_implementation = _IMPL
    hf_model._gptk_patch = state
    return hf_model


def unpatch_hf_gpt2(hf_model):
    """Undo `patch_hf_gpt2`: the original module classes and attention implementation come back
    (the weights were never touched). Returns `hf_model`; a no-op on an unpatched model."""
    state = getattr(hf_model, "_gptk_patch", None)
    if state is None:
        return hf_model
    base = _gpt2_base(hf_model, "unpatch_hf_gpt2")
    for module in base.modules():
        original = getattr(type(module), "_gptk_original", None)
        if original is not None:
            module.__class__ = original
        for attr in ("gptk_backend", "gptk_approximate"):
            module.__dict__.pop(attr, None)
    if state["attn_implementation"] is not None:
        base.config._attn_implementation = state["attn_implementation"]
    del hf_model._gptk_patch
    return hf_model


def is_patched(hf_model) -> bool:
    return getattr(hf_model, "_gptk_patch", None) is not None


def _gpt2_base(hf_model, caller: str):
    """The GPT2Model inside a transformers GPT-2 (it is itself for GPT2Model); TypeError otherwise."""
    try:
        from transformers.models.gpt2.modeling_gpt2 import GPT2Model, GPT2PreTrainedModel
    except ImportError as e:
        raise RuntimeError(f"{caller} needs transformers ({e}); pip install 'transformers>=5,<6'") from None
    if isinstance(hf_model, GPT2Model):
        return hf_model
    if isinstance(hf_model, GPT2PreTrainedModel) and isinstance(getattr(hf_model, "transformer", None), GPT2Model):
        return hf_model.transformer
    raise TypeError(f"{caller} supports transformers GPT-2 models (GPT2LMHeadModel, GPT2Model, ...); "
                    f"got {type(hf_model).__name__}")


def _check_transformers_version():
    import transformers
    try:
        major = int(transformers.__version__.split(".")[0])
    except ValueError:
        major = -1
    lo, hi = SUPPORTED_TRANSFORMERS
    if not lo <= major < hi:
        raise RuntimeError(f"patch_hf_gpt2 supports transformers>={lo}.0,<{hi} (tested "
                           f"{', '.join(TESTED_TRANSFORMERS)}); found {transformers.__version__}")


class GptkLayerNorm(nn.LayerNorm):
    """nn.LayerNorm running kernels.layer_norm (same parameters, same state dict)."""

    _gptk_original = nn.LayerNorm

    def forward(self, x):
        weight, bias = self.weight, self.bias
        if weight is not None and weight.dtype != x.dtype:  # autocast / half activations, fp32 params
            weight = weight.to(x.dtype)
            bias = bias.to(x.dtype) if bias is not None else None
        return kernels.layer_norm(x, weight, bias, self.eps, backend=self.gptk_backend)


_MLP_CLASS = []


def _gptk_mlp_class():
    """GPT2MLP with c_fc + GELU fused into kernels.gelu_linear (built on first use: it subclasses a
    transformers class, and `import gpt` must not import transformers)."""
    if not _MLP_CLASS:
        from transformers.models.gpt2.modeling_gpt2 import GPT2MLP

        def forward(self, hidden_states):
            w, b = self.c_fc.weight.t(), self.c_fc.bias  # Conv1D (in, out) -> Linear (out, in), a view
            x = hidden_states
            if torch.is_autocast_enabled(x.device.type):  # our op sits below autocast: cast like it would
                dtype = torch.get_autocast_dtype(x.device.type)
                x, w, b = x.to(dtype), w.to(dtype), b.to(dtype)
            elif w.dtype != x.dtype:
                w, b = w.to(x.dtype), b.to(x.dtype)
            h = kernels.gelu_linear(x, w, b, approximate=self.gptk_approximate, backend=self.gptk_backend)
            return self.dropout(self.c_proj(h))

        cls = type("GptkGPT2MLP", (GPT2MLP,), {"forward": forward, "_gptk_original": GPT2MLP,
                                               "__module__": __name__, "__doc__": _gptk_mlp_class.__doc__})
        _MLP_CLASS.append(cls)
    return _MLP_CLASS[0]


def __getattr__(name):  # lets pickle find the lazily built class
    if name == "GptkGPT2MLP":
        return _gptk_mlp_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _register_attention():
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask
    if _IMPL not in ALL_MASK_ATTENTION_FUNCTIONS:
        # sdpa's masks: None when plain causal attention is exact, else a boolean (B, 1, Tq, Tk) mask
        AttentionMaskInterface.register(_IMPL, sdpa_mask)
    AttentionInterface.register(_IMPL, _attention)


_warned: set = set()
_last_mask: list = [None, False]  # (weakref to the last mask seen, whether it is plain causal)


def _attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """transformers' attention-function signature: q, k, v (B, H, T, D) after the cache update;
    returns ((B, Tq, H, D), None)."""
    if dropout > 0:
        raise RuntimeError(f"gptk attention has no dropout, but this GPT-2 is training with attention dropout "
                           f"{dropout}: set it to 0 (for block in model.transformer.h: "
                           f"block.attn.attn_dropout.p = 0.0) or patch with attention=False")
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    tq, tk = query.shape[2], key.shape[2]
    if attention_mask is None:
        # sdpa semantics: a skipped mask means causal prefill (top-left aligned: an empty static
        # cache may hold more, unused, key slots than queries) or one query seeing every key
        causal = causal and tq > 1
        if causal and tk > tq:
            key, value = key[:, :, :tq], value[:, :, :tq]
    elif not (causal and _is_end_aligned_causal(attention_mask, tq, tk)):
        return _fallback(module, query, key, value, attention_mask, scaling, is_causal, kwargs)
    if key.dtype != query.dtype:  # a cache filled outside autocast
        key, value = key.to(query.dtype), value.to(query.dtype)
    out = kernels.attention(query, key, value, causal=causal, scale=scaling,
                            backend=getattr(module, "gptk_backend", "auto"))
    return out.transpose(1, 2), None


def _is_end_aligned_causal(mask, tq, tk) -> bool:
    """Whether a boolean (B, 1, Tq, Tk) mask is exactly causal with queries at the end of the keys
    (no padding): then our kernel computes it. Decided once per mask tensor, not per layer."""
    ref = _last_mask[0]
    if ref is not None and ref() is mask:
        return _last_mask[1]
    ok = (mask.dtype == torch.bool and mask.dim() == 4 and tq <= tk and mask.shape[-2:] == (tq, tk)
          and bool((mask == torch.ones(tq, tk, dtype=torch.bool, device=mask.device).tril(tk - tq)).all()))
    _last_mask[0], _last_mask[1] = weakref.ref(mask), ok
    return ok


def _fallback(module, query, key, value, attention_mask, scaling, is_causal, kwargs):
    if "mask" not in _warned:
        _warned.add("mask")
        warnings.warn("patch_hf_gpt2: this attention mask (padding or a static cache) is not plain causal, "
                      "which gptk's attention kernel cannot express; those calls run transformers' SDPA "
                      "attention instead", stacklevel=3)
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=scaling,
                                  is_causal=is_causal, **kwargs)
