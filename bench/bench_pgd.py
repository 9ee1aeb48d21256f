"""PGD-10 throughput against torchattacks, Foolbox and the floor (10 x the model's own forward
+ input-backward), and evaluate() with early stopping against torchattacks' PGD."""

import importlib.util

import pytest
import torch

import robustkern
from bench.timing import interleaved_medians, sync
from robustkern import models
from robustkern.attacks import pgd
from robustkern.attacks._common import input_grad

HAS_TA = importlib.util.find_spec("torchattacks") is not None
HAS_FB = importlib.util.find_spec("foolbox") is not None
EPS, STEPS = 0.3, 10
ALPHA = 2.5 * EPS / STEPS


def throughput_rows(report, title, model, x, y, eps, alpha):
    """Times each PGD-10 implementation on one batch (interleaved rounds, medians); rows
    relative to the floor and to ours."""
    n = len(x)
    labels = (0, int(y.max()))
    fns = {
        "floor: 10 x (forward + input-backward)": lambda: [
            input_grad(model, x, y, "ce", False, labels) for _ in range(STEPS)
        ],
        "robustkern pgd": lambda: pgd(model, x, y, eps=eps, steps=STEPS, alpha=alpha),
    }
    if HAS_TA:
        import torchattacks

        ta = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=STEPS, random_start=True)
        fns["torchattacks PGD"] = lambda: ta(x, y)
    if HAS_FB:
        import foolbox

        fmodel = foolbox.PyTorchModel(model, bounds=(0, 1))
        fb = foolbox.attacks.LinfPGD(steps=STEPS, abs_stepsize=alpha, random_start=True)
        fns["Foolbox LinfPGD"] = lambda: fb(fmodel, x, y, epsilons=eps)
    times = interleaved_medians(fns)
    floor = times["floor: 10 x (forward + input-backward)"]
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


def test_pgd10_small_cnn_cpu(report, mnist_cnn):
    model, xt, yt = mnist_cnn
    title = "PGD-10 (L-inf, eps 0.3), small CNN, batch 256 of 1x28x28, CPU float32"
    throughput_rows(report, title, model, xt[:256], yt[:256], EPS, ALPHA)


def test_evaluate_early_stop_vs_torchattacks(report, mnist_cnn):
    """Time to robust accuracy on 1,000 images, eps 0.1, 10 steps, same step size."""
    model, xt, yt = mnist_cnn
    eps, alpha = 0.1, 2.5 * 0.1 / STEPS
    title = "Robust accuracy on 1,000 mnist-5k test images (L-inf eps 0.1, PGD-10, batch 250)"
    report.table(title, ["implementation", "seconds", "robust accuracy", "robustkern speed-up"])
    rows = []
    torch.manual_seed(0)
    res = robustkern.evaluate(
        model, (xt, yt), "pgd", eps=eps, alpha=alpha, steps=STEPS, batch_size=250, progress=False
    )
    rows.append(("robustkern.evaluate (early stop)", res.seconds, res.robust_accuracy))
    if HAS_TA:
        import time

        import torchattacks

        torch.manual_seed(0)
        ta = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=STEPS, random_start=True)
        start, correct = time.perf_counter(), 0
        for xb, yb in zip(xt.split(250), yt.split(250), strict=True):
            x_adv = ta(xb, yb)  # torchattacks needs grad mode on
            with torch.no_grad():
                correct += (model(x_adv).argmax(1) == yb).sum().item()
        sync()
        rows.append(("torchattacks PGD", time.perf_counter() - start, correct / len(xt)))
    for name, seconds, acc in rows:
        report.row(
            title, [name, f"{seconds:.2f}", f"{100 * acc:.2f} %", f"{seconds / rows[0][1]:.2f}x"]
        )


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
