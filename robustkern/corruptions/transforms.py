"""``corrupt``: any corruption by name at a severity, batched in torch (CPU and GPU), all
randomness from the caller's generator; the one registry of the themed modules' functions."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from robustkern.checks import check_choice, check_images
from robustkern.corruptions import blur, digital, noise, weather
from robustkern.corruptions.parameters import (
    CORRUPTIONS,
    PARAMETERS,
    SEVERITIES,
    SMALL_IMAGE_MAX_SIDE,
)
from robustkern.types import Bounds

# name -> f(images in [0, 1] (N, C, H, W), one severity's parameters, generator) -> images
FUNCTIONS: dict[str, Callable] = {
    **noise.FUNCTIONS,
    **blur.FUNCTIONS,
    **weather.FUNCTIONS,
    **digital.FUNCTIONS,
}
if set(FUNCTIONS) != set(PARAMETERS):  # a corruption without parameters or the other way
    raise ImportError(f"corruptions and their tables disagree: {set(FUNCTIONS) ^ set(PARAMETERS)}")


def table_for(h: int, w: int) -> str:
    """The severity table for images of this size: "cifar" up to 64 px, else "imagenet"."""
    return "cifar" if max(h, w) <= SMALL_IMAGE_MAX_SIDE else "imagenet"


def corrupt(
    x: torch.Tensor,
    name: str,
    severity: int,
    *,
    generator: torch.Generator | None = None,
    bounds: Bounds = (0.0, 1.0),
    table: str = "auto",
) -> torch.Tensor:
    """``x`` (N, C, H, W) in ``bounds`` under corruption ``name`` (``CORRUPTIONS``) at
    ``severity`` 1..5, clipped to ``bounds``, same dtype and device. ``generator``: on x's
    device, the source of all randomness (None: torch's default). ``table``: "cifar",
    "imagenet" or "auto" (by image size, ``table_for``)."""
    if name not in PARAMETERS:
        raise ValueError(f"unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}")
    check_choice(severity, SEVERITIES, "severity")
    check_images(x)
    lo, hi = float(bounds[0]), float(bounds[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"bounds must be finite with lo < hi, got {bounds}")
    if table == "auto":
        table = table_for(*x.shape[-2:])
    if table not in ("cifar", "imagenet"):
        raise ValueError(f"table must be 'auto', 'cifar' or 'imagenet', got {table!r}")
    param = PARAMETERS[name][table][severity - 1]
    if x.numel() == 0:
        return x.clone()
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    unit = ((x.to(acc) - lo) / (hi - lo)).clamp(0, 1)
    out = FUNCTIONS[name](unit, param, generator)
    return (out.clamp(0, 1) * (hi - lo) + lo).to(x.dtype)
