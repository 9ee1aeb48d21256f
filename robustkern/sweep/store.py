"""The results store: one SQLite file in WAL mode, written by one process (rank 0) in
transactions, so a cell is either fully recorded or absent, and readable with plain SQL.

Schema (version 2)::

    meta(key TEXT PRIMARY KEY, value TEXT)      -- schema_version, created_by
    cells(                                      -- one row per model x attack x eps
        id INTEGER PRIMARY KEY,
        config_hash TEXT UNIQUE,                -- sha256 of `config`: the cell's identity
        sweep TEXT,                             -- the sweep file that produced it
        model TEXT, attack TEXT,                -- the sweep's model name and attack label
        attack_name TEXT, norm TEXT, eps REAL,  -- attack kind ("pgd", ...), "linf"/"l2"
        n INTEGER,                              -- examples evaluated
        clean_correct INTEGER, robust_correct INTEGER,
        clean_accuracy REAL, robust_accuracy REAL,   -- NULL when n = 0
        config TEXT,                            -- JSON: data, model, attack, seed (+ hashes)
        code_version TEXT, torch_version TEXT,
        device TEXT, world_size INTEGER,        -- where it ran, and on how many ranks
        share TEXT,                             -- how eps values shared work (see engine)
        group_id TEXT,                          -- cells computed together share it...
        seconds REAL,                           -- ...and this wall time
        started_at TEXT, finished_at TEXT,      -- UTC, ISO 8601
        clean_low REAL, clean_high REAL,        -- 95 % Wilson intervals of the accuracies
        robust_low REAL, robust_high REAL)      --   (stats.interval), NULL when n = 0
    outcomes(                                   -- one row per cell x example
        cell_id INTEGER REFERENCES cells(id),
        example INTEGER,                        -- index into the sweep's data (after limit)
        label INTEGER,
        clean_correct INTEGER, robust_correct INTEGER,   -- 0/1
        distance REAL,                          -- min-norm: smallest adversarial distance
                                                --   (0 if misclassified, inf if none found);
                                                --   NULL for fixed-eps attacks
        PRIMARY KEY (cell_id, example))
    summary: a view of cells with the columns a table needs (accuracies with their intervals)

Version 1 had no interval columns. Opening a version-1 store migrates it in one transaction:
the four columns are added (at the end of ``cells``, where a new store has them too), filled
from each cell's counts (n, clean_correct, robust_correct), the view is rebuilt and
schema_version set to "2". A store of any other version is refused.

Example: ``SELECT model, attack, eps, robust_accuracy FROM cells WHERE norm = 'linf'``.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from robustkern import stats

SCHEMA_VERSION = "2"
INTERVAL_COLUMNS = ("clean_low", "clean_high", "robust_low", "robust_high")
_SUMMARY_VIEW = """
CREATE VIEW IF NOT EXISTS summary AS
    SELECT model, attack, norm, eps, n, clean_accuracy, clean_low, clean_high,
           robust_accuracy, robust_low, robust_high, seconds, share
    FROM cells ORDER BY model, attack, norm, eps;
"""
_TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cells (
    id INTEGER PRIMARY KEY,
    config_hash TEXT NOT NULL UNIQUE,
    sweep TEXT NOT NULL,
    model TEXT NOT NULL,
    attack TEXT NOT NULL,
    attack_name TEXT NOT NULL,
    norm TEXT NOT NULL,
    eps REAL NOT NULL,
    n INTEGER NOT NULL,
    clean_correct INTEGER NOT NULL,
    robust_correct INTEGER NOT NULL,
    clean_accuracy REAL,
    robust_accuracy REAL,
    config TEXT NOT NULL,
    code_version TEXT NOT NULL,
    torch_version TEXT NOT NULL,
    device TEXT NOT NULL,
    world_size INTEGER NOT NULL,
    share TEXT NOT NULL,
    group_id TEXT NOT NULL,
    seconds REAL NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    clean_low REAL,
    clean_high REAL,
    robust_low REAL,
    robust_high REAL
);
CREATE TABLE IF NOT EXISTS outcomes (
    cell_id INTEGER NOT NULL REFERENCES cells(id) ON DELETE CASCADE,
    example INTEGER NOT NULL,
    label INTEGER NOT NULL,
    clean_correct INTEGER NOT NULL,
    robust_correct INTEGER NOT NULL,
    distance REAL,
    PRIMARY KEY (cell_id, example)
) WITHOUT ROWID;
"""
_SCHEMA = _TABLES + _SUMMARY_VIEW
CELL_COLUMNS = (
    "config_hash", "sweep", "model", "attack", "attack_name", "norm", "eps", "n",
    "clean_correct", "robust_correct", "clean_accuracy", "robust_accuracy", "config",
    "code_version", "torch_version", "device", "world_size", "share", "group_id", "seconds",
    "started_at", "finished_at", *INTERVAL_COLUMNS,
)  # fmt: skip
OUTCOME_COLUMNS = ("example", "label", "clean_correct", "robust_correct", "distance")


def intervals(n: int, clean_correct: int, robust_correct: int) -> dict[str, float | None]:
    """A cell's INTERVAL_COLUMNS: the 95 % Wilson intervals of its accuracies, None when n = 0."""
    out: dict[str, float | None] = {}
    for name, k in (("clean", clean_correct), ("robust", robust_correct)):
        low, high = stats.interval(k, n) if n else (None, None)
        out[f"{name}_low"], out[f"{name}_high"] = low, high
    return out


class Store:
    """A results database. ``record`` writes cells with their outcomes in one transaction."""

    def __init__(self, path: str | Path, *, create: bool = True):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise FileNotFoundError(f"results store {self.path} does not exist")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # autocommit mode: transactions are the explicit BEGIN IMMEDIATE ... COMMIT in `record`
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=60)
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self._check_or_create()
        except sqlite3.DatabaseError as e:
            self.db.close()
            raise ValueError(f"{self.path} is not a usable SQLite results store: {e}") from None
        except BaseException:
            self.db.close()
            raise

    def _check_or_create(self) -> None:
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master")}
        if "meta" in tables:
            version = self._version()
            if version == "1":
                self._migrate_from_1()
            elif version != SCHEMA_VERSION:
                raise ValueError(
                    f"{self.path} has results schema {version!r}; this robustkern reads "
                    f"version {SCHEMA_VERSION} (and migrates version 1): a store written by a "
                    "newer robustkern needs that version"
                )
            return
        if tables:
            raise ValueError(f"{self.path} is an SQLite file but not a robustkern results store")
        self.db.executescript(  # one transaction: a killed creation leaves no half schema
            f"BEGIN IMMEDIATE; {_SCHEMA} INSERT INTO meta VALUES "
            f"('schema_version', '{SCHEMA_VERSION}'), ('created_by', 'robustkern sweep'); COMMIT;"
        )

    def _version(self) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return row and row[0]

    def _migrate_from_1(self) -> None:
        """Version 1 -> 2 in one transaction: the interval columns, filled from the counts."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            if self._version() == "1":  # not migrated meanwhile by a process we waited for
                for column in INTERVAL_COLUMNS:
                    self.db.execute(f"ALTER TABLE cells ADD COLUMN {column} REAL")
                counts = self.db.execute("SELECT id, n, clean_correct, robust_correct FROM cells")
                updates = [(*intervals(*r[1:]).values(), r[0]) for r in counts.fetchall()]
                assignments = ", ".join(f"{c} = ?" for c in INTERVAL_COLUMNS)
                self.db.executemany(f"UPDATE cells SET {assignments} WHERE id = ?", updates)
                self.db.execute("DROP VIEW IF EXISTS summary")
                self.db.execute(_SUMMARY_VIEW)
                self.db.execute(
                    "UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,)
                )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def finished(self) -> set[str]:
        """The config hashes of every recorded cell."""
        return {r[0] for r in self.db.execute("SELECT config_hash FROM cells")}

    def record(self, cells: list[tuple[dict, list[tuple]]]) -> int:
        """Writes (cell row, outcome rows) pairs in one transaction; a cell already present
        (recorded meanwhile by another run) is left as it is. Returns the number written."""
        insert_cell = (
            f"INSERT INTO cells ({', '.join(CELL_COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(CELL_COLUMNS))})"
        )
        insert_outcome = f"INSERT INTO outcomes VALUES (?, {', '.join('?' * len(OUTCOME_COLUMNS))})"
        written = 0
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for row, outcomes in cells:
                exists = self.db.execute(
                    "SELECT 1 FROM cells WHERE config_hash = ?", (row["config_hash"],)
                ).fetchone()
                if exists:
                    continue
                # the intervals always follow from the counts, whatever the row says
                row = row | intervals(row["n"], row["clean_correct"], row["robust_correct"])
                values = [json.dumps(row[c]) if c == "config" else row[c] for c in CELL_COLUMNS]
                cell_id = self.db.execute(insert_cell, values).lastrowid
                self.db.executemany(insert_outcome, [(cell_id, *o) for o in outcomes])
                written += 1
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return written

    def cells(self) -> list[dict]:
        """Every cell as a dict of its columns (config parsed), ordered for tables."""
        cursor = self.db.execute(
            f"SELECT id, {', '.join(CELL_COLUMNS)} FROM cells ORDER BY model, attack, norm, eps"
        )
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, r, strict=True)) for r in cursor]
        for r in rows:
            r["config"] = json.loads(r["config"])
        return rows

    def outcomes(self, cell_id: int) -> list[dict]:
        cursor = self.db.execute(
            f"SELECT {', '.join(OUTCOME_COLUMNS)} FROM outcomes WHERE cell_id = ? ORDER BY example",
            (cell_id,),
        )
        return [dict(zip(OUTCOME_COLUMNS, r, strict=True)) for r in cursor]

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
