"""One adversarial-training epoch on CPU: robustkern's trainer and drop-in loss against the same
loop written with torchattacks' PGD, ART's PGD adversarial trainer, the floor (the model's own
passes on PGD points, no attack arithmetic), and FGSM-RS against PGD-10-AT (Wong et al.'s
cost claim). Layout and precision are named in each row: the trainer's channels_last option is
compared with torchattacks on channels_last too, so the table shows what comes from the layout
and what from the attack code."""

import copy

import torch
import torch.nn.functional as F

from bench.baselines import HAS_ART, HAS_TA, art_classifier
from bench.timing import interleaved_medians
from robustkern import data, models
from robustkern.attacks import pgd
from robustkern.training import adversarial_loss, fit

EPS, STEPS, N, BATCH = 0.3, 10, 1024, 128


def test_pgd_at_epoch_cpu(report):
    x, y, _, _ = data.load("mnist-5k")
    x, y = x[:N], y[:N]
    torch.manual_seed(0)
    initial = models.small_cnn(1, 10)
    batches = list(zip(x.split(BATCH), y.split(BATCH), strict=True))
    alpha = 2.5 * EPS / STEPS

    def loop(make_loss, channels_last=False, inputs=batches):
        """An epoch of the plain training loop; make_loss(model) -> loss(model, x, y)."""
        model = copy.deepcopy(initial)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model.to(memory_format=fmt)
        data_ = [(xb.contiguous(memory_format=fmt), yb) for xb, yb in inputs]
        step_loss = make_loss(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def epoch():
            model.train()
            for xb, yb in data_:
                loss = step_loss(model, xb, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

        return epoch

    def trainer(method, **kwargs):
        model = copy.deepcopy(initial)
        return lambda: fit(model, (x, y), method=method, eps=EPS, steps=STEPS, epochs=1,
                           batch_size=BATCH, optimizer="sgd", lr=0.01, train_eval=0,
                           progress=False, **kwargs)  # fmt: skip

    def floor(model, xb, yb):
        """STEPS x (forward + input-backward), then the training forward: no attack arithmetic.
        It runs on PGD points of the initial model (see bench.timing.floor_fn for why)."""
        xg = xb.clone().requires_grad_(True)
        for _ in range(STEPS):
            (g,) = torch.autograd.grad(F.cross_entropy(model(xg), yb), xg)
        return F.cross_entropy(model(xb + 0 * g), yb)

    attacked = [(pgd(initial.eval(), xb, yb, eps=EPS, steps=STEPS), yb) for xb, yb in batches]
    fns = {
        "floor: the model's passes only": loop(lambda m: floor, inputs=attacked),
        "robustkern fit (pgd)": trainer("pgd"),
        "robustkern fit (pgd), channels_last": trainer("pgd", channels_last=True),
        "robustkern fit (pgd), channels_last + bf16": trainer(
            "pgd", channels_last=True, amp="bf16"
        ),
        "robustkern adversarial_loss in a loop": loop(
            lambda _: lambda m, xb, yb: adversarial_loss(m, xb, yb, eps=EPS, steps=STEPS)
        ),
        "robustkern fit (fgsm-rs)": trainer("fgsm-rs"),
    }
    if HAS_TA:
        import torchattacks

        def ta_loss(model):
            attack = torchattacks.PGD(model, eps=EPS, alpha=alpha, steps=STEPS, random_start=True)
            return lambda m, xb, yb: F.cross_entropy(m(attack(xb, yb)), yb)

        fns["torchattacks PGD in a loop"] = loop(ta_loss)
        fns["torchattacks PGD in a loop, channels_last"] = loop(ta_loss, channels_last=True)
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
