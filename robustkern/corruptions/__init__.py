"""Common corruptions in torch (CPU and GPU), five severities each, and a corruption report.

The corruptions follow Hendrycks & Dietterich's reference code (``make_cifar_c.py`` and
``make_imagenet_c.py``) for the ones that can be done faithfully in torch, plus the low- and
high-pass filters of Yin et al. Severity parameters come in two tables, picked by image size:

* ``"cifar"`` (CIFAR-10-C's values) for images whose larger side is at most 64 px (CIFAR,
  MNIST, Tiny ImageNet sizes),
* ``"imagenet"`` (ImageNet-C's values, made for 224 px) for larger images.

ImageNet-C's values applied to 32 px images are far too harsh (e.g. gaussian noise sigma 0.38
vs 0.10 at severity 5); pass ``table=`` to force one. ``PARAMETERS`` holds both tables.

Images are taken in ``bounds`` (default (0, 1)), processed in [0, 1] like the reference code and
mapped back; outputs are clipped to ``bounds``. All randomness comes from the ``generator``
argument (on the images' device), so results are reproducible. Known differences from the
reference code: pixelate's PIL BOX resampling is done by adaptive average pooling (identical for
integer factors); the reference code quantises its outputs to 8 bits, this does not. Channels
other than 1 (grey) or 3 (RGB) are treated like colour channels."""

from robustkern.corruptions.parameters import (
    CORRUPTIONS,
    PARAMETERS,
    SEVERITIES,
    SMALL_IMAGE_MAX_SIDE,
)
from robustkern.corruptions.report import CorruptionReport, corruption_report, plot_report
from robustkern.corruptions.transforms import corrupt, table_for

__all__ = [
    "CORRUPTIONS",
    "PARAMETERS",
    "SEVERITIES",
    "SMALL_IMAGE_MAX_SIDE",
    "CorruptionReport",
    "corrupt",
    "corruption_report",
    "plot_report",
    "table_for",
]
