"""The grid of a sweep: its cells (one model x attack entry x eps each), grouped per model and
attack entry, each identified by the hash of its configuration, which holds the data's and the
model's contents by hash (``fingerprints``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robustkern import resume
from robustkern.sweep.config import AttackSpec, ModelSpec, Sweep, cell_config, config_hash


@dataclass
class Cell:
    model: ModelSpec
    attack: AttackSpec
    eps: float
    config: dict
    hash: str


def fingerprints(x: torch.Tensor, y: torch.Tensor, nets: dict) -> dict[str, str]:
    """Content hashes of the data ("data") and of each model (by name), for cell_config."""
    return {"data": fingerprint_data(x, y)} | {n: fingerprint_model(m) for n, m in nets.items()}


def plan(sweep: Sweep, hashes: dict[str, str]) -> list[list[Cell]]:
    """The grid: one group per model and attack entry, one cell per eps."""
    groups = []
    for model in sweep.models:
        for attack in sweep.attacks:
            group = []
            for eps in attack.eps:
                config = cell_config(sweep, model, attack, eps, hashes)
                group.append(Cell(model, attack, eps, config, config_hash(config)))
            groups.append(group)
    return groups


def fingerprint_data(x: torch.Tensor, y: torch.Tensor) -> str:
    return resume.tensor_digest(x, y)


def fingerprint_model(model: torch.nn.Module) -> str:
    """A hash of the parameters and buffers (names, dtypes, shapes, values)."""
    return resume.model_digest(model)
