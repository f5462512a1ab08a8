// Fused unembedding + cross-entropy on the GPU: the row step of one token chunk. The
// chunk's logits z = x W^T + b come from cuBLAS (csrc/common/lce.h drives the chunks);
// this kernel turns each row of z into its loss and, for a gradient, overwrites the row
// with dz = (softmax(z / T) - onehot(t)) * scale / T, the operand of the dX and dW GEMMs.
//
// Roofline per row of V elements (s bytes each): pass 1 reads the row (online max and
// sum, csrc/common/math.h, log2 domain with c = log2(e) / T), pass 2 reads it again and
// writes dz: 3 V s bytes, memory-bound. One 512-thread block per row; a block's 100 KB
// row (GPT-2, bf16) is still in L2 for pass 2 with 132 SMs' worth of rows in flight.
// 16-byte accesses when the row start and stride allow (the driver pads the stride to a
// multiple of 8 elements), then a scalar tail.
#include "cuda/common.cuh"

namespace gptk {
namespace cuda {
namespace {

constexpr int kLceThreads = 512;
constexpr float kLn2 = 0.6931471805599453f;

template <typename T, int VEC>
__global__ void __launch_bounds__(kLceThreads, 1)
    lce_rows_kernel(T* __restrict__ z, int64_t ld, int64_t n, const int64_t* __restrict__ target,
                    const float* __restrict__ scale, int per_token, float c, float inv_t, int64_t ignore_index,
                    int want_grad, float* __restrict__ loss) {
  __shared__ MaxSum smem[32];
  const int64_t row = blockIdx.x;
  T* zr = z + row * ld;
  const int64_t t = target[row];
  const bool counted = t != ignore_index && t >= 0 && t < n;
  // Read before the barrier inside the all-reduce: pass 2 overwrites the row.
  const float zt = counted ? to_float(zr[t]) : 0.0f;
  const int64_t nv = n / VEC * VEC;
  MaxSum st = softmax_empty();
  for (int64_t idx = threadIdx.x * VEC; idx < nv; idx += kLceThreads * VEC) {
    float v[VEC];
    load_pack<T, VEC>(zr + idx, v);
#pragma unroll
    for (int e = 0; e < VEC; ++e) st = softmax_update(st, v[e], c);
  }
  for (int64_t idx = nv + threadIdx.x; idx < n; idx += kLceThreads) st = softmax_update(st, to_float(zr[idx]), c);
  st = row_allreduce<kLceThreads>(st, MaxSumOp{c}, smem);
  const float shift = softmax_shift(st.max);
  const float log2_sum = log2f(st.sum);
  if (threadIdx.x == 0) loss[row] = counted ? ((shift - zt) * c + log2_sum) * kLn2 : 0.0f;
  if (!want_grad) return;
  const float s = counted ? (per_token ? scale[row] : scale[0]) * inv_t : 0.0f;
  for (int64_t idx = threadIdx.x * VEC; idx < nv; idx += kLceThreads * VEC) {
    float v[VEC];
    load_pack<T, VEC>(zr + idx, v);
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      const float p = exp2f((v[e] - shift) * c - log2_sum);
      v[e] = counted ? (p - (idx + e == t ? 1.0f : 0.0f)) * s : 0.0f;
    }
    store_pack<T, VEC>(zr + idx, v);
  }
  for (int64_t idx = nv + threadIdx.x; idx < n; idx += kLceThreads) {
    const float p = exp2f((to_float(zr[idx]) - shift) * c - log2_sum);
    zr[idx] = from_float<T>(counted ? (p - (idx == t ? 1.0f : 0.0f)) * s : 0.0f);
  }
}

template <typename T>
void rows_typed(void* z, int64_t ld, int64_t rows, int64_t n, const int64_t* target, const float* scale,
                bool per_token, float inv_t, int64_t ignore_index, bool want_grad, float* loss, cudaStream_t st) {
  const float c = kLog2e * inv_t;
  T* zp = static_cast<T*>(z);
  const unsigned int grid = static_cast<unsigned int>(rows);
  constexpr int kVec = kVec16<T>;
  if (aligned16(z) && ld % kVec == 0) {
    lce_rows_kernel<T, kVec><<<grid, kLceThreads, 0, st>>>(zp, ld, n, target, scale, per_token, c, inv_t,
                                                          ignore_index, want_grad, loss);
  } else {
    lce_rows_kernel<T, 1><<<grid, kLceThreads, 0, st>>>(zp, ld, n, target, scale, per_token, c, inv_t,
                                                       ignore_index, want_grad, loss);
  }
}

}  // namespace

cudaError_t lce_rows(DType dt, void* z, int64_t ld, int64_t rows, int64_t n, const int64_t* target,
                     const float* scale, bool per_token, float inv_t, int64_t ignore_index, bool want_grad,
                     float* loss, cudaStream_t stream) {
  if (rows == 0 || n == 0) return cudaSuccess;
  switch (dt) {
    case DType::kFloat32:
      rows_typed<float>(z, ld, rows, n, target, scale, per_token, inv_t, ignore_index, want_grad, loss, stream);
      break;
    case DType::kFloat16:
      rows_typed<__half>(z, ld, rows, n, target, scale, per_token, inv_t, ignore_index, want_grad, loss, stream);
      break;
    case DType::kBFloat16:
      rows_typed<__nv_bfloat16>(z, ld, rows, n, target, scale, per_token, inv_t, ignore_index, want_grad, loss,
                                stream);
      break;
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace gptk
