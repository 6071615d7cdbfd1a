"""Frozen-backbone feature cache: run the backbone once per (image, augmented copy), train neck+head on that.

With the backbone wholly frozen (``freeze.strategy: feature_extraction``) its output never changes, so
re-running it every epoch is wasted work, most of a step's time on a CPU. ``FeatureCache.build`` runs
``split_forward.encode`` once per item and copy, in eval mode under ``torch.inference_mode``, and keeps
only the features the neck and heads read (``used_features``) plus the transformed mask.
``CachedFeatureDataset`` then serves epoch ``e`` from copy ``e % copies``; ``decode`` does the rest.

Seeding: copy ``k`` of item ``i`` is drawn with ``distributed.item_seed(seed, k, i)``, the seed that
``EpochSeeded`` gives item ``i`` at epoch ``k``. The transform is reseeded with it (``transform.reseed``,
as ``SegTransform`` has) and Python's, NumPy's and torch's global generators are seeded with it for the
call, then restored. So each copy is its own random augmentation, the same whatever the batch size,
worker count or build order, and the first ``copies`` epochs on the cache see the augmentations that
uncached training would.

Memory: ``estimate_bytes`` (features the head reads, plus a uint8 mask per image; ``copies: K``
multiplies by K); per model for CamVid in benchmarks/RESULTS.md, "Feature cache memory".

Builds past ``max_bytes`` (``cache.max_gb``) are refused after the first batch, from its size.
"""
from __future__ import annotations

import random
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence, Union, cast

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..errors import ConfigError
from ..transfer.freeze import bn_held_in_eval
from .distributed import item_seed
from .split_forward import can_split, encode, eval_mode, used_features

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DEFAULT_MAX_BYTES = 8 * 2**30  # cache.max_gb's default
Feats = dict[str, torch.Tensor]


# ------------------------------------------------------------------------------------- checks
def _backbone(model: nn.Module) -> nn.Module:
    return cast(nn.Module, model.backbone)  # every model split_forward can split has one


def trainable_backbone(model: nn.Module) -> list[str]:
    """Names of the backbone's parameters that still require grad (none: the cache may be used)."""
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module):
        raise ConfigError(f"cache: {type(model).__name__} has no 'backbone' module")
    return [f"backbone.{n}" for n, p in backbone.named_parameters() if p.requires_grad]


def can_cache(model: nn.Module) -> bool:
    """Whether the backbone is wholly frozen and ``encode``/``decode`` can split the model."""
    return can_split(model) and not trainable_backbone(model)


def _check_model(model: nn.Module) -> None:
    if not can_split(model):
        raise ConfigError(f"cache: cannot split {type(model).__name__} into backbone and head; "
                          "set cache.enabled: false")
    trainable = trainable_backbone(model)
    if trainable:
        raise ConfigError(f"cache: the backbone is not wholly frozen ({len(trainable)} trainable parameters, "
                          f"e.g. {', '.join(trainable[:3])}); use freeze.strategy: feature_extraction with "
                          "freeze.bn: true, or set cache.enabled: false")
    free_bn = [n for n, m in _backbone(model).named_modules() if isinstance(m, _BatchNorm) and not bn_held_in_eval(m)]
    if free_bn:
        # Uncached training would update their running statistics; the cache uses them as they are.
        warnings.warn(f"cache: {len(free_bn)} backbone BatchNorm layers are not held in eval mode "
                      "(apply_freeze(..., bn=True) holds them); the cache computes them in eval mode", stacklevel=3)


def _dtype(dtype: Union[str, torch.dtype]) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ConfigError(f"cache.dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _too_big(estimate: float, max_bytes: int, items: int, copies: int) -> ConfigError:
    return ConfigError(f"cache: the features of {items} images x {copies} copies would take about "
                       f"{_gib(estimate)}, over the {_gib(max_bytes)} limit (cache.max_gb); use cache.dtype: "
                       "float16 (half), fewer cache.copies, a smaller augment.crop_size, raise cache.max_gb, "
                       "or set cache.enabled: false")


# ------------------------------------------------------------------------------------ storage
def _nbytes(tensors: Sequence[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _compact(mask: torch.Tensor) -> torch.Tensor:
    """The mask in the smallest integer dtype holding it: uint8 for labels and 255 (int64 is 8x that)."""
    lo, hi = (int(mask.min()), int(mask.max())) if mask.numel() else (0, 0)
    for dtype in (torch.uint8, torch.int16, torch.int32):
        info = torch.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return mask.to(dtype)
    return mask.long()


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextmanager
def _global_seed(seed: int) -> Iterator[None]:
    """Python, NumPy and torch (CPU) global generators seeded inside the block, restored after it."""
    state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])


class _SeededCopies(Dataset):
    """Item ``j`` -> (index, copy, image, mask) for ``index, copy = divmod(j, copies)``, drawn with its own seed."""

    def __init__(self, dataset: Any, copies: int, seed: int) -> None:
        self.dataset, self.copies, self.seed = dataset, copies, seed

    def __len__(self) -> int:
        return len(self.dataset) * self.copies

    def __getitem__(self, j: int) -> tuple[int, int, torch.Tensor, torch.Tensor]:
        index, copy = divmod(j, self.copies)
        seed = item_seed(self.seed, copy, index)
        transform: Any = getattr(self.dataset, "transform", None)
        if hasattr(transform, "reseed"):
            transform.reseed(seed)
        with _global_seed(seed):  # transforms that draw from the global generators
            image, mask = self.dataset[index]
        if not (isinstance(image, torch.Tensor) and isinstance(mask, torch.Tensor)):
            raise TypeError(f"cache: dataset item {index} is not an (image, mask) pair of tensors; give the "
                            "dataset its train transform (SegTransform) first")
        return index, copy, image, mask


def _same_size(batch: list[tuple[int, int, torch.Tensor, torch.Tensor]]) -> list[list[tuple]]:
    """The batch split into runs of equal image size, each one stackable."""
    groups: list[list[tuple]] = []
    for item in batch:
        if groups and groups[-1][0][2].shape == item[2].shape:
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


# -------------------------------------------------------------------------------------- cache
@dataclass
class FeatureCache:
    """Backbone features (``keys`` only) and transformed masks per item and copy, on the CPU."""

    feats: list[list[Feats]]          # [item][copy] -> {key: C x h x w}
    masks: list[list[torch.Tensor]]   # [item][copy] -> H x W, compact integer dtype
    keys: list[str]
    seed: int = 0

    def __len__(self) -> int:
        return len(self.feats)

    @property
    def copies(self) -> int:
        return len(self.feats[0]) if self.feats else 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the features and masks."""
        return sum(_nbytes([*f.values(), m]) for fs, ms in zip(self.feats, self.masks) for f, m in zip(fs, ms))

    def get(self, index: int, copy: int, dtype: torch.dtype = torch.float32) -> tuple[Feats, torch.Tensor]:
        """Copy ``copy`` of item ``index``: (features in ``dtype``, int64 mask); the decode size is the mask's."""
        feats = OrderedDict((k, v.to(dtype)) for k, v in self.feats[index][copy].items())
        return feats, self.masks[index][copy].long()

    @classmethod
    def build(cls, model: nn.Module, dataset: Any, copies: int = 1, *,
              dtype: Union[str, torch.dtype] = torch.float32, max_bytes: Optional[int] = DEFAULT_MAX_BYTES,
              seed: int = 0, batch_size: int = 8, workers: int = 0, progress: bool = True) -> FeatureCache:
        """Encode every (item, copy) of ``dataset`` (train-transformed (image, mask) pairs) with ``model``'s
        frozen backbone in eval mode; ``dtype`` is the storage type; ConfigError past ``max_bytes``."""
        _check_model(model)
        if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
            raise ConfigError(f"cache.copies: expected a positive integer, got {copies!r}")
        dtype = _dtype(dtype)
        n = len(dataset)
        feats: list[list[Feats]] = [[{} for _ in range(copies)] for _ in range(n)]
        masks: list[list[torch.Tensor]] = [[torch.empty(0) for _ in range(copies)] for _ in range(n)]
        keys: Optional[list[str]] = None
        total = done = 0
        device = _device(model)
        loader = DataLoader(_SeededCopies(dataset, copies, seed), batch_size=batch_size,
                            num_workers=workers, collate_fn=list)
        with eval_mode(_backbone(model)), tqdm(total=n * copies, desc="caching backbone features", unit="img",
                                               disable=not progress) as bar:
            for batch in loader:
                for group in _same_size(batch):
                    x = torch.stack([item[2] for item in group]).to(device)
                    with torch.inference_mode():
                        out = encode(model, x, keys)
                    if keys is None:
                        keys = used_features(model, out, x.shape[-2:])
                        out = OrderedDict((k, out[k]) for k in keys)
                    for b, (index, copy, _, mask) in enumerate(group):
                        # copy=True outside inference mode: a normal tensor that autograd may use later.
                        feats[index][copy] = {k: v[b].to("cpu", dtype, copy=True) for k, v in out.items()}
                        masks[index][copy] = _compact(mask)
                        total += _nbytes([*feats[index][copy].values(), masks[index][copy]])
                    done += len(group)
                    estimate = max(total, total / done * n * copies)
                    if max_bytes is not None and estimate > max_bytes:
                        raise _too_big(estimate, max_bytes, n, copies)
                bar.update(len(batch))
        return cls(feats, masks, keys or [], seed)


def estimate_bytes(model: nn.Module, image_size: Sequence[int], items: int, copies: int = 1,
                   dtype: Union[str, torch.dtype] = torch.float32) -> int:
    """Bytes ``FeatureCache.build`` would hold for ``items`` x ``copies`` images of ``image_size`` (H, W)."""
    height, width = image_size
    x = torch.zeros(1, 3, height, width, device=_device(model))
    with eval_mode(_backbone(model)), torch.inference_mode():
        feats = encode(model, x)
    keys = used_features(model, feats, (height, width))
    per_item = sum(feats[k][0].numel() for k in keys) * _dtype(dtype).itemsize + height * width  # + uint8 mask
    return per_item * items * copies


# ------------------------------------------------------------------------------------ dataset
class CachedFeatureDataset(Dataset):
    """Item ``i`` at epoch ``e`` -> (features, mask) of copy ``e % copies`` (``mode="rotate"``) or of a copy
    drawn from ``item_seed(seed, e, i)`` (``mode="random"``). Call ``set_epoch`` before each epoch's loader
    (no ``persistent_workers``: the epoch lives in this object)."""

    MODES = ("rotate", "random")

    def __init__(self, cache: FeatureCache, mode: str = "rotate", seed: int = 0,
                 dtype: torch.dtype = torch.float32) -> None:
        if mode not in self.MODES:
            raise ConfigError(f"cache mode: expected one of {', '.join(self.MODES)}, got {mode!r}")
        self.cache, self.mode, self.seed, self.dtype, self.epoch = cache, mode, seed, dtype, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def copy_of(self, index: int) -> int:
        """Which copy item ``index`` comes from this epoch."""
        if self.mode == "rotate":
            return self.epoch % self.cache.copies
        return item_seed(self.seed, self.epoch, index) % self.cache.copies

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, index: int) -> tuple[Feats, torch.Tensor]:
        return self.cache.get(index, self.copy_of(index), self.dtype)


def collate_features(batch: Sequence[tuple[Feats, torch.Tensor]]) -> tuple[Feats, torch.Tensor]:
    """Stacks (features, mask) pairs into (``{key: N x C x h x w}``, ``N x H x W``); sizes must agree."""
    feats, masks = zip(*batch)
    if len({tuple(m.shape) for m in masks}) != 1:
        # Padding features is not padding the image: zeros after the backbone are not the mean image.
        raise ValueError("cache: cached items of different sizes cannot share a batch; use a fixed "
                         "augment.crop_size or batch size 1")
    return OrderedDict((k, torch.stack([f[k] for f in feats])) for k in feats[0]), torch.stack(masks)
