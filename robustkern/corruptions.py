"""Common corruptions in torch (CPU and GPU), five severities each, and a corruption report.

The corruptions follow Hendrycks & Dietterich's reference code (``make_cifar_c.py`` and
``make_imagenet_c.py``) for the ones that can be done faithfully in torch, plus the low- and
high-pass filters of Yin et al. Severity parameters come in two tables, picked by image size:

* ``"cifar"`` (CIFAR-10-C's values) for images whose larger side is at most 64 px (CIFAR,
  MNIST, Tiny ImageNet sizes),
* ``"imagenet"`` (ImageNet-C's values, made for 224 px) for larger images.

ImageNet-C's values applied to 32 px images are far too harsh (e.g. gaussian noise sigma 0.38
vs 0.10 at severity 5); pass ``table=`` to force one. ``PARAMETERS`` holds both tables.

Images are taken in ``bounds`` (default (0, 1)), processed in [0, 1] like the reference code and
mapped back; outputs are clipped to ``bounds``. All randomness comes from the ``generator``
argument (on the images' device), so results are reproducible. Known differences from the
reference code: pixelate's PIL BOX resampling is done by adaptive average pooling (identical for
integer factors); the reference code quantises its outputs to 8 bits, this does not. Channels
other than 1 (grey) or 3 (RGB) are treated like colour channels.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from robustkern._io import pyplot, save_figure
from robustkern._progress import progress_bar
from robustkern.checks import check_choice, check_images, check_model_labels
from robustkern.fourier import band_filter
from robustkern.modes import eval_mode, model_device
from robustkern.types import Bounds

SEVERITIES = (1, 2, 3, 4, 5)
SMALL_IMAGE_MAX_SIDE = 64

# name -> table -> the five severities' parameters (from the reference code unless noted).
PARAMETERS: dict[str, dict[str, tuple]] = {
    "gaussian_noise": {  # noise sigma
        "cifar": (0.04, 0.06, 0.08, 0.09, 0.10),
        "imagenet": (0.08, 0.12, 0.18, 0.26, 0.38),
    },
    "shot_noise": {  # Poisson photons per unit intensity
        "cifar": (500, 250, 100, 75, 50),
        "imagenet": (60, 25, 12, 5, 3),
    },
    "impulse_noise": {  # salt-and-pepper fraction
        "cifar": (0.01, 0.02, 0.03, 0.05, 0.07),
        "imagenet": (0.03, 0.06, 0.09, 0.17, 0.27),
    },
    "speckle_noise": {  # multiplicative noise sigma
        "cifar": (0.06, 0.1, 0.12, 0.16, 0.2),
        "imagenet": (0.15, 0.2, 0.35, 0.45, 0.6),
    },
    "gaussian_blur": {  # sigma in pixels
        "cifar": (0.4, 0.6, 0.7, 0.8, 1.0),
        "imagenet": (1, 2, 3, 4, 6),
    },
    "defocus_blur": {  # (disk radius, anti-alias sigma)
        "cifar": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
        "imagenet": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
    },
    "contrast": {  # factor towards the per-channel mean
        "cifar": (0.75, 0.5, 0.4, 0.3, 0.15),
        "imagenet": (0.4, 0.3, 0.2, 0.1, 0.05),
    },
    "brightness": {  # added to HSV value
        "cifar": (0.05, 0.1, 0.15, 0.2, 0.3),
        "imagenet": (0.1, 0.2, 0.3, 0.4, 0.5),
    },
    "fog": {  # (fractal strength, wibble decay)
        "cifar": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
        "imagenet": ((1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)),
    },
    "pixelate": {  # down-sampling factor
        "cifar": (0.95, 0.9, 0.85, 0.75, 0.65),
        "imagenet": (0.6, 0.5, 0.4, 0.3, 0.25),
    },
    # Ours (not in CIFAR-10-C / ImageNet-C): Yin et al.'s filters, as a fraction of half the
    # smaller image side; low-pass keeps |i|,|j| <= radius, high-pass removes it but the mean.
    "low_pass": {"cifar": (0.8, 0.6, 0.45, 0.3, 0.2), "imagenet": (0.8, 0.6, 0.45, 0.3, 0.2)},
    "high_pass": {"cifar": (0.07, 0.15, 0.25, 0.4, 0.6), "imagenet": (0.07, 0.15, 0.25, 0.4, 0.6)},
}
CORRUPTIONS = tuple(PARAMETERS)


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


@dataclass
class CorruptionReport:
    """Accuracy per corruption and severity (``accuracy[name][severity - 1]``), the clean
    accuracy, and, against a baseline, Hendrycks & Dietterich's corruption errors:
    ``CE_c = sum_s E_s,c / sum_s E^base_s,c`` and the relative
    ``sum_s (E_s,c - E_clean) / sum_s (E^base_s,c - E^base_clean)``, and their means (mCE)."""

    clean_accuracy: float
    accuracy: dict[str, list[float]]
    table: str
    n: int
    seconds: float = 0.0
    baseline: CorruptionReport | None = field(default=None, repr=False)

    @property
    def mean_accuracy(self) -> float:
        """Accuracy averaged over every corruption and severity."""
        values = [a for row in self.accuracy.values() for a in row]
        return sum(values) / len(values) if values else math.nan

    def corruption_errors(self) -> dict[str, float]:
        return self._errors(relative=False)

    def relative_corruption_errors(self) -> dict[str, float]:
        return self._errors(relative=True)

    @property
    def mce(self) -> float:
        return _mean(self.corruption_errors().values())

    @property
    def relative_mce(self) -> float:
        return _mean(self.relative_corruption_errors().values())

    def _errors(self, relative: bool) -> dict[str, float]:
        if self.baseline is None:
            raise ValueError("corruption errors need a baseline: pass baseline= to the report")
        out = {}
        for name, row in self.accuracy.items():
            if name not in self.baseline.accuracy:
                continue
            ours = sum(1 - a for a in row)
            theirs = sum(1 - a for a in self.baseline.accuracy[name])
            if relative:
                ours -= len(row) * (1 - self.clean_accuracy)
                theirs -= len(row) * (1 - self.baseline.clean_accuracy)
            out[name] = ours / theirs if theirs > 0 else math.nan
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("baseline")
        d["mean_accuracy"] = self.mean_accuracy
        if self.baseline is not None:
            d["baseline_clean_accuracy"] = self.baseline.clean_accuracy
            d["corruption_errors"] = self.corruption_errors()
            d["relative_corruption_errors"] = self.relative_corruption_errors()
            d["mce"], d["relative_mce"] = self.mce, self.relative_mce
        return d

    def __str__(self) -> str:
        sev = len(next(iter(self.accuracy.values()), []))
        head = f"{'corruption':<16}" + "".join(f"{'s' + str(s + 1):>8}" for s in range(sev))
        head += f"{'mean':>8}" + (f"{'CE':>8}{'rel CE':>8}" if self.baseline else "")
        lines = [
            f"clean accuracy {100 * self.clean_accuracy:.2f} % on {self.n} images "
            f"(severity table: {self.table})",
            head,
        ]
        ce = self.corruption_errors() if self.baseline else {}
        rce = self.relative_corruption_errors() if self.baseline else {}
        for name, row in self.accuracy.items():
            line = f"{name:<16}" + "".join(f"{100 * a:8.2f}" for a in row)
            line += f"{100 * _mean(row):8.2f}"
            if self.baseline:
                line += f"{100 * ce.get(name, math.nan):8.1f}{100 * rce.get(name, math.nan):8.1f}"
            lines.append(line)
        tail = f"mean accuracy over corruptions {100 * self.mean_accuracy:.2f} %"
        if self.baseline:
            tail += f"; mCE {100 * self.mce:.1f} %, relative mCE {100 * self.relative_mce:.1f} %"
        return "\n".join([*lines, tail])


def corruption_report(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    corruptions: Sequence[str] = CORRUPTIONS,
    severities: Sequence[int] = SEVERITIES,
    baseline: torch.nn.Module | CorruptionReport | None = None,
    bounds: Bounds = (0.0, 1.0),
    table: str = "auto",
    batch_size: int = 256,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> CorruptionReport:
    """Accuracy of ``model`` on ``(x, y)`` under each corruption and severity (see
    ``CorruptionReport``). A baseline model is evaluated on the very same corrupted images; a
    baseline report must come from the same data. Deterministic for a given ``seed`` and
    ``batch_size``. The model(s) run in eval mode, restored after."""
    device = torch.device(device) if device is not None else model_device(model)
    unknown = [c for c in corruptions if c not in PARAMETERS]
    if unknown:
        raise ValueError(f"unknown corruption(s) {unknown}; choose from {', '.join(CORRUPTIONS)}")
    check_images(x)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    chosen = table_for(*x.shape[-2:]) if table == "auto" else table
    models = [model] + ([baseline] if isinstance(baseline, torch.nn.Module) else [])
    start = time.perf_counter()

    def accuracy(transform) -> list[float]:
        correct = torch.zeros(len(models), dtype=torch.int64, device=device)
        for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True):
            xb, yb = transform(xb.to(device)), yb.to(device)
            for k, m in enumerate(models):
                correct[k] += (m(xb).argmax(dim=1) == yb).sum()
        return (correct.double() / max(len(x), 1)).tolist()

    cells = [(c, s) for c in corruptions for s in severities]
    results: dict[str, list[list[float]]] = {c: [] for c in corruptions}
    with torch.inference_mode(), ExitStack() as stack:
        for m in models:
            stack.enter_context(eval_mode(m))
            check_model_labels(m, x, y)
        clean = accuracy(lambda xb: xb)
        for name, severity in progress_bar(cells, desc="corruptions", disable=not progress):
            g = torch.Generator(device=device).manual_seed(
                seed * 1_000_003 + CORRUPTIONS.index(name) * 10 + severity
            )
            results[name].append(
                accuracy(
                    lambda xb, n=name, s=severity, g=g: corrupt(
                        xb, n, s, generator=g, bounds=bounds, table=chosen
                    )
                )
            )
    seconds = time.perf_counter() - start

    def report(k: int, base: CorruptionReport | None) -> CorruptionReport:
        acc = {c: [row[k] for row in results[c]] for c in corruptions}
        return CorruptionReport(clean[k], acc, chosen, len(x), seconds, base)

    if isinstance(baseline, torch.nn.Module):
        return report(0, report(1, None))
    return report(0, baseline)


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else math.nan


def plot_report(report: CorruptionReport, path: str | Path) -> Path:
    """Accuracy against severity, one line per corruption (and the baseline's, dashed), as a
    PNG; returns the path."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(8, 4.5))
    colours = plt.get_cmap("tab20").colors
    for k, (name, row) in enumerate(report.accuracy.items()):
        severities = range(1, len(row) + 1)
        colour = colours[k % len(colours)]
        ax.plot(severities, [100 * a for a in row], marker="o", color=colour, label=name)
        if report.baseline is not None and name in report.baseline.accuracy:
            base = report.baseline.accuracy[name]
            ax.plot(severities, [100 * a for a in base], linestyle="--", color=colour, alpha=0.6)
    ax.axhline(100 * report.clean_accuracy, color="black", linewidth=1, label="clean")
    ax.set_xticks(range(1, 1 + max((len(r) for r in report.accuracy.values()), default=0)))
    ax.set_xlabel("severity")
    ax.set_ylabel("accuracy (%)")
    title = f"common corruptions ({report.table} severities, n={report.n})"
    ax.set_title(title + ("; dashed: baseline" if report.baseline is not None else ""))
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower left")
    fig.tight_layout()
    return save_figure(fig, path)
