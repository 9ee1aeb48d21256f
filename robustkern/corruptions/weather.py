"""Weather: snow, frost, fog, brightness (the paper's weather group) and spatter, as the
reference code computes them; frost's photographs are replaced by a synthetic texture."""

from __future__ import annotations

import functools
import math

import torch

from robustkern.corruptions.filtering import (
    canny,
    chamfer_distance,
    clipped_zoom,
    equalize_hist,
    filter2d,
    floor8,
    gaussian_filter,
    grey,
    motion_blur,
    plasma_fractal,
    randn,
    round8,
    uniform,
)


def snow(x: torch.Tensor, param, g) -> torch.Tensor:
    n, _, h, w = x.shape
    flakes = param[0] + param[1] * randn((n, 1, h, w), x, g)
    angle = uniform((n,), -135.0, -45.0, x, g)
    return snow_with(x, param, flakes, angle)


def snow_with(x: torch.Tensor, param, flakes: torch.Tensor, angle: torch.Tensor):
    """Snow from given draws: ``flakes`` (N, 1, H, W) ~ N(mean, std), ``angle`` (N,) degrees.
    The flakes are zoomed (``clipped_zoom``), thresholded, stored as an 8-bit image, motion
    blurred (ImageMagick's kernel, 8-bit result) and added with their 180-degree rotation to
    the image, itself blended towards ``max(x, 1.5 grey + 0.5)``."""
    _, _, zoom, threshold, radius, sigma, kept = param
    layer = clipped_zoom(flakes, zoom)
    layer = floor8(torch.where(layer < threshold, 0, layer).clamp(0, 1))
    layer = round8(motion_blur(layer, radius, sigma, angle))
    x = kept * x + (1 - kept) * torch.maximum(x, grey(x) * 1.5 + 0.5)
    return x + layer + layer.flip(-2, -1)


# The reference's frost photographs (frost1-5; randint(5) never picks frost6, and frost2 and
# frost3 are one photograph), measured as it crops them: per RGB channel the mean, the mean
# standard deviation within a crop and the standard deviation of the crops' means, over 1,500
# crops each of 32 px from the 5x-shrunk photographs (CIFAR) and of 224 px (ImageNet).
_FROST_PHOTOS = {
    5: (
        ((0.301, 0.580, 0.645), (0.084, 0.051, 0.049), (0.065, 0.037, 0.030)),
        ((0.779, 0.797, 0.833), (0.069, 0.071, 0.073), (0.033, 0.036, 0.038)),
        ((0.778, 0.795, 0.832), (0.069, 0.071, 0.073), (0.032, 0.035, 0.037)),
        ((0.564, 0.622, 0.671), (0.101, 0.101, 0.105), (0.038, 0.038, 0.041)),
        ((0.403, 0.447, 0.494), (0.137, 0.135, 0.133), (0.066, 0.063, 0.060)),
    ),
    1: (
        ((0.302, 0.580, 0.645), (0.092, 0.055, 0.052), (0.059, 0.032, 0.025)),
        ((0.777, 0.794, 0.830), (0.076, 0.078, 0.081), (0.021, 0.024, 0.025)),
        ((0.777, 0.794, 0.830), (0.076, 0.078, 0.081), (0.022, 0.024, 0.025)),
        ((0.567, 0.625, 0.676), (0.102, 0.103, 0.108), (0.025, 0.024, 0.026)),
        ((0.397, 0.441, 0.488), (0.141, 0.139, 0.136), (0.047, 0.045, 0.043)),
    ),
}


def frost(x: torch.Tensor, param, g) -> torch.Tensor:
    """``image weight * x + frost weight * layer``, the layer synthetic (``frost_layer``)."""
    kept, weight, scale = param
    n, c, h, w = x.shape
    layer = frost_layer(n, h, w, scale, g, x)
    if c != 3:
        layer = grey(layer).expand(n, c, h, w)
    return kept * x + weight * layer


def frost_layer(n: int, h: int, w: int, scale: float, g, like: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) frost in [0, 1], synthesised in place of the reference's photographs (not
    shipped here): a photograph drawn per image as the reference does, whose measured colour
    statistics (``_FROST_PHOTOS``: mean, contrast within a crop, spread between crops) shape
    a grey crystal texture (``frost_texture``). What differs from the photographs: the
    texture is straight needles and short side branches, not grown dendrites, and channels
    vary together (the turquoise photograph's channels do not quite)."""
    stats = torch.tensor(_FROST_PHOTOS[scale], dtype=like.dtype, device=like.device)
    photo = torch.randint(len(stats), (n,), generator=g, device=like.device)
    mean, within, between = stats[photo].unbind(1)  # (N, 3) each
    offset = randn((n, 1), like, g)
    texture = frost_texture(n, h, w, scale, g, like)
    layer = (mean + between * offset)[..., None, None] + within[..., None, None] * texture
    return layer.clamp(0, 1)


def frost_texture(n: int, h: int, w: int, scale: float, g, like: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) crystal texture, zero mean and unit deviation per image; ``scale``:
    photograph pixels per image pixel (lengths below are in photograph pixels). Seeds (0.4 %
    of pixels, clumped by a smooth density) grow needles of half-length 20 along a smooth
    orientation field (6 directions, blended), and twice as many side needles a third as
    long at +-60 degrees; ``1 - exp(-1.5 s)`` saturates where they pile up; a smooth shading
    and a fine grain are added. The sizes and weights were fitted to the photographs'
    differences between neighbouring pixels relative to their contrast, at 1 and 4 pixels
    (CIFAR 0.86 and 0.98, ImageNet 0.50 and 0.78)."""
    angles = 6
    dtype, device = like.dtype, like.device
    field = functools.partial(_smooth_noise, n, h, w, g=g, like=like)
    theta = torch.atan2(field(40 / scale), field(40 / scale)) / 2
    p = 0.004 * scale**2 * torch.exp(0.5 * field(16 / scale))
    directions = torch.arange(angles, dtype=dtype, device=device) * math.pi / angles
    weights = torch.exp(3 * torch.cos(2 * (directions[:, None, None] - theta)))
    weights = weights / weights.sum(1, keepdim=True)  # (N, angles, H, W)
    sides = (weights.roll(angles // 3, 1) + weights.roll(-(angles // 3), 1)) / 2
    spectrum = 0
    for density, blend, length in ((p, weights, 20), (2 * p, 0.6 * sides, 20 / 3)):
        u = torch.rand((2, n, 1, h, w), generator=g, dtype=dtype, device=device)
        seeds = u[0] * (u[1] < density)
        grown = torch.fft.rfft2(seeds * blend)
        lines = _needles(h, w, angles, length / scale, str(device)).to(grown.dtype)
        spectrum = spectrum + (grown * lines).sum(1, keepdim=True)
    crystals = 1 - torch.exp(-1.5 * torch.fft.irfft2(spectrum, s=(h, w)))
    crystals = crystals / crystals.std(dim=(2, 3), keepdim=True).clamp_min(1e-12)
    grain = _smooth_noise(n, h, w, 1 / scale, g, like)
    texture = crystals + 0.2 * field(30 / scale) + (0.2 + 0.15 * (scale - 1)) * grain
    texture = texture - texture.mean(dim=(2, 3), keepdim=True)
    return texture / texture.std(dim=(2, 3), keepdim=True).clamp_min(1e-12)


def _smooth_noise(n: int, h: int, w: int, sigma: float, g, like: torch.Tensor):
    """(N, 1, H, W) white noise blurred by ``sigma`` (wrapping), unit deviation per image."""
    f = gaussian_filter(randn((n, 1, h, w), like, g), sigma, mode="wrap")
    return f / f.std(dim=(2, 3), keepdim=True).clamp_min(1e-12)


@functools.lru_cache(maxsize=16)
def _needles(h: int, w: int, angles: int, length: float, device: str) -> torch.Tensor:
    """The rfft2 of (angles, H, W) wrapping line kernels through the origin, one per direction
    k pi / angles, of half-length ``length``, tapering linearly, drawn with bilinear weights."""
    t = torch.arange(-length, length + 0.25, 0.5, dtype=torch.float64)
    taper = 0.5 * (1 - t.abs() / (length + 1))
    kernels = torch.zeros(angles, h, w, dtype=torch.float64)
    for k in range(angles):
        angle = math.pi * k / angles
        ys, xs = t * math.sin(angle), t * math.cos(angle)
        y0, x0 = ys.floor(), xs.floor()
        for oy in (0, 1):
            for ox in (0, 1):
                share = (1 - (ys - y0 - oy).abs()) * (1 - (xs - x0 - ox).abs())
                at = ((y0.long() + oy) % h, (x0.long() + ox) % w)
                kernels[k].index_put_(at, taper * share, accumulate=True)
    return torch.fft.rfft2(kernels).to(device)


def fog(x: torch.Tensor, param, g) -> torch.Tensor:
    strength, decay = param
    n, _, h, w = x.shape
    size = 1 << max(1, math.ceil(math.log2(max(h, w))))
    fractal = plasma_fractal(n, size, decay, g, x)[:, None, :h, :w]
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x + strength * fractal) * peak / (peak + strength)


def brightness(x: torch.Tensor, delta: float, g) -> torch.Tensor:
    # In HSV, RGB = V * f(H, S): raising V to V' with H, S fixed scales RGB by V' / V. A black
    # pixel (V = 0, so S = 0) becomes grey V'. One channel: V is the pixel itself.
    value = x.amax(dim=1, keepdim=True)
    raised = (value + delta).clamp(0, 1)
    return torch.where(value > 0, x * raised / value.clamp_min(1e-12), raised)


_WATER = (175 / 255, 238 / 255, 238 / 255)  # pale turquoise
_MUD = (63 / 255, 42 / 255, 20 / 255)


def spatter(x: torch.Tensor, param, g) -> torch.Tensor:
    n, _, h, w = x.shape
    liquid = param[0] + param[1] * randn((n, 1, h, w), x, g)
    return spatter_with(x, param, liquid)


def spatter_with(x: torch.Tensor, param, liquid: torch.Tensor) -> torch.Tensor:
    """Spatter from a given draw ``liquid`` (N, 1, H, W) ~ N(mean, std), blurred and
    thresholded. Water: the liquid's 8-bit level times a texture of its edges (Canny, chamfer
    distance to the edges truncated at 20, box blur, histogram equalisation, an emboss
    kernel, box blur: cv2's steps, integer where cv2's are), scaled to peak at ``intensity``,
    adds pale turquoise. Mud: the thresholded liquid blurred by ``intensity``, kept where
    above 0.8, blends to brown. Colours other than 3 channels: the colour's grey."""
    _, _, sigma, threshold, intensity, mud = param
    liquid = gaussian_filter(liquid, sigma)
    liquid = torch.where(liquid < threshold, 0, liquid)
    if mud:
        m = gaussian_filter((liquid > threshold).to(x.dtype), intensity)
        m = torch.where(m < 0.8, 0, m)
        return x * (1 - m) + _colour(_MUD, x) * m
    level = torch.floor(liquid.clamp(0, 1).double() * 255)  # np.uint8, without its wrap-around
    m = level * _water_texture(level)
    peak = m.amax(dim=(1, 2, 3), keepdim=True)
    m = torch.where(peak > 0, m / peak.clamp_min(1), 0).to(x.dtype) * intensity
    return x + m * _colour(_WATER, x)


def _water_texture(level: torch.Tensor) -> torch.Tensor:
    box = torch.ones(3, 3, dtype=torch.float64)
    emboss = torch.tensor([[-2.0, -1.0, 0.0], [-1.0, 1.0, 1.0], [0.0, 1.0, 2.0]])
    d = chamfer_distance(canny(level, 50, 150), 20)
    d = torch.floor((filter2d(d, box) * (1 / 9)).float().double())  # float blur, then uint8
    d = equalize_hist(d)
    d = filter2d(d, emboss).clamp(0, 255)  # 8-bit output saturates
    return torch.round(filter2d(d, box) / 9)  # 8-bit box blur rounds


def _colour(rgb, x: torch.Tensor) -> torch.Tensor:
    colour = torch.tensor(rgb, dtype=x.dtype, device=x.device)[None, :, None, None]
    return colour if x.shape[1] == 3 else grey(colour)


FUNCTIONS = {
    "snow": snow,
    "frost": frost,
    "fog": fog,
    "brightness": brightness,
    "spatter": spatter,
}
