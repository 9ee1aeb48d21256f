"""Users' image data on disk: an image folder (one sub-folder per class, optional train/ and
test/ or val/ splits, decoded and resized with Pillow) and CIFAR-10's binary distribution
(read with numpy, no pickle)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robustkern.data.arrays import Split, split, tensors, to_unit

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
CIFAR_DIR = "cifar-10-batches-bin"
CIFAR_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR_TEST = "test_batch.bin"
CIFAR_RECORD = 1 + 3 * 32 * 32  # one label byte, then 1024 R, 1024 G, 1024 B bytes (row-major)
GRAYSCALE_MODES = ("1", "L", "LA")


def cifar_dir(path: Path) -> Path | None:
    """The ``cifar-10-batches-bin`` directory at or inside ``path``, if it is one."""
    for folder in (path, path / CIFAR_DIR):
        has_batches = any((folder / f).is_file() for f in (*CIFAR_TRAIN, CIFAR_TEST))
        if folder.is_dir() and (has_batches or folder.name == CIFAR_DIR):
            return folder
    return None


def cifar10_binary(folder: Path) -> Split:
    missing = [f for f in (*CIFAR_TRAIN, CIFAR_TEST) if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"CIFAR-10 binary directory {folder} is missing {missing}")
    train = [_cifar_batch(folder / f) for f in CIFAR_TRAIN]
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return tensors(x_train, y_train) + tensors(*_cifar_batch(folder / CIFAR_TEST))


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
    return to_unit(records[:, 1:].reshape(-1, 3, 32, 32)), labels


def image_folder(
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
        return split(x, y, test_fraction, seed)
    n = len(train)
    return tensors(x[:n], y[:n]) + tensors(x[n:], y[n:])


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
    return to_unit(out.transpose(0, 3, 1, 2))


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
