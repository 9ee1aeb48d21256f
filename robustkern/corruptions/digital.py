"""Digital: contrast, elastic transform, pixelate, JPEG compression and saturate, as the
reference code computes them, and the low- and high-pass filters of Yin et al. (ours)."""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from robustkern.corruptions.filtering import gaussian_filter, uniform
from robustkern.fourier import band_filter


def contrast(x: torch.Tensor, factor: float, g) -> torch.Tensor:
    means = x.mean(dim=(2, 3), keepdim=True)
    return (x - means) * factor + means


def elastic_transform(x: torch.Tensor, param, g) -> torch.Tensor:
    n, _, h, w = x.shape
    moves = uniform((n, 3, 2), -param[2], param[2], x, g)
    fields = uniform((n, 2, h, w), -1.0, 1.0, x, g)
    return elastic_with(x, param, moves, fields)


def elastic_with(x: torch.Tensor, param, moves: torch.Tensor, fields: torch.Tensor):
    """Elastic transform from given draws: ``moves`` (N, 3, 2), the (x, y) jitter of three
    points, U(-jitter, jitter); ``fields`` (N, 2, H, W), the U(-1, 1) noise of the column and
    row displacements.

    As the reference: the affine map taking the three points (centre + (s, s), + (s, -s),
    - (s, s), s = min(H, W) // 3) to their jittered places warps the image (cv2.warpAffine,
    bilinear, reflect-101 borders), then every pixel reads the warped image at its place
    plus ``alpha`` times the noise smoothed by a Gaussian of ``sigma`` (truncated at 3 sigma,
    reflecting borders), bilinear with reflecting borders (scipy's map_coordinates, order 1).
    Differences: cv2 rounds the warp's source positions to 1/32 pixel, this does not; the
    centre is (W // 2, H // 2) as (x, y) (the reference's (H // 2, W // 2) is the same on
    square images)."""
    alpha, sigma, _ = param
    n, _, h, w = x.shape
    centre = torch.tensor([w // 2, h // 2], dtype=torch.float64, device=x.device)
    s = max(min(h, w) // 3, 1)  # below 3 px the reference's three points coincide
    corners = torch.tensor([[s, s], [s, -s], [-s, -s]], dtype=torch.float64, device=x.device)
    before = centre + corners
    after = before + moves.double()
    ones = torch.ones(n, 3, 1, dtype=torch.float64, device=x.device)
    # the inverse map (output place -> source place): the affine map taking after to before
    inverse = torch.linalg.solve(torch.cat([after, ones], 2), before.expand(n, 3, 2))
    rows = torch.arange(h, dtype=torch.float64, device=x.device)
    cols = torch.arange(w, dtype=torch.float64, device=x.device)
    ys, xs = torch.meshgrid(rows, cols, indexing="ij")
    source = torch.stack([xs, ys, torch.ones_like(xs)], -1).view(1, h * w, 3) @ inverse
    scale = torch.tensor([max(w - 1, 1), max(h - 1, 1)], dtype=torch.float64, device=x.device)
    grid = (2 * source / scale - 1).view(n, h, w, 2).to(x.dtype)  # align_corners: centres
    warped = F.grid_sample(x, grid, padding_mode="reflection", align_corners=True)
    shift = gaussian_filter(fields, sigma, mode="reflect", truncate=3) * alpha  # (dx, dy)
    places = torch.stack([xs + shift[:, 0], ys + shift[:, 1]], -1)
    size = torch.tensor([w, h], dtype=places.dtype, device=x.device)
    grid = ((2 * places + 1) / size - 1).to(x.dtype)  # align_corners=False: pixel edges
    return F.grid_sample(warped, grid, padding_mode="reflection", align_corners=False)


def pixelate(x: torch.Tensor, factor: float, g) -> torch.Tensor:
    h, w = x.shape[-2:]
    small = F.adaptive_avg_pool2d(x, (max(1, int(h * factor)), max(1, int(w * factor))))
    return F.adaptive_avg_pool2d(small, (h, w))  # box resampling, as PIL's BOX filter


def jpeg_compression(x: torch.Tensor, quality: int, g) -> torch.Tensor:
    """A real JPEG round trip with Pillow at ``quality`` (its default 4:2:0 chroma subsampling
    for RGB), one image at a time on the CPU: images on a GPU go to host memory and back. The
    image is rounded to 8 bits first (the reference's images are 8-bit); 3 channels are
    encoded as RGB, others one channel at a time as greyscale."""
    n, c = x.shape[:2]
    pixels = torch.round(x.detach() * 255).clamp(0, 255).to(torch.uint8).cpu().numpy()
    out = np.empty_like(pixels)
    for i in range(n):
        if c == 3:
            out[i] = _jpeg(pixels[i].transpose(1, 2, 0), quality).transpose(2, 0, 1)
        else:
            for k in range(c):
                out[i, k] = _jpeg(pixels[i, k], quality)
    return torch.from_numpy(out).to(device=x.device, dtype=x.dtype) / 255


def _jpeg(pixels: np.ndarray, quality: int) -> np.ndarray:
    """(H, W, 3) RGB or (H, W) grey uint8 through a JPEG file."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer))


def saturate(x: torch.Tensor, param, g) -> torch.Tensor:
    """skimage's HSV round trip with saturation ``S * factor + shift`` (clipped to [0, 1]).
    For a fixed hue and value every channel is ``V (1 - S w)``, ``w`` fixed by the hue, so
    the new channel is ``V - S' V (V - c) / (V - min)``. Grey pixels have hue 0 (red) in
    skimage: the first channel stays V and the others become ``V (1 - S')``, which tints
    them red where ``shift > 0``, as in the reference. One channel: unchanged."""
    factor, shift = param
    value, low = x.amax(1, keepdim=True), x.amin(1, keepdim=True)
    spread = value - low
    saturation = torch.where(value > 0, spread / value.clamp_min(1e-12), 0)
    new = (saturation * factor + shift).clamp(0, 1)
    coloured = value - new * value * (value - x) / spread.clamp_min(1e-12)
    hue_zero = value * (1 - new).expand_as(x).clone()
    hue_zero[:, :1] = value
    return torch.where(spread > 0, coloured, hue_zero)


def low_pass(x: torch.Tensor, fraction: float, g) -> torch.Tensor:
    return band_filter(x, _band_radius(x, fraction), "low")


def high_pass(x: torch.Tensor, fraction: float, g) -> torch.Tensor:
    return band_filter(x, _band_radius(x, fraction), "high")


def _band_radius(x: torch.Tensor, fraction: float) -> int:
    return max(1, round(fraction * min(x.shape[-2:]) / 2))


FUNCTIONS = {
    "contrast": contrast,
    "elastic_transform": elastic_transform,
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
    "saturate": saturate,
    "low_pass": low_pass,
    "high_pass": high_pass,
}
