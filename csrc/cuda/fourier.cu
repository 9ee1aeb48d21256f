// CUDA implementation of fourier_perturb: argument checks, the current stream and the launch;
// the device code lives in kernels/fourier.cuh. No host synchronisation.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "kernels/fourier.cuh"
#include "native.h"
#include "robustkern/fourier.h"

namespace robustkern {
namespace {

cuda::ImageStrides image_strides(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

at::Tensor fourier_perturb_cuda(const at::Tensor& x, const at::Tensor& freqs, double eps,
                                const std::optional<at::Tensor>& signs, double lo, double hi) {
  const at::Tensor s = check_fourier_perturb(x, freqs, eps, signs, lo, hi);
  at::Tensor out = fourier_output(x, freqs.size(0));
  if (out.numel() == 0) return out;
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor fq = freqs.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "fourier_perturb", [&] {
        using A = at::opmath_type<scalar_t>;
        C10_CUDA_CHECK(cuda::fourier_perturb(
            raw<scalar_t>(out), raw<scalar_t>(x), fq.data_ptr<int64_t>(),
            s.defined() ? s.data_ptr<A>() : nullptr, out.size(0), x.size(0), x.size(1), x.size(2),
            x.size(3), image_strides(x), image_strides(out[0]), out.stride(0), A(eps), A(lo), A(hi),
            c10::cuda::getCurrentCUDAStream()));
      });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(robustkern, CUDA, m) { m.impl("fourier_perturb", &fourier_perturb_cuda); }

}  // namespace robustkern
