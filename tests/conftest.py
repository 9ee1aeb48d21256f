import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """Models the CLI trains go to a per-test cache, never the user's."""
    monkeypatch.setenv("ROBUSTKERN_CACHE", str(tmp_path / "cache"))
