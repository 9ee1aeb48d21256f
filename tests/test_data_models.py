"""Embedded data, user .npz files, image folders, CIFAR-10's binary distribution, built-in
models and weight loading (checkpoints as training code saves them)."""

from collections import OrderedDict

import numpy as np
import pytest
import torch
from PIL import Image

from robustkern import data, models


@pytest.mark.parametrize(
    ("name", "shape", "n"), [("digits", (1, 8, 8), 1797), ("mnist-5k", (1, 28, 28), 5000)]
)
def test_embedded(name, shape, n):
    xtr, ytr, xte, yte = data.load(name)
    assert xtr.shape[1:] == shape and xte.shape[1:] == shape
    assert len(xtr) + len(xte) == n and len(xte) == round(0.2 * n)
    assert xtr.dtype == torch.float32 and ytr.dtype == torch.int64
    assert xtr.min() >= 0 and xtr.max() <= 1 and xtr.max() > 0.9
    assert set(ytr.tolist()) == set(range(10))
    again = data.load(name)
    assert torch.equal(again[2], xte) and torch.equal(again[3], yte)  # deterministic split


def test_npz_layouts_and_scaling(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (20, 6, 5, 3), dtype=np.uint8)  # NHWC
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(20) % 4)
    xtr, _, xte, _ = data.load(str(tmp_path / "d.npz"))
    assert xtr.shape[1:] == (3, 6, 5) and len(xte) == 4
    np.savez(tmp_path / "t.npz", x=x[:10], y=np.arange(10), x_test=x[10:], y_test=np.arange(10))
    assert len(data.load(str(tmp_path / "t.npz"))[2]) == 10


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (dict(x=np.zeros((3, 4, 4))), "needs arrays 'x' and 'y'"),
        (dict(x=np.full((3, 4, 4), 2.0), y=np.zeros(3, int)), r"must lie in \[0, 1\]"),
        (dict(x=np.zeros((3, 4, 4)), y=np.zeros(2, int)), "y must be integer labels of shape"),
        (dict(x=np.zeros(3), y=np.zeros(3, int)), "x must be"),
    ],
)
def test_npz_errors(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=message):
        data.load(str(tmp_path / "bad.npz"))


def test_unknown_dataset():
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar'.*an image folder or cifar-10"):
        data.load("cifar")
    with pytest.raises(ValueError, match="there is no directory no/such/folder"):
        data.load("no/such/folder")


def nan_images() -> np.ndarray:
    x = np.zeros((5, 1, 3, 3), np.float32)
    x[1, 0, 0, 0], x[3, 0, 2, 2], x[3, 0, 1, 1] = np.nan, np.inf, -np.inf
    return x


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (nan_images(), r"contains 1 NaN and 2 inf value\(s\) in 2 of 5 images \(indices 1, 3\)"),
        (np.linspace(0, 250, 36).reshape(4, 1, 3, 3), "look like 0..255 pixel values: divide"),
        (np.linspace(-2, 2, 36).reshape(4, 1, 3, 3), r"look normalised .*robustkern.nn.Normalize"),
        (np.full((4, 1, 3, 3), 300.0), r"found values in \[300, 300\]: clip the images"),
    ],
)  # fmt: skip
def test_npz_float_range_messages_say_what_the_values_look_like(tmp_path, x, message):
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(len(x)))
    with pytest.raises(ValueError, match=r"d.npz: float images \(x\)") as caught:
        data.load(str(tmp_path / "d.npz"))
    assert caught.match(message)


def test_npz_normalised_floats_load_within_the_bounds_the_caller_names(tmp_path):
    x = np.linspace(-2, 2, 4 * 27, dtype=np.float32).reshape(4, 3, 3, 3)
    np.savez(tmp_path / "n.npz", x=x, y=np.arange(4), x_test=x, y_test=np.arange(4))
    xtr, *_ = data.load(str(tmp_path / "n.npz"), bounds=(-2.5, 2.5))
    assert torch.equal(xtr, torch.from_numpy(x))
    with pytest.raises(ValueError, match=r"must lie in \[-1, 1\], found values in \[-2, 2\]"):
        data.load(str(tmp_path / "n.npz"), bounds=(-1, 1))
    np.savez(tmp_path / "u.npz", x=np.zeros((4, 3, 3), np.uint8), y=np.arange(4))
    with pytest.raises(ValueError, match=r"scaled to \[0, 1\].*bounds=\(-1, 0.5\)"):
        data.load(str(tmp_path / "u.npz"), bounds=(-1, 0.5))
    with pytest.raises(ValueError, match=r"scaled to \[0, 1\]"):
        data.load("digits", bounds=(0.1, 1))
    with pytest.raises(ValueError, match="lo < hi"):
        data.load(str(tmp_path / "n.npz"), bounds=(1, 0))


# ---- CIFAR-10's binary distribution --------------------------------------------------------


def fake_cifar(folder, records: int = 2) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A tiny cifar-10-batches-bin: per file, labels (n,) and planes (n, 3, 32, 32) uint8."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for k, name in enumerate([*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin"]):
        n = records + k % 2
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        planes = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        planes[0, 0] = (np.arange(1024) % 251).reshape(32, 32)  # red: a known row-major ramp
        rows = [np.concatenate([[lab], r.ravel()]) for lab, r in zip(labels, planes, strict=True)]
        np.concatenate(rows).astype(np.uint8).tofile(folder / name)
        written[name] = labels, planes
    return written


def test_cifar10_binary_reads_labels_and_pixel_order_exactly(tmp_path):
    written = fake_cifar(tmp_path / "cifar-10-batches-bin")
    train = [written[f"data_batch_{i}.bin"] for i in range(1, 6)]
    for path in (tmp_path, tmp_path / "cifar-10-batches-bin"):  # the folder or its parent
        xtr, ytr, xte, yte = data.load(str(path))
        assert (
            xtr.shape == (sum(len(y) for y, _ in train), 3, 32, 32) and xtr.dtype == torch.float32
        )
        assert torch.equal(ytr, torch.from_numpy(np.concatenate([y for y, _ in train])).long())
        expected = np.concatenate([x for _, x in train]).astype(np.float32) / 255
        assert torch.equal(xtr, torch.from_numpy(expected))
        assert torch.equal(yte, torch.from_numpy(written["test_batch.bin"][0]).long())
        assert xte.shape == (3, 3, 32, 32)
        assert xte[0, 0, 1, 2] * 255 == pytest.approx(34 % 251)  # row 1, column 2 of the red plane
        assert torch.equal(xte * 255, torch.from_numpy(written["test_batch.bin"][1]).float())


def test_cifar10_binary_errors_name_the_file(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    fake_cifar(folder)
    (folder / "data_batch_3.bin").unlink()
    (folder / "test_batch.bin").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"missing \['data_batch_3.bin', 'test_batch.bin'\]"
    ):
        data.load(str(tmp_path))
    fake_cifar(tmp_path / "again" / "cifar-10-batches-bin")
    bad = tmp_path / "again" / "cifar-10-batches-bin" / "data_batch_2.bin"
    bad.write_bytes(bad.read_bytes()[:-5])
    with pytest.raises(ValueError, match=r"data_batch_2.bin: \d+ bytes is not a whole number"):
        data.load(str(tmp_path / "again"))
    with pytest.raises(ValueError, match="image_size resizes image folders only"):
        data.load(str(tmp_path / "again"), image_size=16)


# ---- image folders -------------------------------------------------------------------------


def save_image(path, pixels: np.ndarray, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)


def pixels(seed: int, shape=(5, 7, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_image_folder_classes_by_folder_name_pixels_exact(tmp_path):
    images = {("zebra", 0): pixels(0), ("zebra", 1): pixels(1), ("apple", 0): pixels(2)}
    for (cls, i), p in images.items():
        save_image(tmp_path / cls / f"{i}.png", p)
    (tmp_path / "apple" / "notes.txt").write_text("not an image: ignored")
    xtr, ytr, xte, yte = data.load(str(tmp_path), test_fraction=0.34)
    x, y = torch.cat([xtr, xte]), torch.cat([ytr, yte])
    assert x.shape == (3, 3, 5, 7) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(xte) == 1
    for (cls, _), p in images.items():  # apple = 0, zebra = 1 (sorted folder names)
        chw = torch.from_numpy(p.transpose(2, 0, 1).astype(np.float32) / 255)
        (k,) = [k for k in range(3) if torch.equal(x[k], chw)]
        assert y[k] == ("apple", "zebra").index(cls)
    again = data.load(str(tmp_path), test_fraction=0.34)
    assert torch.equal(again[2], xte)  # deterministic split


def test_image_folder_formats_grayscale_and_mixed_modes(tmp_path):
    gray = pixels(3, (6, 6))
    for suffix, fmt in [("png", "PNG"), ("BMP", "BMP"), ("jpeg", "JPEG"), ("JPG", "JPEG")]:
        save_image(tmp_path / "g" / "a" / f"im.{suffix}", gray, fmt)
    xtr, _, xte, _ = data.load(str(tmp_path / "g"))
    assert xtr.shape[1:] == (1, 6, 6) and len(xtr) + len(xte) == 4  # every one grayscale: L
    save_image(tmp_path / "w" / "a" / "0.webp", pixels(3), "WEBP")  # WebP stores RGB only
    save_image(tmp_path / "w" / "a" / "1.webp", pixels(4), "WEBP")
    assert data.load(str(tmp_path / "w"))[0].shape == (1, 3, 5, 7)
    save_image(tmp_path / "m" / "a" / "gray.png", gray)
    save_image(tmp_path / "m" / "b" / "rgb.png", pixels(4, (6, 6, 3)))
    x = torch.cat(data.load(str(tmp_path / "m"), test_fraction=0.5)[::2])
    assert x.shape == (2, 3, 6, 6)  # one RGB image: all RGB, gray copied to each channel
    (g,) = [im for im in x if torch.equal(im[0], im[1]) and torch.equal(im[1], im[2])]
    assert torch.equal(g[0] * 255, torch.from_numpy(gray).float())


def test_image_folder_sizes_resize_bilinear(tmp_path):
    save_image(tmp_path / "a" / "big.png", pixels(5, (20, 12, 3)))
    save_image(tmp_path / "b" / "small.png", pixels(6, (8, 8, 3)))
    with pytest.raises(ValueError, match=r"differ in size .* pass image_size=\(H, W\)"):
        data.load(str(tmp_path))
    xtr, _, xte, _ = data.load(str(tmp_path), image_size=(6, 10), test_fraction=0.5)
    assert xtr.shape[1:] == (3, 6, 10) and xte.shape[1:] == (3, 6, 10)
    big = Image.open(tmp_path / "a" / "big.png").resize((10, 6), Image.Resampling.BILINEAR)
    want = torch.from_numpy(np.asarray(big).transpose(2, 0, 1).astype(np.float32) / 255)
    assert any(torch.equal(im, want) for im in torch.cat([xtr, xte]))
    assert data.load(str(tmp_path), image_size=4)[0].shape[1:] == (3, 4, 4)
    for bad in (0, (4,), (4, 0), 2.5, "4"):
        with pytest.raises(ValueError, match="image_size must be a positive int or"):
            data.load(str(tmp_path), image_size=bad)
    with pytest.raises(ValueError, match="image_size resizes image folders only"):
        data.load("digits", image_size=8)


@pytest.mark.parametrize("test_name", ["test", "val"])
def test_image_folder_train_and_test_splits(tmp_path, test_name):
    for cls, n in [("a", 2), ("b", 3)]:
        for i in range(n):
            save_image(tmp_path / "train" / cls / f"{i}.png", pixels(10 * i + n, (4, 4)))
    save_image(tmp_path / test_name / "b" / "0.png", pixels(99, (4, 4)))  # no "a": fine
    _, ytr, xte, yte = data.load(str(tmp_path))
    assert ytr.tolist() == [0, 0, 1, 1, 1] and yte.tolist() == [1]
    assert torch.equal(xte[0, 0] * 255, torch.from_numpy(pixels(99, (4, 4))).float())
    save_image(tmp_path / test_name / "c" / "0.png", pixels(98, (4, 4)))
    with pytest.raises(ValueError, match=r"classes \['c'\] are not among \['a', 'b'\]"):
        data.load(str(tmp_path))


def test_image_folder_errors_name_the_file_or_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no class sub-folders"):
        data.load(str(tmp_path / "empty"))
    save_image(tmp_path / "f" / "a" / "ok.png", pixels(0))
    (tmp_path / "f" / "b").mkdir()
    with pytest.raises(ValueError, match="class folder 'b' has no images"):
        data.load(str(tmp_path / "f"))
    (tmp_path / "f" / "b" / "junk.jpg").write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match=r"cannot read image .*b/junk\.jpg"):
        data.load(str(tmp_path / "f"))
    good = (tmp_path / "f" / "a" / "ok.png").read_bytes()
    (tmp_path / "f" / "b" / "junk.jpg").unlink()
    (tmp_path / "f" / "b" / "cut.png").write_bytes(good[: len(good) // 2])  # header, half the data
    with pytest.raises(ValueError, match=r"cannot read image .*b/cut\.png"):
        data.load(str(tmp_path / "f"))
    (tmp_path / "s" / "train" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="has train/ but no test/ or val/"):
        data.load(str(tmp_path / "s"))


@pytest.mark.parametrize(
    "model",
    [
        models.fc(64, 10),
        models.fc(64, 10, hidden=()),
        models.small_cnn(1, 10),
        models.small_resnet(1, 10),
    ],
)
def test_models_give_logits(model):
    assert model(torch.rand(3, 1, 8, 8)).shape == (3, 10)


def test_resnet18_shape():
    model = models.resnet18()
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert 11e6 < sum(p.numel() for p in model.parameters()) < 11.3e6


def test_from_spec_and_weights(tmp_path):
    model = models.small_cnn(1, 10)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "w.pt")
    loaded = models.from_spec(
        "robustkern.models:small_cnn", tmp_path / "w.pt", kwargs={"in_channels": 1}
    )
    x = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(loaded(x), model(x))


def test_pickle_needs_trust(tmp_path):
    torch.save(models.small_cnn(1, 10), tmp_path / "full.pt")  # a whole pickled module
    with pytest.raises(PermissionError, match="needs pickle"):
        models.load_weights(tmp_path / "full.pt")
    assert isinstance(models.load_weights(tmp_path / "full.pt", trust_pickle=True), torch.nn.Module)


def test_corrupt_and_missing_weights(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="corrupt or not a torch file"):
        models.load_weights(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        models.load_weights(tmp_path / "nope.pt")
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="does not fit"):
        models.from_spec("robustkern.models:small_cnn", tmp_path / "other.pt")


# ---- checkpoints as training code saves them ---------------------------------------------


def checkpoint(model: torch.nn.Module, how: str):
    if how == "model_state_dict":  # the PyTorch tutorial's layout, optimizer state included
        opt = torch.optim.Adam(model.parameters())
        model(torch.rand(2, 1, 8, 8)).sum().backward()
        opt.step()
        return {"epoch": 3, "optimizer": opt.state_dict(), "model_state_dict": model.state_dict()}
    if how == "DataParallel":
        return {"state_dict": torch.nn.DataParallel(model).state_dict()}
    if how == "torch.compile":
        return {"model": torch.compile(model).state_dict()}
    if how == "compiled DDP":
        return {f"_orig_mod.module.{k}": v for k, v in model.state_dict().items()}
    return {how: model.state_dict()}


@pytest.mark.parametrize(
    "how",
    ["state_dict", "model", "model_state_dict", "DataParallel", "torch.compile", "compiled DDP"],
)
def test_checkpoint_layouts_and_wrapper_prefixes_load(tmp_path, how):
    model = models.small_cnn(1, 10)
    torch.save(checkpoint(model, how), tmp_path / "ckpt.pt")
    assert list(models.load_weights(tmp_path / "ckpt.pt")) == list(model.state_dict())
    loaded = models.from_spec("robustkern.models:small_cnn", tmp_path / "ckpt.pt")
    x = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(loaded(x), model(x))


def test_mismatched_weights_name_the_keys_and_shapes(tmp_path):
    state = models.small_cnn(1, 10).state_dict()
    del state["10.bias"]
    state["head.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(ValueError) as caught:
        models.from_spec(
            "robustkern.models:small_cnn", tmp_path / "w.pt", kwargs={"in_channels": 3}
        )
    message = str(caught.value)
    assert message.startswith(f"weights file {tmp_path / 'w.pt'} does not fit")
    assert "1 missing key(s) [10.bias]" in message
    assert "1 unexpected key(s) [head.weight]" in message
    assert "1 shape mismatch(es) [0.weight: file (32, 1, 3, 3) vs model (32, 3, 3, 3)]" in message
    assert "Error(s) in loading" not in message and "hint" not in message
    torch.save(models.small_cnn(1, 10).state_dict(), tmp_path / "cnn.pt")
    with pytest.raises(ValueError, match=r"\d+ missing key\(s\) \[.*, \.\.\. \d+ more\]"):
        models.from_spec("robustkern.models:small_resnet", tmp_path / "cnn.pt")


def test_mismatched_weights_hint_at_a_prefix(tmp_path, monkeypatch):
    model = models.small_cnn(1, 10)
    lightning = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}
    torch.save(lightning, tmp_path / "lightning.ckpt")
    with pytest.raises(ValueError, match=r"fit after removing the prefix 'model\.' from each"):
        models.from_spec("robustkern.models:small_cnn", tmp_path / "lightning.ckpt")
    (tmp_path / "wrapping.py").write_text(
        "from collections import OrderedDict\nimport torch\nfrom robustkern import models\n"
        "def net():\n    return torch.nn.Sequential(OrderedDict(net=models.small_cnn(1, 10)))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(ValueError, match=r"fit after adding the prefix 'net\.' to each"):
        models.from_spec("wrapping:net", tmp_path / "bare.pt")


def test_checkpoint_without_a_known_state_dict_key(tmp_path):
    torch.save({"epoch": 1, "net": models.small_cnn(1, 10).state_dict()}, tmp_path / "c.pt")
    with pytest.raises(
        ValueError,
        match=r"dict without tensors \(keys \[epoch, net\]\).*"
        r"nest it under one of \['state_dict', 'model_state_dict', 'model'\]",
    ):
        models.from_spec("robustkern.models:small_cnn", tmp_path / "c.pt")


def test_wrapper_prefix_kept_unless_every_key_has_it(tmp_path):
    state = OrderedDict([("module.a", torch.zeros(1)), ("b", torch.ones(1))])
    torch.save(state, tmp_path / "s.pt")
    assert list(models.load_weights(tmp_path / "s.pt")) == ["module.a", "b"]


def test_a_factory_that_cannot_be_imported_says_where_python_looks(tmp_path):
    with pytest.raises(ValueError, match=r"cannot find model factory 'mynets:resnet'.*PYTHONPATH.*"
                                         r"the current directory is"):  # fmt: skip
        models.from_spec("mynets:resnet")
    with pytest.raises(ValueError, match=r"robustkern.models has no 'resnet50'; its callables"):
        models.from_spec("robustkern.models:resnet50")
