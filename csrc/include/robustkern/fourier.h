// What the CPU and CUDA implementations of fourier_perturb share: argument checks and the
// output's allocation. Each failure names the argument and what was expected.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <optional>

#include "robustkern/checks.h"

namespace robustkern {

// Checks every argument; returns the signs in the compute type, contiguous (F, N, C), or an
// undefined tensor for "all +1".
inline at::Tensor check_fourier_perturb(const at::Tensor& x, const at::Tensor& freqs, double eps,
                                        const std::optional<at::Tensor>& signs, double lo,
                                        double hi) {
  constexpr const char* op = "fourier_perturb";
  TORCH_CHECK(is_supported_float(x.scalar_type()), op,
              ": x must be float16, bfloat16, float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(x.dim() == 4, op, ": x must be a batch of images (N, C, H, W), got shape ",
              x.sizes());
  TORCH_CHECK(x.size(2) > 0 && x.size(3) > 0, op, ": images must have H, W >= 1, got ", x.sizes());
  TORCH_CHECK(freqs.scalar_type() == at::kLong, op,
              ": freqs must be an int64 tensor of (i, j) offsets, got ", freqs.scalar_type());
  TORCH_CHECK(freqs.dim() == 2 && freqs.size(1) == 2, op, ": freqs must have shape (F, 2), got ",
              freqs.sizes());
  TORCH_CHECK(freqs.device() == x.device(), op, ": freqs must be on x's device ", x.device(),
              ", got ", freqs.device());
  TORCH_CHECK(std::isfinite(eps) && eps >= 0, op,
              ": eps (the L2 norm of the basis image) must "
              "be finite and >= 0, got ",
              eps);
  check_bounds(lo, hi, op);
  if (!signs.has_value()) return at::Tensor();
  const int64_t f = freqs.size(0), n = x.size(0), c = x.size(1);
  TORCH_CHECK(at::isFloatingType(signs->scalar_type()), op,
              ": signs must be a floating tensor, got ", signs->scalar_type());
  TORCH_CHECK(signs->device() == x.device(), op, ": signs must be on x's device ", x.device(),
              ", got ", signs->device());
  TORCH_CHECK(
      signs->dim() == 3 && signs->size(0) == f && signs->size(1) == n && signs->size(2) == c, op,
      ": signs must have shape (F, N, C) = (", f, ", ", n, ", ", c, "), got ", signs->sizes());
  return signs->to(acc_type(x)).contiguous();
}

// (F, N, C, H, W) in x's dtype; image-planar, or pixel-interleaved (F, N, H, W, C in memory) when
// x is channels_last, so `out.flatten(0, 1)` is in the memory format of x.
inline at::Tensor fourier_output(const at::Tensor& x, int64_t f) {
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const bool channels_last =
      c > 1 && x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous();
  if (!channels_last) return at::empty({f, n, c, h, w}, x.options());
  return at::empty({f, n, h, w, c}, x.options()).permute({0, 1, 4, 2, 3});
}

}  // namespace robustkern
