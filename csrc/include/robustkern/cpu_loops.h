// Helpers for the CPU kernels' inner loops: plain loops that GCC/Clang auto-vectorise, cloned
// for AVX-512/AVX2/baseline and picked at load time.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <limits>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define RK_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define RK_SIMD_CLONES
#endif

namespace robustkern {

// Written as comparisons so the loops vectorise; NaN in `a` propagates like torch.clamp.
template <typename A>
inline A max_of(A a, A b) {
  return a < b ? b : a;
}
template <typename A>
inline A min_of(A a, A b) {
  return b < a ? b : a;
}

// Non-finite gradient entries (NaN, +-inf) carry no usable direction: they count as 0.
template <typename A>
inline A finite_or_zero(A g) {
  const A mag = g < 0 ? -g : g;
  return mag <= std::numeric_limits<A>::max() ? g : A(0);
}

// alpha, eps or sparsity: one scalar, or one value per sample (compute type A).
template <typename A>
struct PerSample {
  const A* values;  // nullptr: every sample uses `scalar`
  A scalar;
  A operator[](int64_t i) const { return values ? values[i] : scalar; }
};

template <typename A>
PerSample<A> per_sample_view(const at::Tensor& t, double scalar) {
  return {t.defined() ? t.data_ptr<A>() : nullptr, static_cast<A>(scalar)};
}

}  // namespace robustkern
