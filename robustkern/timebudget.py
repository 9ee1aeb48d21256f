"""Time budgets a user sets ("10m"), shared by the suite, ``evaluate`` and sweeps."""

from __future__ import annotations

import math
import re
import time


def parse_budget(text: str | float | None) -> float | None:
    """Seconds from 600, "600s", "10m", "1.5h" or "1h30m"; None or "none": no budget."""
    if text is None or (isinstance(text, str) and text.strip().lower() in ("none", "")):
        return None
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        parts = re.fullmatch(r"\s*(?:([\d.]+)h)?\s*(?:([\d.]+)m)?\s*(?:([\d.]+)s?)?\s*", text)
        if parts is None or not any(parts.groups()):
            raise ValueError(f"budget must look like 600, 90s, 10m or 1h30m, got {text!r}")
        try:
            h, m, s = (float(g) if g else 0.0 for g in parts.groups())
        except ValueError:
            raise ValueError(
                f"budget must look like 600, 90s, 10m or 1h30m, got {text!r}"
            ) from None
        seconds = 3600 * h + 60 * m + s
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"budget must be a positive time, got {text!r}")
    return seconds


def minutes(seconds: float) -> str:
    """'45 s' or '3.2 min'."""
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


class Deadline:
    """A budget's clock: started at construction; ``None`` seconds never runs out."""

    def __init__(self, seconds: float | None, spent: float = 0.0):
        self.seconds, self.start = seconds, time.perf_counter() - spent

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @property
    def left(self) -> float | None:
        return None if self.seconds is None else self.seconds - self.elapsed

    def allows(self, more: float) -> bool:
        """Whether work estimated at ``more`` seconds still fits."""
        return self.seconds is None or self.elapsed + more <= self.seconds
