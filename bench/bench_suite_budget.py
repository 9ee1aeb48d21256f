"""The suite's time budget kept on two networks: ``run_suite(budget=B)`` for B of 2, 5 and 10
minutes must finish within 1.2 B, and its robust accuracy at the literature's eps must lie
within its own 95 % interval of the value the full sizes give (``budget=None``, run first).

Models: the README's two small CNNs on mnist-5k (standard and PGD-trained, from the cache), and
a torchvision-style ResNet-18 of width 16 with BatchNorm, FGSM-RS-trained for 3 epochs on
mnist-5k padded to 3x32x32 (a CIFAR-shaped stand-in: no data is downloaded).
Run: ``pytest bench/bench_suite_budget.py -s`` (about an hour on 2 CPU cores)."""

import time

import pytest
import torch
import torch.nn.functional as F

from robustkern import data, suite, training
from tests import _real_models as nets

BUDGETS = (2, 5, 10)  # minutes
TITLE = "Suite time budget: wall time and robust accuracy against the full-size run"


def _cifar_shaped():
    """mnist-5k padded to 32x32 and repeated over 3 channels."""
    x, y, xt, yt = data.load("mnist-5k")
    pad = lambda v: F.pad(v, (2, 2, 2, 2)).expand(-1, 3, -1, -1).contiguous()  # noqa: E731
    return pad(x), y, pad(xt), yt


def _main_robust(report: dict) -> dict[str, tuple]:
    """Per model: (robust accuracy, its interval, images) of the white-box check."""
    out = {}
    for c in report["checks"]:
        if c["name"] == "white_box" and c["verdict"] not in ("skipped", "error"):
            main = c["figures"]["main"]
            out[c["model"]] = (main["robust"], main["robust_interval"], main["n"])
    return out


def _run(record, label, models, test, train, factory, tmp_path):
    kwargs = dict(train_data=train, factory=factory, progress=False, resume=False)
    start = time.perf_counter()
    full = suite.run_suite(models, test, budget=None, out=tmp_path / "full", **kwargs)
    record.row(TITLE, [label, "full sizes", f"{time.perf_counter() - start:.0f}", "-",
                       *_cells(_main_robust(full), None), _skipped(full)])  # fmt: skip
    reference = _main_robust(full)
    for minutes in BUDGETS:
        start = time.perf_counter()
        result = suite.run_suite(models, test, budget=60 * minutes,
                                 out=tmp_path / f"b{minutes}", **kwargs)  # fmt: skip
        seconds = time.perf_counter() - start
        record.row(TITLE, [label, f"{minutes} min", f"{seconds:.0f}",
                           f"{seconds / (60 * minutes):.2f}",
                           *_cells(_main_robust(result), reference), _skipped(result)])  # fmt: skip


def _cells(robust: dict, reference: dict | None) -> list[str]:
    texts = []
    for name, (value, (lo, hi), n) in robust.items():
        text = f"{name}: {100 * value:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}], n={n}"
        if reference is not None and name in reference:
            inside = lo <= reference[name][0] <= hi
            text += f"; full {100 * reference[name][0]:.1f} % {'inside' if inside else 'OUTSIDE'}"
        texts.append(text)
    return ["<br>".join(texts) or "white box not run"]


def _skipped(report: dict) -> str:
    skipped = [f"{c['name']}" + (f" ({c['model']})" if c["model"] else "")
               for c in report["checks"] if c["verdict"] == "skipped"]  # fmt: skip
    return ", ".join(skipped) or "none"


@pytest.fixture(scope="module")
def record(report):
    report.table(TITLE, ["models", "budget", "seconds", "/ budget",
                         "robust accuracy at the main eps (95 % interval)", "skipped"])  # fmt: skip
    return report


def test_small_cnns_on_mnist(record, tmp_path):
    x, y, xt, yt = data.load("mnist-5k")
    models = suite.default_models("mnist-5k", x, y, progress=False)
    factory = lambda: __import__("robustkern").models.small_cnn(1, 10)  # noqa: E731
    _run(record, "small CNNs (standard, PGD-AT)", models, (xt, yt), (x, y), factory, tmp_path)


def test_resnet18_width16_on_3x32x32(record, tmp_path):
    x, y, xt, yt = _cifar_shaped()
    torch.manual_seed(0)
    model = nets.resnet18(width=16)
    training.fit(model, (x, y), method="fgsm-rs", eps=8 / 255, epochs=3, batch_size=128,
                 train_eval=0, progress=False)  # fmt: skip
    factory = lambda: nets.resnet18(width=16)  # noqa: E731
    _run(record, "ResNet-18 width 16 (FGSM-RS)", {"resnet18": model.eval()}, (xt, yt), (x, y),
         factory, tmp_path)  # fmt: skip
