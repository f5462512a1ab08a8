"""Fused unembedding + cross-entropy: loss = CE((x W^T + b) / T, target), forward and backward,
without ever holding the (tokens x V) logits.

Shapes: x (..., C) flattened to X (N, C), W (V, C) like nn.Linear, b (V,), target (N,) int64.
Z = (X W^T + b) / T are the logits; loss_i = lse(Z_i) - Z_i[t_i], 0 where t_i == ignore_index.

What it fuses. Eager `F.cross_entropy(F.linear(x, W, b) / T, t)` writes Z (N V s bytes, s
per element), reads and writes it again for log_softmax, and in the backward writes its
gradient twice (nll, log_softmax) before the two GEMMs: about 7 N V s bytes and N V s + N V
fp32 bytes held at peak. Here the tokens run in chunks of n rows sized from V and the free
memory (MAX_CHUNK_BYTES of logits). Per chunk:
  1. _lce_logits_kernel: one (BLOCK_M, BLOCK_N) tile of Z per program by tl.dot over C, bias
     and 1/T in the epilogue, which reduces the fp32 tile to per-row (max, sum exp) partials
     and picks the target's logit; with a gradient to form it also stores the tile (input
     dtype) into the chunk buffer. Under no_grad Z never goes to memory.
  2. The partials combine into lse per token (torch, n x V/BLOCK_N values: ~1/64 of Z).
  3. _lce_grad_kernel: dZ = (softmax(Z) - onehot(t)) * scale / T, written in place over the
     chunk buffer, with fp32 column sums per row tile (db's partials, summed in fixed order).
  4. dX[chunk] = dZ W and dW += dZ^T X[chunk]: cuBLAS (torch.mm), dW accumulated in fp32.
The gradient is formed during the forward pass for reduction "mean"/"sum" (the incoming
gradient is a scalar: the backward scales the saved dX, dW, db). For "none" the per-token
gradient is only known in the backward: the backward reruns steps 1-4 with per-token scales
(one more logits GEMM, 2 N V C FLOPs; nothing N x V is held between the passes).

Roofline (N tokens): FLOPs 6 N V C (logits, dX, dW), as eager. Bytes beyond the GEMM
operands: N V s (store Z) + 2 N V s (the gradient kernel) + the dW accumulator's fp32 read
and write per chunk (8 V C bytes, plus a V C s temporary at 16-bit inputs). GPT-2 (C 768,
V 50257, bf16) at N = 8192: 1.9 TFLOP and ~2.5 GB beyond the GEMMs, against eager's
~5.8 GB; held at peak: one chunk buffer (128 MiB) + the fp32 dW accumulator (154 MB).

Precision: fp32 accumulation in the logits GEMM, lse and the loss from the unrounded fp32
tile (eager rounds Z to the input dtype first); dZ from the stored Z (rounded like eager's),
rounded to the input dtype for the GEMMs; dW and db accumulated in fp32 across chunks. The
loss is float32 for fp32/fp16/bf16 inputs. fp32 tl.dot runs TF32 only when
torch.backends.cuda.matmul.allow_tf32 is True.

Targets outside [0, V) other than ignore_index: IndexError on the CPU (like F.cross_entropy);
on CUDA a device-side assert (torch._assert_async: no host sync), which aborts the CUDA
context as PyTorch's own does.
"""
from __future__ import annotations

import itertools
import math

import torch
import triton
import triton.language as tl

from .. import _checks
from . import _launch
from .._backend import autotune_enabled, triton_interpreting
from .gelu_linear import _accumulate, _grouped_tile, input_precision

# Logits bytes one chunk may hold (also capped at a quarter of the free device memory).
MAX_CHUNK_BYTES = 128 << 20
# Under the interpreter: tiny chunks, so the tests run several of them.
INTERPRET_CHUNK_BYTES = 32 << 10

# -----------------------------------------------------------------------------------------
# Kernels
# -----------------------------------------------------------------------------------------


@_launch.jit
def _lce_logits_kernel(x_ptr, w_ptr, b_ptr, t_ptr, z_ptr, max_ptr, sum_ptr, zt_ptr, M, V, K,
                       stride_xm, stride_xk, stride_wv, stride_wk, stride_z, n_vtiles, inv_temp,
                       HAS_BIAS: tl.constexpr, STORE_Z: tl.constexpr, INPUT_PRECISION: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       GROUP_M: tl.constexpr):
    """Z tile = (X W^T + b) / T for BLOCK_M tokens x BLOCK_N vocabulary entries; writes the
    tile's per-row max and sum exp(Z - max) into column pid_n of max/sum (M, n_vtiles), the
    target's logit into zt when the target falls in this tile, and with STORE_Z the tile
    itself (rows of stride stride_z)."""
    pid_m, pid_n = _grouped_tile(M, V, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    rows_left = M - pid_m * BLOCK_M
    cols_left = V - pid_n * BLOCK_N
    x_base = x_ptr + (pid_m.to(tl.int64) * BLOCK_M) * stride_xm
    w_base = w_ptr + (pid_n.to(tl.int64) * BLOCK_N) * stride_wv
    x_offs = offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk
    w_offs = offs_k[:, None] * stride_wk + offs_n[None, :] * stride_wv  # W^T tile (BLOCK_K, BLOCK_N)
    row_ok = offs_m < rows_left
    col_ok = offs_n < cols_left
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        a = tl.load(x_base + x_offs, mask=row_ok[:, None] & (offs_k[None, :] < k_left), other=0.0)
        b = tl.load(w_base + w_offs, mask=(offs_k[:, None] < k_left) & col_ok[None, :], other=0.0)
        acc = _accumulate(acc, a, b, INPUT_PRECISION)
        x_base += BLOCK_K * stride_xk
        w_base += BLOCK_K * stride_wk
    if HAS_BIAS:
        bias = tl.load(b_ptr + pid_n * BLOCK_N + offs_n, mask=col_ok, other=0.0)
        acc += bias.to(tl.float32)[None, :]
    z = acc * inv_temp
    z = tl.where(col_ok[None, :], z, float("-inf"))
    # Every tile has at least one real column, so the row max is finite for finite input.
    m = tl.max(z, axis=1)
    s = tl.sum(tl.exp(z - m[:, None]), axis=1)
    rows = pid_m * BLOCK_M + offs_m
    stat_offs = rows.to(tl.int64) * n_vtiles + pid_n
    tl.store(max_ptr + stat_offs, m, mask=row_ok)
    tl.store(sum_ptr + stat_offs, s, mask=row_ok)
    t = tl.load(t_ptr + rows, mask=row_ok, other=-1) - pid_n * BLOCK_N
    hit = offs_n[None, :] == t[:, None]
    zt = tl.sum(tl.where(hit, z, 0.0), axis=1)
    tl.store(zt_ptr + rows, zt, mask=row_ok & (t >= 0) & (t < BLOCK_N))
    if STORE_Z:
        z_base = (pid_m.to(tl.int64) * BLOCK_M) * stride_z + pid_n * BLOCK_N
        tl.store(z_ptr + z_base + offs_m[:, None] * stride_z + offs_n[None, :], z.to(z_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & col_ok[None, :])


@_launch.jit
def _lce_grad_kernel(z_ptr, lse_ptr, t_ptr, scale_ptr, dbp_ptr, M, V, stride_z, ignore_index, inv_temp,
                     PER_TOKEN: tl.constexpr, HAS_BIAS: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dZ = (exp(Z - lse) - onehot(t)) * scale / T over one (BLOCK_M, BLOCK_N) tile, in place
    over Z; 0 on ignored rows. scale is scale_ptr[0] or, with PER_TOKEN, scale_ptr[row].
    With a bias, the tile's fp32 column sums go to row program_id(0) of dbp."""
    pid_m = tl.program_id(0)
    offs_m = tl.arange(0, BLOCK_M)
    rows = pid_m * BLOCK_M + offs_m
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < V
    mask = row_ok[:, None] & col_ok[None, :]
    # A 64-bit scalar tile base and 32-bit offsets inside the tile: 64-bit offsets per
    # element cost ~2 registers each and spilled at 32 elements per thread.
    z_tile = z_ptr + (pid_m.to(tl.int64) * BLOCK_M) * stride_z
    offs = offs_m[:, None] * stride_z + cols[None, :]
    z = tl.load(z_tile + offs, mask=mask, other=float("-inf")).to(tl.float32)
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    t = tl.load(t_ptr + rows, mask=row_ok, other=ignore_index)
    if PER_TOKEN:
        scale = tl.load(scale_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    else:
        scale = tl.load(scale_ptr + rows * 0).to(tl.float32)
    scale = tl.where(row_ok & (t != ignore_index), scale * inv_temp, 0.0)
    p = tl.exp(z - lse[:, None])
    dz = (p - tl.where(cols[None, :] == t[:, None], 1.0, 0.0)) * scale[:, None]
    dz = tl.where(mask, dz, 0.0)
    tl.store(z_tile + offs, dz.to(z_ptr.dtype.element_ty), mask=mask)
    if HAS_BIAS:
        tl.store(dbp_ptr + pid_m.to(tl.int64) * V + cols, tl.sum(dz, axis=0), mask=col_ok)


# -----------------------------------------------------------------------------------------
# Launchers: autotuned on the GPU, one fixed configuration under the interpreter
# -----------------------------------------------------------------------------------------


def _cfg(bm, bn, bk, stages, warps, group_m=8):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m},
                         num_stages=stages, num_warps=warps)


# Per (operand kind, alignment), as in gelu_linear: "aligned" = 16-byte-aligned pointers, K
# and the row strides multiples of 16 (the chunk buffer's row stride is padded to one), where
# Triton vectorises and pipelines the loads. The epilogue holds the fp32 tile plus its exp.
CONFIGS = {
    ("16bit", True): [_cfg(128, 128, 64, 4, 8), _cfg(128, 64, 64, 4, 4), _cfg(64, 128, 64, 4, 4)],
    ("16bit", False): [_cfg(128, 64, 32, 2, 8), _cfg(64, 64, 32, 2, 4)],
    # fp32: no 128 x 128 tile (IEEE fp32's blocked sum holds a second fp32 tile: it spilled).
    ("fp32", True): [_cfg(128, 64, 32, 3, 8), _cfg(64, 64, 32, 3, 4)],
    ("fp32", False): [_cfg(128, 64, 32, 2, 8), _cfg(64, 64, 32, 2, 4)],
}
INTERPRET_CONFIG = _cfg(16, 512, 32, 1, 4, group_m=2)
GRAD_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 256, "num_warps": 4}
GRAD_INTERPRET_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 512, "num_warps": 4}

_POINTERS = ("x_ptr", "w_ptr", "z_ptr")
_ALIGN_INTS = ("K", "stride_xm", "stride_xk", "stride_wv", "stride_wk", "stride_z")


def _aligned(args: dict) -> bool:
    return (all(args[p].data_ptr() % 16 == 0 for p in _POINTERS)
            and all(args[i] % 16 == 0 or (i.startswith("stride") and args[i] == 1) for i in _ALIGN_INTS))


def _tuned(kernel):
    if triton_interpreting():  # multi-config autotune needs a driver
        return triton.autotune(configs=[INTERPRET_CONFIG], key=[])(kernel)

    def prune(configs, named_args, **kwargs):
        kind = "fp32" if named_args["w_ptr"].dtype == torch.float32 else "16bit"
        eligible = CONFIGS[(kind, _aligned(named_args))]
        return eligible if autotune_enabled() else eligible[:1]

    every = [c for lst in CONFIGS.values() for c in lst]
    key = ["M", "V", "K", "stride_xm", "stride_xk", "stride_wv", "stride_wk", "stride_z", "HAS_BIAS", "STORE_Z",
           "INPUT_PRECISION"]
    # Configs differ in BLOCK_N, so in how many partial columns they write: a narrower config
    # benchmarked first leaves its (max, sum) in columns the chosen one does not write. Zeroed
    # sums make those columns add nothing (their stale maxima, partial maxima of the same row,
    # never exceed the row max, so 0 * exp(max_col - max) = 0).
    return triton.autotune(configs=every, key=key, prune_configs_by={"early_config_prune": prune},
                           reset_to_zero=["sum_ptr"])(kernel)


_logits_tuned = _tuned(_lce_logits_kernel)


def chunk_rows(n: int, v: int, dtype: torch.dtype, device: torch.device) -> int:
    """Tokens per chunk: MAX_CHUNK_BYTES of logits (a quarter of the free memory at most),
    a multiple of 128 rows on the GPU (whole tiles), at least one tile."""
    per_row = max(v, 1) * torch.empty((), dtype=dtype).element_size()
    if triton_interpreting() or device.type != "cuda":
        return max(1, min(n, max(16, INTERPRET_CHUNK_BYTES // per_row // 16 * 16)))
    free, _ = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    budget = min(MAX_CHUNK_BYTES, free // 4)
    return max(1, min(n, max(128, budget // per_row // 128 * 128)))


def check_targets(target: torch.Tensor, v: int, ignore_index: int) -> None:
    """Targets in [0, V) or ignore_index: IndexError on the CPU, a device-side assert on CUDA."""
    if target.numel() == 0:
        return
    bad = (target != ignore_index) & ((target < 0) | (target >= v))
    if target.device.type == "cuda":
        torch._assert_async(~bad.any(), f"linear_cross_entropy: a target is outside [0, {v}) and is not "
                                        f"ignore_index={ignore_index}")
    elif bool(bad.any()):
        value = int(target[bad][0])
        raise IndexError(f"target {value} is out of bounds: targets must be in [0, {v}) (weight.shape[0]) "
                         f"or ignore_index={ignore_index}")


_FP32_ADDMM_OK = {"ok": True}


def _accumulate_dw(acc: torch.Tensor, dz: torch.Tensor, xc: torch.Tensor) -> None:
    """acc (fp32) += dz^T xc. fp32 operands: one in-place GEMM. 16-bit on CUDA: cuBLAS with
    an fp32 output accumulated in place (addmm out_dtype); elsewhere (and if this torch
    build lacks that kernel) through a 16-bit product rounded once per chunk."""
    if dz.dtype == torch.float32:
        acc.addmm_(dz.t(), xc)
        return
    if acc.device.type == "cuda" and _FP32_ADDMM_OK["ok"]:
        try:
            torch.ops.aten.addmm.dtype_out(acc, dz.t(), xc, torch.float32, out=acc)
            return
        except RuntimeError:  # a torch without the fp32-output cuBLAS path: the portable one
            _FP32_ADDMM_OK["ok"] = False
    acc.add_(dz.t() @ xc)


def _logits_pass(x2, weight, bias, tgt, z, stats, inv_temp):
    """Step 1 over one chunk: stats = (max, sum, zt) partials; z (chunk buffer) or None."""
    m, v = tgt.shape[0], weight.shape[0]
    pmax, psum, zt = stats
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(v, meta["BLOCK_N"]),)  # noqa: E731
    _logits_tuned[grid](x2, weight, bias if bias is not None else weight, tgt, z if z is not None else weight,
                        pmax, psum, zt, m, v, x2.shape[1], x2.stride(0), x2.stride(1), weight.stride(0),
                        weight.stride(1), z.stride(0) if z is not None else 0, pmax.shape[1], inv_temp,
                        HAS_BIAS=bias is not None, STORE_Z=z is not None,
                        INPUT_PRECISION=input_precision(x2.dtype))


def _grad_pass(z, lse, tgt, scale, dbp, ignore_index, inv_temp, per_token):
    m, v = z.shape
    cfg = GRAD_INTERPRET_CONFIG if triton_interpreting() else GRAD_CONFIG
    grid = (triton.cdiv(m, cfg["BLOCK_M"]), triton.cdiv(v, cfg["BLOCK_N"]))
    _lce_grad_kernel[grid](z, lse, tgt, scale, dbp if dbp is not None else lse, m, v, z.stride(0), ignore_index,
                           inv_temp, PER_TOKEN=per_token, HAS_BIAS=dbp is not None,
                           BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], num_warps=cfg["num_warps"])
    return cfg["BLOCK_M"]


def _block_n() -> int:
    return INTERPRET_CONFIG.kwargs["BLOCK_N"] if triton_interpreting() else 64


def _run_chunks(x2, weight, bias, target, temperature, ignore_index, scale, per_token, want_loss, want_grad):
    """The chunk loop. Returns (per-token loss fp32 (N,), dx, dw, db); the
    gradients (None unless want_grad) are scaled by `scale` (one value, or one per token)."""
    n, c = x2.shape
    v = weight.shape[0]
    dev = x2.device
    inv_temp = 1.0 / temperature
    losses = torch.empty(n, dtype=torch.float32, device=dev)
    dx = dw_acc = db_acc = None
    if want_grad:
        dx = torch.empty((n, c), dtype=x2.dtype, device=dev)
        dw_acc = torch.zeros((v, c), dtype=torch.float32, device=dev)
        db_acc = torch.zeros(v, dtype=torch.float32, device=dev) if bias is not None else None
    if n > 0:
        rows = chunk_rows(n, v, x2.dtype, dev)
        # Smallest BLOCK_N any config uses: enough partial columns for every config.
        n_vtiles = triton.cdiv(v, _block_n())
        stride_z = (v + 15) // 16 * 16  # 16-element-aligned rows: vectorised tile stores
        zbuf = torch.empty((rows, stride_z), dtype=x2.dtype, device=dev) if want_grad else None
        for start in range(0, n, rows):
            end = min(n, start + rows)
            m = end - start
            xc, tgt = x2[start:end], target[start:end]
            # Partial columns a config with a wider BLOCK_N leaves unwritten add exp(-inf) * 0 = 0.
            pmax = torch.full((m, n_vtiles), float("-inf"), dtype=torch.float32, device=dev)
            psum = torch.zeros_like(pmax)
            zt = torch.zeros(m, dtype=torch.float32, device=dev)
            z = zbuf[:m, :v] if want_grad else None
            _logits_pass(xc, weight, bias, tgt, z, (pmax, psum, zt), inv_temp)
            mx = pmax.amax(dim=1)
            lse = mx + torch.log((psum * torch.exp(pmax - mx[:, None])).sum(dim=1))
            if want_loss:
                losses[start:end] = torch.where(tgt != ignore_index, lse - zt, 0.0)
            if want_grad:
                dbp = None
                if bias is not None:
                    bm = (GRAD_INTERPRET_CONFIG if triton_interpreting() else GRAD_CONFIG)["BLOCK_M"]
                    dbp = torch.empty((triton.cdiv(m, bm), v), dtype=torch.float32, device=dev)
                sc = scale[start:end] if per_token else scale
                _grad_pass(z, lse, tgt, sc, dbp, ignore_index, inv_temp, per_token)
                torch.mm(z, weight, out=dx[start:end])
                _accumulate_dw(dw_acc, z, xc)
                if dbp is not None:
                    db_acc += dbp.sum(dim=0)
    if not want_grad:
        return losses, None, None, None
    dw = dw_acc.to(weight.dtype)
    del dw_acc
    db = db_acc.to(bias.dtype) if bias is not None else None
    return losses, dx, dw, db


def forward(x, weight, bias, target, temperature, ignore_index, reduction, need_grad):
    """(loss, dx, dw, db): the gradients formed now for reduction mean/sum when need_grad,
    else empty; see the module docstring."""
    v, c = weight.shape
    x2 = x.reshape(math.prod(x.shape[:-1]), c)
    t = target.reshape(-1)
    check_targets(t, v, ignore_index)
    valid = (t != ignore_index).sum()
    if reduction == "mean":
        scale = (1.0 / valid.clamp(min=1).to(torch.float32)).reshape(1)
    else:
        scale = torch.ones(1, dtype=torch.float32, device=x.device)
    grad_now = need_grad and reduction != "none"
    losses, dx, dw, db = _run_chunks(x2, weight, bias, t, temperature, ignore_index, scale, False, True, grad_now)
    if reduction == "none":
        loss = losses.view(target.shape)
    elif reduction == "sum":
        loss = losses.sum()
    else:
        loss = losses.sum() / valid.to(torch.float32)  # NaN when every token is ignored, as PyTorch
    if not grad_now:
        return loss, x.new_empty((0,)), x.new_empty((0,)), x.new_empty((0,))
    return loss, dx.view(x.shape), dw, (db if db is not None else x.new_empty((0,)))


def backward_none(grad, x, weight, bias, target, temperature, ignore_index):
    """(dx, dw, db) for reduction "none": rerun the chunks with per-token scales grad."""
    v, c = weight.shape
    x2 = x.reshape(math.prod(x.shape[:-1]), c)
    g = grad.reshape(-1).to(torch.float32).contiguous()
    _, dx, dw, db = _run_chunks(x2, weight, bias, target.reshape(-1), temperature, ignore_index, g, True,
                                   False, True)
    return dx.view(x.shape), dw, (db if db is not None else x.new_empty((0,)))


# Every configuration the launchers and the autotuner can pick, for the sm_80/sm_90 compile
# test (kernels/triton/compile_check.py records the launches these calls make, each config
# the autotuner may try included): fp16, bf16, fp32 as TF32 and as IEEE; C a multiple of 16
# (aligned) or not; with and without a bias; the loss alone (no Z stored), the gradient
# formed in the forward, and reduction "none"'s backward (per-token scales). Small CPU
# tensors: the launcher checks the targets' values.
def launch_cases():
    import functools

    from .compile_check import matmul_tf32

    def run(x, w, b, target, tf32):
        with matmul_tf32(tf32):
            forward(x, w, b, target, 1.0, -100, "mean", False)
            forward(x, w, b, target, 1.0, -100, "mean", True)
            backward_none(torch.ones(5), x, w, b, target, 1.0, -100)

    for dtype, tf32 in ((torch.float16, False), (torch.bfloat16, False), (torch.float32, True),
                        (torch.float32, False)):
        for c, bias in itertools.product((64, 63), (False, True)):
            # V = 300: several vocabulary tiles, as in real use (n_vtiles == 1 would compile as a constant)
            x, w = torch.zeros(5, c, dtype=dtype), torch.zeros(300, c, dtype=dtype)
            b = torch.zeros(300, dtype=dtype) if bias else None
            yield functools.partial(run, x, w, b, torch.zeros(5, dtype=torch.int64), tf32)


# -----------------------------------------------------------------------------------------
# Registration: opaque custom ops with a fake impl and autograd on top.
# -----------------------------------------------------------------------------------------


def _lce_impl(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, target: torch.Tensor,
           temperature: float, ignore_index: int, reduction: str, need_grad: bool
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # kernels.linear_cross_entropy checks this eagerly; under torch.compile only here.
    _checks.positive_finite("temperature", temperature)
    return forward(x, weight, bias, target, temperature, ignore_index, reduction, need_grad)


lce_op = torch.library.custom_op("gptk::linear_cross_entropy_triton", _lce_impl, mutates_args=())


def fake_outputs(x, weight, bias, target, reduction, need_grad):
    """Output shapes of the forward op (shared with the cuda backend's fake kernel)."""
    loss = x.new_empty(target.shape if reduction == "none" else (), dtype=torch.float32)
    if not need_grad or reduction == "none":
        return loss, x.new_empty((0,)), x.new_empty((0,)), x.new_empty((0,))
    db = x.new_empty((weight.shape[0],) if bias is not None else (0,))
    return loss, x.new_empty(x.shape), weight.new_empty(weight.shape), db


@lce_op.register_fake
def _(x, weight, bias, target, temperature, ignore_index, reduction, need_grad):
    return fake_outputs(x, weight, bias, target, reduction, need_grad)


def _lce_backward_impl(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    target: torch.Tensor, temperature: float, ignore_index: int
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return backward_none(grad, x, weight, bias, target, temperature, ignore_index)


lce_backward_op = torch.library.custom_op("gptk::linear_cross_entropy_triton_backward", _lce_backward_impl,
                                          mutates_args=())
_lce_backward_call = _launch.fast_op(lce_backward_op, _lce_backward_impl)


@lce_backward_op.register_fake
def _(grad, x, weight, bias, target, temperature, ignore_index):
    return x.new_empty(x.shape), weight.new_empty(weight.shape), \
        x.new_empty((weight.shape[0],) if bias is not None else (0,))


def setup_context(ctx, inputs, output):
    x, weight, bias, target, temperature, ignore_index, reduction, need_grad = inputs
    _, dx, dw, db = output
    ctx.mark_non_differentiable(dx, dw, db)
    ctx.has_bias, ctx.reduction, ctx.need_grad = bias is not None, reduction, need_grad
    ctx.temperature, ctx.ignore_index = temperature, ignore_index
    if reduction == "none":
        ctx.save_for_backward(x, weight, bias, target)
    else:
        ctx.save_for_backward(dx, dw, db)


def scaled_grads(ctx, grad, backward_none_op):
    """The autograd formula shared by the triton and cuda backends: scale the gradients the
    forward formed by the scalar incoming gradient, or (reduction "none") run the backward op."""
    if not ctx.need_grad:
        raise RuntimeError("linear_cross_entropy ran with need_grad=False, so it formed no gradient; "
                           "call kernels.linear_cross_entropy instead of the op")
    if ctx.reduction == "none":
        x, weight, bias, target = ctx.saved_tensors
        dx, dw, db = backward_none_op(grad, x, weight, bias, target, ctx.temperature, ctx.ignore_index)
    else:
        dx, dw, db = ctx.saved_tensors
        dx, dw, db = dx * grad, dw * grad, db * grad
    return dx, dw, (db if ctx.has_bias else None), None, None, None, None, None


def _backward(ctx, grad, *_unused):
    return scaled_grads(ctx, grad, _lce_backward_call)


_lce_call = _launch.fast_op(lce_op, _lce_impl, setup_context, _backward)


def needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def linear_cross_entropy(x, weight, target, bias=None, temperature=1.0, ignore_index=-100, reduction="mean"):
    """The triton backend's linear_cross_entropy (arguments validated by kernels.linear_cross_entropy)."""
    need = needs_grad(x, weight, bias)
    return _lce_call(x, weight, bias, target, float(temperature), int(ignore_index), reduction, need)[0]
