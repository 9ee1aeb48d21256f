// CPU kernel of fourier_perturb: out[f, n, c] = clip(x[n, c] + eps * signs[f, n, c] * U(freqs[f])).
// Specification: robustkern/reference.py; the basis convention: robustkern/fourier_basis.h.
// Work is split over (frequency, image) pairs; each thread synthesises the basis image of its
// current frequency once into a small buffer (H*W values, cache-resident) and reuses it for every
// image and channel, so no basis bank is ever materialised.
#include "robustkern/fourier.h"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "robustkern/cpu_loops.h"
#include "robustkern/fourier_basis.h"

namespace robustkern {
namespace {

constexpr int64_t kGrain = 1 << 15;  // output elements per task

template <typename A>
void fill_basis(std::vector<A>& basis, const Frequency& f, int64_t h, int64_t w) {
  const double scale = (f.self_conjugate(h, w) ? 1.0 : std::sqrt(2.0)) / std::sqrt(double(h * w));
  const double radians_per_phase = 2.0 * M_PI / double(h * w);
  for (int64_t u = 0; u < h; ++u)
    for (int64_t v = 0; v < w; ++v)
      basis[u * w + v] =
          static_cast<A>(scale * std::cos(radians_per_phase * basis_phase(f, u, v, h, w)));
}

// One image plane, rows contiguous in x and out.
template <typename T, typename A>
RK_SIMD_CLONES void perturb_plane(T* __restrict out, const T* __restrict x,
                                  const A* __restrict basis, int64_t len, A e, A lo, A hi) {
  for (int64_t p = 0; p < len; ++p)
    out[p] = static_cast<T>(min_of(max_of(static_cast<A>(x[p]) + e * basis[p], lo), hi));
}

struct Strides4 {
  int64_t n, c, h, w;
};
Strides4 strides4(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

template <typename T>
void fourier_perturb_typed(const at::Tensor& x, const at::Tensor& freqs, double eps,
                           const at::Tensor& signs, double lo, double hi, at::Tensor& out) {
  using A = at::opmath_type<T>;
  const int64_t f_count = out.size(0), n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const Strides4 xs = strides4(x), os = strides4(out[0]);
  const int64_t out_f_stride = out.stride(0);
  // Each (n, c) plane is h*w contiguous values in both x and out: one vectorised pass per plane.
  const bool planar = xs.w == 1 && xs.h == w && os.w == 1 && os.h == w;
  const int64_t* fq = freqs.data_ptr<int64_t>();
  const A* sg = signs.defined() ? signs.data_ptr<A>() : nullptr;
  const T* xp = x.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const int64_t grain = std::max<int64_t>(1, kGrain / (c * h * w));
  at::parallel_for(0, f_count * n, grain, [&](int64_t begin, int64_t end) {
    std::vector<A> basis(h * w), e(c);
    int64_t current = -1;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t fi = task / n, ni = task % n;
      if (fi != current) {
        fill_basis(basis, Frequency(fq[2 * fi], fq[2 * fi + 1], h, w), h, w);
        current = fi;
      }
      for (int64_t ci = 0; ci < c; ++ci)
        e[ci] = static_cast<A>(eps) * (sg ? sg[(fi * n + ni) * c + ci] : A(1));
      const T* xi = xp + ni * xs.n;
      T* oi = op + fi * out_f_stride + ni * os.n;
      if (planar) {
        for (int64_t ci = 0; ci < c; ++ci)
          perturb_plane(oi + ci * os.c, xi + ci * xs.c, basis.data(), h * w, e[ci], A(lo), A(hi));
        continue;
      }
      for (int64_t u = 0; u < h; ++u)  // any strides; channel innermost suits channels_last
        for (int64_t v = 0; v < w; ++v)
          for (int64_t ci = 0; ci < c; ++ci) {
            const A val =
                static_cast<A>(xi[ci * xs.c + u * xs.h + v * xs.w]) + e[ci] * basis[u * w + v];
            oi[ci * os.c + u * os.h + v * os.w] = static_cast<T>(min_of(max_of(val, A(lo)), A(hi)));
          }
    }
  });
}

at::Tensor fourier_perturb_cpu(const at::Tensor& x, const at::Tensor& freqs, double eps,
                               const std::optional<at::Tensor>& signs, double lo, double hi) {
  const at::Tensor s = check_fourier_perturb(x, freqs, eps, signs, lo, hi);
  at::Tensor out = fourier_output(x, freqs.size(0));
  if (out.numel() == 0) return out;
  const at::Tensor fq = freqs.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "fourier_perturb",
      [&] { fourier_perturb_typed<scalar_t>(x, fq, eps, s, lo, hi, out); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(robustkern, CPU, m) { m.impl("fourier_perturb", &fourier_perturb_cpu); }

}  // namespace robustkern
