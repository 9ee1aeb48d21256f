"""Minimum-norm attacks: FMN against the closed-form distances of a linear model, L-BFGS at or
above FMN, the robust-accuracy curve from one run, Szegedy's average distortion, bad input."""

import pytest
import torch

from robustkern.attacks import (
    apgd,
    average_distortion,
    lbfgs,
    min_norm,
    robust_accuracy_curve,
)

BOX = (-1.0, 1.0)


def linear_model(classes):
    """Softmax regression with random weights on inputs inside (-0.1, 0.1), labelled by its own
    prediction, in the box (-1, 1): with distances below 0.5 every nearest boundary point lies
    inside the box, so the exact minimum distance is min_j (z_y - z_j) / ||w_y - w_j||_q (q the
    dual norm)."""
    g = torch.Generator().manual_seed(0)
    x = 0.2 * torch.rand(100, 1, 6, 6, generator=g) - 0.1
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, classes))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(classes, 36, generator=g))
        model[1].bias.zero_()
        y = model(x).argmax(1)
    return model.eval(), x, y


@pytest.fixture(scope="module")
def linear():
    return linear_model(5)


def closed_form(model, x, y, dual_p):
    w = model[1].weight.detach()
    with torch.no_grad():
        z = model(x)
    gaps = z.gather(1, y[:, None]) - z  # (N, classes)
    dw = (w[y][:, None, :] - w[None]).norm(p=dual_p, dim=2)  # (N, classes)
    d = gaps / dw
    d[torch.arange(len(y)), y] = float("inf")
    return d.amin(1)


@pytest.mark.parametrize(("norm", "dual"), [("linf", 1), ("l2", 2)])
@pytest.mark.parametrize("classes", [2, 5])
def test_fmn_finds_the_closed_form_distance_of_a_linear_model(norm, dual, classes):
    model, x, y = linear_model(classes)
    exact = closed_form(model, x, y, dual)
    assert (exact < 0.5).all()  # the boundary is well inside the box
    x_adv, found = min_norm(model, x, y, norm=norm, bounds=BOX, return_norms=True)
    assert torch.isfinite(found).all()
    assert (found >= exact * (1 - 1e-4)).all()  # no point is closer than the boundary
    close = (found / exact - 1).abs() < 1e-4
    if classes == 2:
        assert close.all()
    else:  # FMN follows the boundary it crosses first, not always the nearest class's
        assert close.float().mean() > 0.85
    with torch.no_grad():
        assert (model(x_adv).argmax(1) != y).all()
    d = (x_adv - x).flatten(1)
    assert torch.allclose(d.abs().amax(1) if norm == "linf" else d.norm(dim=1), found)


def test_lbfgs_is_at_or_above_fmn_and_both_are_adversarial(digits_model):
    model, x, y = digits_model
    x, y = x[:12], y[:12]
    x_l, d_l = lbfgs(model, x, y, search_steps=5, max_iter=50, return_norms=True)
    x_m, d_m = min_norm(model, x, y, norm="l2", return_norms=True)
    ok = torch.isfinite(d_l)
    assert ok.float().mean() > 0.8
    assert (d_l[ok] >= d_m[ok] * 0.95).all()
    assert (d_l[ok] <= d_m[ok] * 1.5).all()  # and not far above: both near the boundary
    for x_adv, d in ((x_l, d_l), (x_m, d_m)):
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        with torch.no_grad():
            wrong = model(x_adv).argmax(1) != y
        assert wrong[torch.isfinite(d)].all()
        assert torch.allclose(
            (x_adv - x).flatten(1).norm(dim=1)[torch.isfinite(d)], d[torch.isfinite(d)], atol=1e-5
        )


def test_lbfgs_on_the_linear_model_reaches_the_closed_form_distance(linear):
    model, x, y = linear
    x, y = x[:20], y[:20]
    _, d = lbfgs(model, x, y, bounds=BOX, return_norms=True)
    exact = closed_form(model, x, y, 2)
    assert (d >= exact * (1 - 1e-3)).all()
    assert (d <= exact * 1.5).all()  # an upper bound: the penalised path crosses near the boundary


def test_targeted_min_norm_reaches_the_target(digits_model):
    model, x, y = digits_model
    target = (y + 3) % 10
    x_adv, d = min_norm(model, x, target, norm="l2", targeted=True, return_norms=True)
    with torch.no_grad():
        hit = model(x_adv).argmax(1) == target
    assert torch.equal(hit, torch.isfinite(d))
    assert hit.float().mean() > 0.8


def test_one_run_gives_the_robust_accuracy_curve(digits_model):
    model, x, y = digits_model
    _, d = min_norm(model, x, y, norm="linf", return_norms=True)
    with torch.no_grad():
        assert torch.equal(d == 0, model(x).argmax(1) != y)  # misclassified: distance 0
    curve = robust_accuracy_curve(d, [0.0, 0.05, 0.1, 0.2, 1.0])
    accs = [a for _, a in curve]
    assert accs == sorted(accs, reverse=True) and accs[-1] == 0.0
    # a fixed-eps attack agrees with the curve read at that eps (FMN is close to APGD)
    _, fooled = apgd(model, x, y, eps=0.1, return_success=True)
    assert accs[2] == pytest.approx(1 - fooled.float().mean().item(), abs=0.05)
    assert robust_accuracy_curve(torch.tensor([0.1, float("inf")]), [0.5]) == [(0.5, 0.5)]
    with pytest.raises(ValueError, match="every eps must be >= 0"):
        robust_accuracy_curve(d, [0.1, -1.0])


def test_average_distortion_is_szegedys_measure():
    x = torch.zeros(2, 1, 2, 2)
    x_adv = x.clone()
    x_adv[0] += 0.5  # sqrt(4 * 0.25 / 4) = 0.5
    x_adv[1, 0, 0, 0] = 1.0  # sqrt(1 / 4) = 0.5
    assert average_distortion(x, x_adv) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="shapes"):
        average_distortion(x, x_adv[:1])


def test_bad_input_is_named(digits_model):
    model, x, y = digits_model
    with pytest.raises(ValueError, match="norm"):
        min_norm(model, x, y, norm="l3")
    with pytest.raises(ValueError, match="steps"):
        min_norm(model, x, y, norm="l2", steps=0)
    with pytest.raises(ValueError, match="c_init"):
        lbfgs(model, x, y, c_init=0)
    with pytest.raises(ValueError, match="labels"):
        min_norm(model, x, y - 1, norm="l2")
