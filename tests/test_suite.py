"""The robustness test suite: every check runs and reports, the report follows its schema and
renders, failures stay inside their check, finished checks survive a kill."""

import copy
import dataclasses
import json
import math
import shutil
import subprocess

import pytest
import torch

from robustkern import cli, data, models, suite, training
from robustkern.suite import generator, inspection, report, runner
from robustkern.suite.core import Threat, smoothness


@pytest.fixture(scope="module")
def digits():
    x, y, xt, yt = data.load("digits")
    return x, y, xt[:120], yt[:120]


@pytest.fixture(scope="module")
def two_models(digits):
    """A standard and an FGSM-RS-trained small CNN on digits (a few seconds)."""
    x, y, _, _ = digits
    out = {}
    for method, eps in (("standard", 0.0), ("fgsm-rs", 0.1)):
        torch.manual_seed(0)
        model = models.small_cnn(1, 10, width=16)
        training.fit(model, (x, y), method=method, eps=eps, epochs=6, batch_size=64,
                     train_eval=0, progress=False)  # fmt: skip
        out[method] = model.eval()
    return out


@pytest.fixture(scope="module")
def full_report(two_models, digits, tmp_path_factory):
    x, y, xt, yt = digits
    out = tmp_path_factory.mktemp("report")
    result = suite.run_suite(
        two_models, (xt, yt), train_data=(x, y), factory=lambda: models.small_cnn(1, 10, 16),
        eps=0.1, quick=True, out=out, data_name="digits", progress=False,
    )  # fmt: skip
    return result, out


def test_every_check_runs_on_every_model(full_report):
    result, _ = full_report
    seen = {(c["name"], c["model"]) for c in result["checks"]}
    for check in suite.CHECKS:
        expected = ["standard", "fgsm-rs"] if check.per_model else [None]
        for model in expected:
            assert (check.name, model) in seen, (check.name, model)
    errors = [(c["name"], c["model"], c["error"]) for c in result["checks"] if c["error"]]
    assert errors == []
    assert {c["verdict"] for c in result["checks"]} <= {
        "pass",
        "warn",
        "inconclusive",
        "fail",
        "info",
    }
    assert all(c["seconds"] >= 0 and c["summary"] and c["rationale"] for c in result["checks"])


def test_report_json_follows_the_schema(full_report):
    result, out = full_report
    saved = json.loads((out / "report.json").read_text())
    assert saved == result
    suite.validate(saved)
    assert saved["schema"] == suite.SCHEMA
    assert saved["data"]["shape"] == [1, 8, 8] and saved["data"]["classes"] == 10
    assert saved["threat"]["norm"] == "linf" and saved["threat"]["eps"] == 0.1
    for entry in saved["checks"]:
        for image in entry["images"]:
            assert (out / image["path"]).stat().st_size > 1000
    broken = json.loads(json.dumps(saved))
    broken["checks"][0]["verdict"] = "great"
    del broken["checks"][1]["seconds"]
    with pytest.raises(ValueError, match=r"verdict must be one of.*lacks 'seconds'"):
        suite.validate(broken)


def test_html_is_self_contained(full_report):
    result, out = full_report
    page = (out / "index.html").read_text()
    images = sum(len(c["images"]) for c in result["checks"])
    assert images >= 20
    # every image once, and each model's robust-accuracy curve again in its summary card
    assert page.count("src='data:image/png;base64,") == images + len(result["models"])
    assert page.index("class='card'") < page.index("<h2>Every check</h2>")
    assert "<details><summary>every parameter tensor" in page  # long tables folded away
    assert "src='images/" not in page and "http" not in page.split("<body>")[1]
    for check in suite.CHECKS:
        assert check.title in page


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Chromium")
def test_html_renders_in_headless_chromium(full_report, tmp_path):
    _, out = full_report
    png = tmp_path / "page.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,2400"]  # fmt: skip
    done = subprocess.run(
        ["chromium", *flags, f"--screenshot={png}", (out / "index.html").as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert png.stat().st_size > 50_000  # a rendered page with pictures, not a blank one


def test_the_terminal_table_lists_every_check(full_report):
    result, _ = full_report
    table = suite.terminal_table(result)
    for check in suite.CHECKS:
        assert check.name in table
    assert table.splitlines()[-1].endswith("info") or "pass" in table.splitlines()[-1]


def test_the_contrast_between_a_standard_and_a_trained_model(full_report):
    result, _ = full_report
    figures = {(c["name"], c["model"]): c["figures"] for c in result["checks"]}
    standard = figures[("white_box", "standard")]["main"]
    trained = figures[("white_box", "fgsm-rs")]["main"]
    assert trained["robust"] > standard["robust"]
    assert figures[("unbounded", "standard")]["error_unbounded"] == 1.0
    distortion = [figures[("min_distortion", m)]["average_min_distortion"] for m in two_names()]
    assert distortion[1] > distortion[0]  # the trained model needs larger perturbations
    same_size = figures[("min_distortion", "standard")]
    assert same_size["error_same_size_noise"] < same_size["error_adversarial"]
    # beside L-BFGS: FMN, DDN and CW, in the same table, each flipping images
    l2 = next(t for c in result["checks"] if c["name"] == "min_distortion" for t in c["tables"]
              if t["title"].startswith("minimum L2"))  # fmt: skip
    assert [row[0] for row in l2["rows"]] == ["L-BFGS", "FMN", "DDN", "CW"]
    assert all(0 < same_size["median_l2"][a] < 10 for a in ("FMN", "DDN", "CW"))
    # transfer: each model crafts with APGD and with M-DI2-FGSM
    transfer = next(c for c in result["checks"] if c["name"] == "transfer")
    assert set(transfer["figures"]["transfer_error"]) == {"APGD", "M-DI2-FGSM"}
    rows = [r[0] for r in transfer["tables"][0]["rows"]]
    assert "M-DI2-FGSM on standard" in rows and "APGD on fgsm-rs" in rows


def two_names():
    return ["standard", "fgsm-rs"]


def test_models_are_checked_in_eval_mode_and_left_as_they_were(two_models, digits, tmp_path):
    # A train-mode BatchNorm model: any check attacking it outside eval mode would score batch
    # statistics and update its running ones (the attacks leave the mode as the caller set it).
    _, _, xt, yt = digits
    std = two_models["standard"]
    model = torch.nn.Sequential(std[0], torch.nn.BatchNorm2d(std[0].out_channels), *std[1:])
    with torch.no_grad():
        model[1].running_mean.fill_(0.3)
    model.train()
    before = copy.deepcopy(model.state_dict())
    per_model = [c.name for c in suite.CHECKS if c.per_model]
    result = suite.run_suite({"bn": model}, (xt, yt), checks=per_model, eps=0.1, quick=True,
                             out=tmp_path, progress=False)  # fmt: skip
    assert [c["error"] for c in result["checks"] if c["error"]] == []
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_missing_inputs_are_reported_not_dropped(two_models, digits, tmp_path):
    _, _, xt, yt = digits
    result = suite.run_suite(
        {"only": two_models["standard"]}, (xt, yt),
        checks=["capacity", "transfer", "randomisation", "tradeoff"], quick=True, out=tmp_path,
        progress=False,
    )  # fmt: skip
    verdicts = {c["name"]: (c["verdict"], c["summary"]) for c in result["checks"]}
    assert verdicts["capacity"][0] == "info" and "not given" in verdicts["capacity"][1]
    for name in ("transfer", "randomisation", "tradeoff"):
        assert verdicts[name][0] == "skipped" and "needs" in verdicts[name][1]


def _failing(name, error=RuntimeError):
    def boom(*args):
        raise error("boom inside the check")

    return tuple(dataclasses.replace(c, run=boom) if c.name == name else c for c in suite.CHECKS)


def test_a_failing_check_does_not_stop_the_others(two_models, digits, tmp_path, monkeypatch):
    _, _, xt, yt = digits
    monkeypatch.setattr(runner, "CHECKS", _failing("capacity"))
    result = suite.run_suite(two_models, (xt, yt), checks=["capacity", "lipschitz"], quick=True,
                             out=tmp_path, progress=False)  # fmt: skip
    by_name = {(c["name"], c["model"]): c for c in result["checks"]}
    failed = by_name[("capacity", "standard")]
    assert failed["verdict"] == "error" and "boom inside the check" in failed["summary"]
    assert "RuntimeError" in failed["error"]
    assert by_name[("lipschitz", "standard")]["verdict"] == "info"
    assert "error" in (tmp_path / "index.html").read_text()


def test_a_killed_run_resumes_with_what_it_finished(two_models, digits, tmp_path, monkeypatch):
    _, _, xt, yt = digits
    kwargs = dict(checks=["capacity", "lipschitz"], quick=True, out=tmp_path, progress=False)
    models_ = {"standard": two_models["standard"]}
    monkeypatch.setattr(runner, "CHECKS", _failing("lipschitz", KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):  # a kill after the first check
        suite.run_suite(models_, (xt, yt), **kwargs)
    partial = json.loads((tmp_path / "report.json").read_text())
    assert [c["name"] for c in partial["checks"]] == ["capacity"]
    # the page is written with the JSON after every check: what finished can be read
    assert "Capacity: parameters against training examples" in (tmp_path / "index.html").read_text()
    monkeypatch.setattr(runner, "CHECKS", _failing("capacity"))  # would fail if it ran again
    result = suite.run_suite(models_, (xt, yt), **kwargs)
    assert [c["verdict"] for c in result["checks"]] == ["info", "info"]
    assert result["checks"][0] == partial["checks"][0]  # reused, not rerun
    again = suite.run_suite(models_, (xt, yt), **kwargs, resume=False)
    assert again["checks"][0]["verdict"] == "error"
    other = {"standard": two_models["fgsm-rs"]}  # other weights: nothing is reused
    assert suite.run_suite(other, (xt, yt), **kwargs)["checks"][0]["verdict"] == "error"


def test_bad_arguments_are_named(two_models, digits, tmp_path):
    _, _, xt, yt = digits
    with pytest.raises(ValueError, match="unknown check"):
        suite.run_suite(two_models, (xt, yt), checks=["capacity", "nope"], out=tmp_path)
    with pytest.raises(ValueError, match="eps must be > 0"):
        suite.run_suite(two_models, (xt, yt), eps=-0.1, out=tmp_path)
    with pytest.raises(ValueError, match="norm must be one of"):
        suite.run_suite(two_models, (xt, yt), norm="l1", out=tmp_path)
    with pytest.raises(ValueError, match="at least one model"):
        suite.run_suite({}, (xt, yt), out=tmp_path)
    with pytest.raises(FileNotFoundError, match="tradeoff"):
        suite.run_suite(two_models, (xt, yt), tradeoff=tmp_path / "none", out=tmp_path)


def test_literature_threats_follow_the_data():
    mnist = suite.literature_threats((1, 28, 28))
    assert [(t.norm, t.eps) for t in mnist] == [("linf", 0.3), ("l2", 2.0)]
    cifar = suite.literature_threats((3, 32, 32))
    assert [(t.norm, t.eps) for t in cifar] == [("linf", 8 / 255), ("l2", 0.5)]
    imagenet = suite.literature_threats((3, 224, 224))
    assert [(t.norm, t.eps) for t in imagenet] == [("linf", 4 / 255), ("l2", 3.0)]
    assert suite.literature_threats((1, 8, 8))[1].eps == pytest.approx(2.0 * 8 / 28, abs=1e-4)
    main, other = runner._threats((1, 28, 28), "l2", 1.5, (0.0, 1.0))
    assert (main.norm, main.eps, other.norm, other.eps) == ("l2", 1.5, "linf", 0.3)
    assert isinstance(main, Threat) and "given" in main.source


def test_smoothness_separates_noise_from_smooth_images():
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(64, 1, 32, 32, generator=g)
    # white noise against its 3x3 binomial blur: 0.25 / sqrt(sum of squared weights) = 2/3
    assert smoothness(noise).mean().item() == pytest.approx(2 / 3, abs=0.02)
    ramp = torch.linspace(0, 1, 32).expand(1, 1, 32, 32)
    assert smoothness(ramp).item() > 0.99


def test_filter_scores_tell_a_blob_from_random_filters():
    r = torch.arange(7) - 3.0
    blob = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / 4).expand(4, 1, 7, 7)
    conv = torch.nn.Conv2d(1, 4, 7)
    random = inspection._filter_scores(inspection._random_like(conv, conv.weight))
    ours = inspection._filter_scores(blob)
    assert (ours[0] > torch.quantile(random[0], 0.95)).all()
    assert (ours[1] > torch.quantile(random[1], 0.95)).all()


def test_likeness_scores_real_images_near_one_and_noise_near_zero(digits):
    x, y, _, _ = digits
    likeness = generator._Likeness(x[:600], y[:600])
    noise = torch.rand(x[600:700].shape, generator=torch.Generator().manual_seed(0))
    real = likeness(x[600:700], y[600:700], noise)
    assert real.median().item() == pytest.approx(1.0, abs=0.15)
    assert likeness(noise, y[600:700], noise).abs().max().item() < 1e-6


def test_json_safe_writes_standard_json():
    value = report.json_safe({"a": math.inf, "b": (1, float("nan")), "t": torch.tensor([1.5])})
    assert value == {"a": None, "b": [1, None], "t": [1.5]}
    json.dumps(value, allow_nan=False)


def test_cli_suite_with_a_user_model(capsys, tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "w.pt"
    torch.save(models.small_cnn(1, 10).state_dict(), weights)
    argv = ["suite", "--data", "digits", "--model", "robustkern.models:small_cnn",
            "--model-kwargs", '{"in_channels": 1, "num_classes": 10}', "--weights", str(weights),
            "--name", "mine", "--quick", "--limit", "60", "--checks", "capacity,lipschitz",
            "--out", str(tmp_path / "out"), "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "capacity" in out and "lipschitz" in out and "index.html" in out
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [c["model"] for c in saved["checks"]] == ["mine", "mine"]
    argv[argv.index("--checks") + 1] = "nope"
    assert cli.main(argv) == 2
    assert "unknown check" in capsys.readouterr().err


def test_cli_suite_default_models_are_trained_once_and_contrast(capsys, tmp_path):
    argv = ["suite", "--data", "digits", "--quick", "--checks", "white_box,tradeoff",
            "--out", str(tmp_path / "out"), "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.count("model: training a") == 2
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    robust = {c["model"]: c["figures"]["main"]["robust"] for c in saved["checks"][:2]}
    assert list(robust) == ["standard", "pgd-at"]
    assert robust["pgd-at"] > robust["standard"]
    assert saved["checks"][2]["verdict"] == "info"  # the trade-off scatter of the two
    assert cli.main([*argv, "--fresh"]) == 0
    assert capsys.readouterr().out.count("from cache") == 2


def test_a_tradeoff_sweep_joins_the_scatter(two_models, digits, tmp_path):
    _, _, xt, yt = digits
    cells = {format(e, "g"): {"eps": e, "clean": c, "robust": [r]}
             for e, c, r in ((0.0, 0.97, 0.01), (0.1, 0.93, 0.4))}  # fmt: skip
    sweep = {"config": {"method": "pgd", "eval_eps": [0.1]}, "cells": cells}
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "tradeoff.json").write_text(json.dumps(sweep))
    result = suite.run_suite(
        {"only": two_models["standard"]}, (xt, yt), checks=["white_box", "tradeoff"], eps=0.1,
        tradeoff=tmp_path / "sweep", quick=True, out=tmp_path / "out", progress=False,
    )  # fmt: skip
    scatter = result["checks"][1]
    assert scatter["verdict"] == "info"
    points = scatter["figures"]["points"]
    assert points[0]["model"] == "only" and len(points) == 3
    assert points[2]["robust"] == 0.4 and "sweep" in points[2]["model"]
    (tmp_path / "sweep" / "tradeoff.json").write_text("{}")
    with pytest.raises(ValueError, match=r"not a robustkern tradeoff\.json"):
        suite.run_suite({"only": two_models["standard"]}, (xt, yt), tradeoff=tmp_path / "sweep")
