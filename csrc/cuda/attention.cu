// Scaled dot-product attention on the GPU: causal (end-aligned: query i sits at absolute
// position Tk - Tq + i) or not, head dims 16/32/64/128, forward and backward.
//
// FLOPs: forward 4 B H Tq Tk D (halved when causal and Tq = Tk), backward 2.5x that.
//  - attn_fwd_mma (fp16/bf16, Tq > kDecodeRows): FlashAttention-2's forward on tensor
//    cores (mma.sync m16n8k16, fp32 accumulate): a block of 4 warps owns 64 queries, each
//    warp 16; Q stays in registers as A fragments, K (row-major) and V (transposed) tiles
//    of 64 keys go through shared memory; the S accumulator is rescaled by the online
//    softmax of csrc/common/math.h and reused as P's A fragments without a trip to
//    shared memory. Causal blocks stop at the last key their last query sees.
//  - attn_fwd_rows (fp32 on any Tq, fp16/bf16 decode with Tq <= kDecodeRows): a warp per
//    query row on CUDA cores, 32 keys per step (one per lane), then each probability is
//    broadcast to accumulate V with lanes across the head dim.
//  - backward on CUDA cores, deterministic (no atomics): delta = rowsum(dO * O); dQ with
//    a warp per query row; dK and dV with a warp per key, each looping over the queries
//    that see it. p is recomputed from the saved lse (log2 domain).
// Every kernel takes q/k/v with any batch/head/token strides and 16-byte aligned rows
// (entry.cpp copies otherwise); out, lse and the gradients are contiguous.
#include <type_traits>

#include "cuda/common.cuh"

namespace gptk {
namespace cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kBlockM = 64;  // queries per block in the mma kernel (16 per warp)
constexpr int kBlockN = 64;  // keys per shared-memory tile
constexpr int kDecodeRows = 16;

struct Row {
  int64_t b, h, i;
};

__device__ __forceinline__ Row split_row(int64_t row, int64_t heads, int64_t t) {
  return Row{row / (heads * t), (row / t) % heads, row % t};
}

template <typename T>
__device__ __forceinline__ const T* at(const void* base, const int64_t (&s)[3], int64_t b, int64_t h, int64_t t) {
  return static_cast<const T*>(base) + b * s[0] + h * s[1] + t * s[2];
}

// Keys query i may attend: [0, visible).
__device__ __forceinline__ int64_t visible_keys(int64_t i, int64_t tq, int64_t tk, bool causal) {
  return causal ? (tk - tq + i + 1 < tk ? tk - tq + i + 1 : tk) : tk;
}

// sum_d a[d] * row[d], a in shared memory (fp32), row in global memory (16-byte packs).
template <typename T, int D>
__device__ __forceinline__ float dot_row(const float* a, const T* row) {
  constexpr int VEC = kVec16<T>;
  float s = 0.0f;
#pragma unroll
  for (int d = 0; d < D; d += VEC) {
    float v[VEC];
    load_pack<T, VEC>(row + d, v);
#pragma unroll
    for (int e = 0; e < VEC; ++e) s += a[d + e] * v[e];
  }
  return s;
}

// ---------------------------------------------------------------------------------------
// Forward, CUDA cores: a warp per query row.
// ---------------------------------------------------------------------------------------
template <typename T, int D>
__global__ void __launch_bounds__(kWarps * 32, 1) attn_fwd_rows(AttentionArgs a) {
  constexpr int E = (D + 31) / 32;  // head-dim elements per lane: d = e * 32 + lane
  __shared__ float q_s[kWarps][D];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (row >= a.batch * a.heads * a.tq) return;  // no block-wide barriers below
  const Row r = split_row(row, a.heads, a.tq);
  const T* q = at<T>(a.q, a.q_strides, r.b, r.h, r.i);
  for (int d = lane; d < D; d += 32) q_s[warp][d] = to_float(q[d]) * a.scale_log2;
  __syncwarp();
  const int64_t n_keys = visible_keys(r.i, a.tq, a.tk, a.causal);
  float acc[E];
#pragma unroll
  for (int e = 0; e < E; ++e) acc[e] = 0.0f;
  MaxSum st = softmax_empty();
  for (int64_t j0 = 0; j0 < n_keys; j0 += 32) {
    const int64_t j = j0 + lane;
    const float s = j < n_keys ? dot_row<T, D>(q_s[warp], at<T>(a.k, a.k_strides, r.b, r.h, j)) : kNegInf;
    const float new_max = softmax_max(st.max, warp_allreduce(s, MaxOp{}));
    const float alpha = softmax_rescale(st.max, new_max, 1.0f);
    const float p = j < n_keys ? softmax_exp(s, softmax_shift(new_max), 1.0f) : 0.0f;
    st = MaxSum{new_max, st.sum * alpha + warp_allreduce(p, SumOp{})};
#pragma unroll
    for (int e = 0; e < E; ++e) acc[e] *= alpha;
    const int count = n_keys - j0 < 32 ? static_cast<int>(n_keys - j0) : 32;
    for (int jj = 0; jj < count; ++jj) {
      const float pj = __shfl_sync(0xffffffffu, p, jj);
      const T* v = at<T>(a.v, a.v_strides, r.b, r.h, j0 + jj);
#pragma unroll
      for (int e = 0; e < E; ++e) {
        if (e * 32 + lane < D) acc[e] += pj * to_float(v[e * 32 + lane]);
      }
    }
  }
  // No visible key (Tk = 0): zeros, as torch gives.
  const float inv = n_keys > 0 ? 1.0f / st.sum : 0.0f;
  T* out = static_cast<T*>(a.out) + row * D;
#pragma unroll
  for (int e = 0; e < E; ++e) {
    if (e * 32 + lane < D) out[e * 32 + lane] = from_float<T>(acc[e] * inv);
  }
  if (lane == 0) a.lse[row] = n_keys > 0 ? softmax_lse(st, 1.0f) : kNegInf;
}

// ---------------------------------------------------------------------------------------
// Forward, tensor cores (sm_80+): FlashAttention-2 style.
// ---------------------------------------------------------------------------------------
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, __half) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1,
                                          __nv_bfloat16) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two values as one 32-bit fragment register, the lower column in the low half.
__device__ __forceinline__ uint32_t pack2(float lo, float hi, __half) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}
__device__ __forceinline__ uint32_t pack2(float lo, float hi, __nv_bfloat16) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

template <typename T>
__device__ __forceinline__ uint32_t load2(const T* p) {
  return *reinterpret_cast<const uint32_t*>(p);
}

template <typename T, int D>
__global__ void __launch_bounds__(kWarps * 32, 1) attn_fwd_mma(AttentionArgs a) {
  constexpr int KS = D + 8;        // K tile row stride (halves): rows land on distinct banks
  constexpr int VS = kBlockN + 8;  // transposed V tile row stride
  constexpr int NT = kBlockN / 8;  // n-tiles of S per warp
  constexpr int DT = D / 8;        // n-tiles of O per warp
  constexpr int KK = D / 16;       // k-steps of Q K^T
  constexpr int VEC = kVec16<T>;
  __shared__ alignas(16) T k_s[kBlockN * KS];
  __shared__ alignas(16) T vt_s[D * VS];

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, tig = lane & 3;  // mma fragment coordinates
  const int64_t bh = blockIdx.x;  // x: batch * heads may exceed gridDim.y's 65535
  const int64_t b = bh / a.heads, h = bh % a.heads;
  const int64_t m_block = static_cast<int64_t>(blockIdx.y) * kBlockM;
  const int64_t r_lo = m_block + warp * 16 + g, r_hi = r_lo + 8;
  const int64_t offset = a.tk - a.tq;  // causal: query i sees keys <= i + offset

  // Q fragments (rows past Tq are zero).
  uint32_t qa[KK][4];
#pragma unroll
  for (int kk = 0; kk < KK; ++kk) {
    const int c0 = kk * 16 + tig * 2;
    const T* q_lo = at<T>(a.q, a.q_strides, b, h, r_lo);
    const T* q_hi = at<T>(a.q, a.q_strides, b, h, r_hi);
    qa[kk][0] = r_lo < a.tq ? load2(q_lo + c0) : 0u;
    qa[kk][1] = r_hi < a.tq ? load2(q_hi + c0) : 0u;
    qa[kk][2] = r_lo < a.tq ? load2(q_lo + c0 + 8) : 0u;
    qa[kk][3] = r_hi < a.tq ? load2(q_hi + c0 + 8) : 0u;
  }

  float o[DT][4];
#pragma unroll
  for (int dt = 0; dt < DT; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;
  float m_lo = kNegInf, m_hi = kNegInf, l_lo = 0.0f, l_hi = 0.0f;  // l: this thread's partial row sums

  const int64_t last_query = (m_block + kBlockM < a.tq ? m_block + kBlockM : a.tq) - 1;
  const int64_t n_end = a.causal ? (last_query + offset + 1 < a.tk ? last_query + offset + 1 : a.tk) : a.tk;

  for (int64_t n0 = 0; n0 < n_end; n0 += kBlockN) {
    __syncthreads();  // the previous tiles are consumed
    for (int idx = tid; idx < kBlockN * (D / VEC); idx += kWarps * 32) {
      const int rr = idx / (D / VEC), d0 = (idx % (D / VEC)) * VEC;
      const int64_t j = n0 + rr;
      Pack<T, VEC> kv, vv;
      if (j < a.tk) {
        kv = load_raw<T, VEC>(at<T>(a.k, a.k_strides, b, h, j) + d0);
        vv = load_raw<T, VEC>(at<T>(a.v, a.v_strides, b, h, j) + d0);
      } else {
#pragma unroll
        for (int e = 0; e < VEC; ++e) kv.v[e] = vv.v[e] = from_float<T>(0.0f);
      }
      *reinterpret_cast<Pack<T, VEC>*>(&k_s[rr * KS + d0]) = kv;
#pragma unroll
      for (int e = 0; e < VEC; ++e) vt_s[(d0 + e) * VS + rr] = vv.v[e];
    }
    __syncthreads();

    // S = Q K^T for this warp's 16 rows and the tile's 64 keys.
    float s[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < KK; ++kk) {
        const T* kr = &k_s[(nt * 8 + g) * KS + kk * 16 + tig * 2];
        mma_16816(s[nt], qa[kk], load2(kr), load2(kr + 8), T{});
      }
    }

    // Scale into the log2 domain, mask, and take the row maxima.
    float tile_max_lo = kNegInf, tile_max_hi = kNegInf;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int64_t col = n0 + nt * 8 + tig * 2 + (c & 1);
        const int64_t qrow = c < 2 ? r_lo : r_hi;
        const bool masked = col >= a.tk || (a.causal && col > qrow + offset);
        s[nt][c] = masked ? kNegInf : s[nt][c] * a.scale_log2;
      }
      tile_max_lo = softmax_max(tile_max_lo, softmax_max(s[nt][0], s[nt][1]));
      tile_max_hi = softmax_max(tile_max_hi, softmax_max(s[nt][2], s[nt][3]));
    }
    // The 4 threads of a fragment group hold one row between them.
#pragma unroll
    for (int o2 = 1; o2 < 4; o2 <<= 1) {
      tile_max_lo = softmax_max(tile_max_lo, __shfl_xor_sync(0xffffffffu, tile_max_lo, o2));
      tile_max_hi = softmax_max(tile_max_hi, __shfl_xor_sync(0xffffffffu, tile_max_hi, o2));
    }
    const float new_lo = softmax_max(m_lo, tile_max_lo), new_hi = softmax_max(m_hi, tile_max_hi);
    const float alpha_lo = softmax_rescale(m_lo, new_lo, 1.0f), alpha_hi = softmax_rescale(m_hi, new_hi, 1.0f);
    const float shift_lo = softmax_shift(new_lo), shift_hi = softmax_shift(new_hi);
    m_lo = new_lo;
    m_hi = new_hi;
    float sum_lo = 0.0f, sum_hi = 0.0f;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      s[nt][0] = softmax_exp(s[nt][0], shift_lo, 1.0f);
      s[nt][1] = softmax_exp(s[nt][1], shift_lo, 1.0f);
      s[nt][2] = softmax_exp(s[nt][2], shift_hi, 1.0f);
      s[nt][3] = softmax_exp(s[nt][3], shift_hi, 1.0f);
      sum_lo += s[nt][0] + s[nt][1];
      sum_hi += s[nt][2] + s[nt][3];
    }
    l_lo = l_lo * alpha_lo + sum_lo;
    l_hi = l_hi * alpha_hi + sum_hi;
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) {
      o[dt][0] *= alpha_lo;
      o[dt][1] *= alpha_lo;
      o[dt][2] *= alpha_hi;
      o[dt][3] *= alpha_hi;
    }

    // O += P V: the S accumulators of n-tiles 2t and 2t+1 are P's A fragment for keys
    // 16t..16t+15; V^T rows in shared memory give the B fragments.
#pragma unroll
    for (int t = 0; t < kBlockN / 16; ++t) {
      const uint32_t pa[4] = {pack2(s[2 * t][0], s[2 * t][1], T{}), pack2(s[2 * t][2], s[2 * t][3], T{}),
                              pack2(s[2 * t + 1][0], s[2 * t + 1][1], T{}),
                              pack2(s[2 * t + 1][2], s[2 * t + 1][3], T{})};
#pragma unroll
      for (int dt = 0; dt < DT; ++dt) {
        const T* vr = &vt_s[(dt * 8 + g) * VS + t * 16 + tig * 2];
        mma_16816(o[dt], pa, load2(vr), load2(vr + 8), T{});
      }
    }
  }

#pragma unroll
  for (int o2 = 1; o2 < 4; o2 <<= 1) {
    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, o2);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, o2);
  }
  const float inv_lo = n_end > 0 ? 1.0f / l_lo : 0.0f, inv_hi = n_end > 0 ? 1.0f / l_hi : 0.0f;
  T* out = static_cast<T*>(a.out) + bh * a.tq * D;
#pragma unroll
  for (int dt = 0; dt < DT; ++dt) {
    const int col = dt * 8 + tig * 2;
    if (r_lo < a.tq) {
      *reinterpret_cast<uint32_t*>(out + r_lo * D + col) = pack2(o[dt][0] * inv_lo, o[dt][1] * inv_lo, T{});
    }
    if (r_hi < a.tq) {
      *reinterpret_cast<uint32_t*>(out + r_hi * D + col) = pack2(o[dt][2] * inv_hi, o[dt][3] * inv_hi, T{});
    }
  }
  if (tig == 0) {
    if (r_lo < a.tq) a.lse[bh * a.tq + r_lo] = n_end > 0 ? softmax_lse(MaxSum{m_lo, l_lo}, 1.0f) : kNegInf;
    if (r_hi < a.tq) a.lse[bh * a.tq + r_hi] = n_end > 0 ? softmax_lse(MaxSum{m_hi, l_hi}, 1.0f) : kNegInf;
  }
}

// ---------------------------------------------------------------------------------------
// Backward, CUDA cores.
// ---------------------------------------------------------------------------------------
template <typename T, int D>
__global__ void __launch_bounds__(kWarps * 32, 1) attn_bwd_delta(AttentionBackwardArgs a) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (row >= a.fwd.batch * a.fwd.heads * a.fwd.tq) return;
  const Row r = split_row(row, a.fwd.heads, a.fwd.tq);
  const T* dout = at<T>(a.dout, a.dout_strides, r.b, r.h, r.i);
  const T* out = static_cast<const T*>(a.fwd.out) + row * D;
  float s = 0.0f;
  for (int d = lane; d < D; d += 32) s += to_float(dout[d]) * to_float(out[d]);
  s = warp_allreduce(s, SumOp{});
  if (lane == 0) a.delta[row] = s;
}

// dQ_i = scale * sum_j p_ij (dp_ij - delta_i) K_j, a warp per query row.
template <typename T, int D>
__global__ void __launch_bounds__(kWarps * 32, 1) attn_bwd_dq(AttentionBackwardArgs a) {
  constexpr int E = (D + 31) / 32;
  __shared__ float q_s[kWarps][D], do_s[kWarps][D];
  const AttentionArgs& f = a.fwd;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (row >= f.batch * f.heads * f.tq) return;
  const Row r = split_row(row, f.heads, f.tq);
  const T* q = at<T>(f.q, f.q_strides, r.b, r.h, r.i);
  const T* dout = at<T>(a.dout, a.dout_strides, r.b, r.h, r.i);
  for (int d = lane; d < D; d += 32) {
    q_s[warp][d] = to_float(q[d]);
    do_s[warp][d] = to_float(dout[d]);
  }
  __syncwarp();
  const float lse = f.lse[row], delta = a.delta[row];
  const int64_t n_keys = visible_keys(r.i, f.tq, f.tk, f.causal);
  float acc[E];
#pragma unroll
  for (int e = 0; e < E; ++e) acc[e] = 0.0f;
  for (int64_t j0 = 0; j0 < n_keys; j0 += 32) {
    const int64_t j = j0 + lane;
    float ds = 0.0f;
    if (j < n_keys) {
      const float s = dot_row<T, D>(q_s[warp], at<T>(f.k, f.k_strides, r.b, r.h, j));
      const float dp = dot_row<T, D>(do_s[warp], at<T>(f.v, f.v_strides, r.b, r.h, j));
      const float p = exp2f(s * f.scale_log2 - lse);
      ds = p * (dp - delta) * a.scale;
    }
    const int count = n_keys - j0 < 32 ? static_cast<int>(n_keys - j0) : 32;
    for (int jj = 0; jj < count; ++jj) {
      const float dsj = __shfl_sync(0xffffffffu, ds, jj);
      const T* k = at<T>(f.k, f.k_strides, r.b, r.h, j0 + jj);
#pragma unroll
      for (int e = 0; e < E; ++e) {
        if (e * 32 + lane < D) acc[e] += dsj * to_float(k[e * 32 + lane]);
      }
    }
  }
  T* dq = static_cast<T*>(a.dq) + row * D;
#pragma unroll
  for (int e = 0; e < E; ++e) {
    if (e * 32 + lane < D) dq[e * 32 + lane] = from_float<T>(acc[e]);
  }
}

// dV_j = sum_i p_ij dO_i and dK_j = scale * sum_i p_ij (dp_ij - delta_i) Q_i, a warp per key.
template <typename T, int D>
__global__ void __launch_bounds__(kWarps * 32, 1) attn_bwd_dkdv(AttentionBackwardArgs a) {
  constexpr int E = (D + 31) / 32;
  __shared__ float k_s[kWarps][D], v_s[kWarps][D];
  const AttentionArgs& f = a.fwd;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t key_row = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (key_row >= f.batch * f.heads * f.tk) return;
  const Row r = split_row(key_row, f.heads, f.tk);  // r.i is the key index
  const T* k = at<T>(f.k, f.k_strides, r.b, r.h, r.i);
  const T* v = at<T>(f.v, f.v_strides, r.b, r.h, r.i);
  for (int d = lane; d < D; d += 32) {
    k_s[warp][d] = to_float(k[d]);
    v_s[warp][d] = to_float(v[d]);
  }
  __syncwarp();
  // Queries that see key j: i >= j - (Tk - Tq) when causal.
  int64_t i_begin = 0;
  if (f.causal) i_begin = r.i - (f.tk - f.tq) > 0 ? r.i - (f.tk - f.tq) : 0;
  const int64_t bh_rows = (r.b * f.heads + r.h) * f.tq;
  float dk[E], dv[E];
#pragma unroll
  for (int e = 0; e < E; ++e) dk[e] = dv[e] = 0.0f;
  for (int64_t i0 = i_begin; i0 < f.tq; i0 += 32) {
    const int64_t i = i0 + lane;
    float p = 0.0f, ds = 0.0f;
    if (i < f.tq) {
      const float s = dot_row<T, D>(k_s[warp], at<T>(f.q, f.q_strides, r.b, r.h, i));
      const float dp = dot_row<T, D>(v_s[warp], at<T>(a.dout, a.dout_strides, r.b, r.h, i));
      p = exp2f(s * f.scale_log2 - f.lse[bh_rows + i]);
      ds = p * (dp - a.delta[bh_rows + i]) * a.scale;
    }
    const int count = f.tq - i0 < 32 ? static_cast<int>(f.tq - i0) : 32;
    for (int ii = 0; ii < count; ++ii) {
      const float pi = __shfl_sync(0xffffffffu, p, ii), dsi = __shfl_sync(0xffffffffu, ds, ii);
      const T* q = at<T>(f.q, f.q_strides, r.b, r.h, i0 + ii);
      const T* dout = at<T>(a.dout, a.dout_strides, r.b, r.h, i0 + ii);
#pragma unroll
      for (int e = 0; e < E; ++e) {
        if (e * 32 + lane < D) {
          dv[e] += pi * to_float(dout[e * 32 + lane]);
          dk[e] += dsi * to_float(q[e * 32 + lane]);
        }
      }
    }
  }
  T* dk_out = static_cast<T*>(a.dk) + key_row * D;
  T* dv_out = static_cast<T*>(a.dv) + key_row * D;
#pragma unroll
  for (int e = 0; e < E; ++e) {
    if (e * 32 + lane < D) {
      dk_out[e * 32 + lane] = from_float<T>(dk[e]);
      dv_out[e * 32 + lane] = from_float<T>(dv[e]);
    }
  }
}

template <typename F>
void with_head_dim(int d, F&& f) {
  switch (d) {
    case 16: f(std::integral_constant<int, 16>{}); break;
    case 32: f(std::integral_constant<int, 32>{}); break;
    case 64: f(std::integral_constant<int, 64>{}); break;
    default: f(std::integral_constant<int, 128>{}); break;
  }
}

unsigned int warp_blocks(int64_t rows) { return static_cast<unsigned int>((rows + kWarps - 1) / kWarps); }

template <typename T>
void forward_typed(const AttentionArgs& a, cudaStream_t st, bool tensor_cores) {
  with_head_dim(a.head_dim, [&](auto dim) {
    constexpr int D = decltype(dim)::value;
    if constexpr (!std::is_same_v<T, float>) {
      if (tensor_cores) {
        const dim3 grid(static_cast<unsigned int>(a.batch * a.heads),
                        static_cast<unsigned int>((a.tq + kBlockM - 1) / kBlockM));
        attn_fwd_mma<T, D><<<grid, kWarps * 32, 0, st>>>(a);
        return;
      }
    }
    attn_fwd_rows<T, D><<<warp_blocks(a.batch * a.heads * a.tq), kWarps * 32, 0, st>>>(a);
  });
}

template <typename T>
void backward_typed(const AttentionBackwardArgs& a, cudaStream_t st) {
  const AttentionArgs& f = a.fwd;
  with_head_dim(f.head_dim, [&](auto dim) {
    constexpr int D = decltype(dim)::value;
    attn_bwd_delta<T, D><<<warp_blocks(f.batch * f.heads * f.tq), kWarps * 32, 0, st>>>(a);
    attn_bwd_dq<T, D><<<warp_blocks(f.batch * f.heads * f.tq), kWarps * 32, 0, st>>>(a);
    if (f.tk > 0) attn_bwd_dkdv<T, D><<<warp_blocks(f.batch * f.heads * f.tk), kWarps * 32, 0, st>>>(a);
  });
}

}  // namespace

cudaError_t attention_forward(DType dt, const AttentionArgs& args, cudaStream_t stream) {
  if (args.batch * args.heads * args.tq == 0) return cudaSuccess;
  const bool tensor_cores = args.tq > kDecodeRows;
  switch (dt) {
    case DType::kFloat32: forward_typed<float>(args, stream, false); break;
    case DType::kFloat16: forward_typed<__half>(args, stream, tensor_cores); break;
    case DType::kBFloat16: forward_typed<__nv_bfloat16>(args, stream, tensor_cores); break;
  }
  return cudaGetLastError();
}

cudaError_t attention_backward(DType dt, const AttentionBackwardArgs& args, cudaStream_t stream) {
  const AttentionArgs& f = args.fwd;
  if (f.batch * f.heads == 0 || (f.tq == 0 && f.tk == 0)) return cudaSuccess;
  switch (dt) {
    case DType::kFloat32: backward_typed<float>(args, stream); break;
    case DType::kFloat16: backward_typed<__half>(args, stream); break;
    case DType::kBFloat16: backward_typed<__nv_bfloat16>(args, stream); break;
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace gptk
