"""PGD-10 throughput against torchattacks, Foolbox, ART and the floor (10 x the model's own
forward + input-backward), and evaluate() with early stopping against torchattacks' and ART's
PGD. ART works on numpy arrays: its rows include the copies its API makes."""

import pytest
import torch

import robustkern
from bench.baselines import HAS_ART, HAS_FB, HAS_TA, art_classifier
from bench.timing import floor_fn, interleaved_medians
from robustkern import models
from robustkern.attacks import GraphedPGD, pgd

EPS, STEPS = 0.3, 10
ALPHA = 2.5 * EPS / STEPS
FLOOR = "floor: 10 x (forward + input-backward) on PGD's output points"
FLOOR_CLEAN = "10 x (forward + input-backward) on clean x (not the floor: see floor_fn)"


def throughput_rows(report, title, model, x, y, eps, alpha):
    """Times each PGD-10 implementation on one batch (interleaved rounds, medians); rows
    relative to the floor and to ours."""
    n = len(x)
    fns = {
        FLOOR_CLEAN: floor_fn(model, x, y, STEPS),
        FLOOR: floor_fn(model, pgd(model, x, y, eps=eps, steps=STEPS, alpha=alpha), y, STEPS),
        "robustkern pgd": lambda: pgd(model, x, y, eps=eps, steps=STEPS, alpha=alpha),
    }
    if x.is_cuda and not torch.is_autocast_enabled("cuda"):
        graphed = GraphedPGD(model, x, y, eps=eps, steps=STEPS, alpha=alpha)
        fns["robustkern GraphedPGD (CUDA graph of the step loop)"] = lambda: graphed(x, y)
    if HAS_TA:
        import torchattacks

        ta = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=STEPS, random_start=True)
        fns["torchattacks PGD"] = lambda: ta(x, y)
    if HAS_FB:
        import foolbox

        fmodel = foolbox.PyTorchModel(model, bounds=(0, 1))
        fb = foolbox.attacks.LinfPGD(steps=STEPS, abs_stepsize=alpha, random_start=True)
        fns["Foolbox LinfPGD"] = lambda: fb(fmodel, x, y, epsilons=eps)
    if HAS_ART:
        art = art_pgd(model, x, eps, alpha, batch_size=n)
        xn, yn = x.cpu().numpy(), y.cpu().numpy()
        fns["ART ProjectedGradientDescentPyTorch"] = lambda: art.generate(xn, yn)
    times = interleaved_medians(fns)
    floor = times[FLOOR]
    ours = times["robustkern pgd"]
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
                f"{t / ours:.2f}x",
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
    non-robust model falls), eps 0.1 leaves ~40 % robust, which caps the gain near 2x."""
    model, xt, yt = mnist_cnn
    alpha = 2.5 * eps / STEPS
    accuracy = {}

    def ours():
        res = robustkern.evaluate(model, (xt, yt), "pgd", eps=eps, alpha=alpha, steps=STEPS,
                                  batch_size=250, progress=False)  # fmt: skip
        accuracy["robustkern.evaluate (early stop)"] = res.robust_accuracy

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
    times = interleaved_medians(fns, rounds=3)
    title = f"Robust accuracy on 1,000 mnist-5k test images (L-inf eps {eps}, PGD-10, batch 250)"
    report.table(title, ["implementation", "seconds", "robust accuracy", "robustkern speed-up"])
    base = times["robustkern.evaluate (early stop)"]
    for name, seconds in times.items():
        cells = [name, f"{seconds:.2f}", f"{100 * accuracy[name]:.2f} %", f"{seconds / base:.2f}x"]
        report.row(title, cells)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(("batch", "bf16"), [(32, False), (512, False), (512, True)])
def test_pgd10_resnet18_gpu(report, batch, bf16):
    torch.manual_seed(0)
    model = models.resnet18().cuda().eval()
    x = torch.rand(batch, 3, 32, 32, device="cuda")
    y = torch.randint(0, 10, (batch,), device="cuda")
    if bf16:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    title = f"PGD-10 (L-inf, eps 8/255), ResNet-18, batch {batch}, CIFAR-shaped, " + (
        "bf16 autocast + channels_last (torchattacks row: float32)" if bf16 else "float32"
    )
    eps = 8 / 255
    if bf16:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            throughput_rows(report, title, model, x, y, eps, 2.5 * eps / STEPS)
    else:
        throughput_rows(report, title, model, x, y, eps, 2.5 * eps / STEPS)
