"""What several corruptions share, batched over (N, C, H, W) on any device: scipy.ndimage's
border modes and Gaussian filter, cv2's 2-D correlation, ImageMagick's motion blur, the
reference code's clipped zoom and plasma fractal, its 8-bit steps, and the random draws (all
from the caller's generator)."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

# scipy.ndimage's names; cv2's BORDER_REPLICATE is "nearest", BORDER_REFLECT_101 is "mirror".
BORDERS = ("nearest", "reflect", "mirror", "wrap")


def randn(shape, like: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    return torch.randn(shape, generator=g, dtype=like.dtype, device=like.device)


def uniform(shape, lo: float, hi: float, like: torch.Tensor, g) -> torch.Tensor:
    """Uniform on [lo, hi), as numpy's ``uniform(lo, hi, shape)``."""
    u = torch.rand(shape, generator=g, dtype=like.dtype, device=like.device)
    return lo + (hi - lo) * u


def floor8(x: torch.Tensor) -> torch.Tensor:
    """The reference's ``np.uint8(x * 255) / 255`` on [0, 1] values (truncation)."""
    return torch.floor(x * 255) / 255


def round8(x: torch.Tensor) -> torch.Tensor:
    """An 8-bit image file's rounding of [0, 1] values."""
    return torch.round(x * 255) / 255


def grey(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) luma as cv2's RGB2GRAY (0.299 R + 0.587 G + 0.114 B); other channel counts:
    their mean (one channel: itself)."""
    if x.shape[1] == 3:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device)
        return (x * w[:, None, None]).sum(1, keepdim=True)
    return x.mean(1, keepdim=True)


def border_index(i: torch.Tensor, n: int, mode: str) -> torch.Tensor:
    """Where index ``i`` (any integers) of a length-``n`` axis reads under a border ``mode``:
    nearest (a a | a b c | c c), reflect (b a | a b c | c b), mirror (c b | a b c | b a), wrap;
    offsets beyond one reflection keep reflecting, as scipy.ndimage and cv2 do."""
    if mode == "nearest":
        return i.clamp(0, n - 1)
    if mode == "wrap":
        return i.remainder(n)
    if mode == "reflect":
        j = i.remainder(2 * n)
        return torch.where(j >= n, 2 * n - 1 - j, j)
    if mode == "mirror":
        if n == 1:
            return torch.zeros_like(i)
        j = i.remainder(2 * n - 2)
        return torch.where(j >= n, 2 * n - 2 - j, j)
    raise ValueError(f"border mode must be one of {BORDERS}, got {mode!r}")


def pad(x: torch.Tensor, ph: int, pw: int, mode: str) -> torch.Tensor:
    """``x`` (..., H, W) padded by ``ph`` rows and ``pw`` columns on each side (any width)."""
    h, w = x.shape[-2:]
    rows = border_index(torch.arange(-ph, h + ph, device=x.device), h, mode)
    cols = border_index(torch.arange(-pw, w + pw, device=x.device), w, mode)
    return x.index_select(-2, rows).index_select(-1, cols)


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """scipy.ndimage's 1-D Gaussian weights (float64): radius ``int(truncate * sigma + 0.5)``."""
    radius = int(truncate * sigma + 0.5)
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 / sigma**2 * taps**2)
    return k / k.sum()


@functools.lru_cache(maxsize=64)
def filter_matrix(n: int, sigma: float, mode: str, truncate: float) -> torch.Tensor:
    """The (n, n) float64 matrix (on the CPU, where its sums are deterministic) of a 1-D
    Gaussian filter under a border ``mode``: the border's reflections folded in, so a kernel
    of any width costs one (n, n) product."""
    kernel = gaussian_kernel(sigma, truncate)
    r = len(kernel) // 2
    idx = border_index(torch.arange(n)[:, None] + torch.arange(-r, r + 1), n, mode)
    out = torch.zeros(n, n, dtype=torch.float64)
    return out.scatter_add_(1, idx, kernel.expand(n, -1).contiguous())


def gaussian_filter(
    x: torch.Tensor, sigma: float, mode: str = "nearest", truncate: float = 4.0
) -> torch.Tensor:
    """scipy.ndimage.gaussian_filter over the last two axes of ``x`` (skimage's ``gaussian``
    with ``channel_axis``: mode "nearest" by default); sigma 0 leaves ``x`` as it is."""
    if sigma <= 1e-15:
        return x
    h, w = x.shape[-2:]
    rows = filter_matrix(h, float(sigma), mode, float(truncate)).to(x.device, x.dtype)
    cols = filter_matrix(w, float(sigma), mode, float(truncate)).to(x.device, x.dtype)
    return rows @ x @ cols.T


def filter2d(x: torch.Tensor, kernel: torch.Tensor, mode: str = "mirror") -> torch.Tensor:
    """cv2.filter2D: every channel of ``x`` (N, C, H, W) correlated with a (kh, kw) kernel
    (odd sides, anchored at its centre), same-size output; cv2's default border is mirror."""
    kh, kw = kernel.shape
    padded = pad(x, kh // 2, kw // 2, mode)
    c = x.shape[1]
    weight = kernel.to(device=x.device, dtype=x.dtype).expand(c, 1, kh, kw)
    return F.conv2d(padded, weight, groups=c)


def shifted(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """``out[n, :, i, j] = x[n, :, i + dy[n], j + dx[n]]``, edges replicated; ``dy``, ``dx``
    (N,) integer offsets per image."""
    n, c, h, w = x.shape
    rows = (torch.arange(h, device=x.device) + dy[:, None]).clamp(0, h - 1)
    cols = (torch.arange(w, device=x.device) + dx[:, None]).clamp(0, w - 1)
    out = x.gather(2, rows[:, None, :, None].expand(n, c, h, w))
    return out.gather(3, cols[:, None, None, :].expand(n, c, h, w))


def motion_blur(x: torch.Tensor, radius: float, sigma: float, angle: torch.Tensor):
    """ImageMagick's ``MotionBlurImage(radius, sigma, angle)`` on ``x`` (N, C, H, W), one angle
    (degrees, (N,)) per image: a one-sided line of ``2 ceil(radius) + 1`` taps, tap ``i``
    weighted ``exp(-i^2 / (2 sigma^2))`` (normalised) and reading the pixel at offset
    ``(ceil(i sin(angle) - 0.5), ceil(i cos(angle) - 0.5))`` (rows, columns), ImageMagick's
    rounding; pixels beyond the image read its edge (ImageMagick's default virtual pixels).
    ImageMagick computes in 16-bit quanta and writes 8 bits; this keeps full precision."""
    width = 2 * math.ceil(radius) + 1
    taps = torch.arange(width, dtype=torch.float64, device=x.device)
    weights = torch.exp(-(taps**2) / (2 * sigma**2))
    weights = (weights / weights.sum()).tolist()
    rad = angle.to(torch.float64) * math.pi / 180
    along_x, along_y = width * torch.cos(rad), width * torch.sin(rad)
    length = torch.hypot(along_y, along_x)
    dx = torch.ceil(taps * (along_x / length)[:, None] - 0.5).long()
    dy = torch.ceil(taps * (along_y / length)[:, None] - 0.5).long()
    out = torch.zeros_like(x)
    for t in range(width):
        out += weights[t] * shifted(x, dy[:, t], dx[:, t])
    return out


def zoom_factors(first: float, step: float, count: int) -> list[float]:
    """``np.arange(first, ..., step)``'s values: numpy fills ``first + i * delta`` with
    ``delta = (first + step) - first``."""
    delta = (first + step) - first
    return [first + i * delta for i in range(count)]


def clipped_zoom(x: torch.Tensor, factor: float) -> torch.Tensor:
    """The reference's ``clipped_zoom`` over the last two axes: the centre ``ceil(n / factor)``
    pixels of each axis, zoomed by ``factor`` with scipy.ndimage.zoom (order 1: output length
    ``round(crop * factor)``, output pixel ``o`` reads ``o (crop - 1) / (out - 1)``), then the
    centre ``n`` pixels of that. Done per axis (the reference takes the height's crop for both;
    the same on square images)."""
    for dim in (-2, -1):
        x = _zoom_axis(x, factor, dim)
    return x


def _zoom_axis(x: torch.Tensor, factor: float, dim: int) -> torch.Tensor:
    n = x.shape[dim]
    crop = math.ceil(n / factor)
    top = (n - crop) // 2
    out = round(crop * factor)
    trim = (out - n) // 2
    scale = (crop - 1) / (out - 1) if out > 1 else 0.0
    at = (trim + torch.arange(n, dtype=torch.float64, device=x.device)) * scale
    at = at.clamp(0, crop - 1)
    lo = at.floor().long().clamp(max=crop - 1)
    hi = (lo + 1).clamp(max=crop - 1)
    frac = (at - lo).to(x.dtype)
    shape = [1] * x.dim()
    shape[dim] = n
    frac = frac.view(shape)
    a, b = x.index_select(dim, top + lo), x.index_select(dim, top + hi)
    return a + (b - a) * frac


def plasma_fractal(
    n: int, size: int, decay: float, g: torch.Generator | None, like: torch.Tensor
) -> torch.Tensor:
    """(n, size, size) diamond-square height maps in [0, 1], as the reference code's
    ``plasma_fractal`` (including its ``wibble * uniform(-wibble, wibble)`` noise scale)."""
    grid = torch.zeros(n, size, size, dtype=like.dtype, device=like.device)
    step, wibble = size, 100.0

    def wibbled_mean(total: torch.Tensor) -> torch.Tensor:
        noise = torch.rand(total.shape, generator=g, dtype=total.dtype, device=total.device)
        return total / 4 + wibble * (2 * wibble * noise - wibble)

    while step >= 2:
        half = step // 2
        corners = grid[:, 0::step, 0::step]
        squares = corners + corners.roll(-1, dims=1)
        squares = squares + squares.roll(-1, dims=2)
        grid[:, half::step, half::step] = wibbled_mean(squares)
        centres = grid[:, half::step, half::step]
        corners = grid[:, 0::step, 0::step]
        grid[:, 0::step, half::step] = wibbled_mean(
            centres + centres.roll(1, dims=1) + corners + corners.roll(-1, dims=2)
        )
        grid[:, half::step, 0::step] = wibbled_mean(
            centres + centres.roll(1, dims=2) + corners + corners.roll(-1, dims=1)
        )
        step //= 2
        wibble /= decay
    grid -= grid.amin(dim=(1, 2), keepdim=True)
    return grid / grid.amax(dim=(1, 2), keepdim=True)


def disk(radius: float, alias_sigma: float, like: torch.Tensor) -> torch.Tensor:
    """The reference code's defocus kernel: a normalised disk on a grid of half-width
    max(8, radius), anti-aliased by a 3x3 (5x5 beyond radius 8) Gaussian with reflect-101
    borders (cv2.GaussianBlur), then trimmed to its non-zero support (which changes nothing)."""
    half = 8 if radius <= 8 else int(radius)
    taps = torch.arange(-half, half + 1, dtype=torch.float64)
    kernel = ((taps[:, None] ** 2 + taps[None, :] ** 2) <= radius**2).double()
    kernel /= kernel.sum()
    ksize = 3 if radius <= 8 else 5
    t = torch.arange(ksize, dtype=torch.float64) - (ksize - 1) / 2
    k = torch.exp(-(t**2) / (2 * alias_sigma**2))
    blurred = filter2d(kernel[None, None], (k[:, None] * k) / k.sum() ** 2)[0, 0]
    rows = blurred.abs().sum(1).nonzero().squeeze(1)
    cols = blurred.abs().sum(0).nonzero().squeeze(1)
    r = max(half - int(rows.min()), int(rows.max()) - half)  # keep the kernel centred
    c = max(half - int(cols.min()), int(cols.max()) - half)
    return blurred[half - r : half + r + 1, half - c : half + c + 1].to(like.device)


# --- cv2's edge, distance and histogram steps (spatter), on integer-valued float64 images ---

_TAN_22 = round(0.4142135623730950488016887242097 * (1 << 15))  # cv2's fixed-point tan(22.5)


def canny(image: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """cv2.Canny(image, low, high) (aperture 3, L1 gradient) on 8-bit values (N, 1, H, W):
    the edge pixels (bool). Sobel with replicated borders; non-maximum suppression with cv2's
    fixed-point sectors and tie rules (zero magnitude beyond the image); hysteresis: local
    maxima above ``low`` 8-connected to one above ``high``."""
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    dx = filter2d(image, sobel, "nearest")
    dy = filter2d(image, sobel.T, "nearest")
    mag = dx.abs() + dy.abs()
    h, w = image.shape[-2:]
    m = F.pad(mag, (1, 1, 1, 1))

    def at(i: int, j: int) -> torch.Tensor:  # the neighbour i rows down, j columns right
        return m[..., 1 + i : 1 + i + h, 1 + j : 1 + j + w]

    ax, ay = dx.abs(), dy.abs() * (1 << 15)
    tan22 = ax * _TAN_22
    horizontal = ay < tan22
    vertical = ~horizontal & (ay > tan22 + ax * (1 << 16))
    rising = dx * dy < 0  # cv2's s = -1
    diagonal = torch.where(
        rising, (mag > at(-1, 1)) & (mag > at(1, -1)), (mag > at(-1, -1)) & (mag > at(1, 1))
    )
    peak = torch.where(
        horizontal,
        (mag > at(0, -1)) & (mag >= at(0, 1)),
        torch.where(vertical, (mag > at(-1, 0)) & (mag >= at(1, 0)), diagonal),
    )
    weak = peak & (mag > low)
    edges = weak & (mag > high)
    while True:  # grow the strong edges through weak ones, one ring per step
        grown = weak & (F.max_pool2d(edges.to(mag.dtype), 3, 1, 1) > 0)
        if torch.equal(grown, edges):
            return edges
        edges = grown


# cv2.distanceTransform's DIST_L2 5x5 mask in its 16-bit fixed point: steps, knight moves
_CHAMFER = [((0, 1), 65536), ((1, 1), 91750), ((1, 2), 143976)]


def chamfer_distance(edges: torch.Tensor, limit: float) -> torch.Tensor:
    """cv2.distanceTransform(255 - edges, DIST_L2, 5) truncated at ``limit``: each pixel's
    5x5-chamfer distance (steps 1, diagonals 1.4, knight moves 2.1969, in cv2's fixed point)
    to the nearest edge pixel of (N, 1, H, W) ``edges``, never leaving the image. Shortest
    paths by relaxation: each round lets paths take one more step, and a path of length up
    to ``limit`` takes at most ``limit`` steps."""
    inf = torch.tensor(float("inf"), dtype=torch.float64, device=edges.device)
    d = torch.where(edges, torch.zeros((), dtype=torch.float64, device=edges.device), inf)
    h, w = edges.shape[-2:]
    moves = []
    for (a, b), cost in _CHAMFER:
        for i, j in {(a, b), (b, a), (-a, b), (b, -a), (a, -b), (-b, a), (-a, -b), (-b, -a)}:
            moves.append((i, j, float(cost)))
    for _ in range(math.ceil(limit)):
        padded = F.pad(d, (2, 2, 2, 2), value=float("inf"))
        best = d
        for i, j, cost in moves:
            best = torch.minimum(best, padded[..., 2 + i : 2 + i + h, 2 + j : 2 + j + w] + cost)
        d = best
    return (d / 65536).clamp(max=limit)


def equalize_hist(image: torch.Tensor) -> torch.Tensor:
    """cv2.equalizeHist per image of (N, 1, H, W) 8-bit values: the lookup
    ``round(float32(count up to v - count of the lowest value) * float32(255 / (pixels -
    count of the lowest value)))``; a one-valued image stays as it is."""
    n = image.shape[0]
    values = image.flatten(1).long()
    total = values.shape[1]
    hist = torch.zeros(n, 256, dtype=torch.float64, device=image.device)
    hist.scatter_add_(1, values, torch.ones_like(values, dtype=torch.float64))
    lowest = hist.gt(0).double().argmax(1, keepdim=True)  # the first value present
    first = hist.gather(1, lowest)
    scale = (255 / (total - first).clamp_min(1).float()).float()
    lut = torch.round((hist.cumsum(1) - first).float() * scale).clamp(0, 255).double()
    out = lut.gather(1, values).view_as(image)
    return torch.where(first == total, image.flatten(1), out.flatten(1)).view_as(image)
