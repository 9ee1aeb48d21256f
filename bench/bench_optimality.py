"""Minimum-norm attacks ranked by AttackBench's local optimality (Cinà et al., AAAI 2025), ours
against Foolbox's and torchattacks' where installed; CW-L2 against torchattacks' CW; and
HopSkipJump against ART's.

Optimality: the suite's standard and PGD-AT small CNNs (``pretrained.trained_cnn("mnist-5k")``),
the first ``N`` mnist-5k test images, each norm. Every attack gets about AttackBench's budget of
``BUDGET`` gradient passes per sample (its steps adapted: FMN and DDN 1,000 steps, CW and EAD
9 binary steps x 111, FAB-T 9 targets x 111, FAB 100 steps as in AttackBench, whose every step
back-propagates the 10 rows of the logits' Jacobian, DeepFool at most 50 steps), and the passes it
made are counted (forwards with gradient, ``GradientRows``: a Jacobian's extra backward rows are
not, and Foolbox's DeepFool makes one forward per candidate class). Every attack's points are
judged alike: distance in the norm where the model misclassifies a point inside the box (1e-6
tolerance), inf elsewhere, 0 where the clean image is already misclassified; ``optimality``
then compares each attack's robust-accuracy curve with the per-sample best of all the attacks of
that model and norm, on [0, d_max] with d_max the largest distance of that best (AttackBench's).
"""

import math
import time
from collections.abc import Callable
from functools import partial

import pytest
import torch

from bench.baselines import HAS_ART, HAS_FB, HAS_TA, art_classifier
from bench.timing import GradientRows, median_seconds
from robustkern import data, pretrained
from robustkern.attacks import cw, ddn, deepfool, fab, hop_skip_jump, min_norm
from robustkern.evaluation import optimality

# torchattacks' SparseFool warns about numpy 2 at every step
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

N = 40  # images per model: the whole file ran in 9 minutes on 2 cores
BUDGET = 1000  # gradient passes per sample, AttackBench's
NORMS = ("linf", "l2", "l1", "l0")
MODELS = {"standard": False, "PGD-AT": True}
TOL = 1e-6  # how far outside [0, 1] a point may lie and still count
CW_N, CW_STEPS, CW_LR = 1000, 100, 0.1
HSJ_N, ART_ITERATIONS = 100, 5

TITLE = (
    f"AttackBench local optimality, small CNNs (suite's standard and PGD-AT), first {N} "
    f"mnist-5k test images, about {BUDGET} gradient passes per sample, CPU float32, one run each "
    "(passes: forwards with gradient; untargeted FAB back-propagates 10 Jacobian rows from each; "
    "** best robustkern attack per model and norm)"
)
TARGETS = "Optimality targets: robustkern's best >= 0.98 (L-inf), >= 0.95 (L2, L1), >= every peer"

# (library, attack and its settings, run(model, x, y) -> x_adv)
Entry = tuple[str, str, Callable]
STEPS = BUDGET // 9  # per binary step, or per target


def ours(norm: str) -> list[Entry]:
    rows = [(f"min_norm (FMN), {BUDGET} steps", partial(min_norm, norm=norm, steps=BUDGET))]
    if norm != "l0":
        rows += [("fab, 100 steps", partial(fab, norm=norm, steps=100)),
                 (f"fab targeted, 9 x {STEPS} steps",
                  partial(fab, norm=norm, targeted=True, n_targets=9, steps=STEPS))]  # fmt: skip
    if norm == "l2":
        rows += [(f"ddn, {BUDGET} steps", partial(ddn, steps=BUDGET)),
                 (f"cw, 9 x {STEPS} steps, lr 0.05",
                  partial(cw, binary_steps=9, steps=STEPS, lr=0.05))]  # fmt: skip
    if norm in ("l2", "linf"):
        rows += [("deepfool, <= 50 steps", partial(deepfool, norm=norm, steps=50))]
    return [("robustkern", name, run) for name, run in rows]


def foolbox_attacks(norm: str) -> list[Entry]:
    from foolbox import attacks as a

    fmn = {"linf": a.LInfFMNAttack, "l2": a.L2FMNAttack, "l1": a.L1FMNAttack, "l0": a.L0FMNAttack}
    bb = {"linf": a.LinfinityBrendelBethgeAttack, "l2": a.L2BrendelBethgeAttack,
          "l1": a.L1BrendelBethgeAttack, "l0": a.L0BrendelBethgeAttack}  # fmt: skip
    rows = [(f"FMN, {BUDGET} steps", _foolbox(fmn[norm], steps=BUDGET))]
    if norm == "l2":
        rows += [(f"DDN, {BUDGET} steps", _foolbox(a.DDNAttack, steps=BUDGET)),
                 (f"CW, 9 x {STEPS} steps, lr 0.05", _foolbox(a.L2CarliniWagnerAttack,
                  binary_search_steps=9, steps=STEPS, stepsize=0.05))]  # fmt: skip
    if norm in ("l2", "linf"):
        deep = a.L2DeepFoolAttack if norm == "l2" else a.LinfDeepFoolAttack
        rows += [("DeepFool, <= 50 steps", _foolbox(deep, steps=50))]
    if norm == "l1":
        ead = _foolbox(a.EADAttack, binary_search_steps=9, steps=STEPS, decision_rule="L1")
        rows += [(f"EAD (L1 rule), 9 x {STEPS} steps", ead)]
    rows += [(f"Brendel-Bethge, {BUDGET} steps", _foolbox(bb[norm], steps=BUDGET))]
    return [("Foolbox", name, run) for name, run in rows]


def _foolbox(attack, **settings) -> Callable:
    def run(model, x, y):
        import foolbox

        # Brendel-Bethge raises its ImportError here where numba is missing
        return attack(**settings).run(foolbox.PyTorchModel(model, bounds=(0, 1)), x, y)

    return run


def torchattacks_attacks(norm: str) -> list[Entry]:
    import torchattacks as ta

    rows = []
    if norm == "l2":
        rows += [(f"CW, c 1, {BUDGET} steps, lr 0.01", _ta(ta.CW, c=1, steps=BUDGET, lr=0.01)),
                 ("DeepFool, <= 50 steps", _ta(ta.DeepFool, steps=50))]  # fmt: skip
    if norm in ("l2", "linf"):
        fab_norm = {"l2": "L2", "linf": "Linf"}[norm]
        rows += [("FAB, 100 steps", _ta(ta.FAB, norm=fab_norm, eps=math.inf, steps=100))]
    if norm == "l1":
        rows += [(f"EADL1, 9 x {STEPS} steps", _ta(ta.EADL1, max_iterations=STEPS))]
    if norm == "l0":
        rows += [("SparseFool, 10 steps", _ta(ta.SparseFool)),
                 ("JSMA, <= 10 % of pixels", _ta(ta.JSMA))]  # fmt: skip
    return [("torchattacks", name, run) for name, run in rows]


def _ta(attack, **settings) -> Callable:
    return lambda model, x, y: attack(model, **settings)(x, y)


def entries(norm: str) -> list[Entry]:
    return (
        ours(norm)
        + (foolbox_attacks(norm) if HAS_FB else [])
        + (torchattacks_attacks(norm) if HAS_TA else [])
    )


def distances(model, x, y, x_adv, norm: str, correct) -> torch.Tensor:
    """Per sample: the distance of a misclassified point inside the box, else inf; 0 where the
    clean image is misclassified."""
    x_adv = x_adv.detach().reshape(x.shape).to(x.dtype)
    with torch.no_grad():
        fooled = model(x_adv).argmax(1) != y
    inside = ((x_adv >= -TOL) & (x_adv <= 1 + TOL)).flatten(1).all(1)
    delta = (x_adv - x).flatten(1).double()
    size = {
        "linf": lambda: delta.abs().amax(1),
        "l2": lambda: delta.norm(dim=1),
        "l1": lambda: delta.abs().sum(1),
        "l0": lambda: (delta != 0).double().sum(1),
    }
    d = torch.where(fooled & inside, size[norm](), math.inf)
    return d.masked_fill(~correct, 0.0)


@pytest.fixture(scope="module")
def mnist():
    _, _, xt, yt = data.load("mnist-5k")
    models = {k: pretrained.trained_cnn("mnist-5k", adversarial=a) for k, a in MODELS.items()}
    return {k: m.eval() for k, m in models.items()}, xt, yt


def _size(d: float, norm: str) -> str:
    return f"{d:.0f}" if norm == "l0" else f"{d:.4f}"


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("model_name", MODELS)
def test_optimality(report, mnist, model_name, norm):
    models, xt, yt = mnist
    model, x, y = models[model_name], xt[:N], yt[:N]
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    counter = GradientRows(model)
    found, cost, skipped = {}, {}, []
    with counter:
        for library, name, run in entries(norm):
            key = (library, name)
            start = time.perf_counter()
            try:
                x_adv = counter.wrap(key, lambda run=run: run(model, x, y))()
            except (ValueError, ImportError, NotImplementedError) as e:
                skipped.append((library, name, f"{type(e).__name__}: {str(e).splitlines()[0]}"))
                continue
            cost[key] = (time.perf_counter() - start, counter.rows[key] / N)
            found[key] = distances(model, x, y, x_adv, norm, correct)
    best = torch.stack(list(found.values())).amin(0)
    finite = best[correct & best.isfinite()]
    d_max = finite.max().item() if len(finite) else 1.0
    scores = optimality(found, correct, d_max)
    mine = [k for k in found if k[0] == "robustkern"]
    top = max(mine, key=lambda k: scores[k]) if mine else None
    header = ["model", "norm (d_max)", "library", "attack", "gradient passes / sample",
              "seconds", "success", "median distance", "optimality"]  # fmt: skip
    report.table(TITLE, header)
    for key, d in found.items():
        seconds, passes = cost[key]
        won = d[correct].isfinite()
        median = d[correct][won].median().item() if won.any() else math.nan
        name = f"**{key[1]}**" if key == top else key[1]
        report.row(TITLE, [model_name, f"{norm} ({_size(d_max, norm)})", key[0], name,
                           f"{passes:.0f}", f"{seconds:.1f}", f"{won.float().mean().item():.0%}",
                           _size(median, norm), f"{scores[key]:.4f}"])  # fmt: skip
    for library, name, why in skipped:
        report.row(TITLE, [model_name, norm, library, name, "-", "-", "-", "-", f"skipped ({why})"])
    _targets(report, model_name, norm, scores, top)


def _targets(report, model_name, norm, scores, top) -> None:
    goal = {"linf": 0.98, "l2": 0.95, "l1": 0.95}.get(norm)
    peers = {k: v for k, v in scores.items() if k[0] != "robustkern"}
    peer = max(peers, key=lambda k: peers[k]) if peers else None
    report.table(TARGETS, ["model", "norm", "best robustkern", "best peer", "target", "met"])
    ours_cell = f"{top[1]}: {scores[top]:.4f}" if top else "-"
    peer_cell = f"{peer[0]} {peer[1]}: {scores[peer]:.4f}" if peer else "-"
    target = f">= {goal} and >= peer" if goal else ">= peer"
    met = top is not None and (goal is None or scores[top] >= goal)
    met = met and (peer is None or scores[top] >= scores[peer])
    report.row(TARGETS, [model_name, norm, ours_cell, peer_cell, target, "yes" if met else "no"])


def _l2_summary(model, x, y, x_adv) -> tuple[float, float]:
    """Success rate among correctly classified images and the median L2 of their successes."""
    with torch.no_grad():
        correct = model(x).argmax(1) == y
        fooled = model(x_adv).argmax(1) != y
    d = (x_adv - x).flatten(1).double().norm(dim=1)
    ok = correct & fooled
    return (ok.sum() / correct.sum()).item(), d[ok].median().item() if ok.any() else math.nan


CW_TITLE = (
    f"CW-L2 against torchattacks' CW, standard small CNN, first {CW_N} mnist-5k test images in "
    f"one batch, at most {CW_STEPS} Adam steps per sample in all (both stop early), lr {CW_LR}, "
    "CPU float32, one run each"
)


@pytest.mark.skipif(not HAS_TA, reason="torchattacks is not installed")
def test_cw_against_torchattacks(report, mnist):
    import torchattacks as ta

    models, xt, yt = mnist
    model, x, y = models["standard"], xt[:CW_N], yt[:CW_N]
    runs = {
        "torchattacks CW, c 1": lambda: ta.CW(model, c=1, steps=CW_STEPS, lr=CW_LR)(x, y),
        "robustkern cw, c 1 (1 binary step)": lambda: cw(
            model, x, y, binary_steps=1, steps=CW_STEPS, initial_const=1.0, lr=CW_LR
        ),
        "robustkern cw, c from 1 (4 binary steps x 25)": lambda: cw(
            model, x, y, binary_steps=4, steps=CW_STEPS // 4, initial_const=1.0, lr=CW_LR
        ),
    }
    report.table(CW_TITLE, ["implementation", "gradient passes / sample", "seconds", "success",
                            "median L2 of successes", "speed-up vs torchattacks"])  # fmt: skip
    counter, base = GradientRows(model), None
    for name, run in runs.items():
        with counter:
            start = time.perf_counter()
            x_adv = counter.wrap(name, run)()
            seconds = time.perf_counter() - start
        base = base or seconds
        passes = counter.rows[name] / CW_N
        rate, median = _l2_summary(model, x, y, x_adv)
        report.row(CW_TITLE, [name, f"{passes:.0f}", f"{seconds:.1f}", f"{rate:.1%}",
                              f"{median:.4f}", f"{base / seconds:.2f}x"])  # fmt: skip


class Float32(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float()


class QueryRows(GradientRows):
    """Counts every example the model scores, with or without gradient: a decision-based
    attack's queries."""

    def _count(self, module, args) -> None:
        self.count += len(args[0])


HSJ_TITLE = (
    f"HopSkipJump (L2, untargeted) against ART's, standard small CNN, first {HSJ_N} mnist-5k "
    f"test images (ART: {ART_ITERATIONS} iterations, one image at a time, probes in batches of "
    "64; ours: the same queries per image, all images at once), CPU float32, one run each; "
    "floor: the same number of forwards alone in batches of 64"
)


@pytest.mark.skipif(not HAS_ART, reason="adversarial-robustness-toolbox is not installed")
def test_hop_skip_jump_against_art(report, mnist):
    from art.attacks.evasion import HopSkipJump

    models, xt, yt = mnist
    model, x, y = models["standard"], xt[:HSJ_N], yt[:HSJ_N]
    # ART's random starts are float64 numpy arrays: the model sees them cast back to float32
    as_float = torch.nn.Sequential(Float32(), model)
    art = HopSkipJump(art_classifier(as_float, x), norm=2, max_iter=ART_ITERATIONS,
                      max_eval=10_000, init_eval=100, init_size=100, verbose=False)  # fmt: skip
    counter = QueryRows(model)
    art_adv, art_s = [], 0.0
    with counter:  # ART in chunks of 10 images until all are done or 5 minutes have passed
        for chunk in range(0, HSJ_N, 10):
            if art_s > 300:
                break
            start = time.perf_counter()
            xs, ys = x[chunk : chunk + 10], y[chunk : chunk + 10]
            art_adv.append(torch.from_numpy(art.generate(xs.numpy(), ys.numpy())))
            art_s += time.perf_counter() - start
        art_n = sum(len(a) for a in art_adv)
        art_queries = counter.count / art_n
        counter.count = 0
        budget = round(art_queries)
        start = time.perf_counter()
        g = torch.Generator().manual_seed(0)
        ours_adv = hop_skip_jump(model, x, y, norm="l2", queries=budget, generator=g)
        ours_s = time.perf_counter() - start
        ours_queries = counter.count / HSJ_N
    with torch.no_grad():
        batch_64 = median_seconds(lambda: model(x[:64]), min_run_time=0.5) / 64
    art_rate, art_median = _l2_summary(model, x[:art_n], y[:art_n], torch.cat(art_adv))
    rate, median = _l2_summary(model, x[:art_n], y[:art_n], ours_adv[:art_n])
    all_rate, all_median = _l2_summary(model, x, y, ours_adv)
    header = ["implementation", "images", "queries / image", "seconds / image", "success",
              "median L2 of successes", "speed-up per image"]  # fmt: skip
    report.table(HSJ_TITLE, header)
    art_per, per = art_s / art_n, ours_s / HSJ_N
    report.row(HSJ_TITLE, ["ART HopSkipJump", art_n, f"{art_queries:.0f}", f"{art_per:.3f}",
                           f"{art_rate:.1%}", f"{art_median:.4f}", "1.00x"])  # fmt: skip
    report.row(HSJ_TITLE, ["  floor", "", f"{art_queries:.0f}", f"{art_queries * batch_64:.3f}",
                           "", "", f"{art_per / (art_queries * batch_64):.2f}x"])  # fmt: skip
    report.row(HSJ_TITLE, [f"robustkern hop_skip_jump (queries={budget})", HSJ_N,
                           f"{ours_queries:.0f}", f"{per:.3f}", f"{all_rate:.1%}",
                           f"{all_median:.4f}", f"{art_per / per:.2f}x"])  # fmt: skip
    report.row(HSJ_TITLE, ["  the same, on ART's images", art_n, "", "", f"{rate:.1%}",
                           f"{median:.4f}", ""])  # fmt: skip
