"""Semantic segmentation data: the ``SegDataset`` of image/mask pairs every segmentation format returns,
the rules a mask must satisfy, and the joint image/mask transforms and collate.

A mask holds one class index per pixel; ``label_map`` rewrites raw values first and ``ignore_index``
marks pixels that count as no class. Every rule names the file and the fix. A binary model's data
(``binary_splits``) also reads 0/255 masks, 255 as the foreground (``BINARY_RULE``).
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..models.preprocess import Preprocess
from .colors import Palette, colour_indices
from .common import AnnotatedImages, DataSplits, ImageRef, read_mask
from .problems import DataError, Problem, fail
from .split import report_empty
from .transforms import A, build_pipeline, reseed

Transform = Callable[[np.ndarray, np.ndarray], Any]


def apply_label_map(mask: np.ndarray, label_map: Optional[Mapping[int, int]]) -> np.ndarray:
    """int64 copy of ``mask`` with each ``src`` value replaced by ``label_map[src]``."""
    if not label_map:
        return mask.astype(np.int64)
    src = np.fromiter(label_map.keys(), dtype=np.int64)
    dst = np.fromiter(label_map.values(), dtype=np.int64)
    if mask.dtype.kind not in "ub" or src.min() < 0:  # signed masks: rare, so the plain way
        out = mask.astype(np.int64)
        result = out.copy()
        for s, d in zip(src, dst):
            result[out == s] = d
        return result
    lut = np.arange(max(int(mask.max()) if mask.size else 0, int(src.max())) + 1, dtype=np.int64)
    lut[src] = dst  # a lookup table indexed by the raw values: one pass, whatever the map's size
    return lut[mask]


def distinct(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values; a bincount for 8/16-bit masks, several times faster than np.unique."""
    if values.dtype.kind in "ub" and values.dtype.itemsize <= 2 and values.size:
        return np.flatnonzero(np.bincount(values.ravel()))
    return np.unique(values)


def _hw(shape: Sequence[int]) -> str:
    return f"{shape[0]}x{shape[1]}"


def check_mask(raw: np.ndarray, *, name: str, num_classes: int, ignore_index: int,
               label_map: Optional[Mapping[int, int]] = None, image_name: str = "",
               image_shape: Optional[Sequence[int]] = None,
               colors: Optional[Palette] = None, binary: bool = False) -> tuple[Optional[np.ndarray], list[Problem]]:
    """Label-map and check one raw mask -> (int64 HxW labels, or None when unusable; its problems).

    An RGB mask is read through ``colors`` (``colors.colour_indices``; without it, the VOC colormap when
    every colour is one of its); grey stored as RGB is read as indices. ``binary`` (a binary model's
    data): 0 is background, 1 and 255 foreground (``BINARY_RULE``).
    """
    problems: list[Problem] = []
    if raw.ndim == 3:
        colour = raw[..., :3] if raw.shape[2] >= 3 else raw[..., :1]
        if colour.shape[2] == 3 and (colors is not None or not (
                np.array_equal(colour[..., 0], colour[..., 1]) and np.array_equal(colour[..., 0], colour[..., 2]))):
            indices, problem = colour_indices(colour, name=name, colors=colors, num_classes=num_classes,
                                              channels=raw.shape[2])
            if problem is not None:
                return None, [problem]
            assert indices is not None  # colour_indices gives one of the two
            raw = indices
        else:
            raw = colour[..., 0]  # grey stored as RGB, or grey + alpha: the indices are all there
    if raw.ndim != 2:
        return None, [Problem("unreadable", name, f"mask {name} has shape {raw.shape}: expected HxW")]
    if np.issubdtype(raw.dtype, np.floating) and not np.array_equal(raw, np.round(raw)):
        return None, [Problem("label_range", name,
                              f"mask {name} holds non-integer values: save class indices as integers")]
    if image_shape is not None and tuple(raw.shape[:2]) != tuple(image_shape[:2]):
        swapped = tuple(raw.shape[:2]) == tuple(image_shape[:2])[::-1]
        problems.append(Problem("size_mismatch", name, (
            f"mask {name} is {_hw(raw.shape)} but image {image_name} is {_hw(image_shape)} (HxW)"
            + ("; the sides are swapped: an EXIF rotation on one of them?" if swapped else ""))))
    raw_values = [int(v) for v in distinct(raw)]
    if binary:
        label_map, problem = _binary_label_map(raw_values, label_map, name)
        if problem is not None:
            return None, [problem]
    mapped = [(label_map or {}).get(v, v) for v in raw_values]
    bad = sorted({v for v in mapped if not 0 <= v < num_classes and v != ignore_index})
    # 0/255 masks are the usual binary-mask mistake: out of range, or (two classes, 255 ignored) silently
    # never showing class 1. label_map {255: 255} declares 255 a real ignore value and silences this.
    zero_255 = set(raw_values) <= {0, 255} and 255 in raw_values and 255 not in (label_map or {})
    if zero_255 and (bad or (num_classes == 2 and ignore_index == 255)):
        problems.append(Problem("binary_mask", name, (
            f"mask {name} holds only 0 and 255: a binary mask saved as 0/255; divide it by 255 "
            "or set label_map {255: 1} (if 255 really marks pixels to ignore, say so with label_map "
            "{255: 255}); a binary model (model.binary: true) reads 0/255 masks as they are")))
    elif bad:
        shown = ", ".join(map(str, bad[:8])) + (", ..." if len(bad) > 8 else "")
        hint = (f"; is {num_classes} a void label? map it to the ignore index with label_map "
                f"{{{num_classes}: {ignore_index}}}" if bad == [num_classes] and not binary else
                f"; {BINARY_RULE}: map the others with label_map (e.g. {{{bad[0]}: 1}})" if binary else
                f"; fix the masks or map these values with label_map (e.g. {{{bad[0]}: {ignore_index}}})")
        problems.append(Problem("label_range", name, (
            f"mask {name} holds labels outside [0, {num_classes}) other than the ignore value "
            f"{ignore_index}: {shown}{hint}")))
    mask = apply_label_map(raw, label_map)
    return mask, problems


# A binary model's masks: foreground/background masks come as 0/1 or as 0/255 (what image editors and most
# published binary datasets save), so 255 is the foreground there, not the ignore value. A mask that holds
# 1 and 255 follows the VOC habit of 255 as a void border: ambiguous, so it is a problem, and label_map
# {255: 255} (or any label_map entry for 255) says what 255 is.
BINARY_RULE = "a binary model reads 0 as background and 1 or 255 as foreground"


def _binary_label_map(values: Sequence[int], label_map: Optional[Mapping[int, int]],
                      name: str) -> tuple[Optional[dict[int, int]], Optional[Problem]]:
    """The label map a binary model's mask is read with: 255 -> 1 unless ``label_map`` says what 255 is."""
    given = dict(label_map or {})
    if 255 in given:
        return given, None
    if 1 in values and 255 in values:
        return None, Problem("binary_mask", name, (
            f"mask {name} holds 0, 1 and 255: {BINARY_RULE}, so which is 255? if it marks pixels to ignore "
            "(a void border), set label_map {255: 255}; if it is foreground too, label_map {255: 1}"))
    return {**given, 255: 1}, None


class SegDataset(AnnotatedImages):
    """Image/mask pairs read raw (uint8 HxWx3, int64 HxW labels) and checked; ``transform`` is applied last.

    ``masks`` holds one reference per image (a mask file path, or what ``mask_reader`` understands).
    """

    item_lists = ("images", "masks")

    def __init__(self, images: Sequence[ImageRef], masks: Sequence[Any], *, classes: Sequence[str],
                 ignore_index: int = 255, label_map: Optional[Mapping[int, int]] = None,
                 mask_reader: Callable[[Any], np.ndarray] = read_mask,
                 transform: Optional[Transform] = None, colors: Optional[Palette] = None):
        if len(images) != len(masks):
            raise ValueError(f"{len(images)} images but {len(masks)} masks")
        self.images = list(images)
        self.masks = list(masks)
        self.classes = list(classes)
        self.ignore_index = ignore_index
        self.label_map = dict(label_map) if label_map else None
        self.mask_reader = mask_reader
        self.transform = transform
        self.colors = colors  # the palette of RGB masks (colors.parse_colors), or None: VOC's when all match
        self.binary = False  # a binary model's data (``binary_splits``): 255 is foreground, not ignored

    def read_mask(self, i: int) -> np.ndarray:
        """Mask ``i`` as int64 HxW class indices (label map applied, labels checked; image not read)."""
        mask, problems = self._check(i, self.mask_reader(self.masks[i]))
        if problems:
            raise fail(problems[0])
        assert mask is not None  # check_mask gives None only with a problem
        return mask

    def inspect(self, i: int) -> tuple[Optional[np.ndarray], list[Problem]]:
        """(int64 mask or None, every problem of sample ``i``); never raises for bad data."""
        shape = None
        problems: list[Problem] = []
        try:
            shape = self.image_shape(i)
        except DataError as err:
            problems.append(err.problem)
        try:
            raw = self.mask_reader(self.masks[i])
        except DataError as err:
            return None, [*problems, err.problem]
        mask, found = self._check(i, raw, shape)
        return mask, [*problems, *found]

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw sample ``i``: (uint8 HxWx3 image, int64 HxW mask); raises DataError on its first problem."""
        image = self.read_image(i)
        mask, problems = self._check(i, self.mask_reader(self.masks[i]), image.shape)
        if problems:
            raise fail(problems[0])
        assert mask is not None  # check_mask gives None only with a problem
        return image, mask

    def _check(self, i: int, raw: np.ndarray,
               image_shape: Optional[Sequence[int]] = None) -> tuple[Optional[np.ndarray], list[Problem]]:
        return check_mask(raw, name=str(self.masks[i]), num_classes=self.num_classes,
                          ignore_index=self.ignore_index, label_map=self.label_map,
                          image_name=str(self.images[i]), image_shape=image_shape, colors=self.colors,
                          binary=self.binary)


def check_classes(classes: Optional[Sequence[str]], ignore_index: int) -> list[str]:
    """The class names as a list; ConfigError when missing, duplicated or colliding with the ignore index."""
    if not classes or isinstance(classes, str) or not all(isinstance(c, str) for c in classes):
        raise ConfigError(f"classes: expected a list of class names, got {classes!r}")
    dupes = sorted({c for c in classes if list(classes).count(c) > 1})
    if dupes:
        raise ConfigError(f"classes: duplicate names {', '.join(dupes)}")
    if 0 <= ignore_index < len(classes):
        raise ConfigError(f"ignore_index {ignore_index} is also the index of class '{classes[ignore_index]}'; "
                          f"use a value outside [0, {len(classes)}), e.g. 255")
    return list(classes)


def check_label_map(label_map: Optional[Mapping[Any, Any]]) -> Optional[dict[int, int]]:
    """``label_map`` as {int: int}; ConfigError for anything else."""
    if label_map is None:
        return None
    if not isinstance(label_map, Mapping):
        raise ConfigError(f"label_map: expected a mapping of source value -> label, got {label_map!r}")
    for key, value in label_map.items():
        for v in (key, value):
            if not isinstance(v, int) or isinstance(v, bool):
                raise ConfigError(f"label_map: expected integers, got {key!r}: {value!r}")
    return dict(label_map)


def make_splits(images: Sequence[ImageRef], masks: Sequence[Any], train: Sequence[int], val: Sequence[int], *,
                classes: Sequence[str], ignore_index: int, label_map: Optional[Mapping[int, int]],
                where: str, mask_reader: Callable[[Any], np.ndarray] = read_mask,
                colors: Optional[Palette] = None) -> DataSplits:
    """Wrap the chosen indices of ``images``/``masks`` as train and val SegDatasets; an empty split is a problem."""
    report_empty(train, val, where)

    def subset(idx: Sequence[int]) -> SegDataset:
        return SegDataset([images[i] for i in idx], [masks[i] for i in idx], classes=classes,
                          ignore_index=ignore_index, label_map=label_map, mask_reader=mask_reader, colors=colors)

    return DataSplits(subset(train), subset(val), list(classes), ignore_index)


def binary_splits(splits: DataSplits) -> DataSplits:
    """The data of a binary model (one sigmoid channel): the same files, classes [background, foreground],
    masks read by ``BINARY_RULE``. ``data.classes`` gives the foreground alone or background first."""
    if not all(isinstance(ds, SegDataset) for ds in splits):
        raise ConfigError(f"model.binary: a binary model trains on segmentation masks, but this data format "
                          f"gives {type(splits.train).__name__} items")
    classes = list(splits.classes)
    if len(classes) == 1:
        classes = ["background", *classes]
    if len(classes) != 2:
        raise ConfigError(f"data.classes: a binary model needs 2 classes (background, then the foreground) or "
                          f"the foreground alone, got {len(classes)}: {', '.join(classes)}")

    def convert(ds: SegDataset) -> SegDataset:
        out = copy.copy(ds)
        out.classes, out.binary = classes, True
        return out

    assert isinstance(splits.train, SegDataset) and isinstance(splits.val, SegDataset)  # for mypy: checked above
    return DataSplits(convert(splits.train), convert(splits.val), classes, splits.ignore_index)


# ------------------------------------------------------------------------------------ transforms
def default_train_spec(crop_size: int, resize_size: Optional[int] = None) -> list[dict[str, Any]]:
    """Shorter side to ``resize_size`` (if any), random scale 0.5-2.0, pad (mask: ignore), crop, h-flip."""
    resize = [{"name": "SmallestMaxSize", "max_size": resize_size}] if resize_size else []
    return resize + [
        {"name": "RandomScale", "scale_limit": [-0.5, 1.0], "p": 1.0},  # albumentations adds 1: 0.5x-2.0x
        {"name": "PadIfNeeded", "min_height": crop_size, "min_width": crop_size, "border_mode": "constant"},
        {"name": "RandomCrop", "height": crop_size, "width": crop_size},
        {"name": "HorizontalFlip", "p": 0.5},
    ]


def default_val_spec(resize_size: Optional[int] = None) -> list[dict[str, Any]]:
    """Shorter side to ``resize_size``, as at inference; no step at all when it is None."""
    return [{"name": "SmallestMaxSize", "max_size": resize_size}] if resize_size else []


def _compact(mask: np.ndarray, ignore_index: int) -> np.ndarray:
    """The smallest dtype OpenCV handles that holds every label and the ignore index (int64 it does not)."""
    lo = min(int(mask.min()) if mask.size else 0, ignore_index)
    hi = max(int(mask.max()) if mask.size else 0, ignore_index)
    for dtype in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return mask.astype(dtype, copy=False)
    raise ValueError(f"mask values {lo}..{hi} do not fit in int32")


class SegTransform:
    """(uint8 HxWx3 image, integer HxW mask) -> (normalised float 3xHxW tensor, int64 HxW tensor)."""

    def __init__(self, pipeline: A.Compose, preprocess: Preprocess, ignore_index: int = 255):
        self.pipeline = pipeline
        # Only mean/std: resizing is the pipeline's job, and must move the mask along with the image.
        self.normalize = dataclasses.replace(preprocess, resize_size=None)
        self.ignore_index = ignore_index

    def reseed(self, seed: int) -> None:
        """Seed every step independently (``transforms.reseed``), for reproducible augmented copies."""
        reseed(self.pipeline, seed)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.pipeline(image=image, mask=_compact(mask, self.ignore_index))
        img = torch.from_numpy(np.ascontiguousarray(out["image"])).permute(2, 0, 1)
        return self.normalize(img), torch.from_numpy(np.ascontiguousarray(out["mask"])).long()

    def __repr__(self) -> str:
        return f"SegTransform({self.pipeline!r}, {self.normalize!r})"


def build_transforms(train: Optional[Sequence[Mapping[str, Any]]] = None,
                     val: Optional[Sequence[Mapping[str, Any]]] = None, crop_size: int = 480, *,
                     preprocess: Preprocess, ignore_index: int = 255) -> tuple[SegTransform, SegTransform]:
    """A ``transforms:`` block (``train``/``val`` step lists, ``crop_size``) -> (train, val) SegTransforms.

    Missing lists get the defaults of ``default_train_spec`` / ``default_val_spec``, sized from
    ``preprocess.resize_size``; ``preprocess`` comes from the model's weights.
    """
    if not isinstance(crop_size, int) or isinstance(crop_size, bool) or crop_size < 1:
        raise ConfigError(f"augment.crop_size: expected a positive integer, got {crop_size!r}")
    train_spec = default_train_spec(crop_size, preprocess.resize_size) if train is None else train
    val_spec = default_val_spec(preprocess.resize_size) if val is None else val
    return (SegTransform(build_pipeline(train_spec, ignore_index, "augment.train"), preprocess, ignore_index),
            SegTransform(build_pipeline(val_spec, ignore_index, "augment.val"), preprocess, ignore_index))


class SegCollate:
    """Batches (image, mask) pairs: stacks equal sizes, else pads bottom/right (image 0, mask ignore).

    Fixed-size train crops stack as they are; variable-size val images pad to the batch's largest
    (a 0 in a normalised image is the dataset mean) or use batch size 1.
    """

    def __init__(self, ignore_index: int = 255):
        self.ignore_index = ignore_index

    def __call__(self, batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        images, masks = zip(*batch)
        if len({tuple(m.shape) for m in masks}) == 1 and len({tuple(i.shape) for i in images}) == 1:
            return torch.stack(images), torch.stack(masks)
        height = max(i.shape[-2] for i in images)
        width = max(i.shape[-1] for i in images)
        out_images = images[0].new_zeros((len(images), images[0].shape[0], height, width))
        out_masks = masks[0].new_full((len(masks), height, width), self.ignore_index)
        for k, (image, mask) in enumerate(zip(images, masks)):
            out_images[k, :, :image.shape[-2], :image.shape[-1]] = image
            out_masks[k, :mask.shape[-2], :mask.shape[-1]] = mask
        return out_images, out_masks
