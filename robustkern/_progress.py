"""Progress bars that do not flood a log: tqdm, redrawn at most every few seconds when stderr is
not a terminal (a redirected run's log grew by a line every 0.1 s, megabytes per job)."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

LOG_INTERVAL = 5.0  # seconds between redraws when writing to a file or pipe


def progress_bar(iterable=None, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)``; off a terminal, redrawn every LOG_INTERVAL seconds at most."""
    if not _on_terminal():
        kwargs.setdefault("mininterval", LOG_INTERVAL)
        kwargs.setdefault("maxinterval", max(LOG_INTERVAL, kwargs["mininterval"]))
    return tqdm(iterable, **kwargs)


def _on_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False
