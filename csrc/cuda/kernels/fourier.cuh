// CUDA device code of fourier_perturb, on raw pointers and the CUDA runtime only (no torch
// headers), so nvcc compiles it on a machine without a GPU. Specification:
// robustkern/reference.py; basis convention: robustkern/fourier_basis.h (shared with the CPU).
//
// A thread owns one pixel of one frequency's basis image: it evaluates U at its pixel once
// (integer phase, one cospi) and writes that pixel for a run of kPlanesPerBlock (image, channel)
// planes. Consecutive threads touch consecutive pixels, so planar layouts are coalesced. Grid:
// x = pixel blocks x plane blocks, y = frequencies (grid-stride). No basis bank, no host sync.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../../include/robustkern/fourier_basis.h"
#include "common.cuh"

namespace robustkern {
namespace cuda {

constexpr int kFourierThreads = 256;
constexpr int64_t kPlanesPerBlock = 16;
constexpr int64_t kMaxGridY = 65535;

struct ImageStrides {
  int64_t n, c, h, w;
};

__device__ __forceinline__ float cos_pi(float v) { return cospif(v); }
__device__ __forceinline__ double cos_pi(double v) { return cospi(v); }

template <typename T, typename A>
__global__ void fourier_perturb_kernel(T* __restrict__ out, const T* __restrict__ x,
                                       const int64_t* __restrict__ freqs,
                                       const A* __restrict__ signs, int64_t f_count, int64_t n,
                                       int64_t c, int64_t h, int64_t w, ImageStrides xs,
                                       ImageStrides os, int64_t os_f, A eps, A lo, A hi,
                                       int64_t pixel_blocks) {
  const int64_t hw = h * w, planes = n * c;
  const int64_t p = (blockIdx.x % pixel_blocks) * int64_t(blockDim.x) + threadIdx.x;
  if (p >= hw) return;
  const int64_t u = p / w, v = p % w;
  const int64_t q0 = (blockIdx.x / pixel_blocks) * kPlanesPerBlock;
  const int64_t q1 = q0 + kPlanesPerBlock < planes ? q0 + kPlanesPerBlock : planes;
  for (int64_t fi = blockIdx.y; fi < f_count; fi += gridDim.y) {
    const Frequency f(freqs[2 * fi], freqs[2 * fi + 1], h, w);
    const A scale = (f.self_conjugate(h, w) ? A(1) : sqrt(A(2))) / sqrt(A(hw));
    const A basis = scale * cos_pi(A(2 * basis_phase(f, u, v, h, w)) / A(hw));
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t ni = q / c, ci = q - ni * c;
      const A e = signs ? eps * signs[fi * planes + q] : eps;
      const A val = to_acc(x[ni * xs.n + ci * xs.c + u * xs.h + v * xs.w]) + e * basis;
      out[fi * os_f + ni * os.n + ci * os.c + u * os.h + v * os.w] =
          from_acc<T>(clamp(val, lo, hi));
    }
  }
}

// out: (F, N, C, H, W) with strides (os_f, os); signs: contiguous (F, N, C) or nullptr (all +1).
template <typename T, typename A>
cudaError_t fourier_perturb(T* out, const T* x, const int64_t* freqs, const A* signs,
                            int64_t f_count, int64_t n, int64_t c, int64_t h, int64_t w,
                            ImageStrides xs, ImageStrides os, int64_t os_f, A eps, A lo, A hi,
                            cudaStream_t stream) {
  if (f_count == 0 || n * c * h * w == 0) return cudaSuccess;
  const int64_t pixel_blocks = (h * w + kFourierThreads - 1) / kFourierThreads;
  const int64_t plane_blocks = (n * c + kPlanesPerBlock - 1) / kPlanesPerBlock;
  if (pixel_blocks * plane_blocks > int64_t(0x7fffffff)) return cudaErrorInvalidConfiguration;
  const dim3 grid(unsigned(pixel_blocks * plane_blocks),
                  unsigned(f_count < kMaxGridY ? f_count : kMaxGridY));
  fourier_perturb_kernel<T, A><<<grid, kFourierThreads, 0, stream>>>(
      out, x, freqs, signs, f_count, n, c, h, w, xs, os, os_f, eps, lo, hi, pixel_blocks);
  return cudaGetLastError();
}

// Explicit instantiations: every kernel for every dtype is compiled by `nvcc -c` on this file.
#define RK_INSTANTIATE(T)                                                                     \
  template cudaError_t fourier_perturb<T, Acc<T>::type>(                                      \
      T*, const T*, const int64_t*, const Acc<T>::type*, int64_t, int64_t, int64_t, int64_t,  \
      int64_t, ImageStrides, ImageStrides, int64_t, Acc<T>::type, Acc<T>::type, Acc<T>::type, \
      cudaStream_t);
RK_INSTANTIATE(float)
RK_INSTANTIATE(double)
RK_INSTANTIATE(__half)
RK_INSTANTIATE(__nv_bfloat16)
#undef RK_INSTANTIATE

}  // namespace cuda
}  // namespace robustkern
