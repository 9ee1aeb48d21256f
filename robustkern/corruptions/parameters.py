"""The corruptions' severity tables: CIFAR-10-C's and ImageNet-C's five severities each, from
Hendrycks & Dietterich's reference code unless noted."""

from __future__ import annotations

SEVERITIES = (1, 2, 3, 4, 5)


SMALL_IMAGE_MAX_SIDE = 64


# name -> table -> the five severities' parameters (from the reference code unless noted).
PARAMETERS: dict[str, dict[str, tuple]] = {
    "gaussian_noise": {  # noise sigma
        "cifar": (0.04, 0.06, 0.08, 0.09, 0.10),
        "imagenet": (0.08, 0.12, 0.18, 0.26, 0.38),
    },
    "shot_noise": {  # Poisson photons per unit intensity
        "cifar": (500, 250, 100, 75, 50),
        "imagenet": (60, 25, 12, 5, 3),
    },
    "impulse_noise": {  # salt-and-pepper fraction
        "cifar": (0.01, 0.02, 0.03, 0.05, 0.07),
        "imagenet": (0.03, 0.06, 0.09, 0.17, 0.27),
    },
    "speckle_noise": {  # multiplicative noise sigma
        "cifar": (0.06, 0.1, 0.12, 0.16, 0.2),
        "imagenet": (0.15, 0.2, 0.35, 0.45, 0.6),
    },
    "gaussian_blur": {  # sigma in pixels
        "cifar": (0.4, 0.6, 0.7, 0.8, 1.0),
        "imagenet": (1, 2, 3, 4, 6),
    },
    "defocus_blur": {  # (disk radius, anti-alias sigma)
        "cifar": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
        "imagenet": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
    },
    "contrast": {  # factor towards the per-channel mean
        "cifar": (0.75, 0.5, 0.4, 0.3, 0.15),
        "imagenet": (0.4, 0.3, 0.2, 0.1, 0.05),
    },
    "brightness": {  # added to HSV value
        "cifar": (0.05, 0.1, 0.15, 0.2, 0.3),
        "imagenet": (0.1, 0.2, 0.3, 0.4, 0.5),
    },
    "fog": {  # (fractal strength, wibble decay)
        "cifar": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
        "imagenet": ((1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)),
    },
    "pixelate": {  # down-sampling factor
        "cifar": (0.95, 0.9, 0.85, 0.75, 0.65),
        "imagenet": (0.6, 0.5, 0.4, 0.3, 0.25),
    },
    # Ours (not in CIFAR-10-C / ImageNet-C): Yin et al.'s filters, as a fraction of half the
    # smaller image side; low-pass keeps |i|,|j| <= radius, high-pass removes it but the mean.
    "low_pass": {"cifar": (0.8, 0.6, 0.45, 0.3, 0.2), "imagenet": (0.8, 0.6, 0.45, 0.3, 0.2)},
    "high_pass": {"cifar": (0.07, 0.15, 0.25, 0.4, 0.6), "imagenet": (0.07, 0.15, 0.25, 0.4, 0.6)},
}


CORRUPTIONS = tuple(PARAMETERS)
