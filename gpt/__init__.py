"""GPT-2 on fused kernels: `GPTConfig`, `GPT` (see model.py) and the `python -m gpt` job."""
from .model import GPT, GPTConfig, KVCache, MODEL_OPS, check_backend

__all__ = ["GPT", "GPTConfig", "KVCache", "MODEL_OPS", "check_backend"]
