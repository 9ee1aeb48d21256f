"""Pure-PyTorch twins of every op: the specification, the test oracle and the benchmark baseline.

Each function computes in the op's compute type (float32 for float16/bfloat16/float32 inputs,
float64 for float64) and returns a new tensor in the input's dtype; the ops in robustkern.ops
compute the same function in place.

Conventions of the projected-step families (``linf_step_``, ``l2_step_``, ``linf_project_``,
``l2_project_``; ``l1_step_`` and ``l1_project_`` below):

* ``alpha`` and ``eps`` are a number or a 1-D tensor with one value per sample.
* Non-finite gradient entries (NaN, +-inf) carry no usable direction and count as 0, so a
  NaN gradient never spreads into ``x_adv``; the rest of the sample steps normally.
* L2: a zero gradient moves nothing; a gradient whose step ``alpha / ||g||`` overflows the
  compute type is treated as zero too. Norms are accumulated in float64.
* The projection onto the eps-ball comes first, then the clip to ``bounds``.
"""

from __future__ import annotations

import torch

from robustkern.types import Bounds


def _acc(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _per_sample(v: float | torch.Tensor, x: torch.Tensor) -> float | torch.Tensor:
    """A scalar, or a per-sample tensor shaped to broadcast over x's trailing dims."""
    if isinstance(v, torch.Tensor):
        return v.to(device=x.device, dtype=_acc(x)).view(-1, *([1] * (x.dim() - 1)))
    return float(v)


def _finite(g: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(g), g, torch.zeros((), dtype=g.dtype, device=g.device))


def _sample_norm(t: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm accumulated in float64, shaped (N, 1, ...)."""
    n = t.double().flatten(1).norm(dim=1) if t.numel() else t.new_zeros(t.shape[0]).double()
    return n.view(-1, *([1] * (t.dim() - 1)))


def _clip_ball_linf(v, x_nat, eps):
    return torch.minimum(torch.maximum(v, x_nat - eps), x_nat + eps)


def _clip_bounds(v: torch.Tensor, bounds: Bounds) -> torch.Tensor:
    return v.clamp(float(bounds[0]), float(bounds[1]))


def _l2_ball(x_adv: torch.Tensor, x_nat: torch.Tensor, eps) -> torch.Tensor:
    """x_nat + delta * min(1, eps/||delta||), in the compute type."""
    delta = x_adv - x_nat
    norm = _sample_norm(delta)
    eps64 = eps.double() if isinstance(eps, torch.Tensor) else eps
    factor = torch.where(norm > eps64, eps64 / norm, torch.ones_like(norm)).to(x_adv.dtype)
    return x_nat + factor * delta


def linf_step(x_adv, x_nat, grad, *, alpha, eps, bounds: Bounds = (0.0, 1.0)) -> torch.Tensor:
    """clip(clip(x_adv + alpha * sign(grad), x_nat - eps, x_nat + eps), lo, hi)."""
    acc = _acc(x_adv)
    xa, xn, g = x_adv.to(acc), x_nat.to(acc), grad.to(acc)
    v = xa + _per_sample(alpha, xa) * torch.sign(_finite(g))
    v = _clip_ball_linf(v, xn, _per_sample(eps, xa))
    return _clip_bounds(v, bounds).to(x_adv.dtype)


def linf_project(x_adv, x_nat, *, eps, bounds: Bounds = (0.0, 1.0)) -> torch.Tensor:
    """clip(clip(x_adv, x_nat - eps, x_nat + eps), lo, hi)."""
    acc = _acc(x_adv)
    xa, xn = x_adv.to(acc), x_nat.to(acc)
    return _clip_bounds(_clip_ball_linf(xa, xn, _per_sample(eps, xa)), bounds).to(x_adv.dtype)


def l2_step(x_adv, x_nat, grad, *, alpha, eps, bounds: Bounds = (0.0, 1.0)) -> torch.Tensor:
    """Step alpha along grad/||grad|| per sample, project onto the L2 eps-ball, clip to bounds."""
    acc = _acc(x_adv)
    xa, xn, g = x_adv.to(acc), x_nat.to(acc), _finite(grad.to(acc))
    norm = _sample_norm(g)
    alpha64 = _per_sample(alpha, xa)
    alpha64 = alpha64.double() if isinstance(alpha64, torch.Tensor) else alpha64
    step = torch.where(norm > 0, alpha64 / norm, torch.zeros_like(norm)).to(acc)
    step = torch.where(torch.isfinite(step), step, torch.zeros_like(step))
    v = _l2_ball(xa + step * g, xn, _per_sample(eps, xa))
    return _clip_bounds(v, bounds).to(x_adv.dtype)


def l2_project(x_adv, x_nat, *, eps, bounds: Bounds = (0.0, 1.0)) -> torch.Tensor:
    """Project x_adv onto the L2 eps-ball around x_nat per sample, then clip to bounds."""
    acc = _acc(x_adv)
    xa, xn = x_adv.to(acc), x_nat.to(acc)
    return _clip_bounds(_l2_ball(xa, xn, _per_sample(eps, xa)), bounds).to(x_adv.dtype)


# L1 family (``l1_project_``, ``l1_step_``): the exact Euclidean projection of delta = x_adv -
# x_nat onto {d : ||d||_1 <= eps, lo <= x_nat + d <= hi} (Croce & Hein, "Mind the box", ICML
# 2021). By the KKT conditions d_i = sign(v_i) * clip(|v_i| - lam, 0, c_i) for v = x_adv - x_nat,
# with c_i the room left in the box in v_i's direction and lam >= 0 the smallest threshold with
# sum_i clip(|v_i| - lam, 0, c_i) <= eps; that sum is piecewise linear in lam with breakpoints
# |v_i| - c_i and |v_i|. (A coordinate where x_nat lies outside the bounds gets no room to move
# away from them.) eps = 0 returns x_nat; the result is clipped to the bounds.


def _l1_box_caps(v: torch.Tensor, x_nat: torch.Tensor, bounds: Bounds) -> torch.Tensor:
    """c_i: how far coordinate i may move in v_i's direction before leaving the bounds."""
    lo, hi = float(bounds[0]), float(bounds[1])
    return torch.where(v >= 0, hi - x_nat, x_nat - lo).clamp_min(0)


def l1_threshold(mag: torch.Tensor, cap: torch.Tensor, eps) -> torch.Tensor:
    """lam (N,) for magnitudes |v| and caps c (N, d), float64, by sorting the 2d breakpoints:
    the smallest lam >= 0 with sum_i clip(mag_i - lam, 0, cap_i) <= eps."""
    mag, cap = mag.double(), cap.double()
    n = mag.shape[0]
    eps = torch.as_tensor(eps, dtype=torch.float64, device=mag.device).expand(n)
    f0 = torch.minimum(mag, cap).sum(1)
    # A coordinate becomes active (slope -1) at max(mag - cap, 0) and saturates at 0 at mag.
    points = torch.cat(((mag - cap).clamp_min(0), mag), 1)
    change = torch.cat((-torch.ones_like(mag), torch.ones_like(mag)), 1)
    points, order = points.sort(1)
    slope = change.gather(1, order).cumsum(1)  # on (points[k], points[k + 1])
    gaps = torch.diff(points, dim=1, append=points[:, -1:])
    value = f0[:, None] + torch.cumsum(slope * gaps, 1) - slope * gaps  # f(points[k])
    k = ((value > eps[:, None]).sum(1) - 1).clamp_min(0)[:, None]
    left, right = points.gather(1, k), points.gather(1, (k + 1).clamp(max=points.shape[1] - 1))
    s = slope.gather(1, k)
    # Rounding in the running sums can leave f a hair above eps at the last point: lam is then
    # that point (every coordinate at 0), and it never leaves its segment.
    lam = torch.where(s < 0, left + (value.gather(1, k) - eps[:, None]) / -s.clamp(max=-1), right)
    lam = torch.minimum(torch.maximum(lam, left), right)
    return torch.where(f0 <= eps, torch.zeros_like(f0), lam[:, 0])


def _l1_ball_box(xa: torch.Tensor, xn: torch.Tensor, eps, bounds: Bounds) -> torch.Tensor:
    """The projection of xa onto the L1 eps-ball around xn intersected with the bounds."""
    shape = xa.shape
    xa, xn = xa.flatten(1), xn.flatten(1)
    v = xa - xn
    mag, cap = v.abs(), _l1_box_caps(v, xn, bounds)
    if xa.shape[0] == 0:
        return xa.view(shape)
    lam = l1_threshold(mag, cap, eps).to(xa.dtype)[:, None]
    d = torch.sign(v) * torch.minimum((mag - lam).clamp_min(0), cap)
    eps_t = torch.as_tensor(eps, dtype=xa.dtype, device=xa.device).expand(xa.shape[0])
    d = torch.where(eps_t[:, None] == 0, torch.zeros_like(d), d)
    return _clip_bounds(xn + d, bounds).view(shape)


def l1_project(x_adv, x_nat, *, eps, bounds: Bounds = (0.0, 1.0)) -> torch.Tensor:
    """The closest point to x_adv in the L1 eps-ball around x_nat within the bounds."""
    acc = _acc(x_adv)
    eps = eps.double() if isinstance(eps, torch.Tensor) else float(eps)
    return _l1_ball_box(x_adv.to(acc), x_nat.to(acc), eps, bounds).to(x_adv.dtype)


def l1_sparse_direction(x_adv, grad, sparsity, bounds: Bounds) -> torch.Tensor:
    """APGD-L1's step direction (N, d) in the compute type: sign(grad) on the round(sparsity * d)
    largest |grad| (ties included) among the coordinates that can still move that way inside
    the bounds, scaled to L1 length 1; zero for a sample with no such coordinate."""
    lo, hi = float(bounds[0]), float(bounds[1])
    xa, g = x_adv.flatten(1), _finite(grad.flatten(1))
    n, d = xa.shape
    movable = ((g > 0) & (xa < hi)) | ((g < 0) & (xa > lo))
    mag = torch.where(movable, g.abs(), torch.zeros_like(g))
    # k from sparsity in the compute type, as the kernels have it; rounded, not ceiled, so that
    # 0.05 of 100 (5.000000000000001 in binary) is 5.
    sparsity = torch.as_tensor(sparsity, device=xa.device).to(xa.dtype).double().expand(n)
    k = (sparsity * d + 0.5).floor().clamp(1, max(d, 1)).long()[:, None]  # halves up
    if d == 0 or n == 0:
        return torch.zeros_like(xa)
    kth = mag.sort(1, descending=True).values.gather(1, k - 1)
    keep = (mag >= kth) & (mag > 0)
    count = keep.sum(1, keepdim=True).clamp_min(1).to(xa.dtype)
    return torch.where(keep, torch.sign(g), torch.zeros_like(g)) / count


def l1_step(
    x_adv, x_nat, grad, *, alpha, eps, sparsity, bounds: Bounds = (0.0, 1.0)
) -> torch.Tensor:
    """APGD-L1's sparse step: x_adv + alpha * l1_sparse_direction(...), then l1_project."""
    acc = _acc(x_adv)
    xa, xn = x_adv.to(acc), x_nat.to(acc)
    direction = l1_sparse_direction(xa, grad.to(acc), sparsity, bounds).view(xa.shape)
    moved = xa + _per_sample(alpha, xa) * direction
    eps = eps.double() if isinstance(eps, torch.Tensor) else float(eps)
    return _l1_ball_box(moved, xn, eps, bounds).to(x_adv.dtype)


# Spectral family (``conv_singular_values``): a conv layer with weight (C_out, C_in / groups, kh,
# kw), stride s and dilation d, acting circularly on the N = fft_size torus, is block diagonal in
# the Fourier basis: at each output frequency xi on the M = N / s grid its matrix is
# A(xi) = (1 / sqrt(sh sw)) [K^(xi + l M)]_l, the s_h s_w aliased blocks of the kernel's N-point
# spectrum side by side (Szegedy et al. 2014, 4.3; Sedghi et al. 2019 for s = 1). Its singular
# values are the layer's; groups are diagonal blocks, so the layer's value is the max over groups.


def conv_spectrum_matrices(
    weight: torch.Tensor,
    fft_size: tuple[int, int],
    stride: tuple[int, int] = (1, 1),
    dilation: tuple[int, int] = (1, 1),
    groups: int = 1,
) -> torch.Tensor:
    """A(xi) for a (B, C_out, C_in / groups, kh, kw) weight: (B, Mh, Mw, groups, C_out / groups,
    C_in / groups * sh * sw), complex."""
    nb, c_out, c_in, kh, kw = weight.shape
    (nh, nw), (sh, sw), (dh, dw) = fft_size, stride, dilation
    mh, mw = nh // sh, nw // sw
    taps = weight.new_zeros(nb, c_out, c_in, nh, nw)
    for a in range(kh):
        for b in range(kw):
            taps[..., a * dh % nh, b * dw % nw] += weight[..., a, b]
    spectrum = torch.fft.fft2(taps).view(nb, c_out, c_in, sh, mh, sw, mw)  # eta = l * M + xi
    a = spectrum.permute(0, 4, 6, 1, 2, 3, 5).reshape(
        nb, mh, mw, groups, c_out // groups, c_in * sh * sw
    )
    return a / (sh * sw) ** 0.5


def conv_singular_values(
    weight: torch.Tensor,
    fft_size: tuple[int, int],
    stride: tuple[int, int] = (1, 1),
    dilation: tuple[int, int] = (1, 1),
    groups: int = 1,
    method: str = "exact",
    iters: int = 6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-frequency sigma_max on the rfft2 half-grid (B, Mh, Mw // 2 + 1), its max (B,)).

    method "exact": an SVD per frequency (Sedghi et al.). "gram": the plain Gram iteration
    bound ||G_t||_F^(1 / 2^t), G_0 = A, G_(t+1) = G_t^H G_t, with Frobenius rescaling, ``iters``
    times on every frequency (the baseline robustkern's pruned, adaptive kernel improves on)."""
    acc = torch.float64 if weight.dtype == torch.float64 else torch.float32
    a = conv_spectrum_matrices(weight.to(acc), fft_size, stride, dilation, groups)
    if a.numel() == 0:
        sigma = a.real.new_zeros(a.shape[:3])
    elif method == "exact":
        sigma = torch.linalg.matrix_norm(a, ord=2).amax(-1)
    else:
        sigma = gram_bound(a, iters).amax(-1)
    sigma = sigma[..., : sigma.shape[-1] // 2 + 1]
    return sigma, sigma.amax((1, 2))


def gram_bound(a: torch.Tensor, iters: int) -> torch.Tensor:
    """Delattre et al.'s Gram iteration upper bound of sigma_max for a batch of matrices."""
    log_scale = torch.zeros(a.shape[:-2], dtype=torch.float64, device=a.device)
    for _ in range(iters):
        r = torch.linalg.matrix_norm(a).clamp_min(torch.finfo(a.real.dtype).tiny)
        a = a / r[..., None, None]
        log_scale = 2 * (log_scale + r.double().log())
        a = a.mH @ a
    r = torch.linalg.matrix_norm(a).double()
    return ((log_scale + r.log()) / 2**iters).exp().to(a.real.dtype)


# Fourier family (``fourier_perturb``). U(i, j) is the real, unit-L2-norm image whose 2-D DFT is
# non-zero only at (i, j) and its conjugate (-i, -j): the real part of the inverse DFT of a
# spectrum with ones at both, normalised. Frequencies are offsets from the zero frequency and are
# taken mod (H, W); see robustkern.fourier for the stated convention.


def fourier_basis(h: int, w: int, freqs: torch.Tensor, dtype=torch.float64) -> torch.Tensor:
    """(F, h, w) basis images U(freqs[f]) built with torch.fft.ifft2."""
    spectrum = torch.zeros(len(freqs), h, w, dtype=torch.complex128, device=freqs.device)
    index = torch.arange(len(freqs), device=freqs.device)
    i, j = freqs[:, 0] % h, freqs[:, 1] % w
    spectrum[index, i, j] = 1
    spectrum[index, -i % h, -j % w] = 1
    basis = torch.fft.ifft2(spectrum).real
    return (basis / basis.flatten(1).norm(dim=1)[:, None, None]).to(dtype)


def fourier_perturb(
    x: torch.Tensor,
    freqs: torch.Tensor,
    *,
    eps: float,
    signs: torch.Tensor | None = None,
    bounds: Bounds = (0.0, 1.0),
) -> torch.Tensor:
    """(F, N, C, H, W): clip(x[n, c] + eps * signs[f, n, c] * U(freqs[f]), lo, hi)."""
    acc = _acc(x)
    basis = fourier_basis(x.shape[2], x.shape[3], freqs.to(x.device), acc)
    scale = torch.full((len(freqs), *x.shape[:2]), float(eps), dtype=acc, device=x.device)
    if signs is not None:
        scale = scale * signs.to(acc)
    out = x.to(acc)[None] + scale[..., None, None] * basis[:, None, None]
    return _clip_bounds(out, bounds).to(x.dtype)
