"""GELU MLP up-projection: y = gelu(x @ W^T + b), one tiled matmul with the bias and the
GELU in its epilogue, forward and backward.

Shapes: x (..., K) flattened to X (M, K) (a view whenever the leading dims allow it),
W (N, K) like nn.Linear, b (N,). Z = X W^T + b is the pre-activation.

What it fuses. Eager `F.gelu(F.linear(x, W, b))` runs a GEMM that writes Z, then an
elementwise kernel that reads Z and writes Y: 3 M N s bytes beyond the GEMM's own
operands (s = bytes per element). Here the bias add and the GELU run on the fp32
accumulator tile before a single store of Y. Backward: one elementwise kernel reads dY
and Z and writes dZ = dY * gelu'(Z) together with the fp32 column sums of each row tile
of dZ (db's deterministic partials, so db costs no extra pass); then dX = dZ W and
dW = dZ^T X are plain GEMMs (cuBLAS), as Liger and eager do. A first version formed dZ
inside the dX GEMM's operand prologue instead: that saves nothing (dZ must be written for
dW anyway) and recomputes gelu' once per dX column tile; on the H100 it ran at 73 TFLOP/s
against eager's 498 (benchmarks/results/2026-11-25-h100-80gb-hbm3-run3).

Roofline (FLOPs 2 M N K per GEMM; bytes are the operands read once plus outputs):
  forward   2 M N K FLOP; (M K + N K + M N) s bytes, + M N s when Z is saved.
  backward  4 M N K FLOP (dX, dW); the dZ kernel moves 3 M N s bytes (+ 4 N bytes per
            64-row tile for the db partials); the GEMMs read dZ, W and X.
At GPT sizes (M = B T in the thousands, K = C, N = 4 C) every GEMM is compute-bound.

Save Z or recompute it? Saving costs one extra store of M N s bytes in the forward and
one load in the backward (2 s bytes per element, overlapped with a compute-bound
mainloop), plus M N s bytes held from forward to backward. Recomputing costs a third
GEMM, 2 K FLOP per element, that nothing can hide. Recompute wins in time only when
2 K FLOP / (2 s bytes) = K / s is below the machine's FLOP:byte ridge (H100: about
790 TFLOP/s / 3.0 TB/s = 263), i.e. K < 526 in bf16 and K < 1052 in fp32; and even
there saving is cheaper because its bytes overlap the GEMM. GPT-2 has K = 768 and
up, so we save Z (in the input dtype, like eager, which keeps Z for F.gelu's backward)
-- but only when autograd needs it: under no_grad / inference Z never goes to memory.

Precision: fp32 accumulation always; Y = gelu(Z) is computed from the unrounded fp32
Z; the saved Z and dZ are rounded to the input dtype (as eager does). Both GELU
forms: "tanh" 0.5 z (1 + tanh(u)), u = sqrt(2/pi) (z + 0.044715 z^3), written as
z * sigmoid(2 u) (no tanh intrinsic, exact in the limits); "none" 0.5 z (1 + erf(z/sqrt 2)).
fp32 inputs: tl.dot runs TF32 tensor cores only when torch.backends.cuda.matmul.allow_tf32
is True (PyTorch's default is False), else full-precision IEEE fp32 FMA; the backward's
torch matmuls follow the same flag. fp16/bf16 use fp16/bf16 tensor cores (wgmma on
sm_90, mma.sync on sm_80) with fp32 accumulation.

Inputs are never copied: the kernels take x's and W's strides (x.reshape copies only when
its leading dims cannot be flattened into one stride). dY may be any strided tensor.
"""
from __future__ import annotations

import itertools
import math

import torch
import triton
import triton.language as tl

from . import _launch
from .._backend import autotune_enabled, triton_interpreting

# -----------------------------------------------------------------------------------------
# GELU math, shared by the forward and backward kernels
# -----------------------------------------------------------------------------------------

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_LOG2E = math.log2(math.e)


@triton.jit
def _sigmoid_2u(z):
    """sigmoid(2 u) for the tanh form: 0.5 (1 + tanh(u)) = sigmoid(2 u). exp2 overflows to
    inf for very negative u, giving exactly 0; large u gives exactly 1."""
    u = 0.7978845608028654 * (z + 0.044715 * z * z * z)  # sqrt(2/pi) (z + 0.044715 z^3)
    return 1.0 / (1.0 + tl.exp2(-2.0 * 1.4426950408889634 * u))


@triton.jit
def _gelu_tanh(z):
    return z * _sigmoid_2u(z)


@triton.jit
def _gelu_tanh_grad(z):
    """d/dz [z s], s = sigmoid(2u): s + z * 2 s (1 - s) * du/dz (since 1 - tanh^2 = 4 s (1 - s))."""
    s = _sigmoid_2u(z)
    du = 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * z * z)
    return s + 2.0 * z * s * (1.0 - s) * du


@triton.jit
def _gelu_erf(z):
    return 0.5 * z * (1.0 + tl.erf(z * 0.7071067811865476))


@triton.jit
def _gelu_erf_grad(z):
    """Phi(z) + z phi(z): the normal CDF plus z times the normal density."""
    cdf = 0.5 * (1.0 + tl.erf(z * 0.7071067811865476))
    pdf = 0.3989422804014327 * tl.exp2(-0.5 * 1.4426950408889634 * z * z)
    return cdf + z * pdf


@triton.jit
def _gelu(z, APPROX_TANH: tl.constexpr):
    if APPROX_TANH:
        return _gelu_tanh(z)
    else:
        return _gelu_erf(z)


@triton.jit
def _gelu_grad(z, APPROX_TANH: tl.constexpr):
    if APPROX_TANH:
        return _gelu_tanh_grad(z)
    else:
        return _gelu_erf_grad(z)


@triton.jit
def _accumulate(acc, a, b, INPUT_PRECISION: tl.constexpr):
    """acc + a b. IEEE fp32 sums each reduction chunk from zero and then adds it to acc
    (blocked summation): one chained sum over K = 1000 was 5.1e-6 from fp64 on the H100
    against cuBLAS's 1.4e-6 (a numpy model of both gives 5.4e-6 and 1.3e-6). fp16/bf16 and
    TF32 accumulate in place: their operands' rounding dominates."""
    if a.dtype == tl.float32 and INPUT_PRECISION == "ieee":
        return acc + tl.dot(a, b, input_precision=INPUT_PRECISION)
    else:
        return tl.dot(a, b, acc, input_precision=INPUT_PRECISION)


@triton.jit
def _grouped_tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) in grouped order: GROUP_M row tiles sweep the column tiles together, so
    a band of X rows and a band of W rows stay in L2 while they are reused."""
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_pid_n
    first_m = (pid // per_group) * GROUP_M
    group_m = min(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_m
    pid_n = (pid % per_group) // group_m
    return pid_m, pid_n


# -----------------------------------------------------------------------------------------
# Kernels
# -----------------------------------------------------------------------------------------


@_launch.jit
def _gelu_linear_fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr, z_ptr, M, N, K,
                            stride_xm, stride_xk, stride_wn, stride_wk,
                            HAS_BIAS: tl.constexpr, STORE_Z: tl.constexpr, APPROX_TANH: tl.constexpr,
                            INPUT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                            BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """One (BLOCK_M, BLOCK_N) tile of Y = gelu(X W^T + b) (and Z when STORE_Z): the K loop
    accumulates in fp32, the epilogue adds b and applies GELU before the single store.
    Y and Z are contiguous (M, N)."""
    pid_m, pid_n = _grouped_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    rows_left = M - pid_m * BLOCK_M
    cols_left = N - pid_n * BLOCK_N
    # 64-bit scalar tile bases that walk along K; loop-invariant 32-bit offsets inside a tile
    # (a loop-carried tensor of 64-bit pointers would double the registers per element).
    x_base = x_ptr + (pid_m.to(tl.int64) * BLOCK_M) * stride_xm
    w_base = w_ptr + (pid_n.to(tl.int64) * BLOCK_N) * stride_wn
    x_offs = offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk
    w_offs = offs_k[:, None] * stride_wk + offs_n[None, :] * stride_wn  # W^T tile (BLOCK_K, BLOCK_N)
    row_ok = offs_m[:, None] < rows_left
    col_ok = offs_n[None, :] < cols_left
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        a = tl.load(x_base + x_offs, mask=row_ok & (offs_k[None, :] < k_left), other=0.0)
        b = tl.load(w_base + w_offs, mask=(offs_k[:, None] < k_left) & col_ok, other=0.0)
        acc = _accumulate(acc, a, b, INPUT_PRECISION)
        x_base += BLOCK_K * stride_xk
        w_base += BLOCK_K * stride_wk
    if HAS_BIAS:
        bias = tl.load(b_ptr + pid_n * BLOCK_N + offs_n, mask=offs_n < cols_left, other=0.0)
        acc += bias.to(tl.float32)[None, :]
    out_mask = row_ok & col_ok
    out_base = (pid_m.to(tl.int64) * BLOCK_M) * N + pid_n * BLOCK_N
    out_offs = offs_m[:, None] * N + offs_n[None, :]
    if STORE_Z:
        tl.store(z_ptr + out_base + out_offs, acc.to(z_ptr.dtype.element_ty), mask=out_mask)
    y = _gelu(acc, APPROX_TANH)
    tl.store(y_ptr + out_base + out_offs, y.to(y_ptr.dtype.element_ty), mask=out_mask)


@_launch.jit
def _gelu_linear_dz_kernel(dy_ptr, z_ptr, dz_ptr, dbp_ptr, M, N, stride_dym, stride_dyn,
                           HAS_BIAS: tl.constexpr, APPROX_TANH: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dZ = dY * gelu'(Z) for one (BLOCK_M, BLOCK_N) tile, rounded to the input dtype (what
    the GEMMs read), and with a bias the tile's fp32 column sums into row program_id(0) of
    dbp (db's partials, summed in a fixed order by the launcher). Z and dZ are contiguous
    (M, N); dY any strides. Bytes: 3 M N s."""
    pid_m = tl.program_id(0)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    mask = (rows < M)[:, None] & col_ok[None, :]
    rows64 = rows.to(tl.int64)[:, None]
    # Padding loads dY = 0, so padded dZ is 0 whatever gelu'(0) is.
    dy = tl.load(dy_ptr + rows64 * stride_dym + cols[None, :] * stride_dyn, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + rows64 * N + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    dz = dy * _gelu_grad(z, APPROX_TANH)
    tl.store(dz_ptr + rows64 * N + cols[None, :], dz.to(dz_ptr.dtype.element_ty), mask=mask)
    if HAS_BIAS:
        tl.store(dbp_ptr + pid_m.to(tl.int64) * N + cols, tl.sum(dz, axis=0), mask=col_ok)


# -----------------------------------------------------------------------------------------
# Launchers: autotuned on the GPU, one fixed configuration under the interpreter
# -----------------------------------------------------------------------------------------


def _cfg(bm, bn, bk, stages, warps, group_m=8):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m},
                         num_stages=stages, num_warps=warps)


# Per (operand kind, alignment). "aligned": 16-byte-aligned pointers, N, K and the row
# strides multiples of 16, the common case, where Triton vectorises the tile loads and
# pipelines them through shared memory (cp.async). Otherwise each element is its own
# load held in registers, so those lists use 8 warps and 2 stages to stay spill-free.
# fp32 tiles take half the BLOCK_K of 16-bit ones (twice the bytes per element). IEEE fp32
# ("fp32 ieee": FMA, no tensor cores) holds each k-step's operands in registers: its
# aligned 128x128 tile takes BLOCK_K 16 over 5 stages (the same 64 KiB in flight as TF32's
# 32 x 3 stages), as 32 spills 8 bytes on sm_80 without the Z store (16 warps: more), and
# its 64x64 tile 8 warps (4 spill 16 bytes on sm_90 with the Z store and no bias).
# Every entry is compiled for sm_80 and sm_90 by the compile check (launch_cases()).
CONFIGS = {
    "fwd": {
        # The 64x64 tile on 8 warps: at 4, bf16 with the erf GELU and no Z store spills 8 bytes
        # on sm_80 (the same tile and stages, so the same bytes in flight).
        ("16bit", True): [_cfg(128, 128, 64, 4, 8), _cfg(128, 64, 64, 4, 4), _cfg(64, 128, 64, 4, 4),
                          _cfg(64, 64, 64, 4, 8)],
        ("16bit", False): [_cfg(128, 64, 32, 2, 8), _cfg(64, 128, 32, 2, 8), _cfg(64, 64, 32, 2, 8)],
        ("fp32", True): [_cfg(128, 128, 32, 3, 8), _cfg(128, 64, 32, 3, 8), _cfg(64, 128, 32, 3, 8),
                         _cfg(64, 64, 32, 3, 4)],
        ("fp32", False): [_cfg(128, 64, 32, 2, 8), _cfg(64, 128, 32, 2, 8), _cfg(64, 64, 32, 2, 8)],
        ("fp32 ieee", True): [_cfg(128, 128, 16, 5, 8), _cfg(128, 64, 32, 3, 8), _cfg(64, 128, 32, 3, 8),
                              _cfg(64, 64, 32, 3, 8)],
    },
}
CONFIGS["fwd"]["fp32 ieee", False] = CONFIGS["fwd"]["fp32", False]  # unaligned: TF32's list
# Small tiles under the interpreter: several tiles and groups even at test shapes.
INTERPRET_CONFIG = _cfg(32, 32, 32, 1, 4, group_m=2)
# The dZ kernel (memory-bound, one fixed shape): 8192-element tiles, 32 per thread; 64 rows
# per db partial keep the partials at 1/16 of dZ's bytes in fp32 at 16-bit inputs.
DZ_CONFIG = {"BLOCK_M": 64, "BLOCK_N": 128, "num_warps": 8}
DZ_INTERPRET_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 32, "num_warps": 4}

# Per kernel: the pointer arguments, and the integer arguments whose divisibility by 16
# decides whether Triton can vectorise (M only masks rows, so it does not matter).
_POINTERS = {"fwd": ("x_ptr", "w_ptr", "b_ptr", "y_ptr", "z_ptr")}
_ALIGN_INTS = {"fwd": ("N", "K", "stride_xm", "stride_xk", "stride_wn", "stride_wk")}


def _kind(dtype: torch.dtype, precision: str) -> str:
    if dtype != torch.float32:
        return "16bit"
    return "fp32" if precision == "tf32" else "fp32 ieee"


def input_precision(dtype: torch.dtype) -> str:
    """What tl.dot runs for fp32 operands: TF32 only when PyTorch's matmul flag allows it."""
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _aligned(direction: str, args: dict) -> bool:
    # Unit strides are fine too: Triton specialises a 1 into a constant.
    return (all(args[p].data_ptr() % 16 == 0 for p in _POINTERS[direction])
            and all(args[i] % 16 == 0 or (i.startswith("stride") and args[i] == 1)
                    for i in _ALIGN_INTS[direction]))


def _configs_for(direction: str, dtype: torch.dtype, precision: str, args: dict):
    return CONFIGS[direction][(_kind(dtype, precision), _aligned(direction, args))]


def _tuned(kernel, direction, **kw):
    if triton_interpreting():  # multi-config autotune needs a driver
        return triton.autotune(configs=[INTERPRET_CONFIG], key=[])(kernel)

    def prune(configs, named_args, **kwargs):
        eligible = _configs_for(direction, named_args["w_ptr"].dtype, kwargs["INPUT_PRECISION"], named_args)
        return eligible if autotune_enabled() else eligible[:1]

    # The autotuner adds every tensor argument's dtype to this key: (M, N, K, dtype, layout, flags).
    every = list({id(c): c for lst in CONFIGS[direction].values() for c in lst}.values())
    key = ["M", "N", "K", *_ALIGN_INTS[direction][2:], "HAS_BIAS", "APPROX_TANH", "INPUT_PRECISION"]
    return triton.autotune(configs=every, key=key, prune_configs_by={"early_config_prune": prune}, **kw)(kernel)


_fwd_tuned = _tuned(_gelu_linear_fwd_kernel, "fwd")


def _out_shape(x: torch.Tensor, n: int) -> tuple:
    return (*x.shape[:-1], n)


# (shapes, strides, flags, replay_key of the inputs) -> the autotuned launch, replayed with its
# chosen configuration (_launch.replay): the autotuner's own per-call cost is skipped too.
_FWD_REPLAYS = _launch.Replays()


def gelu_linear_forward(x, weight, bias, approximate: str, save_preact: bool):
    """(y, z): y = gelu(x W^T + b); z the pre-activation when save_preact, else an empty tensor."""
    n, k = weight.shape
    m = math.prod(x.shape[:-1])
    x2 = x.reshape(m, k)
    # Sizes as ints, not tuples: ~0.7 us cheaper per allocation on the host path.
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    z = torch.empty(m, n, dtype=x.dtype, device=x.device) if save_preact else x.new_empty(0)
    precision = input_precision(x.dtype)
    key = (x.shape, x.stride(), weight.shape, weight.stride(), x.device, approximate, save_preact, precision,
           _launch.replay_key(x2, weight, bias))
    replay = _FWD_REPLAYS.get(key)
    if replay is not None:
        replay(x2, weight, bias, y, z)
    elif m > 0 and n > 0:
        grid = lambda meta: (-(-m // meta["BLOCK_M"]) * -(-n // meta["BLOCK_N"]),)  # noqa: E731
        args = (x2, weight, bias if bias is not None else weight, y, z, m, n, k,
                x2.stride(0), x2.stride(1), weight.stride(0), weight.stride(1))
        flags = dict(HAS_BIAS=bias is not None, STORE_Z=save_preact, APPROX_TANH=approximate == "tanh",
                     INPUT_PRECISION=precision)
        _fwd_tuned[grid](*args, **flags)
        best = getattr(_fwd_tuned, "best_config", None)
        if best is not None and _FWD_REPLAYS.wanted(key):
            _FWD_REPLAYS.put(key, _launch.replay(_fwd_tuned.fn, grid(best.kwargs), args,
                                                 {**flags, **best.all_kwargs()},
                                                 {"x2": x2, "w": weight, "b": bias, "y": y, "z": z}))
    return y.view(_out_shape(x, n)), (z.view(_out_shape(x, n)) if save_preact else z)


def gelu_linear_backward(dy, x, weight, z, has_bias: bool, approximate: str):
    """(dx, dw, db) from dY and the saved Z; db is an empty tensor when there is no bias."""
    n, k = weight.shape
    m = math.prod(x.shape[:-1])
    x2 = x.reshape(m, k)
    dy2 = dy.reshape(m, n)
    dz = torch.empty(m, n, dtype=x.dtype, device=x.device)
    cfg = DZ_INTERPRET_CONFIG if triton_interpreting() else DZ_CONFIG
    dbp = torch.empty((-(-m // cfg["BLOCK_M"]), n) if has_bias else (0,), dtype=torch.float32,
                      device=x.device)
    if m > 0 and n > 0:
        grid = (-(-m // cfg["BLOCK_M"]), -(-n // cfg["BLOCK_N"]))
        _gelu_linear_dz_kernel[grid](dy2, z, dz, dbp if has_bias else dz, m, n, dy2.stride(0), dy2.stride(1),
                                     HAS_BIAS=has_bias, APPROX_TANH=approximate == "tanh",
                                     BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], num_warps=cfg["num_warps"])
    # Plain GEMMs, nothing left to fuse: cuBLAS on the GPU (fp32 as TF32 only when torch allows).
    dx = dz @ weight
    dw = dz.t() @ x2
    db = dbp.sum(0).to(x.dtype) if has_bias else dbp.to(x.dtype)
    return dx.view(x.shape), dw, db


# Every configuration the launchers and the autotuner can pick, for the sm_80/sm_90 compile
# test (kernels/triton/compile_check.py records the launches these calls make, each config
# the autotuner may try included): fp16, bf16, fp32 as TF32 and as IEEE fp32; operands
# aligned (16-byte pointers, N, K and strides multiples of 16) or not; every epilogue (bias,
# Z stored, GELU form); and the backward's dZ kernel with and without a bias.
def launch_cases():
    import functools

    from .compile_check import matmul_tf32

    def t(*shape, dtype):
        return torch.empty(*shape, dtype=dtype, device="meta")

    def forward(x, w, b, approximate, save, tf32):
        with matmul_tf32(tf32):
            gelu_linear_forward(x, w, b, approximate, save)

    for dtype, tf32 in ((torch.float16, False), (torch.bfloat16, False), (torch.float32, True),
                        (torch.float32, False)):
        for (m, k, n), bias, approximate, save in itertools.product(((40, 64, 96), (40, 63, 95)), (False, True),
                                                                    ("tanh", "none"), (False, True)):
            x, w, b = t(m, k, dtype=dtype), t(n, k, dtype=dtype), t(n, dtype=dtype) if bias else None
            yield functools.partial(forward, x, w, b, approximate, save, tf32)
            if save and not tf32:
                yield lambda x=x, w=w, bias=bias, a=approximate, m=m, n=n, dtype=dtype: gelu_linear_backward(
                    t(m, n, dtype=dtype), x, w, t(m, n, dtype=dtype), bias, a)


# -----------------------------------------------------------------------------------------
# Registration: opaque custom ops (opcheck and torch.compile(fullgraph=True) trace them on
# every device, the interpreter included) with a fake impl and autograd on top.
# -----------------------------------------------------------------------------------------


def _gelu_linear_impl(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, approximate: str,
                      save_preact: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return gelu_linear_forward(x, weight, bias, approximate, save_preact)


gelu_linear_op = torch.library.custom_op("gptk::gelu_linear_triton", _gelu_linear_impl, mutates_args=())


@gelu_linear_op.register_fake
def _(x, weight, bias, approximate, save_preact):
    shape = _out_shape(x, weight.shape[0])
    return x.new_empty(shape), x.new_empty(shape if save_preact else (0,))


def _gelu_linear_backward_impl(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, z: torch.Tensor,
                               has_bias: bool, approximate: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return gelu_linear_backward(dy, x, weight, z, has_bias, approximate)


gelu_linear_backward_op = torch.library.custom_op("gptk::gelu_linear_triton_backward", _gelu_linear_backward_impl,
                                                  mutates_args=())
_gelu_linear_backward_call = _launch.fast_op(gelu_linear_backward_op, _gelu_linear_backward_impl)


@gelu_linear_backward_op.register_fake
def _(dy, x, weight, z, has_bias, approximate):
    return x.new_empty(x.shape), weight.new_empty(weight.shape), x.new_empty((weight.shape[0],) if has_bias else (0,))


def _setup_context(ctx, inputs, output):
    x, weight, bias, approximate, save_preact = inputs
    _, z = output
    ctx.mark_non_differentiable(z)
    ctx.save_for_backward(x, weight, z)
    ctx.has_bias, ctx.approximate, ctx.saved_preact = bias is not None, approximate, save_preact


def _backward(ctx, dy, _dz):
    x, weight, z = ctx.saved_tensors
    if not ctx.saved_preact:
        raise RuntimeError("gptk::gelu_linear_triton was called with save_preact=False, so it has no "
                           "pre-activation to differentiate through; call kernels.gelu_linear instead")
    dx, dw, db = _gelu_linear_backward_call(dy, x, weight, z, ctx.has_bias, ctx.approximate)
    return dx, dw, (db if ctx.has_bias else None), None, None


_gelu_linear_call = _launch.fast_op(gelu_linear_op, _gelu_linear_impl, _setup_context, _backward)


def gelu_linear(x, weight, bias=None, approximate="tanh"):
    """The triton backend's gelu_linear (arguments already validated by kernels.gelu_linear).
    Z is written for backward only when autograd will need it."""
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    return _gelu_linear_call(x, weight, bias, approximate, needs_grad)[0]
