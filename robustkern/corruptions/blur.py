"""Blurs: Gaussian, defocus, glass, motion and zoom, as the reference code computes them."""

from __future__ import annotations

import functools

import torch

from robustkern.corruptions.filtering import (
    clipped_zoom,
    disk,
    filter2d,
    floor8,
    gaussian_filter,
    uniform,
    zoom_factors,
)
from robustkern.corruptions.filtering import (
    motion_blur as magick_motion_blur,
)


def gaussian_blur(x: torch.Tensor, sigma: float, g) -> torch.Tensor:
    return gaussian_filter(x, sigma)  # skimage's gaussian: truncate 4 sigma, 'nearest' borders


def defocus_blur(x: torch.Tensor, param, g) -> torch.Tensor:
    radius, alias_sigma = param
    return filter2d(x, disk(radius, alias_sigma, x))  # cv2.filter2D's reflect-101 borders


def glass_blur(x: torch.Tensor, param, g) -> torch.Tensor:
    """Gaussian blur, 8-bit truncation, the reference's local shuffle (``passes`` sweeps from
    the bottom-right, each visited pixel taking the pixel at an offset drawn from
    [-delta, delta) in each axis, see ``local_shuffle``), Gaussian blur again."""
    sigma, delta, passes = param
    n, _, h, w = x.shape
    shape = (n, passes, max(h - 2 * delta, 0), max(w - 2 * delta, 0), 2)
    draws = torch.randint(-delta, delta, shape, generator=g, device=x.device)
    return glass_blur_with(x, sigma, delta, draws)


def glass_blur_with(x: torch.Tensor, sigma: float, delta: int, draws: torch.Tensor):
    """Glass blur with given draws: ``draws[n, p, i, j] = (dx, dy)``, the offset the reference
    draws in pass ``p`` for the pixel at row ``H - delta - i``, column ``W - delta - j``."""
    n, c, h, w = x.shape
    blurred = floor8(gaussian_filter(x, sigma))
    source = local_shuffle(draws, h, w, delta)
    flat = blurred.flatten(2).gather(2, source[:, None, :].expand(n, c, h * w))
    return gaussian_filter(flat.view_as(x), sigma)


def local_shuffle(draws: torch.Tensor, h: int, w: int, delta: int) -> torch.Tensor:
    """(N, H * W): the pixel each position holds after the reference's sequential shuffle.

    The reference visits the pixels in turn and writes ``x[p], x[q] = x[q], x[p]`` with
    ``q = p + (dy, dx)``; on its (H, W, 3) arrays both sides are numpy views, so this copies
    ``x[q]`` into ``x[p]`` and leaves ``x[q]`` as it was. CIFAR-10-C and ImageNet-C were made
    with these copies, and this makes them on any number of channels (the line would swap on
    a 2-D grey array, as imagecorruptions passes grey images). Each copy sees the earlier
    ones, but two copies can only interact when their visited pixels are within ``delta`` of
    each other in both axes; so the copies run in wavefronts (``_copy_rounds``) in which none
    reads another's pixel and every interacting pair keeps its order: the same result, with a
    few hundred batched steps in place of H * W sequential ones."""
    n = draws.shape[0]
    rounds, visited = _copy_rounds(h, w, delta, draws.shape[1], str(draws.device))
    flat = draws.reshape(n, -1, 2)
    partner = visited + flat[..., 1] * w + flat[..., 0]
    # a last, idle copy fills the rounds' empty slots: position h * w onto itself
    idle = torch.full((n, 1), h * w, dtype=partner.dtype, device=partner.device)
    target = torch.cat([visited, visited.new_full((1,), h * w)])[rounds]
    source = torch.cat([partner, idle], 1)[:, rounds]
    order = torch.arange(h * w + 1, device=draws.device).repeat(n, 1)
    for r in range(len(rounds)):
        order.scatter_(1, target[r].expand(n, -1), order.gather(1, source[:, r]))
    return order[:, : h * w]


@functools.lru_cache(maxsize=32)
def _copy_rounds(h: int, w: int, delta: int, passes: int, device: str):
    """(rounds, slots) indices into the flattened draws (the idle copy where a round has fewer
    copies), and each draw's visited pixel (flat index). The copy visiting row ``H - delta -
    i``, column ``W - delta - j`` in pass ``p`` runs in round ``(delta + 1) i + j + lag p``:
    along a row rounds follow the reference's order, a row's copies come ``delta + 1`` columns
    after the next lower row's (out of each other's reach), and ``lag`` waits out the
    interactions with the previous pass."""
    rows, cols = max(h - 2 * delta, 0), max(w - 2 * delta, 0)
    i = torch.arange(rows)[None, :, None]
    j = torch.arange(cols)[None, None, :]
    p = torch.arange(passes)[:, None, None]
    lag = (delta + 2) * delta + 1
    when = ((delta + 1) * i + j + lag * p).flatten()
    visited = ((h - delta - i) * w + (w - delta - j)).expand(passes, rows, cols).flatten()
    count = len(when)
    if count == 0:
        return torch.zeros(0, 1, dtype=torch.long, device=device), visited.to(device)
    when, draw = torch.sort(when, stable=True)
    sizes = torch.bincount(when)
    slot = torch.arange(count) - (torch.cumsum(sizes, 0) - sizes)[when]
    table = torch.full((len(sizes), int(sizes.max())), count, dtype=torch.long)
    table[when, slot] = draw
    return table[sizes > 0].to(device), visited.to(device)


def motion_blur(x: torch.Tensor, param, g) -> torch.Tensor:
    """ImageMagick's motion blur (see ``filtering.motion_blur``) at an angle drawn from
    U(-45, 45) degrees per image."""
    radius, sigma = param
    angle = uniform((len(x),), -45.0, 45.0, x, g)
    return magick_motion_blur(x, radius, sigma, angle)


def zoom_blur(x: torch.Tensor, param, g) -> torch.Tensor:
    """The mean of the image and its centre zoomed by each factor (``clipped_zoom``)."""
    factors = zoom_factors(*param)
    out = x.clone()
    for factor in factors:
        out += clipped_zoom(x, factor)
    return out / (len(factors) + 1)


FUNCTIONS = {
    "gaussian_blur": gaussian_blur,
    "defocus_blur": defocus_blur,
    "glass_blur": glass_blur,
    "motion_blur": motion_blur,
    "zoom_blur": zoom_blur,
}
