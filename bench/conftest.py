"""`pytest bench`: side-by-side timings in one run, written to bench/results/<device>.md.

Each benchmark adds rows to a table through the `report` fixture; at the end of the session
the tables go to the terminal and to the results file with date, device, torch version and the
exact command, so a reader can reproduce them.
"""

import datetime
import os
import platform
import re
import sys
from pathlib import Path

import pytest
import torch

from robustkern._env import device_name

RESULTS = Path(__file__).parent / "results"
_tables: dict[str, list[str]] = {}


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


class Report:
    def table(self, title: str, header: list[str]) -> None:
        if title not in _tables:
            _tables[title] = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def row(self, title: str, cells: list) -> None:
        _tables[title].append("| " + " | ".join(str(c) for c in cells) + " |")


@pytest.fixture(scope="session")
def report() -> Report:
    return Report()


@pytest.fixture(scope="session")
def mnist_cnn():
    """The small CNN trained on mnist-5k (a standard, non-robust model) and its test split."""
    from robustkern import data, models, training

    torch.manual_seed(0)
    x, y, xt, yt = data.load("mnist-5k")
    model = models.small_cnn(1, 10)
    training.fit(model, (x, y), epochs=10, batch_size=64, progress=False)
    return model.eval(), xt, yt


def pytest_sessionfinish(session, exitstatus):
    if not _tables:
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = device_name(device)
    lines = [
        f"# Benchmarks on {name}",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- device: {name}",
        f"- torch {torch.__version__}, Python {platform.python_version()}",
        f"- command: `{' '.join(['pytest', *sys.argv[1:]])}`",
        "",
    ]
    for title, rows in _tables.items():
        lines += [f"## {title}", "", *rows, ""]
    text = "\n".join(lines)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{slug(name.split(',')[0])}-{torch.get_num_threads()}t.md"
    if device == "cuda":
        out = RESULTS / f"{slug(name)}.md"
    if os.environ.get("ROBUSTKERN_BENCH_OUT"):
        out = Path(os.environ["ROBUSTKERN_BENCH_OUT"])
    out.write_text(text)
    print("\n\n" + text + f"\n(written to {out})")
