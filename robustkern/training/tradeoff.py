"""Training runs compared on the same test data, resumable run by run: the accuracy-robustness
trade-off (``tradeoff``: one model per training eps, and a standard one) and a comparison of
training methods at one eps (``compare``, what ``robustkern train --method a,b`` runs). Every
model is attacked with the same PGD at every evaluation eps; each run's directory holds its
checkpoint, its weights (model.pt) and its results (result.json)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from robustkern import resume
from robustkern._env import world
from robustkern._io import atomic_torch_save, pyplot, save_figure
from robustkern.data import eps_text
from robustkern.evaluation import evaluate
from robustkern.modes import model_device
from robustkern.training.batches import TrainData
from robustkern.training.config import TrainConfig, config_from
from robustkern.training.history import History, plot_histories
from robustkern.training.trainer import fit


@dataclass
class Tradeoff:
    """``methods[i]`` and ``eps[i]``: how model i was trained (eps 0 with "standard");
    ``clean[i]`` its clean test accuracy and ``robust[i][j]`` its accuracy under the attack at
    ``eval_eps[j]``. ``method``: the adversarial method of a trade-off (or the methods compared,
    joined by commas)."""

    method: str
    norm: str
    eps: list[float]
    eval_eps: list[float]
    clean: list[float]
    robust: list[list[float]]
    histories: list[History] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    bounds: tuple[float, float] = (0.0, 1.0)
    methods: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, saved: dict) -> Tradeoff:
        """The results tradeoff.json holds (``{"config", "cells"}``), in the order of their
        training eps; a sweep written by hand needs only each cell's eps, clean and robust."""
        config, cells = saved["config"], sorted(saved["cells"].values(), key=lambda c: c["eps"])
        if not (config["eval_eps"] and cells):
            raise ValueError("no evaluation eps or cells")
        return cls(
            config["method"], config.get("norm", "linf"), [c["eps"] for c in cells],
            list(config["eval_eps"]), [c["clean"] for c in cells], [c["robust"] for c in cells],
            [History.from_dict(c["history"]) for c in cells if "history" in c],
            [c.get("seconds", 0.0) for c in cells], tuple(config.get("bounds", (0.0, 1.0))),
            [c.get("method", "standard" if c["eps"] == 0 else config["method"]) for c in cells],
        )  # fmt: skip

    def table(self) -> str:
        """Clean and robust accuracy (%) per training run, one column per evaluation eps."""
        names = [self._label(i, eps_text(e, self.bounds)) for i, e in enumerate(self.eps)]
        width = max(len("trained at"), *map(len, names))
        head = f"{'trained at':>{width}} {'clean':>7} " + " ".join(
            f"{'@' + format(e, 'g'):>8}" for e in self.eval_eps
        )
        lines = [head]
        for name, c, row in zip(names, self.clean, self.robust, strict=True):
            cells = " ".join(f"{100 * r:8.2f}" for r in row)
            lines.append(f"{name:>{width}} {100 * c:7.2f} {cells}")
        return "\n".join(lines)

    def plot(self, path: str | Path) -> Path:
        """Left: clean against robust accuracy at the largest evaluation eps, one point per
        training eps. Right: robust accuracy against the evaluation eps, one curve per model."""
        plt = pyplot()
        fig, (ax, ax_curve) = plt.subplots(1, 2, figsize=(10, 4.2))
        at = self.eval_eps[-1]
        for i, (c, row) in enumerate(zip(self.clean, self.robust, strict=True)):
            ax.scatter(100 * c, 100 * row[-1], s=40)
            ax.annotate(self._label(i), (100 * c, 100 * row[-1]), fontsize=8,
                        xytext=(4, 4), textcoords="offset points")  # fmt: skip
            ax_curve.plot([0, *self.eval_eps], [100 * c, *(100 * r for r in row)], marker="o",
                          markersize=3, label=self._label(i))  # fmt: skip
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
        labels = [self._label(i) for i in range(len(self.eps))]
        return plot_histories(dict(zip(labels, self.histories, strict=True)), path)

    def _label(self, i: int, eps: str | None = None) -> str:
        method = self.methods[i] if self.methods else ("standard" if self.eps[i] == 0 else
                                                        self.method)  # fmt: skip
        return "standard" if method == "standard" else f"{method} {eps or format(self.eps[i], 'g')}"


def tradeoff(
    model_factory: Callable[[], torch.nn.Module],
    data: tuple[TrainData, TrainData] | tuple[torch.Tensor, ...],
    eps_list: Sequence[float],
    *,
    method: str = "pgd",
    eval_eps: Sequence[float] | None = None,
    attack_steps: int = 20,
    val_data: TrainData | None = None,
    out: str | Path | None = None,
    config: TrainConfig | None = None,
    **overrides,
) -> Tradeoff:
    """Trains ``model_factory()`` once per eps in ``eps_list`` with ``method`` and once with
    standard training (eps 0), then attacks each model with the same PGD (``attack_steps``
    steps, random start) at every eps in ``eval_eps`` (default: ``eps_list``).

    data: ``(x_train, y_train, x_test, y_test)`` as ``robustkern.data.load`` returns, or
    ``(train_data, test_data)`` in any form ``fit`` takes. ``val_data``, ``config`` and
    ``overrides`` (``TrainConfig`` fields: norm, epochs, optimizer, lr, bounds, seed, ...) go
    to ``fit``; every model starts from the seed. ``out``: a directory for ``tradeoff.json``
    (the finished runs), each run's directory ``eps-<eps>/`` (checkpoint, weights, result),
    ``tradeoff.png`` and ``training.png``; a rerun skips finished runs and resumes an
    interrupted one where its checkpoint left off."""
    eps_all = sorted({0.0, *(float(e) for e in eps_list)})
    if len(eps_all) < 2 or eps_all[0] < 0:
        raise ValueError(f"eps_list needs at least one eps > 0 and none < 0, got {eps_list}")
    eval_eps = sorted(float(e) for e in (eval_eps if eval_eps is not None else eps_all[1:]))
    runs = [("standard" if e == 0 else method, e, f"eps-{e:g}") for e in eps_all]
    config = config_from(config, overrides)
    return _compare_runs(model_factory, data, runs, eval_eps, method, config, attack_steps,
                         val_data, out)  # fmt: skip


def compare(
    model_factory: Callable[[], torch.nn.Module],
    data: tuple[TrainData, TrainData] | tuple[torch.Tensor, ...],
    methods: Sequence[str],
    eps: float,
    *,
    attack_steps: int = 20,
    val_data: TrainData | None = None,
    out: str | Path | None = None,
    config: TrainConfig | None = None,
    **overrides,
) -> Tradeoff:
    """Trains ``model_factory()`` with each of ``methods`` at ``eps`` ("standard" at eps 0)
    and attacks every model with the same PGD at ``eps``: ``tradeoff``'s machinery, one run per
    method, each in ``out/<method>/`` (``out`` itself for one method). Arguments as
    ``tradeoff``'s."""
    if not methods or len(set(methods)) != len(methods):
        raise ValueError(f"methods must be distinct and at least one, got {list(methods)}")
    runs = [(m, 0.0 if m == "standard" else float(eps), m if len(methods) > 1 else "")
            for m in methods]  # fmt: skip
    config = config_from(config, overrides)
    return _compare_runs(model_factory, data, runs, [float(eps)], ",".join(methods), config,
                         attack_steps, val_data, out)  # fmt: skip


def _compare_runs(factory, data, runs, eval_eps, method, config, attack_steps, val_data, out):
    """Each run (method, eps, directory name) trained from ``config`` and scored at every eval
    eps, or read back from ``out``; the Tradeoff of them all, plotted into ``out``."""
    train, test = _split(data)
    if not eval_eps or eval_eps[0] <= 0:
        raise ValueError(f"eval_eps must be non-empty and > 0, got {eval_eps}")
    key = {k: v for k, v in config.resume_key().items() if k not in ("method", "eps")}
    key |= {"method": method, "eval_eps": eval_eps, "attack_steps": attack_steps}
    store = _Store(Path(out), key) if out is not None else None
    cells = []
    for run_method, eps, name in runs:
        cell = store.cell(name) if store else None
        if cell is None:
            cell = _train_and_score(factory, train, val_data, test, config.replace(
                method=run_method, eps=eps, checkpoint=store.checkpoint(name) if store else None),
                eval_eps, attack_steps, store, name)  # fmt: skip
        cells.append(cell)
    result = Tradeoff(
        method, config.norm, [r[1] for r in runs], eval_eps, [c["clean"] for c in cells],
        [c["robust"] for c in cells], [History.from_dict(c["history"]) for c in cells],
        [c["seconds"] for c in cells], config.bounds, [r[0] for r in runs],
    )  # fmt: skip
    if store is not None and world()[0] == 0:
        result.plot(store.root / "tradeoff.png")
        result.plot_training(store.root / "training.png")
    return result


def _train_and_score(factory, train, val_data, test, config, eval_eps, attack_steps, store, name):
    """One run: a fresh model trained with ``config``, then PGD at every eval eps."""
    began = time.perf_counter()
    torch.manual_seed(config.seed)
    model = factory()
    history = fit(model, train, val_data, config)
    evaluations = [
        evaluate(model, test, "pgd", eps=e, norm=config.norm, steps=attack_steps,
                 bounds=config.bounds, progress=False,
                 generator=torch.Generator(model_device(model)).manual_seed(config.seed))
        for e in eval_eps
    ]  # fmt: skip
    cell = {"method": config.method, "eps": config.eps, "clean": evaluations[0].clean_accuracy,
            "robust": [r.robust_accuracy for r in evaluations], "history": history.to_dict(),
            "seconds": time.perf_counter() - began}  # fmt: skip
    if store is not None:
        store.save(name, cell, model, f"pgd-{attack_steps}", eval_eps)
    return cell


def _split(data) -> tuple:
    if len(data) == 4:
        return (data[0], data[1]), (data[2], data[3])
    if len(data) == 2:
        return data[0], data[1]
    raise ValueError("data must be (x_train, y_train, x_test, y_test) or (train, test)")


class _Store:
    """tradeoff.json (the finished runs by directory name, written atomically) and each run's
    directory: its checkpoint, weights and result."""

    def __init__(self, root: Path, config: dict):
        self.root, self.config = root, config
        self.path = root / "tradeoff.json"
        saved = resume.read_json(self.path, "trade-off results") or {"config": config, "cells": {}}
        resume.check_same(saved.get("config", {}), config, self.path, "trade-off results")
        self.cells: dict = saved["cells"]

    def cell(self, name: str) -> dict | None:
        return self.cells.get(_key(name))

    def checkpoint(self, name: str) -> Path:
        return self.root / name / "checkpoint.pt"

    def save(self, name: str, cell: dict, model, attack: str, eval_eps) -> None:
        self.cells[_key(name)] = cell
        if world()[0] != 0:
            return
        atomic_torch_save(model.state_dict(), self.root / name / "model.pt")
        result = {"method": cell["method"], "eps": cell["eps"], "eval_eps": eval_eps,
                  "eval_attack": attack, "test_clean_acc": cell["clean"],
                  "test_robust_acc": cell["robust"][-1],  # at the largest eval eps
                  "test_robust_acc_by_eps": dict(zip(map(str, eval_eps), cell["robust"],
                                                     strict=True)),
                  "history": cell["history"]}  # fmt: skip
        resume.write_json(self.root / name / "result.json", result)
        resume.write_json(self.path, {"config": self.config, "cells": self.cells})


def _key(name: str) -> str:
    """The run's key in tradeoff.json: its eps for a trade-off (as before), else its name."""
    return name.removeprefix("eps-") or "run"
