"""APGD: the published schedule, constraints, the success mask, early stopping that changes no
outcome, strength against FGSM on a linear model (where FGSM is optimal) and against PGD,
targeted runs, side effects, autocast and layouts, bad input."""

import copy

import pytest
import torch

from robustkern.attacks import apgd, fgsm, pgd
from robustkern.attacks.apgd import checkpoints
from tests.conftest import accuracy


def test_checkpoints_follow_the_paper():
    # p_0 = 0, p_1 = 0.22, p_(j+1) = p_j + max(p_j - p_(j-1) - 0.03, 0.06), times 100 iterations
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(1000)[:3] == [220, 410, 570]
    assert checkpoints(1) == [1]


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 0.8)])
@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_points_stay_in_the_ball_and_bounds_and_success_is_true(digits_model, norm, eps, loss):
    model, x, y = digits_model
    eps_t = torch.linspace(eps / 4, eps, len(x))
    for e in (eps, eps_t):
        x_adv, fooled = apgd(model, x, y, eps=e, norm=norm, loss=loss, steps=20,
                             return_success=True)  # fmt: skip
        d = (x_adv - x).flatten(1)
        dist = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
        assert (dist <= torch.as_tensor(e) + 1e-5).all()
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        with torch.no_grad():
            assert torch.equal(fooled, model(x_adv).argmax(1) != y)


def test_early_stop_changes_no_outcome(digits_model):
    model, x, y = digits_model

    def run(early_stop):
        g = torch.Generator().manual_seed(3)
        return apgd(model, x, y, eps=0.1, steps=30, early_stop=early_stop, return_success=True,
                    generator=g)  # fmt: skip

    runs = [run(False), run(True)]
    (xa, fa), (xb, fb) = runs
    assert torch.equal(fa, fb)
    assert torch.equal(xa[~fa], xb[~fb])  # robust samples: the same best point
    assert fa.any() and (~fa).any()


def test_apgd_matches_fgsm_on_a_binary_linear_model():
    """For a linear binary classifier, FGSM (with the box clip) is the optimal L-inf attack:
    APGD can neither beat it nor should it fall short."""
    torch.manual_seed(0)
    x = torch.rand(300, 1, 6, 6)
    w = torch.randn(36)
    score = x.flatten(1) @ w
    y = (score > score.median()).long()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([-w, w]) / 2)
        model[1].bias.copy_(torch.stack([score.median(), -score.median()]) / 2)
    eps = 0.05
    acc_fgsm = accuracy(model, fgsm(model, x, y, eps=eps), y)
    acc_apgd = accuracy(model, apgd(model, x, y, eps=eps, steps=50), y)
    assert 0.1 < acc_fgsm < 0.9
    assert acc_apgd == pytest.approx(acc_fgsm, abs=1 / 300)


def test_apgd_is_no_weaker_than_pgd(digits_model):
    model, x, y = digits_model
    g = torch.Generator().manual_seed(0)
    acc_pgd = accuracy(model, pgd(model, x, y, eps=0.1, steps=50, generator=g), y)
    acc_apgd = accuracy(model, apgd(model, x, y, eps=0.1, steps=50, generator=g), y)
    acc_dlr_t = accuracy(model, apgd(model, x, y, eps=0.1, steps=50, loss="dlr", targeted=True,
                                     n_targets=3, generator=g), y)  # fmt: skip
    assert acc_apgd <= acc_pgd + 2 / len(x)
    assert acc_dlr_t <= acc_pgd + 2 / len(x)
    assert acc_apgd < accuracy(model, x, y) - 0.2


def test_targeted_runs_try_the_top_classes(digits_model):
    model, x, y = digits_model
    one = apgd(model, x, y, eps=0.05, steps=20, targeted=True, n_targets=1, return_success=True)
    many = apgd(model, x, y, eps=0.05, steps=20, targeted=True, n_targets=20, return_success=True)
    assert many[1].sum() >= one[1].sum()  # more targets, never fewer successes
    with torch.no_grad():
        assert torch.equal(many[1], model(many[0]).argmax(1) != y)


def test_side_effects_autocast_and_layouts(digits_model):
    model, x, y = digits_model
    model = copy.deepcopy(model).train()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    apgd(model, x[:20], y[:20], eps=0.1, steps=5)
    assert model.training
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in model.parameters())
    model.eval()
    xc = x[:20].contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_adv = apgd(model, xc, y[:20], eps=0.1, steps=5)
    assert x_adv.dtype == x.dtype and ((x_adv - x[:20]).abs().amax() <= 0.1 + 1e-5)
    empty = apgd(model, x[:0], y[:0], eps=0.1, steps=5)
    assert empty.shape == (0, *x.shape[1:])


def test_deterministic_with_a_generator(digits_model):
    model, x, y = digits_model
    a = apgd(model, x, y, eps=0.1, steps=10, generator=torch.Generator().manual_seed(7))
    b = apgd(model, x, y, eps=0.1, steps=10, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"eps": 0.1, "norm": "l0"}, "norm"),
        ({"eps": 0.1, "loss": "margin"}, "loss"),
        ({"eps": 0.1, "steps": 0}, "steps"),
        ({"eps": float("inf")}, "needs a finite eps"),
        ({"eps": -0.1}, "eps must be >= 0"),
        ({"eps": 0.1, "rho": 0.0}, "rho"),
    ],
)
def test_bad_arguments(digits_model, kwargs, match):
    model, x, y = digits_model
    with pytest.raises(ValueError, match=match):
        apgd(model, x[:4], y[:4], **kwargs)


def test_dlr_needs_enough_classes():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    x, y = torch.rand(3, 1, 2, 2), torch.tensor([0, 1, 0])
    with pytest.raises(ValueError, match="at least 3 classes"):
        apgd(model, x, y, eps=0.1, loss="dlr")
