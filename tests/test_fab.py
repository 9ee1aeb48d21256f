"""FAB: the hyperplane-and-box projections against independent solvers, the closed-form
distances of linear models (untargeted, targeted, with the box binding), bounded mode, the
return convention, NaN and zero gradients, side effects, a small CNN against FMN, bad input."""

import copy
import itertools
import math

import numpy as np
import pytest
import torch

from robustkern.attacks import fab, min_norm
from robustkern.attacks.fab import hyperplane_step

BOX = (-1.0, 1.0)
DUAL = {"linf": 1, "l2": 2, "l1": math.inf}
NORMS = ["linf", "l2", "l1"]


def size(d, norm):
    return d.flatten(1).norm(p={"linf": math.inf, "l2": 2, "l1": 1}[norm], dim=1)


# --- projections ------------------------------------------------------------------------


def projection_problems(dim, n=40, lo=0.0, hi=1.0):
    """Points in the box (a fifth of their coordinates on a bound), normals with a fifth of
    their entries zero, offsets that put most hyperplanes through the box."""
    g = torch.Generator().manual_seed(dim)
    t = lo + (hi - lo) * torch.rand(n, dim, generator=g, dtype=torch.float64)
    t = torch.where(torch.rand(n, dim, generator=g) < 0.2, hi, t)
    w = torch.randn(n, dim, generator=g, dtype=torch.float64)
    w = torch.where(torch.rand(n, dim, generator=g) < 0.2, 0.0, w)
    inside = lo + (hi - lo) * torch.rand(n, dim, generator=g, dtype=torch.float64)
    b = -1.2 * (w * inside).sum(1)
    return t, w, b


def lp_optimum(t, w, b, norm, lo, hi):
    """min ||d|| (L-inf or L1) s.t. <w, t + d> + b = 0, lo <= t + d <= hi, by scipy's HiGHS:
    variables (d, s) with |d_i| <= s (L-inf) or (d, u) with |d_i| <= u_i (L1). None if
    infeasible."""
    linprog = pytest.importorskip("scipy.optimize").linprog
    dim = len(t)
    aux = 1 if norm == "linf" else dim
    spread = np.ones((dim, 1)) if norm == "linf" else np.eye(dim)
    a_ub = np.block([[np.eye(dim), -spread], [-np.eye(dim), -spread]])
    res = linprog(
        np.r_[np.zeros(dim), np.ones(aux)],
        A_ub=a_ub,
        b_ub=np.zeros(2 * dim),
        A_eq=np.r_[w, np.zeros(aux)][None],
        b_eq=[-(w @ t + b)],
        bounds=[(lo - ti, hi - ti) for ti in t] + [(0, None)] * aux,
        method="highs",
    )
    return res.fun if res.status == 0 else None


def l2_optimum(t, w, b, lo, hi):
    """The L2 projection by enumerating active sets: every coordinate at lo, at hi or free;
    the free ones take the least-norm solution of the equality; the best feasible candidate
    is the optimum (the true active set is among them). None if infeasible."""
    need, best = -(w @ t + b), None
    for states in itertools.product("lhf", repeat=len(t)):
        d = np.array([lo - ti if s == "l" else hi - ti if s == "h" else 0.0
                      for s, ti in zip(states, t, strict=True)])  # fmt: skip
        free = np.array([s == "f" for s in states])
        rest, wf = need - w @ d, w[free]
        if wf @ wf > 0:
            d[free] = wf * rest / (wf @ wf)
        elif abs(rest) > 1e-12:
            continue
        z = t + d
        if (
            z.min() >= lo - 1e-12
            and z.max() <= hi + 1e-12
            and (best is None or d @ d < best @ best)
        ):
            best = d
    return best


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("box", [(0.0, 1.0), (-1.0, 2.0)])
def test_projection_is_the_minimum_norm_point_of_the_hyperplane_in_the_box(norm, box):
    lo, hi = box
    feasible = 0
    for dim in (1, 2, 3, 4):
        t, w, b = projection_problems(dim, lo=lo, hi=hi)
        d = hyperplane_step(t, w, b, norm, box)
        z = t + d
        assert (z >= lo - 1e-12).all() and (z <= hi + 1e-12).all()
        for i in range(len(t)):
            ti, wi, bi = t[i].numpy(), w[i].numpy(), b[i].item()
            if norm == "l2":
                best = l2_optimum(ti, wi, bi, lo, hi)
                optimum = None if best is None else float(np.linalg.norm(best))
                if best is not None:  # strictly convex: the point itself is unique
                    np.testing.assert_allclose(d[i].numpy(), best, atol=1e-9)
            else:
                optimum = lp_optimum(ti, wi, bi, norm, lo, hi)
            if optimum is None:  # the hyperplane misses the box: the nearest box point
                side = -np.sign(wi @ ti + bi)
                corner = np.where(side * wi > 0, hi, lo)
                reach = side * (wi @ corner + bi)
                assert side * ((w[i] * z[i]).sum().item() + bi) == pytest.approx(reach)
                continue
            feasible += 1
            assert (w[i] * z[i]).sum().item() + bi == pytest.approx(0, abs=1e-9)
            assert size(d[i : i + 1], norm).item() <= optimum + 1e-9
    assert feasible > 100  # most problems are feasible: the check above ran


def test_halfspace_projection_leaves_points_inside_and_projects_the_others():
    t, w, b = projection_problems(5)
    inside = (w * t).sum(1) + b >= 0
    assert 0 < inside.sum() < len(t)
    for norm in NORMS:
        d = hyperplane_step(t, w, b, norm, halfspace=True)
        assert (d[inside] == 0).all()
        assert torch.equal(d[~inside], hyperplane_step(t, w, b, norm)[~inside])


def test_projection_without_a_box_is_the_closed_form_and_degenerate_normals_give_no_nan():
    g = torch.Generator().manual_seed(0)
    t, w = torch.rand(6, 10, generator=g), torch.randn(6, 10, generator=g)
    b = torch.randn(6, generator=g)
    d = hyperplane_step(t, w, b, "l2", (-math.inf, math.inf))
    gap = (w * t).sum(1) + b
    assert torch.allclose(d, -gap[:, None] * w / (w * w).sum(1, keepdim=True), atol=1e-6)
    for norm in NORMS:
        d = hyperplane_step(t, w, b, norm, (-math.inf, math.inf))
        assert torch.allclose(size(d, norm), gap.abs() / w.norm(p=DUAL[norm], dim=1), rtol=1e-5)
        tiny = w * 1e-30  # w**2 underflows in float32: the scaling keeps the step exact
        assert torch.allclose(hyperplane_step(t, tiny, b * 1e-30, norm), hyperplane_step(
            t, w, b, norm), atol=1e-6)  # fmt: skip
        zero = hyperplane_step(t, torch.zeros_like(w), b, norm)
        assert torch.equal(zero, torch.zeros_like(zero))


# --- linear models: closed-form distances -----------------------------------------------


def linear_model(classes, n=40, dtype=torch.float64):
    """Random softmax regression on inputs inside (-0.1, 0.1), labelled by its own prediction,
    in the box (-1, 1): every nearest boundary point lies inside the box, so the exact minimum
    distance to class j is (z_y - z_j) / ||w_y - w_j||_q (q the dual norm)."""
    g = torch.Generator().manual_seed(classes)
    x = (0.2 * torch.rand(n, 1, 6, 6, generator=g) - 0.1).to(dtype)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, classes)).to(dtype)
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(classes, 36, generator=g))
        model[1].bias.zero_()
        y = model(x).argmax(1)
    return model.eval(), x, y


def class_distances(model, x, y, norm):
    """(N, classes): the exact distance to each class's boundary with y (inf at y)."""
    w = model[1].weight.detach()
    with torch.no_grad():
        z = model(x)
    d = (z.gather(1, y[:, None]) - z) / (w[y][:, None, :] - w[None]).norm(p=DUAL[norm], dim=2)
    d[torch.arange(len(y)), y] = math.inf
    return d


@pytest.mark.parametrize(
    ("norm", "bounds"),
    [("linf", BOX), ("l2", BOX), ("l1", BOX), ("l2", (-math.inf, math.inf))],
)
def test_linear_model_distances_are_the_closed_form(norm, bounds):
    model, x, y = linear_model(5)
    exact = class_distances(model, x, y, norm).amin(1)
    assert (exact < 0.5).all()  # the boundary points lie well inside the box
    x_adv, fooled, found = fab(model, x, y, norm=norm, bounds=bounds, return_success=True,
                               return_norms=True)  # fmt: skip
    assert fooled.all()
    assert torch.allclose(found, exact, rtol=1e-3)
    assert (found >= exact * (1 - 1e-9)).all()  # nothing closer than the boundary
    assert torch.allclose(size(x_adv - x, norm), found)
    with torch.no_grad():
        assert (model(x_adv).argmax(1) != y).all()


def test_targeted_runs_reach_the_target_at_its_closed_form_distance():
    model, x, y = linear_model(5)
    per_class = class_distances(model, x, y, "l2")
    exact = per_class.amin(1)
    with torch.no_grad():
        second = model(x).argsort(1, descending=True)[:, 1]
    _, every = fab(
        model, x, y, norm="l2", targeted=True, n_targets=4, bounds=BOX, return_norms=True
    )
    assert torch.allclose(every, exact, rtol=1e-3)  # all targets: the nearest boundary too
    x_adv, one = fab(
        model, x, y, norm="l2", targeted=True, n_targets=1, bounds=BOX, return_norms=True
    )
    nearest = per_class.argmin(1) == second  # the one target is the nearest class
    assert 0 < nearest.sum() < len(y)
    with torch.no_grad():
        assert torch.equal(model(x_adv[nearest]).argmax(1), second[nearest])
    assert torch.allclose(one[nearest], per_class[nearest].gather(1, second[nearest, None])
                          .squeeze(1), rtol=1e-3)  # fmt: skip
    assert (one >= exact * (1 - 1e-9)).all()


@pytest.mark.parametrize("norm", NORMS)
def test_where_the_box_binds_the_distance_is_the_projection_onto_the_boundary_in_the_box(norm):
    """A binary linear model on digit-like inputs in [0, 1] (many on a bound): the smallest
    adversarial perturbation is the minimal-norm projection onto its one boundary within the
    box, which the projection tests above check against independent solvers."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(30, 1, 5, 5, generator=g, dtype=torch.float64)
    x = torch.where(x < 0.4, 0.0, torch.where(x > 0.8, 1.0, x))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(25, 2)).double()
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(2, 25, generator=g, dtype=torch.float64))
        model[1].bias.copy_(torch.tensor([0.5, -0.5], dtype=torch.float64))
        y = model(x).argmax(1)
    w = (model[1].weight[1] - model[1].weight[0]).detach().expand(30, 25)
    b = (model[1].bias[1] - model[1].bias[0]).detach().expand(30)
    flat = x.flatten(1)
    d = hyperplane_step(flat, w, b, norm)
    reachable = ((w * (flat + d)).sum(1) + b).abs() < 1e-9
    unconstrained = hyperplane_step(flat, w, b, norm, (-math.inf, math.inf))
    assert reachable.sum() > 10
    assert (size(d, norm)[reachable] > size(unconstrained, norm)[reachable] * 1.01).any()
    _, found = fab(model, x, y, norm=norm, return_norms=True)
    assert torch.allclose(found[reachable], size(d, norm)[reachable], rtol=1e-3)
    assert found[~reachable].isinf().all()  # no point of the box crosses the boundary


def test_a_class_whose_gradient_equals_the_true_class_is_skipped():
    """Two classes with the same weights: their gradient difference is zero, which must not
    become a NaN step; the attack goes to the nearest other boundary."""
    model, x, y = linear_model(5)
    with torch.no_grad():
        model[1].weight[3] = model[1].weight[2]
    y = torch.full_like(y, 2)  # class 2 wins ties with 3; relabel by the prediction
    keep = model(x).argmax(1) == 2
    x, y = x[keep], y[keep]
    assert len(y) > 3
    per_class = class_distances(model, x, y, "linf")
    per_class[:, 3] = math.inf
    x_adv, found = fab(model, x, y, norm="linf", bounds=BOX, return_norms=True)
    assert not x_adv.isnan().any()
    assert torch.allclose(found, per_class.amin(1), rtol=1e-3)


# --- modes and conventions --------------------------------------------------------------


def test_bounded_mode_succeeds_exactly_where_the_boundary_is_within_eps():
    model, x, y = linear_model(5)
    exact = class_distances(model, x, y, "l2").amin(1)
    # 1.003: FAB's own points overshoot by 0.5 %; the final bisection brings them inside
    factor = torch.tensor([0.8, 1.003, 1.2], dtype=torch.float64).repeat(len(y))[: len(y)]
    eps = exact * factor
    x_adv, fooled, found, queries = fab(model, x, y, norm="l2", eps=eps, bounds=BOX,
                                        return_success=True, return_norms=True,
                                        return_queries=True)  # fmt: skip
    assert torch.equal(fooled, factor > 1)
    dist = size(x_adv - x, "l2")
    assert (dist <= eps * (1 + 1e-6)).all()
    assert (x_adv[~fooled] == x[~fooled]).all()
    assert torch.allclose(found[fooled], dist[fooled]) and found[~fooled].isinf().all()
    assert (queries[factor == 1.2] == 2).all()  # found within eps at once: the sample stops
    assert (queries[factor < 1] == 2 * 100 + 12).all()
    # one eps for all, between two samples' distances; restarts start at eps / 2
    linf = class_distances(model, x, y, "linf").amin(1).sort().values
    gaps = linf[1:] / linf[:-1]
    k = int(gaps[10:30].argmax()) + 10
    assert gaps[k] > 1.01
    e = (linf[k] + linf[k + 1]).item() / 2
    gen = torch.Generator().manual_seed(0)
    x_adv, fooled = fab(model, x, y, norm="linf", eps=e, restarts=2, bounds=BOX, generator=gen,
                        return_success=True)  # fmt: skip
    assert torch.equal(fooled, class_distances(model, x, y, "linf").amin(1) < e)
    assert (size(x_adv - x, "linf") <= e * (1 + 1e-6)).all()


def test_return_convention_misclassified_samples_and_queries():
    model, x, y = linear_model(5, n=12)
    y = y.clone()
    y[:3] = (y[:3] + 1) % 5  # wrong labels: already misclassified
    alone = fab(model, x, y, steps=10, bounds=BOX)
    assert isinstance(alone, torch.Tensor) and alone.shape == x.shape
    gen = torch.Generator().manual_seed(3)
    x_adv, fooled, found, queries = fab(model, x, y, steps=10, restarts=2, generator=gen,
                                        bounds=BOX, return_success=True, return_norms=True,
                                        return_queries=True)  # fmt: skip
    assert torch.equal(x_adv[:3], x[:3]) and (found[:3] == 0).all() and fooled.all()
    assert (queries[:3] == 0).all() and (queries[3:] == 2 * 10 * 2 + 12).all()
    assert queries.dtype == torch.int64
    (only_norms,) = fab(model, x, y, steps=10, restarts=2, bounds=BOX, return_norms=True,
                        generator=torch.Generator().manual_seed(3))[1:]  # fmt: skip
    assert torch.equal(only_norms, found)  # seeded restarts repeat
    _, targeted_queries = fab(model, x, y, steps=10, targeted=True, n_targets=20, bounds=BOX,
                              return_queries=True)  # fmt: skip
    assert (targeted_queries[3:] == 2 * 10 * 4 + 12).all()  # capped at classes - 1 targets


def test_any_batch_shape_dtype_and_empty_batch():
    model = torch.nn.Linear(6, 3)
    x = torch.rand(8, 6) * 0.5 + 0.25
    y = model(x).argmax(1)
    x_adv, fooled = fab(model, x, y, norm="l1", steps=20, return_success=True)
    assert x_adv.dtype == torch.float32 and x_adv.shape == (8, 6) and fooled.all()
    empty = fab(model, x[:0], y[:0], return_success=True)
    assert empty[0].shape == (0, 6) and empty[1].shape == (0,)


class Unbatchable(torch.autograd.Function):
    """The identity, whose backward branches on its data: vmap cannot batch it, so FAB's
    Jacobian falls back to one backward per class. ``nan``: the gradient is NaN."""

    @staticmethod
    def forward(ctx, x, nan):
        ctx.nan = nan
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        if bool((g == g).all()):  # data-dependent: no batching rule
            return (g * math.nan if ctx.nan else g), None
        return g, None


def test_the_per_class_jacobian_loop_gives_what_the_batched_one_does():
    model, x, y = linear_model(5, n=10)

    class Guarded(torch.nn.Module):
        def forward(self, z):
            return model(Unbatchable.apply(z, False))

    plain = fab(model, x, y, steps=10, bounds=BOX, return_norms=True)
    looped = fab(Guarded(), x, y, steps=10, bounds=BOX, return_norms=True)
    assert torch.equal(plain[0], looped[0]) and torch.equal(plain[1], looped[1])


def test_nan_gradients_never_reach_the_points():

    class NanEverywhere(torch.nn.Module):
        def forward(self, z):
            return linear(Unbatchable.apply(z, True))

    linear = torch.nn.Linear(5, 3)
    x = torch.rand(6, 5)
    y = linear(x).argmax(1)
    for targeted in (False, True):
        x_adv, fooled = fab(NanEverywhere(), x, y, steps=5, targeted=targeted,
                            return_success=True)  # fmt: skip
        assert torch.equal(x_adv, x) and not fooled.any()

    class SqrtAtZero(torch.nn.Module):  # NaN gradients only where a coordinate is 0
        def forward(self, z):
            return linear(z) + torch.stack([z[:, 0].sqrt(), 0 * z[:, 0], 0 * z[:, 0]], 1)

    x[:3, 0] = 0
    y = SqrtAtZero()(x).argmax(1)
    x_adv = fab(SqrtAtZero(), x, y, norm="l2", steps=10)
    assert x_adv.isfinite().all()


def test_model_mode_and_parameter_gradients_are_untouched(digits_model):
    model, x, y = digits_model
    model = copy.deepcopy(model).train()
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    fab(model, x[:4], y[:4], steps=3)
    fab(model, x[:4], y[:4], steps=3, targeted=True, n_targets=2)
    assert model.training
    assert all((p.grad == 7.0).all() for p in model.parameters())


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_cnn_distances_are_close_to_fmn_and_every_success_is_adversarial(digits_model, norm):
    model, x, y = digits_model
    x, y = x[:12], y[:12]
    x_adv, fooled, found = fab(model, x, y, norm=norm, return_success=True, return_norms=True)
    _, fmn = min_norm(model, x, y, norm=norm, return_norms=True)
    both = fooled & fmn.isfinite()
    assert both.float().mean() > 0.8
    assert (found[both] <= 1.5 * fmn[both]).all()
    x_t, fooled_t = fab(model, x, y, norm=norm, targeted=True, n_targets=3, return_success=True)
    for points, ok in ((x_adv, fooled), (x_t, fooled_t)):
        assert points.min() >= 0 and points.max() <= 1
        with torch.no_grad():
            assert torch.equal(model(points).argmax(1) != y, ok)


def test_autocast_bfloat16_and_channels_last(digits_model):
    model, x, y = digits_model
    x, y = x[:6].contiguous(memory_format=torch.channels_last), y[:6]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_adv, fooled = fab(model, x, y, norm="l2", steps=10, return_success=True)
        with torch.no_grad():
            assert torch.equal(model(x_adv).argmax(1) != y, fooled)
    assert x_adv.dtype == torch.float32 and x_adv.is_contiguous(memory_format=torch.channels_last)
    assert x_adv.isfinite().all() and fooled.any()


BAD = [
    ("norm must be one of", dict(norm="l3")),
    ("steps, restarts, n_targets and eot must be >= 1", dict(steps=0)),
    ("steps, restarts, n_targets and eot must be >= 1", dict(n_targets=0)),
    ("steps, restarts, n_targets and eot must be >= 1", dict(restarts=0)),
    ("steps, restarts, n_targets and eot must be >= 1", dict(eot=0)),
    ("eps must be >= 0", dict(eps=-0.1)),
    ("per-sample eps must have shape", dict(eps=torch.ones(3))),
    ("alpha_max", dict(alpha_max=1.5)),
    ("eta", dict(eta=0.5)),
    ("beta", dict(beta=0.0)),
]


@pytest.mark.parametrize(("message", "kwargs"), BAD, ids=[f"{b[0]}-{b[1]}" for b in BAD])
def test_bad_input_is_a_clear_error(message, kwargs):
    model = torch.nn.Linear(6, 4)
    x, y = torch.rand(4, 6), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match=message):
        fab(model, x, y, **kwargs)
    with pytest.raises(ValueError, match="at least 2 classes"):
        fab(torch.nn.Linear(6, 1), x, y)
