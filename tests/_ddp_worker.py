"""Run under torchrun by test_trainer.py: fits a small CNN with DDP (gloo) and rank 0 saves the
final weights and history. Arguments: output file, method."""

import sys

import torch
import torch.distributed as dist

from robustkern import data, models, training


def main(out: str, method: str) -> None:
    dist.init_process_group("gloo")
    x, y, xt, yt = data.load("digits")
    torch.manual_seed(0)
    model = models.small_cnn(1, 10, width=8)
    history = training.fit(model, (x[:300], y[:300]), (xt[:101], yt[:101]), **settings(method))
    if dist.get_rank() == 0:
        torch.save({"model": model.state_dict(), "history": history.to_dict()}, out)
    dist.barrier()
    dist.destroy_process_group()


def settings(method: str) -> dict:
    """The same for the DDP run and the single process it is compared with."""
    return dict(method=method, eps=0.1 if method != "standard" else 0.0, steps=3, epochs=2,
                batch_size=50, optimizer="sgd", lr=0.2, val_steps=3, train_eval=64,
                progress=False)  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
