"""The corruptions themselves, batched in torch (CPU and GPU), all randomness from the caller's
generator."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from robustkern.checks import check_choice, check_images
from robustkern.corruptions.parameters import (
    CORRUPTIONS,
    PARAMETERS,
    SEVERITIES,
    SMALL_IMAGE_MAX_SIDE,
)
from robustkern.fourier import band_filter
from robustkern.types import Bounds


def table_for(h: int, w: int) -> str:
    """The severity table for images of this size: "cifar" up to 64 px, else "imagenet"."""
    return "cifar" if max(h, w) <= SMALL_IMAGE_MAX_SIDE else "imagenet"


def corrupt(
    x: torch.Tensor,
    name: str,
    severity: int,
    *,
    generator: torch.Generator | None = None,
    bounds: Bounds = (0.0, 1.0),
    table: str = "auto",
) -> torch.Tensor:
    """``x`` (N, C, H, W) under corruption ``name`` at ``severity`` 1..5, clipped to ``bounds``."""
    if name not in PARAMETERS:
        raise ValueError(f"unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}")
    check_choice(severity, SEVERITIES, "severity")
    check_images(x)
    lo, hi = float(bounds[0]), float(bounds[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"bounds must be finite with lo < hi, got {bounds}")
    if table == "auto":
        table = table_for(*x.shape[-2:])
    if table not in ("cifar", "imagenet"):
        raise ValueError(f"table must be 'auto', 'cifar' or 'imagenet', got {table!r}")
    param = PARAMETERS[name][table][severity - 1]
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    unit = ((x.to(acc) - lo) / (hi - lo)).clamp(0, 1)
    out = _FUNCTIONS[name](unit, param, generator)
    return (out.clamp(0, 1) * (hi - lo) + lo).to(x.dtype)


def _gaussian_noise(x, sigma, g):
    return x + sigma * _randn(x, g)


def _shot_noise(x, photons, g):
    return torch.poisson(x * photons, generator=g) / photons


def _impulse_noise(x, amount, g):
    flipped = _rand(x, g) < amount
    salt = (_rand(x, g) < 0.5).to(x.dtype)
    return torch.where(flipped, salt, x)


def _speckle_noise(x, sigma, g):
    return x + x * sigma * _randn(x, g)


def _gaussian_blur(x, sigma, g):
    # skimage.filters.gaussian: truncate 4 sigma, 'nearest' (replicate) borders, separable.
    radius = int(4 * sigma + 0.5)
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (taps / sigma) ** 2)
    k = k / k.sum()
    return _filter2d(x, k[:, None] * k[None, :], "replicate")


def _defocus_blur(x, param, g):
    radius, alias_sigma = param
    return _filter2d(x, _disk(radius, alias_sigma, x), "reflect")  # cv2's BORDER_REFLECT_101


def _contrast(x, factor, g):
    means = x.mean(dim=(2, 3), keepdim=True)
    return (x - means) * factor + means


def _brightness(x, delta, g):
    # In HSV, RGB = V * f(H, S): raising V to V' with H, S fixed scales RGB by V' / V. A black
    # pixel (V = 0, so S = 0) becomes grey V'. One channel: V is the pixel itself.
    value = x.amax(dim=1, keepdim=True)
    raised = (value + delta).clamp(0, 1)
    return torch.where(value > 0, x * raised / value.clamp_min(1e-12), raised)


def _fog(x, param, g):
    strength, decay = param
    n, _, h, w = x.shape
    size = 1 << max(1, math.ceil(math.log2(max(h, w))))
    fractal = _plasma_fractal(n, size, decay, g, x)[:, None, :h, :w]
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x + strength * fractal) * peak / (peak + strength)


def _pixelate(x, factor, g):
    h, w = x.shape[-2:]
    small = F.adaptive_avg_pool2d(x, (max(1, int(h * factor)), max(1, int(w * factor))))
    return F.adaptive_avg_pool2d(small, (h, w))  # box resampling, as PIL's BOX filter


def _low_pass(x, fraction, g):
    return band_filter(x, _band_radius(x, fraction), "low")


def _high_pass(x, fraction, g):
    return band_filter(x, _band_radius(x, fraction), "high")


_FUNCTIONS: dict[str, Callable] = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "speckle_noise": _speckle_noise,
    "gaussian_blur": _gaussian_blur,
    "defocus_blur": _defocus_blur,
    "contrast": _contrast,
    "brightness": _brightness,
    "fog": _fog,
    "pixelate": _pixelate,
    "low_pass": _low_pass,
    "high_pass": _high_pass,
}


def _randn(x, g):
    return torch.randn(x.shape, generator=g, dtype=x.dtype, device=x.device)


def _rand(x, g):
    return torch.rand(x.shape, generator=g, dtype=x.dtype, device=x.device)


def _band_radius(x: torch.Tensor, fraction: float) -> int:
    return max(1, round(fraction * min(x.shape[-2:]) / 2))


def _filter2d(x: torch.Tensor, kernel: torch.Tensor, border: str) -> torch.Tensor:
    """Correlates every channel with a (kh, kw) kernel, same-size output. 'reflect' falls back
    to 'replicate' when the kernel is wider than the image allows."""
    kh, kw = kernel.shape
    ph, pw = kh // 2, kw // 2
    if border == "reflect" and (ph >= x.shape[-2] or pw >= x.shape[-1]):
        border = "replicate"
    padded = F.pad(x, (pw, pw, ph, ph), mode=border)
    c = x.shape[1]
    weight = kernel.to(x.dtype).expand(c, 1, kh, kw)
    return F.conv2d(padded, weight, groups=c)


def _disk(radius: float, alias_sigma: float, like: torch.Tensor) -> torch.Tensor:
    """The reference code's defocus kernel: a normalised disk on a grid of half-width
    max(8, radius), anti-aliased by a 3x3 (5x5 beyond radius 8) Gaussian with reflect-101
    borders (cv2.GaussianBlur), then trimmed to its non-zero support (which changes nothing)."""
    half = 8 if radius <= 8 else int(radius)
    taps = torch.arange(-half, half + 1, dtype=torch.float64)
    disk = ((taps[:, None] ** 2 + taps[None, :] ** 2) <= radius**2).double()
    disk /= disk.sum()
    ksize = 3 if radius <= 8 else 5
    t = torch.arange(ksize, dtype=torch.float64) - (ksize - 1) / 2
    k = torch.exp(-(t**2) / (2 * alias_sigma**2))
    k /= k.sum()
    pad = ksize // 2
    blurred = F.conv2d(
        F.pad(disk[None, None], (pad, pad, pad, pad), mode="reflect"), (k[:, None] * k)[None, None]
    )[0, 0]
    rows = blurred.abs().sum(1).nonzero().squeeze(1)
    cols = blurred.abs().sum(0).nonzero().squeeze(1)
    r = max(half - int(rows.min()), int(rows.max()) - half)  # keep the kernel centred
    c = max(half - int(cols.min()), int(cols.max()) - half)
    return blurred[half - r : half + r + 1, half - c : half + c + 1].to(like.device)


def _plasma_fractal(
    n: int, size: int, decay: float, g: torch.Generator | None, like: torch.Tensor
) -> torch.Tensor:
    """(n, size, size) diamond-square height maps in [0, 1], as the reference code's
    ``plasma_fractal`` (including its ``wibble * uniform(-wibble, wibble)`` noise scale)."""
    grid = torch.zeros(n, size, size, dtype=like.dtype, device=like.device)
    step, wibble = size, 100.0

    def wibbled_mean(total: torch.Tensor) -> torch.Tensor:
        noise = torch.rand(total.shape, generator=g, dtype=total.dtype, device=total.device)
        return total / 4 + wibble * (2 * wibble * noise - wibble)

    while step >= 2:
        half = step // 2
        corners = grid[:, 0::step, 0::step]
        squares = corners + corners.roll(-1, dims=1)
        squares = squares + squares.roll(-1, dims=2)
        grid[:, half::step, half::step] = wibbled_mean(squares)
        centres = grid[:, half::step, half::step]
        corners = grid[:, 0::step, 0::step]
        grid[:, 0::step, half::step] = wibbled_mean(
            centres + centres.roll(1, dims=1) + corners + corners.roll(-1, dims=2)
        )
        grid[:, half::step, 0::step] = wibbled_mean(
            centres + centres.roll(1, dims=2) + corners + corners.roll(-1, dims=1)
        )
        step //= 2
        wibble /= decay
    grid -= grid.amin(dim=(1, 2), keepdim=True)
    return grid / grid.amax(dim=(1, 2), keepdim=True)
