"""PGD-10 throughput against torchattacks, Foolbox, ART and the floor (10 x the model's own
forward + input-backward), and evaluate() with early stopping against torchattacks' and ART's
PGD. ART works on numpy arrays: its rows include the copies its API makes."""

import copy

import pytest
import torch

import robustkern
from bench.baselines import HAS_ART, HAS_FB, HAS_TA, art_classifier
from bench.timing import GradientRows, floor_fn, interleaved_medians
from robustkern import models
from robustkern.attacks import GraphedPGD, pgd

EPS, STEPS = 0.3, 10
ALPHA = 2.5 * EPS / STEPS
FLOOR = "floor: 10 x (forward + input-backward) on PGD's output points"
FLOOR_CLEAN = "10 x (forward + input-backward) on clean x (not the floor: see floor_fn)"


def throughput_rows(report, title, model, x, y, eps, alpha, amp=None, theirs=None):
    """Times each PGD-10 implementation on one batch (interleaved rounds, medians); rows
    relative to the floor and to ours. ``amp``: our rows and the floors run under autocast with
    this dtype; ``theirs``: (model, x) for the other libraries' rows (default: ours), e.g. the
    float32 NCHW model a bf16 + channels_last table is compared with."""
    n = len(x)
    their_model, their_x = theirs or (model, x)

    def ours(fn):
        def run():
            with torch.autocast(x.device.type, dtype=amp, enabled=amp is not None):
                return fn()

        return run

    points = ours(lambda: pgd(model, x, y, eps=eps, steps=STEPS, alpha=alpha))()
    fns = {
        FLOOR_CLEAN: ours(floor_fn(model, x, y, STEPS)),
        FLOOR: ours(floor_fn(model, points, y, STEPS)),
        "robustkern pgd": ours(lambda: pgd(model, x, y, eps=eps, steps=STEPS, alpha=alpha)),
    }
    if x.is_cuda:
        graphed = GraphedPGD(model, x, y, eps=eps, steps=STEPS, alpha=alpha, autocast=amp)
        fns["robustkern GraphedPGD (CUDA graph of the step loop)"] = lambda: graphed(x, y)
    if HAS_TA:
        import torchattacks

        ta = torchattacks.PGD(their_model, eps=eps, alpha=alpha, steps=STEPS, random_start=True)
        fns["torchattacks PGD"] = lambda: ta(their_x, y)
    if HAS_FB:
        import foolbox

        fmodel = foolbox.PyTorchModel(their_model, bounds=(0, 1))
        fb = foolbox.attacks.LinfPGD(steps=STEPS, abs_stepsize=alpha, random_start=True)
        fns["Foolbox LinfPGD"] = lambda: fb(fmodel, their_x, y, epsilons=eps)
    if HAS_ART:
        art = art_pgd(their_model, their_x, eps, alpha, batch_size=n)
        xn, yn = their_x.cpu().numpy(), y.cpu().numpy()
        fns["ART ProjectedGradientDescentPyTorch"] = lambda: art.generate(xn, yn)
    times = interleaved_medians(fns, rounds=11)  # rounds vary by +-15 % on a shared CPU
    floor = times[FLOOR]
    ours_t = times["robustkern pgd"]
    report.table(
        title, ["implementation", "ms", "image-steps/s", "time / floor", "robustkern speed-up"]
    )
    for name, t in times.items():
        report.row(
            title,
            [
                name,
                f"{t * 1e3:.1f}",
                f"{n * STEPS / t:,.0f}",
                f"{t / floor:.3f}",
                f"{t / ours_t:.2f}x",
            ],
        )


def art_pgd(model, x, eps, alpha, batch_size):
    """ART's PyTorch PGD with the same budget, step and one random start."""
    import numpy as np
    from art.attacks.evasion import ProjectedGradientDescentPyTorch

    return ProjectedGradientDescentPyTorch(
        art_classifier(model, x), norm=np.inf, eps=eps, eps_step=alpha, max_iter=STEPS,
        num_random_init=1, batch_size=batch_size, verbose=False,
    )  # fmt: skip


def test_pgd10_small_cnn_cpu(report, mnist_cnn):
    model, xt, yt = mnist_cnn
    title = "PGD-10 (L-inf, eps 0.3), small CNN, batch 256 of 1x28x28, CPU float32"
    throughput_rows(report, title, model, xt[:256], yt[:256], EPS, ALPHA)


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_evaluate_early_stop_vs_others(report, mnist_cnn, eps):
    """Time to robust accuracy on 1,000 images, 10 steps, same step size. The gain depends on
    how soon examples fall: eps 0.3 is MNIST's standard budget (almost every example of this
    non-robust model falls), eps 0.1 leaves ~40 % robust. Every example still robust after 10
    steps needs all 10 gradient passes and every fooled one at least 1; the last row is that
    floor, and its speed-up is the most early stopping can give at equal cost per pass."""
    model, xt, yt = mnist_cnn
    alpha = 2.5 * eps / STEPS
    accuracy, outcome = {}, {}

    def ours():
        res = robustkern.evaluate(model, (xt, yt), "pgd", eps=eps, alpha=alpha, steps=STEPS,
                                  batch_size=250, progress=False)  # fmt: skip
        accuracy["robustkern.evaluate (early stop)"] = res.robust_accuracy
        outcome["robust"], outcome["fooled"] = res.robust_correct.sum(), res.success.sum()

    def theirs(name, attack):
        """attack(xb, yb) -> x_adv per batch of 250, then one forward to score it."""

        def run():
            correct = 0
            for xb, yb in zip(xt.split(250), yt.split(250), strict=True):
                x_adv = attack(xb, yb)  # torchattacks needs grad mode on
                with torch.no_grad():
                    correct += (model(x_adv).argmax(1) == yb).sum().item()
            accuracy[name] = correct / len(xt)

        return run

    fns = {"robustkern.evaluate (early stop)": ours}
    if HAS_TA:
        import torchattacks

        ta = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=STEPS, random_start=True)
        fns["torchattacks PGD"] = theirs("torchattacks PGD", ta)
    if HAS_ART:
        art = art_pgd(model, xt, eps, alpha, batch_size=250)
        fns["ART PGD"] = theirs(
            "ART PGD", lambda xb, yb: torch.from_numpy(art.generate(xb.numpy(), yb.numpy()))
        )
    with GradientRows(model) as counter:
        times = interleaved_medians({k: counter.wrap(k, fn) for k, fn in fns.items()}, rounds=3)
    title = f"Robust accuracy on 1,000 mnist-5k test images (L-inf eps {eps}, PGD-10, batch 250)"
    header = ["implementation", "seconds", "robust accuracy", "gradient passes (examples)"]
    report.table(title, [*header, "robustkern speed-up", "torchattacks / this, in passes"])
    base = times["robustkern.evaluate (early stop)"]
    ta_rows = counter.rows.get("torchattacks PGD")

    def in_passes(rows):
        return f"{ta_rows / rows:.2f}x" if ta_rows else "n/a"

    for name, seconds in times.items():
        rows = counter.rows[name]
        report.row(title, [name, f"{seconds:.2f}", f"{100 * accuracy[name]:.2f} %", f"{rows:,}",
                           f"{seconds / base:.2f}x", in_passes(rows)])  # fmt: skip
    floor = int(STEPS * outcome["robust"] + outcome["fooled"])
    report.row(title, ["floor of early stopping: 10 passes per robust example, 1 per fooled one",
                       "-", "-", f"{floor:,}", "-", in_passes(floor)])  # fmt: skip


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(("batch", "bf16"), [(32, False), (512, False), (512, True)])
def test_pgd10_resnet18_gpu(report, batch, bf16):
    torch.manual_seed(0)
    model = models.resnet18().cuda().eval()
    x = torch.rand(batch, 3, 32, 32, device="cuda")
    y = torch.randint(0, 10, (batch,), device="cuda")
    eps = 8 / 255
    title = f"PGD-10 (L-inf, eps 8/255), ResNet-18, batch {batch}, CIFAR-shaped, " + (
        "ours: bf16 autocast + channels_last; other libraries: float32" if bf16 else "float32"
    )
    if bf16:  # the target compares ours in bf16 + channels_last with torchattacks in float32
        fast = copy.deepcopy(model).to(memory_format=torch.channels_last)
        x_fast = x.contiguous(memory_format=torch.channels_last)
        throughput_rows(report, title, fast, x_fast, y, eps, 2.5 * eps / STEPS,
                        amp=torch.bfloat16, theirs=(model, x))  # fmt: skip
    else:
        throughput_rows(report, title, model, x, y, eps, 2.5 * eps / STEPS)
