"""Compile every csrc/cuda/*.cu for real GPUs without one and report each kernel's
registers, spills and shared memory (ptxas -v), per architecture; and, with --sass, what
the sm_90a machine code of the memory-bound row kernels does at the issue-14 benchmark
shapes (see sass_report below).

    python -m kernels.cuda.compile_check            # table; exit 1 on any spill
    python -m kernels.cuda.compile_check --json
    python -m kernels.cuda.compile_check --sass     # row kernels at the benchmark shapes

The .cu files include no torch headers (entry.cpp holds the torch glue), so each
compiles in seconds. The -gencode targets are those of the default
TORCH_CUDA_ARCH_LIST: sm_80 (A100) and sm_90a (H100).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

from ._build import CSRC, build_root, cuda_home

GENCODES = ("-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90a,code=sm_90a")
# What torch.utils.cpp_extension passes nvcc, so these builds see the same code.
TORCH_NVCC_FLAGS = ("-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
                    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
                    "--expt-relaxed-constexpr")

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\w+)'")
_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def cu_files() -> list[str]:
    return sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cu")))


def nvcc_path() -> str | None:
    home = cuda_home()
    return os.path.join(home, "bin", "nvcc") if home else shutil.which("nvcc")


def parse_ptxas(log: str, source: str) -> list[dict]:
    """One record per (kernel, arch) from `ptxas -v` output."""
    records, current = [], None
    for line in log.splitlines():
        m = _ENTRY.search(line)
        if m:
            current = {"file": os.path.basename(source), "kernel": m.group(1), "arch": m.group(2),
                       "registers": None, "spill_stores": 0, "spill_loads": 0, "stack": 0, "smem": 0}
            records.append(current)
            continue
        if current is None:
            continue
        m = _SPILL.search(line)
        if m:
            current["stack"], current["spill_stores"], current["spill_loads"] = map(int, m.groups())
        m = _USED.search(line)
        if m:
            current["registers"] = int(m.group(1))
            current["smem"] = int(m.group(2) or 0)
    return records


def demangle(names: list[str]) -> dict[str, str]:
    if not names or shutil.which("c++filt") is None:
        return {n: n for n in names}
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}


def compile_one(source: str, nvcc: str) -> tuple[list[dict], str]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [nvcc, "-std=c++17", "-O3", f"-I{CSRC}", *TORCH_NVCC_FLAGS, *GENCODES, "-Xptxas", "-v", "-c", source,
               "-o", os.path.join(tmp, "out.o")]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"nvcc failed on {source}:\n{log[-4000:]}")
    return parse_ptxas(log, source), log


def check(files: list[str] | None = None, jobs: int = 2) -> list[dict]:
    nvcc = nvcc_path()
    if nvcc is None:
        raise RuntimeError("nvcc not found (set CUDA_HOME)")
    files = files or cu_files()
    records = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        for recs, _ in pool.map(lambda f: compile_one(f, nvcc), files):
            records += recs
    names = demangle(sorted({r["kernel"] for r in records}))
    for r in records:
        r["name"] = names[r["kernel"]]
    return records


def problems(records: list[dict]) -> list[str]:
    return [f"{r['arch']} {r['file']}: {r['name']} spills {r['spill_stores']} B stores / {r['spill_loads']} B loads "
            f"({r['registers']} registers)" for r in records if r["spill_stores"] or r["spill_loads"]]


# ---------------------------------------------------------------------------------------
# SASS facts of the memory-bound row kernels (softmax, layer_norm, add_layer_norm)
#
# Each .cu is compiled to an sm_90a cubin (ptxas -v gives registers, spills, static shared
# memory) and disassembled with cuobjdump -sass. Per kernel, read from the machine code:
#  - global loads/stores by width (LDG/STG .128 = 16 bytes; .64, 32-bit, .U16 ... narrower),
#    split into those inside loops (a backward branch's range: the main loops) and the rest;
#  - local memory: any LDL/STL (spills, or arrays the compiler could not keep in registers);
#  - MUFU.EX2 instructions (exp2), and per row element: in a register kernel over the
#    elements a thread holds (its head and tail excepted), in a looping kernel summed over
#    its passes (loop_passes, ex2_per_element);
#  - loads in flight per thread: walking from the start of the kernel, and from the start of
#    each loop body, the bytes of global loads issued before the first instruction that reads
#    a register one of them wrote (all of them are outstanding together at that point); the
#    largest such window is the thread's.
# With the block size and dynamic shared memory the launcher uses at a shape (ROW_LAUNCHES,
# which tests/test_static_cuda.py checks against the launchers themselves):
#  - resident warps per SM (H100: 64K registers allocated per warp in 256-register units
#    across 4 sub-partitions, 228 KB shared memory with 1 KB reserved per block, 64 warps,
#    32 blocks, 2048 threads);
#  - bytes of loads in flight per SM = loads in flight per thread x threads per block x
#    resident blocks (Little's law wants 3 TB/s x ~1 us / 132 SMs ~ 23 KB; we ask 32 KB).
# ---------------------------------------------------------------------------------------
SASS_ARCH = "sm_90a"
H100 = dict(regs_per_sm=65536, reg_unit=256, subpartitions=4, max_warps=64, max_blocks=32, max_threads=2048,
            smem_per_sm=228 * 1024, smem_reserved_per_block=1024, smem_optin=227 * 1024)
MIN_WARPS = 16
MIN_INFLIGHT = 32 * 1024

_FUNC = re.compile(r"^\s*Function : (\S+)")
_INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)\s*(.*?)\s*;")
_REG = re.compile(r"(?<![\w.])R(\d+)(\.64|\.128)?")


def cuobjdump_path() -> str | None:
    home = cuda_home()
    candidates = [os.path.join(home, "bin", "cuobjdump")] if home else []
    candidates.append(shutil.which("cuobjdump") or "")
    try:  # Triton's wheel bundles one
        import triton
        candidates.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))
    except ImportError:
        pass
    return next((c for c in candidates if c and os.path.isfile(c)), None)


def access_width(op: str) -> int:
    """Bits moved by one LDG/STG/LDS/STS variant."""
    mods = op.split(".")[1:]
    if "128" in mods:
        return 128
    if "64" in mods:
        return 64
    if any(m in ("U16", "S16") for m in mods):
        return 16
    if any(m in ("U8", "S8") for m in mods):
        return 8
    return 32


def parse_sass(text: str) -> dict[str, list[tuple]]:
    """{mangled kernel: [(address, predicate, opcode, operand text), ...]}"""
    funcs, current = {}, None
    for line in text.splitlines():
        m = _FUNC.match(line)
        if m:
            current = funcs.setdefault(m.group(1), [])
            continue
        m = _INSTR.search(line)
        if m and current is not None:
            current.append((int(m.group(1), 16), (m.group(2) or "").strip(), m.group(3), m.group(4)))
    return funcs


def _regs(text: str, width_bits: int = 32) -> set[int]:
    out = set()
    for m in _REG.finditer(text):
        base = int(m.group(1))
        count = {".64": 2, ".128": 4}.get(m.group(2) or "", max(1, width_bits // 32))
        out.update(range(base, base + count))
    return out


def _split_operands(ops: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in ops:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


def _reads_writes(op: str, ops: str) -> tuple[set[int], set[int]]:
    parts = _split_operands(ops)
    base = op.split(".")[0]
    if base in ("STG", "STS", "ST", "STL", "RED", "ATOMG"):
        reads = set()
        for i, p in enumerate(parts):  # the data operand spans the access width
            reads |= _regs(p, access_width(op) if i == len(parts) - 1 and "[" not in p else 32)
        return reads, set()
    if not parts:
        return set(), set()
    first = parts[0]
    loads = base in ("LDG", "LDS", "LD", "LDL")
    writes = _regs(first, access_width(op) if loads else 32) if first.startswith("R") else set()
    reads = set()
    for p in parts[1:] if first.startswith(("R", "P")) else parts:
        reads |= _regs(p)
    return reads, writes


def loops_of(instrs) -> list[tuple[int, int]]:
    """(first, last) address of every backward branch's range."""
    out = []
    for addr, _, op, ops in instrs:
        if op.split(".")[0] == "BRA":
            m = re.search(r"0x([0-9a-f]+)", ops)
            if m and int(m.group(1), 16) <= addr:
                out.append((int(m.group(1), 16), addr))
    return out


def inflight_bytes_per_thread(instrs, loops) -> int:
    starts = [instrs[0][0]] + [a for a, _ in loops] if instrs else []
    best = 0
    for start in starts:
        pending, total = set(), 0
        for addr, pred, op, ops in instrs:
            if addr < start:
                continue
            reads, writes = _reads_writes(op, ops)
            if reads & pending:
                break
            if op.startswith("LDG"):
                total += access_width(op) // 8
                pending |= writes
            if (op.split(".")[0] in ("EXIT", "RET") and not pred) or any(addr == last for _, last in loops):
                break  # the end of the kernel, or of the loop body
        best = max(best, total)
    return best


def loop_passes(instrs, loops) -> list[dict]:
    """Per loop: its MUFU.EX2 and the bytes of global and shared accesses of one iteration.
    Loops the compiler versioned (the same pass for aligned and unaligned operands) differ
    only in their reads: a pass is identified by its EX2 count and its stores, and counted
    once."""
    passes = {}
    for lo, hi in loops:
        p = {"ex2": 0, "LDG": 0, "STG": 0, "LDS": 0, "STS": 0}
        stores = {}
        for addr, _, op, _ops in instrs:
            if lo <= addr <= hi:
                base = op.split(".")[0]
                if op.startswith("MUFU.EX2"):
                    p["ex2"] += 1
                elif base in p:
                    p[base] += access_width(op) // 8
                    if base in ("STG", "STS"):
                        stores[op] = stores.get(op, 0) + 1
        passes.setdefault((p["ex2"], tuple(sorted(stores.items()))), p)
    return list(passes.values())


def ex2_per_element(passes, row_elem: int, stage_elem: int) -> float:
    """exp2 per row element of a looping kernel: each pass's EX2 over the elements one
    iteration covers (row bytes moved through global memory at `row_elem` bytes each, or
    through shared memory at `stage_elem`), summed over the passes."""
    total = 0.0
    for p in passes:
        elems = max(p["LDG"] // row_elem, p["STG"] // row_elem, p["LDS"] // stage_elem, p["STS"] // stage_elem)
        if p["ex2"] and elems:
            total += p["ex2"] / elems
    return round(total, 2)


def sass_facts(instrs) -> dict:
    loops = loops_of(instrs)
    in_loop = lambda a: any(lo <= a <= hi for lo, hi in loops)  # noqa: E731
    facts = {"loads": {}, "stores": {}, "loop_loads": {}, "loop_stores": {}, "local": 0, "ex2": 0,
             "loops": len(loops), "inflight_per_thread": inflight_bytes_per_thread(instrs, loops),
             "passes": loop_passes(instrs, loops)}
    for addr, _, op, _ops in instrs:
        base = op.split(".")[0]
        if base in ("LDL", "STL"):
            facts["local"] += 1
        if op.startswith("MUFU.EX2"):
            facts["ex2"] += 1
        if base in ("LDG", "STG"):
            key = ("loop_" if in_loop(addr) else "") + ("loads" if base == "LDG" else "stores")
            w = access_width(op)
            facts[key][w] = facts[key].get(w, 0) + 1
    return facts


def occupancy(registers: int, static_smem: int, dynamic_smem: int, threads: int, gpu=H100) -> dict:
    warps = (threads + 31) // 32
    regs_per_warp = -(-max(registers, 1) * 32 // gpu["reg_unit"]) * gpu["reg_unit"]
    warps_by_regs = gpu["subpartitions"] * ((gpu["regs_per_sm"] // gpu["subpartitions"]) // regs_per_warp)
    smem = static_smem + dynamic_smem + gpu["smem_reserved_per_block"]
    blocks = min(gpu["max_blocks"], gpu["max_threads"] // threads, gpu["max_warps"] // warps, warps_by_regs // warps,
                 gpu["smem_per_sm"] // smem)
    return {"blocks_per_sm": blocks, "warps_per_sm": blocks * warps}


def short_name(demangled: str) -> str:
    """'void gptk::cuda::(anonymous namespace)::k<float, 256>(float const*, ...)' -> 'k<float, 256>'"""
    depth, cut = 0, len(demangled)
    for i, ch in enumerate(demangled):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0 and not demangled[:i].endswith("(anonymous namespace"):
            if demangled[i:].startswith("(anonymous namespace)"):
                continue
            cut = i
            break
    head = demangled[:cut]
    depth, start = 0, 0
    for i, ch in enumerate(head):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif depth == 0 and head[i:i + 2] == "::":
            start = i + 2
        elif depth == 0 and ch == " ":
            start = i + 1
    return head[start:].replace("(anonymous namespace)::", "")


def compile_sass(source: str, extra_flags=(), arch: str = SASS_ARCH, csrc: str = CSRC) -> dict[str, dict]:
    """{short kernel name: {"registers", "spill", "smem", "facts"}} for one .cu, cached per
    content hash of csrc/ (and the flags) under the build cache."""
    nvcc, dump = nvcc_path(), cuobjdump_path()
    if nvcc is None or dump is None:
        raise RuntimeError("nvcc or cuobjdump not found (set CUDA_HOME)")
    h = hashlib.sha256(repr((arch, tuple(extra_flags), os.path.basename(source))).encode())
    for path in sorted(glob.glob(os.path.join(csrc, "**", "*.*"), recursive=True)):
        h.update(path.encode()[len(csrc):])
        with open(path, "rb") as f:
            h.update(f.read())
    with open(source, "rb") as f:
        h.update(f.read())
    cache = os.path.join(build_root(), "sass", h.hexdigest()[:16] + ".json")
    if os.path.isfile(cache):
        with open(cache) as f:
            out = json.load(f)
        for k in out.values():  # JSON made the access widths strings
            for key in ("loads", "stores", "loop_loads", "loop_stores"):
                k["facts"][key] = {int(w): c for w, c in k["facts"][key].items()}
        return out
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "out.cubin")
        cmd = [nvcc, "-std=c++17", "-O3", f"-I{csrc}", *TORCH_NVCC_FLAGS, f"-arch={arch}", "-cubin", "-Xptxas", "-v",
               *extra_flags, source, "-o", cubin]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"nvcc failed on {source}:\n{(proc.stdout + proc.stderr)[-4000:]}")
        ptxas = parse_ptxas(proc.stdout + proc.stderr, source)
        sass = subprocess.run([dump, "-sass", cubin], capture_output=True, text=True, check=True).stdout
    funcs = parse_sass(sass)
    names = demangle(sorted(funcs))
    out = {}
    for r in ptxas:
        if r["kernel"] not in funcs:
            continue
        out[short_name(names[r["kernel"]])] = {
            "registers": r["registers"], "spill": r["spill_stores"] + r["spill_loads"] + r["stack"], "smem": r["smem"],
            "facts": sass_facts(funcs[r["kernel"]])}
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    with open(cache + ".tmp", "w") as f:
        json.dump(out, f)
    os.replace(cache + ".tmp", cache)
    return out


# What each row kernel moves: row tensors loaded and stored (each with a peeled head and
# tail: 2 narrow accesses apiece, outside the main loops), and the scalar accesses that are
# not row data (the layer norm shift, statistics, parameter-gradient partials). `elems`:
# elements a thread holds in a register kernel (for exp2 per element). `rows`: False for
# the workspace column reduce (fp32 partials, not row data: reported, not held to 16 bytes).
ROW_KERNELS = {
    "softmax_fwd_regs": dict(loads=1, stores=1, extra=0, elems=16),
    "softmax_bwd_regs": dict(loads=2, stores=1, extra=0, elems=16),
    "softmax_fwd_smem": dict(loads=1, stores=1, extra=0),
    "softmax_bwd_smem": dict(loads=2, stores=1, extra=0),
    "softmax_fwd_stream": dict(loads=1, stores=1, extra=2),  # pass 2 re-reads the head and tail
    "softmax_bwd_stream": dict(loads=2, stores=1, extra=4),
    "ln_fwd_regs<*, false>": dict(loads=3, stores=1, extra=3, elems=8),   # shift, mean, rstd
    "ln_fwd_regs<*, true>": dict(loads=4, stores=2, extra=4, elems=8),    # shift of x and r, mean, rstd
    "ln_fwd_smem<*, false>": dict(loads=3, stores=1, extra=2),
    "ln_fwd_smem<*, true>": dict(loads=4, stores=2, extra=2),
    "ln_bwd_regs": dict(loads=4, stores=1, extra=2, elems=8),             # mean, rstd
    # one 16-byte pack per thread and row; + the fp32 partials of dw and db (a pack's
    # elements each); in the row loop mean and rstd
    "ln_bwd_fused": dict(loads=4, stores=1, extra=2 * 8, packs=1, loop_extra=2),
    "ln_bwd_smem": dict(loads=4, stores=1, extra=2),
    # per unrolled row: mean and rstd (8 in the loop); VEC fp32 partials of dw and db each
    "norm_param_partials_vec": dict(loads=2, stores=0, extra=2 * 16, loop_extra=8),
    "column_sum_kernel": dict(loads=0, stores=0, extra=0, rows=False),
}


def row_kernel_role(name: str) -> dict | None:
    base = name.split("<")[0]
    last = name.rsplit(",", 1)[-1].strip().rstrip(">") if "," in name else ""
    return ROW_KERNELS.get(base) or ROW_KERNELS.get(f"{base}<*, {last}>")


# The launches of each issue-14 benchmark case on an H100 (227 KB of opt-in shared memory):
# (kernel, threads per block, dynamic shared memory bytes). tests/test_static_cuda.py asserts
# the launchers (run by the CPU emulator) make exactly these.
def _bench_launches():
    cases = {}
    for t, tn in (("__nv_bfloat16", "bf16"), ("float", "fp32")):
        size = 2 if t == "__nv_bfloat16" else 4
        vec = 16 // size
        staged = lambda n: -(-(n + vec) // vec) * vec * size  # noqa: E731  (n + phase, whole packs)
        cases[("softmax fwd", tn, 8192, 4096)] = [(f"softmax_fwd_regs<{t}, 256>", 256, 0)]
        wide = staged(50257) * 4 // size  # the row widened to fp32: one block of 1024 threads per SM
        cases[("softmax fwd", tn, 8192, 50257)] = [(f"softmax_fwd_smem<{t}, float, 1024>", 1024, wide)]
        cases[("softmax bwd", tn, 8192, 4096)] = [(f"softmax_bwd_regs<{t}, 256>", 256, 0)]
        two = 2 * staged(50257)
        cases[("softmax bwd", tn, 8192, 50257)] = (
            [(f"softmax_bwd_smem<{t}, 1024>", 1024, two)] if two <= H100["smem_optin"]
            else [(f"softmax_bwd_stream<{t}, true>", 512, 0)])
        for n in (1024, 4096):
            fwd = n // 8  # 8 elements per thread
            bwd = n // vec  # a 16-byte pack per thread
            for op, add in (("layer_norm", "false"), ("add_layer_norm", "true")):
                cases[(f"{op} fwd", tn, 16384, n)] = [(f"ln_fwd_regs<{t}, {fwd}, {add}>", fwd, 0)]
                # dx and the dw/db partials in one kernel: blocks of 512 threads (rows of 128
                # or 256 threads, 4 or 2 at a time, at 1024 wide; one row at 4096) or of one
                # 1024-thread row (fp32 at 4096), then the partials' column sum
                cases[(f"{op} bwd", tn, 16384, n)] = [(f"ln_bwd_fused<{t}, {bwd}>", max(512, bwd), 0),
                                                      (f"column_sum_kernel<{t}>", 1024, 0)]
    return cases


ROW_LAUNCHES = _bench_launches()
ROW_SOURCES = ("softmax.cu", "layer_norm.cu", "gelu_linear.cu")


def row_kernel_problems(name: str, k: dict, threads: int, dyn_smem: int) -> tuple[dict, list[str]]:
    """The report line's numbers for one launch, and every rule it breaks."""
    f = k["facts"]
    occ = occupancy(k["registers"], k["smem"], dyn_smem, threads)
    inflight = f["inflight_per_thread"] * threads * occ["blocks_per_sm"]
    role = row_kernel_role(name) or dict(loads=1, stores=1, extra=0)
    wide_ld = f["loads"].get(128, 0) + f["loop_loads"].get(128, 0)
    wide_st = f["stores"].get(128, 0) + f["loop_stores"].get(128, 0)
    narrow = sum(v for w, v in {**f["loads"]}.items() if w < 128) + sum(v for w, v in f["stores"].items() if w < 128)
    loop_narrow = (sum(v for w, v in f["loop_loads"].items() if w < 128)
                   + sum(v for w, v in f["loop_stores"].items() if w < 128))
    elems = role.get("elems")
    ex2 = f["ex2"]
    args = [a.strip() for a in name[name.index("<") + 1:-1].split(",")] if "<" in name else []
    sizes = {"float": 4, "__half": 2, "__nv_bfloat16": 2}
    row_elem = sizes.get(args[0], 2) if args else 2
    stage_elem = sizes.get(args[1], row_elem) if len(args) > 1 else row_elem  # softmax_fwd_smem<T, S, ...>
    row = {"kernel": name, "threads": threads, "dyn_smem": dyn_smem, "registers": k["registers"],
           "spill": k["spill"], "local": f["local"], "wide_loads": wide_ld, "wide_stores": wide_st,
           "narrow": narrow, "loop_narrow": loop_narrow, "loops": f["loops"], "warps_per_sm": occ["warps_per_sm"],
           "inflight_per_thread": f["inflight_per_thread"], "inflight_per_sm": inflight, "ex2": ex2,
           "ex2_per_elem": (round((ex2 - 2) / elems, 2) if elems and ex2 else
                            ex2_per_element(f.get("passes", []), row_elem, stage_elem) if ex2 else None)}
    bad = []
    if role.get("rows", True):
        # Register kernels (no loop): each of a thread's packs is one 16-byte access, and the
        # narrow ones are the peeled heads and tails (which the compiler may version per
        # optional operand: up to 4 copies). Looping kernels: nothing narrow in the loops.
        size = 4 if "<float" in name else 2
        packs = role.get("packs") or (max(1, elems * size // 16) if elems else 1)
        register_kernel = bool(elems or role.get("packs"))
        allowed = 2 * (role["loads"] + role["stores"]) + role["extra"]
        if loop_narrow > role.get("loop_extra", 0):
            bad.append(f"{loop_narrow} accesses narrower than 16 bytes inside its main loops")
        if narrow > (4 * allowed if register_kernel else allowed):
            bad.append(f"{narrow} narrow accesses outside loops: more than peeled heads and tails")
        if wide_ld < packs * role["loads"] or wide_st < packs * role["stores"]:
            bad.append(f"row data not in 16-byte accesses ({wide_ld} LDG.128 for {role['loads']} row tensors x "
                       f"{packs} packs, {wide_st} STG.128 for {role['stores']} x {packs})")
    if f["local"] or k["spill"]:
        bad.append(f"local memory ({f['local']} LDL/STL, {k['spill']} bytes spilled or on the stack)")
    if occ["warps_per_sm"] < MIN_WARPS:
        bad.append(f"{occ['warps_per_sm']} resident warps per SM (< {MIN_WARPS})")
    if role.get("rows", True) and inflight < MIN_INFLIGHT:
        bad.append(f"{inflight} bytes of loads in flight per SM (< {MIN_INFLIGHT})")
    return row, bad


def sass_report(extra_flags=(), csrc: str = CSRC) -> tuple[list[dict], list[str]]:
    """One row per (benchmark case, launch), and every rule broken."""
    kernels = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=int(os.environ.get("MAX_JOBS", "2"))) as pool:
        for res in pool.map(lambda f: compile_sass(os.path.join(csrc, "cuda", f), extra_flags, csrc=csrc),
                            ROW_SOURCES):
            kernels.update(res)
    rows, bad = [], []
    for (op, dtype, r, n), launches in ROW_LAUNCHES.items():
        for name, threads, dyn in launches:
            if name not in kernels:
                bad.append(f"{op} {dtype} {r}x{n}: {name} not found in the sm_90a code")
                continue
            row, problems_ = row_kernel_problems(name, kernels[name], threads, dyn)
            row.update(case=f"{op} {dtype} {r}x{n}")
            rows.append(row)
            bad += [f"{row['case']}: {name}: {p}" for p in problems_]
    return rows, bad


def print_sass_report(rows, bad, out=sys.stdout):
    print(f"{'case':32} {'kernel':44} {'thr':>4} {'regs':>4} {'LDG128':>6} {'STG128':>6} {'narrow':>6} "
          f"{'loop-narrow':>11} {'local':>5} {'warps/SM':>8} {'inflight/thr':>12} {'inflight/SM':>11} {'EX2':>4} "
          f"{'EX2/elem':>8}", file=out)
    for r in rows:
        print(f"{r['case']:32} {r['kernel']:44} {r['threads']:4} {r['registers']:4} {r['wide_loads']:6} "
              f"{r['wide_stores']:6} {r['narrow']:6} {r['loop_narrow']:11} {r['local']:5} {r['warps_per_sm']:8} "
              f"{r['inflight_per_thread']:12} {r['inflight_per_sm']:11} {r['ex2']:4} "
              f"{'' if r['ex2_per_elem'] is None else r['ex2_per_elem']:>8}", file=out)
    for line in bad:
        print("FAIL:", line, file=out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernels.cuda.compile_check", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--sass", action="store_true",
                        help="the sm_90a SASS report of the row kernels at the issue-14 benchmark shapes")
    parser.add_argument("files", nargs="*", help="default: every csrc/cuda/*.cu")
    args = parser.parse_args(argv)
    if args.sass:
        rows, bad = sass_report()
        if args.json:
            print(json.dumps({"rows": rows, "problems": bad}, indent=1))
        else:
            print_sass_report(rows, bad)
        return 1 if bad else 0
    records = check(args.files or None, jobs=int(os.environ.get("MAX_JOBS", "2")))
    if args.json:
        print(json.dumps(records, indent=1))
    else:
        for r in records:
            print(f"{r['arch']:7} regs {r['registers']:3} spill {r['spill_stores']:3}/{r['spill_loads']:3} "
                  f"smem {r['smem']:6}  {r['file']}: {r['name']}")
    bad = problems(records)
    for line in bad:
        print("SPILL:", line, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
