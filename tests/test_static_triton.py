"""Static proof, from the sm_90 SASS, that the Triton row kernels can reach the bandwidth
ceiling (issue 14): softmax at 8192x4096 and 8192x50257, layer_norm and add_layer_norm at
16384x1024 and 16384x4096, forward and backward, bf16 and fp32.

Each case runs the real launcher on meta tensors (no memory, no GPU); every kernel launch is
intercepted, specialised as Triton's launcher would specialise those arguments, compiled for
sm_90 and disassembled (kernels/triton/compile_check.py --static, kernels/triton/sass.py,
whose docstring states the models). A case fails when row data moves in accesses narrower
than 16 bytes (beyond a row's tagged head/tail peel), when local memory appears, when fewer
than 16 warps fit per SM, or when fewer than 32 KB of loads can be in flight per SM.
The second half compiles deliberately broken variants and checks each check catches them.

The compiles run in a child process without TRITON_INTERPRET (the interpreter replaces
@triton.jit); run this file as a script (`python tests/test_static_triton.py --broken`) for
the broken variants' JSON.
"""
import functools
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = ["kernels.triton.softmax", "kernels.triton.layer_norm"]
EXPECTED_CASES = {f"softmax {d} 8192x{n} {t}" for d in ("fwd", "bwd") for n in (4096, 50257)
                  for t in ("bfloat16", "float32")} | \
                 {f"{op} {d} 16384x{n} {t}" for op in ("layer_norm", "add_layer_norm") for d in ("fwd", "bwd")
                  for n in (1024, 4096) for t in ("bfloat16", "float32")}


def _child(args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=1200)
    assert proc.returncode in (0, 1), proc.stderr[-4000:]
    return json.loads(proc.stdout)


@functools.lru_cache(maxsize=None)  # one compile run, shared by the tests below
def _report():
    return _child(["-m", "kernels.triton.compile_check", "--static", "--json", *MODULES])


@functools.lru_cache(maxsize=None)
def _broken():
    return {r["variant"]: r for r in _child([os.path.abspath(__file__), "--broken"])}


def test_every_benchmark_case_is_covered():
    cases = {r["case"] for r in _report()}
    assert EXPECTED_CASES <= cases, sorted(EXPECTED_CASES - cases)


@pytest.mark.parametrize("case", sorted(EXPECTED_CASES))
def test_kernel_meets_static_checks(case):
    results = [r for r in _report() if r["case"] == case]
    assert results
    for r in results:
        assert not r["problems"], f"{r['kernel']} {r['constexprs']}: {r['line']}\n" + "\n".join(r["problems"])
        # Row kernels move row data: at least one 16-byte load and store each.
        if not r["exempt"]:
            assert r["loads"].get("16", 0) > 0 and r["stores"].get("16", 0) > 0, r["line"]


MISALIGNED_CASES = {f"{op} fwd 16384x1023 {t}" for op in ("layer_norm", "add_layer_norm")
                    for t in ("bfloat16", "float32")}


@pytest.mark.parametrize("case", sorted(MISALIGNED_CASES))
def test_misaligned_layer_norm_rows_move_in_16_byte_vectors(case):
    # Rows of an odd width start at every phase: each is split at x's alignment, its body
    # (x, r, y, s, and w and b read from their copies at x's phase) in 16-byte accesses, the
    # head and tail in a tagged peel; without the split every access was narrow.
    results = [r for r in _report() if r["case"] == case]
    assert results
    for r in results:
        assert r["constexprs"]["SPLIT"] and not r["problems"], f"{r['line']}\n" + "\n".join(r["problems"])
        assert r["loads"].get("16", 0) >= 3 and r["stores"].get("16", 0) >= 1, r["line"]


def test_softmax_on_chip_rows_take_one_exp_per_element():
    # Rows held in registers: one MUFU.EX2 per element (plus the peel's, computed redundantly
    # per thread); streamed rows: one per element per pass, two passes.
    for r in _report():
        if r["kernel"] == "_softmax_fwd_kernel":
            assert r["ex2_per_element"] <= 1.5, r["line"]
        elif r["kernel"] == "_softmax_fwd_long_kernel":
            assert r["ex2_per_element"] <= 2.25, r["line"]


def test_width_50257_rows_move_in_16_byte_vectors():
    # Odd-width rows start 2-byte aligned: the body still moves in 16-byte accesses, the
    # head and tail in at most a handful of tagged (LDG/STG .EF) accesses per thread.
    rows = [r for r in _report() if "50257" in r["case"]]
    assert rows and all(r["narrow_untagged"] == 0 and r["loads"].get("16", 0) >= 4 for r in rows)


# --- Each check catches a deliberately broken variant ------------------------------------

def test_unaligned_base_pointer_is_caught():
    # The softmax launched on x[:, 1:] without the aligned-base split: Triton cannot prove
    # 16-byte alignment and moves the whole row in scalar 16-bit accesses.
    r = _broken()["unaligned_base"]
    assert r["narrow_untagged"] > 0 and any("narrower than 16 B" in p for p in r["problems"]), r


def test_tagging_the_body_is_caught():
    # Marking body accesses evict_first does not pass: the tagged count is bounded.
    r = _broken()["tagged_body"]
    assert any("peel/scalar accesses" in p for p in r["problems"]), r


def test_spilling_variant_is_caught():
    # A 16384-wide row held by 2 warps: 256 fp32 values per thread spill to local memory.
    r = _broken()["spills"]
    assert any(p.startswith("local memory") for p in r["problems"]), r


def test_too_few_warps_is_caught():
    # The 4096-wide layer-norm backward forced to 8 warps with 2 rows per tile: 1 program of
    # 8 warps per SM.
    r = _broken()["few_warps"]
    assert any("resident warps per SM" in p for p in r["problems"]), r


def test_too_few_bytes_in_flight_is_caught():
    # The long-row softmax streaming 512-element chunks with 4 warps: 1 KB per program.
    r = _broken()["small_chunks"]
    assert any("in flight per SM" in p for p in r["problems"]), r


def _broken_variants():
    """Run in the child: compile each broken variant and report its problems."""
    import dataclasses

    import torch
    from kernels.triton import _launch, layer_norm, sass, softmax
    from kernels.triton.compile_check import compile_launch, record_launches, resource_usage

    def analyse(kernel, args, kwargs, allowed, grid):
        compiled, options, _ = compile_launch(kernel, args, kwargs)
        usage = resource_usage(compiled.asm["cubin"])
        rep = sass.analyse(compiled.asm["cubin"], kernel.__name__, options.get("num_warps", 4),
                           int(compiled.metadata.shared), usage["registers"], usage["spill_bytes"])
        n = 1
        for g in grid:
            n *= g
        rep = dataclasses.replace(rep, grid=n)
        return {"line": rep.line(), "narrow_untagged": rep.narrow(tagged=False),
                "problems": sass.problems(rep, allowed)}

    def recorded(kernels, fn):
        with record_launches(kernels) as calls:
            fn()
        return calls[0]

    out = []
    meta = functools.partial(torch.empty, device="meta")
    sm_kernels = [softmax._softmax_fwd_kernel, softmax._softmax_fwd_long_kernel]
    # 1. Unaligned base: x[:, 1:] passed as the base pointer with offset 0.
    x = meta(64, 4097, dtype=torch.bfloat16)[:, 1:]
    k, grid, args, kw = recorded(sm_kernels, lambda: softmax.softmax_forward(x, 1.0, -1))
    args = list(args)
    args[1], args[4] = x, 0  # x_ptr = the misaligned view itself, x_off = 0
    out.append({"variant": "unaligned_base", **analyse(k, args, kw, _launch.peel_allowance(8, 2), grid)})
    # 2. Body tagged: compile a softmax forward whose body loads are marked evict_first.
    k, grid, args, kw = recorded(sm_kernels, lambda: softmax.softmax_forward(meta(8192, 4096, dtype=torch.bfloat16),
                                                                          1.0, -1))
    args = list(args)
    args[1] = meta(8192, 4096, dtype=torch.bfloat16)[:, 1:]  # misaligned again, then tag it all
    tagged_kernel = _tag_everything(k)
    allowed = _launch.peel_allowance(8, 2)  # what the real bf16 forward is allowed
    out.append({"variant": "tagged_body", **analyse(tagged_kernel, args, kw, allowed, grid)})
    # 3. Spills: the widest on-chip row with 2 warps.
    k, grid, args, kw = recorded(sm_kernels, lambda: softmax.softmax_forward(meta(64, 16384, dtype=torch.float32),
                                                                          1.0, -1))
    out.append({"variant": "spills", **analyse(k, args, dict(kw, num_warps=2), 8, grid)})
    # 4. Too few warps: layer-norm backward at 4096 (bf16), 8 warps, 2 rows per tile.
    orig = layer_norm.backward_config
    layer_norm.backward_config = lambda n, e=2, a=True: dict(orig(n, e, a), num_warps=8, BLOCK_M=2)
    try:
        t = functools.partial(meta, dtype=torch.bfloat16)
        st = meta(16384, 2, dtype=torch.float32)
        k, grid, args, kw = recorded([layer_norm._ln_bwd_kernel, layer_norm._ln_bwd_reduce_kernel],
                                     lambda: layer_norm.backward(t(16384, 4096), t(16384, 4096), t(4096), st,
                                                                 None, True, True))
    finally:
        layer_norm.backward_config = orig
    out.append({"variant": "few_warps", **analyse(k, args, kw, 36, grid)})
    # 5. Too few bytes in flight: the long-row softmax in 512-element chunks, 4 warps.
    k, grid, args, kw = recorded(sm_kernels, lambda: softmax.softmax_forward(meta(8192, 50257, dtype=torch.bfloat16),
                                                                          1.0, -1))
    out.append({"variant": "small_chunks", **analyse(k, args, dict(kw, BLOCK_N=512, num_warps=4), 16, grid)})
    return out


def _tag_everything(kernel):
    """A copy of a @triton.jit kernel whose every tl.load/tl.store carries evict_first."""
    import importlib.util
    import inspect
    import tempfile
    import textwrap

    src = textwrap.dedent(inspect.getsource(kernel.fn))
    src = src[src.index("def "):]  # drop the decorator
    src = src.replace("mask=mask,", 'mask=mask, eviction_policy="evict_first",')
    src = src.replace("mask=mask)", 'mask=mask, eviction_policy="evict_first")')
    path = os.path.join(tempfile.mkdtemp(), "static_tagged_kernel.py")
    with open(path, "w") as f:  # triton.jit reads a kernel's source from its file
        f.write("import triton\nimport triton.language as tl\nfrom kernels.triton import _launch\n\n\n"
                "@triton.jit\n" + src)
    spec = importlib.util.spec_from_file_location("static_tagged_kernel", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, kernel.fn.__name__)


if __name__ == "__main__" and "--broken" in sys.argv:
    sys.path.insert(0, ROOT)
    json.dump(_broken_variants(), sys.stdout)
