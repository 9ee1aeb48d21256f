"""The L1 threat model in pgd and apgd (L1-APGD, "Mind the box"): points in the L1 ball and the
box, and the closed-form minimal L1 distance of a binary linear model within the box (a
fractional knapsack: spend the budget on the largest |w_i| first, each up to its box face)."""

import pytest
import torch

from robustkern.attacks import apgd, pgd
from robustkern.attacks.apgd import l1_stages


def knapsack_distance(w: torch.Tensor, b: float, x: torch.Tensor) -> torch.Tensor:
    """The smallest L1 move of x (N, d) within [0, 1] that makes w.x + b change sign."""
    margin = x @ w + b
    direction = -torch.sign(margin)[:, None] * torch.sign(w)[None]  # towards the boundary
    room = torch.where(direction > 0, 1 - x, x)  # how far each coordinate may go that way
    gain = room * w.abs()[None]  # margin removed by moving a coordinate fully
    order = w.abs().argsort(descending=True)
    need = margin.abs()
    dist = torch.zeros_like(need)
    for i in order:
        take = torch.minimum(gain[:, i], need)
        dist += take / w[i].abs()
        need = need - take
    return torch.where(need > 1e-12, torch.full_like(dist, float("inf")), dist)


@pytest.fixture(scope="module")
def linear_problem():
    torch.manual_seed(1)
    d = 30
    w = torch.randn(d, dtype=torch.float64) * torch.rand(d, dtype=torch.float64)
    b = -float(w.sum()) / 2
    x = torch.rand(64, d, dtype=torch.float64)
    model = torch.nn.Linear(d, 2).double()
    with torch.no_grad():  # logit 1 - logit 0 = w.x + b
        model.weight.copy_(torch.stack([torch.zeros(d), w]))
        model.bias.copy_(torch.tensor([0.0, b]))
    y = (x @ w + b > 0).long()
    dist = knapsack_distance(w, b, x)
    keep = dist.isfinite() & (dist > 0.05)
    return model, x[keep], y[keep], dist[keep]


# PGD's fixed sparse steps need 10 % above the minimum; L1-APGD (adaptive sparsity, large-eps
# start) gets within 2 %.
@pytest.mark.parametrize(("attack", "slack"), [("pgd", 1.1), ("apgd", 1.02)])
def test_l1_attacks_reach_the_closed_form_distance_and_never_beat_it(linear_problem, attack, slack):
    model, x, y, dist = linear_problem

    def run(eps):
        if attack == "pgd":
            return pgd(model, x, y, eps=eps, norm="l1", steps=100, sparsity=0.05,
                       alpha=eps / 10, return_success=True)  # fmt: skip
        return apgd(model, x, y, eps=eps, norm="l1", steps=100, return_success=True)

    x_adv, fooled = run(dist * slack)
    assert (x_adv - x).abs().sum(1).le(dist * slack * (1 + 1e-6)).all()  # APGD: eps in float32
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert fooled.float().mean() >= 0.95  # just beyond the minimal distance: found
    _, fooled = run(dist * 0.98)
    assert not fooled.any()  # inside it nothing can be found: a check of soundness


def test_l1_apgd_on_a_cnn_stays_in_the_ball_and_beats_l1_pgd(digits_model):
    model, x, y = digits_model
    eps = torch.linspace(0.5, 2.0, len(x))
    x_adv, fooled = apgd(model, x, y, eps=eps, norm="l1", steps=50, return_success=True)
    assert ((x_adv - x).flatten(1).abs().sum(1) <= eps * (1 + 1e-5)).all()
    with torch.no_grad():
        assert torch.equal(fooled, model(x_adv).argmax(1) != y)
    _, by_pgd = pgd(model, x, y, eps=eps, norm="l1", steps=50, return_success=True)
    assert fooled.float().mean() >= by_pgd.float().mean() - 0.02


def test_large_eps_schedule_spends_every_step():
    assert l1_stages(100) == [(3, 30), (2, 30), (1, 40)]
    assert sum(s for _, s in l1_stages(7)) == 7
    assert l1_stages(2) == [(1, 2)]
