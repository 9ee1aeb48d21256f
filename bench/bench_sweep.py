"""Eps sweeps: K = 8 eps values of L-inf PGD on the small CNN, run as 8 separate evaluations
(ours with early stopping; fixed-step runs as Foolbox and most tools do them; Foolbox itself
where installed) against the sweep engine's shared runs (``cascade``, ``batch``) and the
minimum-norm curve, with PGD-10 and with PGD-50 (close to converged on this model: PGD-10
overstates robust accuracy by a few points, which a minimum-norm curve should not copy).
Targets: shared <= 0.5 x the separate runs, the minimum-norm curve <= 0.25 x while agreeing
with fixed-eps PGD within 2 pp at every eps."""

import pytest
import torch

from bench.baselines import HAS_FB
from bench.timing import GradientRows, interleaved_medians
from robustkern import attacks, evaluate
from robustkern.sweep.config import AttackSpec
from robustkern.sweep.engine import evaluate_group

N = 500
EPS = [0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2]
EARLY, FIXED = "8 separate evaluate('pgd') runs (early stop)", "8 separate fixed-step runs"


def separate(model, x, y, steps: int, early_stop: bool) -> list[float]:
    """One evaluation per eps; robust accuracy per eps."""
    out = []
    for i, e in enumerate(EPS):
        g = torch.Generator().manual_seed(i)
        # a plain callable runs all steps for every sample, as in most tools
        attack = "pgd" if early_stop else attacks.pgd
        r = evaluate(model, (x, y), attack, eps=e, steps=steps, generator=g, progress=False)
        out.append(r.robust_accuracy)
    return out


def shared(model, x, y, name: str, share: str, **params) -> list[float]:
    spec = AttackSpec(label=name, name=name, norm="linf", eps=tuple(EPS), params=params)
    (_, per_eps), _, _ = evaluate_group(model, spec, EPS, x, y, share=share)
    return [robust.float().mean().item() for _, robust in per_eps]


def foolbox_runs(model, x, y, steps: int) -> list[float]:
    import foolbox

    fmodel = foolbox.PyTorchModel(model, bounds=(0, 1))
    attack = foolbox.attacks.LinfPGD(steps=steps, rel_stepsize=2.5 / steps)
    _, _, success = attack(fmodel, x, y, epsilons=EPS)
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    return [(clean & ~s).float().mean().item() for s in success]


def sweep_runs(model, x, y, steps: int) -> dict:
    runs = {
        EARLY: lambda: separate(model, x, y, steps, True),
        FIXED: lambda: separate(model, x, y, steps, False),
        "sweep, share = cascade": lambda: shared(model, x, y, "pgd", "cascade", steps=steps),
        "sweep, min-norm (FMN 50 steps + PGD-10 check)": lambda: shared(
            model, x, y, "min-norm", "auto", steps=50, verify_steps=10
        ),
    }
    if steps <= 10:  # the slower variants, once
        runs["sweep, share = batch (eps per sample, 256 rows per call)"] = lambda: shared(
            model, x, y, "pgd", "batch", steps=steps
        )
        runs["sweep, min-norm (FMN 50 steps, no check)"] = lambda: shared(
            model, x, y, "min-norm", "auto", steps=50, verify_steps=0
        )
    if HAS_FB:
        runs["Foolbox 3 LinfPGD, epsilons=[8 values]"] = lambda: foolbox_runs(model, x, y, steps)
    return runs


@pytest.mark.parametrize(("steps", "rounds"), [(10, 3), (50, 1)])
def test_eps_sweep_sharing_cpu(report, mnist_cnn, steps, rounds):
    model, xt, yt = mnist_cnn
    x, y = xt[:N], yt[:N]
    curves = {}

    def keep(name, run):
        def timed():
            curves[name] = run()

        return timed

    runs = sweep_runs(model, x, y, steps)
    with GradientRows(model) as counter:
        fns = {name: counter.wrap(name, keep(name, run)) for name, run in runs.items()}
        times = interleaved_medians(fns, rounds, warm_up=steps <= 10)
    rows = counter.rows
    title = (
        f"Eps sweep: L-inf PGD-{steps} at 8 eps ({EPS[0]}..{EPS[-1]}), small CNN, {N} mnist-5k "
        f"images, CPU float32 (median of {rounds})"
    )
    gap = f"max |robust acc - separate PGD-{steps}| (pp)"
    header = ["run", "seconds", "x separate (early stop)", "x separate (fixed-step)",
              "gradient passes (examples)", gap, "robust acc at each eps (%)"]  # fmt: skip
    report.table(title, header)
    for name, seconds in times.items():
        acc = curves[name]
        gap = max(abs(a - b) for a, b in zip(acc, curves[EARLY], strict=True)) * 100
        report.row(title, [name, f"{seconds:.2f}", f"{seconds / times[EARLY]:.2f}",
                           f"{seconds / times[FIXED]:.2f}", f"{rows[name]:,}", f"{gap:.1f}",
                           " ".join(f"{100 * a:.1f}" for a in acc)])  # fmt: skip
    assert all(len(acc) == len(EPS) for acc in curves.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_eps_sweep_sharing_cuda(report, mnist_cnn):
    model, xt, yt = mnist_cnn
    model = model.cuda()
    x, y = xt[:N].cuda(), yt[:N].cuda()
    steps = 10
    runs = {
        "8 separate evaluate('pgd') runs": lambda: separate(model, x, y, steps, True),
        "sweep, share = batch": lambda: shared(model, x, y, "pgd", "batch", steps=steps),
        "sweep, share = cascade": lambda: shared(model, x, y, "pgd", "cascade", steps=steps),
    }
    title = f"Eps sweep on {torch.cuda.get_device_name()}: L-inf PGD-{steps} at 8 eps, {N} images"
    report.table(title, ["run", "seconds", "x separate"])
    times = interleaved_medians(runs, rounds=3)
    for name, seconds in times.items():
        report.row(title, [name, f"{seconds:.3f}", f"{seconds / times[next(iter(times))]:.2f}"])
