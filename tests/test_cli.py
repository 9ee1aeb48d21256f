"""The robustkern command line, run in-process and as the installed script."""

import json
import subprocess
import sys

import pytest
import torch

from robustkern import cli, models


def run(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_attack_trains_caches_and_reports(capsys, tmp_path):
    argv = [
        "attack",
        "--data",
        "digits",
        "--epochs",
        "2",
        "--eps",
        "0.1",
        "--steps",
        "3",
        "--limit",
        "60",
        "--no-progress",
    ]
    code, out, _ = run(capsys, *argv)
    assert code == 0
    assert "training a standard small CNN" in out
    assert "eps 0.1 (= 25.5/255)" in out
    clean = float(out.split("clean accuracy:")[1].split("%")[0])
    robust = float(out.split("robust accuracy:")[1].split("%")[0])
    assert 0 <= robust <= clean <= 100
    code, out2, _ = run(capsys, *argv)
    assert "from cache" in out2
    numbers = [o.split("clean accuracy:")[1].split("(")[0] for o in (out, out2)]
    assert numbers[0] == numbers[1]  # the cached model gives the same results


def test_evaluate_runs_the_cascade_and_the_indicators(capsys, tmp_path):
    out_json = tmp_path / "eval.json"
    argv = ["evaluate", "--data", "digits", "--epochs", "2", "--eps", "0.1", "--limit", "60"]
    argv += ["--preset", "fast", "--indicators", "30", "--json", str(out_json), "--no-progress"]
    code, out, _ = run(capsys, *argv)
    assert code == 0
    assert "after apgd-ce" in out and "after apgd-t" in out
    assert "[PASS] unbounded attack" in out
    report = json.loads(out_json.read_text())
    assert report["preset"] == "fast" and report["n"] == 60
    assert 0 <= report["robust_accuracy"] <= report["clean_accuracy"] <= 1
    assert len(report["indicators"]) == 11
    assert {i["verdict"] for i in report["indicators"]} <= {"pass", "warn", "fail"}


@pytest.mark.parametrize(
    "options, budget",
    [
        (
            ["--attack", "apgd", "--steps", "5", "--loss", "dlr", "--eot", "2"],
            "steps 5, restarts 1, loss dlr, eot 2",
        ),
        (["--attack", "adam"], "steps 100, loss ce"),  # the function's defaults, printed
        (["--attack", "fab", "--steps", "5"], "steps 5, restarts 1, eot 1"),
        (["--attack", "square", "--queries", "30"], "restarts 1, queries 30"),
        (["--attack", "rays", "--queries", "30"], "queries 30"),
        (["--attack", "deepfool", "--norm", "linf", "--steps", "5"], "steps 5"),
        (["--attack", "hop_skip_jump", "--norm", "linf", "--queries", "60"], "queries 60"),
    ],
)
def test_attack_runs_each_attack_with_its_budget(capsys, options, budget):
    argv = ["attack", "--data", "digits", "--epochs", "2", "--eps", "0.1", "--limit", "40"]
    code, out, _ = run(capsys, *argv, *options, "--no-progress")
    assert code == 0 and f"eps 0.1 (= 25.5/255), {budget})" in out, out
    robust = float(out.split("robust accuracy:")[1].split("%")[0])
    assert 0 <= robust <= float(out.split("clean accuracy:")[1].split("%")[0])


@pytest.mark.parametrize(
    "options, message",
    [
        (["--attack", "pgd", "--queries", "5"], "--attack pgd takes no --queries"),
        (["--attack", "square", "--alpha", "0.1"], "--attack square takes no --alpha"),
        (["--attack", "apgd", "--loss", "margin"], "--attack apgd takes --loss ce or dlr"),
        (["--attack", "pgd", "--loss", "dlr"], "--attack pgd takes --loss ce or margin"),
        (["--attack", "fgsm", "--norm", "l2"], "fgsm attacks in linf, not 'l2'"),
        (["--attack", "cw", "--norm", "linf"], "cw attacks in l2, not 'linf'"),
    ],
)
def test_attack_options_it_cannot_take_stop_before_any_work(capsys, monkeypatch, options, message):
    monkeypatch.setattr(cli.data, "load", lambda *a, **k: pytest.fail("loaded data"))
    code, _, err = run(capsys, "attack", "--data", "digits", *options)
    assert code == 2 and message in err, err


def test_attack_with_user_model(capsys, tmp_path):
    torch.save(models.fc(64, 10, hidden=(16,)).state_dict(), tmp_path / "fc.pt")
    code, out, _ = run(
        capsys,
        "attack",
        "--data",
        "digits",
        "--model",
        "robustkern.models:fc",
        "--model-kwargs",
        '{"in_features": 64, "hidden": [16]}',
        "--weights",
        str(tmp_path / "fc.pt"),
        "--attack",
        "fgsm",
        "--limit",
        "40",
        "--no-progress",
    )
    assert code == 0 and "robust accuracy" in out


def test_pickled_weights_are_refused_without_trust(capsys, tmp_path):
    torch.save(models.fc(64, 10, hidden=(16,)), tmp_path / "m.pt")
    base = [
        "attack",
        "--data",
        "digits",
        "--model",
        "robustkern.models:fc",
        "--model-kwargs",
        '{"in_features": 64, "hidden": [16]}',
        "--weights",
        str(tmp_path / "m.pt"),
        "--limit",
        "20",
        "--steps",
        "1",
        "--no-progress",
    ]
    code, _, err = run(capsys, *base)
    assert code == 2 and "--trust-pickle" in err
    code, out, _ = run(capsys, *base, "--trust-pickle")
    assert code == 0 and "robust accuracy" in out


def test_bad_arguments_are_clear(capsys):
    code, _, err = run(capsys, "attack", "--data", "nope", "--no-progress")
    assert code == 2 and "unknown dataset" in err


@pytest.mark.parametrize(
    "command, flag, value",
    [
        ("attack", "--eps", "-1"),
        ("attack", "--eps", "nan"),
        ("attack", "--limit", "-5"),  # would have dropped the last five images
        ("attack", "--steps", "0"),
        ("evaluate", "--batch-size", "0"),
        ("train", "--epochs", "0"),
        ("tradeoff", "--eps", "0.1 -0.2"),
        ("fourier", "--eps", "-2"),
    ],
)
def test_out_of_range_numbers_stop_before_any_work(capsys, monkeypatch, command, flag, value):
    monkeypatch.setattr(cli.data, "load", lambda *a, **k: pytest.fail("loaded data"))
    with pytest.raises(SystemExit) as stop:
        cli.main([command, "--data", "digits", flag, *value.split()])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"argument {flag}: must be >= " in err, err


def test_installed_script():
    out = subprocess.run(["robustkern", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == __import__("robustkern").__version__
    out = subprocess.run(
        [sys.executable, "-m", "robustkern.cli", "attack", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--trust-pickle" in out.stdout


def test_train_compares_methods_and_resumes(capsys, tmp_path):
    out = tmp_path / "runs"
    argv = ["train", "--data", "digits", "--method", "standard,fgsm-rs", "--eps", "0.1",
            "--epochs", "2", "--limit", "100", "--out", str(out), "--no-progress"]  # fmt: skip
    code, text, _ = run(capsys, *argv)
    assert code == 0, text
    assert "PGD-20 at eps 0.1 (= 25.5/255)" in text and "fgsm-rs" in text
    for method in ("standard", "fgsm-rs"):
        result = json.loads((out / method / "result.json").read_text())
        assert 0 <= result["test_robust_acc"] <= result["test_clean_acc"] <= 1
        assert len(result["history"]["epochs"]) == 2
        state = torch.load(out / method / "model.pt", weights_only=True)
        models.small_cnn(1, 10).load_state_dict(state)
    assert (out / "training.png").stat().st_size > 0
    code, again, _ = run(capsys, *argv)  # finished checkpoints: the same numbers, no training
    assert code == 0 and again.split("test accuracy")[1] == text.split("test accuracy")[1]


def test_train_certified_with_its_ramp(capsys, tmp_path):
    argv = ["train", "--data", "digits", "--method", "ibp", "--model",
            "robustkern.models:cert_cnn", "--model-kwargs", '{"image_size": 8}', "--eps", "0.05",
            "--epochs", "3", "--kappa", "0.5", "--limit", "100", "--no-progress"]  # fmt: skip
    code, text, _ = run(capsys, *argv, "--ramp", "1", "1", "--out", str(tmp_path / "a"))
    assert code == 0 and "ibp 0.05" in text, text
    result = json.loads((tmp_path / "a" / "result.json").read_text())
    assert 0 <= result["test_robust_acc"] <= result["test_clean_acc"] <= 1
    # the flags reach the config: a ramp past the last epoch is refused
    code, _, err = run(capsys, *argv, "--ramp", "2", "2", "--out", str(tmp_path / "b"))
    assert code == 2 and "ramp" in err, err


def test_tradeoff_command(capsys, tmp_path):
    out = tmp_path / "tradeoff"
    argv = ["tradeoff", "--data", "digits", "--eps", "0.1", "0.2", "--epochs", "1", "--steps",
            "2", "--limit", "100", "--out", str(out), "--no-progress"]  # fmt: skip
    code, text, _ = run(capsys, *argv)
    assert code == 0, text
    assert "standard" in text and "pgd 0.2 (= 51/255)" in text
    saved = json.loads((out / "tradeoff.json").read_text())
    assert sorted(saved["cells"]) == ["0", "0.1", "0.2"]
    assert (out / "tradeoff.png").stat().st_size > 0


def test_train_bad_method_is_named(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--data", "digits", "--method", "free", "--out",
                       str(tmp_path), "--no-progress")  # fmt: skip
    assert code == 2 and "method must be one of" in err


def test_eps_as_a_fraction_threads_and_a_model_for_other_images(capsys, tmp_path):
    """--eps 8/255 as the literature (and sweep files) write it; --threads sets torch's pool; a
    model built for 3-channel images on 1-channel data is a clear error, not a traceback."""
    threads = torch.get_num_threads()
    argv = ["attack", "--data", "digits", "--epochs", "1", "--eps", "8/255", "--steps", "1",
            "--limit", "20", "--threads", "1", "--no-progress"]  # fmt: skip
    try:
        code, out, _ = run(capsys, *argv)
        assert code == 0 and "eps 0.0313725 (= 8/255)" in out, out
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    model = ["--model", "robustkern.models:small_cnn", "--model-kwargs", '{"in_channels": 3}']
    code, _, err = run(capsys, "attack", "--data", "digits", *model, "--no-progress")
    assert code == 2 and "fails on the data's images of shape (1, 8, 8)" in err, err
    assert "Traceback" not in err
    code, _, err = run(capsys, "train", "--data", "digits", *model, "--out", str(tmp_path),
                       "--no-progress")  # fmt: skip
    assert code == 2 and "fails on the data's images of shape (1, 8, 8)" in err, err
    assert not (tmp_path / "tradeoff.json").exists()  # before any training
    with pytest.raises(SystemExit):
        cli.main(["attack", "--data", "digits", "--eps", "8/0"])
    assert "invalid real value: '8/0'" in capsys.readouterr().err


def test_normalised_data_with_bounds(capsys, tmp_path):
    """--bounds: float .npz data in other units (normalised), eps in those units."""
    import numpy as np

    from robustkern import data

    x, y, *_ = data.load("digits")
    normalised = ((x.numpy() - 0.3) / 0.4).astype(np.float32)
    np.savez(tmp_path / "norm.npz", x=normalised, y=y.numpy())
    lo, hi = float(normalised.min()), float(normalised.max())
    argv = ["attack", "--data", str(tmp_path / "norm.npz"), "--model", "robustkern.models:fc",
            "--model-kwargs", '{"in_features": 64, "hidden": [16]}', "--eps", "0.25",
            "--steps", "2", "--limit", "30", "--no-progress"]  # fmt: skip
    code, _, err = run(capsys, *argv)
    assert code == 2 and "look normalised" in err, err  # without --bounds: named, not silent
    code, out, _ = run(capsys, *argv, f"--bounds={lo},{hi}")  # "=": lo is negative
    assert code == 0 and "robust accuracy" in out, out


def test_certify_prints_the_sandwich_and_smoothing_radii(capsys):
    base = ["certify", "--data", "digits", "--epochs", "2", "--limit", "30", "--no-progress"]
    code, out, _ = run(capsys, *base, "--method", "lipschitz", "--norm", "l2", "--eps", "0.01")
    assert code == 0 and "certified accuracy:" in out and "(lipschitz; " in out, out
    certified = float(out.split("certified accuracy:")[1].split("%")[0])
    assert certified <= float(out.split("robust accuracy:")[1].split("%")[0])
    code, out, _ = run(capsys, *base, "--method", "smoothing", "--norm", "l2", "--n", "200")
    assert code == 0 and "certified accuracy at eps 0.1:" in out, out
    # the default small CNN max-pools, which bound propagation cannot bound: a named error
    code, _, err = run(capsys, *base, "--method", "ibp")
    assert code == 2 and "'2' (MaxPool2d)" in err, err
    code, _, err = run(capsys, *base, "--method", "smoothing")
    assert code == 2 and "smoothing certifies L2 radii" in err
