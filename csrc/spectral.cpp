// Largest singular value of a convolution at every frequency of its Fourier spectrum (Sedghi et
// al. 2019; strides as in Szegedy et al. 2014, section 4.3) and their maximum, the operator norm.
//
// Device-generic by design: the work is batched GEMM (the kernel's DFT at the frequencies taken is
// a matmul with a twiddle table too), which MKL and cuBLAS do better than hand-written kernels,
// so this one implementation is registered for the CPU and the CUDA dispatch keys. The
// specification is robustkern.reference.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/util/MathConstants.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <string>
#include <tuple>
#include <utility>

namespace robustkern {
namespace {

constexpr const char* kOp = "conv_singular_values";

// float32 matmuls at full precision for the op's duration: TF32 (cuBLAS) or bf16/tf32 (oneDNN)
// rounding would void the certificate. NoTF32Guard is thread-local; the oneDNN setting is global
// and only touched when the user lowered it.
class FullPrecisionMatmul {
 public:
  FullPrecisionMatmul()
      : onednn_(at::globalContext().float32Precision(at::Float32Backend::MKLDNN,
                                                     at::Float32Op::MATMUL)) {
    if (lowered()) set(at::Float32Precision::IEEE);
  }
  ~FullPrecisionMatmul() {
    if (lowered()) set(onednn_);
  }
  FullPrecisionMatmul(const FullPrecisionMatmul&) = delete;
  FullPrecisionMatmul& operator=(const FullPrecisionMatmul&) = delete;

 private:
  bool lowered() const {
    return onednn_ == at::Float32Precision::TF32 || onednn_ == at::Float32Precision::BF16;
  }
  static void set(at::Float32Precision p) {
    at::globalContext().setFloat32Precision(at::Float32Backend::MKLDNN, at::Float32Op::MATMUL, p);
  }
  at::NoTF32Guard no_tf32_;
  at::Float32Precision onednn_;
};

void check_pair(at::IntArrayRef v, const char* name) {
  TORCH_CHECK(v.size() == 2 && v[0] > 0 && v[1] > 0, kOp, ": ", name,
              " must be two positive integers, got ", v);
}

// Space-to-depth (polyphase) taps of a strided, dilated kernel: (B, C_out, C_in_g * sh * sw, th,
// tw), tap (a, b) landing in phase (a dh % sh, b dw % sw) at shift (a dh / sh, b dw / sw). A
// strided convolution on the N-torus is a stride-1 convolution of its input's phases on the
// M = N / stride torus, a unitary reshape, so both have the same singular values.
at::Tensor polyphase(const at::Tensor& w, at::IntArrayRef stride, at::IntArrayRef dilation) {
  const int64_t kh = w.size(3), kw = w.size(4), sh = stride[0], sw = stride[1];
  const int64_t th = (kh - 1) * dilation[0] / sh + 1, tw = (kw - 1) * dilation[1] / sw + 1;
  auto out = at::zeros({w.size(0), w.size(1), w.size(2), sh, sw, th, tw}, w.options());
  for (int64_t a = 0; a < kh; ++a) {
    const int64_t ph = a * dilation[0] % sh, uh = a * dilation[0] / sh;
    for (int64_t b = 0; b < kw; ++b) {
      const int64_t pw = b * dilation[1] % sw, uw = b * dilation[1] / sw;
      out.select(3, ph).select(3, pw).select(3, uh).select(3, uw).add_(w.select(3, a).select(3, b));
    }
  }
  return out.reshape({w.size(0), w.size(1), w.size(2) * sh * sw, th, tw});
}

// cos and -sin of the DFT phase 2 pi (u_h f_h / mh + u_w f_w / mw) for every frequency f of the
// (gh, fw) grid (rows) and tap shift u of a (th, tw) kernel (columns); the integer products are
// reduced mod M first, so the phases are exact.
std::pair<at::Tensor, at::Tensor> twiddles(int64_t gh, int64_t fw, int64_t mh, int64_t mw,
                                           int64_t th, int64_t tw, at::TensorOptions opts) {
  auto f64 = opts.dtype(at::kDouble);
  auto turns = [&](int64_t f, int64_t t, int64_t m) {  // (f, t): (freq * shift mod m) / m
    return at::outer(at::arange(f, f64), at::arange(t, f64)).fmod(m).div(m);
  };
  auto phase = (turns(gh, th, mh).view({gh, 1, th, 1}) + turns(fw, tw, mw).view({1, fw, 1, tw}))
                   .mul(2 * c10::pi<double>)
                   .reshape({gh * fw, th * tw});
  return {phase.cos().to(opts.dtype()), phase.sin().neg().to(opts.dtype())};
}

// A(xi) = sum_u K[u] exp(-2 pi i <u, xi / M>) for every layer, group and frequency of the rfft2
// half-grid, as U + iV with U, V of shape (P, d, c), d <= c (A^T has A's singular values). A real
// matmul with a twiddle table: the taps are few and the frequencies many, so this writes the
// matrices in the layout the Gram iteration reads, with no zero-padded FFT grid and no permute.
// (gh, fw) is the grid of frequencies taken: (mh, mw / 2 + 1), or (1, 1) for a constant spectrum.
std::pair<at::Tensor, at::Tensor> spectrum(const at::Tensor& k, int64_t mh, int64_t mw, int64_t gh,
                                           int64_t fw, int64_t groups) {
  const int64_t nb = k.size(0), th = k.size(3), tw = k.size(4);
  const int64_t rows = k.size(1) / groups, cols = k.size(2);
  auto [cos, nsin] = twiddles(gh, fw, mh, mw, th, tw, k.options());
  auto taps = k.view({nb * groups, rows, cols, th * tw}).permute({0, 3, 1, 2});
  if (rows > cols) taps = taps.transpose(2, 3);
  const int64_t d = std::min(rows, cols), c = std::max(rows, cols);
  taps = taps.reshape({nb * groups, th * tw, d * c});
  return {at::matmul(cos, taps).view({-1, d, c}), at::matmul(nsin, taps).view({-1, d, c})};
}

// Frobenius norm squared of each matrix in a (P, m, n) batch.
at::Tensor sq_norms(const at::Tensor& x) { return x.square().sum({1, 2}); }

// Rounding allowance that makes a computed Gram bound a certified one: relative 16 sqrt(d) eps.
double safety_margin(at::ScalarType t, int64_t d) {
  const double eps = t == at::kDouble ? std::numeric_limits<double>::epsilon()
                                      : std::numeric_limits<float>::epsilon();
  return 16.0 * std::sqrt(static_cast<double>(d)) * eps;
}

// Gram iteration (Delattre et al. 2023) on the Hermitian G = A A^H = X + iY with A = U + iV, kept
// as its real symmetric part X and antisymmetric part Y. As X - Y = (X + Y)^T = S^T, G^H G = G^2
// costs two real matmuls: Re(G^2) = S S^T + Q + Q^T, Im(G^2) = Q - Q^T, Q = XY.
// Each iteration rescales by the Frobenius norm (tracked in log form, so nothing overflows); after
// t iterations ||G_t||_F^(1/2^t) >= sigma_max. A lower bound comes from the Rayleigh quotient of
// G's largest column. Matrices whose upper bound falls below their layer's lower bound cannot hold
// the maximum and leave the batch (prune); the loop stops once every layer's largest upper bound
// is within tol of its lower bound. Returns the per-matrix upper bounds.
at::Tensor gram_bounds(at::Tensor u, at::Tensor v, at::Tensor x, at::Tensor y, at::Tensor layer,
                       int64_t layers, int64_t max_iters, double tol, bool prune) {
  const auto p = x.size(0);
  auto opts = x.options().dtype(at::kDouble);
  auto bound = at::empty({p}, opts);
  auto index = at::arange(p, x.options().dtype(at::kLong));
  auto log_scale = at::zeros({p}, opts);
  auto s = at::empty_like(x), q = at::empty_like(x);  // S = X + Y, Q = XY
  for (int64_t t = 1;; ++t) {
    // (P, d): squared row norms of G, which are its column norms (G is Hermitian); rows because
    // reducing over the contiguous dimension is far faster
    auto row_sq =
        at::linalg_vector_norm(x, 2, {2}).square() + at::linalg_vector_norm(y, 2, {2}).square();
    auto fro = row_sq.sum(1).to(at::kDouble).sqrt();
    auto safe = at::where(fro > 0, fro, at::ones_like(fro));
    auto ub = at::where(fro > 0, ((log_scale + safe.log()) / std::ldexp(1.0, t)).exp(),
                        at::zeros_like(fro));
    bound.index_put_({index}, ub);

    // G's largest column g = a + ib is the conjugate of its row: a = X[j, :], b = -Y[j, :]
    auto pick = row_sq.argmax(1).view({-1, 1, 1}).expand({-1, 1, x.size(2)});
    auto ab = at::cat({x.gather(1, pick), y.gather(1, pick).neg()}, 1);  // (P, 2, d)
    auto mu = at::bmm(ab, u), mv = at::bmm(ab, v);  // [a^T U; b^T U], [a^T V; b^T V], (P, 2, c)
    // A^H g = (U^T a + V^T b) + i (U^T b - V^T a)
    auto ag = ((mu.select(1, 0) + mv.select(1, 1)).square().sum(1) +
               (mu.select(1, 1) - mv.select(1, 0)).square().sum(1))
                  .to(at::kDouble);
    auto gnorm = ab.square().sum({1, 2}).to(at::kDouble);
    auto lb = at::where(gnorm > 0, (ag / gnorm).sqrt(), at::zeros_like(gnorm));
    auto lb_layer = at::zeros({layers}, opts).scatter_reduce(0, layer, lb, "amax");
    auto ub_layer = at::zeros({layers}, opts).scatter_reduce(0, layer, ub, "amax");
    if (t >= max_iters || (ub_layer <= lb_layer * (1.0 + tol)).all().item<bool>()) break;

    if (prune) {
      auto keep = (ub >= lb_layer.index_select(0, layer)).nonzero().squeeze(1);
      // Copying the survivors costs about as much as an iteration on small matrices: only
      // worth it when a good part of the batch leaves.
      if (4 * keep.size(0) <= 3 * index.size(0)) {
        u = u.index_select(0, keep), v = v.index_select(0, keep);
        x = x.index_select(0, keep), y = y.index_select(0, keep);
        layer = layer.index_select(0, keep), index = index.index_select(0, keep);
        log_scale = log_scale.index_select(0, keep), safe = safe.index_select(0, keep);
      }
    }
    // In place and in reused buffers: fresh tensors of this size cost more in page faults
    // than the arithmetic (measured on the CPU), and old X, Y are dead once S and Q exist.
    if (s.size(0) != x.size(0)) s = at::empty_like(x), q = at::empty_like(x);
    auto scale = safe.reciprocal().to(x.scalar_type()).view({-1, 1, 1});
    x.mul_(scale), y.mul_(scale);
    log_scale = 2.0 * (log_scale + safe.log());
    at::add_out(s, x, y);
    at::bmm_out(q, x, y);
    at::add_out(x, q, q.transpose(1, 2));
    at::sub_out(y, q, q.transpose(1, 2));
    x.baddbmm_(s, s.transpose(1, 2));
  }
  return bound;
}

std::tuple<at::Tensor, at::Tensor> conv_singular_values(const at::Tensor& weight,
                                                        at::IntArrayRef fft_size,
                                                        at::IntArrayRef stride,
                                                        at::IntArrayRef dilation, int64_t groups,
                                                        c10::string_view method, int64_t max_iters,
                                                        double tol, bool prune) {
  TORCH_CHECK(weight.dim() == 5, kOp,
              ": weight must be (B, C_out, C_in / groups, kh, kw), got shape ", weight.sizes());
  TORCH_CHECK(at::isFloatingType(weight.scalar_type()), kOp,
              ": weight must be a floating tensor, got ", weight.scalar_type());
  check_pair(fft_size, "fft_size");
  check_pair(stride, "stride");
  check_pair(dilation, "dilation");
  TORCH_CHECK(fft_size[0] % stride[0] == 0 && fft_size[1] % stride[1] == 0, kOp, ": fft_size ",
              fft_size, " must be a multiple of the stride ", stride);
  TORCH_CHECK(groups >= 1 && weight.size(1) % groups == 0, kOp, ": groups=", groups,
              " must be >= 1 and divide C_out=", weight.size(1));
  TORCH_CHECK(method == "gram" || method == "exact", kOp,
              ": method must be 'gram' or 'exact', got '", std::string(method), "'");
  TORCH_CHECK(max_iters >= 1, kOp, ": max_iters must be >= 1, got ", max_iters);
  TORCH_CHECK(tol >= 0, kOp, ": tol must be >= 0, got ", tol);

  const auto acc = weight.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t nb = weight.size(0), mh = fft_size[0] / stride[0], mw = fft_size[1] / stride[1];
  auto sigma = at::zeros({nb, mh, mw / 2 + 1}, weight.options().dtype(acc));
  if (weight.numel() == 0) return {sigma, sigma.amax({1, 2})};
  TORCH_CHECK(at::isfinite(weight).all().item<bool>(), kOp, ": weight has NaN or inf entries");

  FullPrecisionMatmul full_precision;
  auto k = polyphase(weight.to(acc), stride, dilation);
  // Every tap at shift 0 (1x1 or patchify kernels): the spectrum is constant, one frequency.
  const bool constant = k.size(3) == 1 && k.size(4) == 1;
  const int64_t gh = constant ? 1 : mh, fw = constant ? 1 : mw / 2 + 1;
  auto [u, v] = spectrum(k, mh, mw, gh, fw, groups);  // A = U + iV, (P, d, c)
  const int64_t d = u.size(1);

  at::Tensor bound;
  if (d == 1) {  // one row: its norm is exact
    bound = (sq_norms(u) + sq_norms(v)).to(at::kDouble).sqrt();
  } else {
    // G = A A^H = X + iY: X = U U^T + V V^T, Y = W - W^T with W = V U^T
    auto x = at::bmm(u, u.transpose(1, 2)).baddbmm_(v, v.transpose(1, 2));
    auto w = at::bmm(v, u.transpose(1, 2));
    auto y = w - w.transpose(1, 2);
    if (method == "exact") {
      bound = at::linalg_eigvalsh(at::complex(x, y)).select(1, d - 1).clamp_min(0).sqrt();
    } else {
      auto layer = at::arange(nb, u.options().dtype(at::kLong)).repeat_interleave(u.size(0) / nb);
      bound = gram_bounds(u, v, x, y, layer, nb, max_iters, tol, prune);
    }
  }
  if (method == "gram") bound = bound * (1.0 + safety_margin(acc, d));
  sigma = bound.to(acc).view({nb, groups, gh, fw}).amax(1);
  if (gh != mh) sigma = sigma.expand({nb, mh, mw / 2 + 1}).contiguous();
  return {sigma, sigma.amax({1, 2})};
}

}  // namespace

TORCH_LIBRARY_IMPL(robustkern, CPU, m) { m.impl(kOp, &conv_singular_values); }
TORCH_LIBRARY_IMPL(robustkern, CUDA, m) { m.impl(kOp, &conv_singular_values); }

}  // namespace robustkern
