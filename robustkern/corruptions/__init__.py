"""Common corruptions in torch (CPU and GPU), five severities each, and a corruption report.

All 15 corruptions of Hendrycks & Dietterich's ImageNet-C and CIFAR-10-C (``NAMES_15``, the
paper's order: noise, blur, weather, digital), their four extra ones (``NAMES_EXTRA``) and the
low- and high-pass filters of Yin et al., following the reference code (``make_cifar_c.py``,
``make_imagenet_c.py``) step by step, batched over images: ``noise.py``, ``blur.py``,
``weather.py``, ``digital.py``, with what they share in ``filtering.py``. Severity parameters
come in two tables, picked by image size:

* ``"cifar"`` (CIFAR-10-C's values) for images whose larger side is at most 64 px (CIFAR,
  MNIST, Tiny ImageNet sizes),
* ``"imagenet"`` (ImageNet-C's values, made for 224 px) for larger images.

ImageNet-C's values applied to 32 px images are far too harsh (e.g. gaussian noise sigma 0.38
vs 0.10 at severity 5); pass ``table=`` to force one. ``PARAMETERS`` holds both tables.

Images are taken in ``bounds`` (default (0, 1)), processed in [0, 1] like the reference code and
mapped back; outputs are clipped to ``bounds``. All randomness comes from the ``generator``
argument (on the images' device), so results are reproducible. Known differences from the
reference code (each corruption's docstring has its own): frost synthesises its texture in
place of the reference's photographs (``weather.frost_layer``); motion blur and snow use
ImageMagick's motion-blur kernel in torch; elastic's affine warp does not round positions to
1/32 pixel as cv2 does; pixelate's PIL BOX resampling is done by adaptive average pooling
(identical for integer factors); the reference code quantises its outputs to 8 bits, this
does not (JPEG, glass blur, snow and spatter keep the reference's own 8-bit steps). Channels
other than 1 (grey) or 3 (RGB) are treated like colour channels; colours (snow's grey, spatter,
frost) become grey on them."""

from robustkern.corruptions.parameters import (
    CORRUPTIONS,
    NAMES_15,
    NAMES_EXTRA,
    PARAMETERS,
    SEVERITIES,
    SMALL_IMAGE_MAX_SIDE,
)
from robustkern.corruptions.report import CorruptionReport, corruption_report, plot_report
from robustkern.corruptions.transforms import corrupt, table_for

__all__ = [
    "CORRUPTIONS",
    "NAMES_15",
    "NAMES_EXTRA",
    "PARAMETERS",
    "SEVERITIES",
    "SMALL_IMAGE_MAX_SIDE",
    "CorruptionReport",
    "corrupt",
    "corruption_report",
    "plot_report",
    "table_for",
]
