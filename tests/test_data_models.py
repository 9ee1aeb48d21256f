"""Embedded data, user .npz files, built-in models and weight loading."""

import numpy as np
import pytest
import torch

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
    with pytest.raises(ValueError, match="unknown dataset"):
        data.load("cifar")


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
