"""adam_pgd: constraints, the success mask, strength against PGD, side effects, bad input."""

import copy

import pytest
import torch

from robustkern.attacks import adam_pgd, pgd
from tests.conftest import accuracy


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 0.8)])
def test_in_the_ball_and_bounds_and_no_weaker_than_pgd(digits_model, norm, eps):
    model, x, y = digits_model
    for e in (eps, torch.linspace(eps / 4, eps, len(x))):
        x_adv, fooled = adam_pgd(model, x, y, eps=e, norm=norm, steps=50, return_success=True,
                                 generator=torch.Generator().manual_seed(0))  # fmt: skip
        d = (x_adv - x).flatten(1)
        dist = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
        assert (dist <= torch.as_tensor(e) + 1e-5).all()
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        with torch.no_grad():
            assert torch.equal(fooled, model(x_adv).argmax(1) != y)
    g = torch.Generator().manual_seed(0)
    acc_pgd = accuracy(model, pgd(model, x, y, eps=eps, norm=norm, steps=50, generator=g), y)
    acc_adam = accuracy(model, adam_pgd(model, x, y, eps=eps, norm=norm, steps=50, generator=g), y)
    assert acc_adam <= acc_pgd + 2 / len(x)
    assert acc_adam < accuracy(model, x, y) - 0.2


def test_targeted_and_side_effects(digits_model):
    model, x, y = digits_model
    target = (y + 1) % 10
    x_adv = adam_pgd(model, x, target, eps=0.3, steps=30, targeted=True)
    assert accuracy(model, x_adv, target) > 0.5
    model = copy.deepcopy(model).train()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    adam_pgd(model, x[:10], y[:10], eps=0.1, steps=3)
    assert model.training
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in model.parameters())


def test_deterministic_with_a_generator(digits_model):
    model, x, y = digits_model
    a = adam_pgd(model, x, y, eps=0.1, steps=5, generator=torch.Generator().manual_seed(1))
    b = adam_pgd(model, x, y, eps=0.1, steps=5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"eps": 0.1, "norm": "l1"}, "norm"),
        ({"eps": 0.1, "lr": 0.0}, "lr"),
        ({"eps": 0.1, "random_start": 2.0}, "random_start"),
        ({"eps": 0.1, "steps": 0}, "steps"),
        ({"eps": float("inf")}, "needs a finite eps"),
    ],
)
def test_bad_arguments(digits_model, kwargs, match):
    model, x, y = digits_model
    with pytest.raises(ValueError, match=match):
        adam_pgd(model, x[:4], y[:4], **kwargs)
