"""Training checkpoints: everything a run needs to continue exactly where it stopped (model,
optimiser, scheduler, scaler, every rank's RNG state, the position, the running totals, the
history and the best epoch), written atomically at each epoch end and every
``checkpoint_every`` steps by rank 0, read back with ``weights_only=True``."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from robustkern import resume

CHECKPOINT_FORMAT = 2  # 2: the key is TrainConfig.resume_key(); format 1 files are refused


def load_checkpoint(path: str | Path) -> dict:
    """A trainer checkpoint, read with ``weights_only=True``; a clear error if it is not one."""
    state = resume.read_state(path, "checkpoint")
    if state is None:
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is not a robustkern training checkpoint of format {CHECKPOINT_FORMAT} "
            f"(found {state.get('format')!r}; an older robustkern's checkpoint cannot resume: "
            "pass resume=False to start afresh)"
        )
    return state


def save(trainer) -> None:
    """Writes ``trainer``'s checkpoint (every rank takes part: their RNG states are gathered)."""
    path = trainer.config.checkpoint
    if path is None:
        return
    rng = [torch.get_rng_state()]
    if trainer.world > 1:  # every rank's RNG (dropout masks), so a resumed epoch is exact
        gathered = [None] * trainer.world
        dist.all_gather_object(gathered, rng[0])
        rng = gathered
    if trainer.rank != 0:
        return
    state = {
        "format": CHECKPOINT_FORMAT, "key": trainer.key, "finished": trainer.finished,
        "epoch": trainer.epoch, "batch": trainer.batch, "step": trainer.step,
        "model": trainer.model.state_dict(), "optimizer": trainer.opt.state_dict(),
        "scheduler": trainer.sched.state_dict(),
        "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
        "rng": rng, "totals": vars(trainer.totals), "history": trainer.history.to_dict(),
        "best": vars(trainer.best), "bad_epochs": trainer.bad_epochs,
    }  # fmt: skip
    resume.write_state(path, state)


def restore(trainer) -> None:
    """Continues ``trainer`` from its checkpoint, which must come from the same settings."""
    path = trainer.config.checkpoint
    resume.clear_stale(path)  # this process writes the checkpoint from now on
    state = load_checkpoint(path)
    resume.check_same(state["key"], trainer.key, path, "checkpoint")
    trainer.model.load_state_dict(state["model"])
    trainer.opt.load_state_dict(state["optimizer"])
    trainer.sched.load_state_dict(state["scheduler"])
    if trainer.scaler is not None:
        trainer.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"][trainer.rank])
    trainer.epoch, trainer.batch, trainer.step = state["epoch"], state["batch"], state["step"]
    trainer.restore_progress(state["totals"], state["history"], state["best"], state["bad_epochs"])
    trainer.finished = state["finished"]
