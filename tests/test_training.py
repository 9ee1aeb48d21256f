"""adversarial_loss: each method computes what its paper defines, leaves parameters' .grad and
the model's mode alone until backward, and adversarial training buys robustness."""

import copy

import pytest
import torch
import torch.nn.functional as F

from robustkern import data, models
from robustkern.attacks import pgd
from robustkern.training import adversarial_loss
from tests.conftest import accuracy


def test_standard_is_cross_entropy(digits_model):
    model, x, y = digits_model
    loss, logits = adversarial_loss(model, x, y, method="standard", eps=0.1, return_logits=True)
    assert loss.item() == pytest.approx(F.cross_entropy(model(x), y).item())
    assert torch.equal(logits.argmax(1), model(x).argmax(1))


def test_pgd_and_fgsm_rs_are_cross_entropy_at_their_attack_point(digits_model):
    model, x, y = digits_model
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    loss = adversarial_loss(model, x, y, method="pgd", eps=0.1, steps=5, generator=g())
    x_adv = pgd(model, x, y, eps=0.1, steps=5, generator=g())
    assert loss.item() == pytest.approx(F.cross_entropy(model(x_adv), y).item(), rel=1e-5)
    fast = adversarial_loss(model, x, y, method="fgsm-rs", eps=0.1, generator=g())
    x_fast = pgd(model, x, y, eps=0.1, steps=1, alpha=0.125, generator=g())
    assert fast.item() == pytest.approx(F.cross_entropy(model(x_fast), y).item(), rel=1e-5)
    assert (x_fast - x).abs().max() <= 0.1 + 1e-6
    assert loss > F.cross_entropy(model(x), y) and fast > F.cross_entropy(model(x), y)


def test_trades_is_ce_plus_beta_kl(digits_model):
    model, x, y = digits_model
    clean = F.cross_entropy(model(x), y).item()
    zero = adversarial_loss(model, x, y, method="trades", eps=0.1, beta=0.0)
    assert zero.item() == pytest.approx(clean, rel=1e-5)
    six = adversarial_loss(model, x, y, method="trades", eps=0.1, beta=6.0, steps=5)
    one = adversarial_loss(
        model,
        x,
        y,
        method="trades",
        eps=0.1,
        beta=1.0,
        steps=5,
        generator=torch.Generator().manual_seed(0),
    )
    assert six.item() > one.item() > clean  # the KL term is positive, scaled by beta


@pytest.mark.parametrize("method", ["pgd", "fgsm-rs", "trades"])
def test_grads_and_mode_are_left_alone_until_backward(digits_model, method):
    model, x, y = digits_model
    model = copy.deepcopy(model).train()
    loss = adversarial_loss(model, x[:32], y[:32], method=method, eps=0.1, steps=3)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_adversarial_training_buys_robustness_at_a_clean_cost():
    torch.manual_seed(0)
    x, y, xt, yt = data.load("digits")
    eps, robust, clean = 0.2, {}, {}
    for method in ("standard", "pgd"):
        torch.manual_seed(0)
        model = models.small_cnn(1, 10, width=16)
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        g = torch.Generator().manual_seed(0)
        for _ in range(8):
            for idx in torch.randperm(len(x), generator=g).split(64):
                loss = adversarial_loss(model, x[idx], y[idx], method=method, eps=eps, steps=5)
                opt.zero_grad()
                loss.backward()
                opt.step()
        model.eval()
        clean[method] = accuracy(model, xt, yt)
        robust[method] = accuracy(model, pgd(model, xt, yt, eps=eps, steps=20), yt)
    assert robust["pgd"] > robust["standard"] + 0.3
    assert clean["pgd"] < clean["standard"]


def test_bad_arguments_are_named(digits_model):
    model, x, y = digits_model
    with pytest.raises(ValueError, match="method"):
        adversarial_loss(model, x, y, method="free", eps=0.1)
    with pytest.raises(ValueError, match="L-inf"):
        adversarial_loss(model, x, y, method="fgsm-rs", norm="l2", eps=0.5)
    with pytest.raises(ValueError, match="eps"):
        adversarial_loss(model, x, y, eps=-0.1)
    with pytest.raises(ValueError, match="beta"):
        adversarial_loss(model, x, y, method="trades", eps=0.1, beta=-1)
    for method in ("standard", "pgd", "fgsm-rs", "trades"):
        with pytest.raises(ValueError, match="labels must lie in"):
            adversarial_loss(model, x, y + 10, method=method, eps=0.1)
