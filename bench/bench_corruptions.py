"""Common corruptions throughput (robustkern.corruptions): the 19 corruptions of CIFAR-10-C /
ImageNet-C at five severities on 1,000 images of 3x32x32 (target: under 60 s on 2 CPU cores),
and glass blur per image against the reference's sequential Python loop (target: >= 50x), at
32 px (CIFAR-10-C's parameters) and 224 px (ImageNet-C's)."""

import time

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from bench.timing import sync
from robustkern import corruptions as C
from tests.test_corruptions_reference import ref_glass_blur


def images(n: int, size: int, device: str = "cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.avg_pool2d(torch.rand(n, 3, size + 4, size + 4, generator=g), 5, 1)
    return ((x - 0.5) * 2.5 + 0.5).clamp(0, 1).to(device)


def seconds(fn) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def reference_glass_blur(x: np.ndarray, sigma: float, delta: int, passes: int) -> np.ndarray:
    """make_cifar_c.py's glass_blur as written (its randint inside the loop), on (H, W, 3)."""
    x = np.uint8(gaussian_filter(x, (sigma, sigma, 0)) * 255)
    h, w = x.shape[:2]
    for _ in range(passes):
        for hh in range(h - delta, delta, -1):
            for ww in range(w - delta, delta, -1):
                dx, dy = np.random.randint(-delta, delta, size=(2,))
                hp, wp = hh + dy, ww + dx
                x[hh, ww], x[hp, wp] = x[hp, wp], x[hh, ww]
    return np.clip(gaussian_filter(x / 255.0, (sigma, sigma, 0)), 0, 1)


def battery(report, x: torch.Tensor, title: str) -> float:
    device = x.device.type
    names = C.NAMES_15 + C.NAMES_EXTRA
    for name in C.CORRUPTIONS:  # warm-up: first calls, cached kernels and schedules
        for s in C.SEVERITIES:
            C.corrupt(x[:4], name, s, generator=torch.Generator(device).manual_seed(0))
    report.table(title, ["corruption", "group", "seconds (5 severities)", "images/s"])
    total = 0.0
    for name in C.CORRUPTIONS:
        g = torch.Generator(device).manual_seed(0)
        t = seconds(lambda n=name, g=g: [C.corrupt(x, n, s, generator=g) for s in C.SEVERITIES])
        group = "ImageNet-C" if name in C.NAMES_15 else "extra" if name in names else "filter"
        total += t if name in names else 0.0
        report.row(title, [name, group, f"{t:.2f}", f"{5 * len(x) / t:,.0f}"])
    report.row(title, ["**all 19**", "", f"**{total:.1f}**", f"{19 * 5 * len(x) / total:,.0f}"])
    return total


def test_all_19_corruptions_on_1000_cifar_images_cpu(report):
    x = images(1000, 32)
    title = (
        "All corruptions x 5 severities, 1,000 images of 3x32x32 (CIFAR-10-C parameters), "
        f"CPU float32, {torch.get_num_threads()} threads (target: the 19 under 60 s)"
    )
    total = battery(report, x, title)
    assert total > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_all_19_corruptions_on_1000_imagenet_images_gpu(report):
    x = images(1000, 224, "cuda")
    title = "All corruptions x 5 severities, 1,000 images of 3x224x224 (ImageNet-C), CUDA float32"
    battery(report, x, title)


@pytest.mark.parametrize(
    ("size", "table", "severity", "batch", "reference_images"),
    [(32, "cifar", 5, 1000, 20), (224, "imagenet", 3, 16, 1)],
)
def test_glass_blur_against_the_reference_loop(report, size, table, severity, batch,
                                               reference_images):  # fmt: skip
    sigma, delta, passes = C.PARAMETERS["glass_blur"][table][severity - 1]
    x = images(batch, size)
    arrays = x[:reference_images].permute(0, 2, 3, 1).double().numpy()
    np.random.seed(0)
    loop = seconds(lambda: [reference_glass_blur(a, sigma, delta, passes) for a in arrays])
    loop /= reference_images
    rng = np.random.default_rng(0)
    shape = (passes, size - 2 * delta, size - 2 * delta, 2)
    draws = [rng.integers(-delta, delta, shape) for _ in arrays]
    drawn = seconds(
        lambda: [ref_glass_blur(a, sigma, delta, d) for a, d in zip(arrays, draws, strict=True)]
    )
    drawn /= reference_images
    g = torch.Generator().manual_seed(0)
    C.corrupt(x[:2], "glass_blur", severity, generator=g, table=table)  # warm-up
    ours = seconds(lambda: C.corrupt(x, "glass_blur", severity, generator=g, table=table))
    ours /= batch
    single = min(seconds(lambda: C.corrupt(x[:1], "glass_blur", severity, generator=g,
                                           table=table)) for _ in range(3))  # fmt: skip
    title = (
        f"Glass blur per image, 3x{size}x{size}, {table} severity {severity} (sigma {sigma}, "
        f"offset {delta}, {passes} passes), CPU, {torch.get_num_threads()} threads "
        "(target: >= 50x the reference loop)"
    )
    report.table(title, ["implementation", "ms per image", "images/s", "speed-up"])
    rows = [
        (f"reference loop as written (randint per pixel), {reference_images} images", loop),
        (f"reference loop, draws made in advance, {reference_images} images", drawn),
        (f"robustkern, batch of {batch}", ours),
        ("robustkern, one image", single),
    ]
    for name, t in rows:
        report.row(title, [name, f"{1000 * t:.3f}", f"{1 / t:,.0f}", f"{loop / t:.1f}x"])
    assert ours < loop
