"""Tables (markdown, CSV) and plots (robust accuracy vs eps per model and attack) from a
results store, and the minimum-norm curve set against fixed-eps attacks at shared points."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from robustkern._io import atomic_write_text, pyplot, save_figure
from robustkern.data import eps_text
from robustkern.sweep.config import load as load_sweep
from robustkern.sweep.engine import prepare
from robustkern.sweep.store import Store

COLUMNS = ("model", "attack", "norm", "eps", "n", "clean %", "robust %", "seconds", "share")


def load_cells(source: str | Path) -> tuple[list[dict], Path, int]:
    """(cells, store, cells missing): every cell of a results store, or of a sweep file its
    grid as the data and weights now define it (a cell computed with other weights, data or
    settings is not this sweep's result and is left out; those not yet computed are counted)."""
    source = Path(source)
    if source.suffix != ".toml":
        with Store(source, create=False) as store:
            return store.cells(), source, 0
    sweep = load_sweep(source)
    hashes = {cell.hash for group in prepare(sweep, torch.device("cpu"))[3] for cell in group}
    with Store(sweep.store, create=False) as store:
        cells = [c for c in store.cells() if c["config_hash"] in hashes]
    return cells, sweep.store, len(hashes) - len(cells)


def table(cells: list[dict], fmt: str = "markdown") -> str:
    """One row per cell; seconds are the wall time of the group the cell was computed in."""
    rows = [
        (c["model"], c["attack"], c["norm"] or "-", eps_text(c["eps"]) if c["norm"] else "-",
         c["n"], _pct(c["clean_accuracy"]), _pct(c["robust_accuracy"]), f"{c['seconds']:.2f}",
         c["share"])
        for c in cells
    ]  # fmt: skip
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
        return buffer.getvalue()
    return _markdown(COLUMNS, rows)


def agreement(cells: list[dict]) -> str:
    """Minimum-norm curves against fixed-eps attacks on the same model, norm and eps: the
    difference in robust accuracy (percentage points; > 0 means the curve is weaker there)."""
    fixed = {_point(c): c for c in cells if c["attack_name"] not in ("min-norm", "none")}
    rows = []
    for c in cells:
        other = fixed.get(_point(c))
        if c["attack_name"] == "min-norm" and other is not None:
            diff = 100 * (c["robust_accuracy"] - other["robust_accuracy"])
            rows.append(
                (c["model"], c["norm"], eps_text(c["eps"]), f"{c['attack']}",
                 _pct(c["robust_accuracy"]), other["attack"], _pct(other["robust_accuracy"]),
                 f"{diff:+.1f}")
            )  # fmt: skip
    if not rows:
        return ""
    header = ("model", "norm", "eps", "curve", "robust %", "fixed-eps", "robust %", "pp")
    return _markdown(header, rows)


def plot(cells: list[dict], path: str | Path) -> Path | None:
    """Robust accuracy vs eps, one panel per norm, one line per model and attack."""
    norms = sorted({c["norm"] for c in cells if c["norm"]})
    if not norms:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(norms), figsize=(5.5 * len(norms), 4), squeeze=False)
    for ax, norm in zip(axes[0], norms, strict=True):
        lines: dict[tuple[str, str], list[dict]] = {}
        for c in cells:
            if c["norm"] == norm and c["n"]:
                lines.setdefault((c["model"], c["attack"]), []).append(c)
        for (model, attack), points in sorted(lines.items()):
            points.sort(key=lambda c: c["eps"])
            ax.plot([c["eps"] for c in points], [100 * c["robust_accuracy"] for c in points],
                    marker="o", label=f"{model} / {attack}")  # fmt: skip
        ax.set(xlabel=f"eps ({norm})", ylabel="robust accuracy (%)", ylim=(-2, 102))
        ax.set_title(f"robust accuracy vs eps, {norm}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def write(source: str | Path, out: str | Path | None = None) -> str:
    """The markdown report of ``source`` (a sweep file or a store); with ``out``, also
    results.md, results.csv and robust_accuracy.png there."""
    cells, store, missing = load_cells(source)
    text = f"# Sweep results ({len(cells)} cells, {store})\n\n"
    if missing:
        text += f"{missing} cell(s) of {source} not computed yet: `robustkern sweep run` it.\n\n"
    text += table(cells)
    agree = agreement(cells)
    if agree:
        text += "\n## Minimum-norm curve against fixed-eps attacks\n\n" + agree
    if out is not None:
        out = Path(out)
        atomic_write_text(out / "results.md", text)
        atomic_write_text(out / "results.csv", table(cells, "csv"))
        plot(cells, out / "robust_accuracy.png")
    return text


def _point(cell: dict) -> tuple:
    """Cells comparable in the agreement table: the same model weights and data (by content,
    as a store may hold several versions under one name), norm and eps."""
    config = cell["config"]
    return config["model"]["sha256"], config["data"]["sha256"], cell["norm"], cell["eps"]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _markdown(header: tuple, rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
