// Fused sampling on the CPU: the rule and the arithmetic of csrc/common/sample.h (the CUDA
// kernel's), one row at a time, rows in parallel. Each row is widened to fp32 once into a
// thread-local buffer; then the same passes as the kernels: stats, top-k search (counts),
// mass, top-p search (mass), draw (running sum in column order, one Philox uniform).
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../common/checks.h"
#include "../common/rows.h"
#include "../common/sample.h"

namespace gptk {
namespace {

// The threshold search over a row's keys (weight 1, or exp2((x - m) * c) when `mass`).
Search search_row(const float* x, const int32_t* keys, int64_t n, int32_t lo, int32_t up, int32_t floor,
                  float target, float w_lo, float m, float c, bool mass) {
  Search s{lo, up, w_lo};
  while (!s.done()) {
    const int32_t mid = s.mid();
    SearchAcc acc;
    for (int64_t j = 0; j < n; ++j) {
      if (keys[j] < floor) continue;
      acc.add(keys[j], mass ? std::exp2((x[j] - m) * c) : 1.0f, mid);
    }
    s.step(acc, mid, target);
  }
  return s;
}

int64_t sample_row(const float* x, int32_t* keys, int64_t n, int64_t seed, int64_t row, float c, int64_t top_k,
                   float top_p, bool greedy) {
  RowStats st;
  for (int64_t j = 0; j < n; ++j) st.add(x[j], static_cast<int32_t>(j));
  if (greedy) return st.nan ? -1 : st.idx;
  if (st.nan || !std::isfinite(st.m)) return -1;
  const float m = st.m;
  for (int64_t j = 0; j < n; ++j) keys[j] = ordered_key(x[j]);
  const int32_t kmax = ordered_key(m);
  int32_t floor = st.kmin;
  if (top_k > 0 && top_k < n) {
    floor = search_row(x, keys, n, floor, kmax + 1, floor, static_cast<float>(top_k), 0.0f, m, c, false).lo;
  }
  float z = 0.0f;
  for (int64_t j = 0; j < n; ++j) {
    if (keys[j] >= floor) z += std::exp2((x[j] - m) * c);
  }
  if (top_p < 1.0f) floor = search_row(x, keys, n, floor, kmax + 1, floor, z * top_p, z, m, c, true).lo;
  // The draw: total and running sum in the same column order.
  float total = 0.0f;
  for (int64_t j = 0; j < n; ++j) {
    if (keys[j] >= floor) total += std::exp2((x[j] - m) * c);
  }
  const float target = philox_uniform(seed, row) * total;
  float run = 0.0f;
  int64_t last = -1;
  for (int64_t j = 0; j < n; ++j) {
    if (keys[j] < floor) continue;
    const float w = std::exp2((x[j] - m) * c);
    if (w <= 0.0f) continue;
    run += w;
    last = j;
    if (run > target) return j;
  }
  return last;  // rounding left the target unreached: the last kept column with mass
}

template <typename T>
void sample_rows(const T* x, int64_t stride, int64_t* out, int64_t rows, int64_t n, int64_t seed, float c,
                 int64_t top_k, float top_p, bool greedy) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(n, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(n);
    std::vector<int32_t> keys(n);
    for (int64_t r = begin; r < end; ++r) {
      const T* xr = x + r * stride;
      for (int64_t j = 0; j < n; ++j) buf[j] = static_cast<float>(xr[j]);
      out[r] = sample_row(buf.data(), keys.data(), n, seed, r, c, top_k, top_p, greedy);
    }
  });
}

at::Tensor sample_cpu(const at::Tensor& logits, const at::Tensor& seed, double temperature, int64_t top_k,
                      double top_p) {
  constexpr const char* op = "gptk::sample_cuda";
  check_sample(logits, seed, temperature, top_k, top_p, op);
  const int64_t rows = logits.size(0), n = logits.size(1);
  at::Tensor out = at::empty({rows}, logits.options().dtype(at::kLong));
  if (rows == 0) return out;
  const at::Tensor x = last_dim_rows(logits, rows);
  const bool greedy = temperature == 0;
  // log2(e) / t, capped so that (x - max) * c stays 0 at the max for tiny t.
  const float c = greedy ? 0.0f : static_cast<float>(std::min(static_cast<double>(kLog2e) / temperature, 3.0e38));
  const int64_t s = seed.item<int64_t>();
  GPTK_DISPATCH_FLOAT(logits.scalar_type(), "sample_cpu", [&] {
    sample_rows(x.const_data_ptr<scalar_t>(), x.stride(0), out.mutable_data_ptr<int64_t>(), rows, n, s, c, top_k,
                static_cast<float>(top_p), greedy);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(gptk, CPU, m) { m.impl("sample_cuda", &sample_cpu); }

}  // namespace gptk
