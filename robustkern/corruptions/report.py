"""Accuracy under every corruption and severity, the corruption errors and mCE against a
baseline (``corruption_report``), and their plot."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from robustkern._io import pyplot, save_figure
from robustkern._progress import progress_bar
from robustkern.checks import check_images, check_model_labels
from robustkern.corruptions.parameters import (
    CORRUPTIONS,
    NAMES_15,
    NAMES_EXTRA,
    PARAMETERS,
    SEVERITIES,
)
from robustkern.corruptions.transforms import corrupt, table_for
from robustkern.modes import eval_mode, model_device
from robustkern.types import Bounds


@dataclass
class CorruptionReport:
    """Accuracy per corruption and severity (``accuracy[name][severity - 1]``), the clean
    accuracy, and, against a baseline, Hendrycks & Dietterich's corruption errors:
    ``CE_c = sum_s E_s,c / sum_s E^base_s,c`` and the relative
    ``sum_s (E_s,c - E_clean) / sum_s (E^base_s,c - E^base_clean)``. mCE and relative mCE
    average them over the ImageNet-C 15 (``NAMES_15``) the report has, as published numbers
    do; the extra four (``NAMES_EXTRA``) and the filters are shown apart (``groups``)."""

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

    def groups(self) -> dict[str, list[str]]:
        """The report's corruptions by group: "ImageNet-C" (of ``NAMES_15``, their mCE),
        "extra" (of ``NAMES_EXTRA``), "other" (the filters); empty groups left out."""
        found = {
            "ImageNet-C": [c for c in self.accuracy if c in NAMES_15],
            "extra": [c for c in self.accuracy if c in NAMES_EXTRA],
            "other": [c for c in self.accuracy if c not in NAMES_15 + NAMES_EXTRA],
        }
        return {group: names for group, names in found.items() if names}

    def group_accuracy(self, group: str) -> float:
        """Accuracy averaged over a group's corruptions and severities (NaN if absent)."""
        return _mean(a for c in self.groups().get(group, []) for a in self.accuracy[c])

    def corruption_errors(self) -> dict[str, float]:
        return self._errors(relative=False)

    def relative_corruption_errors(self) -> dict[str, float]:
        return self._errors(relative=True)

    @property
    def mce(self) -> float:
        """Mean corruption error over the ImageNet-C 15 in the report (NaN if none)."""
        return _mean(v for c, v in self.corruption_errors().items() if c in NAMES_15)

    @property
    def relative_mce(self) -> float:
        return _mean(v for c, v in self.relative_corruption_errors().items() if c in NAMES_15)

    def extra_mce(self, relative: bool = False) -> float:
        """The mean (relative) corruption error over the extra four in the report."""
        return _mean(v for c, v in self._errors(relative).items() if c in NAMES_EXTRA)

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
        d["groups"] = self.groups()
        d["group_accuracy"] = {g: self.group_accuracy(g) for g in d["groups"]}
        if self.baseline is not None:
            d["baseline_clean_accuracy"] = self.baseline.clean_accuracy
            d["corruption_errors"] = self.corruption_errors()
            d["relative_corruption_errors"] = self.relative_corruption_errors()
            d["mce"], d["relative_mce"] = self.mce, self.relative_mce
            d["extra_mce"], d["extra_relative_mce"] = self.extra_mce(), self.extra_mce(True)
        return d

    def __str__(self) -> str:
        sev = len(next(iter(self.accuracy.values()), []))
        head = f"{'corruption':<18}" + "".join(f"{'s' + str(s + 1):>8}" for s in range(sev))
        head += f"{'mean':>8}" + (f"{'CE':>8}{'rel CE':>8}" if self.baseline else "")
        lines = [
            f"clean accuracy {100 * self.clean_accuracy:.2f} % on {self.n} images "
            f"(severity table: {self.table})",
            head,
        ]
        ce = self.corruption_errors() if self.baseline else {}
        rce = self.relative_corruption_errors() if self.baseline else {}
        for group, names in self.groups().items():
            lines.append(f"-- {group}")
            for name in names:
                row = self.accuracy[name]
                line = f"{name:<18}" + "".join(f"{100 * a:8.2f}" for a in row)
                line += f"{100 * _mean(row):8.2f}"
                if self.baseline:
                    line += f"{100 * ce.get(name, math.nan):8.1f}"
                    line += f"{100 * rce.get(name, math.nan):8.1f}"
                lines.append(line)
            tail = f"   mean accuracy {100 * self.group_accuracy(group):.2f} %"
            if self.baseline and group == "ImageNet-C":
                tail += (
                    f"; mCE {100 * self.mce:.1f} %, relative mCE {100 * self.relative_mce:.1f} %"
                )
            elif self.baseline and group == "extra":
                tail += f"; mean CE {100 * self.extra_mce():.1f} %"
            lines.append(tail)
        lines.append(f"mean accuracy over all corruptions {100 * self.mean_accuracy:.2f} %")
        return "\n".join(lines)


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
    """Accuracy of ``model`` on ``(x, y)`` (N, C, H, W) in ``bounds``, int64 labels (N,),
    under each of ``corruptions`` (default: all, the ImageNet-C 15, the extra 4 and the
    filters) at each of ``severities``, with the ``table`` of ``corrupt`` (see
    ``CorruptionReport``: mCE over the 15). A baseline model is evaluated on the very same
    corrupted images; a baseline report must come from the same data. Deterministic for a
    given ``seed`` and ``batch_size``. The model(s) run in eval mode, restored after."""
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
