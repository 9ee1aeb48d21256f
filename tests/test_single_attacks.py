"""Every single attack by name through ``evaluate`` (``evaluation.single``): the norms each
takes, and minimum-norm attacks judged at eps by their distance."""

import pytest
import torch
from torch import nn

import robustkern
from robustkern import attacks
from robustkern.evaluation.single import SINGLE, single_outcome


@pytest.fixture(scope="module")
def linear():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    x = torch.rand(24, 1, 4, 4)
    with torch.no_grad():
        y = model(x).argmax(1)  # all correct: evaluate attacks the same batch as a direct call
    return model, x, y


MINIMUM = [
    ("cw", "l2", {"steps": 30, "binary_steps": 4, "initial_const": 1.0}),
    ("ddn", "l2", {"steps": 30}),
    ("deepfool", "linf", {}),
    ("min_norm", "l2", {"steps": 30}),
]


@pytest.mark.parametrize(("name", "norm", "options"), MINIMUM)
def test_minimum_norm_attack_counts_where_its_distance_is_within_eps(linear, name, norm, options):
    model, x, y = linear
    own = {**options, **({"norm": norm} if SINGLE[name].takes("norm") else {})}
    _, dist = SINGLE[name].fn(model, x, y, **own, return_norms=True)
    eps = float(dist[dist.isfinite()].median())  # half the points within it
    result = robustkern.evaluate(model, (x, y), name, eps=eps, norm=norm, progress=False,
                                 **options)  # fmt: skip
    assert torch.equal(result.robust_correct, dist > eps)
    assert 0 < result.robust_accuracy < 1
    x_adv, fooled = single_outcome(name, {"eps": eps, "norm": norm, **options})(model, x, y)
    size = (x_adv - x).flatten(1).norm(p=float("inf") if norm == "linf" else 2, dim=1)
    assert torch.equal(fooled, dist <= eps)
    assert bool((size[fooled] <= eps).all()) and torch.equal(x_adv[~fooled], x[~fooled])
    with torch.no_grad():
        assert bool((model(x_adv[fooled]).argmax(1) != y[fooled]).all())


HARD_LABEL = [("rays", {"queries": 200}), ("hop_skip_jump", {"queries": 300})]


@pytest.mark.parametrize(("name", "options"), HARD_LABEL)
def test_hard_label_attacks_run_by_name(linear, name, options):
    model, x, y = linear
    g = torch.Generator().manual_seed(0)
    result = robustkern.evaluate(model, (x, y), name, eps=0.3, norm="linf", generator=g,
                                 progress=False, **options)  # fmt: skip
    assert result.params["norm"] == "linf"
    assert 0 <= result.robust_accuracy < result.clean_accuracy == 1


def test_each_attack_says_which_norms_it_takes(linear):
    model, x, y = linear
    with pytest.raises(ValueError, match="cw attacks in l2, not 'linf'"):
        robustkern.evaluate(model, (x, y), "cw", eps=0.5, norm="linf", progress=False)
    with pytest.raises(ValueError, match="fgsm attacks in linf, not 'l1'"):
        robustkern.evaluate(model, (x, y), "fgsm", eps=0.1, norm="l1", progress=False)
    with pytest.raises(ValueError, match="ddn needs eps="):
        robustkern.evaluate(model, (x, y), "ddn", progress=False)
    # the attack's own norm when none is given, recorded with the result
    result = robustkern.evaluate(model, (x, y), "ddn", eps=0.1, steps=5, progress=False)
    assert result.params["norm"] == "l2"
    assert set(SINGLE) <= set(robustkern.evaluation.ATTACKS)
    assert all(callable(getattr(attacks, e.fn.__name__)) for e in SINGLE.values())


@pytest.mark.parametrize("name", ["mi_fgsm", "di_fgsm"])
def test_transfer_attacks_run_by_name_as_their_function(linear, name):
    model, x, y = linear
    x4 = x.repeat(1, 1, 2, 2)  # 8x8 images: room for DI's resize
    big = nn.Sequential(nn.AvgPool2d(2), model).eval()
    options = {"eps": 0.2, "norm": "l2", "steps": 5}
    if name == "di_fgsm":
        options["generator"] = torch.Generator().manual_seed(0)
    result = robustkern.evaluate(big, (x4, y), name, progress=False, **options)
    if name == "di_fgsm":
        options["generator"] = torch.Generator().manual_seed(0)
    _, fooled = SINGLE[name].fn(big, x4, y, **options, return_success=True)
    assert torch.equal(result.robust_correct, ~fooled)


def test_sparse_rs_reads_eps_as_its_pixel_budget(linear):
    model, x, y = linear
    g = torch.Generator().manual_seed(0)
    result = robustkern.evaluate(model, (x, y), "sparse_rs", eps=3, queries=50, generator=g,
                                 progress=False)  # fmt: skip
    assert result.params["norm"] == "l0"
    g = torch.Generator().manual_seed(0)
    _, fooled = attacks.sparse_rs(model, x, y, pixels=3, queries=50, generator=g,
                                  return_success=True)  # fmt: skip
    assert torch.equal(result.robust_correct, ~fooled)
    with pytest.raises(ValueError, match="changed pixels: one whole number"):
        robustkern.evaluate(model, (x, y), "sparse_rs", eps=2.5, progress=False)
    with pytest.raises(ValueError, match="sparse_rs attacks in l0, not 'linf'"):
        robustkern.evaluate(model, (x, y), "sparse_rs", eps=2, norm="linf", progress=False)
