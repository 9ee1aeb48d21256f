// CPU kernels of the L1 family: l1_project_ and l1_step_. Specification: robustkern/reference.py
// (l1_project, l1_step). One task per sample (its d elements are one contiguous block).
//
// The projection's threshold lam solves f(lam) = sum_i clip(|v_i| - lam, 0, c_i) = eps, a
// piecewise-linear function with breakpoints |v_i| - c_i and |v_i|. Instead of sorting the 2d
// breakpoints (the reference), a sample-sort-style search keeps an interval (lo, hi) around lam
// and the coordinates with a breakpoint inside it. v, |v| and c are first written once to
// per-task arrays in the compute type (vectorised loops). Each round then takes the breakpoints
// of 16 pseudo-randomly chosen coordinates (all of them once at most 16 are left) as pivots,
// evaluates f at all pivots in one vectorised pass (double sums over the compute-type values),
// narrows (lo, hi) to the two neighbouring pivots around lam, and retires the coordinates whose
// contribution on the new interval is fixed (0, c_i, or |v_i| - lam) into C - K * lam with a
// branch-free compaction. The first round retires all but about 1/8 of the coordinates; when none
// is left, lam = (C - eps) / K exactly, as the reference's sorted sweep has it.
// The step's top-k |grad| is a std::nth_element over the few elements above an estimate of the
// k-th largest taken from a sample (over all elements when the estimate keeps fewer than k).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <vector>

#include "robustkern/checks.h"
#include "robustkern/cpu_loops.h"

namespace robustkern {
namespace {

constexpr int64_t kGrain = 1 << 15;  // elements per task: below this, threads cost more than save
constexpr int kLanes = 8;            // double partial sums: element j goes to lane j % kLanes
constexpr int kPivots = 16;          // pivots per round of the threshold search
constexpr int kGroup = 4;            // pivots evaluated together (independent add chains)

// Room in the box for a move of sign `v` from x0 (0 when x0 is already beyond that bound).
template <typename A>
inline A room(A v, A x0, A lo, A hi) {
  return max_of(v >= A(0) ? hi - x0 : x0 - lo, A(0));
}

struct Lcg {  // the pivots' and samples' pseudo-random choice; results do not depend on it
  uint64_t state = 0x9E3779B97F4A7C15ull;
  uint64_t below(uint64_t m) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return (state >> 33) % m;
  }
};

// Vectors of kLanes values (GCC/Clang vector extensions) for the reductions in double: element
// j goes to lane j % kLanes and the lanes are added in order, so a sum does not depend on the
// instruction set picked at load time. (Written as arrays of lanes, GCC 12 left these loops
// scalar: without -ffast-math it does not reassociate a reduction itself.) The per-task arrays are
// padded to a multiple of kLanes with mag = cap = 0, which adds 0 to every sum below.
template <typename A>
struct Lanes;
template <>
struct Lanes<float> {
  typedef float type __attribute__((vector_size(kLanes * sizeof(float))));
};
template <>
struct Lanes<int32_t> {
  typedef int32_t type __attribute__((vector_size(kLanes * sizeof(int32_t))));
};
template <>
struct Lanes<double> {
  typedef double type __attribute__((vector_size(kLanes * sizeof(double))));
};
using VecD = Lanes<double>::type;

inline int64_t padded(int64_t m) { return (m + kLanes - 1) / kLanes * kLanes; }

template <typename A>
inline void load_double(const A* p, VecD& out) {
  typename Lanes<A>::type v;
  std::memcpy(&v, p, sizeof v);
  out = __builtin_convertvector(v, VecD);
}

inline double lane_sum(const VecD& v) {
  double s = 0.0;
  for (int k = 0; k < kLanes; ++k) s += v[k];
  return s;
}

// mag = |v| and cap = room in v's direction over [0, d).
template <typename T, typename A>
RK_SIMD_CLONES void l1_magnitudes(const A* __restrict v, const T* __restrict xn, int64_t d, A lo,
                                  A hi, A* __restrict mag, A* __restrict cap) {
  for (int64_t j = 0; j < d; ++j) {
    const A vj = v[j];
    mag[j] = std::fabs(vj);
    cap[j] = room(vj, static_cast<A>(xn[j]), lo, hi);
  }
}

// f(0) = sum min(mag, cap) and the largest mag, over the padded arrays.
template <typename A>
RK_SIMD_CLONES std::pair<double, double> l1_start(const A* __restrict mag, const A* __restrict cap,
                                                  int64_t m) {
  VecD f0 = {}, top = {};
  for (int64_t j = 0; j < m; j += kLanes) {
    VecD mj, cj;
    load_double(mag + j, mj);
    load_double(cap + j, cj);
    f0 += cj < mj ? cj : mj;
    top = top < mj ? mj : top;
  }
  double most = 0.0;
  for (int k = 0; k < kLanes; ++k) most = std::max(most, top[k]);
  return {lane_sum(f0), most};
}

// out[p] = sum_j clip(mag_j - piv[p], 0, cap_j) over the padded arrays, kGroup pivots at a time
// (independent add chains).
template <typename A>
RK_SIMD_CLONES void l1_sums_at(const A* __restrict mag, const A* __restrict cap, int64_t m,
                               const double* piv, int np, double* out) {
  const VecD zero = {};
  for (int p0 = 0; p0 < np; p0 += kGroup) {
    VecD acc[kGroup] = {}, t[kGroup];
    for (int g = 0; g < kGroup; ++g) t[g] = zero + piv[std::min(p0 + g, np - 1)];
    for (int64_t j = 0; j < m; j += kLanes) {
      VecD mj, cj;
      load_double(mag + j, mj);
      load_double(cap + j, cj);
      for (int g = 0; g < kGroup; ++g) {
        const VecD over = mj - t[g], pos = over < zero ? zero : over;
        acc[g] += cj < pos ? cj : pos;
      }
    }
    for (int g = 0; g < kGroup && p0 + g < np; ++g) out[p0 + g] = lane_sum(acc[g]);
  }
}

// Narrows the search to (lo, hi). Adds the contributions there of the coordinates that retire:
// c_i where saturated (|v_i| - c_i >= hi), |v_i| - lam where active throughout (|v_i| - c_i <= lo
// and |v_i| >= hi: constant += |v_i|, slope += 1); either implies |v_i| > lo and c_i > 0 (or
// c_i = 0, adding 0). Sets live[j] to 1 for the others with a breakpoint inside (lo, hi), else 0.
// Each ?: tests one comparison against broadcast bounds: masks combined with & (or compared with
// scalars) were lowered lane by lane in GCC 12's target_clones, at several times the cost.
template <typename A>
RK_SIMD_CLONES void l1_retire(const A* __restrict mag, const A* __restrict cap, int64_t m,
                              double lo, double hi, double& constant, double& slope,
                              int32_t* __restrict live) {
  const VecD zero = {}, one = zero + 1.0, four = zero + 4.0, lo_v = zero + lo, hi_v = zero + hi;
  VecD c_acc = {}, s_acc = {};
  for (int64_t j = 0; j < m; j += kLanes) {
    VecD mj, cj;
    load_double(mag + j, mj);
    load_double(cap + j, cj);
    const VecD enter = mj - cj, past = enter - lo_v, short_of = hi_v - mj;
    const VecD worst = past < short_of ? short_of : past;  // <= 0: active throughout
    c_acc += (enter >= hi_v ? cj : zero) + (worst <= zero ? mj : zero);
    s_acc += worst <= zero ? one : zero;
    const VecD tests = (mj > lo_v ? one : zero) + (cj > zero ? one : zero) +
                       (enter < hi_v ? one : zero) + (worst > zero ? one : zero);
    const VecD keep = tests == four ? one : zero;
    const auto flags = __builtin_convertvector(keep, Lanes<int32_t>::type);
    std::memcpy(live + j, &flags, sizeof flags);
  }
  constant += lane_sum(c_acc);
  slope += lane_sum(s_acc);
}

// Moves the coordinates with live[j] = 1 to the front (in order, branch-free: every element is
// written, the count advances by the flag) and pads them with zeros; out may be in.
template <typename A>
int64_t l1_compact(const A* mag, const A* cap, const int32_t* live, int64_t m, A* out_mag,
                   A* out_cap) {
  int64_t kept = 0;
  for (int64_t j = 0; j < m; ++j) {
    out_mag[kept] = mag[j];
    out_cap[kept] = cap[j];
    kept += live[j];
  }
  std::fill(out_mag + kept, out_mag + padded(kept), A(0));
  std::fill(out_cap + kept, out_cap + padded(kept), A(0));
  return kept;
}

// Scratch buffers of one task, reused over its samples.
template <typename A>
struct Scratch {
  std::vector<A> v, mag, cap;         // per coordinate: the move, |move|, room in its direction
  std::vector<A> live_mag, live_cap;  // the coordinates still inside the threshold search
  std::vector<int32_t> live;          // 1 where a coordinate stays in the search
  std::vector<A> grad_mag, candidates;
  explicit Scratch(int64_t d)
      : v(d),
        mag(padded(d)),
        cap(padded(d)),
        live_mag(padded(d)),
        live_cap(padded(d)),
        live(padded(d)),
        grad_mag(d),
        candidates(d) {}
};

// lam >= 0, the smallest threshold with f(lam) <= eps, given f(0) > eps >= f(hi).
template <typename A>
double l1_threshold(Scratch<A>& s, int64_t d, double hi, double eps) {
  double lo = 0.0, constant = 0.0, slope = 0.0;  // retired: constant - slope * lam on (lo, hi)
  const A *mag = s.mag.data(), *cap = s.cap.data();
  int64_t m = d;
  Lcg rng;
  double piv[2 * kPivots], f[2 * kPivots];
  while (m > 0) {
    int np = 0;
    auto add = [&](int64_t j) {  // j's breakpoints inside (lo, hi): mag - cap, then mag
      const double mj = static_cast<double>(mag[j]), enter = mj - static_cast<double>(cap[j]);
      if (enter > lo && enter < hi) piv[np++] = enter;
      if (mj > lo && mj < hi) piv[np++] = mj;
    };
    if (m <= kPivots) {
      for (int64_t j = 0; j < m; ++j) add(j);  // then no breakpoint is left inside
    } else {
      for (int t = 0; t < kPivots && np < kPivots; ++t) add(rng.below(m));
    }
    std::sort(piv, piv + np);
    l1_sums_at(mag, cap, padded(m), piv, np, f);
    for (int p = 0; p < np; ++p) {
      if (constant - slope * piv[p] + f[p] > eps) {
        lo = piv[p];
      } else {
        hi = piv[p];
        break;
      }
    }
    l1_retire(mag, cap, padded(m), lo, hi, constant, slope, s.live.data());
    m = l1_compact(mag, cap, s.live.data(), m, s.live_mag.data(), s.live_cap.data());
    mag = s.live_mag.data();
    cap = s.live_cap.data();
  }
  if (slope == 0.0) return hi;
  return std::min(std::max((constant - eps) / slope, lo), hi);
}

template <typename T, typename A>
RK_SIMD_CLONES void l1_apply(T* __restrict xa, const T* __restrict xn, const A* __restrict v,
                             const A* __restrict mag, const A* __restrict cap, int64_t d, A lam,
                             A lo, A hi) {
  for (int64_t j = 0; j < d; ++j) {
    const A moved = min_of(max_of(mag[j] - lam, A(0)), cap[j]);
    xa[j] =
        static_cast<T>(min_of(max_of(static_cast<A>(xn[j]) + std::copysign(moved, v[j]), lo), hi));
  }
}

template <typename T, typename A>
RK_SIMD_CLONES void l1_clip(T* __restrict xa, const T* __restrict xn, int64_t d, A lo, A hi) {
  for (int64_t j = 0; j < d; ++j)
    xa[j] = static_cast<T>(min_of(max_of(static_cast<A>(xn[j]), lo), hi));
}

// One sample's projection of x_nat + v (v in s.v, the compute type A) onto the L1 eps-ball
// intersected with the bounds; writes the result to xa.
template <typename T, typename A>
void l1_project_sample(T* xa, const T* xn, int64_t d, double eps, A lo, A hi, Scratch<A>& s) {
  if (eps == 0.0) return l1_clip(xa, xn, d, lo, hi);
  l1_magnitudes(s.v.data(), xn, d, lo, hi, s.mag.data(), s.cap.data());
  const auto [f0, top] = l1_start(s.mag.data(), s.cap.data(), padded(d));
  A lam = A(0);
  if (std::isfinite(eps) && f0 > eps) lam = static_cast<A>(l1_threshold(s, d, top, eps));
  l1_apply(xa, xn, s.v.data(), s.mag.data(), s.cap.data(), d, lam, lo, hi);
}

// Calls fn(sample, scratch) for every sample, in parallel over samples.
template <typename A, typename Fn>
void for_each_sample(int64_t n, int64_t d, const Fn& fn) {
  const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(d, 1));
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    Scratch<A> scratch(d);
    for (int64_t i = begin; i < end; ++i) fn(i, scratch);
  });
}

template <typename T, typename A>
RK_SIMD_CLONES void l1_differences(const T* __restrict xa, const T* __restrict xn, int64_t d,
                                   A* __restrict v) {
  for (int64_t j = 0; j < d; ++j) v[j] = static_cast<A>(xa[j]) - static_cast<A>(xn[j]);
}

// |grad| where the coordinate can move in grad's sign inside the bounds, else 0.
template <typename T, typename A>
RK_SIMD_CLONES void l1_movable_mags(const T* __restrict xa, const T* __restrict g, int64_t d, A lo,
                                    A hi, A* __restrict out) {
  for (int64_t j = 0; j < d; ++j) {
    const A gj = finite_or_zero(static_cast<A>(g[j])), x = static_cast<A>(xa[j]);
    const bool movable = (gj > A(0) && x < hi) || (gj < A(0) && x > lo);
    out[j] = movable ? std::fabs(gj) : A(0);
  }
}

template <typename A>
RK_SIMD_CLONES int64_t l1_count_kept(const A* __restrict mags, int64_t d, A kth) {
  int64_t count = 0;
  for (int64_t j = 0; j < d; ++j) count += (mags[j] >= kth) & (mags[j] > A(0));
  return count;
}

// v = x_adv + size * sign(grad) on the kept coordinates - x_nat.
template <typename T, typename A>
RK_SIMD_CLONES void l1_step_moves(const T* __restrict xa, const T* __restrict xn,
                                  const T* __restrict g, const A* __restrict mags, int64_t d, A kth,
                                  A size, A* __restrict v) {
  for (int64_t j = 0; j < d; ++j) {
    const bool kept = (mags[j] >= kth) & (mags[j] > A(0));  // & not &&: no branch
    // kept implies a finite nonzero g: no finite_or_zero needed.
    const A moved =
        static_cast<A>(xa[j]) + (kept ? std::copysign(size, static_cast<A>(g[j])) : A(0));
    v[j] = moved - static_cast<A>(xn[j]);
  }
}

// The k-th largest of x[0..d). If at least k elements are >= t, the k largest all are, so
// nth_element runs on those only; t is the sample's order statistic three standard deviations
// past the expected rank of the k-th largest (all d elements when the estimate falls short).
template <typename A>
A kth_largest(const A* x, int64_t d, int64_t k, A* buf) {
  constexpr int kSample = 256;
  int64_t n = d;
  if (d > 4 * kSample) {
    A sample[kSample];
    Lcg rng;
    for (A& e : sample) e = x[rng.below(d)];
    const double r = static_cast<double>(k) * kSample / static_cast<double>(d);
    const int rank = std::min<int>(kSample - 1, static_cast<int>(r + 3.0 * std::sqrt(r) + 2.0));
    std::nth_element(sample, sample + rank, sample + kSample, std::greater<A>());
    const A t = sample[rank];
    n = 0;
    for (int64_t j = 0; j < d; ++j) {
      buf[n] = x[j];
      n += x[j] >= t;
    }
  }
  if (n < k || n == d) {
    std::copy(x, x + d, buf);
    n = d;
  }
  std::nth_element(buf, buf + (k - 1), buf + n, std::greater<A>());
  return buf[k - 1];
}

// APGD-L1's step for one sample: alpha / count on the round(sparsity * d) largest |grad| among
// the coordinates that can move in grad's sign inside the bounds (ties included), 0 elsewhere.
// Writes the moved point minus x_nat to s.v.
template <typename T, typename A>
void l1_sparse_step(const T* xa, const T* xn, const T* g, int64_t d, A alpha, A sparsity, A lo,
                    A hi, Scratch<A>& s) {
  A* mags = s.grad_mag.data();
  l1_movable_mags(xa, g, d, lo, hi, mags);
  const int64_t k = std::clamp<int64_t>(std::floor(static_cast<double>(sparsity) * d + 0.5), 1, d);
  const A kth = kth_largest(mags, d, k, s.candidates.data());
  const int64_t count = l1_count_kept(mags, d, kth);
  // alpha * (1 / count), rounded as the reference does: sign / count, then times alpha.
  const A size = count > 0 ? alpha * (A(1) / static_cast<A>(count)) : A(0);
  l1_step_moves(xa, xn, g, mags, d, kth, size, s.v.data());
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
            l1_differences(a, x0, d, scratch.v.data());
            l1_project_sample<scalar_t, A>(a, x0, d, static_cast<double>(e[i]), A(lo), A(hi),
                                           scratch);
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
            l1_sparse_step<scalar_t, A>(a, x0, gi, d, a_[i], s[i], A(lo), A(hi), scratch);
            l1_project_sample<scalar_t, A>(a, x0, d, static_cast<double>(e[i]), A(lo), A(hi),
                                           scratch);
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
