"""Read what a compiled kernel does to memory from its SASS, without a GPU.

A memory-bound row kernel reaches the bandwidth ceiling only if (a) its row data moves in
16-byte accesses, (b) nothing lives in local memory, (c) enough warps are resident per SM
to hide latency, and (d) enough bytes of loads are in flight per SM (Little's law on an
H100: 3 TB/s x ~1 us / 132 SMs ~ 23 KB; we ask for 32 KB). All four are visible in the
cubin: this module disassembles it with the `cuobjdump` bundled with Triton and measures
them. Used by `python -m kernels.triton.compile_check` and tests/test_static_triton.py.

The models, stated once:
- Access width: the width modifier of each LDG/STG (.128 = 16 B, .64 = 8 B, none = 4 B,
  .U16/.S16 = 2 B, .U8/.S8 = 1 B). Static instruction counts, per thread.
- Residency (sm_90: 65536 registers, 64 warps, 32 CTAs and 228 KB of shared memory per
  SM, 227 KB per CTA, 1 KB reserved per CTA): registers are allocated per warp in units of
  256 (8 per thread), so warps by registers = 65536 // (32 * ceil8(regs)); CTAs =
  min(32, warps_by_regs // warps_per_cta, 233472 // (shared + 1024), 64 // warps_per_cta),
  and no more than the grid spread over 132 SMs (ceil(grid / 132)) when a grid is given:
  a persistent kernel's residency is its grid's.
- Loads in flight: a warp keeps issuing loads until an instruction reads a register one of
  them writes (the scoreboard stall). Scanning the SASS in program order, a window is the
  run of global loads (LDG, and LDGSTS into shared memory) between two such dependent
  uses; the program's bytes in flight are the largest window (in the steady state of a
  streaming loop that is the loop body's batch of loads) x 32 lanes x warps per CTA, and
  the SM's are that x resident CTAs. Straight-line order is a model: a branch inside a
  window is not followed.
- exp per element: MUFU.EX2 instructions (static count per thread) x threads per CTA /
  elements one pass of the program covers (the caller says how many; a chunked kernel
  passes its chunk, so each chunk loop counts once per chunk).
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field

REGS_PER_SM = 65536
REG_ALLOC_UNIT = 8          # registers per thread are allocated in multiples of 8 (256 per warp)
MAX_WARPS_PER_SM = 64
MAX_CTAS_PER_SM = 32
SHARED_PER_SM = 233472      # 228 KB on sm_90
SHARED_RESERVED_PER_CTA = 1024

SMS = 132                   # H100 SXM

MIN_WARPS_PER_SM = 16
MIN_BYTES_IN_FLIGHT = 32 * 1024

_LINE = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")
_REG = re.compile(r"(?<![A-Z])R(\d+)(\.64)?\b")
_STORES = ("STG", "STS", "STL", "ST", "RED", "ATOM", "ATOMG", "ATOMS")


def tool(name: str) -> str:
    import triton
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def disassemble(cubin: bytes) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([tool("cuobjdump"), "-sass", f.name], capture_output=True, text=True,
                              check=True).stdout


@dataclass
class Instr:
    opcode: str          # e.g. "LDG.E.128"
    operands: str

    @property
    def base(self) -> str:
        return self.opcode.split(".")[0]

    @property
    def width(self) -> int:
        """Bytes per lane of a memory access."""
        mods = self.opcode.split(".")[1:]
        for mod, size in (("128", 16), ("64", 8), ("U16", 2), ("S16", 2), ("U8", 1), ("S8", 1)):
            if mod in mods:
                return size
        return 4

    def regs(self) -> list[list[int]]:
        """Register numbers per operand (a .64 operand names a pair)."""
        out = []
        for op in self.operands.split(","):
            regs = []
            for m in _REG.finditer(op):
                r = int(m.group(1))
                regs += [r, r + 1] if m.group(2) else [r]
            out.append(regs)
        return out


def parse(sass: str) -> list[Instr]:
    return [Instr(m.group(2), m.group(3).strip()) for m in _LINE.finditer(sass)]


def _is_global_load(i: Instr) -> bool:
    return i.base in ("LDG", "LDGSTS")


def load_windows(instrs: list[Instr]) -> list[int]:
    """Bytes per lane of each run of global loads issued before a dependent use (see module doc)."""
    windows, pending, current = [], set(), 0
    for i in instrs:
        regs = i.regs()
        sources = regs if i.base in _STORES or i.base == "LDGSTS" else regs[1:]
        if pending and any(r in pending for op in sources for r in op):
            windows.append(current)
            pending, current = set(), 0
        if _is_global_load(i):
            current += i.width
            if i.base == "LDG" and regs and regs[0]:
                first = regs[0][0]
                pending.update(range(first, first + max(1, i.width // 4)))
    if current:
        windows.append(current)
    return windows


@dataclass
class Report:
    kernel: str
    num_warps: int
    registers: int
    shared: int
    local: int
    loads: dict = field(default_factory=dict)    # width in bytes -> static count per thread
    stores: dict = field(default_factory=dict)
    tagged: dict = field(default_factory=dict)    # width -> count of evict_first (.EF) accesses
    local_accesses: int = 0                       # LDL/STL instructions
    ex2: int = 0
    barriers: int = 0
    window_bytes: int = 0                         # bytes per lane of the largest load window
    grid: int = 0                                 # programs launched (0: unknown, no limit)

    @property
    def ctas_per_sm(self) -> int:
        regs = -(-max(self.registers, 1) // REG_ALLOC_UNIT) * REG_ALLOC_UNIT
        by_regs = (REGS_PER_SM // (32 * regs)) // self.num_warps
        by_shared = SHARED_PER_SM // (self.shared + SHARED_RESERVED_PER_CTA)
        by_grid = -(-self.grid // SMS) if self.grid else MAX_CTAS_PER_SM
        return min(MAX_CTAS_PER_SM, by_regs, by_shared, MAX_WARPS_PER_SM // self.num_warps, by_grid)

    @property
    def warps_per_sm(self) -> int:
        return self.ctas_per_sm * self.num_warps

    @property
    def bytes_in_flight_per_cta(self) -> int:
        return self.window_bytes * 32 * self.num_warps

    @property
    def bytes_in_flight_per_sm(self) -> int:
        return self.bytes_in_flight_per_cta * self.ctas_per_sm

    def narrow(self, tagged=None) -> int:
        """Global accesses narrower than 16 bytes (static count per thread): all of them, only
        those tagged evict_first (peel and per-row scalars), or only untagged ones (row data)."""
        every = sum(n for m in (self.loads, self.stores) for w, n in m.items() if w < 16)
        marked = sum(n for w, n in self.tagged.items() if w < 16)
        return every if tagged is None else marked if tagged else every - marked

    def ex2_per_element(self, elements: int) -> float:
        return self.ex2 * 32 * self.num_warps / max(elements, 1)

    def line(self) -> str:
        def fmt(m):
            return " ".join(f"{n}x{w * 8}b" for w, n in sorted(m.items(), reverse=True)) or "-"
        return (f"regs={self.registers} smem={self.shared} local={self.local}+{self.local_accesses}ldl/stl "
                f"warps/SM={self.warps_per_sm} ({self.ctas_per_sm}x{self.num_warps}) "
                f"in-flight/SM={self.bytes_in_flight_per_sm // 1024}KB LDG[{fmt(self.loads)}] "
                f"STG[{fmt(self.stores)}] (peel/scalar .EF {fmt(self.tagged)}) EX2={self.ex2} BAR={self.barriers}")


def analyse(cubin: bytes, kernel: str, num_warps: int, shared: int, registers: int, local: int) -> Report:
    instrs = parse(disassemble(cubin))
    rep = Report(kernel, num_warps, registers, shared, local)
    for i in instrs:
        if i.base in ("LDG", "STG"):
            counts = rep.loads if i.base == "LDG" else rep.stores
            counts[i.width] = counts.get(i.width, 0) + 1
            if "EF" in i.opcode.split("."):
                rep.tagged[i.width] = rep.tagged.get(i.width, 0) + 1
        elif i.base in ("LDL", "STL"):
            rep.local_accesses += 1
        elif i.opcode.startswith("MUFU.EX2"):
            rep.ex2 += 1
        elif i.base == "BAR":
            rep.barriers += 1
    rep.window_bytes = max(load_windows(instrs), default=0)
    return rep


def problems(rep: Report, allowed_tagged: int = 0) -> list[str]:
    """The static checks of a memory-bound row kernel (issue 14). Row data must move in
    16-byte accesses: any narrower access fails unless it is tagged evict_first, the mark of
    a row's masked peel (head and tail, under 2 x 16 bytes per row) and of per-row scalars,
    and there may be at most `allowed_tagged` of those (static count per thread), so a body
    tagged by mistake still fails."""
    bad = []
    if rep.narrow(tagged=False):
        bad.append(f"{rep.narrow(tagged=False)} untagged global accesses narrower than 16 B: "
                   f"loads {rep.loads}, stores {rep.stores}, tagged {rep.tagged}")
    if rep.narrow(tagged=True) > allowed_tagged:
        bad.append(f"{rep.narrow(tagged=True)} peel/scalar accesses narrower than 16 B > {allowed_tagged} allowed")
    if rep.local or rep.local_accesses:
        bad.append(f"local memory: {rep.local} B, {rep.local_accesses} LDL/STL")
    if rep.warps_per_sm < MIN_WARPS_PER_SM:
        bad.append(f"{rep.warps_per_sm} resident warps per SM < {MIN_WARPS_PER_SM}")
    if rep.bytes_in_flight_per_sm < MIN_BYTES_IN_FLIGHT:
        bad.append(f"{rep.bytes_in_flight_per_sm} B of loads in flight per SM < {MIN_BYTES_IN_FLIGHT}")
    return bad
