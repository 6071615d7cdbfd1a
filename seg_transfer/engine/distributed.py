"""Everything that changes under ``torchrun``, in one place: ranks, rank-0-only I/O, samplers, loaders.

On one process every function degrades to the plain single-process behaviour.
"""
from __future__ import annotations

import os
import zlib
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def backend() -> str:
    return str(dist.get_backend()) if is_dist() else "none"


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

    def __getitem__(self, key: Union[int, tuple[int, int]]) -> Any:
        """Item ``key`` (an index, seeded by ``set_epoch``'s epoch) or ``(index, epoch)``."""
        i, epoch = key if isinstance(key, tuple) else (key, self.epoch)
        transform: Any = getattr(self.dataset, "transform", None)
        if hasattr(transform, "reseed"):
            transform.reseed(item_seed(self.seed, epoch, i))
        return self.dataset[i]


class ShardSampler(Sampler[Any]):
    """This rank's share of an epoch: the single-process order cut every ``world``-th item from ``rank``.

    The order is exactly the one a one-process run draws (``DataLoader(shuffle=True)`` with a generator
    seeded by (seed, epoch)), so rank r's k-th batch of B items and the other ranks' together are the
    one-process k-th batch of ``world * B`` items: N processes at per-rank batch B see what one process
    sees at batch N*B. ``pad`` (training) repeats the first items so every rank takes as many steps;
    without it (evaluation) shards differ by at most one item and no item is counted twice.
    """

    def __init__(self, size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0, rank: int = 0,
                 world: int = 1, pad: bool = True, with_epoch: bool = False) -> None:
        self.size, self.shuffle, self.seed, self.epoch = size, shuffle, seed, epoch
        self.rank, self.world, self.pad = rank, world, pad
        # (index, epoch) pairs: persistent workers hold their own copy of the dataset, so the epoch that
        # seeds an item's augmentation travels with its index (``EpochSeeded``)
        self.with_epoch = with_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        generator = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        # DataLoader draws its workers' base seed from the generator before the sampler's permutation.
        torch.empty((), dtype=torch.int64).random_(generator=generator)
        return torch.randperm(self.size, generator=generator).tolist()

    def __iter__(self) -> Iterator[Any]:
        order = self.order()
        if self.pad and self.world > 1 and self.size % self.world:
            order += order[:self.world - self.size % self.world]
        mine = order[self.rank::self.world]
        return iter([(i, self.epoch) for i in mine] if self.with_epoch else mine)

    def __len__(self) -> int:
        if self.pad:
            return -(-self.size // self.world)
        return len(range(self.rank, self.size, self.world))


def unshard(parts: Sequence[Sequence[Any]]) -> list[Any]:
    """Per-rank results of an unpadded ``ShardSampler`` pass (rank r had items r, r + world, ...) back in
    the dataset's order."""
    return [part[i] for i in range(max(map(len, parts), default=0)) for part in parts if i < len(part)]


def make_loader(dataset: Any, batch_size: int, *, shuffle: bool, seed: int, epoch: int = 0,
                workers: int = 0, collate_fn: Optional[Callable] = None, drop_last: bool = False,
                pad: bool = True, pin_memory: bool = False, persistent: bool = False) -> DataLoader:
    """A loader over this rank's ``ShardSampler`` shard, whose order depends only on (seed, epoch);
    ``pad=False`` for evaluation (no item seen twice). ``persistent`` (an ``EpochSeeded`` dataset, workers
    > 0): one loader for the whole run, its workers kept between epochs; move it to the next epoch with
    ``loader.sampler.set_epoch(epoch)``."""
    if hasattr(dataset, "set_epoch"):  # EpochSeeded, CachedFeatureDataset
        dataset.set_epoch(epoch)
    persistent = persistent and workers > 0 and isinstance(dataset, EpochSeeded)
    sampler = ShardSampler(len(dataset), shuffle=shuffle, seed=seed, epoch=epoch, rank=rank(),
                           world=world_size(), pad=pad, with_epoch=persistent)
    # The generator only seeds the workers, as a one-process DataLoader(shuffle=True) would.
    generator = torch.Generator().manual_seed(seed * 1000 + epoch)
    extra: dict[str, Any] = {"persistent_workers": True, "prefetch_factor": 4} if persistent else {}
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate_fn, drop_last=drop_last, generator=generator, pin_memory=pin_memory, **extra)


def setup(device: torch.device) -> torch.device:
    """Join torchrun's process group when launched by it (``WORLD_SIZE`` > 1) and return this rank's
    device: ``nccl`` with one GPU per local rank on CUDA, ``gloo`` on CPU. A plain run returns ``device``."""
    if is_dist() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        if is_dist() and device.type == "cuda":
            return torch.device("cuda", torch.cuda.current_device())
        return device
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def teardown() -> None:
    """Leave the process group (every rank, also after an error, so none waits on a dead peer)."""
    if is_dist():
        dist.destroy_process_group()


def all_sum(*values: float) -> list[float]:
    """The sums over ranks of a few numbers (themselves on one process)."""
    if not is_dist():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def average_buffers(modules: Sequence[nn.Module]) -> None:
    """Replace each floating-point buffer of ``modules`` by its mean over ranks (BatchNorm statistics that
    each rank estimated on its own shard)."""
    if not is_dist():
        return
    for module in modules:
        for buffer in module.buffers(recurse=False):
            if buffer.is_floating_point():
                dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
                buffer.div_(world_size())
