"""One adversarial-training epoch on CPU: robustkern's trainer and drop-in loss against the same
loop written with torchattacks' PGD, ART's PGD adversarial trainer, the floor (the model's own
passes on PGD points, no attack arithmetic), and FGSM-RS against PGD-10-AT (Wong et al.'s
cost claim). Layout and precision are named in each row: the trainer's channels_last option is
compared with torchattacks on channels_last too, so the table shows what comes from the layout
and what from the attack code."""

import copy

import pytest
import torch
import torch.nn.functional as F

from bench.baselines import HAS_ART, HAS_TA, art_classifier
from bench.timing import interleaved_medians
from robustkern import data, models
from robustkern.attacks import pgd
from robustkern.training import adversarial_loss, fit

EPS, STEPS, N, BATCH = 0.3, 10, 1024, 128


def loop(initial, batches, make_loss, channels_last=False, lr=0.01):
    """An epoch of the plain training loop on a copy of ``initial``; make_loss(model) ->
    loss(model, x, y)."""
    model = copy.deepcopy(initial)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    data_ = [(xb.contiguous(memory_format=fmt), yb) for xb, yb in batches]
    step_loss = make_loss(model)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)

    def epoch():
        model.train()
        for xb, yb in data_:
            loss = step_loss(model, xb, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return epoch


def trainer(initial, x, y, method, eps, batch, **kwargs):
    """One epoch of robustkern's fit on a copy of ``initial``."""
    model = copy.deepcopy(initial)
    return lambda: fit(model, (x, y), method=method, eps=eps, steps=STEPS, epochs=1,
                       batch_size=batch, optimizer="sgd", lr=0.01, train_eval=0,
                       progress=False, **kwargs)  # fmt: skip


def torchattacks_loss(eps):
    """make_loss for `loop`: cross-entropy at torchattacks' PGD point (its default loop)."""
    import torchattacks

    def make(model):
        attack = torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / STEPS, steps=STEPS,
                                  random_start=True)  # fmt: skip
        return lambda m, xb, yb: F.cross_entropy(m(attack(xb, yb)), yb)

    return make


def test_pgd_at_epoch_cpu(report):
    x, y, _, _ = data.load("mnist-5k")
    x, y = x[:N], y[:N]
    torch.manual_seed(0)
    initial = models.small_cnn(1, 10)
    batches = list(zip(x.split(BATCH), y.split(BATCH), strict=True))
    alpha = 2.5 * EPS / STEPS

    def floor(model, xb, yb):
        """STEPS x (forward + input-backward), then the training forward: no attack arithmetic.
        It runs on PGD points of the initial model (see bench.timing.floor_fn for why)."""
        xg = xb.clone().requires_grad_(True)
        for _ in range(STEPS):
            (g,) = torch.autograd.grad(F.cross_entropy(model(xg), yb), xg)
        return F.cross_entropy(model(xb + 0 * g), yb)

    attacked = [(pgd(initial.eval(), xb, yb, eps=EPS, steps=STEPS), yb) for xb, yb in batches]
    fns = {
        "floor: the model's passes only": loop(initial, attacked, lambda m: floor),
        "robustkern fit (pgd)": trainer(initial, x, y, "pgd", EPS, BATCH),
        "robustkern fit (pgd), channels_last": trainer(
            initial, x, y, "pgd", EPS, BATCH, channels_last=True
        ),
        "robustkern fit (pgd), channels_last + bf16": trainer(
            initial, x, y, "pgd", EPS, BATCH, channels_last=True, amp="bf16"
        ),
        "robustkern adversarial_loss in a loop": loop(
            initial,
            batches,
            lambda _: lambda m, xb, yb: adversarial_loss(m, xb, yb, eps=EPS, steps=STEPS),
        ),
        "robustkern fit (fgsm-rs)": trainer(initial, x, y, "fgsm-rs", EPS, BATCH),
    }
    if HAS_TA:
        fns["torchattacks PGD in a loop"] = loop(initial, batches, torchattacks_loss(EPS))
        fns["torchattacks PGD in a loop, channels_last"] = loop(
            initial, batches, torchattacks_loss(EPS), channels_last=True
        )
    if HAS_ART:
        from art.defences.trainer import AdversarialTrainerMadryPGD

        model = copy.deepcopy(initial)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        art = AdversarialTrainerMadryPGD(
            art_classifier(model, x, optimizer=opt), nb_epochs=1, batch_size=BATCH, eps=EPS,
            eps_step=alpha, max_iter=STEPS, num_random_init=1,
        )  # fmt: skip
        fns["ART AdversarialTrainerMadryPGD (numpy in, numpy out)"] = lambda: art.fit(
            x.numpy(), y.numpy()
        )
    times = interleaved_medians(fns, rounds=3)
    title = (f"one PGD-{STEPS}-AT epoch (L-inf eps {EPS:g}), small CNN, {N} mnist-5k images, "
             f"batch {BATCH}, CPU, float32 unless a row says bf16")  # fmt: skip
    report.table(title, ["implementation", "seconds", "images/s", "speed-up vs torchattacks",
                         "time / PGD-10 fit"])  # fmt: skip
    base, pgd_fit = times.get("torchattacks PGD in a loop"), times["robustkern fit (pgd)"]
    for name, t in times.items():
        vs_ta = f"{base / t:.2f}x" if base else "n/a"
        report.row(title, [name, f"{t:.2f}", f"{N / t:.0f}", vs_ta, f"{t / pgd_fit:.2f}"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_pgd_at_epoch_resnet18_gpu(report):
    resnet18_rows(report, "cuda", n=4096, batch=256)


def resnet18_rows(report, device: str, n: int, batch: int):
    """A PGD-10-AT epoch of a ResNet-18 on CIFAR-shaped random data: fit in float32 and in
    bf16 + channels_last against torchattacks' loop in float32 (the target's comparison) and
    on channels_last."""
    torch.manual_seed(0)
    initial = models.resnet18().to(device)
    x = torch.rand(n, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (n,), device=device)
    batches = list(zip(x.split(batch), y.split(batch), strict=True))
    eps = 8 / 255
    fns = {
        "robustkern fit (pgd), float32": trainer(initial, x, y, "pgd", eps, batch, device=device),
        "robustkern fit (pgd), channels_last + bf16": trainer(
            initial, x, y, "pgd", eps, batch, device=device, channels_last=True, amp="bf16"
        ),
    }
    if HAS_TA:
        fns["torchattacks PGD in a loop, float32"] = loop(initial, batches, torchattacks_loss(eps))
        fns["torchattacks PGD in a loop, channels_last"] = loop(
            initial, batches, torchattacks_loss(eps), channels_last=True
        )
    times = interleaved_medians(fns, rounds=3)
    title = (f"one PGD-{STEPS}-AT epoch (L-inf eps 8/255), ResNet-18, {n} CIFAR-shaped random "
             f"images, batch {batch}, {device}")  # fmt: skip
    report.table(title, ["implementation", "seconds", "images/s",
                         "speed-up vs torchattacks float32"])  # fmt: skip
    base = times.get("torchattacks PGD in a loop, float32")
    for name, t in times.items():
        vs_ta = f"{base / t:.2f}x" if base else "n/a"
        report.row(title, [name, f"{t:.3f}", f"{n / t:.0f}", vs_ta])
