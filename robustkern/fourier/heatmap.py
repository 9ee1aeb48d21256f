"""The Fourier heat map (Yin et al.): error under each single-frequency perturbation, resumable
from a checkpoint, its summary, radial profile and plot."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from robustkern import ops, resume
from robustkern._io import pyplot, save_figure
from robustkern._progress import progress_bar
from robustkern.checks import check_images, check_model_labels
from robustkern.fourier.basis import (
    conjugate_index,
    distinct_frequencies,
    frequency_grid,
    heatmap_signs,
)
from robustkern.modes import eval_mode, model_device
from robustkern.types import Bounds


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
                resume.write_state(
                    checkpoint, {"fingerprint": fingerprint, "errors": errors, "done": done}
                )
    counts = torch.full((h * w,), -1, dtype=torch.int64)
    counts[reps] = errors
    counts[conjugate_index(h, w)[reps]] = errors
    counts = counts.view(h, w)
    error_map = counts.double().div(max(n, 1)).float() if n else torch.full((h, w), math.nan)
    error_map[counts < 0] = math.nan
    return (error_map, counts) if return_counts else error_map


def summary(error_map: torch.Tensor, counts: torch.Tensor, *, eps: float, n: int) -> dict:
    """A heat map as plain JSON values: the settings, the (H, W) map and error counts (NaN /
    -1 where a strided map did not evaluate), the mean and largest error over the evaluated
    frequencies, the worst frequency (i, j) and the radial profile (low to high)."""
    h, w = error_map.shape
    evaluated = error_map[~error_map.isnan()]
    worst = divmod(int(error_map.nan_to_num(-1.0).argmax()), w)
    profile = radial_profile(error_map)
    return {
        "eps": eps, "n": n, "shape": [h, w],
        "convention": "index (r, s) is frequency (r - H // 2, s - W // 2); see robustkern.fourier",
        "error": [[None if v != v else v for v in row] for row in error_map.tolist()],
        "errors": counts.tolist(),
        "mean_error": evaluated.mean().item(), "max_error": evaluated.max().item(),
        "worst_frequency": [worst[0] - h // 2, worst[1] - w // 2],
        "radial_profile": [None if v != v else v for v in profile.tolist()],
    }  # fmt: skip


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


def _check_heatmap_args(x: torch.Tensor, eps: float, batch_size: int) -> tuple:
    check_images(x)
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be finite and >= 0, got {eps}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return tuple(x.shape)


def _fingerprint(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, **settings) -> str:
    """What a checkpoint belongs to: the model's state, the data and the settings."""
    return resume.digest(model, x, y, settings)


def _load_checkpoint(
    path: str | Path | None, fingerprint: str, count: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(errors, done) per representative frequency: from the checkpoint, or fresh."""
    fresh = torch.zeros(count, dtype=torch.int64), torch.zeros(count, dtype=torch.bool)
    if path is not None:
        resume.clear_stale(path)  # this run writes the checkpoint from now on
    state = resume.read_state(path, "heat map checkpoint") if path is not None else None
    if state is None:
        return fresh
    what = "model, data or settings"  # one fingerprint covers them all
    resume.check_same({what: state.get("fingerprint")}, {what: fingerprint}, path,
                      "heat map checkpoint")  # fmt: skip
    errors, done = state.get("errors"), state.get("done")
    if getattr(errors, "shape", None) != (count,) or getattr(done, "shape", None) != (count,):
        raise ValueError(f"heat map checkpoint {path} has the wrong number of frequencies")
    return errors, done
