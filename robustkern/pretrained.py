"""Small CNNs trained on the embedded data on first use and cached (no network, ever): the
model behind the CLI's default runs, standard or adversarially trained."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from robustkern import models, training
from robustkern._io import atomic_torch_save

# PGD-AT recipe of the README's reference results: eps ramped up over 3 of 10 epochs
ADVERSARIAL = {"method": "pgd", "eps": 0.3, "steps": 10, "eps_warmup": 3, "batch_size": 128,
               "channels_last": True}  # fmt: skip


def cache_dir() -> Path:
    """$ROBUSTKERN_CACHE, else $XDG_CACHE_HOME/robustkern, else ~/.cache/robustkern."""
    if os.environ.get("ROBUSTKERN_CACHE"):
        return Path(os.environ["ROBUSTKERN_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "robustkern"


def data_key(name: str) -> str:
    """An embedded dataset's name, or a file's content hash (a changed file is new data)."""
    return hashlib.sha256(Path(name).read_bytes()).hexdigest() if name.endswith(".npz") else name


def small_cnn(
    data: str,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    *,
    method: str = "standard",
    epochs: int = 10,
    seed: int = 0,
    progress: bool = True,
    **fit_kwargs,
) -> torch.nn.Module:
    """The small CNN trained on (x_train, y_train) of dataset ``data`` with ``fit(method=...,
    **fit_kwargs)``, loaded from the cache when the same data and settings were trained before
    (the file is written atomically, so a killed run never leaves half a model)."""
    fit_kwargs = {"batch_size": 64, **fit_kwargs}
    settings = {"model": "small_cnn", "data": data_key(data), "method": method,
                "epochs": epochs, "seed": seed, "fit": fit_kwargs, "format": 3}  # fmt: skip
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / "models" / f"small_cnn-{method}-{key}.pt"
    torch.manual_seed(seed)
    model = models.small_cnn(x_train.shape[1], int(y_train.max()) + 1)
    what = "standard" if method == "standard" else f"{method}-trained (eps {fit_kwargs['eps']:g})"
    if path.is_file():
        model.load_state_dict(models.load_weights(path))
        print(f"model: {what} small CNN from cache {path}")
        return model
    print(f"model: training a {what} small CNN on {data} ({epochs} epochs; cached after)")
    training.fit(
        model, (x_train, y_train), method=method, epochs=epochs, seed=seed, train_eval=0,
        progress=progress, **fit_kwargs,
    )  # fmt: skip
    atomic_torch_save(model.state_dict(), path)
    return model


def trained_cnn(data: str = "digits", adversarial: bool = False) -> torch.nn.Module:
    """The suite's default models as a factory a sweep file can name
    (``factory = "robustkern.pretrained:trained_cnn"``): ``small_cnn`` trained on an embedded
    dataset's training split, standard or with the ``ADVERSARIAL`` PGD-AT recipe; trained on
    first use (say so on stderr), cached after."""
    from robustkern.data import load

    x_train, y_train, _, _ = load(data)
    recipe = ADVERSARIAL if adversarial else {}
    return small_cnn(data, x_train, y_train, progress=False, **recipe)
