"""FGSM, PGD and evaluate: constraints, strength, side effects, autocast, layouts, bad input."""

import copy
import importlib.util
import math
import warnings

import pytest
import torch

import robustkern
from robustkern import models
from robustkern.attacks import GraphedPGD, fgsm, pgd
from tests.conftest import accuracy


def test_pgd_respects_the_ball_and_bounds(digits_model):
    model, x, y = digits_model
    for norm, eps in (("linf", 0.1), ("l2", 0.8)):
        x_adv = pgd(model, x, y, eps=eps, norm=norm, steps=5)
        d = (x_adv - x).flatten(1)
        dist = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
        assert (dist <= eps + 1e-5).all()
        assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_stronger_settings_do_not_weaken(digits_model):
    model, x, y = digits_model
    g = torch.Generator().manual_seed(1)
    clean = accuracy(model, x, y)
    acc_fgsm = accuracy(model, fgsm(model, x, y, eps=0.1), y)
    acc_pgd = accuracy(model, pgd(model, x, y, eps=0.1, steps=10, generator=g), y)
    acc_restarts = accuracy(model, pgd(model, x, y, eps=0.1, steps=10, restarts=3, generator=g), y)
    assert clean > 0.9
    assert acc_pgd < clean - 0.2  # the attack does something
    assert acc_pgd <= acc_fgsm + 0.01
    assert acc_restarts <= acc_pgd + 0.005


def test_unbounded_attack_reaches_full_error(digits_model):
    model, x, y = digits_model
    assert accuracy(model, pgd(model, x, y, eps=1.0, steps=20), y) == 0.0


def test_targeted_pgd_hits_targets(digits_model):
    model, x, y = digits_model
    target = (y + 1) % 10
    x_adv = pgd(model, x, target, eps=0.3, steps=20, targeted=True)
    with torch.no_grad():
        hit = (model(x_adv).argmax(1) == target).float().mean().item()
    assert hit > 0.9


def test_margin_loss_is_as_strong(digits_model):
    model, x, y = digits_model
    ce = accuracy(model, pgd(model, x, y, eps=0.1, steps=20), y)
    margin = accuracy(model, pgd(model, x, y, eps=0.1, steps=20, loss="margin"), y)
    assert abs(ce - margin) < 0.1


def test_per_sample_eps_in_one_batch(digits_model):
    model, x, y = digits_model
    eps = torch.tensor([0.0, 0.05, 0.1, 0.3]).repeat_interleave(50)
    x_adv = pgd(model, x, y, eps=eps, steps=10)
    assert ((x_adv - x).flatten(1).abs().amax(1) <= eps + 1e-6).all()
    assert torch.equal(x_adv[:50], x[:50])  # eps 0: nothing moves
    fooled = (model(x_adv).argmax(1) != y).view(4, 50).float().mean(1)
    assert fooled[3] > fooled[1]


def test_early_stop_gives_the_same_robust_accuracy(digits_model):
    model, x, y = digits_model
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    full = robustkern.evaluate(
        model, (x, y), "pgd", eps=0.1, early_stop=False, generator=g1, progress=False
    )
    early = robustkern.evaluate(model, (x, y), "pgd", eps=0.1, generator=g2, progress=False)
    assert early.clean_accuracy == full.clean_accuracy
    # early stopping checks every iterate, so it is never weaker
    assert early.robust_accuracy <= full.robust_accuracy + 0.005
    assert torch.equal(early.success, early.clean_correct & ~early.robust_correct)


@pytest.mark.parametrize("norm, eps", [("linf", 0.05), ("l2", 1.0)])
@pytest.mark.parametrize("early_stop", [True, False])
def test_shards_give_the_whole_batch_result(early_stop, norm, eps):
    # Two data-parallel ranks' shards, each drawing starts as for the whole batch, give the
    # one-process result, restarts and early stopping included. Only the model's own float64
    # conv backward rounds differently with the batch size (last bits), hence the tolerance.
    torch.manual_seed(0)
    model = models.small_cnn(1, 10).double().eval()
    x, y = torch.rand(24, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (24,))
    kwargs = dict(eps=eps, norm=norm, steps=4, restarts=3, early_stop=early_stop,
                  return_success=True)  # fmt: skip

    def attack(rows, shard=None):
        g = torch.Generator().manual_seed(1)
        return pgd(model, x[rows], y[rows], generator=g, shard=shard, **kwargs)

    whole = attack(slice(None))
    parts = [attack(slice(a, b), shard=(a, 24)) for a, b in ((0, 10), (10, 24))]
    torch.testing.assert_close(torch.cat([p[0] for p in parts]), whole[0], rtol=0, atol=1e-12)
    assert torch.equal(torch.cat([p[1] for p in parts]), whole[1])
    assert 0 < whole[1].sum() < 24  # restarts had robust samples to work on


@pytest.mark.parametrize(("early_stop", "restarts"), [(True, 1), (False, 1), (False, 2)])
def test_returned_success_matches_the_model(digits_model, early_stop, restarts):
    model, x, y = digits_model
    x_adv, success = pgd(
        model,
        x,
        y,
        eps=0.1,
        steps=5,
        restarts=restarts,
        early_stop=early_stop,
        return_success=True,
    )
    with torch.no_grad():
        assert torch.equal(success, model(x_adv).argmax(1) != y)
    assert 0 < success.sum() < len(y)


def test_no_side_effects_on_the_model(digits_model):
    model, x, y = digits_model
    model = copy.deepcopy(model).train()
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    pgd(model, x[:8], y[:8], eps=0.1, steps=3)
    fgsm(model, x[:8], y[:8], eps=0.1)
    assert model.training
    assert all((p.grad == 7.0).all() for p in model.parameters())
    model.eval()
    robustkern.evaluate(model.train(), (x[:8], y[:8]), eps=0.1, steps=2, progress=False)
    assert model.training  # evaluate restores the mode it found


def test_evaluate_restores_each_layers_own_mode(digits_model):
    """A model trained with some layers kept in eval mode on purpose (frozen BatchNorm or
    dropout) gets those layers back in eval mode, not switched to train with the rest."""
    model, x, y = digits_model
    model = copy.deepcopy(model).train()
    frozen = next(iter(model.children())).eval()
    modes = {m: m.training for m in model.modules()}
    robustkern.evaluate(model, (x[:8], y[:8]), eps=0.1, steps=2, progress=False)
    assert model.training and not frozen.training
    assert {m: m.training for m in model.modules()} == modes


def test_autocast_bfloat16_and_channels_last():
    torch.manual_seed(0)
    model = models.small_resnet(3, 10).eval()
    x = torch.rand(8, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (8,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_adv = pgd(model, x, y, eps=8 / 255, steps=3)
    assert x_adv.dtype == torch.float32
    assert x_adv.is_contiguous(memory_format=torch.channels_last)
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6
    assert (x_adv != x).any()


def test_empty_batch():
    model = models.fc(4, 3, hidden=())
    x, y = torch.rand(0, 4), torch.zeros(0, dtype=torch.int64)
    assert pgd(model, x, y, eps=0.1).shape == (0, 4)


def test_nan_gradients_do_not_spread():
    class NanAtZero(torch.nn.Module):  # sqrt has an infinite/NaN gradient at 0
        def forward(self, x):
            return torch.stack([x.sqrt().sum(1), -x.sum(1)], 1)

    x = torch.zeros(4, 5)
    x_adv = pgd(
        NanAtZero(), x, torch.zeros(4, dtype=torch.int64), eps=0.1, steps=3, random_start=False
    )
    assert not x_adv.isnan().any()


BAD = [
    ("labels must lie in", dict(y=torch.full((4,), 10)), {}),
    ("labels must lie in", dict(y=torch.full((4,), -1)), {}),
    ("eps must be >= 0", {}, dict(eps=-0.1)),
    ("needs lo <= hi", {}, dict(bounds=(1.0, 0.0))),
    ("y must have shape", dict(y=torch.zeros(3, dtype=torch.int64)), {}),
    ("y must be an int64 tensor", dict(y=torch.zeros(4)), {}),
    ("y must be an int64 tensor", dict(y=torch.zeros(4, dtype=torch.int32)), {}),
    ("eps=inf needs a finite alpha", {}, dict(eps=float("inf"))),
    ("alpha; got inf", {}, dict(alpha=float("inf"))),
    ("norm must be one of", {}, dict(norm="l0")),
    ("per-sample eps must have shape", {}, dict(eps=torch.ones(3))),
    ("x must lie within bounds", dict(x=torch.rand(4, 6) + 0.5), {}),
    ("x must lie within bounds", dict(x=torch.rand(4, 6) - 0.5), dict(bounds=(0.0, 2.0))),
    ("x contains 24 NaN value.* in 4 of 4 images", dict(x=torch.full((4, 6), float("nan"))), {}),
    (
        "1 inf value.* in 1 of 4 images \\(indices 2\\)",
        dict(
            x=torch.rand(4, 6).index_put_(
                (torch.tensor(2), torch.tensor(3)), torch.tensor(math.inf)
            )
        ),
        dict(bounds=(-math.inf, math.inf)),
    ),
    ("look like 0..255 pixel values", dict(x=torch.rand(4, 6) * 255), {}),
    ("look normalised", dict(x=torch.rand(4, 6) - 0.5), {}),
]


@pytest.mark.parametrize(("message", "inputs", "kwargs"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_clear_error(message, inputs, kwargs):
    model = models.fc(6, 10, hidden=(8,))
    args = {"x": torch.rand(4, 6), "y": torch.zeros(4, dtype=torch.int64), **inputs}
    with pytest.raises(ValueError, match=message):
        pgd(model, args["x"], args["y"], **{"eps": 0.1, **kwargs})


def test_unbounded_pgd_takes_an_explicit_alpha_and_fgsm_refuses_inf():
    model = models.fc(6, 10, hidden=(8,))
    x, y = torch.rand(4, 6), torch.zeros(4, dtype=torch.int64)
    x_adv = pgd(model, x, y, eps=float("inf"), alpha=0.1, steps=3)
    assert x_adv.isfinite().all() and x_adv.min() >= 0 and x_adv.max() <= 1
    with pytest.raises(ValueError, match="needs a finite eps"):
        fgsm(model, x, y, eps=float("inf"))


@pytest.mark.parametrize("name", ["fgsm", "pgd", "apgd", "adam_pgd", "square", "min_norm", "lbfgs"])
def test_every_attack_refuses_inputs_outside_the_bounds(name):
    # Each step clips into the bounds, so such an x_adv would lie farther than eps from x.
    model = torch.nn.Sequential(torch.nn.Flatten(), models.fc(16, 10, hidden=(8,)))
    x, y = torch.randn(4, 1, 4, 4), torch.zeros(4, dtype=torch.int64)  # square needs images
    attack = getattr(robustkern.attacks, name)
    kwargs = {"min_norm": {"norm": "linf"}, "lbfgs": {}}.get(name, {"eps": 0.1})
    with pytest.raises(ValueError, match="x must lie within bounds"):
        attack(model, x, y, **kwargs)
    x_adv = attack(model, x, y, bounds=(float(x.min()), float(x.max())), **kwargs)
    assert x_adv.shape == x.shape  # normalised inputs work with their own bounds


def test_graphed_pgd_needs_cuda_tensors():
    model = models.fc(6, 10, hidden=(8,))
    with pytest.raises(ValueError, match="x must be on a GPU"):
        GraphedPGD(model, torch.rand(4, 6), torch.zeros(4, dtype=torch.int64), eps=0.1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("norm, eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_graphed_pgd_replays_what_pgd_computes(norm, eps):
    torch.manual_seed(0)
    model = models.small_resnet(3, 10).cuda().eval()
    x = torch.rand(2, 16, 3, 16, 16, device="cuda")
    y = torch.randint(0, 10, (2, 16), device="cuda")
    kwargs = dict(eps=eps, norm=norm, steps=5)
    attack = GraphedPGD(model, x[0], y[0], **kwargs)

    def differ(a, b):  # fraction of elements apart (a near-zero gradient may flip a sign)
        return (a - b).abs().gt(1e-5).float().mean().item()

    for xb, yb in zip(x, y, strict=True):  # each replay on a new batch
        got = attack(xb, yb, generator=torch.Generator("cuda").manual_seed(1))
        want = pgd(model, xb, yb, generator=torch.Generator("cuda").manual_seed(1), **kwargs)
        assert differ(got, want) < 1e-3
    with pytest.raises(ValueError, match="captured for x of shape"):
        attack(x[0, :8], y[0, :8])
    with pytest.raises(ValueError, match="labels must lie in"):
        attack(x[0], torch.full_like(y[0], 10))


def test_empty_model_output_is_a_clear_error():
    model = torch.nn.Linear(6, 0)
    with pytest.raises(ValueError, match="must return logits of shape"):
        pgd(model, torch.rand(4, 6), torch.zeros(4, dtype=torch.int64), eps=0.1)


@pytest.mark.skipif(
    importlib.util.find_spec("torchattacks") is None,
    reason="torchattacks not installed (pip install --no-deps torchattacks)",
)
def test_never_weaker_than_torchattacks(digits_model):
    import torchattacks

    model, x, y = digits_model
    ours, theirs = [], []
    for seed in range(3):
        torch.manual_seed(seed)
        ours.append(accuracy(model, pgd(model, x, y, eps=0.1, steps=10, alpha=0.025), y))
        torch.manual_seed(seed)
        attack = torchattacks.PGD(model, eps=0.1, alpha=0.025, steps=10, random_start=True)
        theirs.append(accuracy(model, attack(x, y), y))
    assert sum(ours) / 3 <= sum(theirs) / 3 + 0.005


def test_train_mode_batchnorm_model_warns_once_and_keeps_its_mode():
    from robustkern.checks import TrainModeWarning
    from robustkern.training import adversarial_loss

    x, y = torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.int64)
    model = models.small_resnet(1, 10).train()
    with pytest.warns(TrainModeWarning, match="train mode and has BatchNorm2d"):
        pgd(model, x, y, eps=0.1, steps=2)
    assert model.training  # the documented contract: the caller's mode is kept
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pgd(model, x, y, eps=0.1, steps=2)  # once per model
        adversarial_loss(models.small_resnet(1, 10).train(), x, y, eps=0.1, steps=2)  # training
        pgd(models.small_resnet(1, 10).eval(), x, y, eps=0.1, steps=2)
        pgd(models.small_cnn(1, 10).train(), x, y, eps=0.1, steps=2)  # nothing stochastic
    with pytest.warns(TrainModeWarning, match="Dropout"):
        fgsm(torch.nn.Sequential(models.fc(64, 10), torch.nn.Dropout(0.5)).train(), x, y, eps=0.1)


def test_a_model_returning_probabilities_is_told_to_pass_logits():
    from robustkern.checks import ProbabilityOutputWarning

    model = torch.nn.Sequential(models.fc(6, 10, hidden=(8,)), torch.nn.Softmax(1))
    x, y = torch.rand(4, 6), torch.zeros(4, dtype=torch.int64)
    with pytest.warns(ProbabilityOutputWarning, match="returns probabilities"):
        pgd(model, x, y, eps=0.1, steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pgd(models.fc(6, 10, hidden=(8,)), x, y, eps=0.1, steps=1)  # logits


ALL_ATTACKS = {
    "pgd": lambda m, x, y, **k: robustkern.attacks.pgd(m, x, y, eps=0.2, steps=3, **k),
    "pgd-early": lambda m, x, y, **k: robustkern.attacks.pgd(m, x, y, eps=0.2, steps=3,
                                                              early_stop=True, **k),
    "apgd": lambda m, x, y, **k: robustkern.attacks.apgd(m, x, y, eps=0.2, steps=3, **k),
    "adam": lambda m, x, y, **k: robustkern.attacks.adam_pgd(m, x, y, eps=0.2, steps=3, **k),
    "square": lambda m, x, y, **k: robustkern.attacks.square(m, x, y, eps=0.2, queries=5, **k),
    "fgsm": lambda m, x, y, **k: fgsm(m, x, y, eps=0.2, **k),
    "min_norm": lambda m, x, y, **k: robustkern.attacks.min_norm(m, x, y, norm="linf", steps=3,
                                                                  **k),
    "lbfgs": lambda m, x, y, **k: robustkern.attacks.lbfgs(m, x, y, search_steps=2, max_iter=3,
                                                            **k),
}  # fmt: skip


@pytest.mark.parametrize("name", list(ALL_ATTACKS))
def test_every_attack_returns_its_extras_the_same_way(name, digits_model):
    """x_adv alone, or (x_adv, success, norms, queries) for the flags set, in that order."""
    model, x, y = digits_model
    x, y = x[:12], y[:12]
    run = ALL_ATTACKS[name]
    torch.manual_seed(0)
    alone = run(model, x, y)
    assert isinstance(alone, torch.Tensor) and alone.shape == x.shape
    torch.manual_seed(0)
    x_adv, success, norms, queries = run(model, x, y, return_success=True, return_norms=True,
                                         return_queries=True)  # fmt: skip
    torch.manual_seed(0)
    (only_queries,) = run(model, x, y, return_queries=True)[1:]
    assert torch.equal(queries, only_queries)
    with torch.no_grad():
        assert torch.equal(success, model(x_adv).argmax(1) != y)
    distance = (x_adv - x).flatten(1).abs().amax(1) if name != "lbfgs" else (
        (x_adv - x).flatten(1).norm(dim=1))  # fmt: skip
    assert torch.allclose(norms[success], distance[success], atol=1e-6)
    assert norms[~success].isinf().all()
    assert queries.dtype == torch.int64 and (queries >= 0).all() and (queries > 0).any()
