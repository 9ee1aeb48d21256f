"""robustkern's "standard" preset against AutoAttack's own code (the package index's
``pyautoattack`` repackages it: ``pip install --no-deps pyautoattack``) on the suite's PGD-AT
small CNN, the 1,000 mnist-5k test images, L-inf 0.3 and L2 2.0: time and robust accuracy
(ours must be no higher); and the FAB-T stage alone on the same points. Both get the model in
its default layout; evaluate runs a CNN on a CPU channels_last (``modes.channels_last``), and a
last row gives AutoAttack the model converted by hand, so the table shows what that alone buys.
Rows skip cleanly when the package is missing."""

import importlib.util
import time

import pytest
import torch

import robustkern
from robustkern import data, modes, pretrained
from robustkern.attacks import fab

HAS_AA = importlib.util.find_spec("pyautoattack") is not None
BATCH = 250  # AutoAttack's default batch size, used by both
AA_NORM = {"linf": "Linf", "l2": "L2", "l1": "L1"}
TITLE = (
    "AutoAttack standard, PGD-AT small CNN (suite's), 1,000 mnist-5k test images, CPU float32 "
    "(one run each; robust accuracy: ours must be no higher)"
)
FAB_TITLE = "FAB-T stage alone (9 targets, 100 steps, bounded at eps), first 200 correct images"


@pytest.fixture(scope="module")
def pgd_at():
    # the default layout, as a user loads it: evaluate switches a CPU CNN to channels_last itself
    model = pretrained.trained_cnn("mnist-5k", adversarial=True).eval()
    model.to(memory_format=torch.contiguous_format)
    _, _, xt, yt = data.load("mnist-5k")
    return model, xt, yt


def _robust(model, x_adv, y) -> float:
    pairs = zip(x_adv.split(BATCH), y.split(BATCH), strict=True)
    with torch.no_grad():
        return torch.cat([model(a).argmax(1) == b for a, b in pairs]).float().mean().item()


def _autoattack(model, x, y, norm: str, eps: float):
    """AutoAttack's standard version: (x_adv, seconds)."""
    from pyautoattack import AutoAttack

    attack = AutoAttack(model, norm=AA_NORM[norm], eps=eps, version="standard", device="cpu",
                        seed=0)  # fmt: skip
    start = time.perf_counter()
    x_adv = attack.run_standard_evaluation(x, y, batch_size=BATCH)
    if isinstance(x_adv, tuple):  # pyautoattack 0.2 returns (x_adv, labels)
        x_adv = x_adv[0]
    return x_adv, time.perf_counter() - start


@pytest.mark.skipif(not HAS_AA, reason="pyautoattack is not installed")
@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.3), ("l2", 2.0)])
def test_standard_against_autoattack(report, pgd_at, norm, eps):
    """The target row: AutoAttack on the model as given against evaluate on the same model
    (which runs it channels_last on a CPU). The last row hands AutoAttack the model converted
    to channels_last by hand: what a user who knows that gets from it."""
    model, x, y = pgd_at
    start = time.perf_counter()
    seed = torch.Generator().manual_seed(0)
    ours = robustkern.evaluate(model, (x, y), "standard", eps=eps, norm=norm, batch_size=BATCH,
                               generator=seed, progress=False)  # fmt: skip
    ours_s = time.perf_counter() - start
    theirs_adv, theirs_s = _autoattack(model, x, y, norm, eps)
    with modes.channels_last(model, enabled=True):
        converted_adv, converted_s = _autoattack(model, x, y, norm, eps)
    report.table(TITLE, ["norm, eps", "evaluation", "robust accuracy", "seconds", "speed-up"])
    rows = [("AutoAttack (pyautoattack), the model as given", _robust(model, theirs_adv, y),
             theirs_s),
            ("robustkern evaluate('standard') (channels_last itself)", ours.robust_accuracy,
             ours_s),
            ("AutoAttack, the model converted to channels_last by the caller",
             _robust(model, converted_adv, y), converted_s)]  # fmt: skip
    for name, accuracy, s in rows:
        report.row(TITLE, [f"{norm} {eps:g}", name, f"{100 * accuracy:.1f} %", f"{s:.1f}",
                           f"{theirs_s / s:.2f}x"])  # fmt: skip


@pytest.mark.skipif(not HAS_AA, reason="pyautoattack is not installed")
@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.3), ("l2", 2.0)])
def test_fab_t_stage_against_autoattack(report, pgd_at, norm, eps):
    """FAB-T as evaluate runs it (channels_last on a CPU) against AutoAttack's on the model as
    given, and on the model converted to channels_last by the caller."""
    from pyautoattack.fab_pt import FABAttack_PT

    model, x, y = pgd_at
    with torch.no_grad():
        correct = (model(x).argmax(1) == y).nonzero().squeeze(1)[:200]
    x, y = x[correct], y[correct]

    def theirs():
        attack = FABAttack_PT(model, norm=AA_NORM[norm], n_restarts=1, n_iter=100, eps=eps,
                              seed=0, targeted=True, device="cpu", n_target_classes=9)  # fmt: skip
        return attack.perturb(x, y)

    def ours():
        return fab(model, x, y, norm=norm, eps=eps, targeted=True, n_targets=9, steps=100)

    runs = {}
    for name, fn, layout in (("AutoAttack FABAttack_PT, the model as given", theirs, False),
                             ("robustkern fab(targeted=True), channels_last", ours, True),
                             ("AutoAttack FABAttack_PT, channels_last by the caller", theirs,
                              True)):  # fmt: skip
        with modes.channels_last(model, enabled=layout):
            start = time.perf_counter()
            adv = fn()
            runs[name] = (adv, time.perf_counter() - start)
    base = next(iter(runs.values()))[1]
    report.table(FAB_TITLE, ["norm, eps", "FAB-T", "robust accuracy", "seconds", "speed-up"])
    for name, (adv, s) in runs.items():
        report.row(FAB_TITLE, [f"{norm} {eps:g}", name, f"{100 * _robust(model, adv, y):.1f} %",
                               f"{s:.1f}", f"{base / s:.2f}x"])  # fmt: skip
