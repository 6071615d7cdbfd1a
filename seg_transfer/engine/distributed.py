"""Everything that changes under ``torchrun``, in one place: ranks, rank-0-only I/O, samplers, loaders.

On one process every function degrades to the plain single-process behaviour.
"""
from __future__ import annotations

import zlib
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    """Only rank 0 writes files and prints progress."""
    return rank() == 0


def item_seed(seed: int, epoch: int, index: int, copy: int = 0) -> int:
    """A seed that depends only on (run seed, epoch, item, copy): augmentation is reproducible
    whatever the number of workers or ranks, and a resumed run sees the same images."""
    return zlib.crc32(f"{seed}:{epoch}:{index}:{copy}".encode())


class EpochSeeded(Dataset):
    """Wraps a dataset whose ``transform`` has ``reseed``; reseeds it per item from (seed, epoch, index)."""

    def __init__(self, dataset: Any, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        transform: Any = getattr(self.dataset, "transform", None)
        if hasattr(transform, "reseed"):
            transform.reseed(item_seed(self.seed, self.epoch, i))
        return self.dataset[i]


def make_loader(dataset: Any, batch_size: int, *, shuffle: bool, seed: int, epoch: int = 0,
                workers: int = 0, collate_fn: Optional[Callable] = None, drop_last: bool = False) -> DataLoader:
    """A loader whose order depends only on (seed, epoch); a DistributedSampler under torchrun."""
    if hasattr(dataset, "set_epoch"):  # EpochSeeded, CachedFeatureDataset
        dataset.set_epoch(epoch)
    if is_dist():
        sampler: DistributedSampler[Any] = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
        sampler.set_epoch(epoch)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                          collate_fn=collate_fn, drop_last=drop_last, persistent_workers=False)
    generator = torch.Generator().manual_seed(seed * 1000 + epoch)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      num_workers=workers, collate_fn=collate_fn, drop_last=drop_last)
