"""Carlini-Wagner L2, DDN and DeepFool: the closed-form minimal distances of linear models, sane
distances beside FMN on the digits CNN, the return convention, samples already misclassified,
targets, confidence, bad input, and the model left as it was."""

import math

import pytest
import torch

from robustkern.attacks import cw, ddn, deepfool, min_norm, robust_accuracy_curve

BOX = (-1.0, 1.0)


def linear_model(classes, scale=30.0, n=40):
    """Softmax regression in float64 with random weights (times ``scale``) on inputs inside
    (-0.2, 0.2), labelled by its own prediction, in the box (-1, 1); of 1500 such inputs the first
    n whose nearest boundary lies between 0.03 (L-inf) and 0.5 (L2) away: the box is not active,
    so the exact minimum is min_{j != y} (z_y - z_j) / ||w_y - w_j||_q (q the dual norm), and
    DeepFool's 1e-4 crossing is small beside it. The scale makes the softmax sharp at the
    boundary (DDN follows the cross-entropy, whose gradient there points at the nearest boundary
    only when the other classes' probabilities are negligible)."""
    g = torch.Generator().manual_seed(1)
    x = 0.4 * torch.rand(1500, 1, 6, 6, generator=g, dtype=torch.float64) - 0.2
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, classes)).double()
    with torch.no_grad():
        model[1].weight.copy_(scale * torch.randn(classes, 36, generator=g, dtype=torch.float64))
        model[1].bias.zero_()
        y = model(x).argmax(1)
    far = (closed_form(model, x, y, 1) > 0.03) & (closed_form(model, x, y, 2) < 0.5)
    keep = far.nonzero().squeeze(1)[:n]
    return model.eval(), x[keep], y[keep]


def closed_form(model, x, y, dual_p):
    w = model[1].weight.detach()
    with torch.no_grad():
        z = model(x)
    gaps = z.gather(1, y[:, None]) - z
    dw = (w[y][:, None, :] - w[None]).norm(p=dual_p, dim=2)
    d = gaps / dw
    d[torch.arange(len(y)), y] = math.inf
    return d.amin(1)


def sizes(x_adv, x, norm):
    d = (x_adv - x).flatten(1)
    return d.abs().amax(1) if norm == "linf" else d.norm(dim=1)


ATTACKS = {
    # Adam's first steps are nearly sign steps of about lr per coordinate and overshoot the
    # boundary off its normal: the lr sets CW's precision (the default 0.01: within ~1.2 %)
    "cw": (lambda m, x, y, **kw: cw(m, x, y, bounds=BOX, lr=0.002, **kw), "l2"),
    "ddn": (lambda m, x, y, **kw: ddn(m, x, y, bounds=BOX, **kw), "l2"),
    # a small overshoot: DeepFool lands (1 + overshoot) times the distance beyond x
    "deepfool-l2": (
        lambda m, x, y, **kw: deepfool(m, x, y, bounds=BOX, overshoot=1e-3, **kw),
        "l2",
    ),
    "deepfool-linf": (
        lambda m, x, y, **kw: deepfool(m, x, y, norm="linf", bounds=BOX, overshoot=1e-3, **kw),
        "linf",
    ),
}


@pytest.mark.parametrize("classes", [2, 5])
@pytest.mark.parametrize("name", list(ATTACKS))
def test_linear_model_reaches_the_closed_form_distance(name, classes):
    attack, norm = ATTACKS[name]
    model, x, y = linear_model(classes)
    exact = closed_form(model, x, y, 1 if norm == "linf" else 2)
    assert len(x) == 40
    x_adv, fooled, d = attack(model, x, y, return_success=True, return_norms=True)
    assert fooled.all() and torch.isfinite(d).all()
    with torch.no_grad():
        assert (model(x_adv).argmax(1) != y).all()  # every success truly adversarial
    assert torch.allclose(d, sizes(x_adv, x, norm), rtol=1e-9, atol=0)
    assert (d >= exact * (1 - 1e-6)).all()  # nothing can be closer than the boundary
    close = d <= exact * 1.01
    if classes == 2 or name.startswith("deepfool"):
        assert close.all(), (d / exact).max()
    else:
        # CW and DDN follow the gradient to the boundary they reach first: the region a
        # multi-class linear model classifies as y is a polytope, and its farther faces are
        # local minima of the distance (FMN's test sees the same)
        assert close.float().mean() >= 0.7, close.float().mean()
        assert (d <= exact * 1.3).all(), (d / exact).max()


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_deepfool_on_a_linear_model_is_one_overshot_step(norm):
    """The nearest linearised boundary of a linear model is the nearest boundary: one step,
    then the overshoot, exactly as the paper computes it."""
    model, x, y = linear_model(5)
    exact = closed_form(model, x, y, 1 if norm == "linf" else 2)
    _, d, queries = deepfool(model, x, y, norm=norm, bounds=BOX, return_norms=True,
                             return_queries=True)  # fmt: skip
    assert torch.allclose(d, 1.02 * (exact + 1e-4), rtol=1e-9, atol=0)
    assert (queries == 2).all()  # the step's forward with gradients, the scoring forward


def test_digits_cnn_distances_are_sane_beside_fmn(digits_model):
    model, x, y = digits_model
    x, y = x[:50], y[:50]
    _, d_fmn = min_norm(model, x, y, norm="l2", return_norms=True)
    reference = d_fmn.median()
    runs = {
        "cw": cw(model, x, y, steps=100, binary_steps=5, return_norms=True),
        "ddn": ddn(model, x, y, steps=100, return_norms=True),
        "deepfool": deepfool(model, x, y, return_norms=True),
    }
    for name, (x_adv, d) in runs.items():
        ok = torch.isfinite(d)
        assert ok.float().mean() > 0.9, name
        assert x_adv.min() >= 0 and x_adv.max() <= 1, name
        with torch.no_grad():
            wrong = model(x_adv).argmax(1) != y
        assert wrong[ok].all() and torch.equal(x_adv[~ok], x[~ok]), name
        assert torch.allclose(sizes(x_adv, x, "l2")[ok], d[ok], atol=1e-5), name
        assert d.median() <= 1.5 * reference, (name, d.median(), reference)


@pytest.mark.parametrize("name", ["cw", "ddn", "deepfool"])
def test_return_convention_and_samples_already_misclassified(name, digits_model):
    model, x, y = digits_model
    x, y = x[:12].clone(), y[:12].clone()
    y[:3] = (y[:3] + 1) % 10  # labels the model gets wrong: nothing to attack
    attack = {"cw": lambda **kw: cw(model, x, y, steps=30, binary_steps=3, **kw),
              "ddn": lambda **kw: ddn(model, x, y, steps=30, **kw),
              "deepfool": lambda **kw: deepfool(model, x, y, **kw)}[name]  # fmt: skip
    plain = attack()
    assert isinstance(plain, torch.Tensor) and plain.shape == x.shape
    x_adv, fooled, d, queries = attack(return_success=True, return_norms=True,
                                       return_queries=True)  # fmt: skip
    assert torch.equal(x_adv, plain)  # deterministic
    assert fooled.dtype == torch.bool and queries.dtype == torch.int64 and d.shape == (12,)
    assert torch.equal(fooled, torch.isfinite(d))
    with torch.no_grad():
        wrong_at_x = model(x).argmax(1) != y
    assert wrong_at_x[:3].all()
    assert (d[wrong_at_x] == 0).all() and torch.equal(x_adv[wrong_at_x], x[wrong_at_x])
    assert (d[~wrong_at_x] > 0).all()
    if name == "ddn":
        assert (queries == 31).all()
    else:  # samples not attacked cost nothing
        assert (queries[wrong_at_x] == 0).all() and (queries[~wrong_at_x] > 0).all()
    # the extras ask for themselves one by one, in the same order
    assert torch.equal(attack(return_norms=True)[1], d)
    assert torch.equal(attack(return_queries=True)[1], queries)
    curve = robust_accuracy_curve(d, [0.0, math.inf])
    assert curve[0][1] == pytest.approx((~wrong_at_x).float().mean().item())


@pytest.mark.parametrize("name", ["cw", "ddn"])
def test_targeted_attacks_reach_the_target(name, digits_model):
    model, x, y = digits_model
    x, target = x[:20], (y[:20] + 3) % 10
    if name == "cw":
        # a tenth of the default steps: a larger lr (the default 0.01 needs ~1000 steps here)
        x_adv, d = cw(model, x, target, targeted=True, steps=100, binary_steps=5, lr=0.05,
                      return_norms=True)  # fmt: skip
    else:
        x_adv, d = ddn(model, x, target, targeted=True, return_norms=True)
    with torch.no_grad():
        hit = model(x_adv).argmax(1) == target
    assert torch.equal(hit, torch.isfinite(d))
    assert hit.float().mean() > 0.8


def test_a_failure_is_inf_and_x_never_a_silent_non_adversarial_point(digits_model):
    model, x, y = digits_model
    x, y = x[:30], y[:30]
    runs = {
        "cw": cw(model, x, y, steps=3, binary_steps=1, return_success=True, return_norms=True),
        "ddn": ddn(model, x, y, steps=1, init_norm=0.01, return_success=True, return_norms=True),
        "deepfool": deepfool(model, x, y, steps=1, return_success=True, return_norms=True),
    }
    for name, (x_adv, fooled, d) in runs.items():
        failed = ~torch.isfinite(d)
        assert failed.any(), name  # the budgets are too small for some samples
        assert torch.equal(fooled, ~failed), name
        assert torch.equal(x_adv[failed], x[failed]), name
        with torch.no_grad():
            assert torch.equal(model(x_adv).argmax(1) != y, fooled), name


def test_cw_confidence_is_a_logit_margin():
    model, x, y = linear_model(5, scale=1.0, n=20)
    _, d0 = cw(model, x, y, bounds=BOX, steps=200, return_norms=True)
    x_adv, d = cw(model, x, y, bounds=BOX, steps=200, confidence=0.5, return_norms=True)
    assert torch.isfinite(d).all()
    with torch.no_grad():
        z = model(x_adv)
    gap = z.scatter(1, y[:, None], -math.inf).amax(1) - z.gather(1, y[:, None]).squeeze(1)
    assert (gap >= 0.5 - 1e-9).all()
    assert (d > d0).all()


def test_attacks_leave_the_model_as_it_was():
    model, x, y = linear_model(3, n=8)
    model.train()
    sentinel = [torch.full_like(p, 7.0) for p in model.parameters()]
    for p, s in zip(model.parameters(), sentinel, strict=True):
        p.grad = s.clone()
    cw(model, x, y, bounds=BOX, steps=20, binary_steps=2)
    ddn(model, x, y, bounds=BOX, steps=20)
    deepfool(model, x, y, bounds=BOX)
    deepfool(model, x, y, norm="linf", bounds=BOX)
    assert model.training
    for p, s in zip(model.parameters(), sentinel, strict=True):
        assert torch.equal(p.grad, s)


def test_bad_input_is_named():
    model, x, y = linear_model(3, n=4)
    with pytest.raises(ValueError, match="steps"):
        cw(model, x, y, bounds=BOX, steps=0)
    with pytest.raises(ValueError, match="steps"):
        ddn(model, x, y, bounds=BOX, steps=0)
    with pytest.raises(ValueError, match="steps"):
        deepfool(model, x, y, bounds=BOX, steps=0)
    with pytest.raises(ValueError, match="confidence"):
        cw(model, x, y, bounds=BOX, confidence=-1.0)
    with pytest.raises(ValueError, match="initial_const"):
        cw(model, x, y, bounds=BOX, initial_const=0.0)
    with pytest.raises(ValueError, match="finite bounds"):
        cw(model, x, y, bounds=(-math.inf, math.inf))
    with pytest.raises(ValueError, match="gamma"):
        ddn(model, x, y, bounds=BOX, gamma=1.5)
    with pytest.raises(ValueError, match="norm"):
        deepfool(model, x, y, norm="l1", bounds=BOX)
    with pytest.raises(ValueError, match="overshoot"):
        deepfool(model, x, y, overshoot=-0.1, bounds=BOX)
    with pytest.raises(ValueError, match="candidates"):
        deepfool(model, x, y, candidates=1, bounds=BOX)
    with pytest.raises(ValueError, match="bounds"):
        ddn(model, x * 20, y, bounds=BOX)  # outside the box
