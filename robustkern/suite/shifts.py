"""Checks under natural shifts and single-frequency noise: the Fourier heat map (Yin et al.) and
the common corruptions (Hendrycks & Dietterich)."""

from __future__ import annotations

import math

from torch import nn

from robustkern import corruptions, fourier
from robustkern.suite.core import Outcome, Suite, percent


def fourier_eps(shape) -> float:
    """Yin et al.'s L2 norm 4.0 per channel for 32x32 images, scaled by the side length (the
    basis image's pixels shrink as 1/side at a fixed norm)."""
    return round(4.0 * math.sqrt(shape[-2] * shape[-1] / 1024), 4)


def fourier_heatmap(suite: Suite, name: str, model: nn.Module) -> Outcome:
    x, y = suite.subset(200, 40)
    eps = fourier_eps(x.shape)
    error_map = fourier.heatmap(
        model, x, y, eps=eps, bounds=suite.bounds, seed=suite.seed, progress=False
    )
    profile = fourier.radial_profile(error_map)
    third = max(1, len(profile) // 3)
    low, high = profile[:third].mean().item(), profile[-third:].mean().item()
    h, w = error_map.shape
    worst = divmod(int(error_map.argmax()), w)
    path, image = suite.image(
        "fourier",
        name,
        caption=(
            f"test error per Fourier basis direction (L2 norm {eps:g} per channel, random sign), "
            "zero frequency at the centre; right: mean over rings, low to high frequency"
        ),
    )
    fourier.plot_heatmap(error_map, path, title=f"{name}: Fourier heat map, eps {eps:g}")
    figures = {
        "eps": eps,
        "images": len(x),
        "mean_error": error_map.mean().item(),
        "max_error": error_map.max().item(),
        "worst_frequency": [worst[0] - h // 2, worst[1] - w // 2],
        "low_frequency_error": low,
        "high_frequency_error": high,
        "radial_profile": profile.tolist(),
    }
    summary = (
        f"mean error {percent(error_map.mean().item())} over frequencies; low-frequency third "
        f"{percent(low)}, high-frequency third {percent(high)}; worst "
        f"{percent(error_map.max().item())} at ({worst[0] - h // 2}, {worst[1] - w // 2})"
    )
    return Outcome("info", summary, figures, images=[image])


def common_corruptions(suite: Suite, name: str, model: nn.Module) -> Outcome:
    x, y = suite.subset(500, 200)
    first = next(iter(suite.models))
    baseline = suite.models[first] if name != first else None
    report = corruptions.corruption_report(
        model, x, y, baseline=baseline, bounds=suite.bounds, seed=suite.seed, progress=False
    )
    path, image = suite.image(
        "corruptions",
        name,
        caption=(
            f"accuracy per corruption and severity ({report.table} severities)"
            + (f"; dashed: {first}" if baseline is not None else "")
        ),
    )
    corruptions.plot_report(report, path)
    rows = [
        [c, *(percent(a) for a in row), percent(sum(row) / len(row))]
        for c, row in report.accuracy.items()
    ]
    severities = len(next(iter(report.accuracy.values())))
    columns = ["corruption", *(f"severity {s + 1}" for s in range(severities)), "mean"]
    worst = min(report.accuracy, key=lambda c: sum(report.accuracy[c]))
    summary = (
        f"clean {percent(report.clean_accuracy)}, mean under corruptions "
        f"{percent(report.mean_accuracy)}; worst: {worst} "
        f"({percent(sum(report.accuracy[worst]) / severities)} on average)"
    )
    if baseline is not None:
        summary += f"; mCE {100 * report.mce:.1f} % relative to {first}"
    figures = report.to_dict()
    return Outcome(
        "info",
        summary,
        figures,
        [{"title": f"accuracy on {len(x)} test images", "columns": columns, "rows": rows}],
        [image],
    )
