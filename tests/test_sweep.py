"""robustkern.sweep: the sweep file, sharding over gloo ranks, the SQLite store, resume after
SIGKILL, eps sharing, the minimum-norm curve against fixed-eps attacks, reports."""

import csv
import hashlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from robustkern import cli, models, stats, sweep
from robustkern.evaluation import evaluate
from robustkern.sweep import budget, engine, grid, store
from robustkern.sweep.config import AttackSpec

ROOT = Path(__file__).resolve().parent.parent
DATA = '[data]\nname = "digits"\nlimit = {limit}\n'
CNN = """
[[models]]
name = "{name}"
factory = "robustkern.models:small_cnn"
kwargs = {{ in_channels = 1, num_classes = 10, width = 16 }}
weights = "cnn.pt"
"""
RANDOM_CNN = CNN.format(name="m").replace('weights = "cnn.pt"', "")
PGD = """
[[attacks]]
name = "pgd"
norm = "linf"
eps = [0.05, 0.1, 0.2]
steps = 5
"""


def write_sweep(folder: Path, body: str, model=None, limit: int = 200) -> Path:
    """A sweep file next to the session's trained digits CNN (cnn.pt)."""
    if model is not None and not (folder / "cnn.pt").exists():
        torch.save(model.state_dict(), folder / "cnn.pt")
    path = folder / "sweep.toml"
    path.write_text(DATA.format(limit=limit) + body)
    return path


def dump(db: Path) -> list[tuple]:
    """Every outcome with its cell's coordinates, sorted."""
    with sqlite3.connect(db) as con:
        return sorted(con.execute(
            "SELECT c.model, c.attack, c.norm, c.eps, o.example, o.label, o.clean_correct, "
            "o.robust_correct, o.distance FROM outcomes o JOIN cells c ON c.id = o.cell_id"
        ))  # fmt: skip


def run_cli(args: list[str], env: dict | None = None, **kwargs):
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"} | (env or {})
    return subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env=env, **kwargs)


@pytest.fixture()
def cnn(digits_model):
    """The session's digits CNN rebuilt through the factory a sweep file names."""
    model = models.small_cnn(1, 10, width=16)
    model.load_state_dict(digits_model[0].state_dict())
    return model.eval()


def test_two_gloo_ranks_give_exactly_the_counts_of_one(tmp_path, cnn):
    body = (
        CNN.format(name="cnn")
        + PGD
        + """
[[attacks]]
name = "pgd"
label = "pgd-batched"
norm = "l2"
eps = [0.5, 1.0]
steps = 5
[[attacks]]
name = "min-norm"
norm = "linf"
eps = [0.05, 0.1]
steps = 20
[run]
batch_size = 24
share = "auto"
"""
    )
    path = write_sweep(tmp_path, body, cnn, limit=150)
    one = run_cli(["robustkern.cli", "sweep", "run", str(path), "--no-progress"])
    assert one.wait(timeout=300) == 0
    (tmp_path / "results.db").rename(tmp_path / "one.db")
    two = run_cli(["torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                   "robustkern.cli", "sweep", "run", str(path), "--no-progress"],
                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    out, _ = two.communicate(timeout=300)
    assert two.returncode == 0, out[-3000:]
    assert "2 rank(s)" in out
    rows = dump(tmp_path / "results.db")
    assert len(rows) == 150 * 7 and rows == dump(tmp_path / "one.db")
    with sqlite3.connect(tmp_path / "results.db") as con:
        assert {r[0] for r in con.execute("SELECT world_size FROM cells")} == {2}
        # 150 examples in batches of 24: both ranks had work, and the counts add up
        for n, clean, robust, cell in con.execute(
            "SELECT n, clean_correct, robust_correct, id FROM cells"
        ):
            sums = con.execute(
                "SELECT count(*), sum(clean_correct), sum(robust_correct) FROM outcomes "
                "WHERE cell_id = ?", (cell,),
            ).fetchone()  # fmt: skip
            assert sums == (n, clean, robust)


def test_sigkill_mid_cell_then_rerun_records_every_cell_once(tmp_path, cnn):
    body = CNN.format(name="a") + """
[[models]]
name = "b"
factory = "tests._sweep_models:slow_cnn"
kwargs = { in_channels = 1, num_classes = 10, width = 16 }
""" + PGD + "[run]\nbatch_size = 50\n"  # fmt: skip
    path = write_sweep(tmp_path, body, cnn)
    marker = tmp_path / "b-is-running"
    proc = run_cli(["robustkern.cli", "sweep", "run", str(path), "--no-progress"],
                   env={"SWEEP_TEST_MARKER": str(marker)})  # fmt: skip
    deadline = time.monotonic() + 120
    try:
        while proc.poll() is None and not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # well inside b's cell: each of its forwards sleeps 0.05 s
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the sweep ended before the kill"
    db = tmp_path / "results.db"
    with sqlite3.connect(db) as con:
        before = con.execute("SELECT model, eps, id, group_id, finished_at FROM cells").fetchall()
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert sorted((m, e) for m, e, *_ in before) == [("a", 0.05), ("a", 0.1), ("a", 0.2)]
    rerun = run_cli(["robustkern.cli", "sweep", "run", str(path), "--no-progress"],
                    stdout=subprocess.PIPE, text=True)  # fmt: skip
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0
    assert "6 cells, 3 already in" in out and "3 cell(s) computed, 3 skipped" in out
    with sqlite3.connect(db) as con:
        after = con.execute("SELECT model, eps, id, group_id, finished_at FROM cells").fetchall()
        assert len(after) == 6 and len({(m, e) for m, e, *_ in after}) == 6
        assert set(before) <= set(after)  # the finished cells were not recomputed
        assert con.execute("SELECT count(*) FROM outcomes").fetchone() == (6 * 200,)
    again = run_cli(["robustkern.cli", "sweep", "run", str(path), "--no-progress"],
                    stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert "0 cell(s) computed, 6 skipped" in again.communicate(timeout=300)[0]


@pytest.mark.parametrize(
    "body, message",
    [
        ("[[models]\nname = 1", "not valid TOML"),
        (CNN.format(name="m") + '[[attacks]]\nname = "pgdd"\nnorm = "linf"\neps = [0.1]\n',
         "unknown attack 'pgdd'"),
        (CNN.format(name="m").replace("cnn.pt", "missing.pt") + PGD,
         "weights file"),
        (CNN.format(name="m") + PGD.replace("steps = 5", "stpes = 5"), "unknown key(s) ['stpes']"),
        (CNN.format(name="m") + PGD.replace("steps = 5", "steps = 0"), "steps must be >= 1"),
        (CNN.format(name="m") + PGD.replace('"linf"', '"l3"'), "norm must be one of"),
        (CNN.format(name="m") + PGD.replace("0.05,", "-0.05,"), "not a finite number >= 0"),
        (CNN.format(name="m") + PGD.replace("0.05,", '"8/0",'), "not a finite number >= 0"),
        (CNN.format(name="m") + PGD.replace('name = "pgd"', 'name = "fgsm"').replace(
            "steps = 5", "").replace('"linf"', '"l2"'), "fgsm attacks in linf, not 'l2'"),
        (CNN.format(name="m") + PGD.replace('name = "pgd"', 'name = "sparse_rs"').replace(
            "steps = 5", "").replace('"linf"', '"l0"'), "changed pixels: whole numbers"),
        (CNN.format(name="m") + CNN.format(name="m") + PGD, "repeated: ['m']"),
        (CNN.format(name="m") + PGD + PGD, "give repeated attacks a distinct label"),
        (CNN.format(name="m").replace("robustkern.models:small_cnn", "nowhere.mod:f") + PGD,
         "cannot find model factory"),
        (RANDOM_CNN.replace("in_channels = 1", "in_channels = 3") + PGD,
         "model 'm' fails on the data's images of shape (1, 8, 8)"),
        (RANDOM_CNN.replace("num_classes = 10", "num_classes = 4") + PGD,
         "model 'm' has 4 outputs but the data has 10 classes"),
        (PGD, "needs at least one [[models]] entry"),
        (CNN.format(name="m") + PGD + '[run]\nshare = "sometimes"\n', "share must be one of"),
        (CNN.format(name="m") + PGD + '[run]\nbudget = "soon"\n',
         "[run] budget: budget must look like 600, 90s, 10m or 1h30m, got 'soon'"),
        (CNN.format(name="m") + PGD + "[run]\nbudget = -5\n", "[run] budget: budget must be a"),
    ],
)  # fmt: skip
def test_bad_sweep_files_fail_before_any_work(tmp_path, cnn, body, message, capsys):
    path = write_sweep(tmp_path, body, cnn)
    with pytest.raises(ValueError, match=None) as caught:
        engine.run(sweep.load(path), progress=False)
    assert message in str(caught.value)
    assert not (tmp_path / "results.db").exists()  # nothing started
    assert cli.main(["sweep", "run", str(path), "--no-progress"]) == 2
    assert message in capsys.readouterr().err


def test_missing_or_foreign_store_and_data(tmp_path, cnn):
    with pytest.raises(sweep.SweepError, match="does not exist"):
        sweep.load(tmp_path / "nope.toml")
    path = write_sweep(tmp_path, CNN.format(name="m") + PGD + '[store]\npath = "x.db"\n', cnn)
    (tmp_path / "x.db").write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(ValueError, match="not a usable SQLite results store"):
        engine.run(sweep.load(path), progress=False)
    with sqlite3.connect(tmp_path / "y.db") as con:
        con.execute("CREATE TABLE t (a)")
    with pytest.raises(ValueError, match="not a robustkern results store"):
        sweep.Store(tmp_path / "y.db")
    path.write_text('[data]\npath = "gone.npz"\n' + CNN.format(name="m") + PGD)
    with pytest.raises(sweep.SweepError, match=r"not an existing \.npz file"):
        sweep.load(path)


@pytest.mark.parametrize("share", ["cascade", "batch", "none"])
def test_eps_sharing_matches_separate_runs(tmp_path, cnn, share):
    """Deterministic PGD (no random start): each sharing mode gives the outcome of one run per
    eps, with an example fooled at a smaller eps counted fooled at the larger ones."""
    body = CNN.format(name="cnn") + PGD.replace("steps = 5", "steps = 5\nrandom_start = false")
    path = write_sweep(tmp_path, body + f'[run]\nshare = "{share}"\nbatch_size = 64\n', cnn)
    engine.run(sweep.load(path), progress=False, log=lambda _: None)
    with sweep.Store(tmp_path / "results.db") as db:
        cells = db.cells()
        got = {c["eps"]: [o["robust_correct"] for o in db.outcomes(c["id"])] for c in cells}
    assert {c["share"] for c in cells} == {share}
    x, y = engine.load_data(sweep.load(path))
    fooled_before = torch.zeros(len(x), dtype=torch.bool)
    for eps in (0.05, 0.1, 0.2):
        alone = evaluate(cnn, (x, y), "pgd", eps=eps, steps=5, random_start=False,
                         batch_size=64, progress=False)  # fmt: skip
        fooled_before |= alone.clean_correct & ~alone.robust_correct
        expected = alone.clean_correct & ~fooled_before
        differ = (torch.tensor(got[eps], dtype=torch.bool) != expected).sum()
        assert differ <= 2, (eps, int(differ))  # float differences between batch shapes
    robust = [sum(got[e]) for e in (0.05, 0.1, 0.2)]
    assert robust[0] > robust[1] > robust[2]


@pytest.mark.parametrize("share", ["batch", "cascade", "none"])
def test_batch_size_bounds_the_rows_of_every_attack_call(cnn, digits_model, monkeypatch, share):
    # "batch" sends K rows per example: its batches hold batch_size // K examples, so a size
    # chosen to fit in memory holds for every mode.
    rows, real = [], engine._fooled

    def counted(model, attack, x, *rest):
        rows.append(len(x))
        return real(model, attack, x, *rest)

    monkeypatch.setattr(engine, "_fooled", counted)
    _, x, y = digits_model
    attack = AttackSpec(label="pgd", name="pgd", norm="linf", eps=(0.05, 0.1, 0.2),
                        params={"steps": 2})  # fmt: skip
    engine.evaluate_group(cnn, attack, [0.05, 0.1, 0.2], x[:100], y[:100], batch_size=32,
                          share=share)  # fmt: skip
    assert rows and max(rows) <= 32
    if share == "batch":
        assert max(rows) > 20  # 10 examples x 3 eps, less the misclassified


def test_min_norm_curve_agrees_with_fixed_eps_attacks(tmp_path, cnn):
    body = (
        CNN.format(name="cnn")
        + """
[[attacks]]
name = "apgd"
norm = "linf"
eps = [0.05, 0.1, 0.15]
steps = 20
[[attacks]]
name = "min-norm"
norm = "linf"
eps = [0.05, 0.1, 0.15]
steps = 100
"""
    )
    path = write_sweep(tmp_path, body, cnn)
    engine.run(sweep.load(path), progress=False, log=lambda _: None)
    with sweep.Store(tmp_path / "results.db") as db:
        cells = db.cells()
        outcomes = {c["attack"] + str(c["eps"]): db.outcomes(c["id"]) for c in cells}
    acc = {(c["attack"], c["eps"]): c["robust_accuracy"] for c in cells}
    for eps in (0.05, 0.1, 0.15):
        assert abs(acc["min-norm", eps] - acc["apgd", eps]) <= 0.03, (eps, acc)
    assert 0.1 < acc["apgd", 0.1] < 0.95  # a point where the curve has something to show
    # one min-norm run: every eps cell reads the same distances; robust exactly when d > eps
    for o in outcomes["min-norm0.1"]:
        assert o["distance"] is not None
        assert o["robust_correct"] == int(o["clean_correct"] == 1 and o["distance"] > 0.1)
    report = sweep.write_report(path)
    assert "Minimum-norm curve against fixed-eps attacks" in report


def test_minimum_norm_attacks_answer_every_eps_from_one_run(tmp_path, cnn):
    body = CNN.format(name="cnn") + "".join(
        f'[[attacks]]\nname = "{name}"\nnorm = "l2"\neps = [0.5, 1.0, 2.0]\nsteps = 20\n'
        for name in ("ddn", "deepfool")
    )
    path = write_sweep(tmp_path, body, cnn)
    engine.run(sweep.load(path), progress=False, log=lambda _: None)
    with sweep.Store(tmp_path / "results.db") as db:
        cells = db.cells()
        assert {(c["attack"], c["share"]) for c in cells} == {
            ("ddn", "distance"),
            ("deepfool", "distance"),
        }
        for c in cells:
            outcomes = db.outcomes(c["id"])
            for o in outcomes:  # robust exactly when correct and the distance exceeds eps
                assert o["robust_correct"] == int(
                    o["clean_correct"] == 1 and o["distance"] > c["eps"]
                )
        acc = {(c["attack"], c["eps"]): c["robust_accuracy"] for c in cells}
    assert acc["ddn", 0.5] >= acc["ddn", 1.0] >= acc["ddn", 2.0]
    assert acc["ddn", 0.5] > acc["ddn", 2.0]  # the grid spans something


def test_store_schema_is_documented_and_queryable(tmp_path, cnn):
    path = write_sweep(tmp_path, CNN.format(name="cnn") + PGD + '[[attacks]]\nname = "none"\n',
                       cnn)  # fmt: skip
    summary = engine.run(sweep.load(path), progress=False, log=lambda _: None)
    assert summary.computed == 4 and summary.skipped == 0
    con = sqlite3.connect(tmp_path / "results.db")
    assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    for table, columns in (("cells", ("id", *store.CELL_COLUMNS)),
                           ("outcomes", ("cell_id", *store.OUTCOME_COLUMNS))):  # fmt: skip
        names = [r[1] for r in con.execute(f"PRAGMA table_info({table})")]
        assert names == list(columns)
        assert all(f"{c} " in store.__doc__ or f"{c}," in store.__doc__ for c in names), names
    rows = con.execute("SELECT attack, eps, robust_accuracy, config, config_hash, code_version, "
                       "device, seconds FROM cells ORDER BY attack, eps").fetchall()  # fmt: skip
    assert [r[:2] for r in rows] == [("none", 0.0), ("pgd", 0.05), ("pgd", 0.1), ("pgd", 0.2)]
    for _, eps, _, config, digest, version, device, seconds in rows:
        config = json.loads(config)
        assert hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest() == digest
        assert config["attack"]["eps"] == eps and config["model"]["sha256"]
        assert version.startswith("0.") and device and seconds > 0
    assert con.execute("SELECT count(*) FROM summary").fetchone() == (4,)
    # the clean accuracy is the same in every cell, and a join answers per-example questions
    assert len({r[0] for r in con.execute("SELECT clean_correct FROM cells")}) == 1
    broken = con.execute(
        "SELECT count(*) FROM outcomes o JOIN cells c ON o.cell_id = c.id "
        "WHERE c.attack = 'pgd' AND c.eps = 0.2 AND o.clean_correct = 1 AND o.robust_correct = 0"
    ).fetchone()[0]
    assert broken > 0
    con.close()


def test_cells_are_recorded_whole_or_not_at_all(tmp_path, cnn):
    """A write that fails part-way (here: a duplicate outcome in the second cell) leaves no
    trace of any cell of the transaction."""
    path = write_sweep(tmp_path, CNN.format(name="cnn") + PGD, cnn)
    engine.run(sweep.load(path), progress=False, log=lambda _: None)
    with sweep.Store(tmp_path / "results.db") as db:
        entries = []
        for c in db.cells():
            row = {k: v for k, v in c.items() if k != "id"}
            outcomes = [tuple(o.values()) for o in db.outcomes(c["id"])]
            entries.append((row, outcomes))
    entries[1][1].append(entries[1][1][0])  # the same example twice
    with sweep.Store(tmp_path / "fresh.db") as fresh:
        with pytest.raises(sqlite3.IntegrityError):
            fresh.record(entries)
        assert fresh.cells() == []
        assert fresh.record(entries[:1]) == 1 and fresh.record(entries[:1]) == 0
        assert len(fresh.outcomes(fresh.cells()[0]["id"])) == 200


def test_changed_eps_list_or_weights_run_only_the_new_cells(tmp_path, cnn):
    path = write_sweep(tmp_path, CNN.format(name="cnn") + PGD, cnn)
    quiet = {"progress": False, "log": lambda _: None}
    assert engine.run(sweep.load(path), **quiet).computed == 3
    path.write_text(path.read_text().replace("0.2]", "0.2, 0.3]"))
    summary = engine.run(sweep.load(path), **quiet)
    assert (summary.computed, summary.skipped) == (1, 3)
    moved = tmp_path / "moved"
    moved.mkdir()
    for f in ("sweep.toml", "cnn.pt", "results.db"):  # a copied sweep folder keeps its cells
        (moved / f).write_bytes((tmp_path / f).read_bytes())
    assert engine.run(sweep.load(moved / "sweep.toml"), **quiet).skipped == 4
    state = {k: v + 0.01 for k, v in cnn.state_dict().items()}
    torch.save(state, tmp_path / "cnn.pt")  # other weights: other cells
    assert sweep.report.load_cells(path)[::2] == ([], 4)  # the old cells are not its results
    summary = engine.run(sweep.load(path), **quiet)
    assert (summary.computed, summary.skipped) == (4, 0)
    cells, _, missing = sweep.report.load_cells(path)
    assert (len(cells), missing) == (4, 0)
    assert len(sweep.report.load_cells(tmp_path / "results.db")[0]) == 8  # the store keeps all
    (weights,) = {c["config"]["model"]["sha256"] for c in cells}
    assert weights != grid.fingerprint_model(cnn)  # only the new weights' cells


def test_model_files_and_npz_data(tmp_path, cnn, digits_model):
    import numpy as np

    _, xt, yt = digits_model
    np.savez(tmp_path / "d.npz", x=xt.numpy(), y=yt.numpy(), x_test=xt.numpy(), y_test=yt.numpy())
    torch.jit.script(cnn).save(tmp_path / "cnn.ts")
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(cnn, (xt[:4],), dynamic_shapes={"input": {0: batch}})
    torch.export.save(program, tmp_path / "cnn.pt2")
    body = '[data]\npath = "d.npz"\nlimit = 120\n' + "".join(
        f'[[models]]\nname = "{n}"\nfile = "cnn.{n}"\n' for n in ("ts", "pt2")
    ) + PGD  # fmt: skip
    (tmp_path / "sweep.toml").write_text(body)
    engine.run(sweep.load(tmp_path / "sweep.toml"), progress=False, log=lambda _: None)
    with sweep.Store(tmp_path / "results.db") as db:
        acc = {(c["model"], c["eps"]): c["robust_accuracy"] for c in db.cells()}
    alone = evaluate(cnn, (xt[:120], yt[:120]), "none", progress=False).clean_accuracy
    with sweep.Store(tmp_path / "results.db") as db:
        assert {c["clean_accuracy"] for c in db.cells()} == {alone}
    assert len(acc) == 6


def test_report_tables_and_plot(tmp_path, cnn, capsys, monkeypatch):
    from matplotlib.axes import Axes

    bands, fill_between = [], Axes.fill_between
    monkeypatch.setattr(Axes, "fill_between", lambda ax, x, lo, hi, **kw: bands.append(
        (list(x), list(lo), list(hi))) or fill_between(ax, x, lo, hi, **kw))  # fmt: skip
    path = write_sweep(tmp_path, CNN.format(name="cnn") + PGD, cnn)
    engine.run(sweep.load(path), progress=False, log=lambda _: None)
    assert cli.main(["sweep", "report", str(path), "--out", str(tmp_path / "r")]) == 0
    text = capsys.readouterr().out
    assert "| cnn | pgd | linf | 0.1 (= 25.5/255) | 200 |" in text
    with sweep.Store(tmp_path / "results.db") as db:
        cells = db.cells()
    for c in cells:  # each accuracy with its Wilson interval, "94.2 % [92.0, 95.9]"
        clean = stats.percent_with_interval(c["clean_correct"], c["n"])
        robust = stats.percent_with_interval(c["robust_correct"], c["n"])
        assert f"| {clean} | {robust} |" in text
    with open(tmp_path / "r" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["eps"] for r in rows] == ["0.05 (= 12.75/255)", "0.1 (= 25.5/255)", "0.2 (= 51/255)"]
    assert float(rows[0]["robust %"]) > float(rows[2]["robust %"])
    for row, c in zip(rows, cells, strict=True):
        low, high = stats.interval(c["robust_correct"], c["n"])
        assert (float(row["robust low %"]), float(row["robust high %"])) == (
            round(100 * low, 1), round(100 * high, 1))  # fmt: skip
        assert float(row["clean low %"]) < float(row["clean %"]) < float(row["clean high %"])
    png = (tmp_path / "r" / "robust_accuracy.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert bands == [([c["eps"] for c in cells], [100 * c["robust_low"] for c in cells],
                      [100 * c["robust_high"] for c in cells])]  # fmt: skip
    assert cli.main(["sweep", "report", str(tmp_path / "results.db"), "--csv"]) == 0
    assert capsys.readouterr().out.count("\n") == 4
    assert cli.main(["sweep", "report", str(tmp_path / "other.db")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_agreement_pairs_cells_of_the_same_weights_and_data():
    def cell(attack, weights, robust, id=0):
        config = {"model": {"sha256": weights}, "data": {"sha256": "d"}}
        counts = store.intervals(100, 100, round(100 * robust))
        return {"id": id, "model": "cnn", "attack": attack, "attack_name": attack,
                "norm": "linf", "eps": 0.1, "robust_accuracy": robust, "config": config,
                **counts}  # fmt: skip

    old, new = cell("pgd", "old", 0.9), cell("pgd", "new", 0.5, id=1)
    text = sweep.report.agreement([old, new, cell("min-norm", "new", 0.52, id=2)])
    assert "| 52.0 % [42.3, 61.5] | pgd | 50.0 % [40.4, 59.6] | +2.0 | - |" in text  # not 90.0
    assert sweep.report.agreement([old, cell("min-norm", "new", 0.52)]) == ""

    def outcomes(robust_examples):  # cell id -> the Store.outcomes rows of 100 examples
        return lambda cell_id: [{"example": i, "robust_correct": int(i in robust_examples[cell_id])}
                                for i in range(100)]  # fmt: skip

    # the curve robust on 2 examples the fixed-eps attack broke, and it on 1 the curve broke
    noise = outcomes({1: set(range(50)), 2: set(range(1, 50)) | {60, 61}})
    text = sweep.report.agreement([new, cell("min-norm", "new", 0.52, id=2)], noise)
    assert "| +2.0 | within noise, p = 1 (2 / 1) |" in text  # exact McNemar: 2 * P(X <= 1)
    # 8 examples robust under the curve only: the curve is weaker there, p = 2 / 2^8
    weaker = outcomes({1: set(range(50)), 2: set(range(58))})
    text = sweep.report.agreement([new, cell("min-norm", "new", 0.58, id=2)], weaker)
    assert "| +8.0 | significant, p = 0.0078 (8 / 0) |" in text


def test_store_migrates_version_1_in_one_transaction(tmp_path, cnn, monkeypatch):
    """A v1 store (this code's store with the interval columns dropped, the v1 view and
    version) gains the columns, filled from the counts; a failed migration leaves it v1."""
    path = write_sweep(tmp_path, CNN.format(name="cnn") + PGD.replace("steps = 5", "steps = 2")
                       + '[[attacks]]\nname = "none"\n', cnn, limit=50)  # fmt: skip
    engine.run(sweep.load(path), progress=False, log=lambda _: None)
    db = tmp_path / "results.db"
    with sqlite3.connect(db) as con:
        fresh = con.execute("SELECT n, clean_correct, robust_correct, clean_low, clean_high, "
                            "robust_low, robust_high FROM cells").fetchall()  # fmt: skip
        assert all((lo, hi, rlo, rhi) == (*stats.interval(c, n), *stats.interval(r, n))
                   for n, c, r, lo, hi, rlo, rhi in fresh)  # fmt: skip
        con.executescript("""
            DROP VIEW summary;
            ALTER TABLE cells DROP COLUMN clean_low; ALTER TABLE cells DROP COLUMN clean_high;
            ALTER TABLE cells DROP COLUMN robust_low; ALTER TABLE cells DROP COLUMN robust_high;
            CREATE VIEW summary AS
                SELECT model, attack, norm, eps, n, clean_accuracy, robust_accuracy, seconds, share
                FROM cells ORDER BY model, attack, norm, eps;
            UPDATE meta SET value = '1' WHERE key = 'schema_version';
            INSERT INTO cells SELECT NULL, 'empty', sweep, model, 'empty', attack_name, norm, eps,
                0, 0, 0, NULL, NULL, config, code_version, torch_version, device, world_size,
                share, group_id, seconds, started_at, finished_at FROM cells LIMIT 1;
        """)  # fmt: skip
        v1 = con.execute("SELECT id, n, clean_correct, robust_correct FROM cells").fetchall()

    def columns():
        with sqlite3.connect(db) as con:
            version = con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            return version[0], [r[1] for r in con.execute("PRAGMA table_info(cells)")]

    def broken(*counts):
        raise RuntimeError("killed mid-migration")

    monkeypatch.setattr(store, "intervals", broken)
    with pytest.raises(RuntimeError, match="killed mid-migration"):
        sweep.Store(db)
    assert columns() == ("1", ["id", *store.CELL_COLUMNS[:-4]])  # rolled back whole
    monkeypatch.undo()
    with sweep.Store(db) as migrated:
        cells = {c["id"]: c for c in migrated.cells()}
    assert columns() == ("2", ["id", *store.CELL_COLUMNS])
    assert len(cells) == len(v1) == 5
    for cell_id, n, clean, robust in v1:
        c = cells[cell_id]
        expected = (*stats.interval(clean, n), *stats.interval(robust, n)) if n else (None,) * 4
        assert tuple(c[k] for k in store.INTERVAL_COLUMNS) == expected
    with sqlite3.connect(db) as con:
        names = [d[0] for d in con.execute("SELECT * FROM summary").description]
        assert {"clean_low", "clean_high", "robust_low", "robust_high"} <= set(names)
        con.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    with pytest.raises(ValueError, match="has results schema '3'; this robustkern reads version 2"):
        sweep.Store(db)


def budget_sweep(tmp_path, cnn, budget: str) -> Path:
    return write_sweep(tmp_path, CNN.format(name="cnn") + PGD + f'[run]\nbudget = "{budget}"\n',
                       cnn)  # fmt: skip


def test_budget_chooses_n_that_acts_as_limit(tmp_path, cnn, monkeypatch):
    """Costs fixed at 10 ms per gradient example: 1 + 15 passes per example (PGD-5 at 3 eps)
    make about 0.15 s, so a 10 s budget fits some 60 of the 200 examples, whatever the
    machine (the run itself takes far less)."""
    monkeypatch.setattr(budget, "measure", lambda *a: budget.ModelCost(0.001, 0.01))
    path = budget_sweep(tmp_path, cnn, "10s")
    lines: list[str] = []
    summary = engine.run(sweep.load(path), progress=False, log=lines.append)
    text = "\n".join(lines)
    assert "budget 10 s: seconds per example, measured on 64 examples" in text
    assert "  model cnn: forward 1 ms, gradient 10 ms" in text
    assert "  cnn / pgd linf (3 eps): 151 ms" in text
    found = re.search(r"budget plan: n = (\d+) of 200 examples per cell \(as \[data\] limit = "
                      r"(\d+)\), about [\d.]+ s of 10 s on 1 rank\(s\)", text)  # fmt: skip
    n = int(found[1])
    assert 30 < n < 67 and found[2] == found[1] and summary.examples == n
    assert f"sweep {path}: {n} examples" in text
    with sweep.Store(tmp_path / "results.db") as db:
        cells = db.cells()
    assert [c["n"] for c in cells] == [n] * 3
    assert {c["config"]["data"]["limit"] for c in cells} == {n}
    # exactly [data] limit = n: that sweep finds every cell recorded
    limited = write_sweep(tmp_path, CNN.format(name="cnn") + PGD, cnn, limit=n)
    assert engine.run(sweep.load(limited), progress=False, log=lambda _: None).skipped == 3
    # the report of the budgeted sweep file finds the cells of its n
    budget_sweep(tmp_path, cnn, "10s")
    cells, _, missing = sweep.report.load_cells(path)
    assert (len(cells), missing) == (3, 0)


def test_budget_too_short_or_long_enough(tmp_path, cnn, capsys):
    path = budget_sweep(tmp_path, cnn, "0.001s")
    message = r"the time budget of 0.001 s cannot fit one example per cell: that needs about "
    with pytest.raises(sweep.SweepError, match=message + r"[\d.e-]+ s here") as caught:
        engine.run(sweep.load(path), progress=False, log=lambda _: None)
    needed = float(re.search(r"needs about ([\d.e-]+) s", str(caught.value))[1])
    assert needed > 0.001
    assert cli.main(["sweep", "run", str(path), "--no-progress"]) == 2
    assert "cannot fit one example per cell" in capsys.readouterr().err
    with sweep.Store(tmp_path / "results.db") as db:
        assert db.cells() == []
    # --budget overrides the file: a generous one runs every example, as the file says
    assert cli.main(["sweep", "run", str(path), "--no-progress", "--budget", "1h"]) == 0
    out = capsys.readouterr().out
    assert "budget plan: n = 200 of 200 examples per cell (all)" in out
    with sweep.Store(tmp_path / "results.db") as db:
        assert {c["config"]["data"]["limit"] for c in db.cells()} == {200}
    assert cli.main(["sweep", "run", str(path), "--budget", "soon"]) == 2
    assert "--budget: budget must look like" in capsys.readouterr().err


def test_budget_counts_passes_and_the_busiest_rank():
    def spec(name, **params):
        return AttackSpec(label=name, name=name, norm="linf", eps=(0.1,), params=params)

    assert budget.passes(spec("pgd", steps=5, restarts=2), 3) == (1, 30)
    assert budget.passes(spec("apgd", steps=10, targeted=True, n_targets=3), 2) == (1, 60)
    assert budget.passes(spec("square", queries=100), 2) == (201, 0)
    assert budget.passes(spec("min-norm", steps=20), 2) == (1, 20 + 10 * 2)  # FMN + checks
    assert budget.passes(spec("fast", steps=10), 1) == (1, 10 + 10 * 3)  # APGD-CE, APGD-T x 3
    # standard: APGD-CE, APGD-T x 9, FAB-T x 9 (a forward and a gradient a step), Square
    assert budget.passes(spec("standard", steps=10, queries=50), 1) == (1 + 90 + 50, 10 + 90 + 90)
    assert budget.passes(spec("rand", steps=10), 1) == (1, 2 * 10 * 20)  # two APGDs, EoT 20
    assert budget.passes(spec("fab", steps=10), 1) == (11, 10 * budget.FAB_CLASSES)
    assert budget.passes(spec("none"), 1) == (1, 0)
    # minimum-norm attacks: one run for every eps
    assert budget.passes(spec("cw", steps=10, binary_steps=3), 2) == (1, 30)
    assert budget.passes(spec("deepfool", steps=5, candidates=4), 3) == (1, 20)
    assert budget.passes(spec("hop_skip_jump", queries=100), 3) == (101, 0)
    assert budget.passes(spec("rays", queries=100), 2) == (201, 0)  # bounded: per eps
    assert budget.passes(spec("sparse_rs", queries=100), 1) == (101, 0)
    # 24-example batches over 2 ranks: rank 0 takes batches 0, 2, ...
    assert budget.largest_fitting(1.0, 30, 200, 24, 1) == 30
    assert budget.largest_fitting(1.0, 30, 200, 24, 2) == 54  # 24 + 6 on rank 0
    assert budget.largest_fitting(1.0, 30, 40, 24, 2) == 40
    assert budget.largest_fitting(1.0, 0.5, 200, 24, 2) == 0


def test_cascade_presets_take_one_eps_per_sample(tmp_path, cnn):
    """share = "batch" hands the "fast" preset (APGD-CE, APGD-T) one eps per row."""
    body = (
        CNN.format(name="cnn")
        + """
[[attacks]]
name = "fast"
norm = "linf"
eps = [0.02, 0.2]
steps = 5
[run]
share = "batch"
"""
    )
    path = write_sweep(tmp_path, body, cnn, limit=40)
    engine.run(sweep.load(path), progress=False, log=lambda _: None)
    with sweep.Store(tmp_path / "results.db") as db:
        acc = {c["eps"]: c["robust_accuracy"] for c in db.cells()}
    x, y = engine.load_data(sweep.load(path))
    small = evaluate(cnn, (x, y), "fast", eps=0.02, steps=5, progress=False).robust_accuracy
    assert acc[0.2] < 0.2 < acc[0.02]  # each row attacked at its own eps
    assert abs(acc[0.02] - small) <= 0.05


def test_batchnorm_models_sweep_as_factory_and_as_exported_files(tmp_path):
    """num_batches_tracked is a 0-dim buffer: fingerprinting it crashed every BatchNorm sweep."""
    torch.manual_seed(0)
    net = models.small_resnet(1, 10).eval()
    torch.save(net.state_dict(), tmp_path / "resnet.pt")
    x = torch.rand(4, 1, 8, 8)
    torch.jit.trace(net, x).save(tmp_path / "resnet.ts")
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(net, (x,), dynamic_shapes={"input": {0: batch}})
    torch.export.save(program, tmp_path / "resnet.pt2")
    factory = (
        '[[models]]\nname = "factory"\nfactory = "robustkern.models:small_resnet"\n'
        'kwargs = { in_channels = 1, num_classes = 10 }\nweights = "resnet.pt"\n'
    )
    files = "".join(f'[[models]]\nname = "{n}"\nfile = "resnet.{n}"\n' for n in ("ts", "pt2"))
    path = write_sweep(tmp_path, factory + files + PGD.replace("steps = 5", "steps = 2"), limit=40)
    engine.run(sweep.load(path), progress=False, log=lambda _: None)
    with sweep.Store(tmp_path / "results.db") as db:
        cells = db.cells()
    assert len(cells) == 9
    # the same weights give the same outcomes whichever way the model arrives
    by_model = {m: sorted((c["eps"], c["robust_accuracy"]) for c in cells if c["model"] == m)
                for m in ("factory", "ts", "pt2")}  # fmt: skip
    assert by_model["factory"] == by_model["ts"] == by_model["pt2"]


def image_folder(root: Path) -> Path:
    """Two classes of two grayscale PNGs each, in two sizes (10x12 and 6x6)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i, hw in enumerate([(10, 12), (6, 6)]):
            Image.fromarray(rng.integers(0, 256, hw, dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


def test_image_folder_data_with_image_size(tmp_path):
    image_folder(tmp_path / "imgs")
    path = tmp_path / "sweep.toml"
    path.write_text(
        '[data]\npath = "imgs"\nimage_size = [8, 9]\nsplit = "all"\n' + RANDOM_CNN + PGD
    )
    loaded = sweep.load(path)
    assert loaded.data.image_size == (8, 9) and loaded.data.path == tmp_path / "imgs"
    x, y = engine.load_data(loaded)
    assert x.shape == (4, 1, 8, 9) and sorted(y.tolist()) == [0, 0, 1, 1]
    config = sweep.config.cell_config(
        loaded, loaded.models[0], loaded.attacks[0], 0.05, {"data": "d", "m": "w"}
    )
    assert config["data"]["image_size"] == (8, 9) and config["data"]["path"] == "imgs"
    path.write_text('[data]\nname = "digits"\n' + RANDOM_CNN + PGD)
    unset = sweep.load(path)  # no image_size key: the cell hashes of older stores stay valid
    config = sweep.config.cell_config(unset, unset.models[0], unset.attacks[0], 0.05,
                                      {"data": "d", "m": "w"})  # fmt: skip
    assert "image_size" not in config["data"]


@pytest.mark.parametrize(
    "data, message",
    [
        ('path = "imgs"\nimage_size = 0', "image_size must be a positive int or [H, W], got 0"),
        ('path = "imgs"\nimage_size = [8]', "image_size must be a positive int or [H, W]"),
        ('path = "imgs"\nimage_size = [8, 0]', "image_size must be a positive int or [H, W]"),
        ('path = "imgs"\nimage_size = "8"', "image_size must be a positive int or [H, W]"),
        ('path = "imgs"\nimage_size = true', "image_size must be a positive int or [H, W]"),
        ('name = "digits"\nimage_size = 8', "image_size resizes image folders only"),
        ('path = "cifar-10-batches-bin"\nimage_size = 8', "this data is cifar-10-bin"),
        ('path = "nothing"', "is not an existing .npz file, image folder or cifar-10-batches-bin"),
    ],
)
def test_bad_data_folders_and_image_sizes(tmp_path, data, message):
    image_folder(tmp_path / "imgs")
    (tmp_path / "cifar-10-batches-bin").mkdir()
    path = tmp_path / "sweep.toml"
    path.write_text(f"[data]\n{data}\n" + RANDOM_CNN + PGD)
    with pytest.raises(sweep.SweepError) as caught:
        sweep.load(path)
    assert message in str(caught.value) and str(path) in str(caught.value)


def test_image_folder_of_mixed_sizes_needs_image_size(tmp_path):
    image_folder(tmp_path / "imgs")
    path = tmp_path / "sweep.toml"
    path.write_text('[data]\npath = "imgs"\n' + RANDOM_CNN + PGD)
    with pytest.raises(ValueError, match="pass image_size"):
        engine.load_data(sweep.load(path))


def test_sweep_files_name_fab_autoattacks_versions_and_l1(tmp_path):
    """The presets and FAB by name, L1 where the attack runs it, and a clear refusal where not."""
    body = RANDOM_CNN + "".join(
        f'\n[[attacks]]\nname = "{name}"\nnorm = "{norm}"\neps = [{eps}]\n{extra}\n'
        for name, norm, eps, extra in [
            ("fab", "l2", 1.0, "targeted = true\nn_targets = 3"),
            ("plus", "linf", 0.1, "steps = 5"),
            ("rand", "linf", 0.1, "eot = 4"),
            ("apgd", "l1", 5.0, "large_eps = false"),
            ("standard", "l1", 5.0, ""),
        ]
    )
    loaded = sweep.load(write_sweep(tmp_path, body))
    assert [(a.name, a.norm) for a in loaded.attacks] == [
        ("fab", "l2"), ("plus", "linf"), ("rand", "linf"), ("apgd", "l1"), ("standard", "l1"),
    ]  # fmt: skip
    assert loaded.attacks[2].params == {"eot": 4}
    bad = RANDOM_CNN + '\n[[attacks]]\nname = "min-norm"\nnorm = "l0"\neps = [1.0]\n'
    with pytest.raises(sweep.SweepError, match="min-norm attacks in linf or l2 or l1, not 'l0'"):
        sweep.load(write_sweep(tmp_path, bad))
