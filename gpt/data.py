"""Text in, token ids out, offline: a byte-level tokenizer and the default corpus."""
from __future__ import annotations

from pathlib import Path

import torch


class ByteTokenizer:
    """UTF-8 bytes as tokens (vocab 256): needs no files, round-trips any text."""

    vocab_size = 256
    name = "bytes"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def default_corpus() -> tuple[str, str]:
    """(name, text): English prose that ships with every CPython (pydoc's topic help),
    so the main job trains with no download."""
    from pydoc_data.topics import topics
    return "CPython's pydoc topics", "\n\n".join(topics[k] for k in sorted(topics))


def read_texts(paths) -> str:
    texts = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise FileNotFoundError(f"text file not found: {p}")
        texts.append(path.read_text(encoding="utf-8", errors="replace"))
    return "\n\n".join(texts)


def split_ids(ids: list[int], val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    data = torch.tensor(ids, dtype=torch.long)
    n_val = max(int(len(data) * val_fraction), 1)
    return data[:-n_val], data[-n_val:]


def batch(data: torch.Tensor, batch_size: int, block_size: int, generator: torch.Generator, device):
    """Random (x, y) windows of block_size tokens; y is x shifted by one."""
    if len(data) <= block_size + 1:
        raise ValueError(f"the text has {len(data)} tokens, fewer than block_size + 2 = {block_size + 2}; "
                         f"use more text or a smaller --block-size")
    ix = torch.randint(len(data) - block_size - 1, (batch_size,), generator=generator)
    x = torch.stack([data[i:i + block_size] for i in ix.tolist()])
    y = torch.stack([data[i + 1:i + 1 + block_size] for i in ix.tolist()])
    return x.to(device), y.to(device)
