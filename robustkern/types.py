"""Type aliases the whole package shares."""

from __future__ import annotations

import torch

Bounds = tuple[float, float]  # (lo, hi): the range of valid inputs
PerSample = float | torch.Tensor  # one value, or a 1-D tensor of one value per sample
Shard = tuple[int, int]  # (offset, total): rows offset.. of a batch of total rows split over ranks
