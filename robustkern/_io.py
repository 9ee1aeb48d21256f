"""Files written atomically: a killed run leaves the old file or the new one, never half of one.
Figures go through matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch


def _atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return _atomic(path, lambda tmp: tmp.write_text(text))


def atomic_torch_save(obj, path: str | Path) -> Path:
    return _atomic(path, lambda tmp: torch.save(obj, tmp))


def atomic_savefig(figure, path: str | Path, **kwargs) -> Path:
    """A matplotlib figure as PNG (the format is given, since the temporary name has none)."""
    return _atomic(path, lambda tmp: figure.savefig(tmp, format="png", **kwargs))


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, works without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: str | Path, dpi: int = 110) -> Path:
    """Writes the figure as PNG atomically and closes it."""
    try:
        return atomic_savefig(figure, path, dpi=dpi)
    finally:
        pyplot().close(figure)
