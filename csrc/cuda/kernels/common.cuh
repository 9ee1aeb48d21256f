// Device helpers shared by the kernel families: compute types and conversions for
// float/double/__half/__nv_bfloat16, and torch.clamp semantics. CUDA runtime only, no torch.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace robustkern {
namespace cuda {

// alpha, eps or sparsity: one scalar, or one value per sample when `values` is set.
template <typename A>
struct PerSample {
  const A* values;
  A scalar;
  __device__ __forceinline__ A operator[](int64_t i) const { return values ? values[i] : scalar; }
};

// Compute ("accumulate") type: float for float/half/bfloat16, double for double.
template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T, typename A>
__device__ __forceinline__ T from_acc(A v) {
  return static_cast<T>(v);
}
template <>
__device__ __forceinline__ __half from_acc<__half, float>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16, float>(float v) {
  return __float2bfloat16_rn(v);
}

// torch.clamp semantics: a NaN value propagates.
template <typename A>
__device__ __forceinline__ A clamp(A v, A lo, A hi) {
  v = v < lo ? lo : v;
  return hi < v ? hi : v;
}
}  // namespace cuda
}  // namespace robustkern
