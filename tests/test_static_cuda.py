"""Static proof, without a GPU, that the CUDA row kernels (softmax, layer_norm and
add_layer_norm, forward and backward) are built to run at the bandwidth ceiling at the
issue-14 benchmark shapes (softmax 8192x4096 and 8192x50257; layer norms 16384x1024 and
16384x4096; bf16 and fp32).

Each .cu is compiled for sm_90a by nvcc and disassembled (cuobjdump -sass); every kernel
those shapes launch is read instruction by instruction (kernels/cuda/compile_check.py,
sass_report, states the model). A case fails when row data moves in accesses narrower
than 16 bytes (peeled heads and tails excepted; nothing narrow in a main loop), when local
memory appears, when fewer than 16 warps fit per SM, or when fewer than 32 KB of loads can
be in flight per SM. Each rule is shown to fire on a deliberately broken build, and the
launches assumed per shape are checked against the launchers themselves (run by the CPU
emulator, dry: no kernel executes).

    python -m kernels.cuda.compile_check --sass     # the same report, as a table
"""
import functools
import os
import shutil

import pytest

from kernels.cuda import compile_check as cc

pytestmark = pytest.mark.skipif(cc.nvcc_path() is None or cc.cuobjdump_path() is None,
                                reason="nvcc or cuobjdump not found (set CUDA_HOME)")

DTYPE_CODES = {"fp32": 0, "bf16": 2}


@functools.lru_cache(maxsize=None)
def _report():
    return cc.sass_report()


def test_every_benchmark_kernel_passes_the_static_checks():
    rows, bad = _report()
    expected = sum(len(v) for v in cc.ROW_LAUNCHES.values())
    assert len(rows) == expected and not bad, "\n".join(bad)
    by_kernel = {r["kernel"]: r for r in rows}
    # One exp2 per element in every softmax forward: register rows (16 per thread, plus the
    # head and tail); the 50257-wide vocabulary rows staged in shared memory widened to fp32,
    # the exponentials written over them in place (the staged-raw kernel's output pass took
    # a second exp2 per element).
    for t in ("__nv_bfloat16", "float"):
        assert by_kernel[f"softmax_fwd_regs<{t}, 256>"]["ex2_per_elem"] == 1.0
        assert by_kernel[f"softmax_fwd_smem<{t}, float, 1024>"]["ex2_per_elem"] == 1.0
    # rows of 50257 bf16 (2-byte aligned starts) move in 16-byte packs in the main loops
    r = by_kernel["softmax_fwd_smem<__nv_bfloat16, float, 1024>"]
    assert r["loop_narrow"] == 0 and r["wide_loads"] >= 1 and r["wide_stores"] >= 1


def test_launch_table_is_what_the_launchers_launch():
    cuda_emu = pytest.importorskip("cuda_emu")
    if cuda_emu.unavailable_reason():
        pytest.skip(cuda_emu.unavailable_reason())
    import ctypes
    base = 1 << 32  # made-up device addresses, 256-byte aligned as the caching allocator's

    def ptr(i):
        return ctypes.c_void_p(base * (i + 1))

    def drive(op, dtype, rows, n):
        dt, i64, f = DTYPE_CODES[dtype], ctypes.c_int64, ctypes.c_float
        r, nn = i64(rows), i64(n)

        def call(emu):
            if op == "softmax fwd":
                emu.emu_softmax_forward(dt, ptr(0), nn, ptr(1), nn, r, nn, f(1.0))
            elif op == "softmax bwd":
                emu.emu_softmax_backward(dt, ptr(0), nn, ptr(1), nn, ptr(2), nn, r, nn, f(1.0))
            elif op.endswith("fwd"):
                add = op.startswith("add")
                emu.emu_layer_norm_forward(dt, ptr(0), nn, ptr(1) if add else None, nn, ptr(2) if add else None,
                                           ptr(3), ptr(4), ptr(5), ptr(6), ptr(7), r, nn, f(1e-5))
            else:
                add = op.startswith("add")
                emu.emu_layer_norm_backward(dt, ptr(0), nn, ptr(1) if add else None, nn, ptr(2), nn, ptr(3),
                                            ptr(4), ptr(5), ptr(6), ptr(7), ptr(8), r, nn)
                emu.emu_column_sum(dt, ptr(7), i64(emu.emu_column_chunks(r)), nn, ptr(9))
        return call

    cuda_emu.set_smem_limit(cc.H100["smem_optin"])
    for (op, dtype, rows, n), launches in cc.ROW_LAUNCHES.items():
        got = [(cc.short_name(rec["kernel"]), rec["block"][0] * rec["block"][1] * rec["block"][2], rec["smem"])
               for rec in cuda_emu.recorded_launches(drive(op, dtype, rows, n))]
        assert got == launches, f"{op} {dtype} {rows}x{n}"


# ---- each rule fires on a deliberately broken build ----
def _broken(tmp_path, edits, kernel, threads, dyn_smem, flags=()):
    """Compile softmax.cu with `edits` [(file, old, new)] applied to a copy of csrc/, and
    return the problems the static rules find in `kernel` launched with `threads`."""
    csrc = tmp_path / "csrc"
    shutil.copytree(cc.CSRC, csrc)
    for rel, old, new in edits:
        path = csrc / rel
        text = path.read_text()
        assert old in text, f"{rel}: {old!r} not found (update the broken variant)"
        path.write_text(text.replace(old, new))
    kernels = cc.compile_sass(os.path.join(csrc, "cuda", "softmax.cu"), flags, csrc=str(csrc))
    _, bad = cc.row_kernel_problems(kernel, kernels[kernel], threads, dyn_smem)
    return bad


def test_rules_fire_on_8_byte_accesses_and_serialised_loads(tmp_path):
    # 8-byte packs everywhere; then a long-row staging loop that uses each load before the next
    bad = _broken(tmp_path, [("cuda/common.cuh", "constexpr int kVec16 = 16 / static_cast<int>(sizeof(T));",
                              "constexpr int kVec16 = 8 / static_cast<int>(sizeof(T));")],
                  "softmax_fwd_regs<__nv_bfloat16, 256>", 256, 0)
    assert any("not in 16-byte accesses" in b for b in bad), bad
    bad = _broken(tmp_path / "b", [("cuda/softmax.cu", "constexpr int kStageUnroll = sizeof(T) == 4 ? 8 : 4;",
                                    "constexpr int kStageUnroll = 1;")],
                  "softmax_fwd_smem<float, float, 1024>", 1024, (50257 + 7) // 4 * 4 * 4)
    assert any("in flight per SM" in b for b in bad), bad


def test_exp_count_sees_a_second_exp_pass():
    # The kernel that stages 16-bit rows raw (for rows whose fp32 copy does not fit) and the
    # streamed one (online max and sum, then exp again) take more than one exp2 per element.
    kernels = cc.compile_sass(os.path.join(cc.CSRC, "cuda", "softmax.cu"))
    raw, _ = cc.row_kernel_problems("softmax_fwd_smem<__nv_bfloat16, __nv_bfloat16, 1024>",
                                    kernels["softmax_fwd_smem<__nv_bfloat16, __nv_bfloat16, 1024>"], 1024, 0)
    stream, _ = cc.row_kernel_problems("softmax_fwd_stream<__nv_bfloat16, true>",
                                       kernels["softmax_fwd_stream<__nv_bfloat16, true>"], 512, 0)
    assert raw["ex2_per_elem"] == 2.0 and stream["ex2_per_elem"] >= 2.0, (raw, stream)


def test_rules_fire_on_local_memory_and_low_occupancy(tmp_path):
    # 64 fp32 exponentials per thread spill under the 64-register bound; 128 with the bound
    # lifted take ~150 registers: 8 warps per SM
    spill = _broken(tmp_path, [("cuda/softmax.cu", "constexpr int kRegElems = 16;", "constexpr int kRegElems = 64;")],
                    "softmax_fwd_regs<float, 256>", 256, 0)
    assert any("local memory" in b for b in spill), spill
    fat = _broken(tmp_path / "b", [("cuda/softmax.cu", "constexpr int kRegElems = 16;",
                                    "constexpr int kRegElems = 128;"),
                                   ("cuda/softmax.cu", "return 1024 / (THREADS * rows_per_block<THREADS>()) > 0",
                                    "return 0 > 0")],
                  "softmax_fwd_regs<float, 256>", 256, 0)
    assert any("resident warps" in b for b in fat), fat


def test_sass_parser_reads_widths_loops_and_loads_in_flight():
    sass = """
        Function : _Z1kv
        /*0000*/                   LDG.E.128.CONSTANT R4, desc[UR4][R2.64] ;
        /*0010*/              @!P0 LDG.E.128.CONSTANT R8, desc[UR4][R2.64+0x10] ;
        /*0020*/                   LDG.E.U16.CONSTANT R12, desc[UR4][R2.64+0x20] ;
        /*0030*/                   FADD R13, R6, R0 ;
        /*0040*/                   LDG.E.128 R16, desc[UR4][R2.64+0x30] ;
        /*0050*/                   STG.E.128 desc[UR4][R2.64], R4 ;
        /*0060*/                   LDL R20, [R1] ;
        /*0070*/                   MUFU.EX2 R21, R21 ;
        /*0080*/                   BRA 0x40 ;
        /*0090*/                   EXIT ;
    """
    instrs = cc.parse_sass(sass)["_Z1kv"]
    f = cc.sass_facts(instrs)
    assert f["loads"] == {128: 2, 16: 1} and f["loop_loads"] == {128: 1} and f["loop_stores"] == {128: 1}
    assert f["local"] == 1 and f["ex2"] == 1 and f["loops"] == 1
    assert f["inflight_per_thread"] == 16 + 16 + 2  # the FADD reads R6, written by the first load
    assert cc.occupancy(64, 0, 0, 256) == {"blocks_per_sm": 4, "warps_per_sm": 32}
    assert cc.occupancy(40, 128, 100544, 512)["blocks_per_sm"] == 2
    assert cc.short_name("void gptk::cuda::(anonymous namespace)::k<float, 256, true>(float const*, long)") == \
        "k<float, 256, true>"
