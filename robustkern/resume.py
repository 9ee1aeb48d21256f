"""One way to resume, for every long job (training checkpoints, the trade-off sweep, the suite's
report, the Fourier heat map, the sweep store's cells): what defines a result (settings, data,
weights) is fingerprinted by content; the result is written atomically beside its fingerprint;
a later run finds it by that fingerprint and continues from it, and a file written for anything
else is refused with the settings that differ, never mixed in.

* ``digest(*parts)``: the fingerprint of settings (JSON-able values), tensors and models.
* ``write_json`` / ``read_json`` and ``write_state`` / ``read_state``: atomic files (a killed
  run leaves the old file or the new one) and their reading, which names a damaged file.
* ``check_same(saved, now, path, what)``: a clear refusal listing the settings that differ.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch

from robustkern._io import atomic_torch_save, atomic_write_text


def digest(*parts) -> str:
    """sha256 (hex) of ``parts``: JSON-able values (dict keys sorted), tensors by dtype, shape
    and bytes, models by their state dict. One plain dict gives ``sha256(json.dumps(d,
    sort_keys=True))``, the sweep store's cell hash."""
    if len(parts) == 1 and _plain_json(parts[0]):
        return hashlib.sha256(json.dumps(parts[0], sort_keys=True).encode()).hexdigest()
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(_canonical(part), sort_keys=True, default=str).encode())
    return h.hexdigest()


def tensor_digest(*tensors: torch.Tensor) -> str:
    """sha256 of the tensors' dtypes, shapes and values (the sweep's data fingerprint)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()


def model_digest(model: torch.nn.Module) -> str:
    """sha256 of the parameters and buffers: names, dtypes, shapes and values."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()


def tensor_bytes(t: torch.Tensor) -> bytes:
    """A tensor's values as bytes (a 0-dim tensor, BatchNorm's num_batches_tracked, included)."""
    t = t.detach().cpu().contiguous()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def _canonical(part):
    if isinstance(part, torch.nn.Module):
        return {"model": model_digest(part)}
    if isinstance(part, torch.Tensor):
        return {"tensor": tensor_digest(part)}
    if dataclasses.is_dataclass(part) and not isinstance(part, type):
        return _canonical(dataclasses.asdict(part))
    if isinstance(part, dict):
        return {str(k): _canonical(v) for k, v in part.items()}
    if isinstance(part, (list, tuple)):
        return [_canonical(v) for v in part]
    return part


def _plain_json(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_json(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):  # json.dumps writes a tuple as a list
        return all(_plain_json(v) for v in value)
    return isinstance(value, (str, int, float, bool)) or value is None


def write_json(path: str | Path, value) -> Path:
    """``value`` as JSON, atomically."""
    return atomic_write_text(path, json.dumps(value, indent=1))


def read_json(path: str | Path, what: str) -> dict | None:
    """The JSON object in ``path``; None when there is no file; a ValueError naming ``what``
    when it cannot be read (truncated by hand, or another program's file)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{what} {path} cannot be read ({e}): remove it to start afresh") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} {path} is not a robustkern file: remove it to start afresh")
    return value


def write_state(path: str | Path, state: dict) -> Path:
    """A dict of tensors and plain values with ``torch.save``, atomically."""
    return atomic_torch_save(state, path)


def read_state(path: str | Path, what: str) -> dict | None:
    """The state in ``path`` (``torch.load(weights_only=True)``: no pickle), None when there is
    no file; a ValueError naming ``what`` when it is truncated or corrupt. Safe while another
    process writes it (it sees the old file or the new one)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # each damage fails in its own way; say which file
        raise ValueError(
            f"{what} {path} cannot be read: it is truncated, corrupt, or not a robustkern file "
            f"({type(e).__name__}: {str(e)[:200]})"
        ) from e
    if not isinstance(state, dict):
        raise ValueError(f"{what} {path} is not a robustkern file")
    return state


def clear_stale(path: str | Path) -> None:
    """Removes a killed writer's temporary files beside ``path``: for the process that takes
    over writing it (a reader must not: it would delete a live writer's file)."""
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.tmp*"):
        stale.unlink(missing_ok=True)


def differences(saved: dict, now: dict) -> list[str]:
    """The keys whose values differ (or that only one side has), sorted."""
    return sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))


def check_same(saved: dict, now: dict, path: str | Path, what: str) -> None:
    """Refuses a file written with other settings, naming them."""
    changed = differences(saved, now)
    if changed:
        raise ValueError(
            f"{what} {path} is from a run with other settings ({', '.join(changed)}): use "
            "another path, or remove it (resume=False) to start afresh"
        )
