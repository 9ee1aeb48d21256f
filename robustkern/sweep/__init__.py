"""Large-scale robustness sweeps: many models x attacks x eps from one TOML file, sharded over
torch.distributed ranks, resumable, results in an SQLite store.

* ``config``: the sweep file, checked in full before any work (``load``, ``SweepError``).
* ``grid``: the cells (model x attack x eps) and the hashes that identify them.
* ``engine``: ``run(sweep)``, cells grouped per model and attack so that eps values share work
  (see its docstring for the sharing modes and the sharding).
* ``store``: the SQLite schema (documented there) and ``Store``.
* ``budget``: sizing the run to ``[run] budget`` (the number of examples per cell).
* ``report``: markdown/CSV tables and robust-accuracy-vs-eps plots (``write``), every accuracy
  with its 95 % interval.

Sweep file::

    [data]
    name = "digits"            # or path = "file.npz" (relative to the sweep file)
    split = "test"             # "test", "train" or "all"
    limit = 200                # the first N examples
    [[models]]
    name = "cnn"
    factory = "robustkern.models:small_cnn"    # or file = "model.pt2" / TorchScript
    kwargs = { in_channels = 1, num_classes = 10 }
    weights = "cnn.pt"         # relative to the sweep file
    [[attacks]]
    name = "pgd"               # see config.ATTACK_OPTIONS for attacks and their options
    norm = "linf"
    eps = [0.05, 0.1, "8/255"]
    steps = 10
    [store]
    path = "results.db"        # relative to the sweep file (the default)
    [run]
    seed = 0
    batch_size = 256           # rows per attack call (share = "batch": / the eps count)
    device = "auto"            # "auto", "cpu", "cuda"
    share = "auto"             # "cascade" (CPU default), "batch" (GPU default) or "none"
    budget = "30m"             # optional: as many examples (the first n) as fit, see budget
"""

from robustkern.sweep.config import SWEEP_ATTACKS, Sweep, SweepError, load
from robustkern.sweep.engine import Summary, run
from robustkern.sweep.report import write as write_report
from robustkern.sweep.store import Store

__all__ = [
    "SWEEP_ATTACKS",
    "Store",
    "Summary",
    "Sweep",
    "SweepError",
    "load",
    "run",
    "write_report",
]
