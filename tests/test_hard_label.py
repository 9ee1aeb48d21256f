"""Hard-label (decision-based) attacks, HopSkipJump and RayS: the closed-form minimal distances of
a linear model reached and never undercut, the model read only through its predicted label,
query budgets, adversarial and in-bounds points, RayS's bounded mode, reproducibility and bad
input."""

import pytest
import torch
from torch import nn

from robustkern.attacks import hop_skip_jump, rays, robust_accuracy_curve
from robustkern.attacks.decisions import Oracle, labels_only

BOX = (-10.0, 10.0)  # wide: the linear model's nearest adversarial points lie inside the box


def linear_problem(n=8, classes=5, shape=(2, 3, 4), seed=0):
    """A float64 linear classifier on (N, 2, 3, 4) inputs and N points far from the box's
    faces, labelled as the model predicts them. Both attacks search locally, and the distance
    to the boundary of a class's polytope has a local minimum on every facet whose nearest
    point to x lies on the polytope. The points kept have a single one: the nearest point of
    every other facet's plane (in L2 and in L-inf) is already outside the polytope."""
    g = torch.Generator().manual_seed(seed)
    d = torch.Size(shape).numel()
    layer = nn.Linear(d, classes).double()
    with torch.no_grad():
        layer.weight.copy_(torch.randn(classes, d, generator=g, dtype=torch.float64))
        layer.bias.copy_(torch.randn(classes, generator=g, dtype=torch.float64))
    model = nn.Sequential(nn.Flatten(), layer).eval()
    x = torch.randn(64 * n, *shape, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    keep = single_local_minimum(model, x, y, "l2") & single_local_minimum(model, x, y, "linf")
    return model, x[keep][:n], y[keep][:n]


def single_local_minimum(model, x, y, norm):
    """(N,) bool: the nearest point (in ``norm``) of every facet's plane but the nearest facet
    is strictly inside another class's half-space."""
    w, b = model[1].weight.detach(), model[1].bias.detach()
    dw = w[y][:, None] - w[None]  # (N, classes, D): f_y - f_j grows along dw_j
    r = facet_distances(model, x, y, norm).clamp_max(1e6)
    towards = dw / dw.norm(dim=2, keepdim=True) if norm == "l2" else dw.sign()
    foot = x.flatten(1)[:, None] - r[..., None] * towards  # (N, classes, D)
    f = foot @ w.T + b  # (N, classes, classes)
    f_y = f.gather(2, y[:, None, None].expand(-1, f.shape[1], 1))
    outside = ((f - f_y) > 1e-9 * f.abs().amax(2, keepdim=True)).any(2)  # f_j = f_y there
    nearest = r.argmin(1)
    outside[torch.arange(len(x)), nearest] = True
    outside[torch.arange(len(x)), y] = True
    return outside.all(1)


def facet_distances(model, x, y, norm):
    """(N, classes): (f_y - f_j) / ||w_y - w_j||_dual, the distance to the half-space where
    class j outscores y (dual of L2: L2; of L-inf: L1); inf at j = y."""
    w, b = model[1].weight.detach(), model[1].bias.detach()
    f = x.flatten(1) @ w.T + b
    dw = w[y][:, None] - w[None]  # (N, classes, D)
    dual = dw.norm(dim=2) if norm == "l2" else dw.abs().sum(2)
    gap = (f.gather(1, y[:, None]) - f) / dual
    return gap.scatter(1, y[:, None], float("inf"))


def closed_form(model, x, y, norm):
    """The distance to the nearest adversarial point of a linear model without a box."""
    return facet_distances(model, x, y, norm).amin(1)


def run(attack, model, x, y, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    return attack(model, x, y, generator=g, return_success=True, return_norms=True,
                  return_queries=True, **kw)  # fmt: skip


CASES = [(hop_skip_jump, "l2"), (hop_skip_jump, "linf"), (rays, "linf")]
IDS = ["hsj-l2", "hsj-linf", "rays"]


def norm_kw(attack, norm):
    return {"norm": norm} if attack is hop_skip_jump else {}


@pytest.mark.parametrize(("attack", "norm"), CASES, ids=IDS)
def test_linear_model_closed_form_distance_is_reached_and_never_undercut(attack, norm):
    model, x, y = linear_problem()
    x_adv, fooled, dist, queries = run(attack, model, x, y, bounds=BOX, **norm_kw(attack, norm))
    exact = closed_form(model, x, y, norm)
    assert fooled.all()
    assert (dist.double() >= exact * (1 - 1e-5)).all(), "closer than the nearest boundary"
    assert (dist.double() <= 1.10 * exact).all(), (dist.double() / exact).tolist()
    assert (model(x_adv).argmax(1) != y).all()
    budget = 5000 if attack is hop_skip_jump else 10000
    assert (queries <= budget).all()


class _LabelsOnlyOutput(torch.Tensor):
    """A model output that gives its shape and its argmax over classes, and raises on any
    other use (a value, a softmax, a comparison, an index)."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        argmax = func is torch.Tensor.argmax and (args[1:] == (1,) or kwargs == {"dim": 1})
        shape = func in (torch.Tensor.dim, torch.Tensor.size, torch.Tensor.shape.__get__,
                         torch.Tensor.__len__)  # fmt: skip
        if not (argmax or shape):
            raise AssertionError(f"the attack read the model's scores through {func}")
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)


class _Guarded(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x).as_subclass(_LabelsOnlyOutput)


class _OneHot(nn.Module):
    """The inner model's decision as one-hot scores times a random positive scale per row."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.g = inner, torch.Generator().manual_seed(123)

    def forward(self, x):
        z = self.inner(x)
        scale = 0.01 + 100 * torch.rand(len(z), 1, generator=self.g, dtype=z.dtype)
        return nn.functional.one_hot(z.argmax(1), z.shape[1]).to(z.dtype) * scale


@pytest.mark.parametrize(("attack", "norm"), CASES, ids=IDS)
def test_model_is_read_only_through_its_predicted_label(attack, norm):
    model, x, y = linear_problem(n=4)
    with pytest.raises(AssertionError, match="read the model's scores"):
        _Guarded(model)(x).softmax(1)  # the guard catches a use of the scores
    with pytest.raises(AssertionError, match="read the model's scores"):
        _Guarded(model)(x).max(1)
    kw = {"bounds": BOX, "queries": 600, **norm_kw(attack, norm)}
    first = run(attack, model, x, y, **kw)
    # the scores cannot be read at all: any use but argmax(1) and the shape raises
    guarded = run(attack, _Guarded(model), x, y, **kw)
    # and scores that carry nothing but the decision give the same result
    one_hot = run(attack, _OneHot(model), x, y, **kw)
    for other in (guarded, one_hot):
        for a, b in zip(first, other, strict=True):
            assert torch.equal(a, b)


def test_labels_only_returns_argmax_and_oracle_counts_per_sample():
    model, x, y = linear_problem(n=3)
    predict = labels_only(_Guarded(model))
    assert torch.equal(predict(x), y)
    oracle = Oracle(_Guarded(model), y, False, x.shape[1:], (0, 4))
    adv = oracle(x.flatten(1)[[0, 0, 2]], torch.tensor([0, 0, 2]))
    assert not adv.any()  # x is classified as y
    assert oracle.used.tolist() == [2, 0, 1]
    fooled, predicted = oracle.clean(x)
    assert not fooled.any() and torch.equal(predicted, y) and oracle.used.tolist() == [2, 0, 1]


@pytest.fixture(scope="module")
def cnn_problem(digits_model):
    """12 digits, the first two relabelled so that the CNN gets them wrong."""
    model, x, y = digits_model
    x, y = x[:12].clone(), y[:12].clone()
    with torch.no_grad():
        y[:2] = (model(x[:2]).argmax(1) + 1) % 10  # labels the model gets wrong
    return model, x, y


@pytest.mark.parametrize(("attack", "norm"), CASES, ids=IDS)
def test_budget_adversarial_points_bounds_and_already_wrong_samples(cnn_problem, attack, norm):
    model, x, y = cnn_problem
    budget = 200
    x_adv, fooled, dist, queries = run(attack, model, x, y, queries=budget,
                                       **norm_kw(attack, norm))  # fmt: skip
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert (queries <= budget).all()
    assert (x_adv >= 0).all() and (x_adv <= 1).all()
    with torch.no_grad():
        pred = model(x_adv).argmax(1)
    assert torch.equal(pred != y, fooled), "success must be the model's decision at x_adv"
    assert fooled[2:].float().mean() > 0.5
    # already misclassified: x itself, distance 0, no query
    assert torch.equal(x_adv[:2], x[:2]) and (dist[:2] == 0).all() and (queries[:2] == 0).all()
    # attacked samples spend (nearly) their whole budget on shrinking the distance
    assert (queries[2:] >= budget // 2).all()
    # distances are the attack's norm of x_adv - x, inf where nothing was found
    delta = (x_adv - x).flatten(1).float()
    size = delta.norm(dim=1) if norm == "l2" else delta.abs().amax(1)
    assert torch.allclose(dist[fooled], size[fooled])
    assert dist[~fooled].isinf().all() and torch.equal(x_adv[~fooled], x[~fooled])
    ((_, robust),) = robust_accuracy_curve(dist, [0.0])
    assert robust == pytest.approx(10 / 12)  # all but the 2 at distance 0


def test_bounded_rays_succeeds_exactly_where_minimum_norm_rays_is_within_eps(cnn_problem):
    model, x, y = cnn_problem
    _, _, free, q_free = run(rays, model, x, y, queries=200)
    eps = free[2:].median().item()  # about half the attacked samples within eps
    per_sample = torch.full((len(x),), eps, dtype=torch.float32)
    for e in (eps, per_sample):
        x_adv, fooled, dist, queries = run(rays, model, x, y, queries=200, eps=e)
        # the same rays in the same order: a sample stops once within eps, and only then
        assert torch.equal(fooled, free <= eps)
        assert (dist[fooled] <= eps).all() and dist[~fooled].isinf().all()
        assert torch.equal(x_adv[~fooled], x[~fooled])
        assert ((x_adv - x).abs().flatten(1).amax(1)[fooled] <= eps + 1e-6).all()
        assert (queries <= q_free).all() and (queries[fooled][2:] < 200).any()


def test_targeted_hop_skip_jump_reaches_the_target_class():
    model, x, y = linear_problem(n=6)
    target = (y + 1) % 5
    x_adv, fooled, dist, _ = run(hop_skip_jump, model, x, target, bounds=BOX,
                                 queries=1500, targeted=True)  # fmt: skip
    assert fooled.all() and (model(x_adv).argmax(1) == target).all()
    # f_t >= f_y at least is needed: no nearer than that half-space
    w, b = model[1].weight.detach(), model[1].bias.detach()
    f = x.flatten(1) @ w.T + b
    rows = torch.arange(len(x))
    lower = (f[rows, y] - f[rows, target]) / (w[y] - w[target]).norm(dim=1)
    assert (dist.double() >= lower * (1 - 1e-5)).all()


class _Bright(nn.Module):
    """Class 1 where the mean pixel exceeds 0.9, else class 0: uniform noise is always class 0."""

    def forward(self, x):
        m = x.flatten(1).mean(1)
        return torch.stack([0.9 - m, m - 0.9], 1)


def test_hop_skip_jump_starts_from_a_batch_image_where_noise_never_fools():
    x = torch.stack([torch.zeros(1, 4, 4), torch.ones(1, 4, 4)]).double()
    y = torch.tensor([0, 1])
    x_adv, fooled, dist, queries = run(hop_skip_jump, _Bright(), x, y, queries=1000)
    assert fooled.all() and queries[0] <= 1000 and x_adv[0].mean() > 0.9
    assert queries[0] > 100  # the noise tries were spent before the batch's other image
    exact = 0.9 * 4  # from black to the half-space mean > 0.9: 0.9 sqrt(16)
    assert exact * (1 - 1e-6) <= dist[0].item() <= 1.1 * exact


@pytest.mark.parametrize(("attack", "norm"), CASES, ids=IDS)
def test_same_generator_same_result_and_mode_untouched(attack, norm):
    model, x, y = linear_problem(n=4)
    model.train()
    kw = {"bounds": BOX, "queries": 300, **norm_kw(attack, norm)}
    a, b = run(attack, model, x, y, seed=1, **kw), run(attack, model, x, y, seed=1, **kw)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    c = run(attack, model, x, y, seed=2, **kw)
    assert not torch.equal(a[0], c[0])
    assert model.training
    empty = attack(model, x[:0], y[:0], bounds=BOX, return_norms=True, return_queries=True)
    assert empty[0].shape == (0, 2, 3, 4) and empty[1].shape == empty[2].shape == (0,)


def test_bad_inputs_give_clear_errors():
    model, x, y = linear_problem(n=2)
    with pytest.raises(ValueError, match="norm"):
        hop_skip_jump(model, x, y, norm="l1", bounds=BOX)
    for attack in (hop_skip_jump, rays):
        with pytest.raises(ValueError, match="queries"):
            attack(model, x, y, queries=0, bounds=BOX)
        with pytest.raises(ValueError, match="int64"):
            attack(model, x, y.int(), bounds=BOX)
        with pytest.raises(ValueError, match="bounds"):
            attack(model, x, y)  # the inputs lie outside (0, 1)
        with pytest.raises(ValueError, match="labels must lie"):
            attack(model, x, y + 5, bounds=BOX)
        with pytest.raises(ValueError, match="logits of shape"):
            attack(nn.Flatten(0), x, y, bounds=BOX)
    with pytest.raises(ValueError, match="eps"):
        rays(model, x, y, eps=-0.1, bounds=BOX)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        rays(model, x, y, eps=torch.ones(3), bounds=BOX)
