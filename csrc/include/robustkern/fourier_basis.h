// The Fourier basis convention, shared by the CPU and CUDA kernels (plain C++, no torch headers,
// so nvcc compiles it on the device side too). Specification: robustkern.reference.fourier_basis.
//
//   U(i, j)[u, v] = c(i, j) * cos(2 pi (i u / H + j v / W)),   u in [0, H), v in [0, W)
//
// Cosine phase, zero at pixel (0, 0); c = sqrt(2 / (H W)) so that ||U||_2 = 1, except for the
// self-conjugate frequencies ((2i mod H, 2j mod W) == (0, 0): the zero frequency and, for even
// sizes, the Nyquist row/column crossings), where the cosine is +-1 and c = 1 / sqrt(H W).
// U(i, j) == U(-i, -j) bit for bit: the phase is reduced exactly in integers to k in [0, HW/2].
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define RK_HOST_DEVICE __host__ __device__
#else
#define RK_HOST_DEVICE
#endif

namespace robustkern {

RK_HOST_DEVICE inline int64_t positive_mod(int64_t a, int64_t m) {
  const int64_t r = a % m;
  return r < 0 ? r + m : r;
}

// Frequency (i, j) reduced to [0, h) x [0, w).
struct Frequency {
  int64_t i, j;
  RK_HOST_DEVICE Frequency(int64_t fi, int64_t fj, int64_t h, int64_t w)
      : i(positive_mod(fi, h)), j(positive_mod(fj, w)) {}
  RK_HOST_DEVICE bool self_conjugate(int64_t h, int64_t w) const {
    return (2 * i) % h == 0 && (2 * j) % w == 0;
  }
};

// The phase of U(i, j) at pixel (u, v) as k with angle = 2 pi k / (h w), folded into [0, hw/2]
// (cos is even), so the cosine is evaluated as cospi(2 k / (h w)) on [0, 1].
RK_HOST_DEVICE inline int64_t basis_phase(const Frequency& f, int64_t u, int64_t v, int64_t h,
                                          int64_t w) {
  const int64_t hw = h * w;
  const int64_t k = ((f.i * u) % h * w + (f.j * v) % w * h) % hw;
  return k <= hw - k ? k : hw - k;
}

}  // namespace robustkern
