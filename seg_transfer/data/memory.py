"""``cache.images: ram`` (or ``device``): every image (and mask) of a split decoded once, at the size the training pipeline
starts from, and kept as uint8 in one shared-memory block, so that no epoch decodes a file again and
DataLoader workers (forked or spawned) read the same memory instead of copies.

Under ``torchrun`` the processes of one machine share one copy: each decodes every N-th item into a block
that all of them map (``NodeBlocks``), so a node holds the split once, not once per process, and decodes it
N times faster. Sharding the items themselves between ranks would not do: the distributed sampler deals
each rank different items every epoch.

The cache is itself an ``ImageDataset`` (``read(i)`` gives what the dataset's ``read`` gave, resized to
the pipeline's starting size), so every transform, the epoch seeding and the data check work on it as on
the files. Its size is estimated from the files' headers and printed before anything is decoded, and a
cache that would pass ``max_gb`` is refused in one line naming the setting.
"""
from __future__ import annotations

import copy
import os
import secrets
import tempfile
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from .common import ImageDataset, image_file_shape, progress_bar, thread_pool
from .device_augment import Canvas, canvas_collate

SHM = "/dev/shm"  # where torch's shared-memory blocks live on Linux (a container may give it 64 MiB)


def free_bytes(path: Optional[str] = None) -> Optional[int]:
    """Free memory (MemAvailable), or free space of the filesystem at ``path``; None where unknown."""
    try:
        if path is not None:
            st = os.statvfs(path)
            return st.f_bavail * st.f_frsize
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def node_ranks() -> Optional[tuple[int, int]]:
    """(local rank, processes on this machine) under torchrun (a process group of more than one process is
    up); None for a single process. ``LOCAL_RANK``/``LOCAL_WORLD_SIZE`` are torchrun's; without them (a
    process group started by hand) every process is taken to be on one machine."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    return (int(os.environ.get("LOCAL_RANK", dist.get_rank())),
            int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size())))


class NodeBlocks:
    """Memory blocks that every process of a torchrun node maps from one file in /dev/shm: local rank 0
    creates each file, all map it (MAP_SHARED, so writes are seen by all and by their loader workers), and
    ``close`` removes the files once every process holds its mapping (the memory lives until the last
    mapping goes). Every process of the job calls each method in the same order (they hold barriers)."""

    def __init__(self, what: str, local_rank: int) -> None:
        import torch.distributed as dist

        token = [secrets.token_hex(8) if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(token, src=0)  # one name for the job: every node's files carry it
        folder = SHM if os.path.isdir(SHM) else tempfile.gettempdir()
        self.prefix = os.path.join(folder, f"seg_transfer_{token[0]}_{what}")
        self.local_rank = local_rank
        self.paths: list[str] = []  # the files this process created (local rank 0)

    def block(self, name: str, numel: int, dtype: torch.dtype) -> torch.Tensor:
        import torch.distributed as dist

        path = f"{self.prefix}_{name}"
        size = max(numel, 1)  # an empty split still maps a file
        if self.local_rank == 0:
            with open(path, "wb") as f:
                f.truncate(size * torch.empty((), dtype=dtype).element_size())
            self.paths.append(path)
        dist.barrier()
        return torch.from_file(path, shared=True, size=size, dtype=dtype)[:numel]

    def close(self) -> None:
        import torch.distributed as dist

        dist.barrier()  # every process has mapped and filled its share
        for path in self.paths:
            os.unlink(path)


def auto_images(need: int, max_gb: float, shared: bool) -> tuple[str, str]:
    """``cache.images: auto``: ("ram", why) when ``need`` bytes fit under ``cache.max_gb``, in half the
    free memory and (``shared``: loader processes read it) in half of /dev/shm's free space; else
    ("none", why). Decoding once saves each epoch the PNG/JPEG decode, the label map and the mask check
    (benchmarks/RESULTS.md, "Decode once")."""
    size = f"{need / 2**20:.0f} MiB"
    if need > max_gb * 2**30:
        return "none", f"{size} decoded is more than cache.max_gb ({max_gb:g})"
    free = free_bytes()
    if free is not None and need > free // 2:
        return "none", f"{size} decoded is more than half the free memory ({free / 2**30:.1f} GiB)"
    shm = free_bytes(SHM) if shared and os.path.isdir(SHM) else None
    if shm is not None and need > shm // 2:
        return "none", f"{size} decoded is more than half the free space of {SHM} ({shm / 2**20:.0f} MiB)"
    return "ram", f"{size} decoded fits"


def start_size(height: int, width: int, shorter: Optional[int]) -> tuple[int, int]:
    """(h, w) after albumentations' ``SmallestMaxSize(shorter)`` (no resize when ``shorter`` is None)."""
    if not shorter:
        return height, width
    scale = shorter / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def file_shape(dataset: ImageDataset, i: int) -> tuple[int, int]:
    """(H, W) of item ``i`` from its file's header (nothing decoded)."""
    if hasattr(dataset, "image_shape"):
        h, w = dataset.image_shape(i, decode=False)
        return int(h), int(w)
    return image_file_shape(dataset.files[i], decode=False)  # type: ignore[attr-defined]


def start_shapes(dataset: ImageDataset, shorter: Optional[int] = None) -> list[tuple[int, int]]:
    """(h, w) of every item at the pipeline's starting size, from the files' headers (nothing decoded)."""
    return [start_size(*file_shape(dataset, i), shorter) for i in range(len(dataset))]


def estimate_bytes(dataset: ImageDataset, shorter: Optional[int] = None,
                   shapes: Optional[Sequence[tuple[int, int]]] = None) -> int:
    """Bytes the cache of ``dataset`` takes: 3 per pixel, +1 (or 2) per mask pixel, at the starting size
    (``shapes``: ``start_shapes``' answer when the caller has it, so no header is read twice)."""
    per_pixel = 3 + (_mask_itemsize(dataset) if _has_masks(dataset) else 0)
    shapes = start_shapes(dataset, shorter) if shapes is None else shapes
    return sum(h * w for h, w in shapes) * per_pixel


def _has_masks(dataset: ImageDataset) -> bool:
    return hasattr(dataset, "masks")


def _mask_itemsize(dataset: ImageDataset) -> int:
    """uint8 holds every label and the ignore index below 256, else int16."""
    return 1 if max(dataset.num_classes - 1, dataset.ignore_index) <= 255 else 2


def _resize(image: np.ndarray, label: Any, shorter: Optional[int]) -> tuple[np.ndarray, Any]:
    if not shorter:
        return image, label
    import albumentations as A  # the same step the albumentations pipeline starts with, so the same pixels

    step = A.SmallestMaxSize(max_size=shorter)
    if isinstance(label, np.ndarray) and label.ndim == 2:
        out = step(image=image, mask=label)
        return out["image"], out["mask"]
    return step(image=image)["image"], label


def _gather_labels(labels: list[Any]) -> list[Any]:
    """Every process's filled entries of ``labels`` merged (each item was read by one process per node)."""
    import torch.distributed as dist

    mine = {i: label for i, label in enumerate(labels) if label is not None}
    everyone: list[Optional[dict[int, Any]]] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    merged = list(labels)
    for part in everyone:
        for i, label in (part or {}).items():
            merged[i] = label
    return merged


class DecodedDataset(ImageDataset):
    """``dataset``'s items decoded once (threads, a progress bar) at ``shorter`` side, in shared memory."""

    def __init__(self, dataset: ImageDataset, shorter: Optional[int] = None, max_gb: float = 16.0,
                 progress: bool = True, what: str = "train", log: Callable[[str], None] = print,
                 shapes: Optional[Sequence[tuple[int, int]]] = None, shared: bool = True) -> None:
        """``shapes``: ``start_shapes(dataset, shorter)`` when the caller has read them already."""
        self.classes, self.ignore_index = list(dataset.classes), dataset.ignore_index
        self.transform, self.shorter = None, shorter
        self.names = getattr(dataset, "names", None)
        shapes = start_shapes(dataset, shorter) if shapes is None else shapes
        need = estimate_bytes(dataset, shorter, shapes)
        if need > max_gb * 2**30:
            raise ConfigError(f"cache.images: the {what} split needs {need / 2**30:.1f} GiB decoded, more than "
                              f"cache.max_gb ({max_gb:g}); raise cache.max_gb, lower model.resize, or set "
                              "cache.images: none")
        shm = free_bytes(SHM) if shared and os.path.isdir(SHM) else None
        if shm is not None and need > shm:
            raise ConfigError(f"cache.images: the {what} split needs {need / 2**20:.0f} MiB of shared memory for the "
                              f"loader processes, and {SHM} has {shm / 2**20:.0f} MiB free; set train.workers: 0, "
                              "give the container more (docker run --shm-size), or set cache.images: none")
        ranks = node_ranks()
        local_rank, local_world = ranks or (0, 1)
        share = f" (one copy for this machine's {local_world} processes)" if ranks else ""
        log(f"image cache: {what} split, {len(dataset)} items, {need / 2**20:.0f} MiB of uint8 in RAM{share}")
        sizes = [h * w for h, w in shapes]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.shapes = np.array(shapes, dtype=np.int64).reshape(-1, 2)
        total = int(self.offsets[-1])
        # one block each for images and masks; shared (with loader processes, and under torchrun with the
        # node's other processes): workers read them in place, never a pickled copy
        node = NodeBlocks(what, local_rank) if ranks else None
        mask_dtype = None
        if _has_masks(dataset):
            mask_dtype = torch.uint8 if _mask_itemsize(dataset) == 1 else torch.int16
        if node is not None:
            self.pixels = node.block("pixels", total * 3, torch.uint8)
            self.masks: Optional[torch.Tensor] = None if mask_dtype is None else node.block("masks", total, mask_dtype)
        else:
            self.pixels = torch.empty(total * 3, dtype=torch.uint8)
            self.masks = None if mask_dtype is None else torch.empty(total, dtype=mask_dtype)
            if shared:
                self.pixels.share_memory_()
                if self.masks is not None:
                    self.masks.share_memory_()
        self.labels: list[Any] = [None] * len(dataset)

        def fill(i: int) -> None:
            image, label = _resize(*dataset.read(i), shorter)
            h, w = self.shapes[i]
            if image.shape[:2] != (h, w):  # the header's size is not the decoded one (an EXIF rotation)
                raise ConfigError(f"data.cache: item {i} decodes to {image.shape[:2]}, its header says {(h, w)}")
            start, end = self.offsets[i], self.offsets[i + 1]
            self.pixels[start * 3:end * 3] = torch.from_numpy(np.ascontiguousarray(image).reshape(-1))
            if self.masks is not None:
                self.masks[start:end] = torch.from_numpy(np.ascontiguousarray(label).reshape(-1).astype(
                    np.uint8 if self.masks.dtype == torch.uint8 else np.int16))
            else:
                self.labels[i] = label

        mine = range(local_rank, len(dataset), local_world)  # under torchrun: every local_world-th item
        with thread_pool() as pool, progress_bar(len(mine), f"caching {what}", "img", progress) as bar:
            for _ in pool.map(fill, mine):
                bar.update()
        if node is not None:
            node.close()
            if self.masks is None:  # labels, boxes: small Python objects, gathered from every process
                self.labels = _gather_labels(self.labels)

    @property
    def nbytes(self) -> int:
        return self.pixels.numel() + (self.masks.numel() * self.masks.element_size() if self.masks is not None else 0)

    def __len__(self) -> int:
        return len(self.shapes)

    def image(self, i: int) -> torch.Tensor:
        """Item ``i``'s image as a 3 x H x W uint8 tensor (a view of the cache)."""
        h, w = (int(v) for v in self.shapes[i])
        start, end = int(self.offsets[i]) * 3, int(self.offsets[i + 1]) * 3
        return self.pixels[start:end].view(h, w, 3).permute(2, 0, 1)

    def label(self, i: int) -> Any:
        """Item ``i``'s mask (H x W tensor, a view) or label/target as the dataset read it."""
        if self.masks is None:
            return self.labels[i]
        h, w = (int(v) for v in self.shapes[i])
        return self.masks[int(self.offsets[i]):int(self.offsets[i + 1])].view(h, w)

    def read(self, i: int) -> tuple[np.ndarray, Any]:
        """As the dataset's ``read``: (uint8 H x W x 3 array, mask as int64 H x W / label / target), copied."""
        image = self.image(i).permute(1, 2, 0).numpy().copy()
        label = self.label(i)
        return image, (label.numpy().astype(np.int64) if isinstance(label, torch.Tensor) else copy.deepcopy(label))

    def inspect(self, i: int) -> tuple[Optional[np.ndarray], list[Any]]:
        raise NotImplementedError("the data check reads the files, not the cache")

    def to(self, device: torch.device) -> DecodedDataset:
        """A copy whose blocks live on ``device`` (``cache.images: device``: the decoded set on the GPU)."""
        moved = copy.copy(self)
        moved.pixels = self.pixels.to(device)
        moved.masks = None if self.masks is None else self.masks.to(device)
        return moved

    def canvas(self, indices: Sequence[int]) -> Canvas:
        """Items ``indices`` as one ``Canvas`` on the cache's device (the device augmentation's input)."""
        return canvas_collate([(self.image(i), self.label(i)) for i in indices], self.ignore_index)
