"""Where a result came from: the device's name, the code's version, and seeds derived from
keys (so a draw depends on what it is for, not on how much randomness ran before it)."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
from pathlib import Path

import torch
import torch.distributed as dist

import robustkern


def device_name(device: torch.device | str) -> str:
    """A GPU's name, or the CPU's model with the number of threads torch uses."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {torch.get_num_threads()} threads"


@functools.cache
def code_version() -> str:
    """robustkern's version, plus the git commit (and "-dirty") when run from a checkout."""
    root = Path(robustkern.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return robustkern.__version__
    return f"{robustkern.__version__}+g{commit}" + ("-dirty" if dirty else "")


def derived_seed(*keys) -> int:
    """A 63-bit seed from keys (anything with a stable repr)."""
    digest = hashlib.blake2b(repr(keys).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialised torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: str) -> tuple[torch.device | str, bool]:
    """Under torchrun (WORLD_SIZE > 1): the process group initialised (nccl on CUDA, gloo on
    the CPU) and this rank's device ("cuda" and "auto" with a GPU become cuda:LOCAL_RANK);
    (device, whether this call created the group). Elsewhere (device, False)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device, False
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if dist.is_initialized():
        return device, False
    dist.init_process_group("nccl" if cuda else "gloo")
    return device, True
