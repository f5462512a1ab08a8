// The CPU emulator's csrc/cuda/ptx.cuh: the same functions, by the PTX ISA's definitions
// (see emulator.h). mma's fragment layout is cross-checked by hardware (the tensor-core
// attention forward passed on an H100 and passes here); ldmatrix and cp.async follow the
// ISA text.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace gptk {
namespace cuda {

inline void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, __half) {
  ::gptk_emu::mma_m16n8k16<::gptk_emu::f16>(c, a, b0, b1);
}
inline void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, __nv_bfloat16) {
  ::gptk_emu::mma_m16n8k16<::gptk_emu::bf16>(c, a, b0, b1);
}
// The trailing defaults name the caller's line, for the emulator's alignment faults.
inline void ldmatrix_x2(uint32_t (&out)[2], const void* row, const char* file = __builtin_FILE(),
                        int line = __builtin_LINE()) {
  ::gptk_emu::ldmatrix<2, false>(out, row, file, line);
}
inline void ldmatrix_x2_trans(uint32_t (&out)[2], const void* row, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
  ::gptk_emu::ldmatrix<2, true>(out, row, file, line);
}
inline void cp_async_16(void* smem, const void* gmem, bool fill, const char* file = __builtin_FILE(),
                        int line = __builtin_LINE()) {
  ::gptk_emu::cp_async_16(smem, gmem, fill, file, line);
}
template <typename T>
inline T* dynamic_smem() {
  return reinterpret_cast<T*>(::gptk_emu::dynamic_smem());
}
inline void cp_async_commit() { ::gptk_emu::cp_async_commit(); }
template <int N>
inline void cp_async_wait() {
  ::gptk_emu::cp_async_wait(N);
}

}  // namespace cuda
}  // namespace gptk
