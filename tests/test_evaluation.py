"""The standard and fast cascades of robustkern.evaluate, and the transfer table."""

import pytest
import torch

import robustkern
from robustkern import data, models, training
from robustkern.attacks import adam_pgd, apgd, square
from robustkern.evaluation import PRESETS, Cascade, transfer_matrix
from tests.conftest import accuracy


def test_standard_is_no_weaker_than_any_of_its_attacks(digits_model):
    model, x, y = digits_model
    result = robustkern.evaluate(
        model,
        (x, y),
        "standard",
        eps=0.1,
        queries=1000,
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )
    singles = {
        "apgd-ce": apgd(model, x, y, eps=0.1, generator=torch.Generator().manual_seed(0)),
        "apgd-t": apgd(model, x, y, eps=0.1, loss="dlr", targeted=True),
        "square": square(model, x, y, eps=0.1, queries=1000),
    }
    for name, x_adv in singles.items():
        assert result.robust_accuracy <= accuracy(model, x_adv, y) + 1e-6, name
    # the first attack runs on the same points with the same seed: the same outcome
    assert result.after_each_attack()[0][1] == pytest.approx(accuracy(model, singles["apgd-ce"], y))
    broken = sum(result.broken_by.values())
    assert broken == int(result.clean_correct.sum() - result.robust_correct.sum())
    assert list(result.broken_by) == [name for name, _, _ in PRESETS["standard"]["linf"]]
    assert "after square" in str(result)


def test_fast_preset_bf16_and_mode_restored(digits_model):
    model, x, y = digits_model
    model.train()
    fast = robustkern.evaluate(model, (x, y), "fast", eps=0.1, progress=False)
    bf16 = robustkern.evaluate(
        model, (x, y), "fast", eps=0.1, progress=False, autocast=torch.bfloat16
    )
    assert model.training
    model.eval()
    assert list(fast.broken_by) == ["apgd-ce", "apgd-t"]
    assert 0.2 < fast.robust_accuracy < fast.clean_accuracy - 0.3
    assert bf16.robust_accuracy == pytest.approx(fast.robust_accuracy, abs=0.05)


@pytest.mark.parametrize(
    "name, attack, options",
    [
        ("apgd", apgd, {"steps": 10}),
        ("adam", adam_pgd, {"steps": 10}),
        ("square", square, {"queries": 50}),
    ],
)
def test_attacks_by_name_match_the_functions(digits_model, name, attack, options):
    model, x, y = digits_model
    x, y = x[:64], y[:64]
    result = robustkern.evaluate(
        model, (x, y), name, eps=0.1, generator=torch.Generator().manual_seed(0),
        progress=False, **options,
    )  # fmt: skip
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    x_adv = attack(model, x[ok], y[ok], eps=0.1, generator=torch.Generator().manual_seed(0),
                   **options)  # fmt: skip
    robust = ok.clone()
    with torch.no_grad():
        robust[ok] = model(x_adv).argmax(1) == y[ok]
    assert result.attack == name and torch.equal(result.robust_correct, robust)
    assert result.robust_accuracy < result.clean_accuracy  # eps 0.1 breaks some digits


def test_cascade_options_are_checked(digits_model):
    model, x, y = digits_model
    with pytest.raises(ValueError, match="eps"):
        robustkern.evaluate(model, (x, y), "standard", progress=False)
    with pytest.raises(ValueError, match="alpha"):
        robustkern.evaluate(model, (x, y), "fast", eps=0.1, alpha=0.1, progress=False)
    white = Cascade("standard", eps=0.1, only=("apgd-ce", "apgd-t"))
    assert list(white.broken_by) == ["apgd-ce", "apgd-t"]  # the indicators' white-box reference
    with pytest.raises(ValueError, match="no stage"):
        Cascade("fast", eps=0.1, only=("fab-t",))
    with pytest.raises(ValueError, match="attack must be one of"):
        robustkern.evaluate(model, (x, y), "strongest", eps=0.1, progress=False)


def test_per_example_eps_follows_the_examples_through_batches(digits_model):
    model, x, y = digits_model
    x, y = x[:60], y[:60]
    radii = (0.0, 0.05, 0.2)
    eps = torch.tensor(radii).repeat_interleave(len(x))
    xs, ys = x.repeat(3, 1, 1, 1), y.repeat(3)
    options = {"steps": 5, "random_start": False, "progress": False}  # deterministic PGD
    mixed = robustkern.evaluate(model, (xs, ys), "pgd", eps=eps, batch_size=45, **options)
    for i, e in enumerate(radii):
        alone = robustkern.evaluate(model, (x, y), "pgd", eps=e, **options)
        assert torch.equal(mixed.robust_correct[i * 60 : (i + 1) * 60], alone.robust_correct)
    # a cascade slices them per stage too: no point with eps 0 is broken, most with eps 0.2 are
    fast = robustkern.evaluate(model, (xs, ys), "fast", eps=eps, batch_size=45, steps=5,
                               progress=False).robust_correct.view(3, 60)  # fmt: skip
    assert torch.equal(fast[0], mixed.clean_correct[:60])
    assert fast[2].sum() < fast[1].sum() < fast[0].sum()


def test_evaluate_checks_data_labels_and_per_example_options(digits_model):
    model, x, y = digits_model
    with pytest.raises(ValueError, match=r"y must have shape \(200,\)"):
        robustkern.evaluate(model, (x, y[:, None]), "pgd", eps=0.1, progress=False)
    with pytest.raises(ValueError, match="int64"):
        robustkern.evaluate(model, (x, y.int()), "none", progress=False)
    for attack in ("none", "pgd"):  # no point would be attacked: every one "misclassified"
        with pytest.raises(ValueError, match="labels must lie in"):
            robustkern.evaluate(model, (x, y + 10), attack, eps=0.1, progress=False)
    with pytest.raises(ValueError, match="no examples"):
        robustkern.evaluate(model, (x[:0], y[:0]), "pgd", eps=0.1, progress=False)
    with pytest.raises(ValueError, match=r"one value per example \(200\), got 199"):
        robustkern.evaluate(model, (x, y), "pgd", eps=torch.full((199,), 0.1), progress=False)
    shuffled = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=50, shuffle=True
    )
    with pytest.raises(ValueError, match="fixed order"):
        robustkern.evaluate(model, shuffled, "pgd", eps=torch.full((200,), 0.1), progress=False)


def test_transfer_table_beats_noise_of_the_same_size(digits_model):
    model, x, y = digits_model
    torch.manual_seed(1)
    xtr, ytr, *_ = data.load("digits")
    other = models.small_cnn(1, 10, width=8)
    training.fit(other, (xtr, ytr), epochs=6, batch_size=64, progress=False)
    table = transfer_matrix({"a": model, "b": other}, x, y, eps=0.1)
    assert table.error.shape == table.noise_error.shape == (2, 2)
    assert table.sources == table.targets == ["a", "b"]
    # white box (diagonal) beats transfer beats noise of the same L2 size (Szegedy's Table 2)
    for i in range(2):
        assert table.error[i, i] > table.error[i, 1 - i] > table.noise_error[i, 1 - i] + 0.1
        assert (table.noise_error[i] < table.clean_error + 0.1).all()
        assert 0 < table.distortion[i] <= 0.1
    assert "Gaussian noise" in str(table) and table.to_dict()["sources"] == ["a", "b"]
    with pytest.raises(ValueError, match="attack"):
        transfer_matrix({"a": model}, x, y, attack="cw")


def test_eps_zero_is_the_clean_outcome_without_attacking(digits_model, monkeypatch):
    model, x, y = digits_model
    monkeypatch.setattr(robustkern.attacks, "apgd", lambda *a, **k: pytest.fail("attacked"))
    monkeypatch.setattr(robustkern.attacks, "pgd", lambda *a, **k: pytest.fail("attacked"))
    for attack in ("pgd", "apgd", "standard"):
        result = robustkern.evaluate(model, (x, y), attack, eps=0.0, progress=False)
        assert torch.equal(result.robust_correct, result.clean_correct)


def test_nan_or_inf_images_are_an_error_naming_them(digits_model):
    model, x, y = digits_model
    x = x.clone()
    x[3, 0, 2, 2] = float("nan")
    x[7] = float("inf")
    with pytest.raises(ValueError, match=r"1 NaN and 64 inf value\(s\) in 2 of 200 images "
                                         r"\(indices 3, 7\)"):  # fmt: skip
        robustkern.evaluate(model, (x, y), "pgd", eps=0.1, progress=False)


def test_eps_in_pixel_units_warns_with_the_value_meant(digits_model):
    from robustkern.checks import EpsUnitsWarning

    model, x, y = digits_model
    with pytest.warns(EpsUnitsWarning, match=r"did you mean 8/255 = 0.0313725\?"):
        robustkern.evaluate(model, (x[:8], y[:8]), "pgd", eps=8, steps=1, progress=False)
    with pytest.warns(EpsUnitsWarning, match="l2 diameter"):
        robustkern.evaluate(model, (x[:8], y[:8]), "pgd", eps=9, norm="l2", steps=1,
                            progress=False)  # fmt: skip


def test_progress_bars_redraw_sparsely_off_a_terminal(monkeypatch, capsys):
    """A redirected run's log grew by a line every 0.1 s; off a terminal it is every 5 s."""
    import io
    import sys

    from robustkern._progress import LOG_INTERVAL, progress_bar

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    bar = progress_bar(range(3))
    assert bar.mininterval == LOG_INTERVAL >= 5
    bar.close()


def test_a_time_budget_stops_after_the_batch_that_fills_it(digits_model):
    model, x, y = digits_model
    full = robustkern.evaluate(model, (x, y), "pgd", eps=0.1, steps=5, batch_size=20,
                               progress=False)  # fmt: skip
    assert not full.stopped_early and full.of == full.n == 200
    short = robustkern.evaluate(model, (x, y), "pgd", eps=0.1, steps=5, batch_size=20,
                                budget=1e-9, progress=False)  # fmt: skip
    assert short.stopped_early and short.n == 20 and short.of == 200  # one batch, then stop
    assert torch.equal(short.robust_correct, full.robust_correct[:20])
    assert "stopped it after 20 of 200 examples" in str(short)
    assert "[" in str(short)  # accuracies with their 95 % intervals
    saved = short.to_dict()
    assert saved["n"] == 20 and saved["of"] == 200 and len(saved["robust_interval"]) == 2


def _layouts(model) -> list[bool]:
    return [p.is_contiguous() for p in model.parameters() if p.dim() == 4]


def test_a_cnn_on_a_cpu_is_evaluated_channels_last_with_the_same_outcomes(digits_model):
    model, x, y = digits_model
    seen = []

    def recording_attack(m, xb, yb):  # the model as the attack sees it
        seen.append([p.is_contiguous(memory_format=torch.channels_last) for p in m.parameters()
                     if p.dim() == 4 and p.shape[1] > 1])  # fmt: skip
        return apgd(m, xb, yb, eps=0.1, steps=20, generator=torch.Generator().manual_seed(0))

    before = _layouts(model)
    runs = {flag: robustkern.evaluate(model, (x, y), recording_attack, channels_last=flag,
                                      progress=False) for flag in (None, False)}  # fmt: skip
    assert seen[0] and all(seen[0]) and not any(seen[-1])  # auto switched it; False did not
    assert _layouts(model) == before  # and it is back in its own layout
    assert torch.equal(runs[None].clean_correct, runs[False].clean_correct)
    # another summation order moves logits in the last bits, never an outcome here
    assert (runs[None].robust_correct != runs[False].robust_correct).sum() <= 1


def test_channels_last_leaves_models_it_cannot_or_need_not_switch():
    linear = models.fc(64)
    with robustkern.modes.channels_last(linear) as switched:
        assert not switched
    cnn = models.small_cnn(3).to(memory_format=torch.channels_last)  # the user's own choice
    with robustkern.modes.channels_last(cnn) as switched:
        assert not switched
    assert not cnn[3].weight.is_contiguous()  # still channels_last after the block
    volumetric = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv3d(1, 2, 3))
    with robustkern.modes.channels_last(volumetric, enabled=True) as switched:
        assert not switched  # 5-D weights have no channels_last
    cnn = models.small_cnn(3)
    with pytest.raises(RuntimeError, match="inside"), robustkern.modes.channels_last(cnn) as on:
        assert on and not cnn[3].weight.is_contiguous()
        raise RuntimeError("inside")
    assert cnn[3].weight.is_contiguous()  # restored on the way out of an error too
