import pytest
import torch

from robustkern import data, models, training

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """Models the CLI trains go to a per-test cache, never the user's."""
    monkeypatch.setenv("ROBUSTKERN_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def digits_model():
    """A small CNN trained on digits (clean accuracy ~97 %) and 200 test images."""
    torch.manual_seed(0)
    x, y, xt, yt = data.load("digits")
    model = models.small_cnn(1, 10, width=16)
    training.fit(model, (x, y), epochs=8, batch_size=64, progress=False)
    return model.eval(), xt[:200], yt[:200]


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()
