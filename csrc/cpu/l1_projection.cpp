// CPU kernels of the L1 family: l1_project_ and l1_step_. Specification: robustkern/reference.py
// (l1_project, l1_step). One task per sample (its d elements are one contiguous block).
//
// The projection's threshold lam solves f(lam) = sum_i clip(|v_i| - lam, 0, c_i) = eps, a
// piecewise-linear function with breakpoints |v_i| - c_i and |v_i|. Instead of sorting the 2d
// breakpoints (the reference), a quickselect-style search keeps an interval (lo, hi) around lam
// and the coordinates with a breakpoint inside it: each round evaluates f at the breakpoint of a
// pseudo-randomly chosen coordinate, halves the interval at it, and retires the coordinates whose
// contribution on the new interval is fixed (0, c_i, or |v_i| - lam) into C - K * lam. Expected
// work is a few passes over d; when no coordinate is left, lam = (C - eps) / K exactly.
// The step's top-k |grad| is a std::nth_element on a scratch copy (linear, no sort).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

#include "robustkern/checks.h"
#include "robustkern/cpu_loops.h"

namespace robustkern {
namespace {

constexpr int64_t kGrain = 1 << 15;  // elements per task: below this, threads cost more than save

struct Coordinate {
  double mag, cap;  // |v_i| and the room c_i left in the box in v_i's direction
};

// Room in the box for a move of sign `v` from x0 (0 when x0 is already beyond that bound).
template <typename A>
inline A room(A v, A x0, A lo, A hi) {
  return max_of(v >= A(0) ? hi - x0 : x0 - lo, A(0));
}

// lam >= 0, the smallest threshold with f(lam) <= eps, given f(0) = f0 > eps and the
// coordinates that can move (mag > 0, cap > 0); `live` is reordered.
double l1_threshold(std::vector<Coordinate>& live, double f0, double eps) {
  double lo = 0.0, hi = 0.0;  // f(lo) > eps >= f(hi)
  for (const Coordinate& c : live) hi = std::max(hi, c.mag);
  double constant = 0.0, slope = 0.0;  // retired coordinates contribute constant - slope * lam
  size_t m = live.size();
  uint64_t state = 0x9E3779B97F4A7C15ull;  // the pivot's pseudo-random choice; the result is exact
  while (m > 0) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    const Coordinate& c = live[(state >> 33) % m];
    const double enter = c.mag - c.cap;  // every live coordinate has a breakpoint in (lo, hi)
    const double pivot = enter > lo && enter < hi ? enter : c.mag;
    double f = constant - slope * pivot;
    for (size_t j = 0; j < m; ++j) f += std::min(std::max(live[j].mag - pivot, 0.0), live[j].cap);
    (f > eps ? lo : hi) = pivot;
    size_t kept = 0;
    for (size_t j = 0; j < m; ++j) {
      const Coordinate cj = live[j];
      if (cj.mag <= lo) continue;  // 0 on (lo, hi)
      if (cj.mag - cj.cap >= hi) {
        constant += cj.cap;  // saturated at c_i
      } else if (cj.mag - cj.cap <= lo && cj.mag >= hi) {
        constant += cj.mag;  // |v_i| - lam
        slope += 1.0;
      } else {
        live[kept++] = cj;
      }
    }
    m = kept;
  }
  if (slope == 0.0) return hi;
  return std::min(std::max((constant - eps) / slope, lo), hi);
}

// One sample's projection of x_nat + v (v computed by `delta(j)` in the compute type A) onto the
// L1 eps-ball intersected with the bounds; writes the result to xa.
template <typename T, typename A, typename Delta>
void l1_project_sample(T* xa, const T* xn, int64_t d, double eps, A lo, A hi, const Delta& delta,
                       std::vector<Coordinate>& live) {
  A lam = A(0);
  if (eps == 0.0) {
    for (int64_t j = 0; j < d; ++j)
      xa[j] = static_cast<T>(min_of(max_of(static_cast<A>(xn[j]), lo), hi));
    return;
  }
  if (std::isfinite(eps)) {
    live.clear();
    double f0 = 0.0;
    for (int64_t j = 0; j < d; ++j) {
      const A v = delta(j), x0 = static_cast<A>(xn[j]);
      const double mag = std::fabs(static_cast<double>(v));
      const double cap = static_cast<double>(room(v, x0, lo, hi));
      f0 += std::min(mag, cap);
      if (mag > 0 && cap > 0) live.push_back({mag, cap});
    }
    if (f0 > eps) lam = static_cast<A>(l1_threshold(live, f0, eps));
  }
  for (int64_t j = 0; j < d; ++j) {
    const A v = delta(j), x0 = static_cast<A>(xn[j]);
    const A mag = std::fabs(v), cap = room(v, x0, lo, hi);
    const A moved = min_of(max_of(mag - lam, A(0)), cap);
    xa[j] = static_cast<T>(min_of(max_of(x0 + std::copysign(moved, v), lo), hi));
  }
}

// Scratch buffers of one task, reused over its samples.
template <typename A>
struct Scratch {
  std::vector<Coordinate> live;
  std::vector<A> mags, sorted;
};

// Calls fn(sample, scratch) for every sample, in parallel over samples.
template <typename A, typename Fn>
void for_each_sample(int64_t n, int64_t d, const Fn& fn) {
  const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(d, 1));
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    Scratch<A> scratch;
    scratch.live.reserve(d);
    for (int64_t i = begin; i < end; ++i) fn(i, scratch);
  });
}

// APGD-L1's step size per coordinate for one sample: alpha / count on the round(sparsity * d)
// largest |grad| among the coordinates that can move in grad's sign inside the bounds (ties
// included), 0 elsewhere. Returns the per-coordinate size (the sign is grad's) and the threshold.
template <typename T, typename A>
std::pair<A, A> l1_sparse_step(const T* xa, const T* g, int64_t d, A alpha, A sparsity, A lo, A hi,
                               Scratch<A>& scratch) {
  std::vector<A>& mags = scratch.mags;
  mags.resize(d);
  for (int64_t j = 0; j < d; ++j) {
    const A gj = finite_or_zero(static_cast<A>(g[j])), x = static_cast<A>(xa[j]);
    const bool movable = (gj > A(0) && x < hi) || (gj < A(0) && x > lo);
    mags[j] = movable ? std::fabs(gj) : A(0);
  }
  const int64_t k = std::clamp<int64_t>(std::floor(static_cast<double>(sparsity) * d + 0.5), 1, d);
  scratch.sorted.assign(mags.begin(), mags.end());
  std::nth_element(scratch.sorted.begin(), scratch.sorted.begin() + (k - 1), scratch.sorted.end(),
                   std::greater<A>());
  const A kth = scratch.sorted[k - 1];
  int64_t count = 0;
  for (int64_t j = 0; j < d; ++j) count += mags[j] >= kth && mags[j] > A(0);
  // alpha * (1 / count), rounded as the reference does: sign / count, then times alpha.
  return {count > 0 ? alpha * (A(1) / static_cast<A>(count)) : A(0), kth};
}

void l1_project_cpu(at::Tensor x_adv, const at::Tensor& x_nat, double eps,
                    const std::optional<at::Tensor>& eps_ps, double lo, double hi) {
  constexpr const char* op = "l1_project_";
  const at::Tensor eps_t =
      check_projected_step(op, x_adv, x_nat, nullptr, 0.0, {}, eps, eps_ps, lo, hi).eps;
  if (x_adv.numel() == 0) return;
  on_sample_blocks(
      x_adv, x_nat, nullptr, [&](at::Tensor& xa, const at::Tensor& xn, const at::Tensor&) {
        const int64_t n = xa.size(0), d = xa.numel() / n;
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xa.scalar_type(), op, [&] {
          using A = at::opmath_type<scalar_t>;
          const auto e = per_sample_view<A>(eps_t, eps);
          scalar_t* pa = xa.data_ptr<scalar_t>();
          const scalar_t* pn = xn.data_ptr<scalar_t>();
          for_each_sample<A>(n, d, [&](int64_t i, Scratch<A>& scratch) {
            scalar_t* a = pa + i * d;
            const scalar_t* x0 = pn + i * d;
            auto delta = [&](int64_t j) { return static_cast<A>(a[j]) - static_cast<A>(x0[j]); };
            l1_project_sample<scalar_t, A>(a, x0, d, static_cast<double>(e[i]), A(lo), A(hi), delta,
                                           scratch.live);
          });
        });
      });
}

void l1_step_cpu(at::Tensor x_adv, const at::Tensor& x_nat, const at::Tensor& grad, double alpha,
                 double eps, const std::optional<at::Tensor>& alpha_ps,
                 const std::optional<at::Tensor>& eps_ps, double lo, double hi, double sparsity,
                 const std::optional<at::Tensor>& sparsity_ps) {
  constexpr const char* op = "l1_step_";
  const PerSampleTensors ps =
      check_projected_step(op, x_adv, x_nat, &grad, alpha, alpha_ps, eps, eps_ps, lo, hi);
  const at::Tensor sparsity_t = check_sparsity(op, x_adv, sparsity, sparsity_ps);
  if (x_adv.numel() == 0) return;
  on_sample_blocks(
      x_adv, x_nat, &grad, [&](at::Tensor& xa, const at::Tensor& xn, const at::Tensor& g) {
        const int64_t n = xa.size(0), d = xa.numel() / n;
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xa.scalar_type(), op, [&] {
          using A = at::opmath_type<scalar_t>;
          const auto a_ = per_sample_view<A>(ps.alpha, alpha), e = per_sample_view<A>(ps.eps, eps);
          const auto s = per_sample_view<A>(sparsity_t, sparsity);
          scalar_t* pa = xa.data_ptr<scalar_t>();
          const scalar_t *pn = xn.data_ptr<scalar_t>(), *pg = g.data_ptr<scalar_t>();
          for_each_sample<A>(n, d, [&](int64_t i, Scratch<A>& scratch) {
            scalar_t* a = pa + i * d;
            const scalar_t *x0 = pn + i * d, *gi = pg + i * d;
            const auto [size, kth] =
                l1_sparse_step<scalar_t, A>(a, gi, d, a_[i], s[i], A(lo), A(hi), scratch);
            const std::vector<A>& mags = scratch.mags;
            // The moved point minus x_nat, recomputed in both passes of the projection.
            auto delta = [&](int64_t j) {
              const bool kept = mags[j] >= kth && mags[j] > A(0);
              const A gj = finite_or_zero(static_cast<A>(gi[j]));
              const A moved = static_cast<A>(a[j]) + (kept ? std::copysign(size, gj) : A(0));
              return moved - static_cast<A>(x0[j]);
            };
            l1_project_sample<scalar_t, A>(a, x0, d, static_cast<double>(e[i]), A(lo), A(hi), delta,
                                           scratch.live);
          });
        });
      });
}

}  // namespace

TORCH_LIBRARY_IMPL(robustkern, CPU, m) {
  m.impl("l1_project_", &l1_project_cpu);
  m.impl("l1_step_", &l1_step_cpu);
}

}  // namespace robustkern
