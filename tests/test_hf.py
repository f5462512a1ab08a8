"""GPT-2 interop against transformers, offline: a random GPT2LMHeadModel is the reference.

Every parity test runs on each CPU backend that implements all of the model's ops (the torch
reference always; triton/cuda join as they gain the ops).
"""
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gpt
import kernels

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CPU_BACKENDS = [b for b in kernels.available_backends("cpu") if not kernels.missing_ops(b, gpt.MODEL_OPS)]
ATOL = 2e-4
V, CTX = 97, 48


def hf_config(**kw):
    # head dim 32 (64 / 2) is one every compiled backend supports; dropout off for exact parity
    cfg = dict(vocab_size=V, n_positions=CTX, n_embd=64, n_layer=3, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0,
               attn_pdrop=0.0, initializer_range=0.1, bos_token_id=0, eos_token_id=None, pad_token_id=0)
    cfg.update(kw)
    return GPT2Config(**cfg)


def random_hf(seed=0, cls=GPT2LMHeadModel, **kw):
    """A random GPT-2 whose biases and norm weights are moved off their init (0 and 1), so a
    transposed, dropped or swapped one shows up in the logits."""
    torch.manual_seed(seed)
    model = cls(hf_config(**kw)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name or "ln_f" in name:
                p.add_(torch.randn_like(p) * 0.2)
    return model


@pytest.fixture(scope="module")
def hf_model():
    return random_hf()


def tokens(b=3, t=21, seed=1):
    return torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(seed))


def gen_hf(model, prompt, n, **kw):
    return model.generate(prompt, max_new_tokens=n, do_sample=False, attention_mask=torch.ones_like(prompt), **kw)


def new_tokens(backend, n):
    """Fewer decode steps off the torch backend: under the Triton interpreter each step is slow."""
    return n if backend == "torch" or torch.cuda.is_available() else min(n, 12)


@pytest.fixture
def calls(monkeypatch):
    """Counts the kernels calls (the patch looks them up on the module at call time) and records
    each attention's query length."""
    counts = {"layer_norm": 0, "gelu_linear": 0, "attention": 0, "tq": []}
    for op in ("layer_norm", "gelu_linear", "attention"):
        real = getattr(kernels, op)

        def wrapped(*a, _real=real, _op=op, **k):
            counts[_op] += 1
            if _op == "attention":
                counts["tq"].append(a[0].shape[2])
            return _real(*a, **k)
        monkeypatch.setattr(kernels, op, wrapped)
    return counts


# ----------------------------------------------------------------------------- from_hf

@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_from_hf_logits_and_loss_match_transformers(hf_model, backend):
    idx = tokens()
    with torch.no_grad():
        ref = hf_model(idx, labels=idx)
        ours = gpt.GPT.from_hf(hf_model, backend=backend)
        logits, loss = ours(idx[:, :-1], idx[:, 1:])
        full, _ = ours(idx)
    torch.testing.assert_close(full, ref.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(loss, ref.loss, atol=ATOL, rtol=0)
    assert ours.backend == backend


def test_from_hf_weights_tied_transposed_and_copied(hf_model):
    ours = gpt.from_hf(hf_model, backend="torch")
    assert ours.lm_head.weight is ours.transformer.wte.weight
    h, b = hf_model.transformer.h[1], ours.transformer.h[1]
    for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
        theirs, mine = h.get_submodule(name), b.get_submodule(name)
        assert torch.equal(mine.weight, theirs.weight.t()) and torch.equal(mine.bias, theirs.bias)
    assert ours.config.block_size == CTX and ours.config.vocab_size == V and ours.config.dropout == 0.0
    with torch.no_grad():
        ours.transformer.wte.weight.add_(1.0)  # a copy: the transformers model is untouched
    assert not torch.equal(ours.transformer.wte.weight, hf_model.transformer.wte.weight)


def test_from_hf_accepts_the_base_model_and_keeps_dtype():
    base = random_hf(cls=GPT2Model)
    ours = gpt.from_hf(base, backend="torch")
    idx = tokens(2, 9)
    with torch.no_grad():
        hidden = base(idx).last_hidden_state
        torch.testing.assert_close(ours(idx)[0], hidden @ base.wte.weight.t(), atol=ATOL, rtol=0)
    half = gpt.from_hf(random_hf().to(torch.bfloat16), backend="torch")
    assert half.lm_head.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_greedy_generation_matches_transformers(hf_model, backend):
    ours = gpt.from_hf(hf_model, backend=backend)
    prompt = tokens(3, 7, seed=2)
    n = new_tokens(backend, CTX - 7)  # up to the full context
    expected = gen_hf(hf_model, prompt, n)
    assert torch.equal(ours.generate(prompt, n, temperature=0), expected)
    assert torch.equal(ours.generate(prompt, n, temperature=0, use_cache=False), expected)


# ----------------------------------------------------------------------------- save_hf / folders

def test_round_trip_through_a_folder_is_exact(tmp_path):
    torch.manual_seed(3)
    ours = gpt.GPT(gpt.GPTConfig(vocab_size=V, block_size=CTX, n_layer=2, n_head=2, n_embd=64, backend="torch"))
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if name.endswith("bias") or "ln" in name:
                p.add_(torch.randn_like(p))
    for safe in (True, False):
        folder = gpt.save_hf(ours, tmp_path / f"m{safe}", safe_serialization=safe)
        back = gpt.from_hf(folder, backend="torch")
        a, b = ours.state_dict(), back.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert back.lm_head.weight is back.transformer.wte.weight
    # and transformers reads the folder as the same model
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "mTrue").eval()
    idx = tokens(2, 13)
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, ours(idx)[0], atol=ATOL, rtol=0)


def test_from_hf_reads_a_save_pretrained_folder(hf_model, tmp_path):
    hf_model.save_pretrained(tmp_path)  # safetensors, lm_head omitted as tied
    from_folder = gpt.from_hf(str(tmp_path), backend="torch")
    from_model = gpt.from_hf(hf_model, backend="torch")
    a, b = from_folder.state_dict(), from_model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_from_hf_reads_old_unprefixed_bin_checkpoints(hf_model, tmp_path):
    # the original GPT-2 pytorch_model.bin names weights without "transformer." and carries mask buffers
    state = {k.removeprefix("transformer."): v for k, v in hf_model.state_dict().items() if k != "lm_head.weight"}
    state["h.0.attn.bias"] = torch.ones(1, 1, CTX, CTX).tril()
    torch.save(state, tmp_path / "pytorch_model.bin")
    hf_model.config.to_json_file(tmp_path / "config.json")
    ours = gpt.from_hf(tmp_path, backend="torch")
    idx = tokens(1, 11)
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], hf_model(idx).logits, atol=ATOL, rtol=0)


@pytest.mark.parametrize("change, match", [
    (dict(activation_function="relu"), "activation_function"),
    (dict(activation_function="gelu"), "activation_function"),
    (dict(n_inner=96), "n_inner"),
    (dict(layer_norm_epsilon=1e-6), "layer_norm_epsilon"),
    (dict(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx"),
    (dict(tie_word_embeddings=False), "tie_word_embeddings"),
    (dict(model_type="llama"), "model_type"),
])
def test_from_hf_rejects_what_it_cannot_represent(tmp_path, change, match):
    config = {**hf_config().to_dict(), **change}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=match):
        gpt.from_hf(tmp_path)


def test_from_hf_bad_inputs(tmp_path, hf_model):
    with pytest.raises(FileNotFoundError, match="no GPT-2 checkpoint folder"):
        gpt.from_hf(str(tmp_path / "missing") + "/")
    with pytest.raises(FileNotFoundError, match="config.json"):
        gpt.from_hf(tmp_path)
    hf_model.config.to_json_file(tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        gpt.from_hf(tmp_path)
    torch.save({"wte.weight": torch.zeros(V, 64)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="missing"):
        gpt.from_hf(tmp_path)
    with pytest.raises(TypeError, match="GPT-2"):
        gpt.from_hf(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="backend"):
        gpt.from_hf(hf_model, backend="jax")
    with pytest.raises(TypeError, match="gpt.GPT"):
        gpt.save_hf(hf_model, tmp_path / "x")
    no_bias = gpt.GPT(gpt.GPTConfig(vocab_size=V, block_size=8, n_layer=1, n_head=2, n_embd=64, bias=False))
    with pytest.raises(ValueError, match="bias"):
        gpt.save_hf(no_bias, tmp_path / "y")


def test_hub_name_offline_is_one_clear_error(tmp_path):
    code = "import gpt\ntry:\n    gpt.from_hf('gpt2')\nexcept RuntimeError as e:\n    print('ERR', e)\n"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("ERR")]
    assert line, out.stdout + out.stderr
    assert "'gpt2'" in line[0] and "local folder" in line[0]


# ----------------------------------------------------------------------------- patch_hf_gpt2

@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_patched_logits_match_and_run_our_kernels(backend, calls):
    model = random_hf()
    idx = tokens()
    with torch.no_grad():
        ref = model(idx).logits
        assert gpt.patch_hf_gpt2(model, backend=backend) is model
        out = model(idx).logits
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    n = model.config.n_layer
    assert (calls["layer_norm"], calls["attention"], calls["gelu_linear"]) == (2 * n + 1, n, n)
    assert gpt.is_patched(model) and model.config._attn_implementation == "gptk"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_patched_generate_uses_the_kv_cache_and_matches(backend, calls):
    model = random_hf()
    prompt = tokens(2, 6, seed=4)
    steps = new_tokens(backend, 30)
    expected = gen_hf(model, prompt, steps)
    gpt.patch_hf_gpt2(model, backend=backend)
    assert torch.equal(gen_hf(model, prompt, steps), expected)
    n = model.config.n_layer
    assert calls["tq"] == [6] * n + [1] * ((steps - 1) * n)  # prefill, then one query per step on the cache
    assert torch.equal(gen_hf(model, prompt, steps, use_cache=False), expected)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_patched_model_trains_with_matching_grads(backend):
    ref, model = random_hf(), random_hf()
    gpt.patch_hf_gpt2(model, backend=backend)
    model.train(), ref.train()
    idx = tokens(2, 17)
    ref(idx, labels=idx).loss.backward()
    loss = model(idx, labels=idx).loss
    loss.backward()
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = loss.item()
    for _ in range(15):
        opt.zero_grad()
        loss = model(idx, labels=idx).loss
        loss.backward()
        opt.step()
    assert loss.item() < 0.7 * first


@pytest.mark.parametrize("mode", ["autocast", "bf16 weights"])
def test_patched_model_in_bfloat16(mode):
    """Under autocast (our ops sit below it, so the patch casts like autocast would) and with bf16
    weights, the patched model's error vs fp32 stays within 2x transformers' own bf16 error."""
    from helpers import assert_within_torch_error
    model, idx = random_hf(), tokens()
    with torch.no_grad():
        ref32 = model(idx).logits
        ctx = torch.autocast("cpu", dtype=torch.bfloat16)
        if mode == "bf16 weights":
            model, ctx = model.to(torch.bfloat16), torch.autocast("cpu", enabled=False)
        with ctx:
            theirs = model(idx).logits
            gpt.patch_hf_gpt2(model, backend="torch")
            ours = model(idx).logits
    assert ours.dtype == theirs.dtype == torch.bfloat16
    assert_within_torch_error(ours, theirs, ref32, factor=2, slack=1e-2, what=mode)
    model.train()
    with ctx:
        model(idx, labels=idx).loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_unpatch_restores_the_model_exactly(hf_model):
    model = random_hf()
    idx = tokens()
    with torch.no_grad():
        ref = model(idx).logits
    keys = list(model.state_dict())
    gpt.patch_hf_gpt2(model, backend="torch")
    assert list(model.state_dict()) == keys and isinstance(model.transformer.ln_f, torch.nn.LayerNorm)
    gpt.patch_hf_gpt2(model, backend="auto")  # patching again switches the backend
    assert model.transformer.h[0].mlp.gptk_backend == "auto"
    assert gpt.unpatch_hf_gpt2(model) is model and not gpt.is_patched(model)
    assert type(model.transformer.ln_f) is torch.nn.LayerNorm
    assert type(model.transformer.h[0].mlp).__name__ == "GPT2MLP"
    assert model.config._attn_implementation == "sdpa"
    assert not any(hasattr(m, "gptk_backend") for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(idx).logits, ref)
    gpt.unpatch_hf_gpt2(model)  # a no-op on an unpatched model


def test_patched_model_deepcopies(hf_model):
    model = gpt.patch_hf_gpt2(random_hf(), backend="torch")
    clone = copy.deepcopy(model)
    idx = tokens(1, 9)
    with torch.no_grad():
        assert torch.equal(clone(idx).logits, model(idx).logits)
    assert type(clone.transformer.h[0].mlp) is type(model.transformer.h[0].mlp)


def test_patch_selected_parts_and_base_model(calls):
    model = random_hf(activation_function="relu")
    with pytest.raises(ValueError, match="mlp=False"):
        gpt.patch_hf_gpt2(model)
    idx = tokens(2, 10)
    with torch.no_grad():
        ref = model(idx).logits
        gpt.patch_hf_gpt2(model, backend="torch", mlp=False)
        torch.testing.assert_close(model(idx).logits, ref, atol=ATOL, rtol=0)
    assert calls["gelu_linear"] == 0 and calls["attention"] == 3
    base = random_hf(cls=GPT2Model)
    with torch.no_grad():
        ref = base(idx).last_hidden_state
        gpt.patch_hf_gpt2(base, backend="torch", attention=False)
        torch.testing.assert_close(base(idx).last_hidden_state, ref, atol=ATOL, rtol=0)
    assert base.config._attn_implementation == "sdpa"


def test_padded_batches_fall_back_to_sdpa_with_a_warning():
    model = random_hf()
    prompt = tokens(2, 7, seed=5)
    mask = torch.ones_like(prompt)
    mask[0, :3] = 0  # left padding
    expected = model.generate(prompt, attention_mask=mask, max_new_tokens=8, do_sample=False)
    gpt.patch_hf_gpt2(model, backend="torch")
    import gpt.hf as hf_mod
    hf_mod._warned.discard("mask")
    with pytest.warns(UserWarning, match="not plain causal"):
        out = model.generate(prompt, attention_mask=mask, max_new_tokens=8, do_sample=False)
    assert torch.equal(out, expected)


def test_patch_refuses_attention_dropout_in_training():
    model = gpt.patch_hf_gpt2(random_hf(attn_pdrop=0.1), backend="torch")
    idx = tokens(1, 8)
    with torch.no_grad():
        model(idx)  # eval: dropout is off, fine
    model.train()
    with pytest.raises(RuntimeError, match="dropout"):
        model(idx)


def test_patch_rejects_other_models_and_bad_backends():
    from transformers import LlamaConfig, LlamaForCausalLM
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    before = {n: type(m) for n, m in llama.named_modules()}
    with pytest.raises(TypeError, match="GPT-2"):
        gpt.patch_hf_gpt2(llama)
    assert {n: type(m) for n, m in llama.named_modules()} == before
    with pytest.raises(TypeError, match="GPT-2"):
        gpt.patch_hf_gpt2(torch.nn.LayerNorm(4))
    with pytest.raises(ValueError, match="backend"):
        gpt.patch_hf_gpt2(random_hf(), backend="jax")
    for backend in ("triton", "cuda"):
        missing = kernels.missing_ops(backend, ("layer_norm", "attention", "gelu_linear"))
        if missing:
            with pytest.raises(RuntimeError, match=missing[0]):
                gpt.patch_hf_gpt2(random_hf(), backend=backend)


def test_supported_transformers_range_is_pinned_and_installed():
    from gpt.hf import SUPPORTED_TRANSFORMERS
    lo, hi = SUPPORTED_TRANSFORMERS
    assert f"transformers>={lo}.0,<{hi}" in (ROOT / "setup.py").read_text()
    assert lo <= int(transformers.__version__.split(".")[0]) < hi, transformers.__version__


# ----------------------------------------------------------------------------- tokenizer and main job

@pytest.fixture(scope="module")
def bpe_folder(tmp_path_factory):
    """A small byte-level BPE in GPT-2's file format (vocab.json + merges.txt), trained here."""
    from tokenizers import ByteLevelBPETokenizer
    folder = tmp_path_factory.mktemp("bpe")
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator([TEXT], vocab_size=300, min_frequency=2, special_tokens=["<|endoftext|>"])
    tok.save_model(str(folder))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer"}))
    return folder


TEXT = "the quick brown fox jumps over the lazy dog; hello world, café. " * 120


def test_hf_tokenizer_round_trips(bpe_folder, tmp_path):
    from gpt.hf_tokenizer import HFTokenizer
    tok = HFTokenizer(bpe_folder)
    text = "hello world, the café ☃ fox"
    ids = tok.encode(text)
    assert tok.decode(ids) == text and len(ids) < len(text.encode()) and max(ids) < tok.vocab_size
    with pytest.raises(FileNotFoundError, match="not found"):
        HFTokenizer(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        HFTokenizer(tmp_path)


def run_gpt(*args, cwd=None, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "gpt", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout)


SMALL = ["--block-size", "32", "--batch-size", "4", "--n-layer", "1", "--n-head", "2", "--n-embd", "32",
         "--quiet", "--backend", "torch", "--threads", "1"]


def test_main_job_with_a_bpe_tokenizer_then_sample_and_export(bpe_folder, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    out = tmp_path / "out"
    proc = run_gpt("train", "--text", str(text), "--tokenizer", str(bpe_folder), "--iters", "6", "--eval-every", "3",
                   "--sample-tokens", "5", "--out-dir", str(out), *SMALL)
    assert proc.returncode == 0, proc.stderr
    assert "val loss" in proc.stderr and proc.stdout.startswith("The ")
    proc = run_gpt("export", "--checkpoint", str(out), "--out", str(tmp_path / "hf"))
    assert proc.returncode == 0, proc.stderr
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "hf")
    from gpt.hf_tokenizer import HFTokenizer
    assert hf.config.vocab_size == HFTokenizer(bpe_folder).vocab_size
    assert any((tmp_path / "hf" / name).is_file() for name in ("tokenizer.json", "vocab.json"))
    proc = run_gpt("sample", "--checkpoint", str(tmp_path / "hf"), "--prompt", "hello", "--temperature", "0",
                   "--max-tokens", "4", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("hello")


def test_ctrl_c_then_resume_continues_exactly(tmp_path):
    """Ctrl-C saves a checkpoint after the current step; --resume continues from that iter and ends
    bitwise where an uninterrupted run ends (data order and RNG state are in the checkpoint)."""
    import signal
    import time
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    common = ["train", "--text", str(text), "--iters", "300", "--eval-every", "4", "--eval-batches", "1",
              "--sample-tokens", "0", *SMALL]
    straight = run_gpt(*common, "--out-dir", str(tmp_path / "a"))
    assert straight.returncode == 0, straight.stderr
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "gpt", *common, "--out-dir", str(tmp_path / "b")],
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while not (tmp_path / "b" / "ckpt.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130 and "interrupted at iter" in err and "Traceback" not in err, err
    stopped = torch.load(tmp_path / "b" / "ckpt.pt", weights_only=False)["iter"]
    assert 4 <= stopped < 300
    resumed = run_gpt(*common, "--out-dir", str(tmp_path / "b"), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"at iter {stopped}" in resumed.stderr and "iter 300:" in resumed.stderr
    a = torch.load(tmp_path / "a" / "ckpt.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "ckpt.pt", weights_only=False)
    assert a["iter"] == b["iter"] == 300 and a["val_loss"] == b["val_loss"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


@pytest.mark.parametrize("args, match", [
    (["sample", "--checkpoint", "/nonexistent/ckpt.pt"], "checkpoint not found"),
    (["sample", "--temperature", "-1"], "--temperature"),
    (["sample", "--temperature", "nan"], "--temperature"),
    (["train", "--text", "/nonexistent.txt"], "text file not found"),
    (["train", "--resume", "--out-dir", "/nonexistent"], "no checkpoint"),
    (["train", "--tokenizer", "/nonexistent"], "tokenizer folder not found"),
    (["train", "--dtype", "float16", "--device", "cpu"], "needs a GPU"),
    (["sample", "--max-tokens", "-1"], "--max-tokens"),
])
def test_cli_errors_are_one_line(args, match):
    proc = run_gpt(*args, "--threads", "1")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], proc.stderr


def test_cli_prompt_longer_than_context_is_one_line(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    proc = run_gpt("train", "--text", str(text), "--iters", "1", "--sample-tokens", "0", "--out-dir",
                   str(tmp_path / "o"), *SMALL)
    assert proc.returncode == 0, proc.stderr
    proc = run_gpt("sample", "--checkpoint", str(tmp_path / "o"), "--prompt", "x" * 40, "--threads", "1")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: the prompt is 40 tokens, longer than the model's context (32)"], proc.stderr


def test_help_at_every_level():
    for args in ([], ["train"], ["sample"], ["export"]):
        proc = run_gpt(*args, "--help")
        assert proc.returncode == 0 and proc.stdout.startswith("usage: python -m gpt"), proc.stderr


# ----------------------------------------------------------------------------- on a GPU

GPU_BACKENDS = ([b for b in kernels.available_backends("cuda") if not kernels.missing_ops(b, gpt.MODEL_OPS)]
                if torch.cuda.is_available() else [])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", GPU_BACKENDS + ["auto"])
def test_gpu_parity_and_generation(backend):
    """fp32 on the GPU: from_hf and the patched model against transformers, logits and greedy tokens."""
    model = random_hf().cuda()
    idx, prompt = tokens().cuda(), tokens(3, 7, seed=2).cuda()
    with torch.no_grad():
        ref = model(idx).logits
        expected = gen_hf(model, prompt, 25)
        ours = gpt.from_hf(model, backend=backend)
        assert ours.lm_head.weight.is_cuda
        torch.testing.assert_close(ours(idx)[0], ref, atol=ATOL, rtol=0)
        assert torch.equal(ours.generate(prompt, 25, temperature=0), expected)
        gpt.patch_hf_gpt2(model, backend=backend)
        torch.testing.assert_close(model(idx).logits, ref, atol=ATOL, rtol=0)
        assert torch.equal(gen_hf(model, prompt, 25), expected)
