"""Pure-PyTorch twins of every op: the specification, the test oracle and the benchmark baseline.

Each function computes in the op's compute type (float32 for float16/bfloat16/float32 inputs,
float64 for float64) and returns a new tensor in the input's dtype; the ops in robustkern.ops
compute the same function in place.

Conventions of the projected-step family (``linf_step_``, ``l2_step_``, ``linf_project_``,
``l2_project_``):

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
