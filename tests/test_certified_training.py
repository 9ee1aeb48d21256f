"""Certified training (IBP, CROWN-IBP): the loss against its closed form on a linear model, the
eps / kappa / CROWN-weight ramps in the trainer, verified accuracy after a few epochs on digits,
and bad settings named."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustkern import certify, data, models, training
from robustkern.certify import UnsupportedLayerError
from robustkern.training import TrainConfig, adversarial_loss, fit


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


def linear_case():
    """A linear classifier in float64 and inputs whose eps-ball lies inside the box [0, 1]."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 4)).double()
    x = 0.3 + 0.4 * torch.rand(5, 1, 2, 3, dtype=torch.float64)
    return model, x, torch.tensor([0, 1, 2, 3, 1])


def test_the_loss_is_kappa_weighted_natural_and_worst_case_cross_entropy():
    model, x, y = linear_case()
    eps = 0.1
    w, b = model[1].weight.detach(), model[1].bias.detach()
    logits = x.flatten(1) @ w.T + b
    # exact for a linear model: min over the ball of (w_y - w_j) x' + b_y - b_j
    diff = w[y][:, None, :] - w[None, :, :]  # (N, classes, features)
    margin = logits.gather(1, y[:, None]) - logits - eps * diff.abs().sum(2)
    for method, kappa, final in [("ibp", 0.3, 0.5), ("crown-ibp", 0.8, 0.0)]:
        for k in (kappa, None):
            expected = (final if k is None else k) * F.cross_entropy(logits, y)
            expected += (1 - (final if k is None else k)) * F.cross_entropy(-margin, y)
            loss = adversarial_loss(model, x, y, method=method, eps=eps, kappa=k,
                                    crown_weight=0.5)  # fmt: skip
            assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    model.zero_grad()
    adversarial_loss(model, x, y, method="ibp", eps=eps, kappa=0.0).backward()
    assert model[1].weight.grad.abs().sum() > 0  # differentiable in the parameters
    # at eps 0 (the warm-up) the worst case is the natural point: the loss is plain CE
    at_zero = adversarial_loss(model, x, y, method="ibp", eps=0.0, kappa=0.2)
    assert at_zero.item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-12)


def test_crown_ibp_mixes_its_margins_with_ibps_by_the_crown_weight():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    x = torch.rand(6, 6, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    args = dict(eps=0.2, bounds=(0.0, 1.0), dtype=None)
    ibp = certify.margin_bounds(model, x, y, method="ibp", **args)
    crown = certify.margin_bounds(model, x, y, method="crown-ibp", **args)
    assert (crown - ibp).abs().max() > 1e-3  # the two bounds differ here
    ce = F.cross_entropy(model(x), y)
    for weight in (0.0, 0.3, 1.0):
        margin = weight * crown + (1 - weight) * ibp
        expected = 0.25 * ce + 0.75 * F.cross_entropy(-margin, y)
        loss = adversarial_loss(model, x, y, method="crown-ibp", eps=0.2, kappa=0.25,
                                crown_weight=weight)  # fmt: skip
        assert loss.item() == pytest.approx(expected.item(), rel=1e-12)


def test_the_ramps_at_chosen_times():
    config = TrainConfig(method="ibp", eps=0.2, epochs=10, ramp_start=2, ramp_length=4)
    times = (1.0, 2.0, 3.0, 4.0, 6.0, 9.0)
    eps, kappa, weight = zip(*(config.certified_ramps(t) for t in times), strict=True)
    assert eps == pytest.approx((0, 0, 0.05, 0.1, 0.2, 0.2))
    assert kappa == pytest.approx((1, 1, 0.875, 0.75, 0.5, 0.5))  # Gowal et al.: 1 -> 0.5
    assert weight == pytest.approx((1, 1, 0.75, 0.5, 0, 0))
    crown = config.replace(method="crown-ibp")
    assert crown.certified_ramps(4.0)[1] == pytest.approx(0.5)  # Zhang et al.: 1 -> 0
    assert crown.replace(kappa=0.4).certified_ramps(4.0)[1] == pytest.approx(0.7)
    # defaults follow the run's length: 1 epoch of warm-up (a tenth if shorter), then a ramp
    # over half of what is left
    assert TrainConfig(method="ibp", eps=0.1, epochs=21).ramps() == (1.0, 10.0)
    assert TrainConfig(method="ibp", eps=0.1, epochs=5).ramps() == (0.5, 2.25)
    assert config.replace(ramp_length=0).certified_ramps(2.01)[0] == 0.2  # a step at the start


def test_the_trainer_follows_the_ramps_step_by_step(digits, monkeypatch):
    x, y, _, _ = digits
    used, real = [], training.trainer.adversarial_loss

    def recording(*args, eps, kappa, crown_weight, **kwargs):
        used.append((eps, kappa, crown_weight))
        return real(*args, eps=eps, kappa=kappa, crown_weight=crown_weight, **kwargs)

    monkeypatch.setattr(training.trainer, "adversarial_loss", recording)
    fit(models.cert_cnn(1, 10, image_size=8, width=4, hidden=16), (x[:200], y[:200]),
        method="crown-ibp", eps=0.1, epochs=2, ramp_start=0.5, ramp_length=1, batch_size=50,
        train_eval=0, progress=False)  # fmt: skip
    # step s trains at (s + 1) / 4 epochs: the ramp is 0, 0, 1/4, 1/2, 3/4, 1, 1, 1
    r = torch.tensor([0, 0, 0.25, 0.5, 0.75, 1, 1, 1], dtype=torch.float64)
    expected = torch.stack([0.1 * r, 1 - r, 1 - r])  # eps, kappa (1 -> 0), CROWN weight (1 -> 0)
    torch.testing.assert_close(torch.tensor(used, dtype=torch.float64).T, expected)


@pytest.mark.parametrize("method", ["ibp", "crown-ibp"])
def test_a_few_epochs_buy_verified_accuracy_that_standard_training_lacks(digits, method):
    x, y, xt, yt = digits
    eps, verified = 0.05, {}
    for how in ("standard", method):
        torch.manual_seed(0)
        model = models.cert_cnn(1, 10, image_size=8, width=8, hidden=32)
        history = fit(model, (x, y), (xt, yt), method=how, eps=eps if how != "standard" else 0,
                      epochs=4, lr=1e-2, batch_size=64, train_eval=0, restore_best=False,
                      progress=False)  # fmt: skip
        verified[how] = certify.verified(model, xt, yt, eps=eps, method="ibp").double().mean()
    assert verified[method] > verified["standard"] + 0.2
    # validated by what it trains for: IBP-verified accuracy at eps
    assert history["val_robust_acc"][-1] == pytest.approx(verified[method].item())


def test_bad_settings_are_named(digits):
    x, y, _, _ = digits
    model = models.cert_cnn(1, 10, image_size=8, width=4, hidden=8)
    base = dict(method="ibp", eps=0.1, epochs=10)
    for kwargs, match in [
        (dict(kappa=1.5), r"kappa must be None or in \[0, 1\]"),
        (dict(kappa=-0.1), "kappa"),
        (dict(ramp_start=-1.0), "ramp_start must be"),
        (dict(ramp_length=-1.0), "ramp_length must be"),
        (dict(ramp_length=float("inf")), "ramp_length must be"),
        (dict(ramp_start=5, ramp_length=6), r"ramp_start \+ ramp_length must be <= epochs"),
        (dict(ramp_start=12), r"ramp_start \+ ramp_length"),
        (dict(eps_warmup=2), "ramp_length epochs after ramp_start"),
        (dict(norm="l1"), "L-inf or L2"),
        (dict(eps=0.0), "needs eps > 0"),
    ]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(**(base | kwargs))
    with pytest.raises(ValueError, match="not one of"):
        TrainConfig(method="pgd", eps=0.1).certified_ramps(1.0)
    for kwargs, match in [(dict(kappa=2.0), "kappa"), (dict(crown_weight=-1.0), "crown_weight"),
                          (dict(norm="l1"), "L-inf or L2")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            adversarial_loss(model, x[:4], y[:4], method="crown-ibp", eps=0.1, **kwargs)
    with pytest.raises(ValueError, match="image_size must be >= 4"):
        models.cert_cnn(1, 10, image_size=3)
    # max-pool has no bound rule: training says which layer, it never skips it
    with pytest.raises(UnsupportedLayerError, match="MaxPool2d"):
        fit(models.small_cnn(1, 10, width=4), (x[:20], y[:20]), method="ibp", eps=0.1,
            epochs=1, progress=False)  # fmt: skip
