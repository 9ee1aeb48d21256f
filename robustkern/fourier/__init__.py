"""Fourier-basis perturbations and Fourier heat maps (Yin et al., "A Fourier Perspective on Model
Robustness", 2019), and the low-/high-pass filtering experiment from the same discussion.

The basis convention, used everywhere in robustkern (kernels, reference, plots):

* A frequency is an integer offset ``(i, j)`` from the zero frequency: ``i`` counts cycles down
  the image (rows), ``j`` across it (columns). Offsets are taken mod ``(H, W)``.
* ``U(i, j)[u, v] = c * cos(2 pi (i u / H + j v / W))``: cosine phase, zero at the top-left
  pixel ``(0, 0)``. Its 2-D DFT is non-zero only at ``(i, j)`` and ``(-i, -j)``, so
  ``U(i, j) == U(-i, -j)`` exactly and a heat map needs each conjugate pair once.
* ``c`` makes ``||U||_2 = 1``: ``sqrt(2 / (H W))``, or ``1 / sqrt(H W)`` at the self-conjugate
  frequencies (the zero frequency and, for even sizes, the Nyquist row ``i = -H/2`` and column
  ``j = -W/2`` crossings), where the cosine is +-1. The Nyquist row ``-H/2`` and ``+H/2`` are the
  same frequency; the maps list it once, as ``-H/2`` (row 0), like ``torch.fft.fftshift``.
* Maps of shape ``(H, W)`` are centred: index ``(r, s)`` holds frequency
  ``(r - H // 2, s - W // 2)``, so the zero frequency is at ``(H // 2, W // 2)``. Odd sizes:
  offsets ``-(H-1)/2 .. (H-1)/2``, the map is point-symmetric about the centre. Even sizes:
  offsets ``-H/2 .. H/2 - 1``; row 0 / column 0 are the Nyquist frequencies.
* For a C-channel image, the perturbation ``eps * sign * U`` is added to every channel with an
  independent random sign, so each channel's perturbation has L2 norm ``eps`` (Yin et al.).

(Two public implementations differ in phase, one using the cosine and one the sine; a heat map
depends on it only through the image content, but the convention is fixed here so that maps are
reproducible.)"""

from robustkern.fourier.basis import (
    conjugate_index,
    distinct_frequencies,
    fourier_basis,
    frequency_grid,
    heatmap_signs,
)
from robustkern.fourier.filtering import FilteredTraining, band_filter, filtered_training_experiment
from robustkern.fourier.heatmap import heatmap, plot_heatmap, radial_profile, summary

__all__ = [
    "FilteredTraining",
    "band_filter",
    "conjugate_index",
    "distinct_frequencies",
    "filtered_training_experiment",
    "fourier_basis",
    "frequency_grid",
    "heatmap",
    "heatmap_signs",
    "plot_heatmap",
    "radial_profile",
    "summary",
]
