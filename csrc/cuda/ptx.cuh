// Every inline-PTX instruction the kernels use, behind plain functions: tensor-core mma,
// ldmatrix and cp.async. tests/cuda_emulator/cuda/ptx.cuh implements the same functions
// for the CPU emulator (its include path puts that file ahead of this one), so keep PTX
// out of the .cu files and add new instructions here and there together.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace gptk {
namespace cuda {

// c += a b, m16n8k16, fp32 accumulate; fragment layouts as the PTX ISA gives them.
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

// Two 8x8 matrices of 16-bit values from shared memory: lane 8 i + r gives the address of
// row r of matrix i (lanes 16-31 must pass valid addresses too); lane 4 r + w receives, in
// out[i], row r's elements 2 w and 2 w + 1 of matrix i.
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&out)[2], const void* row) {
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(out[0]), "=r"(out[1])
               : "r"(addr)
               : "memory");
}

// The same for the transposed matrices: lane 4 r + w receives elements (2 w, r) and
// (2 w + 1, r) of matrix i (row, column of the matrix as stored).
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&out)[2], const void* row) {
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(out[0]), "=r"(out[1])
               : "r"(addr)
               : "memory");
}

// 16 bytes global -> shared without passing through registers; zeros instead when !fill
// (the source address is then not read, but must still be a valid pointer).
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool fill) {
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int src_bytes = fill ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(addr), "l"(gmem), "r"(src_bytes)
               : "memory");
}

// Close the group of this thread's cp.async issued since the last commit.
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// Wait until at most N of this thread's committed groups are still in flight. Other
// threads' copies become visible after a __syncthreads() that follows.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// The block's dynamic shared memory (the launch's third <<<>>> argument), 16-byte aligned.
// Here because the emulator replaces `extern __shared__` along with the PTX.
template <typename T>
__device__ __forceinline__ T* dynamic_smem() {
  extern __shared__ __align__(16) unsigned char gptk_dynamic_smem[];
  return reinterpret_cast<T*>(gptk_dynamic_smem);
}

}  // namespace cuda
}  // namespace gptk
