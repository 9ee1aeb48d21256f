// Argument checks shared by the CPU and CUDA implementations of every op.
// Each failure names the argument and what was expected.
#pragma once

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>

#include <cmath>
#include <optional>
#include <string>

namespace robustkern {

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// x_adv (written in place), x_nat and, for step ops, grad: one shape, dtype and device.
inline void check_step_tensors(const at::Tensor& x_adv, const at::Tensor& x_nat,
                               const at::Tensor* grad, const char* op) {
  TORCH_CHECK(is_supported_float(x_adv.scalar_type()), op,
              ": x_adv must be float16, bfloat16, float32 or float64, got ", x_adv.scalar_type());
  TORCH_CHECK(x_adv.dim() >= 1, op, ": x_adv must have a batch dimension (N, ...), got a scalar");
  auto same = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.scalar_type() == x_adv.scalar_type(), op, ": ", name, " must have x_adv's dtype ",
                x_adv.scalar_type(), ", got ", t.scalar_type());
    TORCH_CHECK(t.device() == x_adv.device(), op, ": ", name, " must be on x_adv's device ",
                x_adv.device(), ", got ", t.device());
    TORCH_CHECK(t.sizes() == x_adv.sizes(), op, ": ", name, " must have x_adv's shape ",
                x_adv.sizes(), ", got ", t.sizes());
  };
  same(x_nat, "x_nat");
  if (grad) same(*grad, "grad");
  TORCH_CHECK(at::has_internal_overlap(x_adv) != at::MemOverlap::Yes, op,
              ": x_adv is written in place and must not have overlapping memory (e.g. an expand)");
}

inline void check_bounds(double lo, double hi, const char* op) {
  TORCH_CHECK(!std::isnan(lo) && !std::isnan(hi), op, ": bounds must not be NaN, got (", lo, ", ",
              hi, ")");
  TORCH_CHECK(lo <= hi, op, ": bounds=(lo, hi) needs lo <= hi, got (", lo, ", ", hi, ")");
}

// A scalar step size or radius: >= 0; eps may be +inf (no projection), alpha must be finite.
inline void check_scalar(double v, const char* name, bool allow_inf, const char* op) {
  TORCH_CHECK(!std::isnan(v) && v >= 0 && (allow_inf || std::isfinite(v)), op, ": ", name,
              " must be ", allow_inf ? ">= 0 (inf allowed)" : "finite and >= 0", ", got ", v);
}

// A per-sample value (alpha or eps) given as a tensor: 1-D of length N on x's device. Returns it
// contiguous in `acc` (the compute type). Values are checked here only on the CPU; a CUDA check
// would synchronise with the host, so robustkern.ops checks CUDA values asynchronously.
inline at::Tensor per_sample(const std::optional<at::Tensor>& t, const char* name,
                             const at::Tensor& x, at::ScalarType acc, bool allow_inf,
                             const char* op) {
  if (!t.has_value()) return at::Tensor();
  TORCH_CHECK(t->dim() == 1 && t->size(0) == x.size(0), op, ": per-sample ", name,
              " must be a 1-D tensor of length N=", x.size(0), ", got shape ", t->sizes());
  TORCH_CHECK(at::isFloatingType(t->scalar_type()), op, ": per-sample ", name,
              " must be a floating tensor, got ", t->scalar_type());
  TORCH_CHECK(t->device() == x.device(), op, ": per-sample ", name, " must be on ", x.device(),
              ", got ", t->device());
  at::Tensor v = t->to(acc).contiguous();
  if (v.is_cpu() && v.numel() > 0) {
    const bool bad = allow_inf ? (v.isnan() | (v < 0)).any().item<bool>()
                               : (~v.isfinite() | (v < 0)).any().item<bool>();
    TORCH_CHECK(!bad, op, ": every per-sample ", name, " must be ",
                allow_inf ? ">= 0 (inf allowed)" : "finite and >= 0");
  }
  return v;
}

inline at::ScalarType acc_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

struct PerSampleTensors {
  at::Tensor alpha, eps;  // in the compute type; undefined where the scalar applies
};

// Every check of a projected-step op (grad == nullptr for the projections, which have no alpha).
inline PerSampleTensors check_projected_step(const char* op, const at::Tensor& x_adv,
                                             const at::Tensor& x_nat, const at::Tensor* grad,
                                             double alpha,
                                             const std::optional<at::Tensor>& alpha_ps, double eps,
                                             const std::optional<at::Tensor>& eps_ps, double lo,
                                             double hi) {
  check_step_tensors(x_adv, x_nat, grad, op);
  if (grad) check_scalar(alpha, "alpha", false, op);
  check_scalar(eps, "eps", true, op);
  check_bounds(lo, hi, op);
  const at::ScalarType acc = acc_type(x_adv);
  return {grad ? per_sample(alpha_ps, "alpha", x_adv, acc, false, op) : at::Tensor(),
          per_sample(eps_ps, "eps", x_adv, acc, true, op)};
}

// l1_step_'s sparsity: the fraction of coordinates moved, in (0, 1], or one value per sample.
inline at::Tensor check_sparsity(const char* op, const at::Tensor& x_adv, double sparsity,
                                 const std::optional<at::Tensor>& sparsity_ps) {
  TORCH_CHECK(sparsity_ps.has_value() || (sparsity > 0 && sparsity <= 1), op,
              ": sparsity must be in (0, 1], got ", sparsity);
  at::Tensor v = per_sample(sparsity_ps, "sparsity", x_adv, acc_type(x_adv), false, op);
  if (v.defined() && v.is_cpu() && v.numel() > 0)
    TORCH_CHECK(((v > 0) & (v <= 1)).all().item<bool>(), op,
                ": every per-sample sparsity must be in (0, 1]");
  return v;
}

// True when the three tensors share strides and each sample is one contiguous block of memory
// (contiguous and channels_last NCHW both qualify): the kernels then walk raw memory.
inline bool sample_blocks(const at::Tensor& a, const at::Tensor& b, const at::Tensor* c) {
  if (!a.is_non_overlapping_and_dense()) return false;
  if (a.strides() != b.strides() || (c && a.strides() != c->strides())) return false;
  const int64_t n = a.size(0);
  return n <= 1 || a.stride(0) * n == a.numel();
}

}  // namespace robustkern

namespace robustkern {

// Runs kernel(xa, xn, g) on tensors laid out as sample blocks with x_adv's strides. When x_adv
// itself is not (e.g. a strided slice), the work runs on a contiguous copy that is copied back;
// x_nat and grad are copied only when their strides differ from x_adv's.
template <typename Kernel>
void on_sample_blocks(at::Tensor& x_adv, const at::Tensor& x_nat, const at::Tensor* grad,
                      Kernel kernel) {
  const at::Tensor g = grad ? *grad : at::Tensor();
  if (sample_blocks(x_adv, x_nat, grad)) return kernel(x_adv, x_nat, g);
  at::Tensor xa = sample_blocks(x_adv, x_adv, nullptr) ? x_adv : x_adv.contiguous();
  auto like_xa = [&](const at::Tensor& t) {
    return t.strides() == xa.strides() ? t : at::empty_like(xa).copy_(t);
  };
  kernel(xa, like_xa(x_nat), grad ? like_xa(g) : g);
  if (!xa.is_same(x_adv)) x_adv.copy_(xa);
}

}  // namespace robustkern
