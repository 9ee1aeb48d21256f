"""AttackBench's local optimality: a two-attack example worked out by hand, the exact step-curve
areas against a dense Riemann sum, the ensemble's best attack at 1, order between attacks,
failures and misclassified clean points, bad input."""

import math

import pytest
import torch

from robustkern.evaluation import optimality

INF = math.inf


def test_two_attacks_worked_out_by_hand():
    # N = 4, d_max = 2; point 3 is misclassified (its reported distances count as 0).
    #   A: 0.5, 1.0, inf, (0.7)   robust accuracy 3/4 on [0, .5), 2/4 on [.5, 1), 1/4 on [1, 2]
    #      area 3/4 * .5 + 2/4 * .5 + 1/4 * 1 = 0.875
    #   B: 1.0, .25, 1.5, (0)     3/4 on [0, .25), 2/4 on [.25, 1), 1/4 on [1, 1.5), 0 after
    #      area 3/4 * .25 + 2/4 * .75 + 1/4 * .5 = 0.6875
    #   ensemble: .5, .25, 1.5    3/4 on [0, .25), 2/4 on [.25, .5), 1/4 on [.5, 1.5), 0 after
    #      area 3/4 * .25 + 2/4 * .25 + 1/4 * 1 = 0.5625
    #   nothing found: 3/4 on [0, 2], area 1.5
    #   A: (1.5 - .875) / (1.5 - .5625) = 2/3; B: (1.5 - .6875) / .9375 = 13/15
    correct = torch.tensor([True, True, True, False])
    d = {"A": torch.tensor([0.5, 1.0, INF, 0.7]), "B": torch.tensor([1.0, 0.25, 1.5, 0.0])}
    scores = optimality(d, correct, 2.0)
    assert list(scores) == ["A", "B"]
    assert scores["A"] == pytest.approx(2 / 3, abs=1e-12)
    assert scores["B"] == pytest.approx(13 / 15, abs=1e-12)


def random_distances(g, n=50):
    d = torch.rand(n, generator=g, dtype=torch.float64) * 3
    d[torch.rand(n, generator=g) < 0.1] = INF
    return d


def test_exact_areas_match_a_dense_riemann_sum():
    g = torch.Generator().manual_seed(0)
    correct = torch.rand(50, generator=g) < 0.8
    d = {name: random_distances(g) for name in "abc"}
    d_max = 2.0
    grid = torch.linspace(0, d_max, 200_001, dtype=torch.float64)[:-1] + d_max / 400_000

    def area(dist):  # the robust-accuracy curve at midpoints of a fine grid
        dist = dist.masked_fill(~correct, 0.0)
        return (dist[None, :] > grid[:, None]).double().mean(1).mean().item() * d_max

    best = area(torch.stack(list(d.values())).amin(0))
    worst = correct.double().mean().item() * d_max
    scores = optimality(d, correct, d_max)
    for name, dist in d.items():
        assert scores[name] == pytest.approx((worst - area(dist)) / (worst - best), abs=1e-4)


def test_an_attack_as_good_as_the_ensemble_scores_one():
    g = torch.Generator().manual_seed(1)
    correct = torch.rand(50, generator=g) < 0.8
    a, b = random_distances(g), random_distances(g)
    best = torch.minimum(a, b)
    scores = optimality({"a": a, "b": b, "best": best}, correct, 2.5)
    assert scores["best"] == 1.0
    assert scores["a"] < 1 and scores["b"] < 1
    assert optimality({"alone": a}, correct, 2.5) == {"alone": 1.0}


def test_an_attack_never_worse_than_another_scores_at_least_as_much():
    g = torch.Generator().manual_seed(2)
    correct = torch.ones(50, dtype=torch.bool)
    for _ in range(5):
        worse = random_distances(g)
        better = worse * torch.rand(50, generator=g, dtype=torch.float64)
        other = random_distances(g)
        scores = optimality({"worse": worse, "better": better, "other": other}, correct, 2.0)
        assert scores["better"] >= scores["worse"]
        assert 0 <= scores["worse"] <= 1


def test_failures_count_at_d_max_and_finding_nothing_scores_zero():
    correct = torch.tensor([True, True, True])
    found = torch.tensor([0.2, 0.4, 0.6])
    d = {
        "found": found,
        "inf": torch.tensor([0.2, 0.4, INF]),
        "far": torch.tensor([0.2, 0.4, 5.0]),  # beyond d_max: as good as a failure
        "nothing": torch.full((3,), INF),
    }
    scores = optimality(d, correct, 1.0)
    assert scores["found"] == 1.0
    assert scores["inf"] == scores["far"] == pytest.approx(1 - 0.4 / 1.8)
    assert scores["nothing"] == 0.0


def test_misclassified_points_count_at_zero_whatever_is_reported():
    correct = torch.tensor([True, False, True, False])
    a = torch.tensor([0.5, 0.0, 1.0, 0.0])
    b = torch.tensor([1.0, 0.0, 0.5, 0.0])
    reported = torch.tensor([0.5, 3.0, 1.0, INF])  # a's distances, nonsense where misclassified
    scores = optimality({"a": a, "b": b, "reported": reported}, correct, 2.0)
    assert scores["reported"] == scores["a"]
    # worst area: only the 2 correct points, 2/4 * 2 = 1; ensemble 0.5 * 2 / 4 = 0.25;
    # a: (0.5 + 1) / 4 = 0.375 -> (1 - 0.375) / 0.75
    assert scores["a"] == pytest.approx(0.625 / 0.75)


def test_nothing_to_separate_gives_nan():
    none_correct = torch.zeros(3, dtype=torch.bool)
    scores = optimality({"a": torch.zeros(3)}, none_correct, 1.0)
    assert math.isnan(scores["a"])
    all_failed = optimality({"a": torch.full((3,), INF)}, torch.ones(3, dtype=torch.bool), 1.0)
    assert math.isnan(all_failed["a"])


@pytest.mark.parametrize(
    ("distances", "correct", "d_max", "message"),
    [
        ({}, torch.ones(3, dtype=torch.bool), 1.0, "empty"),
        ({"a": torch.ones(2)}, torch.ones(3, dtype=torch.bool), 1.0, r"shape \(3,\)"),
        ({"a": torch.ones(3, 1)}, torch.ones(3, dtype=torch.bool), 1.0, r"shape \(3,\)"),
        ({"a": torch.tensor([1.0, -0.1, 1.0])}, torch.ones(3, dtype=torch.bool), 1.0, ">= 0"),
        ({"a": torch.tensor([1.0, math.nan, 1.0])}, torch.ones(3, dtype=torch.bool), 1.0, ">= 0"),
        ({"a": torch.ones(3)}, torch.ones(3), 1.0, "bool"),
        ({"a": torch.ones(3)}, torch.ones(3, dtype=torch.bool), 0.0, "d_max"),
        ({"a": torch.ones(3)}, torch.ones(3, dtype=torch.bool), -1.0, "d_max"),
        ({"a": torch.ones(3)}, torch.ones(3, dtype=torch.bool), INF, "d_max"),
    ],
)
def test_bad_input_is_refused(distances, correct, d_max, message):
    with pytest.raises(ValueError, match=message):
        optimality(distances, correct, d_max)
