"""Fourier heat map throughput: robustkern.fourier.heatmap against the straightforward version
(each basis image from torch.fft.ifft2, all H*W frequencies, one model batch per frequency) and
against the floor (the model's forward passes over the distinct frequencies only, on the same
perturbed images, made in advance; same batches as ours)."""

import pytest
import torch

from bench.timing import interleaved_medians
from robustkern import fourier, models, ops

EPS = 4.0


def straightforward_heatmap(model, x, y, eps):
    """What a direct port does: every frequency, its basis built with ifft2, one batch each."""
    n, c, h, w = x.shape
    error = torch.zeros(h, w)
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for r in range(h):
            for s in range(w):
                spectrum = torch.zeros(h, w, dtype=torch.complex64)
                i, j = (r - h // 2) % h, (s - w // 2) % w
                spectrum[i, j] = spectrum[-i % h, -j % w] = 1
                basis = torch.fft.ifft2(spectrum).real
                basis = basis / basis.norm()
                signs = torch.randint(0, 2, (n, c, 1, 1), generator=g) * 2 - 1
                xp = (x + eps * signs * basis).clamp(0, 1)
                error[r, s] = (model(xp).argmax(1) != y).float().mean()
    return error


def floor_fn(model, x, y, batch_size):
    """The forward passes ours must make, on the very images ours feeds the model (perturbed in
    advance, outside the timing: the model's speed depends on the content, e.g. max-pool
    branches): distinct frequencies x images, in our batches."""
    n, c, h, w = x.shape
    reps = fourier.distinct_frequencies(h, w)
    freqs = fourier.frequency_grid(h, w).view(-1, 2)[reps]
    per_batch = max(1, batch_size // n)
    batches = [
        ops.fourier_perturb(x, freqs[k], eps=EPS, signs=fourier.heatmap_signs(0, reps[k], n, c))
        .flatten(0, 1)
        .clone()
        for k in torch.arange(len(reps)).split(per_batch)
    ]

    def run():
        with torch.inference_mode():
            for batch in batches:
                model(batch).argmax(1)

    return run


def test_heatmap_28x28_small_cnn_cpu(report, mnist_cnn):
    model, xt, yt = mnist_cnn
    x, y = xt[:200], yt[:200]
    batch_size = 200  # one frequency of the 200 images per batch, as the straightforward one
    fns = {
        "floor: forward over the 394 distinct frequencies": floor_fn(model, x, y, batch_size),
        "robustkern.fourier.heatmap": lambda: fourier.heatmap(
            model, x, y, eps=EPS, batch_size=batch_size, progress=False
        ),
        "straightforward (ifft2 basis, all 784 frequencies)": lambda: straightforward_heatmap(
            model, x, y, EPS
        ),
    }
    times = interleaved_medians(fns, rounds=3)
    ours = times["robustkern.fourier.heatmap"]
    floor = times["floor: forward over the 394 distinct frequencies"]
    title = (
        f"Fourier heat map, small CNN, 200 mnist-5k images of 1x28x28, eps {EPS:g}, "
        f"CPU float32 (ours and floor: batches of {batch_size})"
    )
    report.table(title, ["implementation", "seconds", "images/s", "time / floor", "speed-up"])
    for name, t in times.items():
        images = 200 * (784 if name.startswith("straightforward") else 394)
        report.row(
            title,
            [name, f"{t:.2f}", f"{images / t:,.0f}", f"{t / floor:.3f}", f"{t / ours:.2f}x"],
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_heatmap_31x31_resnet18_gpu(report):
    """Target: a 31x31 CIFAR-shaped heat map over 1,000 images, ResNet-18, under 60 s."""
    import time

    torch.manual_seed(0)
    model = models.resnet18().cuda().eval()
    x = torch.rand(1000, 3, 31, 31, device="cuda")
    y = torch.randint(0, 10, (1000,), device="cuda")
    fourier.heatmap(model, x[:8], y[:8], eps=EPS, batch_size=4096, progress=False)  # warm-up
    torch.cuda.synchronize()
    title = "Fourier heat map, ResNet-18, 1,000 images of 3x31x31, eps 4 (target < 60 s)"
    report.table(title, ["precision", "seconds", "images/s"])
    for name, dtype in [("float32", None), ("bf16 autocast", torch.bfloat16)]:
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            fourier.heatmap(model, x, y, eps=EPS, batch_size=4096, progress=False)
        torch.cuda.synchronize()
        t = time.perf_counter() - start
        report.row(title, [name, f"{t:.1f}", f"{1000 * 481 / t:,.0f}"])
