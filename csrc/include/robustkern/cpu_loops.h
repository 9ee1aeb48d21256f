// Helpers for the CPU kernels' inner loops: plain loops that GCC/Clang auto-vectorise, cloned
// for AVX-512/AVX2/baseline and picked at load time.
#pragma once

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

}  // namespace robustkern
