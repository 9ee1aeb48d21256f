"""Square attack against torchattacks' Square (AutoAttack's code) and ART's SquareAttack with the
same query budget, on the small CNN and mnist-5k: time, model queries actually made
(sample-forwards), queries/s and robust accuracy (lower is a stronger attack).

The model's forward is the whole cost here (both libraries run at the same sample-queries/s),
so a speed-up can only come from fewer queries. The last row is the floor: one clean forward
per image, the whole budget for every image still robust at the end, one query for every other
one; torchattacks' queries over it bound the speed-up any Square can reach on this model."""

import pytest
import torch

from bench.baselines import HAS_ART, HAS_TA, art_classifier
from bench.timing import interleaved_medians
from robustkern.attacks import square

N, QUERIES = 256, 1000


class Counting(torch.nn.Module):
    """The model, counting the samples it scores."""

    def __init__(self, model):
        super().__init__()
        self.model, self.count = model, 0

    def forward(self, x):
        self.count += len(x)
        return self.model(x)


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 1.5)])
def test_square_small_cnn_cpu(report, mnist_cnn, norm, eps):
    model, xt, yt = mnist_cnn
    x, y = xt[:N], yt[:N]
    counted = Counting(model)
    outputs, queries = {}, {}

    def timed(name, attack):
        def run():
            counted.count = 0
            outputs[name] = attack()
            queries[name] = counted.count

        return run

    def ours():
        g = torch.Generator().manual_seed(0)
        return square(counted, x, y, eps=eps, norm=norm, queries=QUERIES, generator=g)

    fns = {"robustkern square": timed("robustkern square", ours)}
    if HAS_TA:
        import torchattacks

        ta = torchattacks.Square(
            counted, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps, n_queries=QUERIES, seed=0
        )
        fns["torchattacks Square"] = timed("torchattacks Square", lambda: ta(x, y))
    if HAS_ART:
        import numpy as np
        from art.attacks.evasion import SquareAttack

        art = SquareAttack(art_classifier(counted, x), norm={"linf": np.inf, "l2": 2}[norm],
                           max_iter=QUERIES, eps=eps, batch_size=N, verbose=False)  # fmt: skip
        xn, yn = x.numpy(), y.numpy()
        fns["ART SquareAttack"] = timed(
            "ART SquareAttack", lambda: torch.from_numpy(art.generate(xn, yn))
        )
    times = interleaved_medians(fns, rounds=3)
    title = (
        f"Square ({norm}, eps {eps:g}, {QUERIES} queries, 1 restart), small CNN, {N} mnist-5k "
        "images, CPU float32"
    )
    header = ["implementation", "seconds", "sample-queries", "sample-queries/s"]
    header += ["robust accuracy", "speed-up vs torchattacks"]
    report.table(title, header)
    base = times.get("torchattacks Square")
    for name, t in times.items():
        with torch.no_grad():
            acc = (model(outputs[name]).argmax(1) == y).float().mean().item()
        ratio = f"{base / t:.2f}x" if base else "n/a"
        q = queries[name]
        report.row(
            title, [name, f"{t:.2f}", f"{q:,}", f"{q / t:,.0f}", f"{100 * acc:.2f} %", ratio]
        )
    with torch.no_grad():
        clean = model(x).argmax(1) == y
        robust = model(outputs["robustkern square"]).argmax(1) == y
    floor = N + QUERIES * int(robust.sum()) + int((clean & ~robust).sum())
    bound = f"{queries['torchattacks Square'] / floor:.2f}x (in queries)" if base else "n/a"
    report.row(title, ["floor: the budget for each robust image, 1 query for each fooled one",
                       "-", f"{floor:,}", "-", "-", bound])  # fmt: skip
