// The robustkern op library: schemas (TORCH_LIBRARY) and the tiny pybind11 module `_C`.
// Kernels register per device in csrc/cpu/*.cpp and csrc/cuda/*.cu; device-generic ops (built
// from ATen's GEMM) in csrc/*.cpp.
#include <ATen/Parallel.h>
#include <pybind11/pybind11.h>
#include <torch/library.h>

TORCH_LIBRARY(robustkern, m) {
  // Projected gradient steps, in place on x_adv. alpha/eps: the float, or one value per sample
  // when the *_per_sample tensor (1-D, length N) is given. Non-finite grad entries count as 0.
  m.def(
      "linf_step_(Tensor(a!) x_adv, Tensor x_nat, Tensor grad, float alpha, float eps, "
      "Tensor? alpha_per_sample, Tensor? eps_per_sample, float lo, float hi) -> ()");
  m.def(
      "l2_step_(Tensor(a!) x_adv, Tensor x_nat, Tensor grad, float alpha, float eps, "
      "Tensor? alpha_per_sample, Tensor? eps_per_sample, float lo, float hi) -> ()");
  m.def(
      "linf_project_(Tensor(a!) x_adv, Tensor x_nat, float eps, Tensor? eps_per_sample, "
      "float lo, float hi) -> ()");
  m.def(
      "l2_project_(Tensor(a!) x_adv, Tensor x_nat, float eps, Tensor? eps_per_sample, "
      "float lo, float hi) -> ()");
  // L1 family: the exact projection onto the L1 eps-ball around x_nat intersected with the box
  // [lo, hi] (Croce & Hein 2021), and APGD-L1's sparse step (sign(grad) on the round(sparsity * d)
  // largest |grad| that can still move inside the box, L1 length alpha) followed by it.
  m.def(
      "l1_project_(Tensor(a!) x_adv, Tensor x_nat, float eps, Tensor? eps_per_sample, "
      "float lo, float hi) -> ()");
  m.def(
      "l1_step_(Tensor(a!) x_adv, Tensor x_nat, Tensor grad, float alpha, float eps, "
      "Tensor? alpha_per_sample, Tensor? eps_per_sample, float lo, float hi, float sparsity, "
      "Tensor? sparsity_per_sample) -> ()");
  // Per-frequency largest singular values of (B) conv layers on the fft_size torus, max over
  // groups, on the rfft2 half-grid (B, fft_size / stride with the last dim halved), and their max
  // (B). method 'gram': certified upper bounds; 'exact': eigenvalues. Computed and returned in
  // float64 for float64 weights, float32 otherwise. See csrc/spectral.cpp.
  m.def(
      "conv_singular_values(Tensor weight, int[2] fft_size, int[2] stride, int[2] dilation, "
      "int groups, str method, int max_iters, float tol, bool prune) -> (Tensor, Tensor)");
  // Fourier-basis perturbations (Yin et al. 2019): out[f, n, c] = clip(x[n, c] + eps *
  // signs[f, n, c] * U(freqs[f]), lo, hi), (F, N, C, H, W) in x's dtype, with U(i, j) the real,
  // unit-L2-norm basis image of frequency (i, j) (convention: robustkern/fourier_basis.h),
  // synthesised on the fly. freqs: int64 (F, 2); signs: (F, N, C) or None for all +1.
  m.def(
      "fourier_perturb(Tensor x, Tensor freqs, float eps, Tensor? signs, float lo, float hi) "
      "-> Tensor");
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "robustkern's compiled ops (registered as torch.ops.robustkern.*)";
  m.def("compiled_with_cuda", [] {
#ifdef ROBUSTKERN_WITH_CUDA
    return true;
#else
    return false;
#endif
  });
  // at::parallel_for only uses torch's intra-op threads when this module was compiled with them.
  m.def("intra_op_parallel", [] {
#ifdef INTRA_OP_PARALLEL
    return true;
#else
    return false;
#endif
  });
}
