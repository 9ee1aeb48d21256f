"""The Fourier basis images and the frequencies a heat map evaluates (the convention is stated
in the package docstring)."""

from __future__ import annotations

import math

import torch

from robustkern import ops


def frequency_grid(h: int, w: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(h, w, 2) int64: the frequency offset (i, j) at each index of a centred map."""
    i = torch.arange(h, device=device) - h // 2
    j = torch.arange(w, device=device) - w // 2
    return torch.stack(torch.meshgrid(i, j, indexing="ij"), dim=-1)


def conjugate_index(h: int, w: int) -> torch.Tensor:
    """(h * w,) int64: for each flat index of a centred map, the flat index of (-i, -j)."""
    f = frequency_grid(h, w).view(-1, 2)
    r = (-f[:, 0] + h // 2) % h
    s = (-f[:, 1] + w // 2) % w
    return r * w + s


def distinct_frequencies(h: int, w: int) -> torch.Tensor:
    """Flat indices of a centred map with one frequency per conjugate pair (the one whose index
    is not above its conjugate's): about half of h * w, all a heat map has to evaluate."""
    flat = torch.arange(h * w)
    return flat[flat <= conjugate_index(h, w)]


def fourier_basis(
    h: int,
    w: int,
    freqs: torch.Tensor,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(F, h, w) basis images U(freqs[f]) of unit L2 norm; ``freqs`` is (F, 2) int64 offsets."""
    if h < 1 or w < 1:
        raise ValueError(f"h and w must be >= 1, got {h}, {w}")
    zero = torch.zeros(1, 1, h, w, dtype=dtype, device=device)
    return ops.fourier_perturb(zero, freqs, eps=1.0, bounds=(-math.inf, math.inf))[:, 0, 0]


def heatmap_signs(seed: int, flat_indices: torch.Tensor, n: int, c: int) -> torch.Tensor:
    """(F, n, c) random +-1 signs the heat map uses for these flat map indices: a function of
    (seed, frequency, image) only, so maps do not depend on batching."""
    out = torch.empty(len(flat_indices), n, c)
    for row, index in zip(out, flat_indices.tolist(), strict=True):
        g = torch.Generator().manual_seed(seed * 1_000_003 + index)
        row.copy_(torch.randint(0, 2, (n, c), generator=g) * 2 - 1)
    return out
