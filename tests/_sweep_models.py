"""Models for test_sweep.py that sweep files name as module:factory."""

import os
import time
from pathlib import Path

from torch import nn

from robustkern import models


class _Slow(nn.Module):
    """While $SWEEP_TEST_MARKER is set: touches that file on each forward of more than two
    examples (the sweep's model check uses one and two), then sleeps, so a test can kill the
    sweep while this model's cell is running."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        marker = os.environ.get("SWEEP_TEST_MARKER")
        if marker and x.shape[0] > 2:
            Path(marker).touch()
            time.sleep(0.05)
        return self.net(x)


def slow_cnn(**kwargs) -> nn.Module:
    return _Slow(models.small_cnn(**kwargs))
