"""Checks under natural shifts and single-frequency noise: the Fourier heat map (Yin et al.) and
the common corruptions (Hendrycks & Dietterich)."""

from __future__ import annotations

import math

import torch
from torch import nn

from robustkern import corruptions, fourier
from robustkern.stats import percent_with_interval
from robustkern.suite.budget import Knob
from robustkern.suite.core import OVERHEAD, Outcome, Suite, check, image_grid, percent

EXAMPLE_SEVERITY = 3


def fourier_eps(shape) -> float:
    """Yin et al.'s L2 norm 4.0 per channel for 32x32 images, scaled by the side length (the
    basis image's pixels shrink as 1/side at a fixed norm)."""
    return round(4.0 * math.sqrt(shape[-2] * shape[-1] / 1024), 4)


def _stride(suite: Suite, sizes) -> int:
    """The heat map's stride that leaves about ``frequencies`` evaluated per side."""
    return math.ceil(max(suite.x.shape[-2:]) / sizes["frequencies"])


def _fourier_cost(suite: Suite, name: str, sizes) -> float:
    h, w = suite.x.shape[-2:]
    stride = _stride(suite, sizes)
    frequencies = math.ceil(h / stride) * math.ceil(w / stride) / 2 + 1  # one per conjugate pair
    images = suite.images(sizes) * frequencies  # perturbed images, 256 per call
    return 1.2 * suite.costs[name].forwards(images, images / 256) + OVERHEAD  # and the bases


@check(
    "fourier", "Fourier heat map", """
    Yin et al.: the test error when one Fourier basis image of fixed L2 norm is added to every
    test image, per frequency (on a coarser grid of frequencies when the budget cannot pay for
    every one of a large image). Naturally trained models are robust to low-frequency and
    fragile to mid/high-frequency perturbations; adversarial training moves the fragility to
    low frequencies (fog, contrast).""",
    knobs={"images": Knob(20, 200), "frequencies": Knob(8, 256, keep=0.7)},
    cost=_fourier_cost, priority=5, weight=1.0,
)  # fmt: skip
def fourier_heatmap(suite: Suite, name: str, model: nn.Module, sizes) -> Outcome:
    x, y = suite.first(sizes)
    eps, stride = fourier_eps(x.shape), _stride(suite, sizes)
    error_map, counts = fourier.heatmap(model, x, y, eps=eps, bounds=suite.bounds,
                                        seed=suite.seed, progress=False, stride=stride,
                                        return_counts=True)  # fmt: skip
    found = fourier.summary(error_map, counts, eps=eps, n=len(x))
    profile = fourier.radial_profile(error_map)
    third = max(1, len(profile) // 3)
    low, high = profile[:third].nanmean().item(), profile[-third:].nanmean().item()
    path, image = suite.image(
        "fourier",
        name,
        caption=(
            f"test error per Fourier basis direction (L2 norm {eps:g} per channel, random sign), "
            "zero frequency at the centre; right: mean over rings, low to high frequency"
        ),
    )
    fourier.plot_heatmap(error_map, path, title=f"{name}: Fourier heat map, eps {eps:g}")
    evaluated = int((counts >= 0).sum())
    kept = ("eps", "mean_error", "max_error", "worst_frequency", "radial_profile")
    figures = {k: found[k] for k in kept} | {
        "images": len(x), "stride": stride, "frequencies": evaluated,
        "low_frequency_error": low, "high_frequency_error": high,
    }  # fmt: skip
    worst = tuple(found["worst_frequency"])
    summary = (
        f"mean error {percent(found['mean_error'])} over {evaluated} frequencies"
        f"{f' (stride {stride})' if stride > 1 else ''} on {len(x)} images; low-frequency "
        f"third {percent(low)}, high-frequency third {percent(high)}; worst "
        f"{percent(found['max_error'])} at {worst}"
    )
    return Outcome("info", summary, figures, images=[image])


def _corruptions_cost(suite: Suite, name: str, sizes) -> float:
    c, images = suite.costs[name], suite.images(sizes)
    scored = 2 if name != next(iter(suite.models)) else 1  # the first model is the baseline
    cells = len(corruptions.CORRUPTIONS) * len(corruptions.SEVERITIES)
    calls = cells * scored * math.ceil(images / 256)
    examples = OVERHEAD if scored == 1 else 0.0  # the example figure, with the first model
    return (cells * images * c.corrupt + c.forwards(cells * scored * images, calls)
            + 2 * OVERHEAD + examples)  # fmt: skip


@check(
    "corruptions", "Common corruptions", """
    Accuracy, with 95 % intervals, under the 15 common corruptions of ImageNet-C / CIFAR-10-C
    (noise, blur, weather, digital), their 4 extra ones and low- and high-pass filtering, at five
    severities each (Hendrycks & Dietterich), with the corruption error (mCE over the 15)
    relative to the first model when there are several. Robustness to adversarial
    perturbations and to these shifts do not come together for free.""",
    knobs={"images": Knob(50, 500)}, cost=_corruptions_cost, priority=3, weight=2.0,
)  # fmt: skip
def common_corruptions(suite: Suite, name: str, model: nn.Module, sizes) -> Outcome:
    x, y = suite.first(sizes)
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
    images = [image]
    if baseline is None:  # the examples do not depend on the model: shown with the first
        images.append(_examples(suite, x[:1], list(report.accuracy), report.table, name))
    n = len(x)
    rows = [
        [c, *(percent_with_interval(round(a * n), n) for a in row), percent(sum(row) / len(row))]
        for c, row in report.accuracy.items()
    ]
    severities = len(next(iter(report.accuracy.values())))
    columns = ["corruption", *(f"severity {s + 1}" for s in range(severities)), "mean"]
    worst = min(report.accuracy, key=lambda c: sum(report.accuracy[c]))
    summary = (
        f"clean {percent_with_interval(round(report.clean_accuracy * n), n)} on {n} images, "
        "mean under the 15 ImageNet-C corruptions "
        f"{percent(report.group_accuracy('ImageNet-C'))}; worst: {worst} "
        f"({percent(sum(report.accuracy[worst]) / severities)} on average)"
    )
    if baseline is not None:
        summary += f"; mCE {100 * report.mce:.1f} % relative to {first}"
    figures = report.to_dict()
    return Outcome(
        "info",
        summary,
        figures,
        [
            {
                "title": f"accuracy on {n} test images (95 % intervals)",
                "columns": columns,
                "rows": rows,
            }
        ],
        images,
    )


def _examples(suite: Suite, x, names: list[str], table: str, name: str) -> dict:
    """One test image, clean and under each corruption at severity ``EXAMPLE_SEVERITY``."""
    lo, hi = suite.bounds
    shown = [x] + [
        corruptions.corrupt(x, c, EXAMPLE_SEVERITY, generator=suite.generator(),
                            bounds=suite.bounds, table=table)
        for c in names
    ]  # fmt: skip
    fig = image_grid((torch.cat(shown) - lo) / (hi - lo), ["clean", *names], columns=6, size=1.4)
    return suite.save(
        fig,
        "corruption_examples",
        name,
        caption=f"the first test image under each corruption at severity {EXAMPLE_SEVERITY} "
        f"({table} severities)",
    )
