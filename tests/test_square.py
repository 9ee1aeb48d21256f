"""Square attack: the published p-schedule and window pattern, constraints, success and query
accounting, strength on a small CNN, L1 against a linear model's closed-form distances, targeted
runs, side effects and bad input."""

import copy
import importlib.util

import pytest
import torch

from robustkern.attacks import apgd, square
from robustkern.attacks.square import _Search, eta, p_schedule, window_side
from tests.conftest import accuracy


def test_p_schedule_halves_at_the_published_points():
    # p_init halves after 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of 10,000 queries
    assert p_schedule(0, 10000, 0.8) == 0.8
    assert p_schedule(10, 10000, 0.8) == 0.8
    assert p_schedule(11, 10000, 0.8) == 0.4
    assert p_schedule(51, 10000, 0.8) == 0.2
    assert p_schedule(1001, 10000, 0.8) == 0.8 / 32
    assert p_schedule(9999, 10000, 0.8) == 0.8 / 512
    assert p_schedule(2500, 5000, 0.8) == 0.8 / 128  # rescaled: query 2500 of 5000 ~ 5000/10000
    assert window_side(0.8, 1, 28, 28, "linf") == 25
    assert window_side(1e-4, 1, 28, 28, "linf") == 1
    assert window_side(1e-4, 1, 28, 28, "l2") == 3  # L2 windows are odd and >= 3
    assert window_side(0.3, 3, 32, 32, "l2") % 2 == 1
    assert window_side(1e-4, 1, 28, 28, "l1") == 3  # so are L1's
    assert window_side(0.3, 3, 32, 32, "l1") % 2 == 1


def test_eta_is_a_unit_pattern_positive_on_top_negative_below():
    for s in (1, 2, 3, 5, 8):
        e = eta(s)
        assert e.shape == (s, s)
        assert e.norm().item() == pytest.approx(1.0, abs=1e-6)
        assert (e[s // 2 :] < 0).all()
        assert (e[: s // 2] > 0).all()
    e = eta(5)  # weight falls off from the centre of each half
    assert e[1, 2] > e[1, 1] > e[1, 0] > 0


def test_l1_eta_has_unit_mass_and_is_sparser_than_l2s():
    for s in (1, 2, 3, 5, 8):
        e = eta(s, norm="l1")
        assert e.abs().sum().item() == pytest.approx(1.0, abs=1e-6)
        assert (e[s // 2 :] < 0).all() and (e[: s // 2] > 0).all()
    # 1/k^4 instead of 1/k^2: more of each half's mass sits at its centre pixel
    l1, l2 = eta(7, norm="l1").abs(), eta(7).abs()
    assert l1[1, 3] / l1[:3].sum() > l2[1, 3] / l2[:3].sum() + 0.1


@pytest.mark.parametrize(("norm", "eps"), [("l2", 0.5), ("l1", 0.3)])
def test_update_moves_mass_between_its_two_windows_only(norm, eps):
    """The paper's L2 step (and AutoAttack's L1 step) gives window 1 a fresh pattern plus its old
    mass and takes window 2's, at the norm that keeps ||delta|| = eps: away from the bounds no
    rescale (L2) or projection (L1) is needed, so every pixel outside the two windows keeps its
    value."""
    g = torch.Generator().manual_seed(0)
    x_nat = 0.4 + 0.2 * torch.rand(6, 1, 28, 28, generator=g)
    search = _Search(None, norm, 100, 0.8, False, (0.0, 1.0), g)
    e = torch.full((6, 1, 1, 1), eps)
    p = 2 if norm == "l2" else 1
    x = search._start(x_nat, e)
    assert torch.allclose((x - x_nat).flatten(1).norm(p=p, dim=1), e.flatten(), atol=1e-5)
    for side in (3, 5, 11):
        x_new = search._propose_mass(x_nat, x, e, side)
        changed = (x_new - x).abs().flatten(1) > 1e-6
        assert (changed.sum(1) <= 2 * side * side).all()
        assert torch.allclose((x_new - x_nat).flatten(1).norm(p=p, dim=1), e.flatten(), atol=1e-5)


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 0.8), ("l1", 3.0)])
def test_points_stay_in_the_ball_and_bounds_and_queries_are_counted(digits_model, norm, eps):
    model, x, y = digits_model
    eps_t = torch.linspace(eps / 4, eps, len(x))
    clean_wrong = model(x).argmax(1) != y
    for e in (eps, eps_t):
        x_adv, fooled, queries = square(
            model,
            x,
            y,
            eps=e,
            norm=norm,
            queries=300,
            generator=torch.Generator().manual_seed(0),
            return_success=True,
            return_queries=True,
        )
        d = (x_adv - x).flatten(1)
        dist = d.norm(p={"linf": float("inf"), "l2": 2, "l1": 1}[norm], dim=1)
        assert (dist <= torch.as_tensor(e) * (1 + 1e-5) + 1e-6).all()
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        with torch.no_grad():
            assert torch.equal(fooled, model(x_adv).argmax(1) != y)
        assert (queries[clean_wrong] == 0).all() and torch.equal(x_adv[clean_wrong], x[clean_wrong])
        attacked = ~clean_wrong
        assert (queries[attacked] >= 1).all() and (queries <= 300).all()
        assert (queries[attacked & ~fooled] == 300).all()  # the unbroken used the whole budget
        assert (queries[attacked & fooled] < 300).any()  # the broken stopped early


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 0.8)])
def test_square_breaks_what_apgd_breaks_with_enough_queries(digits_model, norm, eps):
    model, x, y = digits_model
    g = torch.Generator().manual_seed(0)
    acc_square = accuracy(
        model, square(model, x, y, eps=eps, norm=norm, queries=1000, generator=g), y
    )
    acc_apgd = accuracy(model, apgd(model, x, y, eps=eps, norm=norm, generator=g), y)
    acc_noise = accuracy(
        model, (x + eps * torch.randn_like(x).sign() / (1 if norm == "linf" else 8)).clamp(0, 1), y
    )
    assert acc_square < acc_noise - 0.2  # far stronger than noise of the same size
    assert acc_square <= acc_apgd + 0.2  # black box: close to the white-box attack, not above


@pytest.mark.skipif(importlib.util.find_spec("torchattacks") is None, reason="no torchattacks")
@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 0.8)])
def test_no_weaker_than_torchattacks_square(digits_model, norm, eps):
    import torchattacks

    model, x, y = digits_model
    g = torch.Generator().manual_seed(0)
    ours = square(model, x, y, eps=eps, norm=norm, queries=500, generator=g)
    ta_norm = {"linf": "Linf", "l2": "L2"}[norm]
    theirs = torchattacks.Square(model, norm=ta_norm, eps=eps, n_queries=500, seed=0)(x, y)
    assert accuracy(model, ours, y) <= accuracy(model, theirs, y) + 0.005


def _linear_model_and_distances(n=40, classes=10, seed=0):
    """A linear classifier on (1, 8, 8) images inside [0.25, 0.75], the labels it predicts and,
    per image, two L1 distances to its decision boundary: the dual-norm bound
    min_j margin_j / ||w_y - w_j||_inf (no L1 perturbation smaller than it can flip the class,
    box or not) and the exact distance within the box [0, 1] (per class j, move the pixels in
    decreasing |w_y - w_j| as far as the box lets them until the margin is gone)."""
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, classes))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(classes, 64, generator=g))
        model[1].bias.zero_()
    x = 0.25 + 0.5 * torch.rand(n, 1, 8, 8, generator=g)
    with torch.no_grad():
        z = model(x)
    y = z.argmax(1)
    w, xf = model[1].weight.detach(), x.flatten(1)
    a = w[y][:, None, :] - w[None]  # (n, classes, 64): the margin to class j is a.x
    m = z.gather(1, y[:, None]) - z
    other = torch.arange(classes)[None] != y[:, None]
    dual = torch.where(other, m / a.abs().amax(2), torch.inf).amin(1)
    room = torch.where(a > 0, xf[:, None], 1 - xf[:, None])  # how far each pixel may go
    rate, order = a.abs().sort(2, descending=True)
    room = room.gather(2, order)
    gain = (rate * room).cumsum(2)  # the margin removed by using up the first k pixels
    k = (gain < m[..., None]).sum(2, keepdim=True).clamp_max(63)  # the pixel that finishes it
    before = (gain - rate * room).gather(2, k), (room.cumsum(2) - room).gather(2, k)
    exact = before[1] + (m[..., None] - before[0]) / rate.gather(2, k)
    exact = torch.where(other & (gain[..., -1] >= m), exact[..., 0], torch.inf).amin(1)
    return model, x, y, dual, exact


def test_l1_fools_a_linear_model_beyond_its_distance_and_never_below_it():
    model, x, y, dual, exact = _linear_model_and_distances()
    assert (dual <= exact * (1 + 1e-5)).all() and exact.isfinite().all()
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    # three times the exact distance within the box: the random search finds a way
    x_adv, fooled, dist, used = square(
        model, x, y, eps=3 * exact, norm="l1", queries=300, generator=g(),
        return_success=True, return_norms=True, return_queries=True,
    )  # fmt: skip
    assert fooled.all() and (used < 300).all()
    assert (dist <= 3 * exact * (1 + 1e-5) + 1e-6).all()  # float32 rounding of x_adv
    torch.testing.assert_close(dist, (x_adv - x).flatten(1).abs().sum(1))
    # below the dual-norm bound nothing can flip, so every image stays correct and uses the budget
    safe = 0.9 * dual
    x_adv, fooled, used = square(
        model, x, y, eps=safe, norm="l1", queries=300, generator=g(),
        return_success=True, return_queries=True,
    )  # fmt: skip
    assert not fooled.any() and (used == 300).all()
    with torch.no_grad():
        assert torch.equal(model(x_adv).argmax(1), y)
    assert ((x_adv - x).flatten(1).abs().sum(1) <= safe * (1 + 1e-5) + 1e-6).all()
    # at twice the dual bound some images flip: a radius twice too large would fail above
    assert square(
        model, x, y, eps=2 * dual, norm="l1", queries=300, generator=g(), return_success=True
    )[1].any()  # fmt: skip


def test_l1_repeats_with_a_generator_and_in_channels_last():
    model, x, y, _, exact = _linear_model_and_distances(n=12)
    run = lambda xs, seed: square(  # noqa: E731
        model, xs, y, eps=1.5 * exact, norm="l1", queries=100,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    a = run(x, 0)
    assert torch.equal(a, run(x, 0))
    assert not torch.equal(a, run(x, 1))
    assert torch.allclose(a, run(x.to(memory_format=torch.channels_last), 0))


def test_targeted_reaches_the_target_and_seeds_repeat(digits_model):
    model, x, y = digits_model
    target = (y + 1) % 10
    x_adv, hit = square(
        model,
        x,
        target,
        eps=0.3,
        queries=300,
        targeted=True,
        generator=torch.Generator().manual_seed(1),
        return_success=True,
    )
    with torch.no_grad():
        assert torch.equal(hit, model(x_adv).argmax(1) == target)
    assert hit.float().mean() > 0.5
    again = square(
        model,
        x,
        target,
        eps=0.3,
        queries=300,
        targeted=True,
        generator=torch.Generator().manual_seed(1),
    )
    assert torch.equal(x_adv, again)


def test_restarts_never_lose_a_success(digits_model):
    model, x, y = digits_model
    one = square(
        model,
        x,
        y,
        eps=0.05,
        queries=50,
        generator=torch.Generator().manual_seed(2),
        return_success=True,
    )[1]
    three = square(
        model,
        x,
        y,
        eps=0.05,
        queries=50,
        restarts=3,
        generator=torch.Generator().manual_seed(2),
        return_success=True,
    )[1]
    assert three.sum() >= one.sum()


def test_side_effects_and_channels_last(digits_model):
    model, x, y = digits_model
    model = copy.deepcopy(model).train()
    square(model, x[:10], y[:10], eps=0.1, queries=20)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    a = square(model, x, y, eps=0.1, queries=50, generator=g())
    b = square(
        model, x.to(memory_format=torch.channels_last), y, eps=0.1, queries=50, generator=g()
    )
    assert torch.allclose(a, b)


def test_bad_input_is_named(digits_model):
    model, x, y = digits_model
    with pytest.raises(ValueError, match="images"):
        square(model, x.flatten(1), y, eps=0.1)
    with pytest.raises(ValueError, match="finite"):
        square(model, x, y, eps=float("inf"))
    with pytest.raises(ValueError, match="norm"):
        square(model, x, y, eps=0.1, norm="l0")
    with pytest.raises(ValueError, match="queries"):
        square(model, x, y, eps=0.1, queries=0)
    with pytest.raises(ValueError, match="p_init"):
        square(model, x, y, eps=0.1, p_init=1.5)
    with pytest.raises(ValueError, match="labels"):
        square(model, x, y + 10, eps=0.1)
