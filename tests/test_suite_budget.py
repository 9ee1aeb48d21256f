"""The suite's time budget: the planner's arithmetic on synthetic costs (no timing), budget
strings, and real runs: what a tiny budget skips and says, the plan in the report."""

import json

import pytest
import torch

from robustkern import data, models, suite
from robustkern.suite import budget as planning
from robustkern.suite.core import Check
from robustkern.timebudget import Deadline, minutes, parse_budget


def _task(name, per_image, priority=50, weight=1.0, knobs=None):
    knobs = knobs or {"images": planning.Knob(10, 100)}
    check = Check(name, name, "why", lambda *a: None, knobs=knobs, priority=priority,
                  weight=weight, cost=lambda s, m, sizes: per_image * sizes["images"])  # fmt: skip
    return planning.Task(check, "model", None)


def test_budget_strings():
    assert parse_budget("10m") == 600 and parse_budget("90s") == 90 and parse_budget(45) == 45
    assert parse_budget("1h30m") == 5400 and parse_budget("none") is None
    for bad in ("ten minutes", "0", "-1m", "1.2.3m"):
        with pytest.raises(ValueError, match="budget must"):
            parse_budget(bad)
    assert minutes(45) == "45 s" and minutes(600) == "10.0 min"
    assert Deadline(None).allows(1e9) and not Deadline(1.0).allows(2.0)


def test_knobs_interpolate_geometrically_and_steps_shrink_last():
    images, steps = planning.Knob(50, 500), planning.Knob(10, 100, keep=0.5)
    assert (images.at(0), images.at(1), steps.at(0), steps.at(1)) == (50, 500, 10, 100)
    assert images.at(0.5) == round(50 * 10**0.5)
    assert steps.at(0.25) == round(10 * 10**0.5)  # sqrt(0.25) = 0.5: half-way already


def test_the_plan_fits_the_budget_and_shares_it_by_weight():
    tasks = [_task("a", 0.01, weight=3.0), _task("b", 0.01, weight=1.0)]
    plans = planning.allocate(tasks, 1.2)  # least 0.1 + 0.1, full 1.0 + 1.0
    assert sum(p.seconds for p in plans.values()) <= 1.2 + 1e-9
    assert plans[0].sizes["images"] > plans[1].sizes["images"] > 10
    full = planning.allocate(tasks, None)
    assert [p.sizes["images"] for p in full.values()] == [100, 100]
    roomy = planning.allocate(tasks, 100.0)  # more than enough: full sizes, no more
    assert [p.sizes["images"] for p in roomy.values()] == [100, 100]


def test_what_cannot_fit_its_least_size_is_skipped_least_important_first():
    tasks = [_task("key", 0.1, priority=0), _task("minor", 0.1, priority=9),
             _task("middle", 0.1, priority=5)]  # fmt: skip
    plans = planning.allocate(tasks, 2.5)  # each needs 1 s at least
    assert plans[1].skipped and "needs about 1 s at its smallest size" in plans[1].skipped
    assert plans[0].skipped is None and plans[2].skipped is None


@pytest.fixture(scope="module")
def digits_cnn():
    torch.manual_seed(0)
    _, _, xt, yt = data.load("digits")
    model = models.small_cnn(1, 10, width=8).eval()
    return model, xt[:60], yt[:60]


def test_a_tiny_budget_skips_with_the_reason_and_the_plan_is_reported(digits_cnn, tmp_path):
    model, x, y = digits_cnn
    result = suite.run_suite({"cnn": model}, (x, y), checks=["white_box", "corruptions"],
                             budget=0.3, out=tmp_path, progress=False)  # fmt: skip
    skipped = [c for c in result["checks"] if c["verdict"] == "skipped"]
    assert skipped and all("time budget cannot fit it" in c["summary"] for c in skipped)
    assert result["budget"] == 0.3 and set(result["costs"]["cnn"]) >= {"forward", "gradient"}
    saved = json.loads((tmp_path / "report.json").read_text())
    suite.validate(saved)


def test_a_budget_plans_sizes_below_full_and_a_check_runs_what_it_needs(digits_cnn, tmp_path):
    model, x, y = digits_cnn
    other = models.small_cnn(1, 10, width=4).eval()
    result = suite.run_suite({"a": model, "b": other}, (x, y), checks=["tradeoff"],
                             budget="20s", out=tmp_path, progress=False)  # fmt: skip
    # the trade-off reads the white-box results, so asking for it alone runs those first
    assert [(c["name"], c["model"]) for c in result["checks"]] == [
        ("white_box", "a"), ("white_box", "b"), ("tradeoff", None)]  # fmt: skip
    for entry in result["checks"][:2]:
        assert entry["sizes"]["images"] <= 500 and entry["estimate"] > 0
        assert "[" in entry["summary"]  # the robust accuracy with its interval
    assert result["checks"][2]["verdict"] == "info"
    assert "McNemar" in result["checks"][2]["summary"]


@pytest.mark.parametrize("name", suite.CHECK_NAMES)
def test_every_check_alone_runs_itself_and_what_it_needs(name, tmp_path):
    """--checks X for each X: X runs (with the checks it reads, first), never skipped because
    a check it depends on was not asked for."""
    torch.manual_seed(0)
    x, y, xt, yt = data.load("digits")
    net = lambda: models.small_cnn(1, 10, width=4)  # noqa: E731
    result = suite.run_suite({"a": net().eval(), "b": net().eval()}, (xt[:30], yt[:30]),
                             train_data=(x[:100], y[:100]), factory=net, checks=[name],
                             budget=None, out=tmp_path, progress=False)  # fmt: skip
    names = [c["name"] for c in result["checks"]]
    assert name in names
    assert set(names) == {name, *suite.runner.REGISTRY[name].needs}
    for entry in result["checks"]:
        assert entry["error"] is None, entry["summary"]
        assert entry["verdict"] != "skipped" or "white-box check must have run" not in entry[
            "summary"]  # fmt: skip
