"""The corruptions' severity tables: CIFAR-10-C's and ImageNet-C's five severities each, from
Hendrycks & Dietterich's reference code (``make_cifar_c.py``, ``make_imagenet_c.py``) unless
noted, and the names in the paper's order."""

from __future__ import annotations

SEVERITIES = (1, 2, 3, 4, 5)


SMALL_IMAGE_MAX_SIDE = 64


# The 15 corruptions of ImageNet-C / CIFAR-10-C that mCE averages, in the paper's order.
NAMES_15 = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)

# The paper's four held-out corruptions (its validation set), reported apart from mCE.
NAMES_EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")


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
    "defocus_blur": {  # (disk radius, anti-alias sigma)
        "cifar": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
        "imagenet": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
    },
    "glass_blur": {  # (Gaussian sigma, largest shuffle offset, shuffle passes)
        "cifar": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
        "imagenet": ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
    },
    "motion_blur": {  # ImageMagick's (radius, sigma) in pixels
        "cifar": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
        "imagenet": ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
    },
    "zoom_blur": {  # zoom factors (first, step, count): np.arange(1, stop, step) as the
        # reference writes it, whose float rounding keeps the stop of 1.06 and 1.11
        "cifar": ((1, 0.01, 7), (1, 0.01, 12), (1, 0.01, 16), (1, 0.01, 21), (1, 0.01, 26)),
        "imagenet": ((1, 0.01, 12), (1, 0.01, 16), (1, 0.02, 11), (1, 0.02, 13), (1, 0.03, 11)),
    },
    "snow": {  # (flake mean, flake std, zoom, threshold, blur radius, blur sigma, image kept)
        "cifar": (
            (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
            (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
            (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
            (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
            (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
        ),
        "imagenet": (
            (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
            (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
            (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
            (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
            (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
        ),
    },
    "frost": {  # (image weight, frost weight, photograph pixels per image pixel: CIFAR-10-C
        # shrinks the frost photographs 5x, ImageNet-C crops them at full size)
        "cifar": ((1, 0.2, 5), (1, 0.3, 5), (0.9, 0.4, 5), (0.85, 0.4, 5), (0.75, 0.45, 5)),
        "imagenet": ((1, 0.4, 1), (0.8, 0.6, 1), (0.7, 0.7, 1), (0.65, 0.7, 1), (0.6, 0.75, 1)),
    },
    "fog": {  # (fractal strength, wibble decay)
        "cifar": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
        "imagenet": ((1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)),
    },
    "brightness": {  # added to HSV value
        "cifar": (0.05, 0.1, 0.15, 0.2, 0.3),
        "imagenet": (0.1, 0.2, 0.3, 0.4, 0.5),
    },
    "contrast": {  # factor towards the per-channel mean
        "cifar": (0.75, 0.5, 0.4, 0.3, 0.15),
        "imagenet": (0.4, 0.3, 0.2, 0.1, 0.05),
    },
    "elastic_transform": {  # (alpha, sigma, affine jitter) in pixels: the reference's
        # 32 * (...) and 244 * (...) ("244 should have been 224", its comment says)
        "cifar": (
            (0.0, 0.0, 2.56),
            (1.6, 6.4, 2.24),
            (2.56, 1.92, 1.92),
            (3.2, 1.28, 1.6),
            (3.2, 0.96, 0.96),
        ),
        "imagenet": (
            (488.0, 170.8, 24.4),
            (488.0, 19.52, 48.8),
            (12.2, 2.44, 4.88),
            (17.08, 2.44, 4.88),
            (29.28, 2.44, 4.88),
        ),
    },
    "pixelate": {  # down-sampling factor
        "cifar": (0.95, 0.9, 0.85, 0.75, 0.65),
        "imagenet": (0.6, 0.5, 0.4, 0.3, 0.25),
    },
    "jpeg_compression": {  # JPEG quality
        "cifar": (80, 65, 58, 50, 40),
        "imagenet": (25, 18, 15, 10, 7),
    },
    "speckle_noise": {  # multiplicative noise sigma
        "cifar": (0.06, 0.1, 0.12, 0.16, 0.2),
        "imagenet": (0.15, 0.2, 0.35, 0.45, 0.6),
    },
    "gaussian_blur": {  # sigma in pixels
        "cifar": (0.4, 0.6, 0.7, 0.8, 1.0),
        "imagenet": (1, 2, 3, 4, 6),
    },
    "spatter": {  # (liquid mean, liquid std, liquid sigma, threshold, intensity, mud?)
        "cifar": (
            (0.62, 0.1, 0.7, 0.7, 0.5, 0),
            (0.65, 0.1, 0.8, 0.7, 0.5, 0),
            (0.65, 0.3, 1, 0.69, 0.5, 0),
            (0.65, 0.1, 0.7, 0.69, 0.6, 1),
            (0.65, 0.1, 0.5, 0.68, 0.6, 1),
        ),
        "imagenet": (
            (0.65, 0.3, 4, 0.69, 0.6, 0),
            (0.65, 0.3, 3, 0.68, 0.6, 0),
            (0.65, 0.3, 2, 0.68, 0.5, 0),
            (0.65, 0.3, 1, 0.65, 1.5, 1),
            (0.67, 0.4, 1, 0.65, 1.5, 1),
        ),
    },
    "saturate": {  # (HSV saturation factor, added saturation)
        "cifar": ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
        "imagenet": ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)),
    },
    # Ours (not in CIFAR-10-C / ImageNet-C): Yin et al.'s filters, as a fraction of half the
    # smaller image side; low-pass keeps |i|,|j| <= radius, high-pass removes it but the mean.
    "low_pass": {"cifar": (0.8, 0.6, 0.45, 0.3, 0.2), "imagenet": (0.8, 0.6, 0.45, 0.3, 0.2)},
    "high_pass": {"cifar": (0.07, 0.15, 0.25, 0.4, 0.6), "imagenet": (0.07, 0.15, 0.25, 0.4, 0.6)},
}


CORRUPTIONS = tuple(PARAMETERS)  # NAMES_15, then NAMES_EXTRA, then the filters
