// CUDA device code of the L1 family (l1_project_, l1_step_), on raw pointers and the CUDA runtime
// only, so nvcc compiles it without a GPU (the explicit instantiations at the bottom).
//
// Specification: robustkern/reference.py (l1_project, l1_step). One block per sample (grid-stride
// over samples). The projection's threshold lam, the smallest lam >= 0 with
// f(lam) = sum_i clip(|v_i| - lam, 0, c_i) <= eps, is found by bisection on lam: each round is one
// pass that sums f at the midpoint and counts the breakpoints (|v_i| - c_i and |v_i|) strictly
// inside the current interval; once none is, f is linear there and lam is interpolated exactly.
// The step's k-th largest |grad| is a radix select on the bit pattern of the non-negative values
// (a counting pass per bit). Reductions add in a fixed order: results are deterministic.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common.cuh"

namespace robustkern {
namespace cuda {

constexpr int kL1Threads = 256;
constexpr int kL1MaxRounds = 160;  // bisection rounds; doubles separate any two breakpoints sooner

// Block-wide reduction with `op`, the result returned to every thread (fixed order: warps by
// shuffles, then the warp results in order).
template <typename V, typename Op>
__device__ V block_reduce(V v, Op op) {
  __shared__ V shared[kL1Threads / 32];
  for (int off = 16; off > 0; off /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, off));
  __syncthreads();  // the previous reduction's readers are done with `shared`
  if (threadIdx.x % 32 == 0) shared[threadIdx.x / 32] = v;
  __syncthreads();
  v = shared[0];
  for (int w = 1; w < kL1Threads / 32; ++w) v = op(v, shared[w]);
  return v;
}

struct Sum {
  template <typename V>
  __device__ V operator()(V a, V b) const {
    return a + b;
  }
};
struct Max {
  __device__ double operator()(double a, double b) const { return a < b ? b : a; }
};

// The non-negative value's bit pattern, monotone in the value.
__device__ __forceinline__ uint64_t order_key(float v) { return __float_as_uint(v); }
__device__ __forceinline__ uint64_t order_key(double v) {
  return static_cast<uint64_t>(__double_as_longlong(v));
}
__device__ __forceinline__ float from_key(uint64_t k, float) {
  return __uint_as_float(static_cast<unsigned>(k));
}
__device__ __forceinline__ double from_key(uint64_t k, double) {
  return __longlong_as_double(static_cast<long long>(k));
}

// |grad_j| where x_j can still move in grad's sign inside [lo, hi], else 0.
template <typename T, typename A>
__device__ __forceinline__ A movable_magnitude(const T* xa, const T* g, int64_t j, A lo, A hi) {
  A gj = to_acc(g[j]);
  gj = isfinite(gj) ? gj : A(0);
  const A x = to_acc(xa[j]);
  return (gj > A(0) && x < hi) || (gj < A(0) && x > lo) ? fabs(gj) : A(0);
}

// The k-th largest movable magnitude of one sample: bits fixed from the top while at least k
// values are >= the prefix (the sign bit is always 0).
template <typename T, typename A>
__device__ A kth_largest(const T* xa, const T* g, int64_t d, int64_t k, A lo, A hi) {
  constexpr int kBits = sizeof(A) * 8 - 1;
  uint64_t prefix = 0;
  for (int bit = kBits - 1; bit >= 0; --bit) {
    const uint64_t candidate = prefix | (uint64_t(1) << bit);
    long long count = 0;
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x)
      count += order_key(movable_magnitude(xa, g, j, lo, hi)) >= candidate;
    if (block_reduce(count, Sum()) >= k) prefix = candidate;
  }
  return from_key(prefix, A(0));
}

// Room in the box for a move of sign `v` from x0 (0 when x0 is already beyond that bound).
template <typename A>
__device__ __forceinline__ A room(A v, A x0, A lo, A hi) {
  const A r = v >= A(0) ? hi - x0 : x0 - lo;
  return r > A(0) ? r : A(0);
}

// One sample's v_j = x_adv_j (+ the sparse step) - x_nat_j, in the compute type.
template <typename T, typename A>
struct Delta {
  const T* xa;
  const T* xn;
  const T* g;  // nullptr: no step
  A size, kth, lo, hi;
  __device__ __forceinline__ A operator()(int64_t j) const {
    A x = to_acc(xa[j]);
    if (g) {
      const A m = movable_magnitude(xa, g, j, lo, hi);
      if (m >= kth && m > A(0)) x += copysign(size, to_acc(g[j]));
    }
    return x - to_acc(xn[j]);
  }
};

// f(lam) over one sample and the number of breakpoints strictly inside (lo, hi).
template <typename T, typename A>
__device__ void l1_round(const Delta<T, A>& delta, int64_t d, A blo, A bhi, double lam, double lo,
                         double hi, double& f, long long& inside) {
  double sum = 0.0;
  long long count = 0;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    const A v = delta(j);
    const double mag = fabs(double(v)), cap = double(room(v, to_acc(delta.xn[j]), blo, bhi));
    sum += fmin(fmax(mag - lam, 0.0), cap);
    if (mag > 0 && cap > 0) {
      const double enter = mag - cap;
      count += (enter > lo && enter < hi) + (mag > lo && mag < hi);
    }
  }
  f = block_reduce(sum, Sum());
  inside = block_reduce(count, Sum());
}

// lam for one sample (0 when the box clip alone is within eps).
template <typename T, typename A>
__device__ double l1_threshold(const Delta<T, A>& delta, int64_t d, double eps, A blo, A bhi) {
  double f0 = 0.0, top = 0.0;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    const A v = delta(j);
    const double mag = fabs(double(v)), cap = double(room(v, to_acc(delta.xn[j]), blo, bhi));
    f0 += fmin(mag, cap);
    if (cap > 0) top = fmax(top, mag);
  }
  f0 = block_reduce(f0, Sum());
  top = block_reduce(top, Max());
  if (!(f0 > eps)) return 0.0;
  double lo = 0.0, hi = top, f_lo = f0, f_hi = 0.0;  // f(lo) > eps >= f(hi)
  for (int round = 0; round < kL1MaxRounds; ++round) {
    const double mid = 0.5 * (lo + hi);
    if (!(mid > lo && mid < hi)) break;
    double f;
    long long inside;
    l1_round(delta, d, blo, bhi, mid, lo, hi, f, inside);
    if (inside == 0) break;  // f is linear on [lo, hi]
    if (f > eps) {
      lo = mid;
      f_lo = f;
    } else {
      hi = mid;
      f_hi = f;
    }
  }
  const double lam = lo + (f_lo - eps) * (hi - lo) / (f_lo - f_hi);
  return fmin(fmax(lam, lo), hi);
}

// g == nullptr: l1_project_; else l1_step_ (alpha, sparsity used).
template <typename T, typename A>
__global__ void l1_kernel(T* __restrict__ xa, const T* __restrict__ xn, const T* __restrict__ g,
                          int64_t n, int64_t d, PerSample<A> alpha, PerSample<A> eps,
                          PerSample<A> sparsity, A lo, A hi) {
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    T* a = xa + i * d;
    const T* x0 = xn + i * d;
    const T* gi = g ? g + i * d : nullptr;
    Delta<T, A> delta{a, x0, gi, A(0), A(0), lo, hi};
    if (gi) {
      const double k_real = floor(double(sparsity[i]) * double(d) + 0.5);  // halves up
      const int64_t k = k_real < 1 ? 1 : (k_real > double(d) ? d : int64_t(k_real));
      delta.kth = kth_largest<T, A>(a, gi, d, k, lo, hi);
      long long count = 0;
      for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
        const A m = movable_magnitude(a, gi, j, lo, hi);
        count += m >= delta.kth && m > A(0);
      }
      count = block_reduce(count, Sum());
      delta.size = count > 0 ? alpha[i] * (A(1) / A(count)) : A(0);
    }
    const double e = double(eps[i]);
    A lam = A(0);
    if (e > 0 && isfinite(e)) lam = A(l1_threshold(delta, d, e, lo, hi));
    __syncthreads();  // every thread has read this sample's x_adv before any writes it
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
      const A x = to_acc(x0[j]);
      A out = x;
      if (e > 0) {
        const A v = delta(j), mag = fabs(v), cap = room(v, x, lo, hi);
        A moved = mag - lam;
        moved = moved > A(0) ? moved : A(0);
        out = x + copysign(moved < cap ? moved : cap, v);
      }
      a[j] = from_acc<T>(clamp(out, lo, hi));
    }
    __syncthreads();  // the next sample's reductions reuse shared memory
  }
}

inline unsigned l1_grid(int64_t n) { return unsigned(n < 65535 ? n : 65535); }

template <typename T, typename A>
cudaError_t l1(T* xa, const T* xn, const T* g, int64_t n, int64_t d, PerSample<A> alpha,
               PerSample<A> eps, PerSample<A> sparsity, A lo, A hi, cudaStream_t stream) {
  l1_kernel<T, A>
      <<<l1_grid(n), kL1Threads, 0, stream>>>(xa, xn, g, n, d, alpha, eps, sparsity, lo, hi);
  return cudaGetLastError();
}

#define RK_INSTANTIATE(T)                                                                         \
  template cudaError_t l1<T, Acc<T>::type>(                                                       \
      T*, const T*, const T*, int64_t, int64_t, PerSample<Acc<T>::type>, PerSample<Acc<T>::type>, \
      PerSample<Acc<T>::type>, Acc<T>::type, Acc<T>::type, cudaStream_t);
RK_INSTANTIATE(float)
RK_INSTANTIATE(double)
RK_INSTANTIATE(__half)
RK_INSTANTIATE(__nv_bfloat16)
#undef RK_INSTANTIATE

}  // namespace cuda
}  // namespace robustkern
