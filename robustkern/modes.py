"""Where a model runs and in which mode: every helper that puts a model in eval mode restores
the mode it found (adversarial training attacks in train mode on purpose)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The model in eval mode for the block; every submodule's own mode is restored after (a
    model in train mode may keep some layers in eval on purpose, e.g. frozen BatchNorm)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")
