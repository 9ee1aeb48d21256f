// Torch-side glue shared by the .cu files: tensors as raw pointers of CUDA's native types.
#pragma once

#include <ATen/ATen.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/common.cuh"

namespace robustkern {

// at::Half / at::BFloat16 share their bit layout with CUDA's __half / __nv_bfloat16.
template <typename T>
struct Native {
  using type = T;
};
template <>
struct Native<at::Half> {
  using type = __half;
};
template <>
struct Native<at::BFloat16> {
  using type = __nv_bfloat16;
};

template <typename T>
typename Native<T>::type* raw(const at::Tensor& t) {
  return reinterpret_cast<typename Native<T>::type*>(t.data_ptr<T>());
}

// A per-sample value for the kernels: the tensor's values (compute type A) where the op got one,
// else the scalar.
template <typename A>
cuda::PerSample<A> per_sample_view(const at::Tensor& t, double scalar) {
  return {t.defined() ? t.data_ptr<A>() : nullptr, static_cast<A>(scalar)};
}

}  // namespace robustkern
