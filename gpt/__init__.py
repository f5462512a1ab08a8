"""GPT-2 on fused kernels: `GPTConfig`, `GPT` (see model.py), transformers interop (hf.py) and
the `python -m gpt` job. transformers is imported only when an interop function is called."""
from .hf import from_hf, is_patched, patch_hf_gpt2, save_hf, unpatch_hf_gpt2
from .model import GPT, GPTConfig, KVCache, MODEL_OPS, check_backend

__all__ = ["GPT", "GPTConfig", "KVCache", "MODEL_OPS", "check_backend", "from_hf", "save_hf", "patch_hf_gpt2",
           "unpatch_hf_gpt2", "is_patched"]
