"""robustkern.resume: fingerprints by content, atomic state that survives a kill, clear
refusals of files written for other settings."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from robustkern import models, resume

ROOT = Path(__file__).resolve().parents[1]
WRITER = """
import sys, torch
from robustkern import resume
path, k = sys.argv[1], 0
while True:
    k += 1
    resume.write_state(path, {"k": k, "payload": torch.full((200_000,), float(k))})
"""


def test_digest_is_by_content_and_keeps_the_sweep_store_hash():
    config = {"eps": 0.1, "model": {"sha256": "ab"}, "steps": [1, 2]}
    expected = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    assert resume.digest(config) == expected  # the sweep store's cell hashes stay valid
    torch.manual_seed(0)
    a, b = models.small_resnet(1, 10), models.small_resnet(1, 10)  # BatchNorm: 0-dim buffers
    assert resume.digest(a) != resume.digest(b)
    b.load_state_dict(a.state_dict())
    assert resume.digest({"m": a}, torch.ones(3)) == resume.digest({"m": b}, torch.ones(3))
    assert resume.digest(torch.ones(3)) != resume.digest(torch.ones(3, dtype=torch.float64))


def test_state_written_while_killed_is_the_old_or_the_new_never_half(tmp_path):
    path = tmp_path / "state.pt"
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], env=env)
    try:
        deadline = time.time() + 60
        while not path.exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    state = resume.read_state(path, "state")  # whole: the old file or the new one
    assert state["payload"].eq(float(state["k"])).all()
    resume.clear_stale(path)  # what the process that takes over writing does
    assert not list(tmp_path.glob(".state.pt.tmp*")) and path.exists()


def test_damaged_and_foreign_files_are_named(tmp_path):
    assert resume.read_state(tmp_path / "none.pt", "state") is None
    (tmp_path / "bad.pt").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match=r"state .*bad\.pt cannot be read: it is truncated"):
        resume.read_state(tmp_path / "bad.pt", "state")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match=r"results .*bad\.json cannot be read"):
        resume.read_json(tmp_path / "bad.json", "results")
    with pytest.raises(ValueError, match=r"other settings \(epochs, seed\)"):
        resume.check_same({"epochs": 1, "seed": 0}, {"epochs": 2, "seed": 1}, "f", "results")
    resume.check_same({"epochs": 1}, {"epochs": 1}, "f", "results")
