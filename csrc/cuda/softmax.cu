// Softmax with temperature on the GPU, forward and backward.
//
// Roofline: forward reads x and writes y (2 N s bytes), backward reads y and dy and
// writes dx (3 N s): memory-bound, so everything is about one pass at full width with
// enough bytes in flight (3 TB/s x ~1 us over 132 SMs: >= 23 KB per SM).
//  - Every row moves in 16-byte accesses whatever its width and start: a scalar head up
//    to the first 16-byte boundary, aligned packs, a scalar tail (RowSpan, common.cuh).
//  - Rows up to 16384 elements whose operands share one 16-byte phase row after row (any
//    contiguous tensor) stay in registers, 16 elements per thread: a warp per row (4 rows
//    per block) up to 512, a block of up to 1024 threads beyond. All loads are issued
//    before the first use; the exponentials are kept in fp32 registers, so exp2 runs once
//    per element.
//  - Other rows (longer, or operands at different phases, e.g. x[:, 1:]) are staged in
//    shared memory, each operand at its own phase, so HBM is read once: up to the
//    device's opt-in limit (227 KB on an H100; the backward stages two rows). The forward
//    stages them widened to fp32 (58K elements on an H100, the 50257-wide vocabulary
//    row included) and overwrites them with their exponentials: exp2 runs once per
//    element. 16-bit rows too long for that (up to 116K) stay raw and the output pass
//    recomputes exp2 (two per element).
//  - Longer rows still stream (16-byte packs when the operands share a phase): pass 1
//    keeps a per-thread online (max, sum) pair combined across the block
//    (csrc/common/math.h), pass 2 re-reads x: 3 N s bytes.
// The temperature is folded into the exponent: exp2((x - max) * c), c = log2(e) / t.
#include <type_traits>

#include "cuda/common.cuh"

namespace gptk {
namespace cuda {
namespace {

constexpr int kStreamThreads = 512;
constexpr int kRegElems = 16;  // elements per thread of a register-resident row
constexpr int kMaxRegRow = 1024 * kRegElems;

template <int THREADS>
constexpr int rows_per_block() {
  return THREADS == 32 ? 4 : 1;
}
// >= 32 resident warps: at most 64 registers per thread.
template <int THREADS>
constexpr int min_blocks() {
  return 1024 / (THREADS * rows_per_block<THREADS>()) > 0 ? 1024 / (THREADS * rows_per_block<THREADS>()) : 1;
}

template <typename T, int THREADS>
__global__ void __launch_bounds__(THREADS * rows_per_block<THREADS>(), min_blocks<THREADS>())
    softmax_fwd_regs(const T* __restrict__ x, int64_t x_stride, T* __restrict__ y, int64_t y_stride, int64_t rows,
                     int n, float c) {
  constexpr int VEC = kVec16<T>, PPT = kRegElems / VEC;
  __shared__ float smem[32];
  const int64_t row = static_cast<int64_t>(blockIdx.x) * rows_per_block<THREADS>() + threadIdx.y;
  if (row >= rows) return;  // whole rows leave together: a block-wide row has one row per block
  const T* xr = x + row * x_stride;
  T* yr = y + row * y_stride;  // same 16-byte phase as xr (the launcher checked)
  const RowSpan<T> sp(xr, n);
  const int t = threadIdx.x;
  Pack<T, VEC> v[PPT];
#pragma unroll
  for (int i = 0; i < PPT; ++i) {
    const int p = i * THREADS + t;
    if (p < sp.packs) v[i] = load_raw<T, VEC>(xr + sp.head + p * VEC);
  }
  const bool has_head = t < sp.head, has_tail = t < sp.tail;
  const float hx = has_head ? to_float(xr[t]) : kNegInf;
  const float tx = has_tail ? to_float(xr[sp.tail0 + t]) : kNegInf;
  float m = softmax_max(hx, tx);
#pragma unroll
  for (int i = 0; i < PPT; ++i) {
    if (i * THREADS + t < sp.packs) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) m = softmax_max(m, to_float(v[i].v[e]));
    }
  }
  m = row_allreduce<THREADS>(m, MaxOp{}, smem);
  float ex[PPT][VEC];
  float s = 0.0f;
  const float he = has_head ? softmax_exp(hx, m, c) : 0.0f;
  s += he;
#pragma unroll
  for (int i = 0; i < PPT; ++i) {
    if (i * THREADS + t < sp.packs) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        ex[i][e] = softmax_exp(to_float(v[i].v[e]), m, c);
        s += ex[i][e];
      }
    }
  }
  const float te = has_tail ? softmax_exp(tx, m, c) : 0.0f;
  s += te;
  const float inv = 1.0f / row_allreduce<THREADS>(s, SumOp{}, smem);
#pragma unroll
  for (int i = 0; i < PPT; ++i) {
    const int p = i * THREADS + t;
    if (p < sp.packs) {
      float out[VEC];
#pragma unroll
      for (int e = 0; e < VEC; ++e) out[e] = ex[i][e] * inv;
      store_pack<T, VEC>(yr + sp.head + p * VEC, out);
    }
  }
  if (has_head) yr[t] = from_float<T>(he * inv);
  if (has_tail) yr[sp.tail0 + t] = from_float<T>(te * inv);
}

template <typename T, int THREADS>
__global__ void __launch_bounds__(THREADS * rows_per_block<THREADS>(), min_blocks<THREADS>())
    softmax_bwd_regs(const T* __restrict__ dy, int64_t dy_stride, const T* __restrict__ y, int64_t y_stride,
                     T* __restrict__ dx, int64_t dx_stride, int64_t rows, int n, float inv_t) {
  constexpr int VEC = kVec16<T>, PPT = kRegElems / VEC;
  __shared__ float smem[32];
  const int64_t row = static_cast<int64_t>(blockIdx.x) * rows_per_block<THREADS>() + threadIdx.y;
  if (row >= rows) return;
  const T* yr = y + row * y_stride;
  const T* gr = dy + row * dy_stride;
  T* dr = dx + row * dx_stride;
  const RowSpan<T> sp(yr, n);
  const int t = threadIdx.x;
  Pack<T, VEC> yv[PPT], gv[PPT];
#pragma unroll
  for (int i = 0; i < PPT; ++i) {
    const int p = i * THREADS + t;
    if (p < sp.packs) {
      yv[i] = load_raw<T, VEC>(yr + sp.head + p * VEC);
      gv[i] = load_raw<T, VEC>(gr + sp.head + p * VEC);
    }
  }
  const bool has_head = t < sp.head, has_tail = t < sp.tail;
  const float hy = has_head ? to_float(yr[t]) : 0.0f, hg = has_head ? to_float(gr[t]) : 0.0f;
  const float ty = has_tail ? to_float(yr[sp.tail0 + t]) : 0.0f, tg = has_tail ? to_float(gr[sp.tail0 + t]) : 0.0f;
  float dot = hy * hg;
#pragma unroll
  for (int i = 0; i < PPT; ++i) {
    if (i * THREADS + t < sp.packs) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) dot += to_float(yv[i].v[e]) * to_float(gv[i].v[e]);
    }
  }
  dot += ty * tg;
  dot = row_allreduce<THREADS>(dot, SumOp{}, smem);
#pragma unroll
  for (int i = 0; i < PPT; ++i) {
    const int p = i * THREADS + t;
    if (p < sp.packs) {
      float out[VEC];
#pragma unroll
      for (int e = 0; e < VEC; ++e) out[e] = to_float(yv[i].v[e]) * (to_float(gv[i].v[e]) - dot) * inv_t;
      store_pack<T, VEC>(dr + sp.head + p * VEC, out);
    }
  }
  if (has_head) dr[t] = from_float<T>(hy * (hg - dot) * inv_t);
  if (has_tail) dr[sp.tail0 + t] = from_float<T>(ty * (tg - dot) * inv_t);
}

// One block per row, the row staged in shared memory at x's phase; y written at its own.
// S = float (fp32 rows, and 16-bit rows widened while staged): the exponentials overwrite
// the staged values in place and the output pass only scales them, so exp2 runs once per
// element (a 50257-wide row: 201 KB, one block of 1024 threads per SM). S = T (16-bit rows
// whose fp32 copy does not fit): staged raw, and the output pass recomputes exp2.
// 64 bytes of loads in flight per thread while staging: 4 packs of bf16, 8 of fp32.
template <typename T>
constexpr int kStageUnroll = sizeof(T) == 4 ? 8 : 4;
template <typename T, typename S, int THREADS>
__global__ void __launch_bounds__(THREADS, 1024 / THREADS)
    softmax_fwd_smem(const T* __restrict__ x, int64_t x_stride, T* __restrict__ y, int64_t y_stride, int n, float c) {
  constexpr int VEC = kVec16<T>;
  constexpr bool kInPlace = std::is_same_v<S, float>;  // fp32 staging: exps overwrite the row
  __shared__ float smem[32];
  S* buf = dynamic_smem<S>();
  const T* xr = x + static_cast<int64_t>(blockIdx.x) * x_stride;
  T* yr = y + static_cast<int64_t>(blockIdx.x) * y_stride;
  float m = kNegInf;
  const int off = stage_row<T, THREADS, kStageUnroll<T>>(buf, xr, n, [&](float v) { m = softmax_max(m, v); });
  m = row_allreduce<THREADS>(m, MaxOp{}, smem);  // its barrier also publishes buf
  float s = 0.0f;
  if constexpr (kInPlace) {
    // exp2 in place, in x's own packs (aligned in buf): each value is read and written by
    // one thread; the sum's barrier below publishes them.
    walk_row<T, THREADS>(xr, n, [&](int j, auto tag) {
      if constexpr (std::is_same_v<decltype(tag), PackTag>) {
        float v[VEC];
        smem_values<T, S>(buf, off + j, true, v);
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          v[e] = softmax_exp(v[e], m, c);
          s += v[e];
        }
#pragma unroll
        for (int k = 0; k < VEC; k += 4) {
          *reinterpret_cast<Pack<float, 4>*>(buf + off + j + k) = Pack<float, 4>{{v[k], v[k + 1], v[k + 2], v[k + 3]}};
        }
      } else {
        const float e = softmax_exp(buf[off + j], m, c);
        buf[off + j] = e;
        s += e;
      }
    });
  } else {
    walk_row<T, THREADS>(yr, n, [&](int j, auto tag) {
      if constexpr (std::is_same_v<decltype(tag), PackTag>) {
        float v[VEC];
        smem_values<T, S>(buf, off + j, (off + RowSpan<T>(yr, n).head) % VEC == 0, v);
#pragma unroll
        for (int e = 0; e < VEC; ++e) s += softmax_exp(v[e], m, c);
      } else {
        s += softmax_exp(to_float(buf[off + j]), m, c);
      }
    });
  }
  const float inv = 1.0f / row_allreduce<THREADS>(s, SumOp{}, smem);
  // buf at y's packs: 16-byte reads when y shares x's phase (fp32: when it is 4 elements apart)
  const int head = RowSpan<T>(yr, n).head;
  const bool aligned = (off + head) % (kInPlace ? 4 : VEC) == 0;
  walk_row<T, THREADS>(yr, n, [&](int j, auto tag) {
    if constexpr (std::is_same_v<decltype(tag), PackTag>) {
      float v[VEC];
      smem_values<T, S>(buf, off + j, aligned, v);
#pragma unroll
      for (int e = 0; e < VEC; ++e) v[e] = (kInPlace ? v[e] : softmax_exp(v[e], m, c)) * inv;
      store_pack<T, VEC>(yr + j, v);
    } else {
      const float v = to_float(buf[off + j]);
      yr[j] = from_float<T>((kInPlace ? v : softmax_exp(v, m, c)) * inv);
    }
  });
}

// One block per row: y and dy staged at their phases, dx written at its own.
template <typename T, int THREADS>
__global__ void __launch_bounds__(THREADS, 1024 / THREADS)
    softmax_bwd_smem(const T* __restrict__ dy, int64_t dy_stride, const T* __restrict__ y, int64_t y_stride,
                     T* __restrict__ dx, int64_t dx_stride, int n, float inv_t) {
  constexpr int VEC = kVec16<T>;
  __shared__ float smem[32];
  T* ybuf = dynamic_smem<T>();
  T* gbuf = ybuf + staged_elems<T>(n);
  const int64_t row = blockIdx.x;
  T* dr = dx + row * dx_stride;
  const int2 offs = stage_rows2<T, THREADS, 2>(ybuf, y + row * y_stride, gbuf, dy + row * dy_stride, n);
  const int yoff = offs.x, goff = offs.y;
  __syncthreads();
  const int head = RowSpan<T>(dr, n).head;
  const bool y_aligned = (yoff + head) % VEC == 0, g_aligned = (goff + head) % VEC == 0;
  float dot = 0.0f;
  walk_row<T, THREADS>(dr, n, [&](int j, auto tag) {
    if constexpr (std::is_same_v<decltype(tag), PackTag>) {
      const Pack<T, VEC> a = smem_pack<T>(ybuf, yoff + j, y_aligned), b = smem_pack<T>(gbuf, goff + j, g_aligned);
#pragma unroll
      for (int e = 0; e < VEC; ++e) dot += to_float(a.v[e]) * to_float(b.v[e]);
    } else {
      dot += to_float(ybuf[yoff + j]) * to_float(gbuf[goff + j]);
    }
  });
  dot = row_allreduce<THREADS>(dot, SumOp{}, smem);
  walk_row<T, THREADS>(dr, n, [&](int j, auto tag) {
    if constexpr (std::is_same_v<decltype(tag), PackTag>) {
      const Pack<T, VEC> a = smem_pack<T>(ybuf, yoff + j, y_aligned), b = smem_pack<T>(gbuf, goff + j, g_aligned);
      float out[VEC];
#pragma unroll
      for (int e = 0; e < VEC; ++e) out[e] = to_float(a.v[e]) * (to_float(b.v[e]) - dot) * inv_t;
      store_pack<T, VEC>(dr + j, out);
    } else {
      const float a = to_float(ybuf[yoff + j]);
      dr[j] = from_float<T>(a * (to_float(gbuf[goff + j]) - dot) * inv_t);
    }
  });
}

// Visit the row at p in its own 16-byte packs (VECTOR: every operand shares p's phase), or
// element by element.
template <typename T, bool VECTOR, typename F>
__device__ __forceinline__ void stream_row(const void* p, int n, F&& f) {
  if constexpr (VECTOR) {
    walk_row<T, kStreamThreads>(p, n, f);
  } else {
    for (int j = threadIdx.x; j < n; j += kStreamThreads) f(j, ScalarTag{});
  }
}

template <typename T, bool VECTOR>
__global__ void __launch_bounds__(kStreamThreads, 1)
    softmax_fwd_stream(const T* __restrict__ x, int64_t x_stride, T* __restrict__ y, int64_t y_stride, int n,
                       float c) {
  constexpr int VEC = kVec16<T>;
  __shared__ MaxSum smem[32];
  const T* xr = x + static_cast<int64_t>(blockIdx.x) * x_stride;
  T* yr = y + static_cast<int64_t>(blockIdx.x) * y_stride;
  MaxSum st = softmax_empty();
  stream_row<T, VECTOR>(xr, n, [&](int j, auto tag) {
    if constexpr (std::is_same_v<decltype(tag), PackTag>) {
      const Pack<T, VEC> v = load_raw<T, VEC>(xr + j);
#pragma unroll
      for (int e = 0; e < VEC; ++e) st = softmax_update(st, to_float(v.v[e]), c);
    } else {
      st = softmax_update(st, to_float(xr[j]), c);
    }
  });
  st = row_allreduce<kStreamThreads>(st, MaxSumOp{c}, smem);
  const float inv = 1.0f / st.sum;
  stream_row<T, VECTOR>(yr, n, [&](int j, auto tag) {
    if constexpr (std::is_same_v<decltype(tag), PackTag>) {
      const Pack<T, VEC> v = load_raw<T, VEC>(xr + j);
      float out[VEC];
#pragma unroll
      for (int e = 0; e < VEC; ++e) out[e] = softmax_exp(to_float(v.v[e]), st.max, c) * inv;
      store_pack<T, VEC>(yr + j, out);
    } else {
      yr[j] = from_float<T>(softmax_exp(to_float(xr[j]), st.max, c) * inv);
    }
  });
}

template <typename T, bool VECTOR>
__global__ void __launch_bounds__(kStreamThreads, 1)
    softmax_bwd_stream(const T* __restrict__ dy, int64_t dy_stride, const T* __restrict__ y, int64_t y_stride,
                       T* __restrict__ dx, int64_t dx_stride, int n, float inv_t) {
  constexpr int VEC = kVec16<T>;
  __shared__ float smem[32];
  const int64_t row = blockIdx.x;
  const T* yr = y + row * y_stride;
  const T* gr = dy + row * dy_stride;
  T* dr = dx + row * dx_stride;
  float dot = 0.0f;
  stream_row<T, VECTOR>(dr, n, [&](int j, auto tag) {
    if constexpr (std::is_same_v<decltype(tag), PackTag>) {
      const Pack<T, VEC> a = load_raw<T, VEC>(yr + j), b = load_raw<T, VEC>(gr + j);
#pragma unroll
      for (int e = 0; e < VEC; ++e) dot += to_float(a.v[e]) * to_float(b.v[e]);
    } else {
      dot += to_float(yr[j]) * to_float(gr[j]);
    }
  });
  dot = row_allreduce<kStreamThreads>(dot, SumOp{}, smem);
  stream_row<T, VECTOR>(dr, n, [&](int j, auto tag) {
    if constexpr (std::is_same_v<decltype(tag), PackTag>) {
      const Pack<T, VEC> a = load_raw<T, VEC>(yr + j), b = load_raw<T, VEC>(gr + j);
      float out[VEC];
#pragma unroll
      for (int e = 0; e < VEC; ++e) out[e] = to_float(a.v[e]) * (to_float(b.v[e]) - dot) * inv_t;
      store_pack<T, VEC>(dr + j, out);
    } else {
      dr[j] = from_float<T>(to_float(yr[j]) * (to_float(gr[j]) - dot) * inv_t);
    }
  });
}

// Call f(std::integral_constant<int, THREADS>) for the register-row block holding n
// elements at kRegElems per thread.
template <typename F>
void with_reg_threads(int64_t n, F&& f) {
  if (n <= 32 * kRegElems) f(std::integral_constant<int, 32>{});
  else if (n <= 64 * kRegElems) f(std::integral_constant<int, 64>{});
  else if (n <= 128 * kRegElems) f(std::integral_constant<int, 128>{});
  else if (n <= 256 * kRegElems) f(std::integral_constant<int, 256>{});
  else if (n <= 512 * kRegElems) f(std::integral_constant<int, 512>{});
  else f(std::integral_constant<int, 1024>{});
}

// Launch a staged-row kernel with `bytes` of dynamic shared memory: 256 threads for rows
// a register block would hold (operands at different phases), LONG_THREADS beyond.
template <int LONG_THREADS, typename K256, typename KLONG, typename Launch>
void launch_staged(int64_t n, size_t bytes, K256* k256, KLONG* klong, Launch&& launch) {
  if (n <= kMaxRegRow) {
    allow_dynamic_smem(k256, bytes);
    launch(k256, 256);
  } else {
    allow_dynamic_smem(klong, bytes);
    launch(klong, LONG_THREADS);
  }
}

// The forward's path for rows of n elements, in one place: registers for rows up to
// kMaxRegRow whose operands share one phase row after row; else the row staged in shared
// memory, widened to fp32 where that fits (one exp2 per element: up to 58K elements in an
// H100's 227 KB), raw where only that fits (16-bit rows up to 116K, two exp2); else
// streamed. Staged rows a register block would hold take 256 threads; longer ones 512
// while two blocks fit an SM (one loads while the other computes), else 1024 (the block
// holds the SM: a 50257-wide row widened is 201 KB).
enum class FwdPath { kRegs, kSmemWide, kSmemRaw, kStream };
struct FwdPlan {
  FwdPath path;
  int threads;
  size_t smem;
};
template <typename T>
FwdPlan forward_plan(int64_t n, bool same_phase_rows, int64_t smem_limit) {
  if (n <= kMaxRegRow && same_phase_rows) return {FwdPath::kRegs, 0, 0};
  const size_t wide = staged_elems<T>(n) * sizeof(float), raw = staged_elems<T>(n) * sizeof(T);
  const int threads_wide = n <= kMaxRegRow ? 256 : 2 * static_cast<int64_t>(wide) <= smem_limit ? 512 : 1024;
  if (static_cast<int64_t>(wide) <= smem_limit) return {FwdPath::kSmemWide, threads_wide, wide};
  if (static_cast<int64_t>(raw) <= smem_limit) return {FwdPath::kSmemRaw, 1024, raw};
  return {FwdPath::kStream, kStreamThreads, 0};
}

template <typename T>
void forward_typed(const void* x, int64_t xs, void* y, int64_t ys, int64_t rows, int64_t n, float c, cudaStream_t st) {
  const T* xp = static_cast<const T*>(x);
  T* yp = static_cast<T*>(y);
  const int ni = static_cast<int>(n);
  const bool same = same_phase<T>(rows, {{x, xs}, {y, ys}});
  const FwdPlan plan = forward_plan<T>(n, same, max_smem_per_block());
  const auto staged = [&](auto kernel) {
    allow_dynamic_smem(kernel, plan.smem);
    kernel<<<static_cast<unsigned int>(rows), plan.threads, plan.smem, st>>>(xp, xs, yp, ys, ni, c);
  };
  switch (plan.path) {
    case FwdPath::kRegs:
      with_reg_threads(n, [&](auto threads) {
        constexpr int TH = decltype(threads)::value;
        softmax_fwd_regs<T, TH><<<blocks_for(rows, rows_per_block<TH>()), dim3(TH, rows_per_block<TH>()), 0, st>>>(
            xp, xs, yp, ys, rows, ni, c);
      });
      break;
    case FwdPath::kSmemWide:
      if (plan.threads == 256) staged(softmax_fwd_smem<T, float, 256>);
      else if (plan.threads == 512) staged(softmax_fwd_smem<T, float, 512>);
      else staged(softmax_fwd_smem<T, float, 1024>);
      break;
    case FwdPath::kSmemRaw:
      if constexpr (sizeof(T) == 2) staged(softmax_fwd_smem<T, T, 1024>);  // fp32 rows always fit widened
      break;
    case FwdPath::kStream:
      if (same) {
        softmax_fwd_stream<T, true><<<rows, kStreamThreads, 0, st>>>(xp, xs, yp, ys, ni, c);
      } else {
        softmax_fwd_stream<T, false><<<rows, kStreamThreads, 0, st>>>(xp, xs, yp, ys, ni, c);
      }
      break;
  }
}

template <typename T>
void backward_typed(const void* dy, int64_t dys, const void* y, int64_t ys, void* dx, int64_t dxs, int64_t rows,
                    int64_t n, float inv_t, cudaStream_t st) {
  const T* dyp = static_cast<const T*>(dy);
  const T* yp = static_cast<const T*>(y);
  T* dxp = static_cast<T*>(dx);
  const int ni = static_cast<int>(n);
  if (n <= kMaxRegRow && same_phase<T>(rows, {{y, ys}, {dy, dys}, {dx, dxs}})) {
    with_reg_threads(n, [&](auto threads) {
      constexpr int TH = decltype(threads)::value;
      softmax_bwd_regs<T, TH><<<blocks_for(rows, rows_per_block<TH>()), dim3(TH, rows_per_block<TH>()), 0, st>>>(
          dyp, dys, yp, ys, dxp, dxs, rows, ni, inv_t);
    });
    return;
  }
  const size_t bytes = 2 * staged_elems<T>(n) * sizeof(T);
  if (bytes <= static_cast<size_t>(max_smem_per_block())) {
    // Two staged rows: beyond 16384 elements only one block fits an SM, so it takes 1024 threads.
    launch_staged<1024>(n, bytes, softmax_bwd_smem<T, 256>, softmax_bwd_smem<T, 1024>, [&](auto kernel, int threads) {
      kernel<<<static_cast<unsigned int>(rows), threads, bytes, st>>>(dyp, dys, yp, ys, dxp, dxs, ni,
                                                                                       inv_t);
    });
    return;
  }
  if (same_phase<T>(rows, {{y, ys}, {dy, dys}, {dx, dxs}})) {
    softmax_bwd_stream<T, true><<<rows, kStreamThreads, 0, st>>>(dyp, dys, yp, ys, dxp, dxs, ni, inv_t);
  } else {
    softmax_bwd_stream<T, false><<<rows, kStreamThreads, 0, st>>>(dyp, dys, yp, ys, dxp, dxs, ni, inv_t);
  }
}

}  // namespace

cudaError_t softmax_forward(DType dt, const void* x, int64_t x_stride, void* y, int64_t y_stride, int64_t rows,
                            int64_t n, float c, cudaStream_t stream) {
  if (rows == 0 || n == 0) return cudaSuccess;
  switch (dt) {
    case DType::kFloat32: forward_typed<float>(x, x_stride, y, y_stride, rows, n, c, stream); break;
    case DType::kFloat16: forward_typed<__half>(x, x_stride, y, y_stride, rows, n, c, stream); break;
    case DType::kBFloat16: forward_typed<__nv_bfloat16>(x, x_stride, y, y_stride, rows, n, c, stream); break;
  }
  return cudaGetLastError();
}

cudaError_t softmax_backward(DType dt, const void* dy, int64_t dy_stride, const void* y, int64_t y_stride, void* dx,
                             int64_t dx_stride, int64_t rows, int64_t n, float inv_t, cudaStream_t stream) {
  if (rows == 0 || n == 0) return cudaSuccess;
  switch (dt) {
    case DType::kFloat32:
      backward_typed<float>(dy, dy_stride, y, y_stride, dx, dx_stride, rows, n, inv_t, stream);
      break;
    case DType::kFloat16:
      backward_typed<__half>(dy, dy_stride, y, y_stride, dx, dx_stride, rows, n, inv_t, stream);
      break;
    case DType::kBFloat16:
      backward_typed<__nv_bfloat16>(dy, dy_stride, y, y_stride, dx, dx_stride, rows, n, inv_t, stream);
      break;
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace gptk
