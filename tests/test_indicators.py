"""Gradient-masking indicators: deliberately masked models trip the matching indicator, an
honest small CNN trips none."""

import copy

import pytest
import torch
from torch import nn

from robustkern.attacks import pgd
from robustkern.attacks.gradients import GradientUnavailable
from robustkern.evaluation import indicators

FAST = {"eps": 0.1, "steps": 30, "queries": 300, "samples": 8}


class Wrapped(nn.Module):
    def __init__(self, model, forward):
        super().__init__()
        self.model, self.fn = model, forward

    def forward(self, x):
        return self.fn(self.model, x)


MASKED = {
    # a quantising input layer: torch.round has a zero gradient everywhere
    "zero gradients": lambda m, x: m(torch.round(x * 4) / 4),
    # probabilities with a saturated softmax instead of logits
    "softmax outputs": lambda m, x: torch.softmax(10 * m(x), dim=1),
    # fresh input noise in every forward pass
    "randomised outputs": lambda m, x: m(x + 0.2 * torch.randn_like(x)),
    # the forward cuts the input out of the graph
    "zero gradients ": lambda m, x: m(x.detach()),
}


def verdicts(model, x, y, **kwargs):
    return {i.name: i for i in indicators(model, x, y, **{**FAST, **kwargs})}


def test_an_honest_cnn_trips_none(digits_model):
    model, x, y = digits_model
    found = verdicts(model, x[:100], y[:100])
    assert len(found) == 11
    assert all(i.verdict == "pass" for i in found.values()), [str(i) for i in found.values()]
    assert "reaches chance" in found["robust accuracy vs eps"].detail


def test_a_batchnorm_model_left_in_train_mode_is_scored_in_eval_mode(digits_model):
    # Train-mode BatchNorm normalises by the batch: its first forward differed from the eval-mode
    # ones (a false "randomised outputs") and updated the running statistics.
    model, x, y = digits_model
    with_bn = nn.Sequential(model[0], nn.BatchNorm2d(model[0].out_channels), *model[1:])
    with torch.no_grad():  # running stats unlike the batch's, so train mode shows
        with_bn[1].running_mean.fill_(0.3)
    with_bn.train()
    before = copy.deepcopy(with_bn.state_dict())
    found = verdicts(with_bn, x[:60], y[:60])
    assert found["randomised outputs"].verdict == "pass", found["randomised outputs"].detail
    assert with_bn.training
    for k, v in with_bn.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("trap", sorted(MASKED))
def test_masked_models_trip_the_matching_indicator(digits_model, trap):
    model, x, y = digits_model
    found = verdicts(Wrapped(model, MASKED[trap]), x[:100], y[:100])
    assert found[trap.strip()].verdict == "fail", str(found[trap.strip()])
    if trap.startswith("zero"):  # masked gradients: the attacks that need none do better
        assert found["unbounded attack"].verdict == "fail"
        assert found["black box beats white box"].verdict == "fail"
        # labels alone see the quantised model too: fewer points fall than to Square
        assert found["hard-label black box beats white box"].verdict != "pass"
    if trap == "randomised outputs":
        assert found["silent success"].verdict == "fail"


def test_transfer_beats_a_masked_model(digits_model):
    model, x, y = digits_model
    masked = Wrapped(model, MASKED["zero gradients"])
    found = verdicts(masked, x[:100], y[:100], surrogate=model)
    assert found["transfer beats white box"].verdict == "fail"
    honest = verdicts(model, x[:60], y[:60], surrogate=model)
    assert honest["transfer beats white box"].verdict == "pass"


def test_single_step_and_every_result_reads_well(digits_model):
    model, x, y = digits_model
    found = indicators(model, x[:40], y[:40], norm="l2", eps=0.8, steps=20, queries=100)
    for i in found:
        assert i.verdict in ("pass", "warn", "fail") and i.detail and str(i).startswith("[")
    assert (
        "one L2 gradient step" in {i.name: i for i in found}["single step beats iterative"].detail
    )


def test_attacks_name_a_missing_gradient_and_bad_input_is_named(digits_model):
    model, x, y = digits_model
    with pytest.raises(GradientUnavailable, match="no gradient with respect to its input"):
        pgd(Wrapped(model, MASKED["zero gradients "]), x[:4], y[:4], eps=0.1)
    with pytest.raises(ValueError, match="eps"):
        indicators(model, x, y, eps=float("inf"))
    with pytest.raises(ValueError, match="norm"):
        indicators(model, x, y, eps=0.1, norm="l0")
