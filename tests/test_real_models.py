"""Every check of the suite on networks as users bring them (tests/_real_models.py): a
torchvision-style ResNet-18 with BatchNorm behind a Normalize layer, a MobileNet-style net of
depthwise blocks, a 1,000-class head on 64 px images, and a grey-image ResNet; each through the
whole suite at a small budget. Every check must end in a verdict or a reasoned skip."""

import json

import pytest
import torch

from robustkern import suite
from tests import _real_models as nets

VERDICTS = {"pass", "warn", "inconclusive", "fail", "info"}


def _data(n, channels, size, classes, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, channels, size, size, generator=g)
    return x, torch.randint(0, classes, (n,), generator=g)


@pytest.mark.parametrize(
    ("build", "channels", "size", "classes", "budget"),
    [
        (lambda: nets.resnet18(normalize=True), 3, 32, 10, 25),
        (nets.mobilenet, 3, 32, 10, 25),
        (nets.imagenet_head, 3, 64, 1000, 30),
        (lambda: nets.resnet18(in_channels=1), 1, 28, 10, 30),
    ],
    ids=["resnet18-normalize", "mobilenet", "imagenet-1000-64px", "resnet18-grey"],
)
def test_every_check_ends_in_a_verdict_on_real_architectures(
    tmp_path, build, channels, size, classes, budget
):
    torch.manual_seed(0)
    models = {"a": nets.with_statistics(build(), 0), "b": nets.with_statistics(build(), 1)}
    x, y = _data(64, channels, size, classes, 0)
    train = _data(100, channels, size, classes, 1)
    report = suite.run_suite(models, (x, y), train_data=train, factory=build, budget=budget,
                             out=tmp_path, progress=False)  # fmt: skip
    errors = [(c["name"], c["model"], c["summary"]) for c in report["checks"] if c["error"]]
    assert errors == []
    for entry in report["checks"]:
        if entry["verdict"] == "skipped":
            assert entry["summary"].startswith("not run: "), entry
        else:
            assert entry["verdict"] in VERDICTS, entry
    ran = {c["name"] for c in report["checks"] if c["verdict"] != "skipped"}
    assert {"white_box", "lipschitz", "capacity"} <= ran, sorted(ran)
    lipschitz = [c for c in report["checks"] if c["name"] == "lipschitz"]
    assert all(c["figures"]["product"] is not None for c in lipschitz)  # finite: no inf layer
    assert report["data"]["classes"] == classes
    suite.validate(json.loads((tmp_path / "report.json").read_text()))


def test_the_heat_map_of_a_large_image_runs_on_a_coarser_grid(tmp_path):
    """224 px: about 25,000 distinct frequencies; the budget picks a stride instead."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 7, 4), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 10)).eval()  # fmt: skip
    x, y = _data(30, 3, 224, 10, 0)
    report = suite.run_suite({"net": net}, (x, y), checks=["fourier"], budget=8, out=tmp_path,
                             progress=False)  # fmt: skip
    (entry,) = report["checks"]
    assert entry["verdict"] == "info", entry["summary"]
    assert entry["figures"]["stride"] > 1 and "stride" in entry["summary"]
    assert entry["figures"]["frequencies"] < 224 * 224 / 2
