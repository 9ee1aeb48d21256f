"""The standard evaluation (APGD-CE, targeted APGD-DLR, Square 5000) against torchattacks'
AutoAttack (standard version) and its single attacks with the same budgets: robust accuracy
(lower is stronger; the target is at most 0.5 pp above the strongest of theirs) and time."""

import time

import pytest
import torch

import robustkern
from bench.baselines import HAS_TA
from bench.timing import blocked_medians

N, EPS = 256, 0.1


@pytest.mark.skipif(not HAS_TA, reason="torchattacks is not installed")
def test_standard_evaluation_strength_cpu(report, mnist_cnn):
    import torchattacks

    model, xt, yt = mnist_cnn
    x, y = xt[:N], yt[:N]

    def ours():
        g = torch.Generator().manual_seed(0)
        result = robustkern.evaluate(
            model, (x, y), "standard", eps=EPS, generator=g, progress=False
        )
        return result.robust_accuracy

    def theirs(attack):
        def run():
            with torch.no_grad():
                return (model(attack(x, y)).argmax(1) == y).float().mean().item()

        return run

    runs = {
        "robustkern evaluate(attack='standard')": ours,
        "torchattacks AutoAttack (standard)": theirs(
            torchattacks.AutoAttack(
                model, norm="Linf", eps=EPS, version="standard", n_classes=10, seed=0
            )
        ),
        "torchattacks APGD (CE, 100 steps)": theirs(
            torchattacks.APGD(model, eps=EPS, steps=100, seed=0)
        ),
        "torchattacks APGDT (DLR, 9 targets)": theirs(
            torchattacks.APGDT(model, eps=EPS, steps=100, n_classes=10, seed=0)
        ),
        "torchattacks Square (5000 queries)": theirs(
            torchattacks.Square(model, eps=EPS, n_queries=5000, seed=0)
        ),
    }
    title = (
        f"Standard evaluation strength (L-inf, eps {EPS:g}), small CNN, {N} mnist-5k images, "
        "CPU float32, one run each"
    )
    report.table(title, ["evaluation", "robust accuracy", "seconds", "ours minus this"])
    results = {}
    for name, run in runs.items():
        start = time.perf_counter()
        results[name] = (run(), time.perf_counter() - start)
    ours_acc = results["robustkern evaluate(attack='standard')"][0]
    for name, (acc, seconds) in results.items():
        diff = f"{100 * (ours_acc - acc):+.2f} pp"
        report.row(title, [name, f"{100 * acc:.2f} %", f"{seconds:.1f}", diff])


LAYOUT_TITLE = (
    "A model's passes in each memory layout (what modes.channels_last chooses on a CPU), random "
    "weights, float32, median of alternating blocks; speed-up: default layout time over "
    "channels_last time"
)


def _layout_cases():
    from robustkern import models
    from tests import _real_models as real

    return [("small_cnn, 128x1x28x28", models.small_cnn(1), (128, 1, 28, 28)),
            ("small_cnn, 128x3x32x32", models.small_cnn(3), (128, 3, 32, 32)),
            ("cert_cnn, 256x1x28x28", models.cert_cnn(1), (256, 1, 28, 28)),
            ("small_resnet, 64x1x28x28", models.small_resnet(1), (64, 1, 28, 28)),
            ("resnet18 (models), 32x3x32x32", models.resnet18(3), (32, 3, 32, 32)),
            ("ResNet-18 width 16 (tests), 64x3x32x32", real.resnet18(width=16), (64, 3, 32, 32)),
            ("MobileNet width 16 (tests), 64x3x32x32", real.mobilenet(width=16),
             (64, 3, 32, 32))]  # fmt: skip


def test_model_passes_by_layout(report):
    """Forward (no grad) and forward + input backward, default layout against channels_last:
    the measurement behind ``modes.channels_last`` switching CNNs on a CPU."""
    report.table(LAYOUT_TITLE, ["model, input", "forward ms", "channels_last", "speed-up",
                                "forward+backward ms", "channels_last", "speed-up"])  # fmt: skip
    torch.manual_seed(0)
    for name, model, shape in _layout_cases():
        model.eval()
        x = torch.rand(shape)

        def forward(m=model, x=x):
            with torch.no_grad():
                m(x)

        def gradient(m=model, x=x):
            xg = x.clone().requires_grad_()
            m(xg).logsumexp(1).sum().backward()

        times = {}
        for layout in (False, True):
            with robustkern.modes.channels_last(model, enabled=layout):
                times[layout] = blocked_medians({"f": forward, "g": gradient}, repeats=3)
        f0, f1, g0, g1 = (times[k][p] for p in "fg" for k in (False, True))
        cells = [f"{f0 * 1e3:.1f}", f"{f1 * 1e3:.1f}", f"{f0 / f1:.2f}x",
                 f"{g0 * 1e3:.1f}", f"{g1 * 1e3:.1f}", f"{g0 / g1:.2f}x"]  # fmt: skip
        report.row(LAYOUT_TITLE, [name, *cells])
