"""Run as a subprocess by test_trainer.py, which SIGKILLs it mid-epoch: PGD training on digits
through a slow Dataset (so an epoch lasts long enough to be interrupted) with a checkpoint every
few steps. Argument: the checkpoint path."""

import sys
import time

import torch
from torch.utils.data import Dataset

from robustkern import data, models, training


class SlowDigits(Dataset):
    def __init__(self, x, y, delay):
        self.x, self.y, self.delay = x, y, delay

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        time.sleep(self.delay)
        return self.x[i], self.y[i]


def run(checkpoint, delay: float = 0.0) -> training.History:
    x, y, xt, yt = data.load("digits")
    torch.manual_seed(0)
    model = models.small_cnn(1, 10, width=8)
    return training.fit(
        model, SlowDigits(x[:600], y[:600], delay), (xt[:100], yt[:100]), method="pgd",
        eps=0.1, steps=3, epochs=3, batch_size=50, val_steps=3, train_eval=100, track=[0, 1],
        checkpoint=checkpoint, checkpoint_every=4, progress=False,
    )  # fmt: skip


if __name__ == "__main__":
    run(sys.argv[1], delay=0.002)
