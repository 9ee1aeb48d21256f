"""Typed results that checks hand to each other. A check writes its result into its report
entry's ``figures`` (``to_figures``), so a resumed run rebuilds it from report.json
(``from_figures``); a reader asks ``Suite.result(name, model)`` and gets the typed value or
None, never a path into JSON."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WhiteBox:
    """The white-box check at the main threat: accuracies on ``n`` images with their 95 %
    intervals, and per image whether it stayed robust (for paired comparisons)."""

    clean: float
    robust: float
    n: int
    clean_interval: tuple[float, float]
    robust_interval: tuple[float, float]
    robust_correct: tuple[bool, ...]

    def to_figures(self) -> dict:
        return {
            "clean": self.clean, "robust": self.robust, "n": self.n,
            "clean_interval": list(self.clean_interval),
            "robust_interval": list(self.robust_interval),
            "robust_correct": [int(v) for v in self.robust_correct],
        }  # fmt: skip

    @classmethod
    def from_figures(cls, figures: dict) -> WhiteBox:
        main = figures["main"]
        return cls(
            main["clean"],
            main["robust"],
            main["n"],
            tuple(main["clean_interval"]),
            tuple(main["robust_interval"]),
            tuple(bool(v) for v in main["robust_correct"]),
        )

    @property
    def robust_share(self) -> float:
        """The share of correctly classified images that stayed robust."""
        return self.robust / max(self.clean, 1e-12)


RESULTS = {"white_box": WhiteBox}  # checks whose result others read, by name
