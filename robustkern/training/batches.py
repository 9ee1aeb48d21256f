"""The training data as batches in a reproducible order: the trainer draws a permutation per
epoch from the seed (tensors and map-style Datasets), so a resumed epoch replays the same
batches, and under torch.distributed each rank takes its slice of every global batch; a
DataLoader is iterated as the user built it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from robustkern._env import derived_seed, world

TrainData = tuple[torch.Tensor, torch.Tensor] | Dataset | DataLoader


class Batches:
    """Training batches in the trainer's own order (tensors, Dataset) or the user's (DataLoader).
    ``epoch(e, start)`` yields (x, y, shard, scale) for batches ``start..`` of epoch e: shard =
    (offset, global size) of this rank's rows (None for a DataLoader), scale = the factor that
    makes DDP's mean over ranks of the per-rank mean loss the global batch's mean loss."""

    def __init__(self, data: TrainData, batch_size: int, seed: int, num_workers: int):
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.num_workers = num_workers
        self.rank, self.world = world()
        if isinstance(data, DataLoader):
            self.n = len(data.dataset) if hasattr(data.dataset, "__len__") else None
            self.per_epoch = len(data)
        else:
            self.n = length(data)
            last = self.n % batch_size
            # under DDP a last global batch with fewer rows than ranks is dropped
            dropped = 0 < last < self.world
            self.per_epoch = self.n // batch_size + (last > 0 and not dropped)
        if self.per_epoch == 0:
            raise ValueError(f"the training data gives no batch ({self.n} examples)")

    def epoch(self, e: int, start: int) -> Iterator[tuple]:
        """The iterator is made (and a DataLoader's first ``start`` batches skipped) before it is
        returned, so whatever that draws from the global RNG is drawn before the caller
        restores a checkpoint's RNG state."""
        if isinstance(self.data, DataLoader):
            sampler = getattr(self.data, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(e)
            batches = iter(self.data)
            for _ in range(start):
                next(batches)
            return ((b[0], b[1], None, 1.0) for b in batches)
        order = torch.randperm(
            self.n, generator=torch.Generator().manual_seed(derived_seed(self.seed, e))
        )
        mine, shards = [], []
        for batch in order.split(self.batch_size)[start : self.per_epoch]:
            parts = torch.tensor_split(batch, self.world)
            mine.append(parts[self.rank])
            shards.append((sum(len(p) for p in parts[: self.rank]), len(batch)))
        rows = self._fetch(mine)
        return (
            (x, y, shard, len(x) * self.world / shard[1])
            for (x, y), shard in zip(rows, shards, strict=True)
        )

    def _fetch(self, index_lists: list[torch.Tensor]) -> Iterator[tuple]:
        if isinstance(self.data, Dataset):
            loader = DataLoader(
                self.data, batch_sampler=[i.tolist() for i in index_lists],
                num_workers=self.num_workers,
            )  # fmt: skip
            return ((b[0], b[1]) for b in iter(loader))
        x, y = self.data
        return ((x[i], y[i]) for i in index_lists)


def length(data) -> int:
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        x, y = data
        if len(x) != len(y):
            raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
        return len(x)
    if isinstance(data, Dataset) and hasattr(data, "__len__"):
        return len(data)
    raise ValueError(
        "data must be an (x, y) pair of tensors, a map-style Dataset or a DataLoader, "
        f"got {type(data).__name__}"
    )


def rows(data: TrainData, index: Sequence[int] | range) -> TrainData:
    """The rows ``index`` of tensors or a (DataLoader's) map-style Dataset."""
    if isinstance(data, DataLoader):
        data = data.dataset
    if isinstance(data, Dataset):
        return Subset(data, list(index))
    x, y = data
    index = torch.as_tensor(list(index), dtype=torch.long)
    return x[index], y[index]


def stack(data: TrainData, index: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The images ``index`` as one batch (for the tracked probabilities)."""
    n = length(data.dataset if isinstance(data, DataLoader) else data)
    if any(not 0 <= i < n for i in index):
        raise ValueError(f"track: indices must lie in [0, {n}), got {list(index)}")
    chosen = rows(data, index)
    if isinstance(chosen, Subset):
        items = [chosen[i] for i in range(len(chosen))]
        return torch.stack([torch.as_tensor(a) for a, _ in items]), torch.as_tensor(
            [int(b) for _, b in items]
        )
    return chosen
