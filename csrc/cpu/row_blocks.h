// Deterministic column sums over rows (dweight, dbias): rows split into a fixed number of
// blocks that depends only on the row count, one fp32 partial row per block, partials
// summed in block order. The result is the same for any thread count.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace gptk {

struct RowBlocks {
  static constexpr int64_t kMaxBlocks = 32;
  int64_t rows, block_rows, count;

  explicit RowBlocks(int64_t rows_)
      : rows(rows_),
        block_rows(std::max<int64_t>(1, (rows_ + kMaxBlocks - 1) / kMaxBlocks)),
        count(rows_ == 0 ? 0 : (rows_ + block_rows - 1) / block_rows) {}

  int64_t begin(int64_t blk) const { return blk * block_rows; }
  int64_t end(int64_t blk) const { return std::min(rows, (blk + 1) * block_rows); }
};

// out[j] = sum over blocks of partials[blk * n + j], in block order.
template <typename T>
void sum_partials(const std::vector<float>& partials, int64_t blocks, int64_t n, T* out) {
  at::parallel_for(0, n, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      float s = 0.0f;
      for (int64_t blk = 0; blk < blocks; ++blk) s += partials[blk * n + j];
      out[j] = static_cast<T>(s);
    }
  });
}

}  // namespace gptk
