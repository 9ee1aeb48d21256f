"""APGD-CE, 100 iterations, against torchattacks' and ART's APGD (same budget) and the floor (100 x
the model's forward + input-backward on the correctly classified points, which both attack, at
the points APGD returns): time, image-iterations/s and robust accuracy, with and without early
stopping."""

import copy

import pytest
import torch

from bench.baselines import HAS_ART, HAS_TA, art_classifier
from bench.timing import floor_fn, interleaved_medians
from robustkern import models
from robustkern.attacks import apgd

EPS, STEPS, N = 0.1, 100, 256


def test_apgd_ce_small_cnn_cpu(report, mnist_cnn):
    model, xt, yt = mnist_cnn
    x, y = xt[:N], yt[:N]
    outputs = {}

    def ours(early_stop):
        def run():
            g = torch.Generator().manual_seed(0)
            outputs[early_stop] = apgd(model, x, y, eps=EPS, steps=STEPS, generator=g,
                                       early_stop=early_stop)  # fmt: skip

        return run

    with torch.no_grad():
        correct = model(x).argmax(1) == y
    points = apgd(model, x, y, eps=EPS, steps=STEPS)[correct]
    floor = f"floor: {STEPS} x (forward + input-backward) on APGD's output points"
    fns = {
        floor: floor_fn(model, points, y[correct], STEPS),
        "robustkern apgd": ours(False),
        "robustkern apgd, early stop": ours(True),
    }
    if HAS_TA:
        import torchattacks

        ta = torchattacks.APGD(model, norm="Linf", eps=EPS, steps=STEPS, n_restarts=1, seed=0)
        fns["torchattacks APGD"] = lambda: outputs.__setitem__("ta", ta(x, y))
    if HAS_ART:
        import numpy as np
        from art.attacks.evasion import AutoProjectedGradientDescent

        art = AutoProjectedGradientDescent(
            art_classifier(model, x), norm=np.inf, eps=EPS, eps_step=2 * EPS, max_iter=STEPS,
            nb_random_init=1, batch_size=N, loss_type="cross_entropy", verbose=False,
        )  # fmt: skip
        xn, yn = x.numpy(), y.numpy()
        fns["ART AutoProjectedGradientDescent"] = lambda: outputs.__setitem__(
            "art", torch.from_numpy(art.generate(xn, yn))
        )
    times = interleaved_medians(fns, rounds=3)
    keys = {
        floor: None,
        "robustkern apgd": False,
        "robustkern apgd, early stop": True,
        "torchattacks APGD": "ta",
        "ART AutoProjectedGradientDescent": "art",
    }
    title = (
        f"APGD-CE (L-inf, eps {EPS:g}, {STEPS} iterations, 1 restart), small CNN, {N} mnist-5k "
        "images, CPU float32"
    )
    header = ["implementation", "seconds", "image-iterations/s", "robust accuracy"]
    header += ["time / floor", "speed-up vs torchattacks"]
    report.table(title, header)
    base = times.get("torchattacks APGD")
    for name, t in times.items():
        acc = "n/a"
        if keys[name] is not None:
            with torch.no_grad():
                acc = f"{100 * (model(outputs[keys[name]]).argmax(1) == y).float().mean():.2f} %"
        ratio = f"{base / t:.2f}x" if base else "n/a"
        cells = [name, f"{t:.2f}", f"{N * STEPS / t:,.0f}", acc, f"{t / times[floor]:.2f}", ratio]
        report.row(title, cells)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_apgd_ce_resnet18_gpu(report):
    resnet18_rows(report, "cuda", n=256)


def resnet18_rows(report, device: str, n: int, steps: int = STEPS):
    """APGD-CE on a ResNet-18 with CIFAR-shaped random images, labelled with the model's own
    predictions so that every point is attacked: ours in float32 and in bf16 + channels_last,
    torchattacks in float32 (the target compares the bf16 row with it)."""
    torch.manual_seed(0)
    model = models.resnet18().to(device).eval()
    x = torch.rand(n, 3, 32, 32, device=device)
    with torch.no_grad():
        y = model(x).argmax(1)
    fast = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x_fast = x.contiguous(memory_format=torch.channels_last)
    eps = 8 / 255

    def ours(net, inputs, bf16):
        def run():
            g = torch.Generator(device).manual_seed(0)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                apgd(net, inputs, y, eps=eps, steps=steps, generator=g)

        return run

    fns = {
        "robustkern apgd, float32": ours(model, x, False),
        "robustkern apgd, bf16 autocast + channels_last": ours(fast, x_fast, True),
    }
    if HAS_TA:
        import torchattacks

        ta = torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=0)
        fns["torchattacks APGD, float32"] = lambda: ta(x, y)
    times = interleaved_medians(fns, rounds=3)
    title = (f"APGD-CE (L-inf, eps 8/255, {steps} iterations, 1 restart), ResNet-18, batch {n}, "
             f"CIFAR-shaped, {device}")  # fmt: skip
    report.table(title, ["implementation", "seconds", "image-iterations/s",
                         "speed-up vs torchattacks float32"])  # fmt: skip
    base = times.get("torchattacks APGD, float32")
    for name, t in times.items():
        ratio = f"{base / t:.2f}x" if base else "n/a"
        report.row(title, [name, f"{t:.3f}", f"{n * steps / t:,.0f}", ratio])
