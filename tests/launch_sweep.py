"""Which launch configurations the Triton launchers pick over a wide sweep of inputs, against
what the compile check enumerates: run in a child process (no TRITON_INTERPRET) by
tests/test_compile_targets.py.

The compile check compiles one configuration per launch_key (kernel, constexprs, pointer
dtypes, num_warps, num_stages, options) that the module's launch_cases() reach, for each
target it is launched on. Here the real launchers run on meta (or small CPU) tensors over many
more shapes, row offsets and strides, dtypes and flags than launch_cases() uses, seeded random
draws included, as on sm_80 and as on sm_90, every kernel launch and autotuner benchmark
intercepted (nothing compiles or runs); any (configuration, target) outside the enumeration
is reported.

    python tests/launch_sweep.py kernels.triton.softmax   # JSON: counts and the missing keys
"""
from __future__ import annotations

import itertools
import json
import os
import random
import sys

os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from kernels.triton.compile_check import matmul_tf32  # noqa: E402

META = "meta"
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _widths(largest: int, rng: random.Random, draws: int = 24) -> list[int]:
    """Every width up to 16, each power of two and its neighbours, 3 x 2^k, and random draws."""
    widths = set(range(1, 17))
    for k in range(largest.bit_length() + 1):
        widths |= {(1 << k) - 1, 1 << k, (1 << k) + 1, 3 << k}
    widths |= {rng.randint(1, largest) for _ in range(draws)}
    return sorted(w for w in widths if 1 <= w <= largest)


def _row_tensors(n_rows: int, n_cols: int, dtype, rng: random.Random, device=META):
    """Row views with random starts and strides (and a transposed one: rows along dim 0)."""
    views = []
    for _ in range(3):
        off, pad = rng.randint(0, 9), rng.choice([0, 1, 2, 3, 4, 8, 16, 17])
        views.append(torch.empty(n_rows, n_cols + off + pad, dtype=dtype, device=device)[:, off:off + n_cols])
    views.append(torch.empty(n_rows, n_cols, dtype=dtype, device=device))
    return views


def softmax_calls(rng):
    from kernels.triton import softmax as op
    for dtype in DTYPES:
        for n_cols in _widths(3 * op._launch.MAX_ROW_BLOCK, rng):
            for n_rows in (1, 3, 17):
                views = _row_tensors(n_rows, n_cols, dtype, rng)
                for x in views:
                    yield lambda x=x: op.softmax_forward(x, 0.7, -1)
                    dy = rng.choice(views)
                    yield lambda x=x, dy=dy: op.softmax_backward(dy, x, 0.7, -1)
            x = torch.empty(n_cols, 5, dtype=dtype, device=META)
            yield lambda x=x: op.softmax_forward(x, 1.0, 0)  # a non-innermost dim
            yield lambda x=x: op.softmax_backward(x, x, 1.0, 0)


def layer_norm_calls(rng):
    from kernels.triton import layer_norm as op
    for dtype in DTYPES:
        for n_cols in _widths(op.MAX_HIDDEN, rng):
            for n_rows in (1, 5):
                views = _row_tensors(n_rows, n_cols, dtype, rng)
                w = torch.empty(n_cols, dtype=dtype, device=META)
                stats = torch.empty((n_rows, 2), dtype=torch.float32, device=META)
                for x in views:
                    for res, has_w, has_b, keep in itertools.product((None, rng.choice(views)), (None, w), (None, w),
                                                                     (False, True)):
                        yield lambda x=x, r=res, wt=has_w, b=has_b, k=keep: op.forward(x, r, wt, b, 1e-5, stats=k)
                    dy = rng.choice(views)
                    for has_w, need_dw, need_db, ds in itertools.product((None, w), (False, True), (False, True),
                                                                        (None, rng.choice(views))):
                        if need_dw and has_w is None:
                            continue
                        yield lambda x=x, dy=dy, wt=has_w, dw=need_dw, db=need_db, ds=ds: op.backward(
                            dy, x, wt, stats, ds, dw, db)


def attention_calls(rng):
    from kernels.triton import attention as op
    sms = op._sm_count(torch.device(META))
    for dtype, D, causal in itertools.product(DTYPES, range(8, op.MAX_HEAD_DIM + 1, 8), (True, False)):
        shapes = [(rng.randint(1, 3), rng.randint(1, 3), tq, rng.randint(tq, 3 * tq + 200))
                  for tq in (1, 2, 3, 4, 5, 9, 16, 17, 40, rng.randint(1, 300))]
        shapes += [(2, sms, 1, rng.randint(1, 5000)), (1, 1, rng.randint(1, 4), rng.randint(1, 9000))]
        for B, H, tq, tk in shapes:
            q, k = (torch.empty(B, tq, H, D, dtype=dtype, device=META).transpose(1, 2),
                    torch.empty(B, H, tk, D, dtype=dtype, device=META))
            yield lambda q=q, k=k, c=causal: op.attention_forward(q, k, k, c, D ** -0.5)
            n = torch.empty(B, dtype=rng.choice((torch.int32, torch.int64)), device=META)
            yield lambda q=q, k=k, c=causal, n=n: op.attention_forward(q, k, k, c, D ** -0.5, kv_lengths=n)
            if tq > 4:
                lse = torch.empty(B, H, tq, device=META)
                yield lambda q=q, k=k, lse=lse, c=causal: op.attention_backward(q, q, k, k, q, lse, c, 0.3)


def _with_tf32(fn, tf32):
    def call():
        with matmul_tf32(tf32):
            fn()
    return call


def gelu_linear_calls(rng):
    from kernels.triton import gelu_linear as op
    for (dtype, tf32), _ in itertools.product(((torch.float16, False), (torch.bfloat16, False),
                                               (torch.float32, True), (torch.float32, False)), range(12)):
        m, k, n = (rng.choice([1, 16, 64, rng.randint(1, 300)]) for _ in range(3))
        x = torch.empty(m, k + rng.choice([0, 0, 1, 16]), dtype=dtype, device=META)[:, :k]
        w = rng.choice([torch.empty(n, k, dtype=dtype, device=META),
                        torch.empty(k, n, dtype=dtype, device=META).t()])
        b = torch.empty(n, dtype=dtype, device=META)
        for bias, approximate, save in itertools.product((None, b), ("tanh", "none"), (False, True)):
            yield _with_tf32(lambda x=x, w=w, b=bias, a=approximate, s=save: op.gelu_linear_forward(x, w, b, a, s),
                             tf32)
            dy = torch.empty(m, n + rng.choice([0, 3]), dtype=dtype, device=META)[:, :n]
            z = torch.empty(m, n, dtype=dtype, device=META)
            yield lambda dy=dy, x=x, w=w, z=z, b=bias, a=approximate: op.gelu_linear_backward(
                dy, x, w, z, b is not None, a)


def linear_cross_entropy_calls(rng):
    from kernels.triton import linear_cross_entropy as op
    for (dtype, tf32), _ in itertools.product(((torch.float16, False), (torch.bfloat16, False),
                                               (torch.float32, True), (torch.float32, False)), range(6)):
        n, c, v = rng.randint(1, 40), rng.choice([16, 32, rng.randint(1, 70)]), rng.randint(1, 300)
        x = torch.zeros(n, c + rng.choice([0, 1, 16]), dtype=dtype)[:, :c]
        w = torch.zeros(v, c, dtype=dtype)
        target = torch.randint(0, v, (n,))
        for bias, reduction, grad in itertools.product((None, torch.zeros(v, dtype=dtype)), ("mean", "sum", "none"),
                                                       (False, True)):
            yield _with_tf32(lambda x=x, w=w, b=bias, t=target, r=reduction, g=grad: op.forward(
                x, w, b, t, 0.8, -100, r, g), tf32)
        yield _with_tf32(lambda x=x, w=w, t=target: op.backward_none(torch.ones(n), x, w, None, t, 1.0, 3), tf32)


def sample_calls(rng):
    from kernels.triton import sample as op
    seed = torch.empty(1, dtype=torch.int64, device=META)
    for dtype in DTYPES:
        for n_cols in _widths(4 * op.LONG_ROW_BLOCK, rng):
            x = torch.empty(rng.randint(1, 9), n_cols + rng.choice([0, 5]), dtype=dtype, device=META)[:, :n_cols]
            for t, k, p in itertools.product((0.0, 0.7), (0, 1, n_cols, 50), (1.0, 0.5)):
                yield lambda x=x, t=t, k=k, p=p: op.sample_forward(x, seed, t, k, p)


SWEEPS = {"kernels.triton.softmax": softmax_calls, "kernels.triton.layer_norm": layer_norm_calls,
          "kernels.triton.attention": attention_calls, "kernels.triton.gelu_linear": gelu_linear_calls,
          "kernels.triton.linear_cross_entropy": linear_cross_entropy_calls, "kernels.triton.sample": sample_calls}


def sweep(module_name: str, seed: int = 0) -> dict:
    import importlib

    from kernels.triton import compile_check as cc
    enumerated = {(c[0], arch) for c in cc.enumerate_configs(module_name) for arch in c[-1]}
    module = importlib.import_module(module_name)
    kernels, tuners = cc.module_launchers(module)
    launched, n_calls = set(), 0
    for arch in cc.TARGETS:  # the same draws as on each target
        with cc.launch_target(arch), cc.record_launches(kernels, tuners) as calls:
            for call in SWEEPS[module_name](random.Random(seed)):
                for t in tuners:
                    t.cache.clear()
                cc._clear_replays(module)
                call()
                n_calls += 1
                launched |= {(cc.launch_key(k, args, kwargs), arch) for k, _, args, kwargs in calls}
                calls.clear()
    return {"module": module_name, "calls": n_calls, "enumerated": len(enumerated), "launched": len(launched),
            "missing": sorted(f"sm_{arch} {key!r}" for key, arch in launched - enumerated)}


if __name__ == "__main__":
    json.dump([sweep(m) for m in sys.argv[1:]], sys.stdout, indent=1)
