"""Bound propagation (robustkern.certify.bounds / margin_bounds / verified) against what does not
use it: the model's own outputs at thousands of points of the input set (its surface and the
box's corners included) and at PGD's and APGD's best points, the closed-form range of purely
linear models (and a general-purpose solver where the L2 ball meets the box), and the attacks
on verified samples."""

import copy
import gc
import math
import re
import weakref

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize
from torch import nn

from robustkern import certify, models
from robustkern.attacks import apgd, pgd
from robustkern.certify import graph
from robustkern.nn import Normalize

DT = torch.float64
TOL = 1e-9  # float64 rounding of bounds that may be attained exactly
EPS = {"linf": 0.04, "l2": 0.25}


class Residual(nn.Module):
    """Functional forms: F.relu, a sum of two branches, view with a size query."""

    def __init__(self, linear: bool = False) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect")
        self.b = nn.Conv2d(2, 3, 1)
        self.fc = nn.Linear(3 * 36, 4)
        self.act = (lambda z: z) if linear else F.relu

    def forward(self, x):
        z = self.act(self.a(x)) + self.b(x)
        return self.fc(self.act(z).view(z.size(0), -1))


def _randomise(net: nn.Module) -> nn.Module:
    """float64, eval mode, BatchNorm with statistics and affine terms far from the identity."""
    net = net.to(DT).eval()
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(-1.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return net


def mlp():
    return nn.Sequential(
        nn.Flatten(), nn.Linear(72, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3),
        nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 5),
    )  # fmt: skip


def cnn():
    return nn.Sequential(
        Normalize([0.4, 0.6], [0.3, 0.2]), nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2), nn.BatchNorm2d(6), nn.ReLU(),
        nn.AvgPool2d(2, ceil_mode=True), nn.Conv2d(6, 6, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5),
    )  # fmt: skip


def resnet():
    return models.resnet(2, 5, widths=(4, 6), blocks=(1, 1))  # identity and conv shortcuts


NETS = {"mlp": mlp, "cnn": cnn, "resnet": resnet, "functional": Residual}


def images(n: int) -> torch.Tensor:
    """Inputs (n, 2, 6, 6) with some pixels on the box's faces, where it cuts the ball."""
    x = torch.rand(n, 2, 6, 6, dtype=DT)
    x[:, :, 0] = 0.0
    x[:, :, 1] = 1.0
    return x


def points(x: torch.Tensor, eps: float, norm: str, k: int) -> torch.Tensor:
    """k points per sample of the ball intersected with [0, 1], (N * k, ...): for L-inf the box's
    corners (every coordinate at its extreme) and uniform points; for L2 points of the sphere
    clipped into the box and points inside."""
    xs = x.repeat_interleave(k, 0)
    d = torch.randn_like(xs)
    if norm == "linf":
        d = torch.where(
            torch.arange(len(d))[:, None, None, None] % 2 == 0, d.sign(), d.clamp(-1, 1)
        )
        d = d * eps
    else:
        d = d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * eps
        d[1::2] *= torch.rand(len(d[1::2]), 1, 1, 1, dtype=DT)
    return (xs + d).clamp(0, 1)  # clipping moves no coordinate farther from x


def assert_inside(logits, lower, upper, k):
    z = logits.view(len(lower), k, -1)
    assert bool((z >= lower[:, None] - TOL).all()), float((lower[:, None] - z).max())
    assert bool((z <= upper[:, None] + TOL).all()), float((z - upper[:, None]).max())


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("name", list(NETS))
def test_sampled_points_and_attacks_stay_inside_the_bounds(name, norm):
    net, x, eps = _randomise(NETS[name]()), images(3), EPS[norm]
    with torch.no_grad():
        y = net(x).argmax(1)
        sampled = net(points(x, eps, norm, 1500))
    seeds = torch.Generator().manual_seed(1)
    adversarial = [
        pgd(net, x, y, eps=eps, norm=norm, steps=20, loss="margin", generator=seeds),
        apgd(net, x, y, eps=eps, norm=norm, steps=20, generator=seeds),
    ]
    with torch.no_grad():
        ibp = certify.bounds(net, x, eps=eps, norm=norm, method="ibp")
    for method in ("ibp", "crown-ibp", "crown"):
        with torch.no_grad():
            lower, upper = certify.bounds(net, x, eps=eps, norm=norm, method=method)
            margin = certify.margin_bounds(net, x, y, eps=eps, norm=norm, method=method)
        assert_inside(sampled, lower, upper, 1500)
        for x_adv in adversarial:
            assert (
                float((x_adv - x).flatten(1).norm(p=math.inf if norm == "linf" else 2, dim=1).max())
                <= eps + 1e-9
            )
            z = net(x_adv).detach()
            assert_inside(z, lower, upper, 1)
            assert bool((z.gather(1, y[:, None]) - z >= margin - TOL).all())
        # never looser than IBP (and strictly tighter somewhere: the backward pass does work)
        assert bool((lower >= ibp[0]).all() and (upper <= ibp[1]).all())
        if method != "ibp":
            assert float((upper - lower).sum()) < float((ibp[1] - ibp[0]).sum())


@pytest.mark.parametrize("name", list(NETS))
def test_zero_radius_gives_the_logits(name):
    net, x = _randomise(NETS[name]()), images(2)
    with torch.no_grad():
        z = net(x)
        for method in ("ibp", "crown-ibp", "crown"):
            lower, upper = certify.bounds(net, x, eps=0.0, method=method)
            torch.testing.assert_close(lower, z, rtol=0, atol=1e-12)
            torch.testing.assert_close(upper, z, rtol=0, atol=1e-12)


def linear_nets():
    """Purely affine models of every layer type: conv (stride, groups), BatchNorm, Normalize,
    pooling, a residual sum, reshapes."""
    return [
        nn.Sequential(Normalize([0.5, 0.3], [0.2, 0.4]), nn.Conv2d(2, 4, 3, stride=2, groups=2),
                      nn.BatchNorm2d(4), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4, 3)),
        Residual(linear=True),
    ]  # fmt: skip


def affine_form(net, x):
    """(W (classes, D), b): the model's matrix by the Jacobian, its offset at 0."""
    w = torch.autograd.functional.jacobian(
        lambda v: net(v.view(1, *x.shape[1:]))[0], x[0].flatten()
    )
    return w, net(torch.zeros_like(x[:1]))[0]


@pytest.mark.parametrize("which", [0, 1])
def test_crown_is_exact_on_linear_models(which):
    net, x = _randomise(linear_nets()[which]), images(2)
    w, b = affine_form(net, x)
    centre = x.flatten(1) @ w.T + b
    # L-inf: the set is the box [max(0, x - eps), min(1, x + eps)]; a linear map's range over it
    eps = 0.4
    lo, hi = (x - eps).clamp(0, 1).flatten(1), (x + eps).clamp(0, 1).flatten(1)
    expected_lo = lo @ w.clamp(min=0).T + hi @ w.clamp(max=0).T + b
    expected_hi = hi @ w.clamp(min=0).T + lo @ w.clamp(max=0).T + b
    lower, upper = certify.bounds(net, x, eps=eps, norm="linf", method="crown")
    torch.testing.assert_close(lower, expected_lo, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(upper, expected_hi, rtol=1e-10, atol=1e-10)
    # L2 with every pixel at 0.5 and eps <= 0.5: the ball lies in the box
    x = torch.full_like(x, 0.5)
    centre, eps = x.flatten(1) @ w.T + b, 0.5
    lower, upper = certify.bounds(net, x, eps=eps, norm="l2", method="crown")
    torch.testing.assert_close(lower, centre - eps * w.norm(dim=1), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(upper, centre + eps * w.norm(dim=1), rtol=1e-10, atol=1e-10)
    y = torch.tensor([0, 2])
    diff = w[y][:, None] - w[None]  # (N, classes, D): rows of logit_y - logit_j
    margin = certify.margin_bounds(net, x, y, eps=eps, norm="l2", method="crown")
    torch.testing.assert_close(
        margin,
        (centre.gather(1, y[:, None]) - centre) - eps * diff.norm(dim=2),
        rtol=1e-10,
        atol=1e-10,
    )


def test_ibp_first_layer_l2_is_the_ball_range():
    """IBP on Normalize -> Conv2d: with the ball inside the box, each output's range is
    centre +- eps ||row||_2 exactly (a box bound alone would be sqrt(D) times wider)."""
    net = nn.Sequential(Normalize([0.5, 0.3], [0.2, 0.4]), nn.Conv2d(2, 3, 3, stride=2, groups=1),
                        nn.Flatten())  # fmt: skip
    net = net.to(DT).requires_grad_(False)
    x = torch.full((2, 2, 6, 6), 0.5, dtype=DT)
    x[1, 0, 2:4] = 0.3
    w, b = affine_form(net, x)
    centre, eps = x.flatten(1) @ w.T + b, 0.2
    lower, upper = certify.bounds(net, x, eps=eps, norm="l2", method="ibp")
    torch.testing.assert_close(lower, centre - eps * w.norm(dim=1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(upper, centre + eps * w.norm(dim=1), rtol=1e-12, atol=1e-12)


def test_lipschitz_method_certifies_less_than_exact_crown():
    """verified(method="lipschitz") is the Lipschitz-margin certificate: on a linear model, where
    CROWN is exact, it can only certify a subset."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(72, 4)).to(DT).eval().requires_grad_(False)
    x = torch.rand(30, 2, 6, 6, dtype=DT)
    y = net(x).argmax(1)
    crown = certify.verified(net, x, y, eps=0.05, norm="l2", method="crown")
    lipschitz = certify.verified(net, x, y, eps=0.05, norm="l2", method="lipschitz")
    assert int(lipschitz.sum()) > 0 and not bool((lipschitz & ~crown).any())


def test_l2_ball_cut_by_the_box_matches_a_solver():
    """Where the box cuts the L2 ball, the bound is the exact minimum over the intersection
    (SLSQP on the same problem), below the ball's and the box's own bounds."""
    net = nn.Linear(12, 3).to(DT).requires_grad_(False)
    x = torch.rand(2, 12, dtype=DT)
    x[:, :4] = torch.tensor([0.0, 1.0, 0.02, 0.97], dtype=DT)
    eps = 0.3
    lower, upper = certify.bounds(net, x, eps=eps, norm="l2", method="crown")
    for i in range(2):
        for j in range(3):
            for sign, bound in ((1, lower[i, j]), (-1, -upper[i, j])):
                a, x0 = sign * net.weight[j].numpy(), x[i].numpy()
                offset = a @ x0 + sign * float(net.bias[j])
                assert abs(float(bound) - offset - solver_min(a, x0, eps)) < 1e-7
                assert float(bound) > offset - eps * np.linalg.norm(a) + 1e-4  # the box cuts


def solver_min(a, x0, eps):
    """min a . d over ||d||_2 <= eps, 0 <= x0 + d <= 1, by SLSQP."""
    ball = {"type": "ineq", "fun": lambda d: eps**2 - d @ d, "jac": lambda d: -2 * d}
    box = list(zip(-x0.clip(max=eps), (1 - x0).clip(max=eps), strict=True))
    best = minimize(lambda d: a @ d, np.zeros(len(a)), jac=lambda d: a, bounds=box,
                    constraints=[ball], method="SLSQP", tol=1e-14)  # fmt: skip
    return best.fun


@pytest.mark.parametrize(
    ("net", "named"),
    [
        (nn.Sequential(nn.Conv2d(2, 3, 3), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12, 2)),
         "'1' (MaxPool2d)"),
        (nn.Sequential(nn.Flatten(), nn.Linear(72, 4), nn.Sigmoid(), nn.Linear(4, 2)),
         "'2' (Sigmoid)"),
        (nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(48, 2))
         .train(), "'1' (BatchNorm2d) is in train mode"),
    ],
)  # fmt: skip
def test_unsupported_layers_are_named(net, named):
    with pytest.raises(certify.UnsupportedLayerError, match=re.escape(named)):
        certify.bounds(net, torch.rand(2, 2, 6, 6), eps=0.1)


def test_unsupported_function_is_named():
    class Gated(nn.Module):
        def forward(self, x):
            return torch.sigmoid(x.flatten(1))[:, :3]

    with pytest.raises(certify.UnsupportedLayerError, match="sigmoid"):
        certify.bounds(Gated(), torch.rand(2, 2, 6, 6), eps=0.1)


def test_verified_samples_resist_pgd_and_apgd():
    torch.manual_seed(3)
    net, x = _randomise(mlp()), torch.rand(40, 2, 6, 6, dtype=DT)
    with torch.no_grad():
        y = net(x).argmax(1)
    y[:4] = (y[:4] + 1) % 5  # misclassified samples are never verified
    for norm, eps in (("linf", 0.02), ("l2", 0.1)):
        ok = certify.verified(net, x, y, eps=eps, norm=norm, method="crown")
        assert not bool(ok[:4].any())
        assert 0 < int(ok.sum()) < 36  # the check below means something
        # verified means every margin lower bound is positive: the attacks cannot succeed there
        for attack in (pgd, apgd):
            kw = {"loss": "margin"} if attack is pgd else {}
            _, fooled = attack(net, x, y, eps=eps, norm=norm, steps=40, return_success=True,
                               generator=torch.Generator().manual_seed(0), **kw)  # fmt: skip
            assert not bool((fooled & ok).any())
            assert bool(fooled[~ok].any())  # and they do break unverified ones
        ibp_ok = certify.verified(net, x, y, eps=eps, norm=norm, method="ibp")
        assert not bool((ibp_ok & ~ok).any())


def test_per_sample_eps_and_chunking_agree():
    net, x = _randomise(resnet()), images(3)
    eps = torch.tensor([0.0, 0.01, 0.03], dtype=DT)
    with torch.no_grad():
        whole = certify.bounds(net, x, eps=eps, method="crown")
        small = certify.bounds(net, x, eps=eps, method="crown", max_elements=500)
        for i in range(3):
            one = certify.bounds(net, x[i : i + 1], eps=float(eps[i]), method="crown")
            torch.testing.assert_close(whole[0][i : i + 1], one[0])
            torch.testing.assert_close(whole[1][i : i + 1], one[1])
    torch.testing.assert_close(small, whole)


@pytest.mark.parametrize("method", ["ibp", "crown-ibp"])
def test_bounds_are_differentiable_for_certified_training(method):
    net = cnn().eval()
    x, y = torch.rand(4, 2, 6, 6), torch.randint(0, 5, (4,))
    margin = certify.margin_bounds(net, x, y, eps=0.02, method=method, dtype=None)
    assert margin.dtype == torch.float32
    F.cross_entropy(-margin, y).backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and bool(g.isfinite().all()) for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)


def test_bad_arguments():
    net, x = mlp().eval(), torch.rand(2, 2, 6, 6)
    with pytest.raises(ValueError, match="norm"):
        certify.bounds(net, x, eps=0.1, norm="l1")
    with pytest.raises(ValueError, match="method"):
        certify.bounds(net, x, eps=0.1, method="lp")
    with pytest.raises(ValueError, match="within bounds"):
        certify.bounds(net, x + 2, eps=0.1)
    with pytest.raises(ValueError, match="eps"):
        certify.bounds(net, x, eps=-0.1)
    with pytest.raises(ValueError, match="labels"):
        certify.verified(net, x, torch.tensor([0, 7]), eps=0.1)


def _fresh_bounds(net, x, **kw):
    """Bounds of a copy of net: a model the trace cache has not seen."""
    with torch.no_grad():
        return certify.bounds(copy.deepcopy(net), x, **kw)


@pytest.mark.parametrize("method", ["ibp", "crown-ibp"])
def test_cached_trace_reads_the_current_weights(method):
    """bounds() reuses a model's trace (certified training bounds it every step) but must read
    the weights of the call: changed in place, replaced parameters and BatchNorm statistics."""
    net, x = _randomise(cnn()), images(3)
    kw = dict(eps=0.03, method=method)
    with torch.no_grad():
        before = certify.bounds(net, x, **kw)
    plan = graph._plans[net][(x.shape[1:], x.device)][1]
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(-1.5).add_(0.1)
        net[4].running_mean.uniform_(-0.5, 0.5)
    net[1].weight = nn.Parameter(torch.randn_like(net[1].weight))
    with torch.no_grad():
        after = certify.bounds(net, x, **kw)
    assert graph._plans[net][(x.shape[1:], x.device)][1] is plan  # not traced again
    fresh = _fresh_bounds(net, x, **kw)
    torch.testing.assert_close(after, fresh, rtol=0, atol=0)
    assert not torch.allclose(after[0], before[0])
    # the same bounds with autograd on (IBP's ReLU then makes one more tensor) as under no_grad
    lower, upper = certify.bounds(net, x, **kw)
    assert lower.requires_grad
    torch.testing.assert_close((lower.detach(), upper.detach()), fresh, rtol=0, atol=1e-12)


def test_changed_structure_is_traced_again():
    """A replaced submodule, a changed hyperparameter and another input size each get a new
    trace: a stale one would have the wrong layers or shapes."""
    net, x = _randomise(cnn()), images(3)
    kw = dict(eps=0.03, method="ibp")
    with torch.no_grad():
        certify.bounds(net, x, **kw)
        net[8] = nn.Identity()  # a ReLU removed
        torch.testing.assert_close(certify.bounds(net, x, **kw), _fresh_bounds(net, x, **kw))
        net[1].stride = (1, 1)  # every later shape changes; AdaptiveAvgPool2d absorbs it
        torch.testing.assert_close(certify.bounds(net, x, **kw), _fresh_bounds(net, x, **kw))
        net[7] = nn.Conv2d(6, 6, 3, padding=1).to(DT)
        torch.testing.assert_close(certify.bounds(net, x, **kw), _fresh_bounds(net, x, **kw))
        big = torch.rand(2, 2, 9, 9, dtype=DT)
        torch.testing.assert_close(certify.bounds(net, big, **kw), _fresh_bounds(net, big, **kw))
    assert len(graph._plans[net]) == 2  # one per input shape


def test_trace_cache_does_not_keep_models_alive():
    net, x = _randomise(cnn()), images(2)
    layer = nn.Linear(72, 5).to(DT)  # one-layer model: traced inside a wrapper, not cached
    with torch.no_grad():
        certify.bounds(net, x, eps=0.01, method="ibp")
        certify.bounds(layer, x.flatten(1), eps=0.01, method="ibp")
    assert net in graph._plans and layer not in graph._plans
    refs = [weakref.ref(net), weakref.ref(layer)]
    del net, layer
    gc.collect()
    assert all(r() is None for r in refs)
