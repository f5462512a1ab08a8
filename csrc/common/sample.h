// Fused sampling arithmetic shared by the CPU implementation and the CUDA kernel (host and
// device), so both make the same decisions: ordered keys, Philox4x32-10 (the stream of
// Triton's tl.randint, so all three backends draw the same uniform for a (seed, row)), and
// the threshold search's per-element update and per-pass decision. The rule itself is
// documented in kernels/triton/sample.py.
#pragma once

#include <cstdint>
#include <cstring>

#include "math.h"

namespace gptk {

constexpr int32_t kKeyMax = 2147483647;
constexpr int32_t kKeyMin = -2147483647 - 1;

// fp32 -> int32 in the same order as the floats; -0.0 and +0.0 are one value.
GPTK_HD int32_t ordered_key(float x) {
  if (x == 0.0f) x = 0.0f;
#if defined(__CUDA_ARCH__)
  const int32_t bits = __float_as_int(x);
#else
  int32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
#endif
  return bits >= 0 ? bits : bits ^ 0x7FFFFFFF;
}

GPTK_HD uint32_t mul_hi(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

// The first word of Philox4x32-10 with counter (c0, 0, 0, 0) and key (seed low, seed high).
GPTK_HD uint32_t philox_first(uint64_t seed, uint32_t c0) {
  uint32_t c1 = 0, c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int i = 0; i < 10; ++i) {
    const uint32_t p0 = c0, p2 = c2;
    c0 = mul_hi(0xCD9E8D57u, p2) ^ c1 ^ k0;
    c2 = mul_hi(0xD2511F53u, p0) ^ c3 ^ k1;
    c1 = 0xCD9E8D57u * p2;
    c3 = 0xD2511F53u * p0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return c0;
}

// U[0, 1) from the top 24 bits: the draw of row `row`.
GPTK_HD float philox_uniform(int64_t seed, int64_t row) {
  return static_cast<float>(philox_first(static_cast<uint64_t>(seed), static_cast<uint32_t>(row)) >> 8) *
         (1.0f / 16777216.0f);
}

// Pass 1 of a row: max with its first index, NaN, the smallest key.
struct RowStats {
  float m = kNegInf;
  int32_t idx = kKeyMax;
  int32_t kmin = kKeyMax;
  bool nan = false;

  // Elements arrive in increasing column order per accumulator: a strict > keeps the first
  // max; the first element seeds it so an all -inf row gives its first column.
  GPTK_HD void add(float x, int32_t j) {
    if (x != x) nan = true;
    if (x > m || idx == kKeyMax) {
      m = x;
      idx = j;
    }
    const int32_t k = ordered_key(x);
    kmin = k < kmin ? k : kmin;
  }
  GPTK_HD void merge(const RowStats& o) {
    if (o.idx != kKeyMax && (idx == kKeyMax || o.m > m || (o.m == m && o.idx < idx))) {
      m = o.m;
      idx = o.idx;
    }
    kmin = o.kmin < kmin ? o.kmin : kmin;
    nan = nan || o.nan;
  }
};

// One pass of the threshold search at pivot `mid`: W(>= mid), and the nearest keys on each
// side of the pivot (a: smallest >= mid, b: largest < mid) with their weight.
struct SearchAcc {
  float c = 0.0f, wa = 0.0f, wb = 0.0f;
  int32_t a = kKeyMax, b = kKeyMin;

  GPTK_HD void add(int32_t k, float w, int32_t mid) {
    if (k >= mid) {
      c += w;
      if (k < a) {
        a = k;
        wa = w;
      } else if (k == a) {
        wa += w;
      }
    } else if (k > b) {
      b = k;
      wb = w;
    } else if (k == b) {
      wb += w;
    }
  }
  GPTK_HD void merge(const SearchAcc& o) {
    c += o.c;
    if (o.a < a) {
      a = o.a;
      wa = o.wa;
    } else if (o.a == a) {
      wa += o.wa;
    }
    if (o.b > b) {
      b = o.b;
      wb = o.wb;
    } else if (o.b == b) {
      wb += o.wb;
    }
  }
};

// The largest key v in [lo, up) with W(>= v) >= target; W(>= lo) >= target > W(>= up).
struct Search {
  int32_t lo, up;
  float w_lo;

  GPTK_HD bool done() const { return up <= lo + 1; }
  GPTK_HD int32_t mid() const {
    return static_cast<int32_t>((static_cast<int64_t>(lo) + static_cast<int64_t>(up)) >> 1);
  }
  GPTK_HD void step(const SearchAcc& s, int32_t mid, float target) {
    if (s.c >= target) {  // the answer is >= a; it is a when the weight above a falls short
      lo = s.a;
      w_lo = s.c;
      if (s.c - s.wa < target) up = s.a + 1;
    } else if (s.c + s.wb >= target) {  // b reaches and nothing above it does: b
      lo = s.b;
      w_lo = s.c + s.wb;
      up = s.b + 1;
    } else {
      up = mid;
    }
  }
};

}  // namespace gptk
