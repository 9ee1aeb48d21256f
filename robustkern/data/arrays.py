"""Images and labels as the package hands them out: float32 NCHW tensors in [0, 1], int64
labels, and the deterministic train/test split."""

from __future__ import annotations

import numpy as np
import torch

Split = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
Size = int | tuple[int, int]


def to_unit(x: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [0, 1] (float32 arithmetic: no float64 copy of a big set)."""
    return x.astype(np.float32) / np.float32(255.0)


def split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> Split:
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = max(1, round(len(x) * test_fraction))
    train, test = order[:-n_test], order[-n_test:]
    return tensors(x[train], y[train]) + tensors(x[test], y[test])


def tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))
