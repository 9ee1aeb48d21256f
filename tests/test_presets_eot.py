"""AutoAttack's versions as presets (a table test against its published settings), EoT in the
attacks, and evaluate on a randomised model: the 'rand' preset, each point judged over repeated
forwards, the randomised-output indicator with and without EoT."""

import pytest
import torch

import robustkern
from robustkern import cli, data, training
from robustkern.attacks import pgd
from robustkern.evaluation import RandomizedModelWarning
from robustkern.evaluation.core import judged
from robustkern.evaluation.masking import _Checks
from robustkern.evaluation.presets import PRESETS

# AutoAttack.set_version (fra31/auto-attack, autoattack.py) and its attacks' constructor
# defaults: n_iter 100 for APGD and FAB, Square p_init 0.8. Written out here, not derived.
CE, T9 = {"loss": "ce", "restarts": 1}, {"loss": "dlr", "targeted": True, "n_targets": 9}
FAB_T = {"targeted": True, "n_targets": 9, "restarts": 1}
SQUARE = {"queries": 5000, "restarts": 1, "p_init": 0.8}
STANDARD = [("apgd-ce", CE), ("apgd-t", {**T9, "restarts": 1}), ("fab-t", FAB_T),
            ("square", SQUARE)]  # fmt: skip
AUTOATTACK = {
    ("standard", "linf"): STANDARD,
    ("standard", "l2"): STANDARD,
    ("standard", "l1"): [
        ("apgd-ce", {"loss": "ce", "restarts": 5, "large_eps": True}),
        (
            "apgd-t",
            {"loss": "dlr", "targeted": True, "n_targets": 5, "restarts": 1, "large_eps": True},
        ),
        ("fab-t", FAB_T),
        ("square", SQUARE),
    ],
    ("plus", "linf"): [
        ("apgd-ce", {"loss": "ce", "restarts": 5}),
        ("apgd-dlr", {"loss": "dlr", "restarts": 5}),
        ("fab", {"restarts": 5}),
        ("square", SQUARE),
        ("apgd-t", {**T9, "restarts": 1}),
        ("fab-t", FAB_T),
    ],
    ("rand", "linf"): [
        ("apgd-ce", {"loss": "ce", "restarts": 1, "eot": 20}),
        ("apgd-dlr", {"loss": "dlr", "restarts": 1, "eot": 20}),
    ],
}


@pytest.mark.parametrize(("preset", "norm"), list(AUTOATTACK))
def test_presets_are_autoattacks_versions(preset, norm):
    ours = PRESETS[preset][norm]
    assert [name for name, _, _ in ours] == [name for name, _ in AUTOATTACK[preset, norm]]
    for (name, family, options), (_, published) in zip(ours, AUTOATTACK[preset, norm], strict=True):
        assert options.items() >= published.items(), name
        assert options.get("targeted", False) == name.endswith("-t"), name
        if family in ("apgd", "fab"):
            assert options["steps"] == 100, name
    assert PRESETS["plus"]["l2"] == PRESETS["plus"]["linf"]


def test_list_presets_prints_the_table(capsys):
    assert cli.main(["evaluate", "--list-presets"]) == 0
    out = capsys.readouterr().out
    assert "fab-t" in out and "queries=5000" in out and "eot=20" in out and "large_eps=True" in out


class Noisy(torch.nn.Module):
    """A randomised defence whose single gradients are noise: the input gets x + a sin(w (x +
    s xi)) / w, which moves values by at most a / w but multiplies each input gradient by
    1 + a cos(...), random in sign; its expectation over xi keeps the model's own gradient."""

    def __init__(self, inner, a=10.0, w=1000.0, s=0.01):
        super().__init__()
        self.inner, self.a, self.w, self.s = inner, a, w, s

    def forward(self, x):
        z = x + self.s * torch.randn_like(x)
        return self.inner(x + self.a * torch.sin(self.w * z) / self.w)


@pytest.fixture(scope="module")
def noisy():
    torch.manual_seed(0)
    x, y, xt, yt = data.load("digits")
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    training.fit(linear, (x, y), epochs=10, batch_size=64, progress=False)
    return Noisy(linear).eval(), linear.eval(), xt[:200], yt[:200]


def test_eot_reveals_what_the_randomness_hid(noisy):
    model, _, x, y = noisy
    options = {"eps": 0.15, "steps": 50, "progress": False}
    single = robustkern.evaluate(model, (x, y), "apgd", **options)
    eot = robustkern.evaluate(model, (x, y), "apgd", eot=20, **options)
    assert single.randomized and eot.randomized and len(eot.repeat_accuracy) == 10
    assert single.robust_accuracy >= eot.robust_accuracy + 0.2  # the drop is real
    # robust means correct in every repeat: never above what any single forward says
    assert eot.robust_accuracy <= min(eot.repeat_accuracy) + 1e-9


def test_standard_on_a_randomised_model_runs_rand_and_says_so(noisy):
    model, _, x, y = noisy
    with pytest.warns(RandomizedModelWarning, match="'rand' preset ran instead"):
        result = robustkern.evaluate(model, (x[:64], y[:64]), "standard", eps=0.15, steps=10,
                                     progress=False)  # fmt: skip
    assert result.attack == "rand" and "randomised" in result.note
    assert list(result.broken_by) == ["apgd-ce", "apgd-dlr"]
    assert "judged over 10 forwards" in str(result) and result.to_dict()["randomized"]


def test_a_deterministic_model_is_judged_by_its_single_forward(noisy):
    _, linear, x, y = noisy
    repeated = judged(linear, x, y, 5)
    with torch.no_grad():
        once = linear(x).argmax(1) == y
    assert torch.equal(repeated, once[:, None].expand(-1, 5))
    result = robustkern.evaluate(linear, (x, y), "fast", eps=0.1, progress=False)
    assert not result.randomized and result.repeats == 1 and result.note == ""


def test_randomised_output_indicator_shows_robustness_with_and_without_eot(noisy):
    model, _, x, y = noisy
    checks = _Checks(model, x[:100], y[:100], "linf", 0.15, (0.0, 1.0), 30, 100, 4, 0, (0, 9))
    indicator = checks.randomised_outputs()
    assert indicator.verdict in ("warn", "fail")
    assert (
        "with single gradients" in indicator.detail
        and "over 20 gradient passes" in indicator.detail
    )


def test_pgd_eot_counts_its_passes(noisy):
    _, linear, x, y = noisy
    _, queries = pgd(linear, x[:8], y[:8], eps=0.1, steps=5, eot=3, return_queries=True)
    assert (queries == 15).all()
    with pytest.raises(ValueError, match="eot"):
        pgd(linear, x[:8], y[:8], eps=0.1, eot=0)


def test_cli_evaluates_in_l1_and_quotes_eps_in_input_units(capsys):
    argv = ["evaluate", "--data", "digits", "--epochs", "2", "--norm", "l1", "--eps", "2",
            "--preset", "fast", "--limit", "40", "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "fast (apgd-ce, apgd-t), l1, eps 2\n" in out and "/255" not in out
    assert "robust accuracy:" in out
