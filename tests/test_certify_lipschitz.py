"""Lipschitz-margin certificates (certify.lipschitz): exact on linear models, never beyond the
true distance to the decision boundary, and never broken by PGD or random points."""

import math

import pytest
import torch
from torch import nn

from robustkern.attacks import pgd
from robustkern.certify.lipschitz import (
    certified_curve,
    lipschitz_bound,
    lipschitz_radius,
    lipschitz_verified,
)
from robustkern.spectral import lipschitz_table

D, CLASSES = 6, 4


@pytest.fixture
def linear():
    """A float64 linear classifier, inputs in [0, 1]^D and their labels (the model's own
    classes, one sample flipped to a wrong label)."""
    torch.manual_seed(1)
    model = nn.Linear(D, CLASSES).double()
    x = torch.rand(64, D, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[0] = (y[0] + 1) % CLASSES
    return model, x, y


def boundary_distances(model: nn.Linear, x, y, dual: float) -> torch.Tensor:
    """The exact distance from each x to the nearest other class's region, in the norm whose
    dual is ``dual``: min_j (z_y - z_j) / ||w_y - w_j||_dual."""
    with torch.no_grad():
        z = model(x)
    w = model.weight
    gaps = z.gather(1, y[:, None]) - z
    rows = (w[y][:, None, :] - w[None]).norm(p=dual, dim=2)
    return (gaps / rows).scatter(1, y[:, None], math.inf).amin(1).clamp_min(0)


def test_linear_radius_is_the_margin_over_sqrt2_times_the_spectral_norm(linear):
    model, x, y = linear
    radius = lipschitz_radius(model, x, y, norm="l2")
    spectral = torch.linalg.matrix_norm(model.weight.detach(), ord=2)
    with torch.no_grad():
        z = model(x)
    margin = z.gather(1, y[:, None]).squeeze(1) - z.scatter(1, y[:, None], -math.inf).amax(1)
    expected = margin.clamp_min(0) / (math.sqrt(2) * spectral)
    assert torch.allclose(radius, expected, rtol=1e-12, atol=0)
    assert radius[0] == 0 and (radius[1:] > 0).all()  # the mislabelled sample: no radius
    assert lipschitz_bound(model, (D,)) == pytest.approx(spectral.item(), rel=1e-12)
    linf = lipschitz_radius(model, x, y, norm="linf")
    assert torch.allclose(linf, radius / math.sqrt(D), rtol=1e-12, atol=0)


@pytest.mark.parametrize(("norm", "dual"), [("l2", 2), ("linf", 1)])
def test_linear_radius_never_exceeds_the_true_distance(linear, norm, dual):
    model, x, y = linear
    radius = lipschitz_radius(model, x, y, norm=norm)
    exact = boundary_distances(model, x, y, dual)
    assert (radius <= exact * (1 + 1e-12)).all()
    assert (radius[1:] > 0.05 * exact[1:]).all()  # and is not vacuous


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_random_points_and_pgd_within_the_radius_keep_the_class(linear, norm):
    model, x, y = linear
    keep = y == model(x).argmax(1)
    x, y = x[keep], y[keep]
    radius = lipschitz_radius(model, x, y, norm=norm)
    g = torch.Generator().manual_seed(0)
    # 500 random points per sample on the sphere (L2) or the box's corners (L-inf) of radius r
    u = torch.randn(500, *x.shape, generator=g, dtype=x.dtype)
    u = u / u.norm(dim=2, keepdim=True) if norm == "l2" else u.sign()
    points = x + u * radius[:, None] * (1 - 1e-9)
    with torch.no_grad():
        assert (model(points.view(-1, D)).argmax(1).view(500, -1) == y).all()
    for loss in ("ce", "margin"):
        _, fooled = pgd(model, x, y, eps=radius, norm=norm, steps=50, loss=loss,
                        bounds=(-1.0, 2.0), return_success=True)  # fmt: skip
        assert not fooled.any()
    # the attack is strong enough to matter: just beyond the true distance it wins
    exact = boundary_distances(model, x, y, dual=2 if norm == "l2" else 1)
    _, fooled = pgd(model, x, y, eps=exact * 1.05, norm=norm, steps=50, loss="margin",
                    bounds=(-10.0, 10.0), return_success=True)  # fmt: skip
    assert fooled.float().mean() > 0.8


def test_small_cnn_pgd_at_the_radius_breaks_nothing(digits_model):
    model, x, y = digits_model
    lipschitz = lipschitz_table(model, x.shape[1:]).product
    for norm in ("l2", "linf"):
        radius = lipschitz_radius(model, x, y, norm=norm, lipschitz=lipschitz)
        assert torch.equal(radius, lipschitz_radius(model, x, y, norm=norm))
        held = radius > 0
        assert held.float().mean() > 0.9  # the correctly classified images
        xs, ys, eps = x[held], y[held], radius[held].float()
        _, fooled = pgd(model, xs, ys, eps=eps, norm=norm, steps=40, loss="margin",
                        return_success=True)  # fmt: skip
        assert not fooled.any()
        verified = lipschitz_verified(model, x, y, eps=radius * 0.5, norm=norm)
        assert torch.equal(verified, held)


def test_verified_and_the_certified_curve():
    model = nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # ||W|| = 1, L2 margin x0-x1
    x = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.5, 0.5]], dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 0])
    radius = lipschitz_radius(model, x, y)
    expected = torch.tensor([0.8, 0.2, 0.0, 0.0], dtype=torch.float64) / math.sqrt(2)
    assert torch.allclose(radius, expected)
    assert lipschitz_verified(model, x, y, eps=0.1).tolist() == [True, True, False, False]
    per_sample = torch.tensor([0.6, 0.1, 0.0, 0.0])
    assert lipschitz_verified(model, x, y, eps=per_sample).tolist() == [False, True, False, False]
    curve = certified_curve(radius, [0.0, 0.1, 0.2, 1.0])
    assert curve == [(0.0, 0.5), (0.1, 0.5), (0.2, 0.25), (1.0, 0.0)]


def test_unbounded_layers_and_bad_arguments_are_named(linear):
    model, x, y = linear
    unbounded = nn.Sequential(nn.Linear(D, 8), nn.LayerNorm(8), nn.Linear(8, CLASSES)).double()
    with pytest.raises(ValueError, match="LayerNorm"):
        lipschitz_radius(unbounded, x, y)
    with pytest.raises(ValueError, match="norm must be one of"):
        lipschitz_radius(model, x, y, norm="l1")
    with pytest.raises(ValueError, match="lipschitz"):
        lipschitz_radius(model, x, y, lipschitz=math.inf)
    with pytest.raises(ValueError, match="eps"):
        lipschitz_verified(model, x, y, eps=-0.1)
