// CUDA implementation of the L1 family: argument checks, the current stream and the launch; the
// device code lives in kernels/l1_projection.cuh. No host synchronisation.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "kernels/l1_projection.cuh"
#include "native.h"
#include "robustkern/checks.h"

namespace robustkern {
namespace {

// grad == nullptr: l1_project_ (alpha and sparsity unused).
void l1_cuda(at::Tensor& x_adv, const at::Tensor& x_nat, const at::Tensor* grad,
             const PerSampleTensors& ps, double alpha, double eps, const at::Tensor& sparsity_t,
             double sparsity, double lo, double hi) {
  if (x_adv.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(x_adv.device());
  on_sample_blocks(
      x_adv, x_nat, grad, [&](at::Tensor& xa, const at::Tensor& xn, const at::Tensor& g) {
        const int64_t n = xa.size(0), d = xa.numel() / n;
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xa.scalar_type(), "l1_cuda", [&] {
          using A = at::opmath_type<scalar_t>;
          C10_CUDA_CHECK(
              cuda::l1(raw<scalar_t>(xa), raw<scalar_t>(xn), grad ? raw<scalar_t>(g) : nullptr, n,
                       d, per_sample_view<A>(ps.alpha, alpha), per_sample_view<A>(ps.eps, eps),
                       per_sample_view<A>(sparsity_t, sparsity), A(lo), A(hi),
                       c10::cuda::getCurrentCUDAStream()));
        });
      });
}

void l1_project_cuda(at::Tensor x_adv, const at::Tensor& x_nat, double eps,
                     const std::optional<at::Tensor>& eps_ps, double lo, double hi) {
  const PerSampleTensors ps =
      check_projected_step("l1_project_", x_adv, x_nat, nullptr, 0.0, {}, eps, eps_ps, lo, hi);
  l1_cuda(x_adv, x_nat, nullptr, ps, 0.0, eps, at::Tensor(), 1.0, lo, hi);
}

void l1_step_cuda(at::Tensor x_adv, const at::Tensor& x_nat, const at::Tensor& grad, double alpha,
                  double eps, const std::optional<at::Tensor>& alpha_ps,
                  const std::optional<at::Tensor>& eps_ps, double lo, double hi, double sparsity,
                  const std::optional<at::Tensor>& sparsity_ps) {
  const PerSampleTensors ps =
      check_projected_step("l1_step_", x_adv, x_nat, &grad, alpha, alpha_ps, eps, eps_ps, lo, hi);
  const at::Tensor sparsity_t = check_sparsity("l1_step_", x_adv, sparsity, sparsity_ps);
  l1_cuda(x_adv, x_nat, &grad, ps, alpha, eps, sparsity_t, sparsity, lo, hi);
}

}  // namespace

TORCH_LIBRARY_IMPL(robustkern, CUDA, m) {
  m.impl("l1_project_", &l1_project_cuda);
  m.impl("l1_step_", &l1_step_cuda);
}

}  // namespace robustkern
