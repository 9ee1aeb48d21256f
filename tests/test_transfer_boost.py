"""MI-FGSM and DI-FGSM: the closed-form iterate on linear models, momentum against a hand-computed
two-step update, decay 0 as iterative FGSM (PGD without random start), input diversity against a
direct implementation, its transform's shape, bounds and seeding, the eps ball, bad input, and
transfer_matrix by name."""

import pytest
import torch
import torch.nn.functional as F

from robustkern import models
from robustkern.attacks import di_fgsm, mi_fgsm, pgd
from robustkern.attacks.transfer_boost import _draw_views, resize_and_pad
from robustkern.evaluation import transfer_matrix


def linear_model(w):
    """logits = (w.x, -w.x) in float64 on inputs (N, 1, 6, 6): the cross-entropy's gradient for
    label y is a positive multiple of w_other - w_y = (2y - 1) 2w, its rows being opposite
    (also up to rounding, though the loss is computed on float32 logits: rows not opposite
    would turn it by the float32 softmax's rounding)."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 2)).double()
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([w, -w]))
        model[1].bias.zero_()
    return model.eval()


def per_sample(v, x):
    return v.view(-1, *[1] * (x.dim() - 1))


def linear_case(seed, x):
    """A linear model, labels (N,) and the loss's gradient direction per sample (like x)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(36, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (len(x),), generator=g)
    return linear_model(w), y, per_sample(2.0 * y - 1, x) * w.view(1, 1, 6, 6)


@pytest.mark.parametrize("targeted", [False, True])
def test_linear_model_linf_iterate_is_the_closed_form(targeted):
    # every step's sign is the same (targeted: the opposite one), so ``steps`` steps of
    # eps / steps reach clip(x + eps * sign(direction)); dyadic inputs and steps: exact sums
    x = torch.randint(0, 65, (10, 1, 6, 6)).double() / 64  # many on the bounds
    model, y, direction = linear_case(0, x)
    x_adv = mi_fgsm(model, x, y, eps=0.25, steps=4, targeted=targeted)
    sign = direction.sign() * (-1 if targeted else 1)
    assert torch.equal(x_adv, (x + 0.25 * sign).clamp(0, 1))


def test_linear_model_l2_iterate_is_the_closed_form():
    # along the fixed unit direction; inputs in the box's middle so no coordinate is clipped
    x = 0.25 + 0.5 * torch.rand(10, 1, 6, 6, dtype=torch.float64)
    model, y, direction = linear_case(1, x)
    expected = x + 0.5 * direction / per_sample(direction.flatten(1).norm(dim=1), x)
    assert ((expected > 0) & (expected < 1)).all()  # the box is not active
    x_adv = mi_fgsm(model, x, y, eps=0.5, norm="l2", steps=5, decay=0.7)
    assert torch.allclose(x_adv, expected, rtol=0, atol=1e-12)


class Bowl(torch.nn.Module):
    """Two logits (0, -sum c (x - t)^2): the attack on class 0 pulls x towards t along
    c * (t - x), whose sign flips in a coordinate that a step carries past t and whose direction
    turns (c is not uniform) as x moves."""

    def __init__(self, t, c):
        super().__init__()
        self.t, self.c = t, c

    def forward(self, x):
        z = -(self.c * (x - self.t) ** 2).flatten(1).sum(1)
        return torch.stack([torch.zeros_like(z), z], 1)


def hand_update(x0, t, c, decay, norm, alpha, eps, steps=2):
    """The papers' update, by hand: the cross-entropy's gradient at x is a positive multiple of
    c * (t - x) (d loss / dx = 2 sigmoid(z) c (t - x)), normalised by its mean |.|, accumulated
    with ``decay``; sign or unit-L2 steps; the eps ball and the bounds (0, 1)."""
    x, momentum = x0.clone(), torch.zeros_like(x0)
    for _ in range(steps):
        grad = c * (t - x)
        momentum = decay * momentum + grad / per_sample(grad.abs().flatten(1).mean(1), x)
        if norm == "linf":
            x = torch.minimum(torch.maximum(x + alpha * momentum.sign(), x0 - eps), x0 + eps)
        else:
            x = x + alpha * momentum / per_sample(momentum.flatten(1).norm(dim=1), x)
            delta = x - x0
            x = x0 + delta * per_sample((eps / delta.flatten(1).norm(dim=1)).clamp(max=1), x)
        x = x.clamp(0, 1)
    return x


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_momentum_follows_the_hand_computed_two_step_update(norm):
    # t - x0 = (0.07, -0.3, 0.25, -0.4): the first L-inf step (0.1) carries the first
    # coordinate past t; its gradient then points back, but the momentum still points on
    x0 = torch.full((1, 1, 2, 2), 0.5, dtype=torch.float64)
    t = x0 + torch.tensor([0.07, -0.3, 0.25, -0.4], dtype=torch.float64).view_as(x0)
    c = torch.tensor([1.0, 0.5, 2.0, 1.0], dtype=torch.float64).view_as(x0)
    model, y = Bowl(t, c), torch.zeros(1, dtype=torch.int64)
    kw = {"eps": 0.2, "norm": norm, "steps": 2}  # alpha = eps / steps = 0.1
    momentum = mi_fgsm(model, x0, y, **kw)
    plain = mi_fgsm(model, x0, y, **kw, decay=0.0)
    for result, decay in ((momentum, 1.0), (plain, 0.0)):
        expected = hand_update(x0, t, c, decay, norm, 0.1, 0.2)
        assert torch.allclose(result, expected, rtol=0, atol=1e-12)
    assert (momentum - plain).abs().max() > 1e-3
    if norm == "linf":  # the momentum took the first coordinate on past t, I-FGSM back to it
        assert momentum[0, 0, 0, 0] > t[0, 0, 0, 0] > plain[0, 0, 0, 0]
    # decay 0 is iterative FGSM: PGD from x with steps of eps / steps
    same = pgd(model, x0, y, **kw, alpha=0.1, random_start=False)
    assert torch.allclose(plain, same, rtol=0, atol=1e-12)


@pytest.fixture
def cnn_batch():
    torch.manual_seed(0)
    model = models.small_cnn(1, 10, width=4).eval()
    x = 0.2 + 0.6 * torch.rand(6, 1, 8, 8)
    return model, x, torch.randint(0, 10, (6,))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_decay_zero_is_pgd_without_random_start_on_a_cnn(cnn_batch, norm):
    model, x, y = cnn_batch
    ifgsm = mi_fgsm(model, x, y, eps=0.1, norm=norm, decay=0.0)
    same = pgd(model, x, y, eps=0.1, norm=norm, alpha=0.01, random_start=False)
    # L-inf: the same signs; L2: the gradient's scaling changes its unit vector by rounding only
    assert torch.allclose(ifgsm, same, rtol=0, atol=0 if norm == "linf" else 1e-6)


@pytest.mark.parametrize("decay", [0.0, 1.0])
def test_di_without_diversity_is_mi_with_the_same_decay(cnn_batch, decay):
    model, x, y = cnn_batch
    g = torch.Generator().manual_seed(0)
    di = di_fgsm(model, x, y, eps=0.1, decay=decay, diversity_prob=0.0, generator=g)
    assert torch.equal(di, mi_fgsm(model, x, y, eps=0.1, decay=decay))


def test_di_equals_a_direct_implementation_through_its_transforms(cnn_batch):
    # the same seeded transforms, the gradient taken through model(resize_and_pad(x)) at once
    model, x, y = cnn_batch
    eps, steps, decay = 0.1, 4, 1.0
    views = _draw_views(steps, x.shape[-2:], 1.0, 0.5, torch.Generator().manual_seed(5))
    assert all(v is not None for v in views) and any(v[0] != (8, 8) for v in views)
    x_adv, momentum = x.clone(), torch.zeros_like(x)
    for view in views:
        xg = x_adv.clone().requires_grad_(True)
        loss = F.cross_entropy(model(resize_and_pad(xg, *view, 0.0, 1.0)), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, xg)
        momentum = decay * momentum + grad / per_sample(grad.abs().flatten(1).mean(1), x)
        x_adv = torch.minimum(
            torch.maximum(x_adv + eps / steps * momentum.sign(), x - eps), x + eps
        )
    direct = x_adv.clamp(0, 1)
    g = torch.Generator().manual_seed(5)
    ours = di_fgsm(model, x, y, eps=eps, steps=steps, decay=decay, diversity_prob=1.0,
                   resize_rate=0.5, generator=g)  # fmt: skip
    assert torch.allclose(ours, direct, rtol=0, atol=1e-6)


class Recorder(torch.nn.Module):
    """A fixed-size model (a linear layer on the flat image) that keeps every input it sees."""

    def __init__(self, shape, classes=3):
        super().__init__()
        self.linear = torch.nn.Linear(int(torch.tensor(shape).prod()), classes)
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.linear(x.flatten(1))


def test_diversity_keeps_shape_and_bounds_and_follows_the_generator():
    torch.manual_seed(0)
    x = 0.2 + 0.6 * torch.rand(4, 2, 6, 10)  # not square: the width shrinks in proportion
    y = torch.randint(0, 3, (4,))
    model = Recorder(x.shape[1:])

    def run(seed):
        model.seen.clear()
        g = torch.Generator().manual_seed(seed)
        x_adv = di_fgsm(model, x, y, eps=0.1, steps=6, diversity_prob=1.0, resize_rate=0.5,
                        bounds=(0.0, 1.0), generator=g)  # fmt: skip
        return x_adv, list(model.seen)

    x_adv, seen = run(3)
    assert len(seen) == 6
    for s in seen:
        assert s.shape == x.shape and s.min() >= 0 and s.max() <= 1
    # padded (with the low bound, 0) somewhere: the images were transformed, not passed on
    assert any((s == 0).any() for s in seen)
    again, seen_again = run(3)
    assert torch.equal(again, x_adv) and all(map(torch.equal, seen, seen_again))
    _, other = run(4)
    assert not all(map(torch.equal, seen, other))
    full = resize_and_pad(x, (6, 10), (0, 0), 0.0, 1.0)  # the full size is the identity
    assert torch.equal(full, x)


def test_diversity_draws_cover_every_size_and_offset():
    # 400 steps on 8 x 8 with prob 0.5 and rate 0.5: about half transformed, every height from
    # int(0.5 * 8) = 4 to 8 drawn, and every offset that keeps the image inside the frame
    views = _draw_views(400, (8, 8), 0.5, 0.5, torch.Generator().manual_seed(0))
    drawn = [v for v in views if v is not None]
    assert 160 < len(drawn) < 240
    assert {h for (h, w), _ in drawn} == set(range(4, 9))
    assert all(h == w for (h, w), _ in drawn)  # square images stay square
    for h in range(4, 9):
        offsets = {o for (size, o) in drawn if size[0] == h}
        assert {top for top, _ in offsets} == {left for _, left in offsets} == set(range(9 - h))
    assert all(v is None for v in _draw_views(50, (8, 8), 0.0, 0.5, None))


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("attack", ["mi", "di"])
def test_eps_ball_and_bounds_hold_and_the_model_is_left_as_it_was(cnn_batch, norm, attack):
    model, x, y = cnn_batch
    model.train()  # kept as it was (an attack does not switch modes)
    bounds = (0.1, 0.9)
    x = x.clamp(*bounds)
    eps = torch.tensor([0.0, 0.05, 0.1, 0.3, 0.5, 2.0])  # per sample
    g = torch.Generator().manual_seed(0)
    kw = {"eps": eps, "norm": norm, "steps": 5, "bounds": bounds, "return_queries": True}
    x_adv, queries = (
        mi_fgsm(model, x, y, **kw)
        if attack == "mi"
        else di_fgsm(model, x, y, **kw, decay=1.0, diversity_prob=1.0, generator=g)
    )
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps * (1 + 1e-6)).all() and size[0] == 0
    assert (size[1:] > 0).all()
    assert x_adv.min() >= bounds[0] and x_adv.max() <= bounds[1]
    assert torch.equal(queries, torch.full((6,), 5))
    assert model.training and all(p.grad is None for p in model.parameters())
    model.eval()


def test_bad_input_is_an_error_naming_it(cnn_batch):
    model, x, y = cnn_batch
    with pytest.raises(ValueError, match="eps must be >= 0"):
        mi_fgsm(model, x, y, eps=-0.1)
    with pytest.raises(ValueError, match="norm must be one of"):
        mi_fgsm(model, x, y, eps=0.1, norm="l1")
    with pytest.raises(ValueError, match="decay"):
        mi_fgsm(model, x, y, eps=0.1, decay=-1.0)
    with pytest.raises(ValueError, match="steps"):
        mi_fgsm(model, x, y, eps=0.1, steps=0)
    with pytest.raises(ValueError, match="finite alpha"):
        mi_fgsm(model, x, y, eps=float("inf"))
    for prob in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"diversity_prob must be in \[0, 1\]"):
            di_fgsm(model, x, y, eps=0.1, diversity_prob=prob)
    for rate in (0.0, 1.1):
        with pytest.raises(ValueError, match=r"resize_rate must be in \(0, 1\]"):
            di_fgsm(model, x, y, eps=0.1, resize_rate=rate)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        di_fgsm(torch.nn.Linear(64, 10), x.flatten(1), y, eps=0.1)


def test_transfer_matrix_takes_both_by_name():
    # two random linear models; labels are model a's own predictions (its clean error is 0)
    g = torch.Generator().manual_seed(0)
    a, b = (torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4)) for _ in range(2))
    x = torch.rand(20, 1, 8, 8, generator=g)
    with torch.no_grad():
        y = a(x).argmax(1)
    tables = {
        name: transfer_matrix({"a": a, "b": b}, x, y, attack=name, eps=0.3, seed=1)
        for name in ("mi_fgsm", "di_fgsm")
    }
    for table in tables.values():
        assert table.error.shape == (2, 2) and table.clean_error[0] == 0
        assert table.error[0, 0] > 0.5  # the white-box attack works on its own source
        assert all(0 < d <= 0.3 for d in table.distortion)
    again = transfer_matrix({"a": a, "b": b}, x, y, attack="di_fgsm", eps=0.3, seed=1)
    assert torch.equal(again.fooled, tables["di_fgsm"].fooled)  # seeded transforms
