"""robustkern's "standard" preset against AutoAttack's own code (the package index's
``pyautoattack`` repackages it: ``pip install --no-deps pyautoattack``) on the suite's PGD-AT
small CNN, the 1,000 mnist-5k test images, L-inf 0.3 and L2 2.0: time and robust accuracy
(ours must be no higher); and the FAB-T stage alone on the same points. Rows skip cleanly when
the package is missing."""

import importlib.util
import time

import pytest
import torch

import robustkern
from robustkern import data, pretrained
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
    model = pretrained.trained_cnn("mnist-5k", adversarial=True).eval()
    _, _, xt, yt = data.load("mnist-5k")
    return model, xt, yt


def _robust(model, x_adv, y) -> float:
    pairs = zip(x_adv.split(BATCH), y.split(BATCH), strict=True)
    with torch.no_grad():
        return torch.cat([model(a).argmax(1) == b for a, b in pairs]).float().mean().item()


@pytest.mark.skipif(not HAS_AA, reason="pyautoattack is not installed")
@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.3), ("l2", 2.0)])
def test_standard_against_autoattack(report, pgd_at, norm, eps):
    from pyautoattack import AutoAttack

    model, x, y = pgd_at
    start = time.perf_counter()
    seed = torch.Generator().manual_seed(0)
    ours = robustkern.evaluate(model, (x, y), "standard", eps=eps, norm=norm, batch_size=BATCH,
                               generator=seed, progress=False)  # fmt: skip
    ours_s = time.perf_counter() - start
    attack = AutoAttack(model, norm=AA_NORM[norm], eps=eps, version="standard", device="cpu",
                        seed=0)  # fmt: skip
    start = time.perf_counter()
    x_adv = attack.run_standard_evaluation(x, y, batch_size=BATCH)
    if isinstance(x_adv, tuple):  # pyautoattack 0.2 returns (x_adv, labels)
        x_adv = x_adv[0]
    theirs_s = time.perf_counter() - start
    theirs = _robust(model, x_adv, y)
    report.table(TITLE, ["norm, eps", "evaluation", "robust accuracy", "seconds", "speed-up"])
    report.row(TITLE, [f"{norm} {eps:g}", "AutoAttack (pyautoattack)", f"{100 * theirs:.1f} %",
                       f"{theirs_s:.1f}", "1.00x"])  # fmt: skip
    report.row(TITLE, [f"{norm} {eps:g}", "robustkern evaluate('standard')",
                       f"{100 * ours.robust_accuracy:.1f} %", f"{ours_s:.1f}",
                       f"{theirs_s / ours_s:.2f}x"])  # fmt: skip


@pytest.mark.skipif(not HAS_AA, reason="pyautoattack is not installed")
@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.3), ("l2", 2.0)])
def test_fab_t_stage_against_autoattack(report, pgd_at, norm, eps):
    from pyautoattack.fab_pt import FABAttack_PT

    model, x, y = pgd_at
    with torch.no_grad():
        correct = (model(x).argmax(1) == y).nonzero().squeeze(1)[:200]
    x, y = x[correct], y[correct]
    theirs_attack = FABAttack_PT(model, norm=AA_NORM[norm], n_restarts=1, n_iter=100,
                                 eps=eps, seed=0, targeted=True, device="cpu",
                                 n_target_classes=9)  # fmt: skip
    start = time.perf_counter()
    theirs_adv = theirs_attack.perturb(x, y)
    theirs_s = time.perf_counter() - start
    start = time.perf_counter()
    ours_adv = fab(model, x, y, norm=norm, eps=eps, targeted=True, n_targets=9, steps=100)
    ours_s = time.perf_counter() - start
    report.table(FAB_TITLE, ["norm, eps", "FAB-T", "robust accuracy", "seconds", "speed-up"])
    for name, adv, s in (("AutoAttack FABAttack_PT", theirs_adv, theirs_s),
                         ("robustkern fab(targeted=True)", ours_adv, ours_s)):  # fmt: skip
        report.row(FAB_TITLE, [f"{norm} {eps:g}", name, f"{100 * _robust(model, adv, y):.1f} %",
                               f"{s:.1f}", f"{theirs_s / s:.2f}x"])  # fmt: skip
