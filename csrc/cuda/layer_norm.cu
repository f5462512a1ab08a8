// Layer norm over the last dim, and add_layer_norm (the pre-LN block's residual add fused
// in), on the GPU: forward, and the backward's dx with the dweight/dbias partials, which
// column_sum (gelu_linear.cu) adds in a fixed order: deterministic.
//
// Roofline: forward reads x (and residual) and writes y (and x + residual): 2-4 N s
// bytes plus 8 bytes of statistics per row; backward reads x, dy (and dsum), writes dx
// (3-4 N s), plus column_chunks(rows) x N fp32 partials per gradient (~2% at 16384 rows).
//  - Backward rows that start 16-byte aligned and are whole packs wide (the usual case, up
//    to 1024 packs) run ln_bwd_fused: each thread owns one pack of columns in every row of
//    its block's chunk, so the partials accumulate in registers beside dx and x and dy are
//    read once. Other rows: dx, then norm_param_partials reads x and dy again.
//  - Every row moves in 16-byte accesses whatever its width and start: a scalar head up
//    to the first 16-byte boundary, aligned packs, a scalar tail (RowSpan, common.cuh).
//  - Rows up to 8192 elements whose operands (x, residual, sum, y, weight, bias) share one
//    16-byte phase row after row stay in registers, 8 elements per thread: a warp per row
//    (4 rows per block) up to 256, a block of up to 1024 threads beyond. Weight and bias
//    are loaded first, all loads issue before the first use, and one fused
//    (sum, sum of squares) all-reduce gives mean and variance.
//  - Other rows (longer, or operands at different phases) are staged in shared memory,
//    each operand at its own phase: HBM is read once, up to the device's opt-in limit.
//  - Longer rows still stream in two passes (per-element Welford updates, then normalise).
//  - The statistics are taken on values centred on the row's first element: a constant
//    row becomes exactly zero (variance 0, y exactly the bias) and a large common offset
//    costs the sums no precision.
// add_layer_norm rounds x + residual to the storage dtype before normalising: that
// rounded sum is what the caller receives and what the backward sees.
#include <type_traits>

#include "cuda/common.cuh"

namespace gptk {
namespace cuda {
namespace {

constexpr int kStreamThreads = 512;
// Elements per thread of a register-resident row: 8 (one bf16 pack, two fp32) fit the
// forward's four operands and the backward's fp32 state in 64 registers (16 bf16 spill:
// the static check in tests/test_static_cuda.py caught it).
constexpr int kRegElems = 8;
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

// (mean, rstd) of a row from the all-reduced sums of its centred values d = x - shift.
__device__ __forceinline__ Float2 centred_stats(Float2 sums, int n, float eps) {
  const float inv_n = 1.0f / static_cast<float>(n);
  const float mean = sums.a * inv_n;
  const float var = fmaxf(sums.b * inv_n - mean * mean, 0.0f);
  return Float2{mean, rsqrt_eps(var, eps)};
}

template <typename T, int THREADS, bool ADD>
__global__ void __launch_bounds__(THREADS * rows_per_block<THREADS>(), min_blocks<THREADS>())
    ln_fwd_regs(const T* __restrict__ x, int64_t x_stride, const T* __restrict__ r, int64_t r_stride,
                T* __restrict__ sum, const T* __restrict__ w, const T* __restrict__ b, T* __restrict__ y,
                float* __restrict__ mean_out, float* __restrict__ rstd_out, int64_t rows, int n, float eps) {
  constexpr int VEC = kVec16<T>, PPT = kRegElems / VEC > 0 ? kRegElems / VEC : 1;
  __shared__ Float2 smem[32];
  const int64_t row = static_cast<int64_t>(blockIdx.x) * rows_per_block<THREADS>() + threadIdx.y;
  if (row >= rows) return;
  const T* xr = x + row * x_stride;
  const T* rr = ADD ? r + row * r_stride : nullptr;
  T* sr = ADD ? sum + row * n : nullptr;
  T* yr = y + row * n;
  const RowSpan<T> sp(xr, n);  // every operand's rows share this phase (the launcher checked)
  const int t = threadIdx.x;
  const bool has_w = w != nullptr, has_b = b != nullptr;
  const bool has_head = t < sp.head, has_tail = t < sp.tail;
  // Parameters first (the same for every row: L2 hits), then the row; nothing waits yet.
  Pack<T, VEC> wv[PPT], bv[PPT], xv[PPT], rv[PPT];
#pragma unroll
  for (int i = 0; i < PPT; ++i) {
    const int p = i * THREADS + t, j = sp.head + p * VEC;
    if (p < sp.packs) {
      if (has_w) wv[i] = load_raw<T, VEC>(w + j);
      if (has_b) bv[i] = load_raw<T, VEC>(b + j);
      xv[i] = load_raw<T, VEC>(xr + j);
      if constexpr (ADD) rv[i] = load_raw<T, VEC>(rr + j);
    }
  }
  // The shift: the row's first (rounded) element, read directly (one broadcast load per
  // operand, issued with the rest and before any store: no shuffle or barrier to fetch it).
  float shift = to_float(xr[0]);
  if constexpr (ADD) shift = to_float(from_float<T>(shift + to_float(rr[0])));
  // A thread's scalar elements (head, tail): the sum is stored as rounded, then centred.
  float hw = 1.0f, hb = 0.0f, tw = 1.0f, tb = 0.0f, hv = 0.0f, tv = 0.0f;
  if (has_head) {
    if (has_w) hw = to_float(w[t]);
    if (has_b) hb = to_float(b[t]);
    hv = to_float(xr[t]);
    if constexpr (ADD) {
      const T s = from_float<T>(hv + to_float(rr[t]));
      sr[t] = s;
      hv = to_float(s);
    }
  }
  if (has_tail) {
    const int j = sp.tail0 + t;
    if (has_w) tw = to_float(w[j]);
    if (has_b) tb = to_float(b[j]);
    tv = to_float(xr[j]);
    if constexpr (ADD) {
      const T s = from_float<T>(tv + to_float(rr[j]));
      sr[j] = s;
      tv = to_float(s);
    }
  }
  float v[PPT][VEC];
  Float2 sums{0.0f, 0.0f};
  if (has_head) {
    hv -= shift;
    sums = Float2{hv, hv * hv};
  }
#pragma unroll
  for (int i = 0; i < PPT; ++i) {
    const int p = i * THREADS + t;
    if (p < sp.packs) {
      if constexpr (ADD) {
        Pack<T, VEC> s;
#pragma unroll
        for (int e = 0; e < VEC; ++e) s.v[e] = from_float<T>(to_float(xv[i].v[e]) + to_float(rv[i].v[e]));
        *reinterpret_cast<Pack<T, VEC>*>(sr + sp.head + p * VEC) = s;
        xv[i] = s;
      }
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        v[i][e] = to_float(xv[i].v[e]) - shift;
        sums.a += v[i][e];
        sums.b += v[i][e] * v[i][e];
      }
    }
  }
  if (has_tail) {
    tv -= shift;
    sums.a += tv;
    sums.b += tv * tv;
  }
  sums = row_allreduce<THREADS>(sums, SumOp{}, smem);
  const Float2 st = centred_stats(sums, n, eps);
  if (t == 0) {
    mean_out[row] = shift + st.a;
    rstd_out[row] = st.b;
  }
#pragma unroll
  for (int i = 0; i < PPT; ++i) {
    const int p = i * THREADS + t;
    if (p < sp.packs) {
      float out[VEC];
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        out[e] = (v[i][e] - st.a) * st.b;
        if (has_w) out[e] *= to_float(wv[i].v[e]);
        if (has_b) out[e] += to_float(bv[i].v[e]);
      }
      store_pack<T, VEC>(yr + sp.head + p * VEC, out);
    }
  }
  const auto scalar_out = [&](float d, float wj, float bj) {
    float out = (d - st.a) * st.b;
    if (has_w) out *= wj;
    if (has_b) out += bj;
    return from_float<T>(out);
  };
  if (has_head) yr[t] = scalar_out(hv, hw, hb);
  if (has_tail) yr[sp.tail0 + t] = scalar_out(tv, tw, tb);
}

// One block per row; x, residual, weight and bias staged in shared memory at their own
// phases, sum and y written at theirs.
template <typename T, int THREADS, bool ADD>
__global__ void __launch_bounds__(THREADS, 1024 / THREADS)
    ln_fwd_smem(const T* __restrict__ x, int64_t x_stride, const T* __restrict__ r, int64_t r_stride,
                T* __restrict__ sum, const T* __restrict__ w, const T* __restrict__ b, T* __restrict__ y,
                float* __restrict__ mean_out, float* __restrict__ rstd_out, int n, float eps) {
  constexpr int VEC = kVec16<T>;
  __shared__ Float2 smem[32];
  const int64_t len = staged_elems<T>(n), row = blockIdx.x;
  T* xb = dynamic_smem<T>();
  T* rb = xb + len;
  T* wb = rb + (ADD ? len : 0);
  T* bb = wb + len;
  const T* xr = x + row * x_stride;
  T* yr = y + row * n;
  const auto nop = [](float) {};
  const int woff = w != nullptr ? stage_row<T, THREADS, 2>(wb, w, n, nop) : 0;
  const int boff = b != nullptr ? stage_row<T, THREADS, 2>(bb, b, n, nop) : 0;
  const int xoff = stage_row<T, THREADS, 2>(xb, xr, n, nop);
  __syncthreads();
  if constexpr (ADD) {
    // xb <- x + residual rounded, element by element in place (each element is read and
    // written by one thread), and the sum written out at its own phase.
    const int roff = stage_row<T, THREADS, 2>(rb, r + row * r_stride, n, nop);
    __syncthreads();
    T* sr = sum + row * n;
    const int head = RowSpan<T>(sr, n).head;
    const bool xa = (xoff + head) % VEC == 0, ra = (roff + head) % VEC == 0;
    walk_row<T, THREADS>(sr, n, [&](int j, auto tag) {
      if constexpr (std::is_same_v<decltype(tag), PackTag>) {
        const Pack<T, VEC> a = smem_pack<T>(xb, xoff + j, xa), c = smem_pack<T>(rb, roff + j, ra);
        Pack<T, VEC> s;
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          s.v[e] = from_float<T>(to_float(a.v[e]) + to_float(c.v[e]));
          xb[xoff + j + e] = s.v[e];
        }
        *reinterpret_cast<Pack<T, VEC>*>(sr + j) = s;
      } else {
        const T s = from_float<T>(to_float(xb[xoff + j]) + to_float(rb[roff + j]));
        xb[xoff + j] = s;
        sr[j] = s;
      }
    });
    __syncthreads();
  }
  const float shift = to_float(xb[xoff]);
  const int head = RowSpan<T>(yr, n).head;
  const bool xa = (xoff + head) % VEC == 0, wa = (woff + head) % VEC == 0, ba = (boff + head) % VEC == 0;
  Float2 sums{0.0f, 0.0f};
  walk_row<T, THREADS>(yr, n, [&](int j, auto tag) {
    if constexpr (std::is_same_v<decltype(tag), PackTag>) {
      const Pack<T, VEC> a = smem_pack<T>(xb, xoff + j, xa);
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        const float d = to_float(a.v[e]) - shift;
        sums.a += d;
        sums.b += d * d;
      }
    } else {
      const float d = to_float(xb[xoff + j]) - shift;
      sums.a += d;
      sums.b += d * d;
    }
  });
  sums = row_allreduce<THREADS>(sums, SumOp{}, smem);
  const Float2 st = centred_stats(sums, n, eps);
  if (threadIdx.x == 0) {
    mean_out[row] = shift + st.a;
    rstd_out[row] = st.b;
  }
  const bool has_w = w != nullptr, has_b = b != nullptr;
  walk_row<T, THREADS>(yr, n, [&](int j, auto tag) {
    if constexpr (std::is_same_v<decltype(tag), PackTag>) {
      const Pack<T, VEC> a = smem_pack<T>(xb, xoff + j, xa);
      Pack<T, VEC> wv, bv;
      if (has_w) wv = smem_pack<T>(wb, woff + j, wa);
      if (has_b) bv = smem_pack<T>(bb, boff + j, ba);
      float out[VEC];
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        out[e] = (to_float(a.v[e]) - shift - st.a) * st.b;
        if (has_w) out[e] *= to_float(wv.v[e]);
        if (has_b) out[e] += to_float(bv.v[e]);
      }
      store_pack<T, VEC>(yr + j, out);
    } else {
      float out = (to_float(xb[xoff + j]) - shift - st.a) * st.b;
      if (has_w) out *= to_float(wb[woff + j]);
      if (has_b) out += to_float(bb[boff + j]);
      yr[j] = from_float<T>(out);
    }
  });
}

template <typename T, int VEC, bool ADD>
__device__ __forceinline__ void load_input(const T* x, const T* r, T* sum, int64_t idx, float (&v)[VEC]) {
  if constexpr (ADD) {
    float a[VEC], b[VEC];
    load_pack<T, VEC>(x + idx, a);
    load_pack<T, VEC>(r + idx, b);
    Pack<T, VEC> s;
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      s.v[e] = from_float<T>(a[e] + b[e]);
      v[e] = to_float(s.v[e]);
    }
    if (sum != nullptr) *reinterpret_cast<Pack<T, VEC>*>(sum + idx) = s;
  } else {
    load_pack<T, VEC>(x + idx, v);
  }
}

// The row's first input element (x + residual rounded to T, as the caller receives it).
template <typename T, bool ADD>
__device__ __forceinline__ float row_shift(const T* x, const T* r) {
  if constexpr (ADD) return to_float(from_float<T>(to_float(x[0]) + to_float(r[0])));
  return to_float(x[0]);
}

template <typename T, int VEC>
__device__ __forceinline__ void normalise_store(T* y, const T* w, const T* b, int64_t idx, const float (&v)[VEC],
                                                float mean, float rstd) {
  float out[VEC], wv[VEC], bv[VEC];
  if (w != nullptr) load_pack<T, VEC>(w + idx, wv);
  if (b != nullptr) load_pack<T, VEC>(b + idx, bv);
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    out[e] = (v[e] - mean) * rstd;
    if (w != nullptr) out[e] *= wv[e];
    if (b != nullptr) out[e] += bv[e];
  }
  store_pack<T, VEC>(y + idx, out);
}

template <typename T, int VEC, bool ADD>
__global__ void __launch_bounds__(kStreamThreads, 1)
    ln_fwd_stream(const T* __restrict__ x, int64_t x_stride, const T* __restrict__ r, int64_t r_stride,
                  T* __restrict__ sum, const T* __restrict__ w, const T* __restrict__ b, T* __restrict__ y,
                  float* __restrict__ mean_out, float* __restrict__ rstd_out, int64_t n, float eps) {
  __shared__ Moments smem[32];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * x_stride;
  const T* rr = ADD ? r + row * r_stride : nullptr;
  const float shift = row_shift<T, ADD>(xr, rr);
  Moments mom{0.0f, 0.0f, 0.0f};
  #pragma unroll 2
  for (int64_t idx = threadIdx.x * VEC; idx < n; idx += kStreamThreads * VEC) {
    float v[VEC];
    load_input<T, VEC, ADD>(xr, rr, ADD ? sum + row * n : nullptr, idx, v);
#pragma unroll
    for (int e = 0; e < VEC; ++e) mom = moments_combine(mom, Moments{1.0f, v[e] - shift, 0.0f});
  }
  mom = row_allreduce<kStreamThreads>(mom, MomentsOp{}, smem);
  const float rstd = rsqrt_eps(moments_variance(mom), eps);
  if (threadIdx.x == 0) {
    mean_out[row] = shift + mom.mean;
    rstd_out[row] = rstd;
  }
  #pragma unroll 2
  for (int64_t idx = threadIdx.x * VEC; idx < n; idx += kStreamThreads * VEC) {
    float v[VEC];
    load_input<T, VEC, ADD>(xr, rr, nullptr, idx, v);  // recomputes the same rounded sum
#pragma unroll
    for (int e = 0; e < VEC; ++e) v[e] -= shift;
    normalise_store<T, VEC>(y + row * n, w, b, idx, v, mom.mean, rstd);
  }
}

// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) + dsum, g = dy * w.
template <typename T, int VEC>
__device__ __forceinline__ void dx_terms(const T* x, const T* dy, const T* w, int64_t idx, float mean, float rstd,
                                         float (&xhat)[VEC], float (&g)[VEC]) {
  float wv[VEC];
  load_pack<T, VEC>(x + idx, xhat);
  load_pack<T, VEC>(dy + idx, g);
  if (w != nullptr) load_pack<T, VEC>(w + idx, wv);
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    xhat[e] = (xhat[e] - mean) * rstd;
    if (w != nullptr) g[e] *= wv[e];
  }
}

template <typename T, int VEC>
__device__ __forceinline__ void dx_store(T* dx, const T* dsum, int64_t idx, const float (&xhat)[VEC],
                                         const float (&g)[VEC], Float2 sums, float inv_n, float rstd) {
  float out[VEC], ds[VEC];
  if (dsum != nullptr) load_pack<T, VEC>(dsum + idx, ds);
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    out[e] = rstd * (g[e] - sums.a * inv_n - xhat[e] * sums.b * inv_n);
    if (dsum != nullptr) out[e] += ds[e];
  }
  store_pack<T, VEC>(dx + idx, out);
}

// ---- register rows of the backward ----
// A thread holds PPT packs of its row and up to two scalar elements (its head and tail).
template <typename T>
constexpr int kBwdPacks = kRegElems / kVec16<T> > 0 ? kRegElems / kVec16<T> : 1;

// dx of one row held in registers: x, dy and dsum (may be null) at xr, gr, dsr and dx at dr,
// every operand split as sp; w null: no weight. The row stays in its raw packs (xhat and
// dy w are recomputed after the reduction rather than held in fp32), and the weight is
// loaded after the row (every row: L1 hits in the fused kernel, where a weight held across
// its row loop would be kept widened to fp32 and spill). A row that is not `live` (past the
// end) loads and stores nothing but still joins the row reduction, so every thread of the
// block reaches its barriers. f(i, q, dy[4], xhat[4]) sees elements [4 q, 4 q + 4) of each
// pack i of a live row (heads and tails are for dx alone). PEEL false: rows without a head
// or tail (16-byte aligned, whole packs), whose scalar code is left out.
template <typename T, int THREADS, int PPT, bool PEEL, typename F>
__device__ __forceinline__ void bwd_row(const T* xr, const T* gr, const T* dsr, T* dr, const T* w,
                                        const RowSpan<T>& sp, const float* mean, const float* rstd, int n, bool live,
                                        Float2* smem, F&& f) {
  constexpr int VEC = kVec16<T>;
  const int t = threadIdx.x;
  const bool has_w = w != nullptr, has_ds = dsr != nullptr;
  bool in[PPT];
#pragma unroll
  for (int i = 0; i < PPT; ++i) in[i] = live && i * THREADS + t < sp.packs;
  Pack<T, VEC> xv[PPT], gv[PPT], dv[PPT];
#pragma unroll
  for (int i = 0; i < PPT; ++i) {
    const int j = sp.head + (i * THREADS + t) * VEC;
    if (in[i]) {
      xv[i] = load_raw<T, VEC>(xr + j);
      gv[i] = load_raw<T, VEC>(gr + j);
      if (has_ds) dv[i] = load_raw<T, VEC>(dsr + j);
    }
  }
  // A thread's scalar elements: its head element, its tail element (either may be absent).
  float sx[2] = {0.0f, 0.0f}, sg[2] = {0.0f, 0.0f}, sd[2] = {0.0f, 0.0f}, sw[2] = {1.0f, 1.0f};
  const bool has[2] = {PEEL && live && t < sp.head, PEEL && live && t < sp.tail};
  const int at[2] = {t, sp.tail0 + t};
#pragma unroll
  for (int k = 0; k < 2; ++k) {
    if (has[k]) {
      sx[k] = to_float(xr[at[k]]);
      sg[k] = to_float(gr[at[k]]);
      if (has_ds) sd[k] = to_float(dsr[at[k]]);
      if (has_w) sw[k] = to_float(w[at[k]]);
    }
  }
  Pack<T, VEC> wv[PPT];
#pragma unroll
  for (int i = 0; i < PPT; ++i) {
    if (in[i] && has_w) wv[i] = load_raw<T, VEC>(w + sp.head + (i * THREADS + t) * VEC);
  }
  const float mu = live ? *mean : 0.0f, rs = live ? *rstd : 0.0f;
  Float2 sums{0.0f, 0.0f};
#pragma unroll
  for (int k = 0; k < 2; ++k) {
    if (has[k]) {
      sx[k] = (sx[k] - mu) * rs;
      if (has_w) sg[k] *= sw[k];
      sums.a += sg[k];
      sums.b += sg[k] * sx[k];
    }
  }
  // (xhat, dy w) of element e of pack i
  const auto terms = [&](int i, int e, float& xh, float& g) {
    xh = (to_float(xv[i].v[e]) - mu) * rs;
    g = to_float(gv[i].v[e]);
    if (has_w) g *= to_float(wv[i].v[e]);
  };
#pragma unroll
  for (int i = 0; i < PPT; ++i) {
    if (in[i]) {
#pragma unroll
      for (int q = 0; q < VEC / 4; ++q) {
        float xh[4], dyv[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float g;
          terms(i, 4 * q + e, xh[e], g);
          dyv[e] = to_float(gv[i].v[4 * q + e]);
          sums.a += g;
          sums.b += g * xh[e];
        }
        f(i, q, dyv, xh);
      }
    }
  }
  sums = row_allreduce<THREADS>(sums, SumOp{}, smem);
  const float inv_n = 1.0f / static_cast<float>(n);
  const float ca = sums.a * inv_n, cb = sums.b * inv_n;
#pragma unroll
  for (int i = 0; i < PPT; ++i) {
    if (in[i]) {
      float out[VEC];
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        float xh, g;
        terms(i, e, xh, g);
        out[e] = rs * (g - ca - xh * cb);
        if (has_ds) out[e] += to_float(dv[i].v[e]);
      }
      store_pack<T, VEC>(dr + sp.head + (i * THREADS + t) * VEC, out);
    }
  }
#pragma unroll
  for (int k = 0; k < 2; ++k) {
    if (has[k]) {
      float out = rs * (sg[k] - ca - sx[k] * cb);
      if (has_ds) out += sd[k];
      dr[at[k]] = from_float<T>(out);
    }
  }
}

// dx alone, a row per block (a warp per row, 4 rows per block, up to 256 elements): rows
// whose operands share a phase row by row but not from row to row (odd widths), or wider
// than ln_bwd_fused takes; the parameter gradients then come from norm_param_partials.
template <typename T, int THREADS>
__global__ void __launch_bounds__(THREADS * rows_per_block<THREADS>(), min_blocks<THREADS>())
    ln_bwd_regs(const T* __restrict__ dy, int64_t dy_stride, const T* __restrict__ dsum, int64_t dsum_stride,
                const T* __restrict__ x, int64_t x_stride, const T* __restrict__ w, const float* __restrict__ mean,
                const float* __restrict__ rstd, T* __restrict__ dx, int64_t rows, int n) {
  __shared__ Float2 smem[32];
  const int64_t row = static_cast<int64_t>(blockIdx.x) * rows_per_block<THREADS>() + threadIdx.y;
  if (row >= rows) return;
  const T* xr = x + row * x_stride;
  const RowSpan<T> sp(xr, n);  // every operand's rows share this phase (the launcher checked)
  bwd_row<T, THREADS, kBwdPacks<T>, true>(xr, dy + row * dy_stride,
                                          dsum != nullptr ? dsum + row * dsum_stride : nullptr, dx + row * n, w, sp,
                                          mean + row, rstd + row, n, true, smem, [](int, int, auto&, auto&) {});
}

// The whole backward of rows that all start on a 16-byte boundary and are whole 16-byte
// packs wide (every operand's; the launcher checks): a thread owns the same pack of columns
// in every row, so besides dx it sums dy xhat and dy over them, and x and dy are read once.
// One pack per thread (rows up to kFusedMaxRow) and the sums in shared memory: the row fits
// 64 registers. Block (THREADS, LANES): LANES rows at a time (512 threads), lane y taking
// rows r0 + y, r0 + y + LANES, ... of the block's chunk [r0, r0 + chunk_rows)
// (column_chunks(rows) chunks, a function of the row count: bitwise the same result on
// every run); the lanes' sums then add in lane order into the chunk's row of the fp32
// partials, which column_sum adds in chunk order. No atomics.
// kFusedMaxRow: the sums' shared memory, 8 bytes per column and row lane (512 threads of
// 16-bit packs, 1024 of fp32), within the 48 KB of static shared memory.
constexpr int kFusedMaxRow = 4096;
template <int THREADS>
constexpr int fused_lanes() {
  return THREADS >= 512 ? 1 : 512 / THREADS;
}
template <typename T, int THREADS>
__global__ void __launch_bounds__(THREADS * fused_lanes<THREADS>(), 1024 / (THREADS * fused_lanes<THREADS>()))
    ln_bwd_fused(const T* __restrict__ dy, int64_t dy_stride, const T* __restrict__ dsum, int64_t dsum_stride,
                 const T* __restrict__ x, int64_t x_stride, const T* __restrict__ w, const float* __restrict__ mean,
                 const float* __restrict__ rstd, T* __restrict__ dx, float* __restrict__ pw, float* __restrict__ pb,
                 int64_t rows, int n, int64_t chunk_rows) {
  constexpr int VEC = kVec16<T>, LANES = fused_lanes<THREADS>(), PIECES = 2 * VEC / 4;
  __shared__ Float2 smem[LANES][THREADS > 32 ? THREADS / 32 : 1];
  // A thread's sums of dy xhat (pieces [0, VEC/4)) and dy (the rest) for its pack of columns,
  // in its own shared-memory slots rather than registers (the row needs them: 16 registers
  // held across the loop spill), laid out so a warp's 16-byte accesses are conflict-free.
  __shared__ Pack<float, 4> sums[PIECES][LANES][THREADS];
  const int t = threadIdx.x, lane = threadIdx.y;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * chunk_rows;
  const int64_t r1 = r0 + chunk_rows < rows ? r0 + chunk_rows : rows;
  const RowSpan<T> sp(x, n);  // every row's: packs only
#pragma unroll
  for (int q = 0; q < PIECES; ++q) sums[q][lane][t] = Pack<float, 4>{{0.0f, 0.0f, 0.0f, 0.0f}};
  const auto acc = [&](int, int q, const float (&g)[4], const float (&xh)[4]) {
    Pack<float, 4> a = sums[q][lane][t], b = sums[VEC / 4 + q][lane][t];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      a.v[e] += g[e] * xh[e];
      b.v[e] += g[e];
    }
    sums[q][lane][t] = a;
    sums[VEC / 4 + q][lane][t] = b;
  };
  for (int64_t base = r0; base < r1; base += LANES) {  // the same trip count in every lane
    const int64_t row = base + lane;
    const bool live = row < r1;
    const int64_t r = live ? row : r0;
    bwd_row<T, THREADS, 1, false>(x + r * x_stride, dy + r * dy_stride,
                                  dsum != nullptr ? dsum + r * dsum_stride : nullptr, dx + r * n, w, sp, mean + r,
                                  rstd + r, n, live, smem[lane], acc);
  }
  __syncthreads();
  if (lane != 0 || t >= sp.packs) return;
  float* qw = pw + static_cast<int64_t>(blockIdx.x) * n + t * VEC;
  float* qb = pb + static_cast<int64_t>(blockIdx.x) * n + t * VEC;
#pragma unroll
  for (int q = 0; q < PIECES; ++q) {
    Pack<float, 4> total = sums[q][0][t];
    for (int l = 1; l < LANES; ++l) {  // lane order: deterministic
#pragma unroll
      for (int e = 0; e < 4; ++e) total.v[e] += sums[q][l][t].v[e];
    }
    float* out = q < VEC / 4 ? qw + 4 * q : qb + 4 * (q - VEC / 4);
#pragma unroll
    for (int e = 0; e < 4; ++e) out[e] = total.v[e];  // rows of n fp32: 4-byte aligned only
  }
}

// One block per row; x, dy, dsum and weight staged at their own phases, dx written at its.
template <typename T, int THREADS>
__global__ void __launch_bounds__(THREADS, 1024 / THREADS)
    ln_bwd_smem(const T* __restrict__ dy, int64_t dy_stride, const T* __restrict__ dsum, int64_t dsum_stride,
                const T* __restrict__ x, int64_t x_stride, const T* __restrict__ w, const float* __restrict__ mean,
                const float* __restrict__ rstd, T* __restrict__ dx, int n) {
  constexpr int VEC = kVec16<T>;
  __shared__ Float2 smem[32];
  const int64_t len = staged_elems<T>(n), row = blockIdx.x;
  T* xb = dynamic_smem<T>();
  T* gb = xb + len;
  T* wb = gb + len;
  T* db = wb + len;
  T* dr = dx + row * n;
  const bool has_w = w != nullptr, has_ds = dsum != nullptr;
  const auto nop = [](float) {};
  const int woff = has_w ? stage_row<T, THREADS, 2>(wb, w, n, nop) : 0;
  const int xoff = stage_row<T, THREADS, 2>(xb, x + row * x_stride, n, nop);
  const int goff = stage_row<T, THREADS, 2>(gb, dy + row * dy_stride, n, nop);
  const int doff = has_ds ? stage_row<T, THREADS, 2>(db, dsum + row * dsum_stride, n, nop) : 0;
  const float mu = mean[row], rs = rstd[row];
  __syncthreads();
  const int head = RowSpan<T>(dr, n).head;
  const bool xa = (xoff + head) % VEC == 0, ga = (goff + head) % VEC == 0, wa = (woff + head) % VEC == 0,
             da = (doff + head) % VEC == 0;
  // (xhat, g) of VEC elements (or 1) at j, from the staged rows
  const auto terms = [&](int j, float (&xh)[VEC], float (&g)[VEC], int count, bool pack) {
    if (pack) {
      const Pack<T, VEC> a = smem_pack<T>(xb, xoff + j, xa), c = smem_pack<T>(gb, goff + j, ga);
      Pack<T, VEC> wv;
      if (has_w) wv = smem_pack<T>(wb, woff + j, wa);
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        xh[e] = (to_float(a.v[e]) - mu) * rs;
        g[e] = to_float(c.v[e]);
        if (has_w) g[e] *= to_float(wv.v[e]);
      }
    } else {
      xh[0] = (to_float(xb[xoff + j]) - mu) * rs;
      g[0] = to_float(gb[goff + j]);
      if (has_w) g[0] *= to_float(wb[woff + j]);
    }
    (void)count;
  };
  Float2 sums{0.0f, 0.0f};
  walk_row<T, THREADS>(dr, n, [&](int j, auto tag) {
    constexpr bool pack = std::is_same_v<decltype(tag), PackTag>;
    constexpr int cnt = pack ? VEC : 1;
    float xh[VEC], g[VEC];
    terms(j, xh, g, cnt, pack);
#pragma unroll
    for (int e = 0; e < cnt; ++e) {
      sums.a += g[e];
      sums.b += g[e] * xh[e];
    }
  });
  sums = row_allreduce<THREADS>(sums, SumOp{}, smem);
  const float inv_n = 1.0f / static_cast<float>(n);
  const float ca = sums.a * inv_n, cb = sums.b * inv_n;
  walk_row<T, THREADS>(dr, n, [&](int j, auto tag) {
    constexpr bool pack = std::is_same_v<decltype(tag), PackTag>;
    float xh[VEC], g[VEC], out[VEC];
    terms(j, xh, g, pack ? VEC : 1, pack);
    if constexpr (pack) {
      Pack<T, VEC> dv;
      if (has_ds) dv = smem_pack<T>(db, doff + j, da);
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        out[e] = rs * (g[e] - ca - xh[e] * cb);
        if (has_ds) out[e] += to_float(dv.v[e]);
      }
      store_pack<T, VEC>(dr + j, out);
    } else {
      out[0] = rs * (g[0] - ca - xh[0] * cb);
      if (has_ds) out[0] += to_float(db[doff + j]);
      dr[j] = from_float<T>(out[0]);
    }
  });
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kStreamThreads, 1)
    ln_bwd_stream(const T* __restrict__ dy, int64_t dy_stride, const T* __restrict__ dsum, int64_t dsum_stride,
                  const T* __restrict__ x, int64_t x_stride, const T* __restrict__ w, const float* __restrict__ mean,
                  const float* __restrict__ rstd, T* __restrict__ dx, int64_t n) {
  __shared__ Float2 smem[32];
  const int64_t row = blockIdx.x;
  const float mu = mean[row], rs = rstd[row];
  const T* xr = x + row * x_stride;
  const T* dyr = dy + row * dy_stride;
  Float2 sums{0.0f, 0.0f};
  #pragma unroll 2
  for (int64_t idx = threadIdx.x * VEC; idx < n; idx += kStreamThreads * VEC) {
    float xhat[VEC], g[VEC];
    dx_terms<T, VEC>(xr, dyr, w, idx, mu, rs, xhat, g);
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      sums.a += g[e];
      sums.b += g[e] * xhat[e];
    }
  }
  sums = row_allreduce<kStreamThreads>(sums, SumOp{}, smem);
  const float inv_n = 1.0f / static_cast<float>(n);
  #pragma unroll 2
  for (int64_t idx = threadIdx.x * VEC; idx < n; idx += kStreamThreads * VEC) {
    float xhat[VEC], g[VEC];
    dx_terms<T, VEC>(xr, dyr, w, idx, mu, rs, xhat, g);
    dx_store<T, VEC>(dx + row * n, dsum != nullptr ? dsum + row * dsum_stride : nullptr, idx, xhat, g, sums, inv_n,
                     rs);
  }
}

// f(std::integral_constant<int, THREADS>) for the register block holding n elements at
// ELEMS per thread (n <= 1024 ELEMS).
template <int ELEMS, typename F>
void with_reg_threads(int64_t n, F&& f) {
  if (n <= 32 * ELEMS) f(std::integral_constant<int, 32>{});
  else if (n <= 64 * ELEMS) f(std::integral_constant<int, 64>{});
  else if (n <= 128 * ELEMS) f(std::integral_constant<int, 128>{});
  else if (n <= 256 * ELEMS) f(std::integral_constant<int, 256>{});
  else if (n <= 512 * ELEMS) f(std::integral_constant<int, 512>{});
  else f(std::integral_constant<int, 1024>{});
}

// Launch a staged-row kernel with `bytes` of dynamic shared memory: 256 threads for rows
// a register block would hold (operands at different phases), 512 beyond (at most 64
// registers: two blocks of a 100 KB row fit an SM, so one loads while the other computes).
template <typename K256, typename K512, typename Launch>
void launch_staged(int64_t n, size_t bytes, K256* k256, K512* k512, Launch&& launch) {
  if (n <= kMaxRegRow) {
    allow_dynamic_smem(k256, bytes);
    launch(k256, 256);
  } else {
    allow_dynamic_smem(k512, bytes);
    launch(k512, 512);
  }
}

template <typename T, bool ADD>
void forward_add(const void* x, int64_t xs, const void* r, int64_t rs, void* sum, const void* w, const void* b,
                 void* y, float* mean, float* rstd, int64_t rows, int64_t n, float eps, cudaStream_t st) {
  const T* xp = static_cast<const T*>(x);
  const T* rp = static_cast<const T*>(r);
  T* sp = static_cast<T*>(sum);
  const T* wp = static_cast<const T*>(w);
  const T* bp = static_cast<const T*>(b);
  T* yp = static_cast<T*>(y);
  const int ni = static_cast<int>(n);
  if (n <= kMaxRegRow && same_phase<T>(rows, {{x, xs}, {r, rs}, {sum, n}, {y, n}, {w, 0}, {b, 0}})) {
    with_reg_threads<kRegElems>(n, [&](auto threads) {
      constexpr int TH = decltype(threads)::value;
      ln_fwd_regs<T, TH, ADD><<<blocks_for(rows, rows_per_block<TH>()), dim3(TH, rows_per_block<TH>()), 0, st>>>(
          xp, xs, rp, rs, sp, wp, bp, yp, mean, rstd, rows, ni, eps);
    });
    return;
  }
  const size_t bytes = (ADD ? 4 : 3) * staged_elems<T>(n) * sizeof(T);
  if (bytes <= static_cast<size_t>(max_smem_per_block())) {
    launch_staged(n, bytes, ln_fwd_smem<T, 256, ADD>, ln_fwd_smem<T, 512, ADD>, [&](auto kernel, int threads) {
      kernel<<<static_cast<unsigned int>(rows), threads, bytes, st>>>(xp, xs, rp, rs, sp, wp, bp, yp, mean, rstd, ni,
                                                                      eps);
    });
    return;
  }
  const bool vec = vector_ok<T>(x, xs, n) && vector_ok<T>(r, rs, n) && vector_ok<T>(sum, n, n) &&
                   vector_ok<T>(w, n, n) && vector_ok<T>(b, n, n) && vector_ok<T>(y, n, n);
  constexpr int vec16 = kVec16<T>;
  if (vec) {
    ln_fwd_stream<T, vec16, ADD><<<rows, kStreamThreads, 0, st>>>(xp, xs, rp, rs, sp, wp, bp, yp, mean, rstd, n, eps);
  } else {
    ln_fwd_stream<T, 1, ADD><<<rows, kStreamThreads, 0, st>>>(xp, xs, rp, rs, sp, wp, bp, yp, mean, rstd, n, eps);
  }
}

template <typename T>
void forward_typed(const void* x, int64_t xs, const void* r, int64_t rs, void* sum, const void* w, const void* b,
                   void* y, float* mean, float* rstd, int64_t rows, int64_t n, float eps, cudaStream_t st) {
  if (r != nullptr) forward_add<T, true>(x, xs, r, rs, sum, w, b, y, mean, rstd, rows, n, eps, st);
  else forward_add<T, false>(x, xs, r, rs, sum, w, b, y, mean, rstd, rows, n, eps, st);
}

// dx alone: registers when every operand's rows share one phase row by row, else shared
// memory, else streamed.
template <typename T>
void backward_dx(const void* dy, int64_t dys, const void* dsum, int64_t dss, const void* x, int64_t xs,
                 const void* w, const float* mean, const float* rstd, void* dx, int64_t rows, int64_t n,
                 cudaStream_t st) {
  const T* dyp = static_cast<const T*>(dy);
  const T* dsp = static_cast<const T*>(dsum);
  const T* xp = static_cast<const T*>(x);
  const T* wp = static_cast<const T*>(w);
  T* dxp = static_cast<T*>(dx);
  const int ni = static_cast<int>(n);
  if (n <= kMaxRegRow && same_phase<T>(rows, {{x, xs}, {dy, dys}, {dsum, dss}, {dx, n}, {w, 0}})) {
    with_reg_threads<kRegElems>(n, [&](auto threads) {
      constexpr int TH = decltype(threads)::value;
      ln_bwd_regs<T, TH><<<blocks_for(rows, rows_per_block<TH>()), dim3(TH, rows_per_block<TH>()), 0, st>>>(
          dyp, dys, dsp, dss, xp, xs, wp, mean, rstd, dxp, rows, ni);
    });
    return;
  }
  const size_t bytes = 4 * staged_elems<T>(n) * sizeof(T);
  if (bytes <= static_cast<size_t>(max_smem_per_block())) {
    launch_staged(n, bytes, ln_bwd_smem<T, 256>, ln_bwd_smem<T, 512>, [&](auto kernel, int threads) {
      kernel<<<static_cast<unsigned int>(rows), threads, bytes, st>>>(dyp, dys, dsp, dss, xp, xs, wp, mean, rstd,
                                                                      dxp, ni);
    });
    return;
  }
  const bool vec = vector_ok<T>(dy, dys, n) && vector_ok<T>(dsum, dss, n) && vector_ok<T>(x, xs, n) &&
                   vector_ok<T>(w, n, n) && vector_ok<T>(dx, n, n);
  constexpr int vec16 = kVec16<T>;
  if (vec) {
    ln_bwd_stream<T, vec16><<<rows, kStreamThreads, 0, st>>>(dyp, dys, dsp, dss, xp, xs, wp, mean, rstd, dxp, n);
  } else {
    ln_bwd_stream<T, 1><<<rows, kStreamThreads, 0, st>>>(dyp, dys, dsp, dss, xp, xs, wp, mean, rstd, dxp, n);
  }
}

// The backward's path, in one place: rows up to kFusedMaxRow wide whose every row of every
// operand starts on a 16-byte boundary and is whole packs wide (contiguous tensors of such a
// width: the usual case) take ln_bwd_fused, dx and the partials in one read of x and dy.
// Other rows take backward_dx, then norm_param_partials reads x and dy again.
template <typename T>
bool fused_backward(int64_t rows, int64_t n, const void* dy, int64_t dys, const void* dsum, int64_t dss,
                    const void* x, int64_t xs, const void* w, const void* dx) {
  return n <= kFusedMaxRow && vector_ok<T>(x, xs, n) && vector_ok<T>(dy, dys, n) &&
         vector_ok<T>(dsum, dss, n) && vector_ok<T>(w, n, n) && vector_ok<T>(dx, n, n);
}

template <typename T>
void backward_typed(DType dt, const void* dy, int64_t dys, const void* dsum, int64_t dss, const void* x, int64_t xs,
                    const void* w, const float* mean, const float* rstd, void* dx, float* pw, float* pb,
                    int64_t rows, int64_t n, cudaStream_t st) {
  if (!fused_backward<T>(rows, n, dy, dys, dsum, dss, x, xs, w, dx)) {
    backward_dx<T>(dy, dys, dsum, dss, x, xs, w, mean, rstd, dx, rows, n, st);
    norm_param_partials(dt, dy, dys, x, xs, mean, rstd, pw, pb, rows, n, st);
    return;
  }
  const int64_t chunks = column_chunks(rows), chunk_rows = (rows + chunks - 1) / chunks;
  with_reg_threads<kVec16<T>>(n, [&](auto threads) {  // a 16-byte pack per thread
    constexpr int TH = decltype(threads)::value;
    if constexpr (TH * kVec16<T> <= kFusedMaxRow) {
      ln_bwd_fused<T, TH><<<static_cast<unsigned int>(chunks), dim3(TH, fused_lanes<TH>()), 0, st>>>(
          static_cast<const T*>(dy), dys, static_cast<const T*>(dsum), dss, static_cast<const T*>(x), xs,
          static_cast<const T*>(w), mean, rstd, static_cast<T*>(dx), pw, pb, rows, static_cast<int>(n), chunk_rows);
    }
  });
}

}  // namespace

cudaError_t layer_norm_forward(DType dt, const void* x, int64_t x_stride, const void* residual, int64_t r_stride,
                               void* sum, const void* weight, const void* bias, void* y, float* mean, float* rstd,
                               int64_t rows, int64_t n, float eps, cudaStream_t stream) {
  if (rows == 0 || n == 0) return cudaSuccess;
  switch (dt) {
    case DType::kFloat32:
      forward_typed<float>(x, x_stride, residual, r_stride, sum, weight, bias, y, mean, rstd, rows, n, eps, stream);
      break;
    case DType::kFloat16:
      forward_typed<__half>(x, x_stride, residual, r_stride, sum, weight, bias, y, mean, rstd, rows, n, eps, stream);
      break;
    case DType::kBFloat16:
      forward_typed<__nv_bfloat16>(x, x_stride, residual, r_stride, sum, weight, bias, y, mean, rstd, rows, n, eps,
                                   stream);
      break;
  }
  return cudaGetLastError();
}

cudaError_t layer_norm_backward(DType dt, const void* dy, int64_t dy_stride, const void* dsum, int64_t dsum_stride,
                                const void* x, int64_t x_stride, const void* weight, const float* mean,
                                const float* rstd, void* dx, float* partial_w, float* partial_b, int64_t rows,
                                int64_t n, cudaStream_t stream) {
  if (rows == 0 || n == 0) return cudaSuccess;
  switch (dt) {
    case DType::kFloat32:
      backward_typed<float>(dt, dy, dy_stride, dsum, dsum_stride, x, x_stride, weight, mean, rstd, dx, partial_w,
                            partial_b, rows, n, stream);
      break;
    case DType::kFloat16:
      backward_typed<__half>(dt, dy, dy_stride, dsum, dsum_stride, x, x_stride, weight, mean, rstd, dx, partial_w,
                             partial_b, rows, n, stream);
      break;
    case DType::kBFloat16:
      backward_typed<__nv_bfloat16>(dt, dy, dy_stride, dsum, dsum_stride, x, x_stride, weight, mean, rstd, dx,
                                    partial_w, partial_b, rows, n, stream);
      break;
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace gptk
