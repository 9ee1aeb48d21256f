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


@contextmanager
def channels_last(model: torch.nn.Module, enabled: bool | None = None) -> Iterator[bool]:
    """The model's 4-D weights and buffers in channels_last memory format for the block, and
    back in the default format after; yields whether it switched them.

    enabled: None (default) switches a model on a CPU that has a ``Conv2d`` and 4-D tensors
    only in the default format: there oneDNN's channels_last kernels ran max-pooling CNNs
    2.5-3x and a MobileNet 1.5x faster forward (1.3-1.55x forward+backward), ResNets
    1.0-1.35x, and nothing measured more than 5 % slower (two 2-core CPUs, AMD EPYC and Intel
    Xeon: bench/results/intel-xeon-2t-layout.md); on other devices it stays off until measured
    there. True switches such a model on any device; False leaves the model as it is. Logits
    can differ in the last bits (another summation order), and with them an attack's path.
    Models with 5-D tensors, already in another layout, or wrapped for data parallelism are
    left alone."""
    tensors = [*model.parameters(), *model.buffers()]
    switch = (
        enabled is not False
        and any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
        and all(t.dim() != 5 and (t.dim() != 4 or t.is_contiguous()) for t in tensors)
        and not isinstance(model, torch.nn.parallel.DistributedDataParallel | torch.nn.DataParallel)
        and (enabled or model_device(model).type == "cpu")
    )
    if not switch:
        yield False
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield True
    finally:
        model.to(memory_format=torch.contiguous_format)
