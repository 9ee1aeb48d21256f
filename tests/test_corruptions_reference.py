"""robustkern.corruptions against Hendrycks & Dietterich's reference algorithms: our own numpy
ports of make_cifar_c.py / make_imagenet_c.py (and of the cv2, ImageMagick and skimage steps
they call; scipy.ndimage where they call it) on fixed 32 px images, every severity of both
tables. Random corruptions are compared on shared draws (the torch function that takes the
draws against the port fed the same numbers), then ``corrupt`` is tied to that function and
the change's mean and deviation compared with the port's under numpy's own draws. Frost,
synthetic here, is compared with the statistics of the reference's photographs."""

import math

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
from PIL import Image

from robustkern import corruptions as C
from robustkern.corruptions import blur, digital, filtering, weather

SIZE = 32


def images(n=3, size=SIZE, seed=0, dtype=torch.float64):
    """Smooth colour images on the 8-bit grid (the reference's inputs are 8-bit), with a few
    saturated, black and grey pixels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.avg_pool2d(torch.rand(n, 3, size + 4, size + 4, generator=g), 5, 1)
    x = (x - 0.5) * 2.5 + 0.5
    x[:, :, :3, :3] = 0
    x[:, :, -3:, :2] = 0.6
    return (torch.round(x.clamp(0, 1) * 255) / 255).to(dtype)


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def hwc(x):
    return x.permute(0, 2, 3, 1).numpy()


def nchw(a):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2)))


def params(name):
    return [(table, s, C.PARAMETERS[name][table][s - 1]) for table in ("cifar", "imagenet")
            for s in C.SEVERITIES]  # fmt: skip


def close(ours, theirs, atol=1e-6):
    np.testing.assert_allclose(ours.numpy(), np.asarray(theirs), rtol=0, atol=atol)


# --- ports of the helpers the reference calls ---------------------------------------------


def sk_gaussian(a, sigma, mode="nearest", truncate=4.0):
    """skimage.filters.gaussian: scipy's filter over the image axes (none over channels)."""
    sigmas = (sigma, sigma) + (0,) * (a.ndim - 2)
    return ndi.gaussian_filter(a, sigmas, mode=mode, truncate=truncate)


def clipped_zoom(img, z):
    """make_cifar_c.py's clipped_zoom (square images)."""
    h = img.shape[0]
    ch = int(np.ceil(h / z))
    top = (h - ch) // 2
    img = ndi.zoom(img[top : top + ch, top : top + ch], (z, z, 1), order=1)
    trim = (img.shape[0] - h) // 2
    return img[trim : trim + h, trim : trim + h]


def magick_motion_blur(a, radius, sigma, angle):
    """ImageMagick's MotionBlurImage (effect.c) on (H, W) or (H, W, C): kernel width
    2 ceil(radius) + 1, Gaussian tap weights normalised, tap i reading (x + offset.x, y +
    offset.y), offsets from point = width (sin, cos) / hypot, edge virtual pixels."""
    width = int(2 * math.ceil(radius) + 1)
    k = np.array([math.exp(-(i * i) / (2 * sigma * sigma)) / (math.sqrt(2 * math.pi) * sigma)
                  for i in range(width)])  # fmt: skip
    k /= k.sum()
    px = width * math.sin(math.pi * angle / 180)
    py = width * math.cos(math.pi * angle / 180)
    hyp = math.hypot(px, py)
    h, w = a.shape[:2]
    out = np.zeros(a.shape)
    for i in range(width):
        ox = math.ceil(i * py / hyp - 0.5)
        oy = math.ceil(i * px / hyp - 0.5)
        rows = np.clip(np.arange(h) + oy, 0, h - 1)
        cols = np.clip(np.arange(w) + ox, 0, w - 1)
        out += k[i] * a[rows][:, cols]
    return out


def reflect101(i, n):
    j = np.mod(i, 2 * n - 2)
    return np.where(j >= n, 2 * n - 2 - j, j)


def cv2_filter2d(a, kernel):
    """cv2.filter2D's correlation (anchor at the centre, BORDER_REFLECT_101) on (H, W)."""
    kh, kw = kernel.shape
    p = np.pad(a, ((kh // 2,) * 2, (kw // 2,) * 2), mode="reflect")  # numpy's = reflect-101
    h, w = a.shape
    return sum(kernel[i, j] * p[i : i + h, j : j + w] for i in range(kh) for j in range(kw))


def cv2_blur_float(a):
    s = cv2_filter2d(a.astype(np.float64), np.ones((3, 3)))
    return (s * (1.0 / 9)).astype(np.float32)  # cv2: double sum times 1/9, stored as float


def cv2_blur_u8(a):
    return np.rint(cv2_filter2d(a.astype(np.float64), np.ones((3, 3))) / 9).astype(np.uint8)


def cv2_canny(img, low, high):
    """OpenCV's Canny (canny.cpp, aperture 3, L1): Sobel with replicated borders, the
    fixed-point sector test, the map (0 maybe, 1 no, 2 edge) with its push rules, and the
    stack-based hysteresis."""
    h, w = img.shape
    p = np.pad(img.astype(np.int64), 1, mode="edge")
    dx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    dy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    mag = np.zeros((h + 2, w + 2), np.int64)
    mag[1:-1, 1:-1] = np.abs(dx) + np.abs(dy)
    tg22 = int(0.4142135623730950488016887242097 * (1 << 15) + 0.5)
    state = np.ones((h + 2, w + 2), np.uint8)
    stack = []
    for i in range(h):
        prev = False
        for j in range(w):
            m = mag[i + 1, j + 1]
            if m > low:
                xs, ys = int(dx[i, j]), int(dy[i, j])
                ax, ay = abs(xs), abs(ys) << 15
                t22 = ax * tg22
                if ay < t22:
                    peak = m > mag[i + 1, j] and m >= mag[i + 1, j + 2]
                elif ay > t22 + (ax << 16):
                    peak = m > mag[i, j + 1] and m >= mag[i + 2, j + 1]
                else:
                    s = -1 if (xs ^ ys) < 0 else 1
                    peak = m > mag[i, j + 1 - s] and m > mag[i + 2, j + 1 + s]
                if peak:
                    if not prev and m > high and state[i, j + 1] != 2:
                        state[i + 1, j + 1] = 2
                        stack.append((i + 1, j + 1))
                        prev = True
                    else:
                        state[i + 1, j + 1] = 0
                    continue
            prev = False
            state[i + 1, j + 1] = 1
    while stack:
        r, c = stack.pop()
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                if state[r + dr, c + dc] == 0:
                    state[r + dr, c + dc] = 2
                    stack.append((r + dr, c + dc))
    return state[1:-1, 1:-1] == 2


def cv2_distance(src):
    """cv2.distanceTransform(src, DIST_L2, 5) (distransform.cpp's two raster passes in 16-bit
    fixed point: 1, 1.4, 2.1969; a border of DIST_MAX)."""
    hv, diag, knight = 65536, 91750, 143976
    top = 2**32 - 1 - knight
    earlier = [(-2, -1, knight), (-2, 1, knight), (-1, -2, knight), (-1, -1, diag), (-1, 0, hv),
               (-1, 1, diag), (-1, 2, knight), (0, -1, hv)]  # fmt: skip
    h, w = src.shape
    t = np.full((h + 4, w + 4), top, np.int64)
    for i in range(2, h + 2):
        for j in range(2, w + 2):
            if src[i - 2, j - 2] == 0:
                t[i, j] = 0
            else:
                t[i, j] = min([top] + [t[i + a, j + b] + c for a, b, c in earlier])
    out = np.zeros((h, w), np.float32)
    for i in range(h + 1, 1, -1):
        for j in range(w + 1, 1, -1):
            if t[i, j] > hv:
                t[i, j] = min([t[i, j]] + [t[i - a, j - b] + c for a, b, c in earlier])
            out[i - 2, j - 2] = np.float32(t[i, j]) * np.float32(1 / 65536)
    return out


def cv2_equalize(img):
    hist = np.bincount(img.ravel(), minlength=256)
    i = int(np.flatnonzero(hist)[0])
    if hist[i] == img.size:
        return img.copy()
    scale = np.float32(255.0) / np.float32(img.size - hist[i])
    lut = np.zeros(256, np.uint8)
    total = 0
    for j in range(i + 1, 256):
        total += hist[j]
        lut[j] = np.clip(np.rint(np.float32(total) * scale), 0, 255)
    return lut[img]


def sk_rgb2hsv(a):
    v = a.max(-1)
    delta = a.max(-1) - a.min(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.where(delta == 0, 0, delta / v)
        hue = np.zeros_like(v)
        for k, (i, j, base) in enumerate([(1, 2, 0.0), (2, 0, 2.0), (0, 1, 4.0)]):
            idx = a[..., k] == v
            hue[idx] = base + (a[..., i][idx] - a[..., j][idx]) / delta[idx]
    hue = (hue / 6.0) % 1.0
    hue[delta == 0] = 0
    return np.stack([hue, s, v], -1)


def sk_hsv2rgb(a):
    h, s, v = a[..., 0], a[..., 1], a[..., 2]
    hi = np.floor(h * 6)
    f = h * 6 - hi
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    hi = hi.astype(np.uint8) % 6
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = np.zeros(a.shape)
    for k, rgb in enumerate(choices):
        out[hi == k] = np.stack(rgb, -1)[hi == k]
    return out


# --- the reference's corruptions, ported ---------------------------------------------------


def ref_glass_blur(x, sigma, delta, draws):
    """make_*_c.py's glass_blur on (H, W, 3), the loop's randint draws given; its tuple
    assignment on (H, W, 3) views copies rather than swaps, as it does here."""
    x = np.uint8(sk_gaussian(x, sigma) * 255)
    h, w = x.shape[:2]
    for p in range(draws.shape[0]):
        for i, hh in enumerate(range(h - delta, delta, -1)):
            for j, ww in enumerate(range(w - delta, delta, -1)):
                dx, dy = draws[p, i, j]
                hp, wp = hh + dy, ww + dx
                x[hh, ww], x[hp, wp] = x[hp, wp], x[hh, ww]
    return np.clip(sk_gaussian(x / 255.0, sigma), 0, 1)


def ref_zoom_blur(x, factors):
    x = x.astype(np.float32)
    out = np.zeros_like(x)
    for z in factors:
        out += clipped_zoom(x, z)
    return np.clip((x + out) / (len(factors) + 1), 0, 1)


def ref_snow(x, c, flakes, angle):
    x = x.astype(np.float32)
    layer = clipped_zoom(flakes[..., None], c[2])
    layer[layer < c[3]] = 0
    layer = (np.clip(layer.squeeze(), 0, 1) * 255).astype(np.uint8)  # the PIL 'L' image
    layer = np.rint(magick_motion_blur(layer.astype(np.float64), c[4], c[5], angle)) / 255
    layer = layer[..., None]
    grey = x @ np.array([0.299, 0.587, 0.114], np.float32)
    x = c[6] * x + (1 - c[6]) * np.maximum(x, grey[..., None] * 1.5 + 0.5)
    return np.clip(x + layer + np.rot90(layer, k=2), 0, 1)


def ref_spatter(x, c, liquid):
    x = x.astype(np.float32)
    liquid = sk_gaussian(liquid, c[2])
    liquid[liquid < c[3]] = 0
    if c[5] == 0:
        liquid = (liquid * 255).astype(np.uint8)
        dist = cv2_distance(255 - 255 * cv2_canny(liquid, 50, 150).astype(np.uint8))
        dist = np.minimum(dist, np.float32(20))
        dist = cv2_blur_float(dist).astype(np.uint8)
        dist = cv2_equalize(dist)
        emboss = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
        dist = np.clip(cv2_filter2d(dist.astype(np.float64), emboss), 0, 255).astype(np.uint8)
        dist = cv2_blur_u8(dist).astype(np.float32)
        m = liquid * dist
        m = m / np.max(m) * c[4]
        colour = np.array([175, 238, 238], np.float32) / 255
        return np.clip(x + m[..., None] * colour, 0, 1)
    m = np.where(liquid > c[3], 1, 0)
    m = sk_gaussian(m.astype(np.float32), c[4])
    m[m < 0.8] = 0
    colour = np.array([63, 42, 20], np.float32) / 255 * m[..., None]
    return np.clip(x * (1 - m[..., None]) + colour, 0, 1)


def cv2_affine(src, dst):
    """cv2.getAffineTransform: the 2x3 M with M [p 1] = q for the three pairs."""
    a = np.concatenate([src.astype(np.float64), np.ones((3, 1))], 1)
    return np.linalg.solve(a, dst.astype(np.float64)).T


def cv2_warp_affine(img, m, round_to_32nds):
    """cv2.warpAffine(img, M, (W, H), borderMode=BORDER_REFLECT_101), bilinear: each output
    pixel reads the inverse map's place; cv2 rounds that place to 1/32 pixel."""
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
    h, w = img.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    sx = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    sy = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    if round_to_32nds:
        sx, sy = np.round(sx * 32) / 32, np.round(sy * 32) / 32
    x0, y0 = np.floor(sx).astype(int), np.floor(sy).astype(int)
    fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
    at = lambda yy, xx: img[reflect101(yy, h), reflect101(xx, w)]  # noqa: E731
    return ((1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x0 + 1))
            + fy * ((1 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1)))  # fmt: skip


def ref_elastic(image, c, moves, fields, round_to_32nds=False):
    image = image.astype(np.float32)
    shape = image.shape
    centre = np.float32(shape[:2]) // 2
    side = min(shape[:2]) // 3
    pts1 = np.float32([centre + side, [centre[0] + side, centre[1] - side], centre - side])
    pts2 = pts1 + moves.astype(np.float32)
    image = cv2_warp_affine(image, cv2_affine(pts1, pts2), round_to_32nds).astype(np.float32)
    dx = (sk_gaussian(fields[0], c[1], mode="reflect", truncate=3) * c[0]).astype(np.float32)
    dy = (sk_gaussian(fields[1], c[1], mode="reflect", truncate=3) * c[0]).astype(np.float32)
    x, y, z = np.meshgrid(np.arange(shape[1]), np.arange(shape[0]), np.arange(shape[2]))
    indices = (np.reshape(y + dy[..., None], (-1, 1)), np.reshape(x + dx[..., None], (-1, 1)),
               np.reshape(z, (-1, 1)))  # fmt: skip
    out = ndi.map_coordinates(image, indices, order=1, mode="reflect").reshape(shape)
    return np.clip(out, 0, 1)


def ref_saturate(x, c):
    hsv = sk_rgb2hsv(x)
    hsv[..., 1] = np.clip(hsv[..., 1] * c[0] + c[1], 0, 1)
    return np.clip(sk_hsv2rgb(hsv), 0, 1)


def ref_jpeg(u8, quality):
    buffer = __import__("io").BytesIO()
    Image.fromarray(u8).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer)) / 255


def ref_defocus(x, radius, alias):
    half = 8 if radius <= 8 else int(radius)
    taps = np.arange(-half, half + 1)
    grid_x, grid_y = np.meshgrid(taps, taps)
    disk = ((grid_x**2 + grid_y**2) <= radius**2).astype(np.float32)
    disk /= disk.sum()
    ksize = 3 if radius <= 8 else 5
    t = np.arange(ksize) - (ksize - 1) / 2
    k = np.exp(-(t**2) / (2 * alias**2))
    k /= k.sum()
    kernel = cv2_filter2d(disk.astype(np.float64), np.outer(k, k))  # cv2.GaussianBlur
    return np.clip(np.stack([cv2_filter2d(x[..., d], kernel) for d in range(3)], -1), 0, 1)


# --- deterministic corruptions: within 8-bit rounding of the port -------------------------


def test_zoom_blur_matches_the_reference():
    reference_factors = {  # make_cifar_c.py's and make_imagenet_c.py's own expressions
        "cifar": [np.arange(1, 1.06, 0.01), np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01),
                  np.arange(1, 1.21, 0.01), np.arange(1, 1.26, 0.01)],
        "imagenet": [np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01),
                     np.arange(1, 1.21, 0.02), np.arange(1, 1.26, 0.02),
                     np.arange(1, 1.31, 0.03)],
    }  # fmt: skip
    x = images(2)
    for table, s, param in params("zoom_blur"):
        factors = reference_factors[table][s - 1]
        assert filtering.zoom_factors(*param) == factors.tolist()
        got = C.corrupt(x, "zoom_blur", s, table=table)
        close(got, np.stack([ref_zoom_blur(a, factors) for a in hwc(x)]).transpose(0, 3, 1, 2),
              atol=1e-5)  # fmt: skip


def test_jpeg_is_pillow_at_the_reference_quality():
    x = images(2)
    u8 = np.rint(hwc(x) * 255).astype(np.uint8)
    for table, s, quality in params("jpeg_compression"):
        got = C.corrupt(x, "jpeg_compression", s, table=table)
        close(got, nchw([ref_jpeg(a, quality) for a in u8]), atol=1e-12)
    grey = C.corrupt(x[:, :1], "jpeg_compression", 5)
    close(grey[:, 0], np.stack([ref_jpeg(a[..., 0], 40) for a in u8]), atol=1e-12)


def test_saturate_matches_the_hsv_round_trip():
    x = images(2)
    x[0, :, 5:8, 5:8] = 0.4  # grey pixels: hue 0, tinted red once saturation is added
    for table, s, param in params("saturate"):
        got = C.corrupt(x, "saturate", s, table=table)
        close(got, nchw([ref_saturate(a, param) for a in hwc(x)]), atol=1e-9)
    assert torch.equal(C.corrupt(x[:, :1], "saturate", 5), x[:, :1])  # grey: hue 0, S stays 0


def test_defocus_blur_matches_the_reference():
    x = images(1)
    for table, s, (radius, alias) in params("defocus_blur"):
        got = C.corrupt(x, "defocus_blur", s, table=table)
        close(got, nchw([ref_defocus(a, radius, alias) for a in hwc(x)]), atol=1e-6)


def test_motion_blur_kernel_is_imagemagicks():
    x = images(2)
    angle = torch.tensor([-37.3, 12.9], dtype=torch.float64)
    for _table, _s, (radius, sigma) in params("motion_blur"):
        got = filtering.motion_blur(x, radius, sigma, angle)
        want = [
            magick_motion_blur(a, radius, sigma, float(t))
            for a, t in zip(hwc(x), angle, strict=True)
        ]
        close(got, nchw(want), atol=1e-9)


# --- random corruptions: the port on shared draws, then corrupt() tied to them ------------


def test_glass_blur_matches_the_reference_loop_on_shared_draws():
    x = images(2)
    n, _, h, w = x.shape
    g = torch.Generator().manual_seed(0)
    for table, s, (sigma, delta, passes) in params("glass_blur"):
        shape = (n, passes, h - 2 * delta, w - 2 * delta, 2)
        draws = torch.randint(-delta, delta, shape, generator=g)
        got = blur.glass_blur_with(x, sigma, delta, draws)
        want = [
            ref_glass_blur(a, sigma, delta, d) for a, d in zip(hwc(x), draws.numpy(), strict=True)
        ]
        close(got, nchw(want), atol=1e-9)
        again = C.corrupt(x, "glass_blur", s, table=table, generator=seeded(s))
        draws = torch.randint(-delta, delta, shape, generator=seeded(s))
        close(again, blur.glass_blur_with(x, sigma, delta, draws).clamp(0, 1), atol=0)


def test_the_batched_shuffle_is_the_sequential_loop_on_pixel_indices():
    """Each position's source pixel, exactly: large offsets, several passes, odd sizes."""
    for h, w, delta, passes in [(32, 32, 1, 2), (29, 23, 3, 2), (26, 31, 4, 3), (9, 12, 2, 1)]:
        g = torch.Generator().manual_seed(h * w)
        draws = torch.randint(-delta, delta, (3, passes, h - 2 * delta, w - 2 * delta, 2),
                              generator=g)  # fmt: skip
        got = blur.local_shuffle(draws, h, w, delta)
        for k in range(3):
            index = np.repeat(np.arange(h * w).reshape(h, w, 1), 3, 2)  # (H, W, 3): views
            for p in range(passes):
                for i, hh in enumerate(range(h - delta, delta, -1)):
                    for j, ww in enumerate(range(w - delta, delta, -1)):
                        dx, dy = draws[k, p, i, j].tolist()
                        hp, wp = hh + dy, ww + dx
                        index[hh, ww], index[hp, wp] = index[hp, wp], index[hh, ww]
            assert np.array_equal(got[k].numpy(), index[..., 0].ravel()), (h, w, delta, k)


def test_snow_matches_the_reference_on_shared_draws():
    x = images(2)
    g = torch.Generator().manual_seed(1)
    for table, s, c in params("snow"):
        flakes = c[0] + c[1] * torch.randn(2, 1, SIZE, SIZE, generator=g, dtype=torch.float64)
        angle = -135 + 90 * torch.rand(2, generator=g, dtype=torch.float64)
        got = weather.snow_with(x, c, flakes, angle).clamp(0, 1)
        want = [
            ref_snow(a, c, f[0].numpy(), float(t))
            for a, f, t in zip(hwc(x), flakes, angle, strict=True)
        ]
        close(got, nchw(want), atol=1e-5)
        tied = C.corrupt(x, "snow", s, table=table, generator=seeded(s))
        gg = seeded(s)
        flakes = c[0] + c[1] * torch.randn(2, 1, SIZE, SIZE, generator=gg, dtype=torch.float64)
        angle = -135 + 90 * torch.rand(2, generator=gg, dtype=torch.float64)
        close(tied, weather.snow_with(x, c, flakes, angle).clamp(0, 1), atol=1e-12)


def test_spatter_matches_the_reference_on_shared_draws():
    x = images(2)
    g = torch.Generator().manual_seed(2)
    for table, s, c in params("spatter"):
        liquid = c[0] + c[1] * torch.randn(2, 1, SIZE, SIZE, generator=g, dtype=torch.float64)
        got = weather.spatter_with(x, c, liquid).clamp(0, 1)
        want = [ref_spatter(a, c, f[0].numpy()) for a, f in zip(hwc(x), liquid, strict=True)]
        close(got, nchw(want), atol=1e-5)
        assert (got - x).abs().amax((1, 2, 3)).min() > 0.05  # every image has some liquid
        liquid = c[0] + c[1] * torch.randn(
            2, 1, SIZE, SIZE, generator=seeded(s), dtype=torch.float64
        )
        tied = C.corrupt(x, "spatter", s, table=table, generator=seeded(s))
        close(tied, weather.spatter_with(x, c, liquid).clamp(0, 1), atol=1e-12)


def test_cv2_steps_of_spatter_on_busy_inputs():
    """Canny, the chamfer distance and histogram equalisation alone, on images with many
    edges, ties and long weak chains (which the liquid layers seldom have)."""
    g = torch.Generator().manual_seed(3)
    level = torch.randint(0, 4, (3, 1, 24, 20), generator=g).double() * 60
    level = filtering.gaussian_filter(level, 0.8).round()
    edges = filtering.canny(level, 50, 150)
    for k in range(3):
        want = cv2_canny(level[k, 0].numpy().astype(np.uint8), 50, 150)
        assert np.array_equal(edges[k, 0].numpy(), want)
    sparse = torch.rand(3, 1, 24, 20, generator=g) < 0.02
    sparse[2] = False  # no edge at all: everything at the limit
    got = filtering.chamfer_distance(sparse, 20)
    for k in range(3):
        want = np.minimum(cv2_distance(255 * (~sparse[k, 0].numpy()).astype(np.uint8)), 20)
        close(got[k, 0], want, atol=0)
    values = torch.randint(0, 21, (2, 1, 12, 12), generator=g).double()
    values[1] = 7.0
    got = filtering.equalize_hist(values)
    for k in range(2):
        close(got[k, 0], cv2_equalize(values[k, 0].numpy().astype(np.uint8)), atol=0)


def test_elastic_transform_matches_the_reference_on_shared_draws():
    """At the tables' own sizes (ImageNet-C's jitter of up to 49 px would fold a 32 px
    image's 20 px triangle into near-singular maps)."""
    worst_cv2, mean_cv2 = 0.0, []
    for table, s, c in params("elastic_transform"):
        size = SIZE if table == "cifar" else 224
        x = images(2 if table == "cifar" else 1, size=size)
        n = len(x)
        g = torch.Generator().manual_seed(s)
        moves = (2 * torch.rand(n, 3, 2, generator=g, dtype=torch.float64) - 1) * c[2]
        moves = moves.float().double()  # the reference's points are float32
        fields = 2 * torch.rand(n, 2, size, size, generator=g, dtype=torch.float64) - 1
        got = digital.elastic_with(x, c, moves, fields).clamp(0, 1)
        exact, rounded = [], []
        for a, mv, f in zip(hwc(x), moves.numpy(), fields.numpy(), strict=True):
            exact.append(ref_elastic(a, c, mv, f))
            rounded.append(ref_elastic(a, c, mv, f, round_to_32nds=True))
        close(got, nchw(exact), atol=1e-5)
        worst_cv2 = max(worst_cv2, float((got - nchw(rounded)).abs().max()))
        mean_cv2.append(float((got - nchw(rounded)).abs().mean()))
        gg = seeded(s)
        moves = (2 * torch.rand(n, 3, 2, generator=gg, dtype=torch.float64) - 1) * c[2]
        fields = 2 * torch.rand(n, 2, size, size, generator=gg, dtype=torch.float64) - 1
        tied = C.corrupt(x, "elastic_transform", s, table=table, generator=seeded(s))
        close(tied, digital.elastic_with(x, c, moves, fields).clamp(0, 1), atol=1e-12)
    # cv2's positions rounded to 1/32 pixel in the affine warp move a value by at most 1/64
    # of the step between neighbours (at most 1 here), by far less on average
    assert worst_cv2 <= 1 / 64 and max(mean_cv2) < 0.3 / 255, (worst_cv2, mean_cv2)


def test_motion_blur_corruption_draws_its_angle_per_image():
    x = images(3)
    for table, s, (radius, sigma) in params("motion_blur"):
        angle = -45 + 90 * torch.rand(3, generator=seeded(s), dtype=torch.float64)
        tied = C.corrupt(x, "motion_blur", s, table=table, generator=seeded(s))
        close(tied, filtering.motion_blur(x, radius, sigma, angle).clamp(0, 1), atol=1e-12)


# --- random corruptions in distribution: torch's draws against numpy's --------------------


def _change_stats(a, b):
    d = np.abs(np.asarray(a) - np.asarray(b))
    return d.mean(), d.std()


@pytest.mark.parametrize("name", ["glass_blur", "motion_blur", "snow", "spatter",
                                  "elastic_transform"])  # fmt: skip
def test_the_change_has_the_references_mean_and_spread(name):
    x = images(12, seed=5)
    rng = np.random.default_rng(0)
    table, s = "cifar", 3
    c = C.PARAMETERS[name][table][s - 1]
    ours = C.corrupt(x, name, s, table=table, generator=torch.Generator().manual_seed(9))
    theirs = []
    for a in hwc(x):
        if name == "glass_blur":
            draws = rng.integers(-c[1], c[1], (c[2], SIZE - 2 * c[1], SIZE - 2 * c[1], 2))
            theirs.append(ref_glass_blur(a, c[0], c[1], draws))
        elif name == "motion_blur":
            theirs.append(np.clip(magick_motion_blur(a, *c, rng.uniform(-45, 45)), 0, 1))
        elif name == "snow":
            flakes = rng.normal(c[0], c[1], (SIZE, SIZE))
            theirs.append(ref_snow(a, c, flakes, rng.uniform(-135, -45)))
        elif name == "spatter":
            theirs.append(ref_spatter(a, c, rng.normal(c[0], c[1], (SIZE, SIZE))))
        else:
            moves = rng.uniform(-c[2], c[2], (3, 2))
            theirs.append(ref_elastic(a, c, moves, rng.uniform(-1, 1, (2, SIZE, SIZE))))
    mean, std = _change_stats(hwc(ours), hwc(x))
    ref_mean, ref_std = _change_stats(theirs, hwc(x))
    assert abs(mean - ref_mean) < 0.15 * ref_mean, (mean, ref_mean)
    assert abs(std - ref_std) < 0.2 * ref_std, (std, ref_std)


# --- frost: synthetic, against the reference photographs' statistics ----------------------

# Measured from the reference's frost1-5 as it crops them (CIFAR: every 5th pixel, as its
# cv2.resize(fx=0.2) samples, then 32 px crops; ImageNet: 224 px crops), 1,500 crops per
# photograph: per-channel mean, mean within-crop deviation, and the grey channel's mean
# difference between neighbours 1 and 4 pixels apart over its within-crop deviation.
FROST_PHOTOGRAPHS = {
    "cifar": ((0.564, 0.647, 0.694), (0.092, 0.086, 0.086), 0.86, 0.98),
    "imagenet": ((0.564, 0.647, 0.694), (0.097, 0.090, 0.091), 0.50, 0.78),
}


@pytest.mark.parametrize("table", ["cifar", "imagenet"])
def test_frost_layer_has_the_photographs_statistics(table):
    size = 32 if table == "cifar" else 96
    scale = C.PARAMETERS["frost"][table][0][2]
    layer = weather.frost_layer(300, size, size, scale, torch.Generator().manual_seed(0),
                                torch.zeros(1))  # fmt: skip
    mean, within, lag1, lag4 = FROST_PHOTOGRAPHS[table]
    np.testing.assert_allclose(layer.mean((0, 2, 3)).numpy(), mean, atol=0.03)
    np.testing.assert_allclose(layer.std((2, 3)).mean(0).numpy(), within, atol=0.015)
    grey = layer.mean(1)
    spread = grey.std((1, 2)).mean()
    for lag, want in ((1, lag1), (4, lag4)):
        ratio = (grey[:, :, lag:] - grey[:, :, :-lag]).abs().mean() / spread
        assert abs(ratio - want) < 0.12, (lag, ratio, want)


def test_frost_blends_the_layer_with_the_references_weights():
    x = images(2, dtype=torch.float32)
    for table, s, (kept, weight, scale) in params("frost"):
        got = C.corrupt(x, "frost", s, table=table, generator=torch.Generator().manual_seed(s))
        layer = weather.frost_layer(2, SIZE, SIZE, scale, torch.Generator().manual_seed(s), x)
        close(got, (kept * x + weight * layer).clamp(0, 1), atol=1e-6)
        assert (got - x).abs().mean() > 0.03


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_shared_draws_give_the_same_images_on_cpu_and_cuda():
    x = images(2)
    g = seeded(0)
    glass = C.PARAMETERS["glass_blur"]["imagenet"][3]
    draws = torch.randint(-glass[1], glass[1], (2, glass[2], 24, 24, 2), generator=g)
    snow, spatter = C.PARAMETERS["snow"]["cifar"][3], C.PARAMETERS["spatter"]["cifar"][2]
    elastic = C.PARAMETERS["elastic_transform"]["cifar"][4]
    noise = torch.randn(2, 1, SIZE, SIZE, generator=g, dtype=torch.float64)
    angle = 360 * torch.rand(2, generator=g, dtype=torch.float64)
    moves, fields = torch.rand(2, 3, 2, generator=g) - 0.5, torch.rand(2, 2, SIZE, SIZE) - 0.5
    runs = [
        lambda d: blur.glass_blur_with(x.to(d), glass[0], glass[1], draws.to(d)),
        lambda d: filtering.motion_blur(x.to(d), 15, 5, angle.to(d)),
        lambda d: weather.snow_with(x.to(d), snow, (noise * 0.3 + 0.3).to(d), angle.to(d)),
        lambda d: weather.spatter_with(x.to(d), spatter, (noise * 0.3 + 0.65).to(d)),
        lambda d: digital.elastic_with(x.to(d), elastic, moves.double().to(d),
                                       fields.double().to(d)),
    ]  # fmt: skip
    for run in runs:
        torch.testing.assert_close(run("cuda").cpu(), run("cpu"), rtol=0, atol=1e-6)
