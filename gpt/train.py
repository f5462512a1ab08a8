"""Training and sampling loops behind `python -m gpt` (kept out of model.py)."""
from __future__ import annotations

import contextlib
import math
import sys
import time
from pathlib import Path

import torch

from .data import ByteTokenizer, batch, default_corpus, read_texts, split_ids
from .model import GPT, GPTConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is available")
    return device


def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def load_tokenizer(path: str | None):
    if path is None:
        return ByteTokenizer()
    from .hf_tokenizer import HFTokenizer  # GPT-2 BPE from a local folder, via transformers
    return HFTokenizer(path)


@torch.no_grad()
def evaluate(model, data, args, generator, device, dtype) -> float:
    model.eval()
    losses = []
    for _ in range(args.eval_batches):
        x, y = batch(data, args.batch_size, args.block_size, generator, device)
        with autocast(device, dtype):
            losses.append(model(x, y)[1].item())
    model.train()
    return sum(losses) / len(losses)


def train(args) -> dict:
    torch.manual_seed(args.seed)
    device, dtype = pick_device(args.device), DTYPES[args.dtype]
    tokenizer = load_tokenizer(args.tokenizer)
    if args.text:
        corpus_name, text = ", ".join(args.text), read_texts(args.text)
    else:
        corpus_name, text = default_corpus()
    train_data, val_data = split_ids(tokenizer.encode(text), args.val_fraction)

    out_dir = Path(args.out_dir)
    ckpt_path = out_dir / "ckpt.pt"
    start_iter = 0
    if args.resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        config = GPTConfig(**ckpt["config"])
        config.backend = args.backend
    else:
        config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=args.block_size, n_layer=args.n_layer,
                           n_head=args.n_head, n_embd=args.n_embd, dropout=args.dropout, bias=True,
                           backend=args.backend)
    model = GPT(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    if args.resume:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start_iter = ckpt["iter"]
    print(f"training {model.num_params() / 1e6:.2f}M parameters on {corpus_name} "
          f"({len(train_data):,} train / {len(val_data):,} val tokens), device={device}, "
          f"backend={config.backend}, dtype={args.dtype}", file=sys.stderr)

    generator = torch.Generator().manual_seed(args.seed + start_iter)
    eval_generator = torch.Generator().manual_seed(1234)
    from tqdm import tqdm
    bar = tqdm(range(start_iter, args.iters), initial=start_iter, total=args.iters, desc="train",
               disable=args.quiet, file=sys.stderr, dynamic_ncols=True)
    history = {"train": [], "val": []}
    tokens_per_iter = args.batch_size * args.block_size
    t0 = time.perf_counter()
    for it in bar:
        lr = _lr(it, args)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = batch(train_data, args.batch_size, args.block_size, generator, device)
        with autocast(device, dtype):
            _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        history["train"].append((it, loss.item()))
        elapsed = time.perf_counter() - t0
        bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{(it - start_iter + 1) * tokens_per_iter / elapsed:,.0f}")
        if (it + 1) % args.eval_every == 0 or it + 1 == args.iters:
            val = evaluate(model, val_data, args, eval_generator, device, dtype)
            history["val"].append((it + 1, val))
            bar.write(f"iter {it + 1}: train loss {loss.item():.4f}, val loss {val:.4f}", file=sys.stderr)
            out_dir.mkdir(parents=True, exist_ok=True)
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "iter": it + 1,
                        "config": {**config.__dict__, "backend": "auto"}, "tokenizer": args.tokenizer},
                       ckpt_path)
    bar.close()
    if args.sample_tokens > 0:
        print(f"\n--- sample (temperature {args.temperature}) ---", file=sys.stderr)
        generate_text(model, tokenizer, args.prompt, args.sample_tokens, args.temperature, args.top_k,
                      args.seed, device)
    return {"model": model, "history": history, "checkpoint": ckpt_path}


def _lr(it: int, args) -> float:
    """Linear warmup, then cosine decay to a tenth."""
    warmup = max(args.iters // 20, 1)
    if it < warmup:
        return args.lr * (it + 1) / warmup
    progress = (it - warmup) / max(args.iters - warmup, 1)
    return args.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def generate_text(model, tokenizer, prompt, max_tokens, temperature, top_k, seed, device, stream=sys.stdout):
    """Stream tokens to `stream` as they are sampled (one cached decode step each)."""
    ids = tokenizer.encode(prompt) or tokenizer.encode("\n")
    if len(ids) > model.config.block_size:
        raise ValueError(f"the prompt is {len(ids)} tokens, longer than the model's context "
                         f"({model.config.block_size})")
    generator = torch.Generator(device=device).manual_seed(seed)
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    model.eval()
    stream.write(prompt)
    pending = []
    for token in model.stream(idx, max_tokens, temperature, top_k, generator=generator):
        pending.append(token.item())
        text = tokenizer.decode(pending)
        if "\ufffd" not in text:  # wait for a whole UTF-8 character
            stream.write(text)
            stream.flush()
            pending = []
    stream.write(tokenizer.decode(pending) + "\n")
    stream.flush()


def load_checkpoint(path: str, backend: str, device) -> tuple[GPT, object]:
    path = Path(path)
    if path.is_dir():
        if (path / "ckpt.pt").is_file():
            path = path / "ckpt.pt"
        elif (path / "config.json").is_file():
            from .hf import from_hf  # a transformers GPT-2 folder
            model = from_hf(str(path), backend=backend).to(device)
            return model, load_tokenizer(str(path))
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    config = GPTConfig(**{**ckpt["config"], "backend": backend})
    model = GPT(config)
    model.load_state_dict(ckpt["model"])
    return model.to(device), load_tokenizer(ckpt.get("tokenizer"))


def sample(args):
    device = pick_device(args.device)
    model, tokenizer = load_checkpoint(args.checkpoint, args.backend, device)
    if args.dtype != "float32":
        model = model.to(DTYPES[args.dtype])
    generate_text(model, tokenizer, args.prompt, args.max_tokens, args.temperature, args.top_k, args.seed, device)

