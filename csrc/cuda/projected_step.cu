// CUDA implementation of the projected-step family: argument checks, the current stream and the
// launch; the device code lives in kernels/projected_step.cuh. No host synchronisation.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "kernels/projected_step.cuh"
#include "native.h"
#include "robustkern/checks.h"

namespace robustkern {
namespace {

void linf_step_cuda(at::Tensor x_adv, const at::Tensor& x_nat, const at::Tensor& grad, double alpha,
                    double eps, const std::optional<at::Tensor>& alpha_ps,
                    const std::optional<at::Tensor>& eps_ps, double lo, double hi) {
  const PerSampleTensors ps =
      check_projected_step("linf_step_", x_adv, x_nat, &grad, alpha, alpha_ps, eps, eps_ps, lo, hi);
  if (x_adv.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(x_adv.device());
  on_sample_blocks(
      x_adv, x_nat, &grad, [&](at::Tensor& xa, const at::Tensor& xn, const at::Tensor& g) {
        const int64_t n = xa.size(0), d = xa.numel() / n;
        AT_DISPATCH_FLOATING_TYPES_AND2(
            at::kHalf, at::kBFloat16, xa.scalar_type(), "linf_step_", [&] {
              using A = at::opmath_type<scalar_t>;
              C10_CUDA_CHECK(cuda::linf_step(raw<scalar_t>(xa), raw<scalar_t>(xn), raw<scalar_t>(g),
                                             n, d, per_sample_view<A>(ps.alpha, alpha),
                                             per_sample_view<A>(ps.eps, eps), A(lo), A(hi),
                                             c10::cuda::getCurrentCUDAStream()));
            });
      });
}

void linf_project_cuda(at::Tensor x_adv, const at::Tensor& x_nat, double eps,
                       const std::optional<at::Tensor>& eps_ps, double lo, double hi) {
  const at::Tensor eps_t =
      check_projected_step("linf_project_", x_adv, x_nat, nullptr, 0.0, {}, eps, eps_ps, lo, hi)
          .eps;
  if (x_adv.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(x_adv.device());
  on_sample_blocks(
      x_adv, x_nat, nullptr, [&](at::Tensor& xa, const at::Tensor& xn, const at::Tensor&) {
        const int64_t n = xa.size(0), d = xa.numel() / n;
        AT_DISPATCH_FLOATING_TYPES_AND2(
            at::kHalf, at::kBFloat16, xa.scalar_type(), "linf_project_", [&] {
              using A = at::opmath_type<scalar_t>;
              C10_CUDA_CHECK(cuda::linf_project(raw<scalar_t>(xa), raw<scalar_t>(xn), n, d,
                                                per_sample_view<A>(eps_t, eps), A(lo), A(hi),
                                                c10::cuda::getCurrentCUDAStream()));
            });
      });
}

// Shared by l2_step_ (grad given) and l2_project_ (grad == nullptr).
void l2_cuda(at::Tensor& x_adv, const at::Tensor& x_nat, const at::Tensor* grad,
             const PerSampleTensors& ps, double alpha, double eps, double lo, double hi) {
  if (x_adv.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(x_adv.device());
  on_sample_blocks(
      x_adv, x_nat, grad, [&](at::Tensor& xa, const at::Tensor& xn, const at::Tensor& g) {
        const int64_t n = xa.size(0), d = xa.numel() / n;
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xa.scalar_type(), "l2_cuda", [&] {
          using A = at::opmath_type<scalar_t>;
          // Scratch from the caching allocator: stream-ordered and safe under CUDA-graph capture.
          const at::Tensor scratch =
              at::empty({cuda::l2_scratch_bytes<A>(n, d)}, xa.options().dtype(at::kByte));
          C10_CUDA_CHECK(
              cuda::l2(raw<scalar_t>(xa), raw<scalar_t>(xn), grad ? raw<scalar_t>(g) : nullptr, n,
                       d, per_sample_view<A>(ps.alpha, alpha), per_sample_view<A>(ps.eps, eps),
                       A(lo), A(hi), scratch.data_ptr(), c10::cuda::getCurrentCUDAStream()));
        });
      });
}

void l2_step_cuda(at::Tensor x_adv, const at::Tensor& x_nat, const at::Tensor& grad, double alpha,
                  double eps, const std::optional<at::Tensor>& alpha_ps,
                  const std::optional<at::Tensor>& eps_ps, double lo, double hi) {
  const PerSampleTensors ps =
      check_projected_step("l2_step_", x_adv, x_nat, &grad, alpha, alpha_ps, eps, eps_ps, lo, hi);
  l2_cuda(x_adv, x_nat, &grad, ps, alpha, eps, lo, hi);
}

void l2_project_cuda(at::Tensor x_adv, const at::Tensor& x_nat, double eps,
                     const std::optional<at::Tensor>& eps_ps, double lo, double hi) {
  const PerSampleTensors ps =
      check_projected_step("l2_project_", x_adv, x_nat, nullptr, 0.0, {}, eps, eps_ps, lo, hi);
  l2_cuda(x_adv, x_nat, nullptr, ps, 0.0, eps, lo, hi);
}

}  // namespace

TORCH_LIBRARY_IMPL(robustkern, CUDA, m) {
  m.impl("linf_step_", &linf_step_cuda);
  m.impl("l2_step_", &l2_step_cuda);
  m.impl("linf_project_", &linf_project_cuda);
  m.impl("l2_project_", &l2_project_cuda);
}

}  // namespace robustkern
