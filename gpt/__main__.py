"""python -m gpt: train a small GPT on text offline and sample from it.

  python -m gpt                     train on the default corpus (a few minutes on a CPU), then sample
  python -m gpt train --text a.txt  train on your own text file(s)
  python -m gpt sample --checkpoint out/gpt   sample from a checkpoint (ours, or a GPT-2 folder)
"""
from __future__ import annotations

import argparse
import sys

import kernels


def _common(p):
    p.add_argument("--backend", default="auto", choices=kernels.BACKENDS + ("auto",),
                   help="kernel backend for every layer (default: auto)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="compute dtype (autocast for training)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature; 0 = greedy")
    p.add_argument("--top-k", type=int, default=None, help="sample only from the k most likely tokens")
    p.add_argument("--prompt", default="The ", help="text the sample continues")


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m gpt", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    t = sub.add_parser("train", help="train on text files (default when no command is given)",
                       description="Train a GPT on text with a byte-level (or local GPT-2 BPE) tokenizer, "
                                   "evaluate on held-out text, checkpoint, then print a sample.")
    t.add_argument("--text", nargs="*", default=None, help="text file(s); default: CPython's pydoc topics")
    t.add_argument("--tokenizer", default=None, help="local GPT-2 tokenizer folder (default: bytes)")
    t.add_argument("--out-dir", default="out/gpt", help="where ckpt.pt is written (default: out/gpt)")
    t.add_argument("--resume", action="store_true", help="continue from --out-dir/ckpt.pt")
    t.add_argument("--iters", type=int, default=600)
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--block-size", type=int, default=128)
    t.add_argument("--n-layer", type=int, default=4)
    t.add_argument("--n-head", type=int, default=4)
    t.add_argument("--n-embd", type=int, default=128)
    t.add_argument("--dropout", type=float, default=0.0)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--eval-every", type=int, default=200)
    t.add_argument("--eval-batches", type=int, default=10)
    t.add_argument("--val-fraction", type=float, default=0.1)
    t.add_argument("--sample-tokens", type=int, default=300, help="tokens to sample after training (0: none)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    _common(t)
    s = sub.add_parser("sample", help="sample from a checkpoint",
                       description="Sample from our checkpoint (ckpt.pt or its folder) or a local GPT-2 folder.")
    s.add_argument("--checkpoint", default="out/gpt", help="ckpt.pt, its folder, or a GPT-2 folder")
    s.add_argument("--max-tokens", type=int, default=200)
    _common(s)
    return parser


def _validate(args):
    import math
    if not math.isfinite(args.temperature) or args.temperature < 0:
        raise ValueError(f"--temperature must be >= 0 (0 = greedy), got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    if args.command == "train":
        for name in ("iters", "batch_size", "block_size", "n_layer", "n_head", "n_embd", "eval_every",
                     "eval_batches"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")


def main(argv=None):
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["train", *argv]
    args = parser.parse_args(argv)
    from . import train as jobs
    try:
        _validate(args)
        if args.command == "train":
            jobs.train(args)
        else:
            jobs.sample(args)
    except (ValueError, FileNotFoundError, RuntimeError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
