// CUDA device code of the projected-step family, on raw pointers and the CUDA runtime only (no
// torch headers), so nvcc compiles it on a machine without a GPU: `nvcc -c` on this header
// alone builds every kernel through the explicit instantiations at the bottom.
//
// Specification: robustkern/reference.py. Samples are contiguous blocks of d elements. Element
// kernels move kVec elements per thread with 16-byte loads when d and the pointers allow it.
// L2 sums: one block per fixed chunk of a sample, partials added in chunk order by one thread
// per sample, so results are deterministic. All launches go on the given stream; none syncs.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "common.cuh"

namespace robustkern {
namespace cuda {

constexpr int kThreads = 256;
constexpr int64_t kChunk = 8192;  // elements per block in the L2 partial sums
constexpr int64_t kMaxBlocks = int64_t(1) << 20;

// Non-finite gradient entries (NaN, +-inf) carry no usable direction: they count as 0.
template <typename A>
__device__ __forceinline__ A finite_or_zero(A g) {
  return isfinite(g) ? g : A(0);
}
template <typename A>
__device__ __forceinline__ A finite_sign(A g) {
  return isfinite(g) ? A((g > A(0)) - (g < A(0))) : A(0);
}

template <typename T, int kVec>
struct alignas(sizeof(T) * kVec) Pack {
  T v[kVec];
};

// Element-wise kernels walk packs of kVec elements; kVec divides d, so a pack never straddles
// two samples and the sample index is computed once per pack (only when a value is per sample).
template <typename T, typename A, int kVec>
__global__ void linf_step_kernel(T* __restrict__ xa, const T* __restrict__ xn,
                                 const T* __restrict__ g, int64_t packs, int64_t d,
                                 PerSample<A> alpha, PerSample<A> eps, A lo, A hi) {
  const bool per_sample = alpha.values || eps.values;
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < packs;
       p += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = per_sample ? p * kVec / d : 0;
    const A a = alpha[i], e = eps[i];
    Pack<T, kVec> va = reinterpret_cast<const Pack<T, kVec>*>(xa)[p];
    const Pack<T, kVec> vn = reinterpret_cast<const Pack<T, kVec>*>(xn)[p];
    const Pack<T, kVec> vg = reinterpret_cast<const Pack<T, kVec>*>(g)[p];
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const A x0 = to_acc(vn.v[k]);
      A v = to_acc(va.v[k]) + a * finite_sign(to_acc(vg.v[k]));
      v = clamp(v, x0 - e, x0 + e);
      va.v[k] = from_acc<T>(clamp(v, lo, hi));
    }
    reinterpret_cast<Pack<T, kVec>*>(xa)[p] = va;
  }
}

template <typename T, typename A, int kVec>
__global__ void linf_project_kernel(T* __restrict__ xa, const T* __restrict__ xn, int64_t packs,
                                    int64_t d, PerSample<A> eps, A lo, A hi) {
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < packs;
       p += int64_t(gridDim.x) * blockDim.x) {
    const A e = eps[eps.values ? p * kVec / d : 0];
    Pack<T, kVec> va = reinterpret_cast<const Pack<T, kVec>*>(xa)[p];
    const Pack<T, kVec> vn = reinterpret_cast<const Pack<T, kVec>*>(xn)[p];
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const A x0 = to_acc(vn.v[k]);
      va.v[k] = from_acc<T>(clamp(clamp(to_acc(va.v[k]), x0 - e, x0 + e), lo, hi));
    }
    reinterpret_cast<Pack<T, kVec>*>(xa)[p] = va;
  }
}

// Block-wide sum of three doubles; the result is valid in thread 0.
__device__ __forceinline__ void block_sum3(double& a, double& b, double& c) {
  __shared__ double shared[3][kThreads / 32];
  for (int off = 16; off > 0; off /= 2) {
    a += __shfl_down_sync(0xffffffffu, a, off);
    b += __shfl_down_sync(0xffffffffu, b, off);
    c += __shfl_down_sync(0xffffffffu, c, off);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    shared[0][warp] = a;
    shared[1][warp] = b;
    shared[2][warp] = c;
  }
  __syncthreads();
  if (warp == 0) {
    const bool live = lane < kThreads / 32;
    a = live ? shared[0][lane] : 0.0;
    b = live ? shared[1][lane] : 0.0;
    c = live ? shared[2][lane] : 0.0;
    for (int off = 16; off > 0; off /= 2) {
      a += __shfl_down_sync(0xffffffffu, a, off);
      b += __shfl_down_sync(0xffffffffu, b, off);
      c += __shfl_down_sync(0xffffffffu, c, off);
    }
  }
}

// partial[(sample * chunks + chunk) * 3 + k]: |d|^2, |g|^2, <d, g> over one chunk, d = xa - xn.
template <typename T, bool kWithGrad>
__global__ void l2_partial_sums_kernel(const T* __restrict__ xa, const T* __restrict__ xn,
                                       const T* __restrict__ g, int64_t d, int64_t chunks,
                                       double* __restrict__ partial) {
  const int64_t block = blockIdx.x, sample = block / chunks;
  const int64_t begin = sample * d + (block % chunks) * kChunk;
  const int64_t end = sample * d + min(d, (block % chunks + 1) * kChunk);
  double dd = 0.0, gg = 0.0, dg = 0.0;
  for (int64_t j = begin + threadIdx.x; j < end; j += blockDim.x) {
    const double dv = double(to_acc(xa[j])) - double(to_acc(xn[j]));
    dd += dv * dv;
    if (kWithGrad) {
      const double gv = finite_or_zero(double(to_acc(g[j])));
      gg += gv * gv;
      dg += dv * gv;
    }
  }
  block_sum3(dd, gg, dg);
  if (threadIdx.x == 0) {
    partial[block * 3] = dd;
    partial[block * 3 + 1] = gg;
    partial[block * 3 + 2] = dg;
  }
}

// One thread per sample: factors[i] = u (step along g), factors[n + i] = p (shrink onto ball).
template <typename A, bool kWithGrad>
__global__ void l2_factors_kernel(const double* __restrict__ partial, int64_t n, int64_t chunks,
                                  PerSample<A> alpha, PerSample<A> eps, A* __restrict__ factors) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  double dd = 0.0, gg = 0.0, dg = 0.0;
  for (int64_t c = 0; c < chunks; ++c) {
    dd += partial[(i * chunks + c) * 3];
    gg += partial[(i * chunks + c) * 3 + 1];
    dg += partial[(i * chunks + c) * 3 + 2];
  }
  A u = A(0);
  double nn = dd;
  if (kWithGrad && gg > 0) {
    const double a = double(alpha[i]), step = a / sqrt(gg);
    if (isfinite(A(step))) {  // a norm that underflows A moves nothing
      u = A(step);
      nn = dd + 2 * step * dg + a * a;
    }
  }
  const double norm = sqrt(fmax(nn, 0.0)), e = double(eps[i]);
  factors[i] = u;
  factors[n + i] = A(norm > e ? e / norm : 1.0);
}

// x = clamp(x_nat + p * (x_adv + u * g - x_nat), lo, hi).
template <typename T, typename A, bool kWithGrad, int kVec>
__global__ void l2_apply_kernel(T* __restrict__ xa, const T* __restrict__ xn,
                                const T* __restrict__ g, int64_t packs, int64_t n, int64_t d,
                                const A* __restrict__ factors, A lo, A hi) {
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < packs;
       p += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = p * kVec / d;
    const A u = factors[i], s = factors[n + i];
    Pack<T, kVec> va = reinterpret_cast<const Pack<T, kVec>*>(xa)[p];
    const Pack<T, kVec> vn = reinterpret_cast<const Pack<T, kVec>*>(xn)[p];
    Pack<T, kVec> vg;
    if (kWithGrad) vg = reinterpret_cast<const Pack<T, kVec>*>(g)[p];
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const A x0 = to_acc(vn.v[k]);
      A v = to_acc(va.v[k]);
      if (kWithGrad) v = v + u * finite_or_zero(to_acc(vg.v[k]));
      va.v[k] = from_acc<T>(clamp(x0 + s * (v - x0), lo, hi));
    }
    reinterpret_cast<Pack<T, kVec>*>(xa)[p] = va;
  }
}

// ---- host launchers -------------------------------------------------------------------------

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

inline unsigned grid_for(int64_t work) {
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  return unsigned(blocks < 1 ? 1 : (blocks > kMaxBlocks ? kMaxBlocks : blocks));
}

// Picks 16-byte packs when every sample boundary and pointer allows, else one element per thread.
template <typename T, typename Launch>
cudaError_t with_pack_width(int64_t d, const void* a, const void* b, const void* c, Launch launch) {
  constexpr int kWide = 16 / sizeof(T);
  if (d % kWide == 0 && aligned16(a) && aligned16(b) && (c == nullptr || aligned16(c)))
    launch(std::integral_constant<int, kWide>());
  else
    launch(std::integral_constant<int, 1>());
  return cudaGetLastError();
}

template <typename T, typename A>
cudaError_t linf_step(T* xa, const T* xn, const T* g, int64_t n, int64_t d, PerSample<A> alpha,
                      PerSample<A> eps, A lo, A hi, cudaStream_t stream) {
  return with_pack_width<T>(d, xa, xn, g, [&](auto vec) {
    constexpr int kVec = decltype(vec)::value;
    const int64_t packs = n * d / kVec;
    linf_step_kernel<T, A, kVec>
        <<<grid_for(packs), kThreads, 0, stream>>>(xa, xn, g, packs, d, alpha, eps, lo, hi);
  });
}

template <typename T, typename A>
cudaError_t linf_project(T* xa, const T* xn, int64_t n, int64_t d, PerSample<A> eps, A lo, A hi,
                         cudaStream_t stream) {
  return with_pack_width<T>(d, xa, xn, nullptr, [&](auto vec) {
    constexpr int kVec = decltype(vec)::value;
    const int64_t packs = n * d / kVec;
    linf_project_kernel<T, A, kVec>
        <<<grid_for(packs), kThreads, 0, stream>>>(xa, xn, packs, d, eps, lo, hi);
  });
}

// Scratch needed by l2(): partial sums (doubles) and per-sample factors (A), in bytes.
inline int64_t l2_chunks(int64_t d) { return (d + kChunk - 1) / kChunk; }
template <typename A>
int64_t l2_scratch_bytes(int64_t n, int64_t d) {
  return n * l2_chunks(d) * 3 * int64_t(sizeof(double)) + 2 * n * int64_t(sizeof(A));
}

// g == nullptr: l2_project_ (no step). `scratch` holds l2_scratch_bytes<A>(n, d) bytes.
template <typename T, typename A>
cudaError_t l2(T* xa, const T* xn, const T* g, int64_t n, int64_t d, PerSample<A> alpha,
               PerSample<A> eps, A lo, A hi, void* scratch, cudaStream_t stream) {
  const int64_t chunks = l2_chunks(d);
  double* partial = static_cast<double*>(scratch);
  A* factors = reinterpret_cast<A*>(partial + n * chunks * 3);
  const unsigned sum_blocks = unsigned(n * chunks), factor_blocks = grid_for(n);
  if (g) {
    l2_partial_sums_kernel<T, true>
        <<<sum_blocks, kThreads, 0, stream>>>(xa, xn, g, d, chunks, partial);
    l2_factors_kernel<A, true>
        <<<factor_blocks, kThreads, 0, stream>>>(partial, n, chunks, alpha, eps, factors);
  } else {
    l2_partial_sums_kernel<T, false>
        <<<sum_blocks, kThreads, 0, stream>>>(xa, xn, g, d, chunks, partial);
    l2_factors_kernel<A, false>
        <<<factor_blocks, kThreads, 0, stream>>>(partial, n, chunks, alpha, eps, factors);
  }
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  return with_pack_width<T>(d, xa, xn, g, [&](auto vec) {
    constexpr int kVec = decltype(vec)::value;
    const int64_t packs = n * d / kVec;
    if (g)
      l2_apply_kernel<T, A, true, kVec>
          <<<grid_for(packs), kThreads, 0, stream>>>(xa, xn, g, packs, n, d, factors, lo, hi);
    else
      l2_apply_kernel<T, A, false, kVec>
          <<<grid_for(packs), kThreads, 0, stream>>>(xa, xn, g, packs, n, d, factors, lo, hi);
  });
}

// Explicit instantiations: every kernel for every dtype is compiled by `nvcc -c` on this file.
#define RK_INSTANTIATE(T)                                                                         \
  template cudaError_t linf_step<T, Acc<T>::type>(                                                \
      T*, const T*, const T*, int64_t, int64_t, PerSample<Acc<T>::type>, PerSample<Acc<T>::type>, \
      Acc<T>::type, Acc<T>::type, cudaStream_t);                                                  \
  template cudaError_t linf_project<T, Acc<T>::type>(T*, const T*, int64_t, int64_t,              \
                                                     PerSample<Acc<T>::type>, Acc<T>::type,       \
                                                     Acc<T>::type, cudaStream_t);                 \
  template cudaError_t l2<T, Acc<T>::type>(T*, const T*, const T*, int64_t, int64_t,              \
                                           PerSample<Acc<T>::type>, PerSample<Acc<T>::type>,      \
                                           Acc<T>::type, Acc<T>::type, void*, cudaStream_t);
RK_INSTANTIATE(float)
RK_INSTANTIATE(double)
RK_INSTANTIATE(__half)
RK_INSTANTIATE(__nv_bfloat16)
#undef RK_INSTANTIATE

}  // namespace cuda
}  // namespace robustkern
