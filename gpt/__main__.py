"""python -m gpt: train a small GPT on text offline and sample from it.

  python -m gpt                     train on the default corpus (a few minutes on a CPU), then sample
  python -m gpt train --text a.txt  train on your own text file(s)
  python -m gpt sample --checkpoint out/gpt   sample from a checkpoint (ours, or a GPT-2 folder)
  python -m gpt export --out out/gpt-hf       write a checkpoint as a transformers GPT-2 folder
"""
from __future__ import annotations

import argparse
import sys

import kernels


def _common(p):
    p.add_argument("--backend", default="auto", choices=kernels.BACKENDS + ("auto",),
                   help="kernel backend for every layer (default: %(default)s)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="compute dtype; training supports float32 only for now")
    p.add_argument("--seed", type=int, default=1337, help="seed for init, data order and sampling")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for PyTorch (default 0: the cores other processes leave idle, at least 1)")
    p.add_argument("--temperature", type=float, default=0.7,
                   help="sampling temperature; 0 = greedy (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=None, help="sample only from the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None,
                   help="then only from the most likely tokens whose mass reaches p, in (0, 1] (nucleus sampling)")
    p.add_argument("--prompt", default="The ", help="text the sample continues")


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m gpt", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    t = sub.add_parser("train", help="train on text files (default when no command is given)",
                       description="Train a GPT on text with a byte-level (or local GPT-2 BPE) tokenizer, "
                                   "evaluate on held-out text, checkpoint, then print a sample.")
    t.add_argument("--text", nargs="*", default=None, help="text file(s) (default: CPython's pydoc topics)")
    t.add_argument("--tokenizer", default=None, help="local GPT-2 tokenizer folder (default: UTF-8 bytes)")
    t.add_argument("--out-dir", default="out/gpt", help="where ckpt.pt is written (default: %(default)s)")
    t.add_argument("--resume", action="store_true", help="continue from --out-dir/ckpt.pt up to --iters")
    D = " (default: %(default)s)"
    t.add_argument("--iters", type=int, default=1000, help="optimizer steps" + D)
    t.add_argument("--batch-size", type=int, default=16, help="sequences per step" + D)
    t.add_argument("--block-size", type=int, default=64, help="context length in tokens" + D)
    t.add_argument("--n-layer", type=int, default=4, help="transformer blocks" + D)
    t.add_argument("--n-head", type=int, default=4, help="attention heads" + D)
    t.add_argument("--n-embd", type=int, default=128, help="model width" + D)
    t.add_argument("--dropout", type=float, default=0.0, help="dropout probability" + D)
    t.add_argument("--lr", type=float, default=6e-3, help="peak learning rate (warmup, cosine to a tenth)" + D)
    t.add_argument("--eval-every", type=int, default=250, help="steps between held-out evals and checkpoints" + D)
    t.add_argument("--eval-batches", type=int, default=10, help="batches per held-out eval" + D)
    t.add_argument("--val-fraction", type=float, default=0.1, help="held-out tail of the text" + D)
    t.add_argument("--sample-tokens", type=int, default=300, help="tokens sampled after training, 0: none" + D)
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    _common(t)
    s = sub.add_parser("sample", help="sample from a checkpoint",
                       description="Sample from our checkpoint (ckpt.pt or its folder) or a local GPT-2 folder.")
    s.add_argument("--checkpoint", default="out/gpt",
                   help="ckpt.pt, its folder, or a transformers GPT-2 folder (default: %(default)s)")
    s.add_argument("--max-tokens", type=int, default=200, help="tokens to generate (default: %(default)s)")
    _common(s)
    e = sub.add_parser("export", help="write a checkpoint as a transformers GPT-2 folder",
                       description="Write our checkpoint as a folder transformers' GPT2LMHeadModel.from_pretrained "
                                   "loads (config.json, model.safetensors, and the tokenizer when it is BPE).")
    e.add_argument("--checkpoint", default="out/gpt", help="ckpt.pt or its folder (default: %(default)s)")
    e.add_argument("--out", required=True, help="folder to write")
    return parser


def _validate(args):
    import math
    if args.command == "export":
        return
    if not math.isfinite(args.temperature) or args.temperature < 0:
        raise ValueError(f"--temperature must be >= 0 (0 = greedy), got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.command == "train":
        for name in ("iters", "batch_size", "block_size", "n_layer", "n_head", "n_embd", "eval_every",
                     "eval_batches"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
        if not 0 < args.val_fraction < 1:
            raise ValueError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
        if not args.lr > 0:
            raise ValueError(f"--lr must be > 0, got {args.lr}")
        if args.sample_tokens < 0:
            raise ValueError(f"--sample-tokens must be >= 0, got {args.sample_tokens}")
    if args.command == "sample" and args.max_tokens < 0:
        raise ValueError(f"--max-tokens must be >= 0, got {args.max_tokens}")


def main(argv=None):
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["train", *argv]
    args = parser.parse_args(argv)
    from . import train as jobs
    try:
        _validate(args)
        {"train": jobs.train, "sample": jobs.sample, "export": jobs.export}[args.command](args)
    except (ValueError, OSError, RuntimeError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
