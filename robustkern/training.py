"""Training loops. Standard (clean) training for now: the CLI uses it to make a default model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


def fit(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int = 3,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Standard training with Adam on an (x, y) pair of tensors; returns the loss per epoch.
    Deterministic for a given seed. The model is left in eval mode."""
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"x and y must be non-empty and of equal length, got {len(x)}, {len(y)}")
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    model.train()
    for _ in tqdm(range(epochs), desc="train", disable=not progress, unit="epoch"):
        order, total = torch.randperm(len(x), generator=generator), 0.0
        for batch in order.split(batch_size):
            loss = F.cross_entropy(model(x[batch]), y[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(batch)
        history.append(total / len(x))
    model.eval()
    return history
