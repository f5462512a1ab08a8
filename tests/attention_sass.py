"""Static facts about the Triton attention kernels as launched, from their sm_90 SASS, with no GPU:
run in a child process (no TRITON_INTERPRET) by tests/test_attention_sass.py.

benchmarks.stub_driver makes Triton compile for an H100 (132 SMs) and launch nothing, so
`kernels.attention(...)` on CPU tensors goes through the real launcher (split heuristics,
tiling, specialisation) and hands over the exact cubins a GPU would run; cuobjdump reads them.

    python tests/attention_sass.py   # one JSON record per (shape, kernel)
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

SMS = 132
REGS_PER_SM = 65536
SHARED_PER_SM = 233472  # 228 KB on sm_90, of which 1 KB per block is reserved
MAX_BLOCKS_PER_SM = 32
MAX_THREADS_PER_SM = 2048

# (B, H, Tk, D) of the decode targets: the issue's B8 H16 Tk4096 D128 and GPT-2's decode;
# then a batch whose B H fills the 132 SMs twice over (one launch, no key split, no combine).
DECODE_SHAPES = [(8, 16, 4096, 128), (1, 12, 1024, 64), (24, 12, 500, 64)]
# GPT-2's decode as a CUDA graph replays it: the static cache read whole with kv_lengths.
LENGTHS_SHAPES = [(1, 12, 1024, 64)]

_INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P[0-9T]\s+)?([A-Z][A-Z0-9]*(?:\.[A-Z0-9_]+)*)\s*([^;]*);")


def instructions(sass: str, kernel: str) -> list[tuple[int, str, str]]:
    """(address, opcode, operands) of one kernel's SASS."""
    body = sass.split(f"Function : {kernel}", 1)[1].split("Function :", 1)[0]
    return [(int(m.group(1), 16), m.group(3), m.group(4)) for m in _INSTR.finditer(body)]


def main_loop(instrs):
    """The instructions of the outermost backward branch's range (the key loop)."""
    best = None
    for addr, op, args in instrs:
        m = re.match(r"0x([0-9a-f]+)", args.strip())
        if op.startswith("BRA") and m and int(m.group(1), 16) < addr:
            start = int(m.group(1), 16)
            if best is None or addr - start > best[1] - best[0]:
                best = (start, addr)
    return [] if best is None else [i for i in instrs if best[0] <= i[0] <= best[1]]


def blocks_per_sm(registers: int, threads: int, shared: int) -> int:
    per_block_regs = ((registers + 7) // 8) * 8 * threads
    return min(REGS_PER_SM // per_block_regs, SHARED_PER_SM // (shared + 1024), MAX_BLOCKS_PER_SM,
               MAX_THREADS_PER_SM // threads)


def _cuobjdump(args, cubin: bytes) -> str:
    from kernels.triton.compile_check import _cuobjdump as tool
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([tool(), *args, f.name], capture_output=True, text=True, check=True).stdout


def decode_records() -> list[dict]:
    os.environ.pop("TRITON_INTERPRET", None)
    from benchmarks import stub_driver
    stub_driver.install()
    import torch

    import kernels
    from kernels.triton import attention as attn
    from kernels.triton.compile_check import record_launches

    records = []
    for B, H, Tk, D, with_lengths in [(*s, False) for s in DECODE_SHAPES] + [(*s, True) for s in LENGTHS_SHAPES]:
        stub_driver.loaded_cubins.clear()
        q = torch.randn(B, H, 1, D, dtype=torch.bfloat16)
        k = torch.randn(B, H, Tk, D, dtype=torch.bfloat16)
        lengths = torch.full((B,), Tk, dtype=torch.long) if with_lengths else None
        # The kernels launched (a cubin already loaded for an earlier shape is not loaded again),
        # then the launch itself, for the cubins.
        with record_launches([attn._attn_decode_kernel, attn._attn_combine_kernel]) as calls, torch.no_grad():
            kernels.attention(q, k, k, causal=True, kv_lengths=lengths, backend="triton")
        launches = sorted(kernel.__name__ for kernel, *_ in calls)
        with torch.no_grad():
            kernels.attention(q, k, k, causal=True, kv_lengths=lengths, backend="triton")
        tq_rows, block_n, warps = attn.decode_tiling(1, torch.bfloat16, D)
        n_splits, _ = attn.decode_gemv_splits(Tk, B * H, block_n, "cpu")
        cubin = stub_driver.loaded_cubins["_attn_decode_kernel"]
        usage = _cuobjdump(["--dump-resource-usage"], cubin)
        regs = int(re.search(r"REG:(\d+)", usage).group(1))
        shared = int(re.search(r"SHARED:(\d+)", usage).group(1))
        local = sum(int(m) for m in re.findall(r"(?:LOCAL|STACK):(\d+)", usage))
        instrs = instructions(_cuobjdump(["-sass"], cubin), "_attn_decode_kernel")
        loop = main_loop(instrs)
        loads = [op for _, op, _ in loop if op.startswith("LDG")]
        first_math = next((a for a, op, _ in loop if op.split(".")[0] in ("FFMA", "FMUL", "FADD")), None)
        last_load = max((a for a, op, _ in loop if op.startswith("LDG")), default=None)
        threads = warps * 32
        per_block = 16 * sum(op.startswith("LDG.E.128") for op in loads) * threads
        grid = n_splits * B * H
        resident = min(blocks_per_sm(regs, threads, shared), grid / SMS)
        records.append({
            "shape": f"B{B} H{H} Tq1 Tk{Tk} D{D} bf16" + (" kv_lengths" if with_lengths else ""), "launches": launches,
            "grid": grid, "splits": n_splits, "block_n": block_n, "threads": threads, "registers": regs,
            "local_bytes": local, "local_instructions": sum(op.startswith(("LDL", "STL")) for _, op, _ in instrs),
            "loop_loads": loads, "loads_before_math": last_load is not None and first_math is not None
            and last_load < first_math, "loop_instructions": len(loop), "bytes_per_block_iteration": per_block,
            "blocks_per_sm": blocks_per_sm(regs, threads, shared), "bytes_in_flight_per_sm": resident * per_block,
            "kv_bytes_per_sm": 2 * B * H * Tk * D * 2 / SMS,
        })
    return records


def prefill_records() -> list[dict]:
    """Every 16-bit forward and backward tiling the autotuner may pick on sm_90 (the Hopper
    space: contiguous tensors, every stride a multiple of 16) at D = 64, 128 and 256, pinned
    and launched for sm_90: its HGMMA and HMMA counts, registers and local memory; then one
    unpinned launch per D, which must go through the Hopper space's autotuner."""
    os.environ.pop("TRITON_INTERPRET", None)
    from benchmarks import stub_driver
    stub_driver.install()
    import torch

    from kernels.triton import attention as attn

    os.environ["GPTK_AUTOTUNE"] = "0"  # the kernel not pinned in a backward launch: its first config
    records = []
    for D in (64, 128, 256):
        q, k, v, do = (torch.randn(1, 2, 300, D, dtype=torch.bfloat16) for _ in range(4))
        lse = torch.zeros(1, 2, 300)
        for kind, config, tma in ((kind, config, tma) for kind in ("fwd", "dkdv", "dq")
                                  for config in attn.configs_for(kind, torch.bfloat16, D, hopper=True)
                                  for tma in (False, True)):
            stub_driver.loaded_cubins.clear()
            attn.TMA = tma  # GPTK_TMA=1
            try:
                if kind == "fwd":
                    attn.attention_forward(q, k, v, True, D ** -0.5, split=False, configs={kind: config})
                else:
                    attn.attention_backward(do, q, k, v, q, lse, True, D ** -0.5, configs={kind: config})
            finally:
                attn.TMA = False
            name = attn._KERNELS[kind].__name__
            if tma and kind == "dkdv" and D == 256:  # keeps cp.async: the build loaded just before
                assert name not in stub_driver.loaded_cubins
                cubin = plain_cubin
            else:
                cubin = plain_cubin = stub_driver.loaded_cubins[name]
            usage = _cuobjdump(["--dump-resource-usage"], cubin)
            ops = [op for _, op, _ in instructions(_cuobjdump(["-sass"], cubin), name)]
            records.append({"kind": kind, "D": D, "config": config, "kernel": name, "tma": tma,
                            "hgmma": sum(op.startswith("HGMMA") for op in ops),
                            "hmma": sum(op.startswith("HMMA") for op in ops),
                            "utmaldg": sum(op.startswith("UTMALDG") for op in ops),
                            "ldgsts": sum(op.startswith("LDGSTS") for op in ops),
                            "registers": int(re.search(r"REG:(\d+)", usage).group(1)),
                            "local_bytes": sum(int(m) for m in re.findall(r"(?:LOCAL|STACK):(\d+)", usage)),
                            "local_instructions": sum(op.startswith(("LDL", "STL")) for op in ops)})
        attn.attention_backward(do, q, k, v, q, lse, True, D ** -0.5)
        for kind in ("dkdv", "dq"):
            best = attn._TUNED[kind, True].best_config  # None unless this autotuner ran
            records.append({"kind": kind, "D": D, "unpinned": True,
                            "config": best and [best.kwargs["BLOCK_M"], best.kwargs["BLOCK_N"], best.num_warps,
                                                best.num_stages],
                            "expected": list(attn.configs_for(kind, torch.bfloat16, D, hopper=True)[0])})
    return records


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    json.dump({"decode": decode_records(), "prefill": prefill_records()}, sys.stdout)
