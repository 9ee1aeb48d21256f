"""Fourier-basis perturbations and Fourier heat maps (Yin et al., "A Fourier Perspective on Model
Robustness", 2019), and the low-/high-pass filtering experiment from the same discussion.

The basis convention, used everywhere in robustkern (kernels, reference, plots):

* A frequency is an integer offset ``(i, j)`` from the zero frequency: ``i`` counts cycles down
  the image (rows), ``j`` across it (columns). Offsets are taken mod ``(H, W)``.
* ``U(i, j)[u, v] = c * cos(2 pi (i u / H + j v / W))``: cosine phase, zero at the top-left
  pixel ``(0, 0)``. Its 2-D DFT is non-zero only at ``(i, j)`` and ``(-i, -j)``, so
  ``U(i, j) == U(-i, -j)`` exactly and a heat map needs each conjugate pair once.
* ``c`` makes ``||U||_2 = 1``: ``sqrt(2 / (H W))``, or ``1 / sqrt(H W)`` at the self-conjugate
  frequencies (the zero frequency and, for even sizes, the Nyquist row ``i = -H/2`` and column
  ``j = -W/2`` crossings), where the cosine is +-1. The Nyquist row ``-H/2`` and ``+H/2`` are the
  same frequency; the maps list it once, as ``-H/2`` (row 0), like ``torch.fft.fftshift``.
* Maps of shape ``(H, W)`` are centred: index ``(r, s)`` holds frequency
  ``(r - H // 2, s - W // 2)``, so the zero frequency is at ``(H // 2, W // 2)``. Odd sizes:
  offsets ``-(H-1)/2 .. (H-1)/2``, the map is point-symmetric about the centre. Even sizes:
  offsets ``-H/2 .. H/2 - 1``; row 0 / column 0 are the Nyquist frequencies.
* For a C-channel image, the perturbation ``eps * sign * U`` is added to every channel with an
  independent random sign, so each channel's perturbation has L2 norm ``eps`` (Yin et al.).

(Two public implementations differ in phase, one using the cosine and one the sine; a heat map
depends on it only through the image content, but the convention is fixed here so that maps are
reproducible.)
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robustkern import ops
from robustkern._io import atomic_torch_save, pyplot, save_figure
from robustkern._progress import progress_bar
from robustkern.attacks._common import check_images, check_model_labels
from robustkern.evaluation import eval_mode, model_device

Bounds = tuple[float, float]

__all__ = [
    "FilteredTraining",
    "band_filter",
    "conjugate_index",
    "distinct_frequencies",
    "filtered_training_experiment",
    "fourier_basis",
    "frequency_grid",
    "heatmap",
    "heatmap_signs",
    "plot_heatmap",
    "radial_profile",
]


def frequency_grid(h: int, w: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(h, w, 2) int64: the frequency offset (i, j) at each index of a centred map."""
    i = torch.arange(h, device=device) - h // 2
    j = torch.arange(w, device=device) - w // 2
    return torch.stack(torch.meshgrid(i, j, indexing="ij"), dim=-1)


def conjugate_index(h: int, w: int) -> torch.Tensor:
    """(h * w,) int64: for each flat index of a centred map, the flat index of (-i, -j)."""
    f = frequency_grid(h, w).view(-1, 2)
    r = (-f[:, 0] + h // 2) % h
    s = (-f[:, 1] + w // 2) % w
    return r * w + s


def distinct_frequencies(h: int, w: int) -> torch.Tensor:
    """Flat indices of a centred map with one frequency per conjugate pair (the one whose index
    is not above its conjugate's): about half of h * w, all a heat map has to evaluate."""
    flat = torch.arange(h * w)
    return flat[flat <= conjugate_index(h, w)]


def fourier_basis(
    h: int,
    w: int,
    freqs: torch.Tensor,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(F, h, w) basis images U(freqs[f]) of unit L2 norm; ``freqs`` is (F, 2) int64 offsets."""
    if h < 1 or w < 1:
        raise ValueError(f"h and w must be >= 1, got {h}, {w}")
    zero = torch.zeros(1, 1, h, w, dtype=dtype, device=device)
    return ops.fourier_perturb(zero, freqs, eps=1.0, bounds=(-math.inf, math.inf))[:, 0, 0]


def heatmap(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    bounds: Bounds = (0.0, 1.0),
    batch_size: int | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    checkpoint: str | Path | None = None,
    progress: bool = True,
    return_counts: bool = False,
    stride: int = 1,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The Fourier heat map: the error rate of ``model`` on ``(x, y)`` when one basis image
    ``eps * U(i, j)`` with a random sign per image and channel is added to every image and the
    result clipped to ``bounds``, for every frequency. Returns a centred (H, W) float tensor
    (zero frequency at ``(H // 2, W // 2)``, see the module's convention); with
    ``return_counts`` also the (H, W) int64 numbers of misclassified images (out of ``len(x)``).

    Each conjugate pair is evaluated once (U(i, j) == U(-i, -j)), about half of H * W
    frequencies. Model batches hold up to ``batch_size`` perturbed images (several frequencies
    of the same images); the default, 256 on the CPU and 4096 on a GPU, suits small models (on
    the CPU, batches beyond a few hundred small images fall out of cache and run slower). The
    model runs in eval mode under ``torch.inference_mode``, and its mode is
    restored after. Signs depend only on ``seed``, the frequency and the image index, so the map
    is the same for every batch size. With ``checkpoint`` (a file), finished frequencies are
    saved atomically as they complete and a rerun with the same model, data and settings
    continues from there; a checkpoint written for anything else is refused.

    ``stride``: evaluate only the frequencies whose offsets (i, j) are both multiples of it, a
    coarse grid over the whole spectrum (about H W / (2 stride^2) frequencies: what a large
    image's map costs less); the others are NaN in the map (and -1 in the counts).
    """
    device = torch.device(device) if device is not None else model_device(model)
    if batch_size is None:
        batch_size = 256 if device.type == "cpu" else 4096
    n, c, h, w = _check_heatmap_args(x, eps, batch_size)
    if not (isinstance(stride, int) and stride >= 1):
        raise ValueError(f"stride must be an int >= 1, got {stride!r}")
    reps = distinct_frequencies(h, w)
    on_grid = (frequency_grid(h, w).view(-1, 2)[reps] % stride == 0).all(1)
    reps = reps[on_grid]
    freqs = frequency_grid(h, w).view(-1, 2)[reps]
    settings = {"eps": eps, "bounds": bounds, "seed": seed}
    if stride > 1:  # (stride 1 keeps the fingerprint of maps written before strides existed)
        settings["stride"] = stride
    fingerprint = _fingerprint(model, x, y, **settings)
    errors, done = _load_checkpoint(checkpoint, fingerprint, len(reps))
    images = max(1, min(n, batch_size))
    per_batch = max(1, batch_size // images)  # frequencies per model batch
    todo = (~done).nonzero().squeeze(1)
    with eval_mode(model), torch.inference_mode():
        check_model_labels(model, x, y)
        chunks = todo.split(per_batch)
        for chunk in progress_bar(
            chunks, desc="fourier heat map", disable=not progress, unit="batch"
        ):
            wrong = torch.zeros(len(chunk), dtype=torch.int64, device=device)
            signs = heatmap_signs(seed, reps[chunk], n, c).to(device)
            for start in range(0, n, images):
                xb = x[start : start + images].to(device)
                yb = y[start : start + images].to(device)
                batch = ops.fourier_perturb(
                    xb,
                    freqs[chunk],
                    eps=eps,
                    signs=signs[:, start : start + images],
                    bounds=bounds,
                )
                pred = model(batch.flatten(0, 1)).argmax(dim=1).view(len(chunk), -1)
                wrong += (pred != yb).sum(dim=1)
            errors[chunk] = wrong.cpu()
            done[chunk] = True
            if checkpoint is not None:
                atomic_torch_save(
                    {"fingerprint": fingerprint, "errors": errors, "done": done}, checkpoint
                )
    counts = torch.full((h * w,), -1, dtype=torch.int64)
    counts[reps] = errors
    counts[conjugate_index(h, w)[reps]] = errors
    counts = counts.view(h, w)
    error_map = counts.double().div(max(n, 1)).float() if n else torch.full((h, w), math.nan)
    error_map[counts < 0] = math.nan
    return (error_map, counts) if return_counts else error_map


def radial_profile(error_map: torch.Tensor) -> torch.Tensor:
    """Mean of a centred (H, W) map over frequencies at each rounded radius
    ``round(sqrt(i^2 + j^2))``, from 0 (lowest frequency) up; radii with no frequency (or only
    NaN ones, not evaluated) are NaN."""
    h, w = error_map.shape
    radius = frequency_grid(h, w).double().norm(dim=-1).round().long().view(-1)
    values = error_map.detach().double().cpu().reshape(-1)
    kept = ~values.isnan()
    radius, values = radius[kept], values[kept]
    total = torch.zeros(int(frequency_grid(h, w).double().norm(dim=-1).max().round()) + 1,
                        dtype=torch.float64)  # fmt: skip
    count = torch.zeros_like(total)
    total.index_add_(0, radius, values)
    count.index_add_(0, radius, torch.ones_like(values))
    return (total / count).float()


def plot_heatmap(
    error_map: torch.Tensor,
    path: str | Path,
    *,
    title: str | None = None,
    vmax: float | None = 1.0,
) -> Path:
    """Writes the map as a PNG (colour bar, axes in frequency offsets, zero at the centre) with
    its radial profile beside it; returns the path."""
    plt = pyplot()
    full_map = error_map
    h, w = error_map.shape
    grid = frequency_grid(h, w)
    if error_map.isnan().any():  # a strided map: show the evaluated sub-grid only
        rows = ~error_map.isnan().all(1)
        cols = ~error_map.isnan().all(0)
        error_map, grid = error_map[rows][:, cols], grid[rows][:, cols]
    step = (
        int(grid[1, 0, 0] - grid[0, 0, 0]) if grid.shape[0] > 1 else 1,
        int(grid[0, 1, 1] - grid[0, 0, 1]) if grid.shape[1] > 1 else 1,
    )  # the stride between evaluated frequencies
    extent = (
        float(grid[0, 0, 1]) - step[1] / 2,
        float(grid[0, -1, 1]) + step[1] / 2,
        float(grid[-1, 0, 0]) + step[0] / 2,
        float(grid[0, 0, 0]) - step[0] / 2,
    )
    fig, (ax, ax_profile) = plt.subplots(
        1, 2, figsize=(9.5, 4), gridspec_kw={"width_ratios": [1.15, 1]}
    )
    image = ax.imshow(
        error_map.detach().float().cpu().numpy(), cmap="jet", vmin=0.0, vmax=vmax, extent=extent
    )
    fig.colorbar(image, ax=ax, label="test error")
    ax.set_xlabel("horizontal frequency j")
    ax.set_ylabel("vertical frequency i")
    ax.set_title(title or "Fourier heat map")
    profile = radial_profile(full_map).numpy()
    shown = ~np.isnan(profile)
    ax_profile.plot(np.arange(len(profile))[shown], profile[shown], marker="o", markersize=3)
    ax_profile.set_xlabel("frequency radius (low -> high)")
    ax_profile.set_ylabel("mean test error")
    ax_profile.set_ylim(0, 1.02 if vmax is None else max(vmax, 1e-6) * 1.02)
    ax_profile.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def band_filter(x: torch.Tensor, radius: int, kind: str) -> torch.Tensor:
    """Low- or high-pass filter of a batch of images in the centred 2-D spectrum (Yin et al.).

    ``"low"`` keeps the frequencies with ``|i| <= radius and |j| <= radius`` (a square of side
    ``2 radius + 1``); ``"high"`` removes them except the zero frequency, so the image keeps its
    mean brightness. No clipping: the result may leave the input's range."""
    if kind not in ("low", "high"):
        raise ValueError(f"kind must be 'low' or 'high', got {kind!r}")
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    h, w = x.shape[-2:]
    offsets = frequency_grid(h, w, device=x.device)
    inside = offsets.abs().amax(dim=-1) <= radius
    keep = inside if kind == "low" else ~inside | (offsets == 0).all(dim=-1)
    keep = torch.fft.ifftshift(keep)  # to torch.fft's uncentred order
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    spectrum = torch.fft.fft2(x.to(acc)) * keep
    return torch.fft.ifft2(spectrum).real.to(x.dtype)


@dataclass
class FilteredTraining:
    """Test accuracy of models trained on clean, low-pass and high-pass filtered data (rows),
    each evaluated on clean, low-pass and high-pass filtered test data (columns)."""

    accuracy: dict[str, dict[str, float]]
    low_radius: int
    high_radius: int

    def __str__(self) -> str:
        kinds = list(self.accuracy)
        lines = [
            f"low-pass keeps |i|,|j| <= {self.low_radius}; high-pass removes |i|,|j| <= "
            f"{self.high_radius} except the mean",
            f"{'trained on':<12}" + "".join(f"{'test ' + k:>16}" for k in kinds),
        ]
        for train_kind, row in self.accuracy.items():
            lines.append(f"{train_kind:<12}" + "".join(f"{100 * row[k]:15.2f}%" for k in kinds))
        return "\n".join(lines)


def filtered_training_experiment(
    model_factory,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    *,
    low_radius: int | None = None,
    high_radius: int | None = None,
    bounds: Bounds = (0.0, 1.0),
    epochs: int = 3,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
) -> FilteredTraining:
    """Trains ``model_factory()`` three times, on clean, low-pass and high-pass filtered training
    images (``band_filter``, clipped to ``bounds``), and reports each model's accuracy on the
    three versions of the test set. Yin et al. find that models trained on high-pass data still
    generalise, i.e. they use features humans cannot see. The radii default to a quarter of the
    smaller image side."""
    from robustkern import training

    (x_train, y_train), (x_test, y_test) = train, test
    side = min(x_train.shape[-2:])
    low_radius = max(1, side // 4) if low_radius is None else low_radius
    high_radius = max(1, side // 4) if high_radius is None else high_radius

    def versions(x: torch.Tensor) -> dict[str, torch.Tensor]:
        lo, hi = bounds
        return {
            "clean": x,
            "low-pass": band_filter(x, low_radius, "low").clamp(lo, hi),
            "high-pass": band_filter(x, high_radius, "high").clamp(lo, hi),
        }

    train_sets, test_sets = versions(x_train), versions(x_test)
    accuracy: dict[str, dict[str, float]] = {}
    for kind, x in train_sets.items():
        torch.manual_seed(seed)
        model = model_factory()
        training.fit(
            model,
            (x, y_train),
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            train_eval=0,
            progress=progress,
        )
        with eval_mode(model), torch.inference_mode():
            accuracy[kind] = {
                name: (model(xt).argmax(dim=1) == y_test).float().mean().item()
                for name, xt in test_sets.items()
            }
    return FilteredTraining(accuracy, low_radius, high_radius)


def _check_heatmap_args(x: torch.Tensor, eps: float, batch_size: int) -> tuple:
    check_images(x)
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be finite and >= 0, got {eps}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return tuple(x.shape)


def heatmap_signs(seed: int, flat_indices: torch.Tensor, n: int, c: int) -> torch.Tensor:
    """(F, n, c) random +-1 signs the heat map uses for these flat map indices: a function of
    (seed, frequency, image) only, so maps do not depend on batching."""
    out = torch.empty(len(flat_indices), n, c)
    for row, index in zip(out, flat_indices.tolist(), strict=True):
        g = torch.Generator().manual_seed(seed * 1_000_003 + index)
        row.copy_(torch.randint(0, 2, (n, c), generator=g) * 2 - 1)
    return out


def _fingerprint(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, **settings) -> str:
    """A hash of the model's state, the data and the settings: what a checkpoint belongs to."""
    h = hashlib.sha256(repr(sorted(settings.items())).encode())
    h.update(repr((tuple(x.shape), str(x.dtype))).encode())
    for t in (x, y, *model.state_dict().values()):
        if isinstance(t, torch.Tensor):
            h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _load_checkpoint(
    path: str | Path | None, fingerprint: str, count: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(errors, done) per representative frequency: from the checkpoint, or fresh."""
    fresh = torch.zeros(count, dtype=torch.int64), torch.zeros(count, dtype=torch.bool)
    if path is None or not Path(path).is_file():
        return fresh
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        errors, done = state["errors"], state["done"]
        stored = state["fingerprint"]
    except Exception as e:  # a damaged or foreign file: say which, never guess
        raise ValueError(f"heat map checkpoint {path} is corrupt or unreadable: {e}") from None
    if stored != fingerprint:
        raise ValueError(
            f"heat map checkpoint {path} was written for another model, data or settings; "
            "delete it or pass another checkpoint path"
        )
    if errors.shape != (count,) or done.shape != (count,):
        raise ValueError(f"heat map checkpoint {path} has the wrong number of frequencies")
    return errors, done
