"""What ``fit`` measured, epoch by epoch (``History``), as a table and as a plot."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from robustkern._io import pyplot, save_figure


@dataclass
class History:
    """What ``fit`` measured. ``epochs``: one dict per finished epoch with ``epoch``, ``step``,
    ``lr``, ``weight_decay``, ``train_loss`` and ``train_acc`` (on the batches trained on:
    adversarial ones for adversarial methods), ``train_clean_acc``/``train_robust_acc`` (the
    first ``train_eval`` training images, eval mode), ``val_clean_acc``/``val_robust_acc``,
    ``seconds`` (training) and ``eval_seconds``; accuracies are None where not measured.
    ``tracked``: probability trajectories of the chosen images: ``index``, ``label``,
    ``epoch`` (fractional, one per snapshot) and ``probs`` (snapshots x images x classes).
    ``best_epoch``: the epoch with the best validation score (robust if eps > 0, else clean)."""

    epochs: list[dict] = field(default_factory=list)
    tracked: dict = field(default_factory=dict)
    best_epoch: int | None = None
    stopped_early: bool = False

    def __len__(self) -> int:
        return len(self.epochs)

    def __getitem__(self, key: str) -> list:
        """One column, e.g. ``history["val_robust_acc"]``."""
        return [row[key] for row in self.epochs]

    def to_dict(self) -> dict:
        return {
            "epochs": self.epochs,
            "tracked": self.tracked,
            "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early,
        }

    @classmethod
    def from_dict(cls, d: dict) -> History:
        return cls(d["epochs"], d["tracked"], d["best_epoch"], d["stopped_early"])

    def table(self) -> str:
        """A plain-text table, one line per epoch."""
        cols = [("epoch", "epoch", "{:5d}"), ("lr", "lr", "{:9.3g}"),
                ("train_loss", "loss", "{:7.4f}"), ("train_acc", "train", "{:7.2%}"),
                ("val_clean_acc", "val", "{:7.2%}"), ("val_robust_acc", "val rob", "{:7.2%}"),
                ("seconds", "seconds", "{:7.1f}")]  # fmt: skip
        widths = [len(f.format(0)) for _, _, f in cols]
        lines = [" ".join(h.rjust(w) for (_, h, _), w in zip(cols, widths, strict=True))]
        for row in self.epochs:
            cells = [
                f.format(row[k]) if row[k] is not None else "-".rjust(w)
                for (k, _, f), w in zip(cols, widths, strict=True)
            ]
            lines.append(" ".join(cells))
        return "\n".join(lines)


def plot_histories(histories: dict[str, History], path: str | Path) -> Path:
    """Per run and epoch: the training loss, and clean (dashed) and robust accuracy (solid;
    on the validation data where given, else on the first training images), as a PNG."""
    plt = pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4.2))
    colours = plt.get_cmap("tab10").colors
    for k, (label, h) in enumerate(histories.items()):
        colour, where = colours[k % 10], "val" if h["val_clean_acc"][0] is not None else "train"
        ax_loss.plot(h["epoch"], h["train_loss"], color=colour, label=label)
        clean, robust = h[f"{where}_clean_acc"], h[f"{where}_robust_acc"]
        ax_acc.plot(h["epoch"], [100 * a for a in clean], "--", color=colour)
        if robust[0] is not None:
            ax_acc.plot(
                h["epoch"], [100 * a for a in robust], color=colour, label=f"{label} ({where})"
            )
    ax_loss.set_ylabel("training loss")
    ax_loss.legend(fontsize=8)
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.set_title("dashed: clean; solid: robust at the training eps", fontsize=9)
    ax_acc.set_ylim(0, 100)
    for a in (ax_loss, ax_acc):
        a.set_xlabel("epoch")
        a.grid(alpha=0.3)
        a.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return save_figure(fig, path)
