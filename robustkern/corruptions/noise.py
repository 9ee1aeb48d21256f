"""Noise: Gaussian, shot (Poisson), impulse (salt and pepper) and speckle, per pixel and
channel as the reference code draws them."""

from __future__ import annotations

import torch

from robustkern.corruptions.filtering import randn


def gaussian_noise(x: torch.Tensor, sigma: float, g) -> torch.Tensor:
    return x + sigma * randn(x.shape, x, g)


def shot_noise(x: torch.Tensor, photons: float, g) -> torch.Tensor:
    return torch.poisson(x * photons, generator=g) / photons


def impulse_noise(x: torch.Tensor, amount: float, g) -> torch.Tensor:
    # skimage's random_noise(mode="s&p"): a fraction ``amount`` of the values, half salt.
    flipped = torch.rand(x.shape, generator=g, dtype=x.dtype, device=x.device) < amount
    salt = torch.rand(x.shape, generator=g, dtype=x.dtype, device=x.device) < 0.5
    return torch.where(flipped, salt.to(x.dtype), x)


def speckle_noise(x: torch.Tensor, sigma: float, g) -> torch.Tensor:
    return x + x * sigma * randn(x.shape, x, g)


FUNCTIONS = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "speckle_noise": speckle_noise,
}
