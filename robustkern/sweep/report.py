"""Tables (markdown, CSV) and plots (robust accuracy vs eps per model and attack) from a
results store, every accuracy with its 95 % interval, and the minimum-norm curve set against
fixed-eps attacks at shared points (with a paired test on the same examples)."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

import torch

from robustkern import stats
from robustkern._io import atomic_write_text, pyplot, save_figure
from robustkern.data import eps_text
from robustkern.sweep.budget import with_limit
from robustkern.sweep.config import DISTANCE_ATTACKS
from robustkern.sweep.config import load as load_sweep
from robustkern.sweep.engine import prepare
from robustkern.sweep.grid import fingerprints, plan
from robustkern.sweep.store import Store

COLUMNS = ("model", "attack", "norm", "eps", "n", "clean, 95 % interval",
           "robust, 95 % interval", "seconds", "share")  # fmt: skip
CSV_COLUMNS = ("model", "attack", "norm", "eps", "n", "clean %", "clean low %", "clean high %",
               "robust %", "robust low %", "robust high %", "seconds", "share")  # fmt: skip


def load_cells(source: str | Path) -> tuple[list[dict], Path, int]:
    """(cells, store, cells missing): every cell of a results store, or of a sweep file its
    grid as the data and weights now define it (a cell computed with other weights, data or
    settings is not this sweep's result and is left out; those not yet computed are counted).
    A sweep file with ``[run] budget`` also takes the cells of its runs on fewer examples (the
    first n, for each n the store holds)."""
    source = Path(source)
    if source.suffix != ".toml":
        with Store(source, create=False) as store:
            return store.cells(), source, 0
    sweep = load_sweep(source)
    x, y, nets, groups = prepare(sweep, torch.device("cpu"))
    with Store(sweep.store, create=False) as store:
        stored = store.cells()
    grids = [groups]
    if sweep.budget is not None:
        for n in sorted({c["n"] for c in stored if 0 < c["n"] < len(x)}):
            grids.append(plan(with_limit(sweep, n), fingerprints(x[:n], y[:n], nets)))
    # one set of hashes per grid point: the same model, attack and eps at each size n
    points = [{c.hash for c in same} for same in zip(*(_flat(g) for g in grids), strict=True)]
    hashes = set().union(*points)
    cells = [c for c in stored if c["config_hash"] in hashes]
    found = {c["config_hash"] for c in cells}
    return cells, sweep.store, sum(1 for point in points if not point & found)


def _flat(groups: list[list]) -> list:
    return [cell for group in groups for cell in group]


def table(cells: list[dict], fmt: str = "markdown") -> str:
    """One row per cell, each accuracy with its 95 % interval (markdown: "94.2 % [92.0, 95.9]";
    CSV: separate low and high columns); seconds are the wall time of the cell's group."""
    rows = []
    for c in cells:
        where = (c["model"], c["attack"], c["norm"] or "-",
                 eps_text(c["eps"], norm=c["norm"]) if c["norm"] else "-", c["n"])  # fmt: skip
        if fmt == "csv":
            accuracies = tuple(_pct(c[f"{kind}{part}"]) for kind in ("clean", "robust")
                               for part in ("_accuracy", "_low", "_high"))  # fmt: skip
        else:
            accuracies = (_with_interval(c, "clean"), _with_interval(c, "robust"))
        rows.append((*where, *accuracies, f"{c['seconds']:.2f}", c["share"]))
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(CSV_COLUMNS)
        writer.writerows(rows)
        return buffer.getvalue()
    return _markdown(COLUMNS, rows)


def agreement(cells: list[dict], outcomes: Callable[[int], list[dict]] | None = None) -> str:
    """Minimum-norm curves against fixed-eps attacks on the same model, norm and eps: the
    difference in robust accuracy (percentage points; > 0 means the curve is weaker there) and,
    given ``outcomes`` (cell id -> its per-example rows, ``Store.outcomes``), McNemar's paired
    test on the examples robust under one of the two only."""
    fixed = {_point(c): c for c in cells if c["attack_name"] not in (*DISTANCE_ATTACKS, "none")}
    rows = []
    for c in cells:
        other = fixed.get(_point(c))
        if c["attack_name"] in DISTANCE_ATTACKS and other is not None:
            diff = 100 * (c["robust_accuracy"] - other["robust_accuracy"])
            paired = _paired_test(outcomes(c["id"]), outcomes(other["id"])) if outcomes else "-"
            rows.append(
                (c["model"], c["norm"], eps_text(c["eps"], norm=c["norm"]), f"{c['attack']}",
                 _with_interval(c, "robust"), other["attack"], _with_interval(other, "robust"),
                 f"{diff:+.1f}", paired)
            )  # fmt: skip
    if not rows:
        return ""
    header = ("model", "norm", "eps", "curve", "robust", "fixed-eps", "robust", "pp",
              "paired test (b / c)")  # fmt: skip
    return _markdown(header, rows)


def _paired_test(curve: list[dict], fixed: list[dict]) -> str:
    """Exact two-sided McNemar test on the same examples: b robust under the curve only, c under
    the fixed-eps attack only (the examples both agree on carry no information)."""
    a = {o["example"]: o["robust_correct"] for o in curve}
    b = {o["example"]: o["robust_correct"] for o in fixed}
    if not a or a.keys() != b.keys():
        return "-"
    only_curve = sum(a[i] and not b[i] for i in a)
    only_fixed = sum(b[i] and not a[i] for i in a)
    p = min(1.0, 2 * min(stats.mcnemar(only_curve, only_fixed),
                         stats.mcnemar(only_fixed, only_curve)))  # fmt: skip
    verdict = "significant" if p < stats.ALPHA else "within noise"
    return f"{verdict}, p = {p:.2g} ({only_curve} / {only_fixed})"


def plot(cells: list[dict], path: str | Path) -> Path | None:
    """Robust accuracy vs eps, one panel per norm, one line per model and attack (and number
    of examples, where budgeted runs chose several), its 95 % intervals drawn as a band."""
    norms = sorted({c["norm"] for c in cells if c["norm"]})
    if not norms:
        return None
    several_n = len({c["n"] for c in cells}) > 1
    plt = pyplot()
    fig, axes = plt.subplots(1, len(norms), figsize=(5.5 * len(norms), 4), squeeze=False)
    for ax, norm in zip(axes[0], norms, strict=True):
        lines: dict[tuple[str, str, int], list[dict]] = {}
        for c in cells:
            if c["norm"] == norm and c["n"]:
                lines.setdefault((c["model"], c["attack"], c["n"]), []).append(c)
        for (model, attack, n), points in sorted(lines.items()):
            points.sort(key=lambda c: c["eps"])
            eps = [c["eps"] for c in points]
            label = f"{model} / {attack}" + (f", n = {n}" if several_n else "")
            (line,) = ax.plot(eps, [100 * c["robust_accuracy"] for c in points],
                              marker="o", label=label)  # fmt: skip
            ax.fill_between(eps, [100 * c["robust_low"] for c in points],
                            [100 * c["robust_high"] for c in points],
                            color=line.get_color(), alpha=0.15, linewidth=0)  # fmt: skip
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
    with Store(store, create=False) as db:
        agree = agreement(cells, db.outcomes)
    if agree:
        text += (
            "\n## Minimum-norm curve against fixed-eps attacks\n\nPaired test: exact McNemar "
            "on the same examples, b robust under the curve only, c under the fixed-eps attack "
            f"only; significant when p < {stats.ALPHA}.\n\n" + agree
        )
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


def _with_interval(cell: dict, kind: str) -> str:
    """'94.2 % [92.0, 95.9]' from a cell's stored accuracy and interval ("clean", "robust")."""
    low, high = cell[f"{kind}_low"], cell[f"{kind}_high"]
    if cell[f"{kind}_accuracy"] is None or low is None:
        return "-"
    return f"{_pct(cell[f'{kind}_accuracy'])} % [{_pct(low)}, {_pct(high)}]"


def _markdown(header: tuple, rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
