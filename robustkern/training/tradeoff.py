"""The accuracy-robustness trade-off: one model per training eps (and a standard one), each
attacked with the same attack at every evaluation eps; resumable cell by cell."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from robustkern._env import world
from robustkern._io import atomic_write_text, pyplot, save_figure
from robustkern.data import eps_text
from robustkern.evaluation import evaluate, model_device
from robustkern.training.trainer import History, TrainData, fit, plot_histories


@dataclass
class Tradeoff:
    """``eps[i]``: the training eps of model i (0 = standard training); ``clean[i]`` its clean
    test accuracy and ``robust[i][j]`` its accuracy under the attack at ``eval_eps[j]``."""

    method: str
    norm: str
    eps: list[float]
    eval_eps: list[float]
    clean: list[float]
    robust: list[list[float]]
    histories: list[History] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    bounds: tuple[float, float] = (0.0, 1.0)

    def table(self) -> str:
        """Clean and robust accuracy (%) per training eps, one column per evaluation eps."""
        head = f"{'trained at':>22} {'clean':>7} " + " ".join(
            f"{'@' + format(e, 'g'):>8}" for e in self.eval_eps
        )
        lines = [head]
        for e, c, row in zip(self.eps, self.clean, self.robust, strict=True):
            name = "standard" if e == 0 else f"{self.method} {eps_text(e, self.bounds)}"
            cells = " ".join(f"{100 * r:8.2f}" for r in row)
            lines.append(f"{name:>22} {100 * c:7.2f} {cells}")
        return "\n".join(lines)

    def plot(self, path: str | Path) -> Path:
        """Left: clean against robust accuracy at the largest evaluation eps, one point per
        training eps. Right: robust accuracy against the evaluation eps, one curve per model."""
        plt = pyplot()
        fig, (ax, ax_curve) = plt.subplots(1, 2, figsize=(10, 4.2))
        at = self.eval_eps[-1]
        for e, c, row in zip(self.eps, self.clean, self.robust, strict=True):
            ax.scatter(100 * c, 100 * row[-1], s=40)
            ax.annotate(self._label(e), (100 * c, 100 * row[-1]), fontsize=8,
                        xytext=(4, 4), textcoords="offset points")  # fmt: skip
            ax_curve.plot([0, *self.eval_eps], [100 * c, *(100 * r for r in row)], marker="o",
                          markersize=3, label=self._label(e))  # fmt: skip
        ax.set_xlabel("clean accuracy (%)")
        ax.set_ylabel(f"robust accuracy at eps {at:g} (%)")
        ax.set_title(f"trade-off ({self.method}, {self.norm})")
        ax_curve.set_xlabel(f"attack eps ({self.norm})")
        ax_curve.set_ylabel("accuracy (%)")
        ax_curve.set_ylim(0, 100)
        ax_curve.legend(fontsize=8, title="trained at")
        for a in (ax, ax_curve):
            a.grid(alpha=0.3)
        fig.tight_layout()
        return save_figure(fig, path)

    def plot_training(self, path: str | Path) -> Path:
        """The models' training curves (see ``plot_histories``)."""
        labels = [self._label(e) for e in self.eps]
        return plot_histories(dict(zip(labels, self.histories, strict=True)), path)

    def _label(self, e: float) -> str:
        return "standard" if e == 0 else f"eps {e:g}"


def tradeoff(
    model_factory: Callable[[], torch.nn.Module],
    data: tuple[TrainData, TrainData] | tuple[torch.Tensor, ...],
    eps_list: Sequence[float],
    *,
    method: str = "pgd",
    norm: str = "linf",
    eval_eps: Sequence[float] | None = None,
    attack_steps: int = 20,
    val_data: TrainData | None = None,
    out: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
    **fit_kwargs,
) -> Tradeoff:
    """Trains ``model_factory()`` once per eps in ``eps_list`` with ``method`` and once with
    standard training (eps 0), then attacks each model with the same PGD (``attack_steps``
    steps, random start) at every eps in ``eval_eps`` (default: ``eps_list``).

    data: ``(x_train, y_train, x_test, y_test)`` as ``robustkern.data.load`` returns, or
    ``(train_data, test_data)`` in any form ``fit`` takes. ``val_data`` and ``fit_kwargs``
    (epochs, optimizer, lr, bounds, ...) go to ``fit``; every model starts from ``seed``.
    ``out``: a directory for ``tradeoff.json`` (the finished cells), each cell's training
    checkpoint, ``tradeoff.png`` and ``training.png``; a rerun skips finished cells and resumes
    an interrupted one where its checkpoint left off."""
    if len(data) == 4:
        train, test = (data[0], data[1]), (data[2], data[3])
    elif len(data) == 2:
        train, test = data
    else:
        raise ValueError("data must be (x_train, y_train, x_test, y_test) or (train, test)")
    eps_all = sorted({0.0, *(float(e) for e in eps_list)})
    if len(eps_all) < 2 or eps_all[0] < 0:
        raise ValueError(f"eps_list needs at least one eps > 0 and none < 0, got {eps_list}")
    eval_eps = sorted(float(e) for e in (eval_eps if eval_eps is not None else eps_all[1:]))
    if not eval_eps or eval_eps[0] <= 0:
        raise ValueError(f"eval_eps must be non-empty and > 0, got {eval_eps}")
    bounds = tuple(fit_kwargs.get("bounds", (0.0, 1.0)))
    config = {"method": method, "norm": norm, "eval_eps": eval_eps, "attack_steps": attack_steps,
              "seed": seed, "fit": repr(sorted(fit_kwargs.items()))}  # fmt: skip
    store = _Store(Path(out), config) if out is not None else None

    def run_cell(eps: float) -> dict:
        began = time.perf_counter()
        torch.manual_seed(seed)
        model = model_factory()
        history = fit(
            model, train, val_data, method=method if eps > 0 else "standard", eps=eps,
            norm=norm, seed=seed, checkpoint=store.checkpoint(eps) if store else None,
            progress=progress, **fit_kwargs,
        )  # fmt: skip
        evaluations = [
            evaluate(model, test, "pgd", eps=e, norm=norm, steps=attack_steps, bounds=bounds,
                     generator=torch.Generator(model_device(model)).manual_seed(seed),
                     progress=False)
            for e in eval_eps
        ]  # fmt: skip
        cell = {"eps": eps, "clean": evaluations[0].clean_accuracy,
                "robust": [r.robust_accuracy for r in evaluations],
                "history": history.to_dict(), "seconds": time.perf_counter() - began}  # fmt: skip
        if store is not None:
            store.save(eps, cell)
        return cell

    cells = [(store.cell(eps) if store else None) or run_cell(eps) for eps in eps_all]
    result = Tradeoff(
        method, norm, eps_all, eval_eps, [c["clean"] for c in cells],
        [c["robust"] for c in cells], [History.from_dict(c["history"]) for c in cells],
        [c["seconds"] for c in cells], bounds,
    )  # fmt: skip
    if store is not None and world()[0] == 0:
        result.plot(store.root / "tradeoff.png")
        result.plot_training(store.root / "training.png")
    return result


class _Store:
    """tradeoff.json (finished cells, written atomically) and the cells' checkpoints."""

    def __init__(self, root: Path, config: dict):
        self.root, self.config = root, config
        self.path = root / "tradeoff.json"
        self.cells: dict = {}
        if self.path.exists():
            saved = json.loads(self.path.read_text())
            if saved.get("config") != config:
                raise ValueError(
                    f"{self.path} holds a trade-off with other settings: use another out "
                    "directory or remove it"
                )
            self.cells = saved["cells"]

    def cell(self, eps: float) -> dict | None:
        return self.cells.get(format(eps, "g"))

    def checkpoint(self, eps: float) -> Path:
        return self.root / "cells" / f"eps-{eps:g}.pt"

    def save(self, eps: float, cell: dict) -> None:
        self.cells[format(eps, "g")] = cell
        if world()[0] == 0:
            text = json.dumps({"config": self.config, "cells": self.cells}, indent=1)
            atomic_write_text(self.path, text)
