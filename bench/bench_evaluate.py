"""The standard evaluation (APGD-CE, targeted APGD-DLR, Square 5000) against torchattacks'
AutoAttack (standard version) and its single attacks with the same budgets: robust accuracy
(lower is stronger; the target is at most 0.5 pp above the strongest of theirs) and time."""

import time

import pytest
import torch

import robustkern
from bench.baselines import HAS_TA

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
