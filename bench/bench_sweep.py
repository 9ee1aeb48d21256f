"""Eps sweeps: K = 8 eps values of L-inf PGD (10 steps) on the small CNN, run as 8 separate
evaluations (ours with early stopping; fixed-step runs as Foolbox and most tools do them;
Foolbox itself where installed) against the sweep engine's shared runs (``cascade``, ``batch``)
and the minimum-norm curve. Targets: shared <= 0.5 x the separate runs, the minimum-norm curve
<= 0.25 x while agreeing with fixed-eps PGD within 2 pp at every eps."""

import importlib.util
import time

import pytest
import torch

from robustkern import attacks, evaluate
from robustkern.sweep.config import AttackSpec
from robustkern.sweep.engine import evaluate_group

N, STEPS = 500, 10
EPS = [0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2]
HAS_FOOLBOX = importlib.util.find_spec("foolbox") is not None


def separate(model, x, y, early_stop: bool) -> list[float]:
    """One evaluation per eps; robust accuracy per eps."""
    out = []
    for i, e in enumerate(EPS):
        g = torch.Generator().manual_seed(i)
        if early_stop:
            r = evaluate(model, (x, y), "pgd", eps=e, steps=STEPS, generator=g, progress=False)
        else:
            # a plain callable: all steps for every sample, as in most tools
            r = evaluate(
                model, (x, y), attacks.pgd, eps=e, steps=STEPS, generator=g, progress=False
            )
        out.append(r.robust_accuracy)
    return out


def shared(model, x, y, name: str, share: str, **params) -> list[float]:
    spec = AttackSpec(label=name, name=name, norm="linf", eps=tuple(EPS), params=params)
    (_, per_eps), _, _ = evaluate_group(model, spec, EPS, x, y, share=share)
    return [robust.float().mean().item() for _, robust in per_eps]


def foolbox_runs(model, x, y) -> list[float]:
    import foolbox

    fmodel = foolbox.PyTorchModel(model, bounds=(0, 1))
    attack = foolbox.attacks.LinfPGD(steps=STEPS, rel_stepsize=2.5 / STEPS)
    _, _, success = attack(fmodel, x, y, epsilons=EPS)
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    return [(clean & ~s).float().mean().item() for s in success]


def test_eps_sweep_sharing_cpu(report, mnist_cnn):
    model, xt, yt = mnist_cnn
    x, y = xt[:N], yt[:N]
    runs = {
        "8 separate evaluate('pgd') runs (early stop)": lambda: separate(model, x, y, True),
        "8 separate fixed-step runs (as Foolbox does)": lambda: separate(model, x, y, False),
        "sweep, share = cascade": lambda: shared(model, x, y, "pgd", "cascade", steps=STEPS),
        "sweep, share = batch (one call, eps per sample)": lambda: shared(
            model, x, y, "pgd", "batch", steps=STEPS
        ),
        "sweep, min-norm (FMN 50 steps + PGD check)": lambda: shared(
            model, x, y, "min-norm", "auto", steps=50, verify_steps=STEPS
        ),
        "sweep, min-norm (FMN 50 steps, no check)": lambda: shared(
            model, x, y, "min-norm", "auto", steps=50, verify_steps=0
        ),
    }
    if HAS_FOOLBOX:
        runs["Foolbox 3 LinfPGD, epsilons=[8 values]"] = lambda: foolbox_runs(model, x, y)
    results = {}
    for name, run in runs.items():
        run()  # warm-up
        start = time.perf_counter()
        results[name] = (run(), time.perf_counter() - start)
    ours, base = results["8 separate evaluate('pgd') runs (early stop)"]
    fixed = results["8 separate fixed-step runs (as Foolbox does)"][1]
    title = (
        f"Eps sweep: L-inf PGD-{STEPS} at 8 eps ({EPS[0]}..{EPS[-1]}), small CNN, {N} mnist-5k "
        "images, CPU float32"
    )
    header = ["run", "seconds", "x separate (early stop)", "x separate (fixed-step)",
              "max |robust acc - separate| (pp)", "robust acc at each eps (%)"]  # fmt: skip
    report.table(title, header)
    for name, (acc, seconds) in results.items():
        gap = max(abs(a - b) for a, b in zip(acc, ours, strict=True)) * 100
        report.row(title, [name, f"{seconds:.2f}", f"{seconds / base:.2f}",
                           f"{seconds / fixed:.2f}", f"{gap:.1f}",
                           " ".join(f"{100 * a:.1f}" for a in acc)])  # fmt: skip
    assert all(len(acc) == len(EPS) for acc, _ in results.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_eps_sweep_sharing_cuda(report, mnist_cnn):
    model, xt, yt = mnist_cnn
    model = model.cuda()
    x, y = xt[:N].cuda(), yt[:N].cuda()
    runs = {
        "8 separate evaluate('pgd') runs": lambda: separate(model, x, y, True),
        "sweep, share = batch": lambda: shared(model, x, y, "pgd", "batch", steps=STEPS),
        "sweep, share = cascade": lambda: shared(model, x, y, "pgd", "cascade", steps=STEPS),
    }
    title = f"Eps sweep on {torch.cuda.get_device_name()}: L-inf PGD-{STEPS} at 8 eps, {N} images"
    report.table(title, ["run", "seconds", "x separate"])
    times = {}
    for name, run in runs.items():
        run()
        torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        torch.cuda.synchronize()
        times[name] = time.perf_counter() - start
    for name, seconds in times.items():
        report.row(title, [name, f"{seconds:.3f}", f"{seconds / times[next(iter(times))]:.2f}"])
