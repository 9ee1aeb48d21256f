"""Checks that look inside a model: capacity, first-layer filters, single units against random
directions (Szegedy et al. section 3), and the per-layer Lipschitz bounds (Szegedy et al.
section 4.3)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from robustkern import spectral
from robustkern._io import pyplot
from robustkern.modes import eval_mode
from robustkern.suite.budget import Knob
from robustkern.suite.core import (
    OVERHEAD,
    Outcome,
    Skip,
    Suite,
    check,
    image_grid,
    percent,
    smoothness,
)

RANDOM_FILTERS = 256  # random initialisations the filter scores are compared with
MIN_GRADED = 5  # smaller filters are scored and shown, but not graded


@check(
    "capacity", "Capacity: parameters against training examples", """
    The checklist's first rule: a model with more parameters than training examples can
    memorise its data instead of learning the task, and nothing in its test accuracy says
    which. Pass: at most one parameter per training example (a rule of thumb, so above it is a
    warning). The tables give the parameters by layer kind and every weight's norm: very large
    norms make large Lipschitz constants likely (see the spectral check).""",
    cost=lambda suite, name, sizes: 0.2, priority=8,
)  # fmt: skip
def capacity(suite: Suite, name: str, model: nn.Module, sizes) -> Outcome:
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    rows = [
        [
            key,
            "x".join(map(str, p.shape)),
            p.numel(),
            f"{p.detach().float().norm():.4g}",
            f"{p.detach().float().pow(2).mean().sqrt():.4g}",
        ]
        for key, p in model.named_parameters()
    ]
    tables = [_by_kind(model), {
        "title": f"every parameter tensor ({len(rows)}) and its norms",
        "columns": ["parameter", "shape", "count", "Frobenius norm", "RMS"],
        "rows": rows,
        "collapsed": True,
    }]  # fmt: skip
    figures = {"parameters": params, "total_norm": _total_norm(model)}
    if suite.x_train is None:
        summary = f"{params:,} parameters; the training set size was not given"
        return Outcome("info", summary, figures, tables)
    n = len(suite.x_train)
    figures.update(training_examples=n, parameters_per_example=params / n)
    summary = f"{params:,} parameters for {n:,} training examples ({params / n:.3g} per example)"
    return Outcome("pass" if params <= n else "warn", summary, figures, tables)


def _by_kind(model: nn.Module) -> dict:
    """A short table: layers, parameters and their norm per layer type."""
    kinds: dict[str, list] = {}
    for m in model.modules():
        own = [p for p in m.parameters(recurse=False) if p.requires_grad]
        if own:
            row = kinds.setdefault(type(m).__name__, [0, 0, 0.0])
            row[0] += 1
            row[1] += sum(p.numel() for p in own)
            row[2] += sum(p.detach().float().pow(2).sum().item() for p in own)
    rows = [[k, layers, f"{count:,}", f"{sq**0.5:.4g}"] for k, (layers, count, sq) in kinds.items()]
    return {
        "title": "parameters by layer kind",
        "columns": ["layer kind", "layers", "parameters", "Frobenius norm"],
        "rows": rows,
    }


def _total_norm(model: nn.Module) -> float:
    squares = [p.detach().float().pow(2).sum() for p in model.parameters()]
    return float(torch.stack(squares).sum().sqrt()) if squares else 0.0


@check(
    "first_layer_filters", "First-layer filters", """
    Filters that look like noise suggest a model that did not learn much from its data, or
    that fits high-frequency patterns a human would not use. Each filter gets two scores, the
    share of its spectral energy below half the Nyquist frequency and its correlation with a
    blurred copy of itself; a filter is noise-like when neither score exceeds the 95th
    percentile of the layer's own random initialisations. Pass below 25 % noise-like, warn
    below 50 %; filters smaller than 5x5 are shown but not graded.""",
    cost=lambda suite, name, sizes: 1.0, priority=9,  # 256 random initialisations scored
)  # fmt: skip
def first_layer_filters(suite: Suite, name: str, model: nn.Module, sizes) -> Outcome:
    layer, weight, what = _first_layer(model, suite.x.shape[1:])
    ours = _filter_scores(weight)
    random = _filter_scores(_random_like(layer, weight))
    # a filter is noise-like when neither score stands out from the random initialisations'
    limits = [torch.quantile(s, 0.95) for s in random]
    noisy = (ours[0] <= limits[0]) & (ours[1] <= limits[1])
    share = noisy.float().mean().item()
    by_chance = ((random[0] <= limits[0]) & (random[1] <= limits[1])).float().mean().item()
    verdict = "pass" if share < 0.25 else "warn" if share < 0.5 else "fail"
    if min(weight.shape[-2:]) < MIN_GRADED:
        verdict = "info"  # a 3x3 filter has too few pixels to tell structure from noise
    shown = min(len(weight), 64)
    fig = image_grid(
        weight[:shown],
        [f"{a:.2f}/{b:.2f}" for a, b in zip(*(s[:shown].tolist() for s in ours), strict=True)],
        signed=True,
        outlined=noisy[:shown].tolist(),
    )
    image = suite.save(
        fig,
        "filters",
        name,
        caption=(
            f"{what}: {shown} of {len(weight)} filters (grey = 0); titles: low-frequency "
            "energy share / correlation with a blurred copy; red frame: noise-like"
        ),
    )
    figures = {
        "layer": what,
        "filters": len(weight),
        "noise_like": int(noisy.sum()),
        "noise_like_share": share,
        "random_noise_like_share": by_chance,
        "low_frequency_share": ours[0].mean().item(),
        "smoothness": ours[1].mean().item(),
        "random_low_frequency_share": random[0].mean().item(),
        "random_smoothness": random[1].mean().item(),
    }
    summary = (
        f"{int(noisy.sum())} of {len(weight)} filters of {what} look like noise ({percent(share)};"
        f" random initialisations: {percent(by_chance)}); low-frequency share "
        f"{ours[0].mean():.2f} (random {random[0].mean():.2f}), smoothness "
        f"{ours[1].mean():.2f} (random {random[1].mean():.2f})"
    )
    if verdict == "info":
        summary += f"; not graded: filters under {MIN_GRADED}x{MIN_GRADED} are too small to judge"
    return Outcome(verdict, summary, figures, images=[image])


def _first_layer(model: nn.Module, shape) -> tuple[nn.Module, torch.Tensor, str]:
    """(the layer, its filters, a description): the first conv's weight (O, I, kh, kw), or a
    first linear layer's rows as images."""
    for key, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            weight = m.weight.detach().float().cpu()
            return m, weight, f"layer {key} (Conv2d {tuple(weight.shape)})"
        if isinstance(m, nn.Linear):
            if m.in_features != shape.numel():
                break
            weight = m.weight.detach().float().cpu().view(-1, *shape)
            return m, weight, f"layer {key} (Linear, rows as images)"
    raise Skip("the model's first weight layer is neither a Conv2d nor a Linear on the image")


def _random_like(layer: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """RANDOM_FILTERS filters drawn by the layer's own initialisation (reset_parameters)."""
    layer = copy.deepcopy(layer).cpu().float()
    torch.manual_seed(0)
    draws = []
    while sum(len(d) for d in draws) < RANDOM_FILTERS:
        layer.reset_parameters()
        draws.append(layer.weight.detach().clone().view(-1, *weight.shape[1:]))
    return torch.cat(draws)[:RANDOM_FILTERS]


def _filter_scores(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per filter: the share of its spectral energy (zero-padded DFT, all input channels) within
    half the Nyquist radius, and its correlation with a blurred copy (``smoothness``)."""
    size = max(8, 2 * max(weight.shape[-2:]))
    power = torch.fft.fft2(weight, s=(size, size)).abs().pow(2).sum(1)  # (O, size, size)
    f = torch.fft.fftfreq(size)
    low = (f[:, None] ** 2 + f[None, :] ** 2).sqrt() <= 0.25
    share = power[:, low].sum(1) / power.flatten(1).sum(1).clamp_min(1e-30)
    return share, smoothness(weight)


@check(
    "units", "Unit analysis (Szegedy et al. section 3)", """
    Szegedy et al. found that the test images maximising a single unit of a layer are no more
    semantically alike than those maximising a random direction: the space, not the units,
    carries the meaning. Shown side by side, with how often the top images share a label.""",
    knobs={"images": Knob(200, 2000)}, priority=13, weight=0.3,
    cost=lambda suite, name, sizes: (
        suite.costs[name].forwards(suite.images(sizes), suite.images(sizes) / 256) + OVERHEAD
    ),
)  # fmt: skip
def units(suite: Suite, name: str, model: nn.Module, sizes) -> Outcome:
    layer_name, layer = _unit_layer(model, suite.layer)
    x, y = suite.first(sizes)
    features = _features(model, layer, x).flatten(1)
    count, top = 4, 8
    chosen = features.var(0).topk(min(count, features.shape[1])).indices
    g = torch.Generator().manual_seed(suite.seed)
    random = torch.randn(features.shape[1], count, generator=g).to(features)
    directions = torch.cat(
        [
            torch.eye(features.shape[1], device=features.device)[:, chosen],
            random / random.norm(dim=0),
        ],
        1,
    )
    best = (features @ directions).topk(top, dim=0).indices.T  # (directions, top)
    purity = [(y[idx].bincount().max().item() / top) for idx in best.tolist()]
    labels = [f"unit {u}" for u in chosen.tolist()] + [f"random {k}" for k in range(count)]
    fig = image_grid(
        x[best.flatten()],
        [str(v) for v in y[best.flatten()].tolist()],
        columns=top,
        row_labels=labels,
    )
    image = suite.save(
        fig,
        "units",
        name,
        caption=(
            f"{layer_name}: the {top} test images that most activate single units (the {count} "
            "most variable) and random directions; title: true label"
        ),
    )
    unit_purity, random_purity = sum(purity[:count]) / count, sum(purity[count:]) / count
    figures = {
        "layer": layer_name,
        "units": chosen.tolist(),
        "unit_label_purity": unit_purity,
        "random_label_purity": random_purity,
        "images": len(x),
    }
    summary = (
        f"{layer_name}: top images share a label {percent(unit_purity)} of the time for single "
        f"units, {percent(random_purity)} for random directions (Szegedy et al.: no difference "
        "means the units are not special)"
    )
    return Outcome("info", summary, figures, images=[image])


def _unit_layer(model: nn.Module, wanted: str | None) -> tuple[str, nn.Module]:
    """The named layer, else the input of the last Linear (the penultimate activations)."""
    named = dict(model.named_modules())
    if wanted is not None:
        if wanted not in named:
            raise ValueError(f"layer {wanted!r} is not in the model; it has {list(named)[1:]}")
        return wanted, named[wanted]
    last = [(k, m) for k, m in named.items() if isinstance(m, nn.Linear)]
    if not last:
        raise Skip("no Linear layer to take the penultimate activations from: pass a layer")
    return f"input of {last[-1][0]}", last[-1][1]


def _features(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's output, or for a Linear its input, for every image (eval mode)."""
    found = []
    take_input = isinstance(layer, nn.Linear)

    def hook(module, args, output):
        found.append((args[0] if take_input else output).detach())

    handle = layer.register_forward_hook(hook)
    try:
        with eval_mode(model), torch.no_grad():
            for xb in x.split(256):
                model(xb)
    finally:
        handle.remove()
    return torch.cat(found).float()


def _lipschitz_cost(suite: Suite, name: str) -> float:
    """The conv norms dominate: about 0.15 s per conv at 32 px on 2 CPU threads (ResNet-18:
    2.5 s), growing slowly with the image (5.9 s at 224 px; bench_spectral)."""
    convs = sum(isinstance(m, nn.Conv2d) for m in suite.models[name].modules())
    pixels = suite.x.shape[-2] * suite.x.shape[-1]
    return OVERHEAD + 0.15 * convs * (pixels / 1024) ** 0.25


@check(
    "lipschitz", "Spectral analysis: per-layer Lipschitz bounds", """
    Szegedy et al. (section 4.3) bound the network's sensitivity by the product of its layers'
    upper Lipschitz constants. The model's forward is traced and every layer bounded: conv
    layers' operator norms from the Fourier transform of their kernels (certified upper bounds,
    stride and padding included, eval-mode BatchNorm folded in), residual additions as the sum
    of their branches' bounds. A large bound does not prove instability, but it shows which
    layers could amplify a perturbation; a layer that cannot be bounded is named (warn).""",
    cost=lambda suite, name, sizes: _lipschitz_cost(suite, name), priority=6,
)  # fmt: skip
def lipschitz(suite: Suite, name: str, model: nn.Module, sizes) -> Outcome:
    table = spectral.lipschitz_table(model, tuple(suite.x.shape[1:]))
    uppers = [r.upper for r in table.rows]
    rows = [
        [r.name, r.kind, "x".join(map(str, r.weight_shape or ())), f"{r.upper:.4g}", r.note]
        for r in table.rows
    ]
    # a log axis holds finite positive bounds only: inf (not bounded) and 0 are marked in red
    drawn = [i for i, u in enumerate(uppers) if 0 < u < float("inf")]
    low = min((uppers[i] for i in drawn), default=1.0) / 4
    high = max((uppers[i] for i in drawn), default=1.0) * 4
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(rows) + 1.5), 3.2))
    ax.set_yscale("log")
    ax.set_ylim(low, high)
    ax.set_xlim(-0.6, len(rows) - 0.4)  # the markers, not just the bars
    ax.bar(drawn, [uppers[i] - low for i in drawn], bottom=low, color="tab:blue")
    for i, u in enumerate(uppers):
        if not 0 < u < float("inf"):
            y = high / 2 if u > 0 else low * 2
            ax.text(i, y, f"{u:.3g}", color="tab:red", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(rows)), [r.name for r in table.rows], rotation=60, fontsize=7)
    ax.set_ylabel("upper Lipschitz bound (L2)")
    ax.set_title(f"network bound {table.product:.4g}")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    caption = "per-layer upper bounds (log scale); red: not bounded (inf) or 0"
    image = suite.save(fig, "lipschitz", name, caption=caption)
    unbounded = table.unbounded()
    finite = table.product < float("inf")
    summary = f"Lipschitz upper bound of the network (L2): {table.product:.4g}"
    if not finite:
        why = [f"{r.name} ({r.note.removeprefix('cannot bound: ')})" for r in unbounded[:3]]
        named = "; ".join(why)
        more = f" and {len(unbounded) - 3} more" if len(unbounded) > 3 else ""
        summary += f": could not bound {named}{more}" if unbounded else " (the bound overflowed)"
    figures = {"product": table.product, "layers": len(rows),
               "unbounded": [r.name for r in unbounded]}  # fmt: skip
    columns = ["layer", "kind", "weight", "upper bound", "note"]
    return Outcome(
        "info" if finite else "warn",
        summary,
        figures,
        [{"title": "per-layer upper Lipschitz bounds", "columns": columns, "rows": rows}],
        [image],
    )
