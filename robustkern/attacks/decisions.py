"""The model as a decision-based (hard-label) attack sees it: a predicted label per input, and
nothing else. ``labels_only`` wraps a classifier so that the attack holds only its argmax, and
``Oracle`` answers "is this point adversarial for that sample?" while counting the queries each
sample spends, so an attack built on it cannot read a logit's value even by mistake.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from robustkern.checks import check_logits

# Input values per forward: an attack's probes of many samples at once go through the model in
# slices this size (about 16 MB of float32), so memory does not grow with the probe count.
CHUNK_VALUES = 1 << 22
# The model's batches on a CPU: smaller, as a CPU runs a small model fastest on batches that stay
# in its caches (small CNN on 28x28: 111 us an image at 256 rows, 243 us at 5,376).
CPU_CALL_VALUES = 1 << 17


def labels_only(
    model, labels: tuple[int, int] | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``predict(x) -> int64 (N,)``: the model's predicted labels, argmax of its output, run under
    ``torch.no_grad`` in slices of ``CHUNK_VALUES`` input values (``CPU_CALL_VALUES`` on a CPU);
    the outputs themselves never leave this function. ``labels``: the (min, max) label from
    ``check_inputs``, checked against the output's width at the first forward (a label the model
    cannot output is an error)."""
    checked = labels is None

    def predict(x: torch.Tensor) -> torch.Tensor:
        nonlocal checked
        if not len(x):
            return torch.zeros(0, dtype=torch.int64, device=x.device)
        parts = []
        with torch.no_grad():
            per_call = CHUNK_VALUES if x.device.type != "cpu" else CPU_CALL_VALUES
            for part in x.split(max(1, per_call // max(1, x[0].numel()))):
                out = model(part)
                if not checked:
                    check_logits(out, len(part), labels)
                    checked = True
                parts.append(out.argmax(1))
        return torch.cat(parts)

    return predict


class Oracle:
    """``oracle(points, rows) -> bool (M,)``: whether each point (M, D), flattened, is
    adversarial for the sample ``rows[i]`` it was made for (untargeted: predicted other than
    ``y``; targeted: predicted as ``y``). Every point is one query charged to its sample;
    ``used`` (N,) holds the running counts. ``clean(x)`` scores the unperturbed batch without
    charging it (the forward that only chooses which samples to attack)."""

    def __init__(self, model, y: torch.Tensor, targeted: bool, shape, labels: tuple[int, int]):
        self._predict = labels_only(model, labels)
        self.y, self.targeted, self.shape = y, targeted, tuple(shape)
        self.used = torch.zeros(len(y), dtype=torch.int64, device=y.device)

    def _adversarial(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return pred == target if self.targeted else pred != target

    def clean(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(adversarial bool (N,), predicted labels (N,)) at the unperturbed inputs, uncounted."""
        pred = self._predict(x)
        return self._adversarial(pred, self.y), pred

    def remaining(self, rows: torch.Tensor, budget: int) -> torch.Tensor:
        """Queries each of ``rows`` may still spend."""
        return budget - self.used[rows]

    def __call__(self, points: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        self.used.index_add_(0, rows, torch.ones_like(rows))
        pred = self._predict(points.reshape(len(points), *self.shape))
        return self._adversarial(pred, self.y[rows])
