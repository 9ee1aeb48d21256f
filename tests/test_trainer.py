"""The trainer: schedules, data sources, determinism, validation and early stopping, tracked
probabilities, AMP, checkpoints (SIGKILL mid-epoch, then resume), DDP (two gloo ranks)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from robustkern import data, models, training
from robustkern.attacks import pgd
from robustkern.training import fit, load_checkpoint, lr_factor, weight_decay_at
from tests import _ddp_worker, _train_worker
from tests.conftest import accuracy

ROOT = Path(__file__).resolve().parents[1]
TIMES = ("seconds", "eval_seconds")


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


def small_model(width=8):
    torch.manual_seed(0)
    return models.small_cnn(1, 10, width=width)


def without_times(history: training.History) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMES} for row in history.epochs]


def test_lr_schedules_follow_the_papers():
    assert [lr_factor("piecewise", t) for t in (0.1, 0.5, 0.6, 0.8)] == [1, 1, 0.1, 0.01]
    assert lr_factor("cyclic", 0.2) == pytest.approx(0.5)
    assert lr_factor("cyclic", 0.4) == pytest.approx(1.0)
    assert lr_factor("cyclic", 1.0) == pytest.approx(0.0)
    assert lr_factor("cosine", 0.5) == pytest.approx(0.5)
    assert lr_factor("constant", 0.9) == 1.0
    assert weight_decay_at((5e-2, 5e-4), 0.0) == pytest.approx(5e-2)
    assert weight_decay_at((5e-2, 5e-4), 1.0) == pytest.approx(5e-4)
    assert 5e-4 < weight_decay_at((5e-2, 5e-4), 0.5) < 5e-2


def test_the_optimiser_sees_the_scheduled_lr_and_weight_decay(digits):
    x, y, _, _ = digits
    model = small_model()
    history = fit(model, (x[:400], y[:400]), epochs=4, batch_size=100, optimizer="sgd", lr=0.1,
                  lr_schedule="piecewise", weight_decay=(1e-2, 1e-4), train_eval=0,
                  progress=False)  # fmt: skip
    # 16 steps: epoch 2 ends at t=0.5 (lr 0.1), epoch 3 at 0.75 (x0.1), epoch 4 at 1 (x0.01)
    assert history["lr"] == pytest.approx([0.1, 0.1, 0.01, 0.001])
    wd = history["weight_decay"]
    assert wd[0] > wd[1] > wd[2] > wd[3] == pytest.approx(1e-4)


def test_eps_warmup_ramps_the_training_eps(digits, monkeypatch):
    x, y, _, _ = digits
    used, real = [], training.trainer.adversarial_loss

    def recording(*args, eps, **kwargs):
        used.append(eps)
        return real(*args, eps=eps, **kwargs)

    monkeypatch.setattr(training.trainer, "adversarial_loss", recording)
    fit(small_model(), (x[:200], y[:200]), method="pgd", eps=0.2, steps=1, epochs=3,
        eps_warmup=2, batch_size=50, train_eval=0, progress=False)  # fmt: skip
    assert used == pytest.approx([0.025 * k for k in range(1, 9)] + [0.2] * 4)


def test_tensors_dataset_and_loader_sources(digits):
    x, y, xt, yt = digits
    x, y = x[:300], y[:300]
    runs = {}
    for name, source in {"tensors": (x, y), "dataset": TensorDataset(x, y)}.items():
        model = small_model()
        runs[name] = without_times(fit(model, source, epochs=2, batch_size=64, progress=False))
        runs[name + " weights"] = model.state_dict()
    # the trainer draws the order itself for both: the same batches, the same run
    assert runs["tensors"] == runs["dataset"]
    for k, v in runs["tensors weights"].items():
        torch.testing.assert_close(v, runs["dataset weights"][k])
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
    history = fit(small_model(), loader, (xt, yt), epochs=2, progress=False)
    assert len(history) == 2 and history["step"] == [5, 10]


def test_same_seed_same_run_and_another_seed_another(digits):
    x, y, xt, yt = digits
    args = dict(method="pgd", eps=0.1, steps=2, epochs=2, batch_size=100, progress=False)
    a = without_times(fit(small_model(), (x[:300], y[:300]), (xt[:100], yt[:100]), **args))
    b = without_times(fit(small_model(), (x[:300], y[:300]), (xt[:100], yt[:100]), **args))
    c = fit(small_model(), (x[:300], y[:300]), (xt[:100], yt[:100]), seed=1, **args)
    assert a == b
    assert a != without_times(c)


def test_history_columns_and_tracked_probabilities(digits):
    x, y, xt, yt = digits
    history = fit(small_model(), (x[:300], y[:300]), (xt[:50], yt[:50]), method="fgsm-rs",
                  eps=0.1, epochs=3, batch_size=100, track=[3, 7], track_every=2,
                  progress=False)  # fmt: skip
    row = history.epochs[-1]
    for key in ("train_loss", "train_acc", "train_clean_acc", "train_robust_acc"):
        assert 0 <= row[key] < 10
    assert 0 <= row["val_robust_acc"] <= row["val_clean_acc"] <= 1
    t = history.tracked
    assert t["index"] == [3, 7] and t["label"] == yt[[3, 7]].tolist()
    # 9 steps of 3 per epoch: the start, steps 2, 4, 6, 8 and the epoch ends (steps 3, 6, 9)
    assert t["epoch"] == pytest.approx([0, 2 / 3, 1, 4 / 3, 2, 8 / 3, 3])
    probs = torch.tensor(t["probs"])
    assert probs.shape == (7, 2, 10)
    torch.testing.assert_close(probs.sum(-1), torch.ones(7, 2))
    assert "val rob" in history.table()


def test_restore_best_loads_the_best_validation_epoch(digits):
    x, y, xt, yt = digits
    model = small_model()
    history = fit(model, (x[:500], y[:500]), (xt, yt), epochs=5, batch_size=50,
                  optimizer="sgd", lr=0.5, train_eval=0, progress=False)  # fmt: skip
    best = history.best_epoch
    assert history["val_clean_acc"][best - 1] == max(history["val_clean_acc"])
    assert accuracy(model, xt, yt) == pytest.approx(history["val_clean_acc"][best - 1])
    assert not model.training


def test_patience_stops_when_validation_stalls(digits):
    x, y, xt, yt = digits
    model = small_model()
    for p in model.parameters():
        p.requires_grad_(False)  # nothing can improve: every epoch scores the same
    model[-1].bias.requires_grad_(True)
    history = fit(model, (x[:200], y[:200]), (xt[:100], yt[:100]), epochs=10, lr=1e-12,
                  patience=2, train_eval=0, progress=False)  # fmt: skip
    assert history.stopped_early and len(history) == 3 and history.best_epoch == 1


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_and_channels_last_train(digits, amp):
    x, y, xt, yt = digits
    model = small_model(16)
    history = fit(model, (x, y), (xt, yt), epochs=3, batch_size=64, amp=amp,
                  channels_last=True, train_eval=0, progress=False)  # fmt: skip
    assert history["val_clean_acc"][-1] > 0.8
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_pgd_training_on_mnist_buys_robustness_at_a_clean_cost():
    x, y, xt, yt = data.load("mnist-5k")
    xt, yt, eps = xt[:500], yt[:500], 0.3
    clean, robust = {}, {}
    for method in ("standard", "pgd"):
        model = small_model(16)
        fit(model, (x, y), method=method, eps=eps, steps=5, alpha=0.1, epochs=8, batch_size=64,
            train_eval=0, progress=False)  # fmt: skip
        clean[method] = accuracy(model, xt, yt)
        robust[method] = accuracy(model, pgd(model, xt, yt, eps=eps, steps=20), yt)
    assert robust["pgd"] > robust["standard"] + 0.3, robust
    assert clean["pgd"] < clean["standard"], clean


def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_history(tmp_path):
    reference = _train_worker.run(tmp_path / "uninterrupted.pt")
    path = tmp_path / "run.pt"
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "tests._train_worker", str(path)], cwd=ROOT,
                            env=env)  # fmt: skip
    seen, deadline = [], time.monotonic() + 120
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if path.exists():
                state = load_checkpoint(path)  # every read must find a whole checkpoint
                seen.append((state["epoch"], state["batch"]))
                if state["epoch"] >= 1 and state["batch"] > 0:
                    proc.send_signal(signal.SIGKILL)
                    break
            time.sleep(0.01)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill; saw {seen}"
    state = load_checkpoint(path)
    assert not state["finished"] and state["batch"] > 0
    resumed = _train_worker.run(path)
    assert without_times(resumed) == without_times(reference)
    assert resumed.tracked == reference.tracked
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    # a finished checkpoint returns its history at once
    began = time.perf_counter()
    assert without_times(_train_worker.run(path)) == without_times(reference)
    assert time.perf_counter() - began < 5


def test_checkpoint_from_other_settings_or_corrupt_is_refused(digits, tmp_path):
    x, y, _, _ = digits
    path = tmp_path / "ck.pt"
    fit(small_model(), (x[:100], y[:100]), epochs=1, checkpoint=path, progress=False)
    with pytest.raises(ValueError, match=r"other settings.*epochs"):
        fit(small_model(), (x[:100], y[:100]), epochs=2, checkpoint=path, progress=False)
    fit(small_model(), (x[:100], y[:100]), epochs=2, checkpoint=path, resume=False,
        progress=False)  # fmt: skip
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="truncated, corrupt"):
        fit(small_model(), (x[:100], y[:100]), epochs=2, checkpoint=path, progress=False)
    torch.save({"format": 1, "payload": _Unpicklable()}, path)
    with pytest.raises(ValueError, match="cannot be read"):
        load_checkpoint(path)


class _Unpicklable:
    """An arbitrary class: weights_only loading must refuse it."""


def test_two_gloo_ranks_match_one_process(tmp_path):
    x, y, xt, yt = data.load("digits")
    for method in ("standard", "pgd"):
        out = tmp_path / f"{method}.pt"
        worker = str(ROOT / "tests" / "_ddp_worker.py")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", worker, str(out), method]  # fmt: skip
        env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        ranks = torch.load(out, weights_only=True)
        torch.manual_seed(0)
        model = models.small_cnn(1, 10, width=8)
        history = fit(model, (x[:300], y[:300]), (xt[:101], yt[:101]),
                      **_ddp_worker.settings(method))  # fmt: skip
        for k, v in model.state_dict().items():
            torch.testing.assert_close(ranks["model"][k], v, rtol=1e-5, atol=1e-6)
        two = training.History.from_dict(ranks["history"])
        assert two["train_loss"] == pytest.approx(history["train_loss"], rel=1e-5)
        assert two["train_acc"] == pytest.approx(history["train_acc"], abs=0.01)


def test_bad_arguments_are_named(digits):
    x, y, _, _ = digits
    d = (x[:50], y[:50])
    for kwargs, match in [
        (dict(method="free"), "method"),
        (dict(method="pgd"), "needs eps > 0"),
        (dict(eps=-1.0), "eps"),
        (dict(optimizer="lbfgs"), "optimizer"),
        (dict(lr_schedule="step"), "lr_schedule"),
        (dict(amp="fp8"), "amp"),
        (dict(epochs=0), "epochs"),
        (dict(weight_decay=(-1.0, 0.0)), "weight_decay"),
        (dict(track=[50]), "track"),
        (dict(weight_decay=(1e-3, 1e-4, 0.0)), r"\(start, end\) pair"),
        (dict(patience=0), "patience must be None or >= 1"),
        (dict(patience=2), "patience needs val_data"),  # else it could never stop
        (dict(eps_warmup=11), "eps_warmup"),
    ]:
        with pytest.raises(ValueError, match=match):
            fit(small_model(), d, progress=False, **kwargs)
    with pytest.raises(ValueError, match="pair of tensors"):
        fit(small_model(), x[:50], progress=False)


def test_a_nan_loss_is_reported(digits):
    x, y, _, _ = digits
    model = small_model()
    with torch.no_grad():
        model[-1].weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="training loss is nan in epoch 1"):
        fit(model, (x[:100], y[:100]), epochs=1, progress=False)


def test_tradeoff_resumes_cell_by_cell(digits, tmp_path, monkeypatch):
    x, y, xt, yt = digits
    split = (x[:400], y[:400], xt[:100], yt[:100])
    args = dict(epochs=2, steps=2, batch_size=100, out=tmp_path, progress=False)
    first = training.tradeoff(small_model, split, [0.2, 0.1], **args)
    assert first.eps == [0.0, 0.1, 0.2] and first.eval_eps == [0.1, 0.2]
    assert len(first.robust) == 3 and all(len(r) == 2 for r in first.robust)
    for clean, row in zip(first.clean, first.robust, strict=True):
        assert row[1] <= row[0] <= clean  # a larger eps never leaves more correct
    assert "pgd 0.2 (= 51/255)" in first.table()
    assert (tmp_path / "tradeoff.png").exists() and (tmp_path / "training.png").exists()
    # a cell missing from tradeoff.json (killed before it was recorded) is redone from its
    # finished checkpoint, the others are read back: nothing trains again
    saved = (tmp_path / "tradeoff.json").read_text()
    (tmp_path / "tradeoff.json").write_text(saved.replace('"0.2":', '"lost":'))
    monkeypatch.setattr(training.trainer._Trainer, "_train_epoch", _no_training)
    again = training.tradeoff(small_model, split, [0.1, 0.2], **args)
    assert again.clean == first.clean and again.robust == first.robust
    with pytest.raises(ValueError, match="other settings"):
        training.tradeoff(small_model, split, [0.1, 0.2], **(args | {"epochs": 3}))


def _no_training(*_):
    raise AssertionError("a finished cell was trained again")


# One changed value per field that decides a run's numbers: a checkpoint written with the base
# settings must refuse each. A new TrainConfig field without an entry here fails the test.
CHANGED = {
    "method": "trades", "eps": 0.2, "norm": "l2", "steps": 2, "alpha": 0.05, "beta": 3.0,
    "eps_warmup": 1, "kappa": 0.3, "ramp_start": 0.5, "ramp_length": 0.5, "epochs": 2,
    "batch_size": 16, "optimizer": "sgd", "lr": 0.01, "momentum": 0.5, "lr_schedule": "cosine",
    "weight_decay": 0.1, "amp": "bf16",
    "channels_last": True, "bounds": (-1.0, 1.0), "val_steps": 2, "train_eval": 5,
    "patience": 2, "restore_best": False, "track": (1,), "track_every": 1, "seed": 1,
}  # fmt: skip


def test_a_checkpoint_refuses_a_run_that_differs_in_any_setting(digits, tmp_path):
    x, y, xt, yt = digits
    base = training.TrainConfig(
        method="pgd",
        eps=0.1,
        steps=1,
        epochs=1,
        batch_size=10,
        train_eval=0,
        progress=False,
        checkpoint=tmp_path / "ck.pt",
    )
    assert set(CHANGED) == set(base.resume_key())  # every field that changes the numbers
    train, val = (x[:20], y[:20]), (xt[:10], yt[:10])
    fit(small_model(), train, val, base)
    for field, value in CHANGED.items():
        with pytest.raises(ValueError, match=rf"other settings \([^)]*\b{field}\b"):
            fit(small_model(), train, val, base, **{field: value})
    with pytest.raises(ValueError, match=r"other settings \(n_train\)"):
        fit(small_model(), (x[:30], y[:30]), val, base)
    # run-only settings may change: the same run continues (here: it is finished)
    again = fit(small_model(), train, val, base, progress=True, num_workers=0, resume=True)
    assert len(again) == 1
