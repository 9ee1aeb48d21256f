"""APGD-CE, 100 iterations, against torchattacks' APGD (same budget, same start): time, image-
iterations/s and robust accuracy, with and without early stopping (evaluation use)."""

import importlib.util

import torch

from bench.timing import interleaved_medians
from robustkern.attacks import apgd

HAS_TA = importlib.util.find_spec("torchattacks") is not None
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

    fns = {"robustkern apgd": ours(False), "robustkern apgd, early stop": ours(True)}
    if HAS_TA:
        import torchattacks

        ta = torchattacks.APGD(model, norm="Linf", eps=EPS, steps=STEPS, n_restarts=1, seed=0)
        fns["torchattacks APGD"] = lambda: outputs.__setitem__("ta", ta(x, y))
    times = interleaved_medians(fns, rounds=3)
    keys = {
        "robustkern apgd": False,
        "robustkern apgd, early stop": True,
        "torchattacks APGD": "ta",
    }
    title = (
        f"APGD-CE (L-inf, eps {EPS:g}, {STEPS} iterations, 1 restart), small CNN, {N} mnist-5k "
        "images, CPU float32"
    )
    header = ["implementation", "seconds", "image-iterations/s", "robust accuracy"]
    header.append("speed-up vs torchattacks")
    report.table(title, header)
    base = times.get("torchattacks APGD")
    for name, t in times.items():
        with torch.no_grad():
            acc = (model(outputs[keys[name]]).argmax(1) == y).float().mean().item()
        ratio = f"{base / t:.2f}x" if base else "n/a"
        report.row(title, [name, f"{t:.2f}", f"{N * STEPS / t:,.0f}", f"{100 * acc:.2f} %", ratio])
