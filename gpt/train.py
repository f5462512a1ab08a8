"""Training and sampling loops behind `python -m gpt` (kept out of model.py)."""
from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
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


def set_threads(requested: int) -> int:
    """PyTorch's CPU thread count. 0 picks the cores the 1-minute load average leaves idle: on a
    busy machine, OpenMP threads waiting on descheduled siblings make small models several times
    slower than one thread."""
    if requested > 0:
        torch.set_num_threads(requested)
        return requested
    cores = torch.get_num_threads()
    try:
        busy = round(os.getloadavg()[0])
    except OSError:  # not available on this platform
        busy = 0
    threads = max(1, min(cores, (os.cpu_count() or cores) - busy))
    torch.set_num_threads(threads)
    return threads


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
def evaluate(model, data, args, device, dtype) -> float:
    """Mean loss on the same held-out windows every time, so successive figures compare."""
    generator = torch.Generator().manual_seed(1234)
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
    threads = set_threads(args.threads)
    device, dtype = pick_device(args.device), DTYPES[args.dtype]
    if dtype == torch.float16 and device.type == "cpu":
        raise ValueError("--dtype float16 autocast needs a GPU; on the CPU use bfloat16 or float32")
    out_dir = Path(args.out_dir)
    ckpt_path = out_dir / "ckpt.pt"
    ckpt = _load_for_resume(ckpt_path, args) if args.resume else None
    tokenizer = load_tokenizer(args.tokenizer)
    if args.text:
        corpus_name, text = ", ".join(args.text), read_texts(args.text)
    else:
        corpus_name, text = default_corpus()
    train_data, val_data = split_ids(tokenizer.encode(text), args.val_fraction)
    tokenizer_path = getattr(tokenizer, "folder", None)  # absolute, so sampling works from any directory

    start_iter = 0
    if ckpt is not None:
        config = GPTConfig(**{**ckpt["config"], "backend": args.backend})
    else:
        config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=args.block_size, n_layer=args.n_layer,
                           n_head=args.n_head, n_embd=args.n_embd, dropout=args.dropout, bias=True,
                           backend=args.backend)
    model = GPT(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    generator = torch.Generator().manual_seed(args.seed)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start_iter = ckpt["iter"]
        if "data_rng" in ckpt:  # the run continues exactly as if never stopped
            generator.set_state(ckpt["data_rng"])
            torch.set_rng_state(ckpt["torch_rng"])
        print(f"resuming from {ckpt_path} at iter {start_iter}", file=sys.stderr)
    where = f", {threads} CPU threads" if device.type == "cpu" else ""
    print(f"training {model.num_params() / 1e6:.2f}M parameters on {corpus_name} "
          f"({len(train_data):,} train / {len(val_data):,} val tokens), device={device}, "
          f"backend={config.backend}, dtype={args.dtype}{where}", file=sys.stderr)

    def save(done: int, val: float | None):
        _save(ckpt_path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "iter": done,
                          "config": {**config.__dict__, "backend": "auto"}, "tokenizer": tokenizer_path,
                          "data_rng": generator.get_state(), "torch_rng": torch.get_rng_state(), "val_loss": val})

    from tqdm import tqdm
    bar = tqdm(range(start_iter, args.iters), initial=start_iter, total=args.iters, desc="train",
               disable=args.quiet, file=sys.stderr, dynamic_ncols=True)
    history = {"train": [], "val": []}
    tokens_per_iter = args.batch_size * args.block_size
    t0 = time.perf_counter()
    with _StopOnInterrupt() as stop:
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
            loss = loss.item()
            history["train"].append((it, loss))
            rate = (it - start_iter + 1) * tokens_per_iter / (time.perf_counter() - t0)
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{rate:,.0f}")
            if (it + 1) % args.eval_every == 0 or it + 1 == args.iters:
                val = evaluate(model, val_data, args, device, dtype)
                history["val"].append((it + 1, val))
                bar.write(f"iter {it + 1}: train loss {loss:.4f}, val loss {val:.4f}", file=sys.stderr)
                save(it + 1, val)
            if stop.requested:  # Ctrl-C: finish the step, save, and say how to go on
                save(it + 1, None)
                bar.close()
                print(f"interrupted at iter {it + 1}; saved {ckpt_path}; continue with the same command "
                      f"and --resume", file=sys.stderr)
                raise KeyboardInterrupt
    bar.close()
    if history["val"]:
        print(f"done: {len(history['train'])} iters in {time.perf_counter() - t0:.0f} s, "
              f"held-out loss {history['val'][-1][1]:.4f}", file=sys.stderr)
    if args.sample_tokens > 0:
        print(f"\n--- sample (temperature {args.temperature}) ---", file=sys.stderr)
        generate_text(model, tokenizer, args.prompt, args.sample_tokens, args.temperature, args.top_k,
                      args.seed, device, top_p=args.top_p)
    return {"model": model, "history": history, "checkpoint": ckpt_path}


class _StopOnInterrupt:
    """The first Ctrl-C asks the loop to stop after the current step (so the checkpoint holds a
    whole step); a second one interrupts at once."""

    def __enter__(self):
        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def _load_for_resume(ckpt_path: Path, args) -> dict:
    """The checkpoint to resume; its model shape and tokenizer win over the command line."""
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
    ckpt = _torch_load(ckpt_path)
    saved_tok = ckpt.get("tokenizer")
    if args.tokenizer is not None and saved_tok is not None and Path(args.tokenizer).resolve() != Path(saved_tok):
        raise ValueError(f"--resume: the checkpoint was trained with the tokenizer in {saved_tok}, "
                         f"not {args.tokenizer}")
    args.tokenizer = saved_tok
    args.block_size = ckpt["config"]["block_size"]
    return ckpt


def _save(path: Path, obj: dict):
    """Write then rename, so an interrupted save never leaves a torn checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def _torch_load(path: Path) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - pickle/zip errors: say which file, in one line
        raise ValueError(f"{path} is not a readable checkpoint ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(ckpt, dict) or not {"model", "config"} <= set(ckpt):
        raise ValueError(f"{path} is not a `python -m gpt train` checkpoint (no model/config entries)")
    return ckpt


def _lr(it: int, args) -> float:
    """Linear warmup, then cosine decay to a tenth."""
    warmup = max(args.iters // 20, 1)
    if it < warmup:
        return args.lr * (it + 1) / warmup
    progress = (it - warmup) / max(args.iters - warmup, 1)
    return args.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def generate_text(model, tokenizer, prompt, max_tokens, temperature, top_k, seed, device, stream=sys.stdout,
                  top_p=None):
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
    for token in model.stream(idx, max_tokens, temperature, top_k, top_p, generator=generator):
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
            from .hf_tokenizer import tokenizer_for_checkpoint_folder
            model = from_hf(str(path), backend=backend).to(device)
            return model, tokenizer_for_checkpoint_folder(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = _torch_load(path)
    config = GPTConfig(**{**ckpt["config"], "backend": backend})
    model = GPT(config)
    model.load_state_dict(ckpt["model"])
    return model.to(device), load_tokenizer(ckpt.get("tokenizer"))


def sample(args):
    set_threads(args.threads)
    device = pick_device(args.device)
    model, tokenizer = load_checkpoint(args.checkpoint, args.backend, device)
    if args.dtype != "float32":
        model = model.to(DTYPES[args.dtype])
    generate_text(model, tokenizer, args.prompt, args.max_tokens, args.temperature, args.top_k, args.seed, device,
                  top_p=args.top_p)



def export(args):
    """Our checkpoint -> a transformers GPT-2 folder (weights, config, and the tokenizer if BPE)."""
    from .hf import save_hf
    model, tokenizer = load_checkpoint(args.checkpoint, "torch", torch.device("cpu"))
    folder = save_hf(model, args.out)
    if hasattr(tokenizer, "_tok"):
        tokenizer._tok.save_pretrained(str(folder))
    print(f"wrote {folder} (load it with transformers.GPT2LMHeadModel.from_pretrained or "
          f"`python -m gpt sample --checkpoint {folder}`)", file=sys.stderr)
