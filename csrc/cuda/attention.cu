// Scaled dot-product attention on the GPU: causal (end-aligned: query i sits at absolute
// position Tk - Tq + i) or not, every head dim d that is a multiple of 8 up to 256, forward
// and backward.
//
// Head dims: each kernel is instantiated per padded head dim D (with_head_dim's buckets 16,
// 32, 64, 96, 128, 192, 256: multiples of the mma k-step) and takes the true d at run time.
// Loads zero-fill columns d..D-1, so the padding adds nothing to any dot product, and
// stores skip them; d is a multiple of 8, so a 16-byte pack or a fragment's column pair
// never straddles d. Outputs are contiguous with row stride d.
//
// FLOPs: forward 4 B H Tq Tk D (halved when causal and Tq = Tk), backward 2.5x that.
//  - attn_fwd_mma (fp16/bf16, Tq > kDecodeRows): FlashAttention-2's forward on tensor
//    cores (mma.sync m16n8k16, fp32 accumulate): a block of 4 warps owns 64 queries, each
//    warp 16; Q stays in registers as A fragments, K and V tiles (64 keys, 32 at D = 128)
//    are double-buffered in shared memory by cp.async and read as B fragments by ldmatrix
//    (transposed for V); the S accumulator is rescaled by the online softmax of
//    csrc/common/math.h and reused as P's A fragments without a trip to shared memory.
//    Causal blocks stop at the last key their last query sees.
//  - attn_fwd_decode (fp16/bf16 decode, Tq <= kDecodeRows): GEMV-shaped, a block per query
//    row, q in registers, K/V rows read in 16-byte packs by groups of lanes, a softmax per
//    key slot merged at the end (see the kernel).
//  - attn_fwd_rows (fp32 on any Tq): a warp per query row on CUDA cores, 32 keys per step
//    (one per lane), then each probability is broadcast to accumulate V with lanes across
//    the head dim.
//    For both, when the rows are too few to fill the GPU (decode: B H rows against a long
//    KV cache), each row's keys are split into chunks (flash-decoding), merged by
//    attn_fwd_combine.
//  - backward, deterministic (no atomics): delta = rowsum(dO * O) (a warp per row), then
//    dQ and dK/dV in separate kernels, each recomputing p from the saved lse (log2
//    domain). fp16/bf16: attn_bwd_dq_mma and attn_bwd_dkdv_mma, FlashAttention-2's
//    backward on tensor cores (a block owns 64 queries, resp. 64 keys, and streams the
//    other side through shared memory by cp.async; operands needed transposed are read
//    from the row-major tiles by ldmatrix.trans). fp32: CUDA cores, a warp per query row for dQ and
//    a warp per key for dK and dV.
// Every kernel takes q/k/v with any batch/head/token strides and 16-byte aligned rows
// (entry.cpp copies otherwise); out, lse and the gradients are contiguous.
// The forward kernels take optional per-sequence key counts (kv_lengths: a static KV cache
// read whole by a captured decode step): sequence b then has keys_of(b) <= Tk keys, read on
// the device; the grid and key split stay those of Tk, and a chunk wholly past keys_of(b)
// writes the empty partial (max -inf, sum 0) that the combine weighs 0.
#include <algorithm>
#include <type_traits>

#include "cuda/common.cuh"
#include "cuda/ptx.cuh"

namespace gptk {
namespace cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kBlockM = 64;  // queries per block in the mma kernel (16 per warp)
constexpr int kBlockN = 64;  // keys per dK/dV block
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

// Keys sequence b has: its kv_lengths entry (at most tk, so a bad length reads nothing past
// the cache), or tk. Queries align to the end of these keys.
__device__ __forceinline__ int64_t keys_of(const AttentionArgs& a, int64_t b) {
  if (a.kv_lengths == nullptr) return a.tk;
  const int64_t n = a.kv_lengths[b];
  return n < a.tk ? n : a.tk;
}

// A score in the log2 domain. The backward recomputes p = exp2(score - lse) and must get
// the forward's score bit for bit (same products, same order, and this one rounding, never
// fused into the subtraction): otherwise p drifts from the forward's by ~|score| ulps.
__device__ __forceinline__ float scaled_score(float dot, float scale_log2) { return __fmul_rn(dot, scale_log2); }

// sum_x a[x] * row[x] over the d < D columns, a in shared memory (fp32), row in global
// memory (16-byte packs; d is a multiple of 8, so of every pack width).
template <typename T, int D>
__device__ __forceinline__ float dot_row(const float* a, const T* row, int d) {
  constexpr int VEC = kVec16<T>;
  float s = 0.0f;
#pragma unroll
  for (int x = 0; x < D; x += VEC) {
    if (x < d) {
      float v[VEC];
      load_pack<T, VEC>(row + x, v);
#pragma unroll
      for (int e = 0; e < VEC; ++e) s += a[x + e] * v[e];
    }
  }
  return s;
}

// ---------------------------------------------------------------------------------------
// Forward, CUDA cores: a warp per (query row, key chunk). With one chunk (a.splits == 1)
// the warp writes the row's output and lse; with more (flash-decoding: few rows, long KV
// cache) it writes its chunk's unnormalised (acc, max, sum) and attn_fwd_combine merges
// them with the online-softmax combine.
// ---------------------------------------------------------------------------------------
template <typename T, int D>
__global__ void __launch_bounds__(kWarps * 32, 1) attn_fwd_rows(AttentionArgs a) {
  constexpr int E = (D + 31) / 32;  // head-dim elements per lane: d = e * 32 + lane
  __shared__ float q_s[kWarps][D];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t unit = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (unit >= a.batch * a.heads * a.tq * a.splits) return;  // no block-wide barriers below
  const int64_t row = unit / a.splits, split = unit % a.splits;
  const Row r = split_row(row, a.heads, a.tq);
  const int d = a.head_dim;
  const T* q = at<T>(a.q, a.q_strides, r.b, r.h, r.i);
  for (int x = lane; x < d; x += 32) q_s[warp][x] = to_float(q[x]);
  __syncwarp();
  const int64_t n_keys = visible_keys(r.i, a.tq, keys_of(a, r.b), a.causal);
  // This warp's keys: a chunk of whole 32-key steps.
  const int64_t chunk = ((n_keys + a.splits - 1) / a.splits + 31) / 32 * 32;
  const int64_t j_begin = split * chunk, j_end = j_begin + chunk < n_keys ? j_begin + chunk : n_keys;
  float acc[E];
#pragma unroll
  for (int e = 0; e < E; ++e) acc[e] = 0.0f;
  MaxSum st = softmax_empty();
  for (int64_t j0 = j_begin; j0 < j_end; j0 += 32) {
    const int64_t j = j0 + lane;
    const float s = j < j_end ? scaled_score(dot_row<T, D>(q_s[warp], at<T>(a.k, a.k_strides, r.b, r.h, j), d),
                                             a.scale_log2)
                              : kNegInf;
    const float new_max = softmax_max(st.max, warp_allreduce(s, MaxOp{}));
    const float alpha = softmax_rescale(st.max, new_max, 1.0f);
    const float p = j < j_end ? softmax_exp(s, softmax_shift(new_max), 1.0f) : 0.0f;
    st = MaxSum{new_max, st.sum * alpha + warp_allreduce(p, SumOp{})};
#pragma unroll
    for (int e = 0; e < E; ++e) acc[e] *= alpha;
    const int count = j_end - j0 < 32 ? static_cast<int>(j_end - j0) : 32;
    for (int jj = 0; jj < count; ++jj) {
      const float pj = __shfl_sync(0xffffffffu, p, jj);
      const T* v = at<T>(a.v, a.v_strides, r.b, r.h, j0 + jj);
#pragma unroll
      for (int e = 0; e < E; ++e) {
        if (e * 32 + lane < d) acc[e] += pj * to_float(v[e * 32 + lane]);
      }
    }
  }
  if (a.splits > 1) {
    float* part = a.partial + unit * (d + 2);
#pragma unroll
    for (int e = 0; e < E; ++e) {
      if (e * 32 + lane < d) part[e * 32 + lane] = acc[e];
    }
    if (lane == 0) {
      part[d] = st.max;
      part[d + 1] = st.sum;
    }
    return;
  }
  // No visible key (Tk = 0): zeros, as torch gives.
  const float inv = n_keys > 0 ? 1.0f / st.sum : 0.0f;
  T* out = static_cast<T*>(a.out) + row * d;
#pragma unroll
  for (int e = 0; e < E; ++e) {
    if (e * 32 + lane < d) out[e * 32 + lane] = from_float<T>(acc[e] * inv);
  }
  if (lane == 0) a.lse[row] = n_keys > 0 ? softmax_lse(st, 1.0f) : kNegInf;
}

// Merges a row's key-chunk partials: a warp per query row. An empty chunk has max -inf and
// weighs exp2(-inf) = 0.
template <typename T, int D>
__global__ void __launch_bounds__(kWarps * 32, 1) attn_fwd_combine(AttentionArgs a) {
  constexpr int E = (D + 31) / 32;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (row >= a.batch * a.heads * a.tq) return;
  const int d = a.head_dim;
  const float* part = a.partial + row * a.splits * (d + 2);
  float m = kNegInf;
  for (int s = 0; s < a.splits; ++s) m = softmax_max(m, part[s * (d + 2) + d]);
  float sum = 0.0f, acc[E];
#pragma unroll
  for (int e = 0; e < E; ++e) acc[e] = 0.0f;
  for (int s = 0; s < a.splits; ++s) {
    const float* ps = part + s * (d + 2);
    const float w = softmax_rescale(ps[d], m, 1.0f);
    sum += ps[d + 1] * w;
#pragma unroll
    for (int e = 0; e < E; ++e) {
      if (e * 32 + lane < d) acc[e] += ps[e * 32 + lane] * w;
    }
  }
  const Row r = split_row(row, a.heads, a.tq);
  const bool any_key = visible_keys(r.i, a.tq, keys_of(a, r.b), a.causal) > 0;
  const float inv = any_key ? 1.0f / sum : 0.0f;
  T* out = static_cast<T*>(a.out) + row * d;
#pragma unroll
  for (int e = 0; e < E; ++e) {
    if (e * 32 + lane < d) out[e * 32 + lane] = from_float<T>(acc[e] * inv);
  }
  if (lane == 0) a.lse[row] = any_key ? softmax_lse(MaxSum{m, sum}, 1.0f) : kNegInf;
}

// ---------------------------------------------------------------------------------------
// Decode, fp16/bf16 (Tq <= kDecodeRows): GEMV-shaped. A block of kWarps warps per (query
// row, key chunk); the row's q stays in registers, a 16-byte pack per lane. Each key row
// is read by LPK lanes in 16-byte packs (D = 128 bf16: 16 lanes, two keys per warp load);
// each (warp, lane group) is a key slot with its own online softmax over keys slot,
// slot + kWarps * KPW, ..., so a step needs no cross-lane reduction beyond each score's
// dot over D (log2 LPK shuffles). U steps of K and V loads are issued before their math
// (U x 32 bytes per lane in flight). The slots merge once at the end, within the warp by
// shuffles and across warps through shared memory. With one chunk the block writes the
// row's output and lse; with more it writes the chunk's (acc, max, sum) partial, which
// attn_fwd_combine merges as for attn_fwd_rows.
// ---------------------------------------------------------------------------------------
constexpr int pow2_at_least(int n) { return n <= 1 ? 1 : 2 * pow2_at_least((n + 1) / 2); }

// LENGTHS: whether a.kv_lengths is set. A build per case keeps the plain decode's registers
// as they were: a key count loaded from memory cannot be recomputed from the kernel's
// parameters, and held across the key loop it tipped D = 192/256 fp16 into a spill on sm_80
// (see any_key below).
template <typename T, int D, bool LENGTHS>
__global__ void __launch_bounds__(kWarps * 32) attn_fwd_decode(AttentionArgs a) {
  constexpr int VEC = kVec16<T>;                         // elements per 16-byte pack
  constexpr int LPK = pow2_at_least(D / VEC);            // lanes per key row (<= 32 for 16-bit)
  constexpr int KPW = 32 / LPK;                          // keys per warp step
  constexpr int STEP = kWarps * KPW;                     // keys per block step
  constexpr int U = 4;                                   // steps whose loads fly together
  static_assert(LPK <= 32, "16-bit rows up to D = 256 fit one warp");
  __shared__ float merge_s[kWarps][2 + LPK * VEC];

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int slot = lane / LPK, sub = lane % LPK, x = sub * VEC;  // this lane's columns x..x+VEC-1
  const int d = a.head_dim;
  const bool cols = x < d;
  const int64_t unit = blockIdx.x, row = unit / a.splits, split = unit % a.splits;
  const Row r = split_row(row, a.heads, a.tq);
  float q[VEC];
#pragma unroll
  for (int e = 0; e < VEC; ++e) q[e] = 0.0f;
  if (cols) load_pack<T, VEC>(at<T>(a.q, a.q_strides, r.b, r.h, r.i) + x, q);
  const int64_t n_keys = visible_keys(r.i, a.tq, LENGTHS ? keys_of(a, r.b) : a.tk, a.causal);
  const int64_t chunk = ((n_keys + a.splits - 1) / a.splits + STEP - 1) / STEP * STEP;
  const int64_t j_begin = split * chunk, j_end = j_begin + chunk < n_keys ? j_begin + chunk : n_keys;

  float m = kNegInf, l = 0.0f, acc[VEC];
#pragma unroll
  for (int e = 0; e < VEC; ++e) acc[e] = 0.0f;
  const int64_t mine = warp * KPW + slot;  // this lane's key within a block step
  for (int64_t j0 = j_begin; j0 < j_end; j0 += U * STEP) {  // block-uniform: shuffles below
    Pack<T, VEC> kp[U], vp[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {  // every load of the U steps before any math
      const int64_t j = j0 + u * STEP + mine;
      if (cols && j < j_end) {
        kp[u] = load_raw<T, VEC>(at<T>(a.k, a.k_strides, r.b, r.h, j) + x);
        vp[u] = load_raw<T, VEC>(at<T>(a.v, a.v_strides, r.b, r.h, j) + x);
      } else {
#pragma unroll
        for (int e = 0; e < VEC; ++e) kp[u].v[e] = vp[u].v[e] = from_float<T>(0.0f);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float s = 0.0f;
#pragma unroll
      for (int e = 0; e < VEC; ++e) s += q[e] * to_float(kp[u].v[e]);
#pragma unroll
      for (int o = LPK / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
      const bool seen = j0 + u * STEP + mine < j_end;
      s = seen ? scaled_score(s, a.scale_log2) : kNegInf;
      const float m_new = softmax_max(m, s);
      const float alpha = softmax_rescale(m, m_new, 1.0f);
      const float p = seen ? softmax_exp(s, softmax_shift(m_new), 1.0f) : 0.0f;
      l = l * alpha + p;
#pragma unroll
      for (int e = 0; e < VEC; ++e) acc[e] = acc[e] * alpha + p * to_float(vp[u].v[e]);
      m = m_new;
    }
  }
  // Merge the warp's KPW slots (lanes sub, sub + LPK, ... hold the same columns).
#pragma unroll
  for (int o = LPK; o < 32; o <<= 1) {
    const float m_o = __shfl_xor_sync(0xffffffffu, m, o), l_o = __shfl_xor_sync(0xffffffffu, l, o);
    const float m_new = softmax_max(m, m_o);
    const float w = softmax_rescale(m, m_new, 1.0f), w_o = softmax_rescale(m_o, m_new, 1.0f);
#pragma unroll
    for (int e = 0; e < VEC; ++e) acc[e] = acc[e] * w + __shfl_xor_sync(0xffffffffu, acc[e], o) * w_o;
    l = l * w + l_o * w_o;
    m = m_new;
  }
  // Then the warps', through shared memory: warp 0's first LPK lanes finish the row.
  if (lane < LPK) {
#pragma unroll
    for (int e = 0; e < VEC; ++e) merge_s[warp][2 + x + e] = acc[e];
    if (lane == 0) {
      merge_s[warp][0] = m;
      merge_s[warp][1] = l;
    }
  }
  __syncthreads();
  if (warp != 0 || lane >= LPK) return;
  float top = kNegInf;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) top = softmax_max(top, merge_s[w][0]);
  float sum = 0.0f;
#pragma unroll
  for (int e = 0; e < VEC; ++e) acc[e] = 0.0f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    const float wt = softmax_rescale(merge_s[w][0], top, 1.0f);
    sum += merge_s[w][1] * wt;
#pragma unroll
    for (int e = 0; e < VEC; ++e) acc[e] += merge_s[w][2 + x + e] * wt;
  }
  if (a.splits > 1) {  // the chunk's unnormalised partial, as attn_fwd_rows writes it
    float* part = a.partial + unit * (d + 2);
    if (cols) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) part[x + e] = acc[e];
    }
    if (lane == 0) {
      part[d] = top;
      part[d + 1] = sum;
    }
    return;
  }
  // Whether the row has a key: with one chunk j_begin = 0 and j_end = n_keys. With lengths,
  // j_end (held anyway) rather than n_keys, which would be one more value held across the loop.
  const bool any_key = LENGTHS ? j_end > 0 : n_keys > 0;
  const float inv = any_key ? 1.0f / sum : 0.0f;  // no visible key (Tk = 0): zeros, as torch gives
#pragma unroll
  for (int e = 0; e < VEC; ++e) acc[e] *= inv;
  if (cols) store_pack<T, VEC>(static_cast<T*>(a.out) + row * d + x, acc);
  if (lane == 0) a.lse[row] = any_key ? softmax_lse(MaxSum{top, sum}, 1.0f) : kNegInf;
}

// ---------------------------------------------------------------------------------------
// Forward, tensor cores (sm_80+): FlashAttention-2 style.
// ---------------------------------------------------------------------------------------
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

// The A fragments of a warp's 16 rows (r_lo = first row + g and r_lo + 8) of a
// (B, H, T, D) operand, straight from global memory; rows past t_end and columns past d
// are zero. Held in registers when IN_REGS; otherwise re-read (from L1) at each k-step, for
// the head dims whose accumulators leave no registers for them (D > 128).
template <typename T, int D, bool IN_REGS>
struct ARows {
  const T* lo;
  const T* hi;
  bool ok_lo, ok_hi;
  int d;
  uint32_t frag[IN_REGS ? D / 16 : 1][4];

  __device__ __forceinline__ ARows(const void* base, const int64_t (&s)[3], int64_t b, int64_t h, int64_t r_lo,
                                   int64_t t_end, int d_)
      : lo(at<T>(base, s, b, h, r_lo)), hi(at<T>(base, s, b, h, r_lo + 8)), ok_lo(r_lo < t_end),
        ok_hi(r_lo + 8 < t_end), d(d_) {
    if constexpr (IN_REGS) {
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) fetch(frag[kk], kk);
    }
  }
  __device__ __forceinline__ void fetch(uint32_t (&a)[4], int kk) const {
    const int c0 = kk * 16 + (threadIdx.x & 3) * 2;
    a[0] = ok_lo && c0 < d ? load2(lo + c0) : 0u;
    a[1] = ok_hi && c0 < d ? load2(hi + c0) : 0u;
    a[2] = ok_lo && c0 + 8 < d ? load2(lo + c0 + 8) : 0u;
    a[3] = ok_hi && c0 + 8 < d ? load2(hi + c0 + 8) : 0u;
  }
  // k-step kk's fragment (columns kk * 16 ..).
  __device__ __forceinline__ void get(uint32_t (&a)[4], int kk) const {
    if constexpr (IN_REGS) {
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = frag[kk][i];
    } else {
      fetch(a, kk);
    }
  }
};

// c += A B for one m16n8k16 step, B[k][n] = tile[(n0 + n) * ld + k0 + k]: a row-major
// tile of the n operand (K for Q K^T), or a transposed tile (V^T for P V).
template <typename T>
__device__ __forceinline__ void mma_tile_b(float (&c)[4], const uint32_t (&a)[4], const T* tile, int ld, int n0,
                                           int k0) {
  const int lane = threadIdx.x & 31;
  const T* p = tile + (n0 + (lane >> 2)) * ld + k0 + (lane & 3) * 2;
  mma_16816(c, a, load2(p), load2(p + 8), T{});
}

// The accumulators of n-tiles 2t and 2t+1 (fp32) as the A fragment of k-step t.
template <typename T>
__device__ __forceinline__ void accumulators_as_a(uint32_t (&a)[4], const float (&lo)[4], const float (&hi)[4]) {
  a[0] = pack2(lo[0], lo[1], T{});
  a[1] = pack2(lo[2], lo[3], T{});
  a[2] = pack2(hi[0], hi[1], T{});
  a[3] = pack2(hi[2], hi[3], T{});
}

// Two fp32 values to adjacent columns of a contiguous (rows, d) output; padding columns
// (col >= d) are dropped.
template <typename T>
__device__ __forceinline__ void store2(T* out, int64_t row, int64_t rows, int col, int d, float x, float y) {
  if (row < rows && col < d) *reinterpret_cast<uint32_t*>(out + row * d + col) = pack2(x, y, T{});
}

// Issue cp.async copies of rows [r0, r0 + R) of a (B, H, T, d) operand into a row-major
// shared tile (stride D + 8: a fragment's 8 rows start on distinct banks, and every row
// stays 16-byte aligned for cp.async and ldmatrix); rows past t_end and the padding
// columns d..D-1 are zero-filled.
template <typename T, int D, int R>
__device__ __forceinline__ void stage_rows_async(const void* base, const int64_t (&s)[3], int64_t b, int64_t h,
                                                 int64_t r0, int64_t t_end, int d, T* rows) {
  constexpr int VEC = kVec16<T>;
  for (int idx = threadIdx.x; idx < R * (D / VEC); idx += kWarps * 32) {
    const int rr = idx / (D / VEC), d0 = (idx % (D / VEC)) * VEC;
    const bool inside = r0 + rr < t_end && d0 < d;
    const T* src = at<T>(base, s, b, h, inside ? r0 + rr : 0) + d0;  // a valid address either way
    cp_async_16(&rows[rr * (D + 8) + d0], src, inside);
  }
}

// The A fragment of a 16 x 16 row-major tile (stride ld) by two ldmatrix: matrices
// (rows 0-7 | 8-15) x (columns 0-7), then the same for columns 8-15.
template <typename T>
__device__ __forceinline__ void ldmatrix_a(uint32_t (&a)[4], const T* tile, int ld) {
  const int lane = threadIdx.x & 31;
  const T* row = tile + ((lane & 7) + ((lane >> 3) & 1) * 8) * ld;
  uint32_t left[2], right[2];
  ldmatrix_x2(left, row);
  ldmatrix_x2(right, row + 8);
  a[0] = left[0];
  a[1] = left[1];
  a[2] = right[0];
  a[3] = right[1];
}

// c += A B for one m16n8k16 step with B[k][n] = tile[(k0 + k) * (D + 8) + n0 + n]: a
// row-major tile whose rows are the reduction (V for P V, dO for P^T dO, Q for dS^T Q, K
// for dS K), read transposed by ldmatrix.
template <typename T, int D>
__device__ __forceinline__ void mma_rows_as_b(float (&c)[4], const uint32_t (&a)[4], const T* tile, int n0, int k0) {
  const int lane = threadIdx.x & 31;
  uint32_t b[2];
  ldmatrix_x2_trans(b, tile + (k0 + ((lane >> 3) & 1) * 8 + (lane & 7)) * (D + 8) + n0);
  mma_16816(c, a, b[0], b[1], T{});
}

// K and V tiles are double-buffered: the copies of tile i + 1 (cp.async) fly while tile i
// is computed. B fragments come from the row-major tiles through ldmatrix (transposed for
// V), so neither tile needs a transposed copy.
template <typename T, int D>
__global__ void __launch_bounds__(kWarps * 32, 1) attn_fwd_mma(AttentionArgs a) {
  constexpr int BN = D <= 64 ? 64 : D <= 128 ? 32 : 16;  // keys per tile: two buffers of K and V in 48 KB
  constexpr int LD = D + 8;              // tile row stride (halves)
  constexpr int NT = BN / 8;             // n-tiles of S per warp
  constexpr int DT = D / 8;              // n-tiles of O per warp
  constexpr int KK = D / 16;             // k-steps of Q K^T
  __shared__ alignas(16) T k_s[2][BN * LD];
  __shared__ alignas(16) T v_s[2][BN * LD];

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, tig = lane & 3;  // mma fragment coordinates
  // ldmatrix row providers: lane 8 i + r gives row r of matrix i (lanes 16-31 repeat 0-15).
  const int ld_row = lane & 7, ld_half = (lane >> 3) & 1;
  const int64_t bh = blockIdx.x;  // x: batch * heads may exceed gridDim.y's 65535
  const int64_t b = bh / a.heads, h = bh % a.heads;
  const int64_t m_block = static_cast<int64_t>(blockIdx.y) * kBlockM;
  const int64_t r_lo = m_block + warp * 16 + g, r_hi = r_lo + 8;
  const int64_t tk = keys_of(a, b);
  const int64_t offset = tk - a.tq;  // causal: query i sees keys <= i + offset
  const int d = a.head_dim;

  const ARows<T, D, (D < 256)> qa(a.q, a.q_strides, b, h, r_lo, a.tq, d);  // D = 256: O alone takes 128 registers

  float o[DT][4];
#pragma unroll
  for (int dt = 0; dt < DT; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;
  float m_lo = kNegInf, m_hi = kNegInf, l_lo = 0.0f, l_hi = 0.0f;  // l: this thread's partial row sums

  const int64_t last_query = (m_block + kBlockM < a.tq ? m_block + kBlockM : a.tq) - 1;
  const int64_t n_end = a.causal ? (last_query + offset + 1 < tk ? last_query + offset + 1 : tk) : tk;
  const int64_t tiles = (n_end + BN - 1) / BN;

  if (tiles > 0) {
    stage_rows_async<T, D, BN>(a.k, a.k_strides, b, h, 0, tk, d, k_s[0]);
    stage_rows_async<T, D, BN>(a.v, a.v_strides, b, h, 0, tk, d, v_s[0]);
  }
  cp_async_commit();
  for (int64_t it = 0; it < tiles; ++it) {
    const int buf = static_cast<int>(it & 1);
    const int64_t n0 = it * BN;
    if (it + 1 < tiles) {  // into the buffer the previous iteration finished with
      stage_rows_async<T, D, BN>(a.k, a.k_strides, b, h, n0 + BN, tk, d, k_s[buf ^ 1]);
      stage_rows_async<T, D, BN>(a.v, a.v_strides, b, h, n0 + BN, tk, d, v_s[buf ^ 1]);
    }
    cp_async_commit();
    cp_async_wait<1>();  // this thread's copies of tile `it` have landed...
    __syncthreads();     // ...and every other thread's
    const T* ks = k_s[buf];
    const T* vs = v_s[buf];

    // S = Q K^T for this warp's 16 rows and the tile's BN keys.
    float s[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < KK; ++kk) {
      uint32_t qf[4];
      qa.get(qf, kk);
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        uint32_t kb[2];  // K rows nt*8.. as B (k = dim, n = key): dims kk*16.. and kk*16+8..
        ldmatrix_x2(kb, ks + (nt * 8 + ld_row) * LD + kk * 16 + ld_half * 8);
        mma_16816(s[nt], qf, kb[0], kb[1], T{});
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
        const bool masked = col >= tk || (a.causal && col > qrow + offset);
        s[nt][c] = masked ? kNegInf : scaled_score(s[nt][c], a.scale_log2);
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
    // 16t..16t+15; V rows 16t.. read transposed give the B fragments (k = key, n = dim).
#pragma unroll
    for (int t = 0; t < BN / 16; ++t) {
      uint32_t pa[4];
      accumulators_as_a<T>(pa, s[2 * t], s[2 * t + 1]);
#pragma unroll
      for (int dt = 0; dt < DT; ++dt) mma_rows_as_b<T, D>(o[dt], pa, vs, dt * 8, t * 16);
    }
    __syncthreads();  // the next iteration's copies refill this buffer: all reads done first
  }

#pragma unroll
  for (int o2 = 1; o2 < 4; o2 <<= 1) {
    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, o2);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, o2);
  }
  // A row that saw no key (kv_lengths[b] < Tq: rows before the first key, in a block whose
  // later rows have some) has l = 0 and o = 0: it stays 0, as torch gives it; NaN stays NaN.
  const float inv_lo = l_lo != 0.0f ? 1.0f / l_lo : 0.0f, inv_hi = l_hi != 0.0f ? 1.0f / l_hi : 0.0f;
  T* out = static_cast<T*>(a.out) + bh * a.tq * d;
#pragma unroll
  for (int dt = 0; dt < DT; ++dt) {
    store2(out, r_lo, a.tq, dt * 8 + tig * 2, d, o[dt][0] * inv_lo, o[dt][1] * inv_lo);
    store2(out, r_hi, a.tq, dt * 8 + tig * 2, d, o[dt][2] * inv_hi, o[dt][3] * inv_hi);
  }
  if (tig == 0) {
    if (r_lo < a.tq) a.lse[bh * a.tq + r_lo] = n_end > 0 ? softmax_lse(MaxSum{m_lo, l_lo}, 1.0f) : kNegInf;
    if (r_hi < a.tq) a.lse[bh * a.tq + r_hi] = n_end > 0 ? softmax_lse(MaxSum{m_hi, l_hi}, 1.0f) : kNegInf;
  }
}

// ---------------------------------------------------------------------------------------
// Backward, tensor cores (sm_80+): FlashAttention-2's backward as two kernels, so that
// neither needs atomics (deterministic). P is recomputed from the saved lse exactly as the
// forward formed it; P and dS are rounded to the input dtype for their mma, as in FA2.
// The tile that streams through shared memory is 64 rows up to D = 64; at D = 96 and 128
// it is 32 (dQ) and 16 (dK/dV, which holds two D-wide accumulators), to stay within 48 KB
// of static shared memory and within the register file without spilling. Above D = 128 the
// row operands' A fragments are re-read from L1 per tile instead of held, dQ streams 16 keys,
// and a dK/dV block owns half of the D columns (grid z), recomputing the scores per half.
// ---------------------------------------------------------------------------------------

// The backward's two score-shaped products for one warp: s = A B^T (the scores) and
// dp = A' B'^T (dO V^T), A and A' the warp's 16 rows (ARows), B and B' row-major tiles of
// 8 NT rows (stride ld) in shared memory.
template <typename T, int NT, int D, bool R>
__device__ __forceinline__ void score_products(float (&s)[NT][4], const ARows<T, D, R>& a, const T* b,
                                               float (&dp)[NT][4], const ARows<T, D, R>& a2, const T* b2, int ld) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
    for (int c = 0; c < 4; ++c) s[nt][c] = dp[nt][c] = 0.0f;
  }
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    uint32_t af[4], a2f[4];
    a.get(af, kk);
    a2.get(a2f, kk);
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      mma_tile_b(s[nt], af, b, ld, nt * 8, kk * 16);
      mma_tile_b(dp[nt], a2f, b2, ld, nt * 8, kk * 16);
    }
  }
}

// One element of a score tile in the backward: its query and key, and the query's saved
// lse and delta.
struct ScoreEntry {
  int64_t query, key;
  float lse, delta;
};

// Recompute P from the scores and form dS: s becomes P = exp2(score - lse) where the query
// sees the key (0 elsewhere) and dp becomes dS = P (dP - delta). entry(nt, c) names the
// element behind accumulator c of n-tile nt (the dK/dV kernel's tiles are transposed).
template <int NT, typename Entry>
__device__ __forceinline__ void probs_and_score_grads(float (&s)[NT][4], float (&dp)[NT][4], const AttentionArgs& f,
                                                      Entry entry) {
  const int64_t offset = f.tk - f.tq;  // causal: query i sees keys <= i + offset
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const ScoreEntry e = entry(nt, c);
      const bool seen = e.query < f.tq && e.key < f.tk && !(f.causal && e.key > e.query + offset);
      const float p = seen ? exp2f(scaled_score(s[nt][c], f.scale_log2) - e.lse) : 0.0f;
      s[nt][c] = p;
      dp[nt][c] = p * (dp[nt][c] - e.delta);
    }
  }
}

// Output columns per block of the backward mma kernels (D / columns blocks on grid z): all
// of them up to D = 128; above, the dK and dV (resp. dQ) accumulators of a slice, sized so
// that no configuration spills (ptxas, sm_80 and sm_90).
constexpr int dkdv_columns(int d) { return d <= 128 ? d : d == 192 ? 64 : 128; }
constexpr int dq_columns(int d) { return d <= 128 ? d : d / 2; }

// dK and dV for 64 keys (16 per warp, K and V as A fragments), streaming the queries that
// see them: S^T = K Q^T and dP^T = V dO^T (keys as rows), P^T = exp2(S^T - lse),
// dS^T = P^T (dP^T - delta); dV += P^T dO and dK += dS^T Q (scaled on the way out), over
// this block's DC output columns [blockIdx.z * DC, + DC).
template <typename T, int D>
__global__ void __launch_bounds__(kWarps * 32, 1) attn_bwd_dkdv_mma(AttentionBackwardArgs a) {
  constexpr bool kSmall = D <= 128;          // K's fragments in registers, V's in shared memory
  constexpr int BQ = D <= 64 ? 64 : 16;      // queries per streamed tile
  constexpr int DC = dkdv_columns(D);        // output columns per block
  constexpr int LD = D + 8;
  constexpr int DT = DC / 8, NQ = BQ / 8;
  __shared__ alignas(16) T q_s[BQ * LD];
  __shared__ alignas(16) T do_s[BQ * LD];
  __shared__ alignas(16) T v_blk[kSmall ? kBlockN * LD : 8];  // this block's keys of V: A fragments by ldmatrix
  __shared__ float lse_s[BQ], delta_s[BQ];

  const AttentionArgs& f = a.fwd;
  const int d = f.head_dim;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, tig = lane & 3;
  const int64_t bh = blockIdx.x, b = bh / f.heads, h = bh % f.heads;
  const int64_t n_block = static_cast<int64_t>(blockIdx.y) * kBlockN;
  const int c_base = static_cast<int>(blockIdx.z) * DC;
  const int64_t key_lo = n_block + warp * 16 + (lane >> 2), key_hi = key_lo + 8;
  const int64_t offset = f.tk - f.tq;

  // K's A fragments stay in registers up to D = 128; V's are re-read from shared memory per
  // tile, which keeps the D = 128 kernel within the register file (dK and dV take 128
  // registers). Above, both come from L1 per tile.
  const ARows<T, D, kSmall> ka(f.k, f.k_strides, b, h, key_lo, f.tk, d);
  const ARows<T, D, false> va_global(f.v, f.v_strides, b, h, key_lo, f.tk, d);
  if constexpr (kSmall) {
    stage_rows_async<T, D, kBlockN>(f.v, f.v_strides, b, h, n_block, f.tk, d, v_blk);
    cp_async_commit();  // waited for with the first query tile
  }
  const T* v_warp = v_blk + (kSmall ? warp * 16 * LD : 0);
  float dk[DT][4], dv[DT][4];
#pragma unroll
  for (int dt = 0; dt < DT; ++dt) {
#pragma unroll
    for (int c = 0; c < 4; ++c) dk[dt][c] = dv[dt][c] = 0.0f;
  }

  // Causal: key j is seen by queries i >= j - offset; start at the tile holding the first.
  int64_t m_begin = 0;
  if (f.causal && n_block - offset > 0) m_begin = (n_block - offset) / BQ * BQ;
  const float* lse = f.lse + bh * f.tq;
  const float* delta = a.delta + bh * f.tq;

  for (int64_t m0 = m_begin; m0 < f.tq; m0 += BQ) {
    __syncthreads();  // the previous tiles are consumed
    stage_rows_async<T, D, BQ>(f.q, f.q_strides, b, h, m0, f.tq, d, q_s);
    stage_rows_async<T, D, BQ>(a.dout, a.dout_strides, b, h, m0, f.tq, d, do_s);
    cp_async_commit();
    for (int i = tid; i < BQ; i += kWarps * 32) {
      lse_s[i] = m0 + i < f.tq ? lse[m0 + i] : 0.0f;
      delta_s[i] = m0 + i < f.tq ? delta[m0 + i] : 0.0f;
    }
    cp_async_wait<0>();
    __syncthreads();

    // S^T = K Q^T and dP^T = V dO^T over all D columns.
    float st[NQ][4], dpt[NQ][4];
#pragma unroll
    for (int nq = 0; nq < NQ; ++nq) {
#pragma unroll
      for (int c = 0; c < 4; ++c) st[nq][c] = dpt[nq][c] = 0.0f;
    }
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t kf[4], va[4];
      ka.get(kf, kk);
      if constexpr (kSmall) {
        ldmatrix_a(va, v_warp + kk * 16, LD);
      } else {
        va_global.get(va, kk);
      }
#pragma unroll
      for (int nq = 0; nq < NQ; ++nq) {
        mma_tile_b(st[nq], kf, q_s, LD, nq * 8, kk * 16);
        mma_tile_b(dpt[nq], va, do_s, LD, nq * 8, kk * 16);
      }
    }
    // st becomes P^T and dpt becomes dS^T (rows: keys; columns: queries).
    probs_and_score_grads(st, dpt, f, [&](int nq, int c) {
      const int col = nq * 8 + tig * 2 + (c & 1);
      return ScoreEntry{m0 + col, c < 2 ? key_lo : key_hi, lse_s[col], delta_s[col]};
    });
#pragma unroll
    for (int t = 0; t < BQ / 16; ++t) {
      uint32_t pa[4], dsa[4];
      accumulators_as_a<T>(pa, st[2 * t], st[2 * t + 1]);
      accumulators_as_a<T>(dsa, dpt[2 * t], dpt[2 * t + 1]);
#pragma unroll
      for (int dt = 0; dt < DT; ++dt) {
        mma_rows_as_b<T, D>(dv[dt], pa, do_s, c_base + dt * 8, t * 16);
        mma_rows_as_b<T, D>(dk[dt], dsa, q_s, c_base + dt * 8, t * 16);
      }
    }
  }

  T* dk_out = static_cast<T*>(a.dk) + bh * f.tk * d;
  T* dv_out = static_cast<T*>(a.dv) + bh * f.tk * d;
#pragma unroll
  for (int dt = 0; dt < DT; ++dt) {
    const int col = c_base + dt * 8 + tig * 2;
    store2(dk_out, key_lo, f.tk, col, d, dk[dt][0] * a.scale, dk[dt][1] * a.scale);
    store2(dk_out, key_hi, f.tk, col, d, dk[dt][2] * a.scale, dk[dt][3] * a.scale);
    store2(dv_out, key_lo, f.tk, col, d, dv[dt][0], dv[dt][1]);
    store2(dv_out, key_hi, f.tk, col, d, dv[dt][2], dv[dt][3]);
  }
}


// dQ for 64 queries (16 per warp, Q and dO as A fragments), streaming the keys they see:
// S = Q K^T and dP = dO V^T as in the forward, dS = P (dP - delta), dQ += dS K.
template <typename T, int D>
__global__ void __launch_bounds__(kWarps * 32, 1) attn_bwd_dq_mma(AttentionBackwardArgs a) {
  constexpr bool kSmall = D <= 128;  // Q's and dO's fragments in registers
  constexpr int BN = D <= 64 ? 64 : D <= 128 ? 32 : 16;  // keys per streamed tile
  constexpr int LD = D + 8;
  constexpr int DC = dq_columns(D);  // output columns per block, from c_base
  constexpr int DT = DC / 8, NT = BN / 8;
  __shared__ alignas(16) T k_s[BN * LD];
  __shared__ alignas(16) T v_s[BN * LD];

  const AttentionArgs& f = a.fwd;
  const int d = f.head_dim;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, tig = lane & 3;
  const int64_t bh = blockIdx.x, b = bh / f.heads, h = bh % f.heads;
  const int64_t m_block = static_cast<int64_t>(blockIdx.y) * kBlockM;
  const int c_base = static_cast<int>(blockIdx.z) * DC;
  const int64_t r_lo = m_block + warp * 16 + (lane >> 2), r_hi = r_lo + 8;
  const int64_t offset = f.tk - f.tq;

  const ARows<T, D, kSmall> qa(f.q, f.q_strides, b, h, r_lo, f.tq, d);
  const ARows<T, D, kSmall> doa(a.dout, a.dout_strides, b, h, r_lo, f.tq, d);
  const float lse_lo = r_lo < f.tq ? f.lse[bh * f.tq + r_lo] : 0.0f;
  const float lse_hi = r_hi < f.tq ? f.lse[bh * f.tq + r_hi] : 0.0f;
  const float delta_lo = r_lo < f.tq ? a.delta[bh * f.tq + r_lo] : 0.0f;
  const float delta_hi = r_hi < f.tq ? a.delta[bh * f.tq + r_hi] : 0.0f;
  float dq[DT][4];
#pragma unroll
  for (int dt = 0; dt < DT; ++dt) dq[dt][0] = dq[dt][1] = dq[dt][2] = dq[dt][3] = 0.0f;

  const int64_t last_query = (m_block + kBlockM < f.tq ? m_block + kBlockM : f.tq) - 1;
  const int64_t n_end = f.causal ? (last_query + offset + 1 < f.tk ? last_query + offset + 1 : f.tk) : f.tk;

  for (int64_t n0 = 0; n0 < n_end; n0 += BN) {
    __syncthreads();  // the previous tiles are consumed
    stage_rows_async<T, D, BN>(f.k, f.k_strides, b, h, n0, f.tk, d, k_s);
    stage_rows_async<T, D, BN>(f.v, f.v_strides, b, h, n0, f.tk, d, v_s);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();

    float s[NT][4], dp[NT][4];
    score_products<T>(s, qa, k_s, dp, doa, v_s, LD);
    // s becomes P and dp becomes dS.
    probs_and_score_grads(s, dp, f, [&](int nt, int c) {
      return ScoreEntry{c < 2 ? r_lo : r_hi, n0 + nt * 8 + tig * 2 + (c & 1), c < 2 ? lse_lo : lse_hi,
                        c < 2 ? delta_lo : delta_hi};
    });
#pragma unroll
    for (int t = 0; t < BN / 16; ++t) {
      uint32_t dsa[4];
      accumulators_as_a<T>(dsa, dp[2 * t], dp[2 * t + 1]);
#pragma unroll
      for (int dt = 0; dt < DT; ++dt) mma_rows_as_b<T, D>(dq[dt], dsa, k_s, c_base + dt * 8, t * 16);
    }
  }

  T* dq_out = static_cast<T*>(a.dq) + bh * f.tq * d;
#pragma unroll
  for (int dt = 0; dt < DT; ++dt) {
    const int col = c_base + dt * 8 + tig * 2;
    store2(dq_out, r_lo, f.tq, col, d, dq[dt][0] * a.scale, dq[dt][1] * a.scale);
    store2(dq_out, r_hi, f.tq, col, d, dq[dt][2] * a.scale, dq[dt][3] * a.scale);
  }
}

// ---------------------------------------------------------------------------------------
// Backward, CUDA cores (fp32).
// ---------------------------------------------------------------------------------------
template <typename T, int D>
__global__ void __launch_bounds__(kWarps * 32, 1) attn_bwd_delta(AttentionBackwardArgs a) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (row >= a.fwd.batch * a.fwd.heads * a.fwd.tq) return;
  const Row r = split_row(row, a.fwd.heads, a.fwd.tq);
  const int d = a.fwd.head_dim;
  const T* dout = at<T>(a.dout, a.dout_strides, r.b, r.h, r.i);
  const T* out = static_cast<const T*>(a.fwd.out) + row * d;
  float s = 0.0f;
  for (int x = lane; x < d; x += 32) s += to_float(dout[x]) * to_float(out[x]);
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
  const int d = f.head_dim;
  const T* q = at<T>(f.q, f.q_strides, r.b, r.h, r.i);
  const T* dout = at<T>(a.dout, a.dout_strides, r.b, r.h, r.i);
  for (int x = lane; x < d; x += 32) {
    q_s[warp][x] = to_float(q[x]);
    do_s[warp][x] = to_float(dout[x]);
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
      const float s = dot_row<T, D>(q_s[warp], at<T>(f.k, f.k_strides, r.b, r.h, j), d);
      const float dp = dot_row<T, D>(do_s[warp], at<T>(f.v, f.v_strides, r.b, r.h, j), d);
      const float p = exp2f(scaled_score(s, f.scale_log2) - lse);
      ds = p * (dp - delta) * a.scale;
    }
    const int count = n_keys - j0 < 32 ? static_cast<int>(n_keys - j0) : 32;
    for (int jj = 0; jj < count; ++jj) {
      const float dsj = __shfl_sync(0xffffffffu, ds, jj);
      const T* k = at<T>(f.k, f.k_strides, r.b, r.h, j0 + jj);
#pragma unroll
      for (int e = 0; e < E; ++e) {
        if (e * 32 + lane < d) acc[e] += dsj * to_float(k[e * 32 + lane]);
      }
    }
  }
  T* dq = static_cast<T*>(a.dq) + row * d;
#pragma unroll
  for (int e = 0; e < E; ++e) {
    if (e * 32 + lane < d) dq[e * 32 + lane] = from_float<T>(acc[e]);
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
  const int d = f.head_dim;
  const T* k = at<T>(f.k, f.k_strides, r.b, r.h, r.i);
  const T* v = at<T>(f.v, f.v_strides, r.b, r.h, r.i);
  for (int x = lane; x < d; x += 32) {
    k_s[warp][x] = to_float(k[x]);
    v_s[warp][x] = to_float(v[x]);
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
      const float s = dot_row<T, D>(k_s[warp], at<T>(f.q, f.q_strides, r.b, r.h, i), d);
      const float dp = dot_row<T, D>(v_s[warp], at<T>(a.dout, a.dout_strides, r.b, r.h, i), d);
      p = exp2f(scaled_score(s, f.scale_log2) - f.lse[bh_rows + i]);
      ds = p * (dp - a.delta[bh_rows + i]) * a.scale;
    }
    const int count = f.tq - i0 < 32 ? static_cast<int>(f.tq - i0) : 32;
    for (int ii = 0; ii < count; ++ii) {
      const float pi = __shfl_sync(0xffffffffu, p, ii), dsi = __shfl_sync(0xffffffffu, ds, ii);
      const T* q = at<T>(f.q, f.q_strides, r.b, r.h, i0 + ii);
      const T* dout = at<T>(a.dout, a.dout_strides, r.b, r.h, i0 + ii);
#pragma unroll
      for (int e = 0; e < E; ++e) {
        if (e * 32 + lane < d) {
          dv[e] += pi * to_float(dout[e * 32 + lane]);
          dk[e] += dsi * to_float(q[e * 32 + lane]);
        }
      }
    }
  }
  T* dk_out = static_cast<T*>(a.dk) + key_row * d;
  T* dv_out = static_cast<T*>(a.dv) + key_row * d;
#pragma unroll
  for (int e = 0; e < E; ++e) {
    if (e * 32 + lane < d) {
      dk_out[e * 32 + lane] = from_float<T>(dk[e]);
      dv_out[e * 32 + lane] = from_float<T>(dv[e]);
    }
  }
}

// The padded head dim D a head dim d runs at (d <= 256, a multiple of 8; entry.cpp checks).
template <typename F>
void with_head_dim(int d, F&& f) {
  if (d <= 16) f(std::integral_constant<int, 16>{});
  else if (d <= 32) f(std::integral_constant<int, 32>{});
  else if (d <= 64) f(std::integral_constant<int, 64>{});
  else if (d <= 96) f(std::integral_constant<int, 96>{});
  else if (d <= 128) f(std::integral_constant<int, 128>{});
  else if (d <= 192) f(std::integral_constant<int, 192>{});
  else f(std::integral_constant<int, 256>{});
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
    const int64_t rows = a.batch * a.heads * a.tq;
    if constexpr (!std::is_same_v<T, float>) {  // fp16/bf16 decode (fp32 keeps the row kernel's
      // score order, which its backward recomputes bit for bit)
      const auto blocks = static_cast<unsigned int>(rows * a.splits);
      if (a.kv_lengths != nullptr) {
        attn_fwd_decode<T, D, true><<<blocks, kWarps * 32, 0, st>>>(a);
      } else {
        attn_fwd_decode<T, D, false><<<blocks, kWarps * 32, 0, st>>>(a);
      }
    } else {
      attn_fwd_rows<T, D><<<warp_blocks(rows * a.splits), kWarps * 32, 0, st>>>(a);
    }
    if (a.splits > 1) attn_fwd_combine<T, D><<<warp_blocks(rows), kWarps * 32, 0, st>>>(a);
  });
}

template <typename T>
void backward_typed(const AttentionBackwardArgs& a, cudaStream_t st) {
  const AttentionArgs& f = a.fwd;
  with_head_dim(f.head_dim, [&](auto dim) {
    constexpr int D = decltype(dim)::value;
    if (f.tq > 0) attn_bwd_delta<T, D><<<warp_blocks(f.batch * f.heads * f.tq), kWarps * 32, 0, st>>>(a);
    if constexpr (!std::is_same_v<T, float>) {
      const auto bh = static_cast<unsigned int>(f.batch * f.heads);
      if (f.tq > 0) {
        attn_bwd_dq_mma<T, D><<<dim3(bh, static_cast<unsigned int>((f.tq + kBlockM - 1) / kBlockM), D / dq_columns(D)),
                                kWarps * 32, 0, st>>>(a);
      }
      if (f.tk > 0) {
        attn_bwd_dkdv_mma<T, D><<<dim3(bh, static_cast<unsigned int>((f.tk + kBlockN - 1) / kBlockN),
                                       D / dkdv_columns(D)),
                                  kWarps * 32, 0, st>>>(a);
      }
      return;
    }
    if (f.tq > 0) attn_bwd_dq<T, D><<<warp_blocks(f.batch * f.heads * f.tq), kWarps * 32, 0, st>>>(a);
    if (f.tk > 0) attn_bwd_dkdv<T, D><<<warp_blocks(f.batch * f.heads * f.tk), kWarps * 32, 0, st>>>(a);
  });
}

}  // namespace

int attention_key_splits(DType dt, const AttentionArgs& args, int sm_count) {
  const int64_t rows = args.batch * args.heads * args.tq;
  if (rows == 0 || (dt != DType::kFloat32 && args.tq > kDecodeRows)) return 1;  // tensor-core path
  // Enough work to fill the GPU, each chunk at least kMinChunk keys: fp16/bf16 decode runs
  // a block per (row, chunk), 4 per SM (16 warps, each with 4 KB of K/V loads in flight:
  // 64 KB per SM); fp32 a warp per (row, chunk), ~32 per SM. Rows that fill it alone run
  // unsplit, in one launch.
  constexpr int64_t kMinChunk = 128, kMaxSplits = 64;
  const int64_t per_sm = dt == DType::kFloat32 ? 32 : 4;
  const int64_t want = (static_cast<int64_t>(sm_count) * per_sm + rows - 1) / rows;
  const int64_t by_keys = (args.tk + kMinChunk - 1) / kMinChunk;
  const int64_t splits = std::min(std::min(want, by_keys), kMaxSplits);
  return splits > 1 ? static_cast<int>(splits) : 1;
}

cudaError_t attention_forward(DType dt, const AttentionArgs& args, cudaStream_t stream) {
  if (args.batch * args.heads * args.tq == 0) return cudaSuccess;
  if (args.splits > 1 && args.partial == nullptr) return cudaErrorInvalidValue;
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
