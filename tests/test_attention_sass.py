"""The Triton attention kernels as launched, read from their sm_90 SASS without a GPU
(tests/attention_sass.py, in a child process: the interpreter replaces @triton.jit).

Decode (bf16, Tq=1) at the issue's B8 H16 Tk4096 D128 and GPT-2's B1 H12 Tk1024 D64 (also with
kv_lengths, as a CUDA-graph decode step runs it): K and V move in 16-byte loads, nothing touches
local memory, and the loads a key tile needs are all issued before its math, so the bytes in
flight per SM are the resident blocks' tiles: at least
the ~32 KB an H100 needs (Little's law: 3 TB/s x ~1 us / 132 SMs), or all of the K/V there is
when the cache is smaller than that. Prefill: every 16-bit forward and backward tiling of the
sm_90 space at D = 64 and 128 (forward and dQ at 256) runs on Hopper's warpgroup MMA (HGMMA),
not the sm_80 mma.sync (HMMA), spill-free; with GPTK_TMA=1 the same tilings load their tiles
by TMA (UTMALDG)."""
import functools
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IN_FLIGHT_PER_SM = 32 * 1024


@functools.lru_cache(maxsize=None)
def _records():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "attention_sass.py")], capture_output=True,
                          text=True, env=env, timeout=1200, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


@pytest.mark.parametrize("index", [0, 1, 2, 3], ids=["B8H16Tk4096D128", "B1H12Tk1024D64", "B24H12Tk500D64",
                                                   "B1H12Tk1024D64-kv_lengths"])
def test_decode_sass_streams_kv_in_16_byte_loads_with_enough_in_flight(index):
    r = _records()["decode"][index]
    assert r["local_bytes"] == 0 and r["local_instructions"] == 0, r
    assert r["loop_loads"] and set(r["loop_loads"]) == {"LDG.E.128"}, r["loop_loads"]
    assert r["loads_before_math"], "a key tile's math starts before all its loads are issued"
    assert r["bytes_in_flight_per_sm"] >= min(IN_FLIGHT_PER_SM, r["kv_bytes_per_sm"]) - 1, r
    # Keys split across programs (and a combine launch) only when B H cannot fill the 132 SMs
    # with two programs each.
    fills = r["grid"] // r["splits"] >= 2 * 132
    assert r["launches"] == (["_attn_decode_kernel"] if fills else ["_attn_combine_kernel", "_attn_decode_kernel"])
    assert (r["splits"] == 1) == fills


def test_prefill_uses_hgmma_on_sm90():
    """Every tiling of the sm_90 space (16-bit, strides multiples of 16) runs on Hopper's
    warpgroup MMA (HGMMA), not the sm_80 mma.sync (HMMA), without local memory: forward, dK/dV
    and dQ at D = 64 and 128, forward and dQ at D = 256. The D = 256 dK/dV keeps mma.sync tiles
    (a 64-key warpgroup tile would hold 2 x 64 x 256 fp32 accumulators: 256 registers per
    thread): recorded here, not hidden. An unpinned launch takes the sm_90 space."""
    records = _records()["prefill"]
    pinned = [r for r in records if not r.get("unpinned") and not r["tma"]]
    assert {(r["kind"], r["D"]) for r in pinned} == {(k, d) for k in ("fwd", "dkdv", "dq") for d in (64, 128, 256)}
    wgmma = [r for r in pinned if not (r["kind"] == "dkdv" and r["D"] == 256)]
    missing = [f"{r['kind']} D={r['D']} {r['config']}: {r['hmma']} HMMA" for r in wgmma if not r["hgmma"] or r["hmma"]]
    assert not missing, "tilings not on HGMMA on sm_90:\n" + "\n".join(missing)
    assert all(r["hmma"] and not r["hgmma"] for r in pinned if r not in wgmma)
    spilled = [f"{r['kind']} D={r['D']} {r['config']}: {r['local_bytes']} B, {r['registers']} registers"
               for r in pinned if r["local_bytes"] or r["local_instructions"]]
    assert not spilled, "local memory:\n" + "\n".join(spilled)
    unpinned = [r for r in records if r.get("unpinned")]
    assert len(unpinned) == 6 and all(r["config"] == r["expected"] for r in unpinned), unpinned


def test_prefill_tma_loads_on_sm90():
    """With GPTK_TMA=1 the same tilings load their tiles by tensor-memory copies (UTMALDG):
    the forward and dQ stream K and V with no cp.async left (LDGSTS; dK/dV still fetches its
    lse and delta vectors that way), on the same MMA as without, spill-free. The D = 256 dK/dV
    (mma.sync tiles, which spilled 744-808 B with TMA) keeps cp.async. Registers are recorded,
    not bounded: the forward needs fewer, dQ with Triton 3.8 a few more (benchmarks/NOTES.md)."""
    records = [r for r in _records()["prefill"] if not r.get("unpinned")]
    plain = {(r["kind"], r["D"], tuple(r["config"])): r for r in records if not r["tma"]}
    tma = [r for r in records if r["tma"] and not (r["kind"] == "dkdv" and r["D"] == 256)]
    kept = [r for r in records if r["tma"] and r not in tma]
    assert len(tma) + len(kept) == len(plain) and kept and not any(r["utmaldg"] for r in kept)
    bad = []
    for r in tma:
        base = plain[r["kind"], r["D"], tuple(r["config"])]
        if (not r["utmaldg"] or (r["kind"] != "dkdv" and r["ldgsts"]) or r["local_bytes"] or r["local_instructions"]
                or (r["hgmma"] > 0) != (base["hgmma"] > 0) or bool(r["hmma"]) != bool(base["hmma"])):
            bad.append(f"{r['kind']} D={r['D']} {r['config']}: {r['utmaldg']} UTMALDG, {r['ldgsts']} LDGSTS, "
                       f"{r['local_bytes']} B local, {r['registers']} registers (cp.async: {base['registers']}), "
                       f"HGMMA {r['hgmma']} (cp.async: {base['hgmma']})")
    assert not bad, "TMA builds:\n" + "\n".join(bad)
