"""GPT-2 BPE (or any transformers tokenizer) from a LOCAL folder, with ByteTokenizer's interface.

Nothing is downloaded: the folder must hold tokenizer.json, or vocab.json + merges.txt.
"""
from __future__ import annotations

import json
from pathlib import Path

from .data import ByteTokenizer

_FILES = ("tokenizer.json", "vocab.json")


class HFTokenizer:
    """encode(text) -> ids, decode(ids) -> text, vocab_size, name: what the train/sample loops use."""

    def __init__(self, folder):
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"tokenizer folder not found: {folder}")
        if not any((folder / name).is_file() for name in _FILES):
            raise FileNotFoundError(f"{folder} holds no tokenizer (expected tokenizer.json, or vocab.json "
                                    f"and merges.txt)")
        try:
            from transformers import AutoTokenizer
        except ImportError as e:
            raise RuntimeError(f"a tokenizer folder needs transformers ({e}); pip install transformers") from None
        try:
            self._tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except Exception as e:  # noqa: BLE001 - transformers raises many types for a bad folder
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"could not load the tokenizer in {folder}: {first}") from None
        self._tok.model_max_length = 1 << 60  # we cut windows ourselves; silences the length warning
        self.folder = str(folder.resolve())
        self.vocab_size = len(self._tok)
        self.name = f"{type(self._tok).__name__} ({folder.name})"

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False)

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids], clean_up_tokenization_spaces=False)


def tokenizer_for_checkpoint_folder(folder):
    """The tokenizer stored beside a transformers checkpoint; a folder written by `save_hf` from a
    byte-level model has none and says so in config.json."""
    folder = Path(folder)
    if any((folder / name).is_file() for name in _FILES):
        return HFTokenizer(folder)
    config = json.loads((folder / "config.json").read_text())
    if config.get("gptk_tokenizer") == "bytes" or config.get("vocab_size") == ByteTokenizer.vocab_size:
        return ByteTokenizer()
    raise FileNotFoundError(f"{folder} holds no tokenizer files (tokenizer.json, or vocab.json and merges.txt); "
                            f"copy the model's tokenizer into it")
