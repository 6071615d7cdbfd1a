"""``cache.images: ram`` (or ``device``): every image (and mask) of a split decoded once, at the size the training pipeline
starts from, and kept as uint8 in one shared-memory block, so that no epoch decodes a file again and
DataLoader workers (forked or spawned) read the same memory instead of copies.

The cache is itself an ``ImageDataset`` (``read(i)`` gives what the dataset's ``read`` gave, resized to
the pipeline's starting size), so every transform, the epoch seeding and the data check work on it as on
the files. Its size is estimated from the files' headers and printed before anything is decoded, and a
cache that would pass ``max_gb`` is refused in one line naming the setting.
"""
from __future__ import annotations

import copy
import os
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
        log(f"image cache: {what} split, {len(dataset)} items, {need / 2**20:.0f} MiB of uint8 in RAM")
        sizes = [h * w for h, w in shapes]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.shapes = np.array(shapes, dtype=np.int64).reshape(-1, 2)
        total = int(self.offsets[-1])
        # one block each for images and masks; shared (with loader processes): workers read them in place,
        # never a pickled copy
        self.pixels = torch.empty(total * 3, dtype=torch.uint8)
        self.masks: Optional[torch.Tensor] = None
        if _has_masks(dataset):
            dtype = torch.uint8 if _mask_itemsize(dataset) == 1 else torch.int16
            self.masks = torch.empty(total, dtype=dtype)
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

        with thread_pool() as pool, progress_bar(len(dataset), f"caching {what}", "img", progress) as bar:
            for _ in pool.map(fill, range(len(dataset))):
                bar.update()

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
