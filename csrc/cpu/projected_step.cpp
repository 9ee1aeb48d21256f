// CPU kernels of the projected-step family: linf_step_, l2_step_, linf_project_, l2_project_.
// Specification: robustkern/reference.py. Each sample is a contiguous block of d elements (see
// on_sample_blocks); work is split over the flat element range, so any N x d shape parallelises.
// Inner loops are plain loops that GCC/Clang auto-vectorise, cloned for AVX-512/AVX2/baseline and
// picked at load time. L2 reductions use fixed chunks summed in a fixed order: the result does
// not depend on the number of threads.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "robustkern/checks.h"
#include "robustkern/cpu_loops.h"

namespace robustkern {
namespace {

constexpr int64_t kGrain =
    1 << 15;  // elements per task: below this, threads cost more than they save
constexpr int64_t kChunk = 1 << 14;  // elements per partial sum in the L2 reductions

// alpha * sign(g), and 0 where g is 0, NaN or +-inf: two compares on |g| (both false for NaN),
// one copysign and one select, a handful of vector instructions per element (a chain of nested
// selects compiled to mask shuffling through scalar registers: the op took 1.5x as long).
template <typename A>
inline A finite_sign_step(A g, A alpha) {
  const A mag = std::fabs(g);
  return mag > A(0) && mag <= std::numeric_limits<A>::max() ? std::copysign(alpha, g) : A(0);
}

template <typename T, typename A>
RK_SIMD_CLONES void linf_step_span(T* __restrict xa, const T* __restrict xn, const T* __restrict g,
                                   int64_t len, A alpha, A eps, A lo, A hi) {
  for (int64_t j = 0; j < len; ++j) {
    const A x0 = static_cast<A>(xn[j]);
    A v = static_cast<A>(xa[j]) + finite_sign_step(static_cast<A>(g[j]), alpha);
    v = min_of(max_of(v, x0 - eps), x0 + eps);
    xa[j] = static_cast<T>(min_of(max_of(v, lo), hi));
  }
}

template <typename T, typename A>
RK_SIMD_CLONES void linf_project_span(T* __restrict xa, const T* __restrict xn, int64_t len, A eps,
                                      A lo, A hi) {
  for (int64_t j = 0; j < len; ++j) {
    const A x0 = static_cast<A>(xn[j]);
    const A v = min_of(max_of(static_cast<A>(xa[j]), x0 - eps), x0 + eps);
    xa[j] = static_cast<T>(min_of(max_of(v, lo), hi));
  }
}

// Sums over one span, in double: out[0] += |d|^2, and with a gradient out[1] += |g|^2,
// out[2] += <d, g>, where d = x_adv - x_nat. Element j goes to lane j % 8 and the lanes are added
// in order, so the result does not depend on the vector width. Each block of eight is copied to
// local arrays first: GCC then loads it as one vector (indexing the inputs directly, it gathered
// lane by lane: l2_step_ took 1.5x as long). kFiltered drops non-finite gradient entries; it is
// only needed for the rare sample whose unfiltered |g|^2 is not finite, so the common path stays
// branch-free.
template <typename T, bool kWithGrad, bool kFiltered = false>
RK_SIMD_CLONES void l2_sums_span(const T* __restrict xa, const T* __restrict xn,
                                 const T* __restrict g, int64_t len, double* out) {
  constexpr int kLanes = 8;
  double dd[kLanes] = {}, gg[kLanes] = {}, dg[kLanes] = {};
  auto add = [&](int k, T a, T n, T gt) {
    const double d = static_cast<double>(a) - static_cast<double>(n);
    dd[k] += d * d;
    if constexpr (kWithGrad) {
      double gv = static_cast<double>(gt);
      if constexpr (kFiltered) gv = finite_or_zero(gv);
      gg[k] += gv * gv;
      dg[k] += d * gv;
    }
  };
  T a[kLanes], n[kLanes], gb[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= len; j += kLanes) {
    std::memcpy(a, xa + j, sizeof a);
    std::memcpy(n, xn + j, sizeof n);
    if constexpr (kWithGrad) std::memcpy(gb, g + j, sizeof gb);
    for (int k = 0; k < kLanes; ++k) add(k, a[k], n[k], gb[k]);
  }
  for (int k = 0; j + k < len; ++k) add(k, xa[j + k], xn[j + k], kWithGrad ? g[j + k] : T(0));
  for (int k = 0; k < kLanes; ++k) {
    out[0] += dd[k];
    if constexpr (kWithGrad) {
      out[1] += gg[k];
      out[2] += dg[k];
    }
  }
}

// x = clamp(x_nat + p * (x_adv + u * g - x_nat), lo, hi): step u along g, shrink into the ball.
template <typename T, typename A, bool kWithGrad, bool kFiltered = false>
RK_SIMD_CLONES void l2_apply_span(T* __restrict xa, const T* __restrict xn, const T* __restrict g,
                                  int64_t len, A u, A p, A lo, A hi) {
  for (int64_t j = 0; j < len; ++j) {
    const A x0 = static_cast<A>(xn[j]);
    A v = static_cast<A>(xa[j]);
    if constexpr (kWithGrad) {
      A gv = static_cast<A>(g[j]);
      if constexpr (kFiltered) gv = finite_or_zero(gv);
      v = v + u * gv;
    }
    v = x0 + p * (v - x0);
    xa[j] = static_cast<T>(min_of(max_of(v, lo), hi));
  }
}

// Calls fn(sample, offset, len) over the n*d elements, in parallel, never crossing a sample.
template <typename Fn>
void for_each_span(int64_t n, int64_t d, const Fn& fn) {
  at::parallel_for(0, n * d, kGrain, [&](int64_t begin, int64_t end) {
    while (begin < end) {
      const int64_t i = begin / d, off = begin - i * d;
      const int64_t len = std::min(end - begin, d - off);
      fn(i, off, len);
      begin += len;
    }
  });
}

// Per-sample sums [n][3] (|d|^2, |g|^2, <d,g>): fixed chunks in parallel, added in chunk order.
// Samples whose gradient has non-finite entries are summed again without them and flagged.
template <typename T, bool kWithGrad>
std::vector<double> l2_sums(const T* xa, const T* xn, const T* g, int64_t n, int64_t d,
                            std::vector<char>& filtered) {
  const int64_t chunks = (d + kChunk - 1) / kChunk;
  std::vector<double> partial(n * chunks * 3, 0.0), sums(n * 3, 0.0);
  const int64_t grain = std::max<int64_t>(1, kGrain / std::min(d, kChunk));
  at::parallel_for(0, n * chunks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const int64_t off = (c / chunks) * d + (c % chunks) * kChunk;
      const int64_t len = std::min(kChunk, d - (c % chunks) * kChunk);
      l2_sums_span<T, kWithGrad>(xa + off, xn + off, kWithGrad ? g + off : nullptr, len,
                                 &partial[c * 3]);
    }
  });
  for (int64_t c = 0; c < n * chunks; ++c)
    for (int k = 0; k < 3; ++k) sums[(c / chunks) * 3 + k] += partial[c * 3 + k];
  if constexpr (kWithGrad) {
    for (int64_t i = 0; i < n; ++i) {
      if (std::isfinite(sums[i * 3 + 1])) continue;
      filtered[i] = 1;
      double* out = &sums[i * 3];
      out[0] = out[1] = out[2] = 0.0;
      for (int64_t off = 0; off < d; off += kChunk)  // same chunk order as above
        l2_sums_span<T, true, true>(xa + i * d + off, xn + i * d + off, g + i * d + off,
                                    std::min(kChunk, d - off), out);
    }
  }
  return sums;
}

// Shrink factor onto the ball of radius eps for a delta of squared norm nn.
inline double ball_factor(double nn, double eps) {
  const double norm = std::sqrt(std::max(nn, 0.0));
  return norm > eps ? eps / norm : 1.0;
}

void linf_step_cpu(at::Tensor x_adv, const at::Tensor& x_nat, const at::Tensor& grad, double alpha,
                   double eps, const std::optional<at::Tensor>& alpha_ps,
                   const std::optional<at::Tensor>& eps_ps, double lo, double hi) {
  constexpr const char* op = "linf_step_";
  const PerSampleTensors ps =
      check_projected_step(op, x_adv, x_nat, &grad, alpha, alpha_ps, eps, eps_ps, lo, hi);
  const at::Tensor &alpha_t = ps.alpha, &eps_t = ps.eps;
  if (x_adv.numel() == 0) return;
  on_sample_blocks(
      x_adv, x_nat, &grad, [&](at::Tensor& xa, const at::Tensor& xn, const at::Tensor& g) {
        const int64_t n = xa.size(0), d = xa.numel() / n;
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xa.scalar_type(), op, [&] {
          using A = at::opmath_type<scalar_t>;
          auto a = per_sample_view<A>(alpha_t, alpha), e = per_sample_view<A>(eps_t, eps);
          scalar_t* pa = xa.data_ptr<scalar_t>();
          const scalar_t *pn = xn.data_ptr<scalar_t>(), *pg = g.data_ptr<scalar_t>();
          for_each_span(n, d, [&](int64_t i, int64_t off, int64_t len) {
            const int64_t o = i * d + off;
            linf_step_span<scalar_t, A>(pa + o, pn + o, pg + o, len, a[i], e[i], A(lo), A(hi));
          });
        });
      });
}

void linf_project_cpu(at::Tensor x_adv, const at::Tensor& x_nat, double eps,
                      const std::optional<at::Tensor>& eps_ps, double lo, double hi) {
  constexpr const char* op = "linf_project_";
  const at::Tensor eps_t =
      check_projected_step(op, x_adv, x_nat, nullptr, 0.0, {}, eps, eps_ps, lo, hi).eps;
  if (x_adv.numel() == 0) return;
  on_sample_blocks(
      x_adv, x_nat, nullptr, [&](at::Tensor& xa, const at::Tensor& xn, const at::Tensor&) {
        const int64_t n = xa.size(0), d = xa.numel() / n;
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xa.scalar_type(), op, [&] {
          using A = at::opmath_type<scalar_t>;
          auto e = per_sample_view<A>(eps_t, eps);
          scalar_t* pa = xa.data_ptr<scalar_t>();
          const scalar_t* pn = xn.data_ptr<scalar_t>();
          for_each_span(n, d, [&](int64_t i, int64_t off, int64_t len) {
            const int64_t o = i * d + off;
            linf_project_span<scalar_t, A>(pa + o, pn + o, len, e[i], A(lo), A(hi));
          });
        });
      });
}

// Shared by l2_step_ (kWithGrad) and l2_project_: sums, per-sample factors, one apply pass.
template <bool kWithGrad>
void l2_cpu(at::Tensor& x_adv, const at::Tensor& x_nat, const at::Tensor* grad,
            const at::Tensor& alpha_t, double alpha, const at::Tensor& eps_t, double eps, double lo,
            double hi) {
  if (x_adv.numel() == 0) return;
  on_sample_blocks(
      x_adv, x_nat, grad, [&](at::Tensor& xa, const at::Tensor& xn, const at::Tensor& g) {
        const int64_t n = xa.size(0), d = xa.numel() / n;
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xa.scalar_type(), "l2_cpu", [&] {
          using A = at::opmath_type<scalar_t>;
          auto a = per_sample_view<A>(alpha_t, alpha), e = per_sample_view<A>(eps_t, eps);
          scalar_t* pa = xa.data_ptr<scalar_t>();
          const scalar_t* pn = xn.data_ptr<scalar_t>();
          const scalar_t* pg = kWithGrad ? g.data_ptr<scalar_t>() : nullptr;
          std::vector<char> filtered(n, 0);  // samples with non-finite gradient entries
          const std::vector<double> sums = l2_sums<scalar_t, kWithGrad>(pa, pn, pg, n, d, filtered);
          std::vector<A> u(n, A(0)), p(n);
          for (int64_t i = 0; i < n; ++i) {
            const double dd = sums[i * 3], gg = sums[i * 3 + 1], dg = sums[i * 3 + 2];
            double nn = dd;
            if (kWithGrad && gg > 0) {
              const double step = static_cast<double>(a[i]) / std::sqrt(gg);
              if (std::isfinite(static_cast<A>(step))) {  // a norm that underflows A moves nothing
                u[i] = static_cast<A>(step);
                nn = dd + 2 * step * dg + static_cast<double>(a[i]) * a[i];
              }
            }
            p[i] = static_cast<A>(ball_factor(nn, static_cast<double>(e[i])));
          }
          for_each_span(n, d, [&](int64_t i, int64_t off, int64_t len) {
            const int64_t o = i * d + off;
            const scalar_t* go = kWithGrad ? pg + o : nullptr;
            if (filtered[i])
              l2_apply_span<scalar_t, A, kWithGrad, true>(pa + o, pn + o, go, len, u[i], p[i],
                                                          A(lo), A(hi));
            else
              l2_apply_span<scalar_t, A, kWithGrad>(pa + o, pn + o, go, len, u[i], p[i], A(lo),
                                                    A(hi));
          });
        });
      });
}

void l2_step_cpu(at::Tensor x_adv, const at::Tensor& x_nat, const at::Tensor& grad, double alpha,
                 double eps, const std::optional<at::Tensor>& alpha_ps,
                 const std::optional<at::Tensor>& eps_ps, double lo, double hi) {
  const PerSampleTensors ps =
      check_projected_step("l2_step_", x_adv, x_nat, &grad, alpha, alpha_ps, eps, eps_ps, lo, hi);
  l2_cpu<true>(x_adv, x_nat, &grad, ps.alpha, alpha, ps.eps, eps, lo, hi);
}

void l2_project_cpu(at::Tensor x_adv, const at::Tensor& x_nat, double eps,
                    const std::optional<at::Tensor>& eps_ps, double lo, double hi) {
  const at::Tensor eps_t =
      check_projected_step("l2_project_", x_adv, x_nat, nullptr, 0.0, {}, eps, eps_ps, lo, hi).eps;
  l2_cpu<false>(x_adv, x_nat, nullptr, at::Tensor(), 0.0, eps_t, eps, lo, hi);
}

}  // namespace

TORCH_LIBRARY_IMPL(robustkern, CPU, m) {
  m.impl("linf_step_", &linf_step_cpu);
  m.impl("l2_step_", &l2_step_cpu);
  m.impl("linf_project_", &linf_project_cpu);
  m.impl("l2_project_", &l2_project_cpu);
}

}  // namespace robustkern
