"""The ``instance_masks`` format: an images folder and a folder of instance-id mask PNGs (each object a
distinct value, 0 background), boxes derived from the masks, as in Penn-Fudan (``PNGImages/``,
``PedMasks/<name>_mask.png``). Every instance is of the one configured class."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import ConfigError
from .common import DataSplits, PathLike, read_mask
from .detection import RawBoxes, check_classes, make_box_splits
from .problems import Problem, fail, report
from .split import split_mask_folders


def instances(ids: np.ndarray, where: str) -> RawBoxes:
    """An HxW instance-id mask -> one box (pixel-inclusive: ``xmax = last column + 1``) and one binary mask
    per distinct non-zero value, in value order; all of label 1."""
    if ids.ndim == 3:
        grey = ids[..., 0]
        if ids.shape[2] >= 3 and not (np.array_equal(grey, ids[..., 1]) and np.array_equal(grey, ids[..., 2])):
            raise fail(Problem("rgb_mask", where, (
                f"mask {where} is RGB: save instance ids as a single-channel PNG (mode L or P), "
                "each object one value, 0 for none")))
        ids = grey
    values = [int(v) for v in np.unique(ids) if v != 0]
    height, width = ids.shape
    if not values:
        return RawBoxes.empty((height, width))
    masks = np.stack([ids == v for v in values]).astype(np.uint8)
    boxes = []
    for m in masks:
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return RawBoxes(np.array(boxes, np.float64), np.ones(len(values), np.int64),
                    [f"instance {v}" for v in values], masks, np.zeros(len(values), np.int64), (height, width))


class InstanceMaskReader:
    """A mask file -> RawBoxes (``instances`` of its raw values)."""

    def __call__(self, path: Path) -> RawBoxes:
        return instances(read_mask(path), str(path))


def build_instance_masks(root: PathLike, *, classes: Sequence[str], images: str = "PNGImages",
                         masks: str = "PedMasks", mask_suffix: str = "_mask", split: Optional[str] = None,
                         val_ratio: float = 0.2, seed: int = 0, train_list: Optional[PathLike] = None,
                         val_list: Optional[PathLike] = None) -> DataSplits:
    """Images + instance-id masks under ``root`` (paired by name, masks named ``<stem><mask_suffix>``)
    -> DataSplits of BoxDatasets with boxes and instance masks. ``classes``: the one object class,
    e.g. ``[pedestrian]``. Penn-Fudan::

        build_instance_masks("PennFudanPed", classes=["pedestrian"], val_ratio=0.2)
    """
    classes = check_classes(classes)
    if len(classes) != 2:
        raise ConfigError(f"classes: the instance_masks format has one object class (mask values are instance "
                          f"ids, not classes), got {classes[1:]}")
    root = Path(root)
    files, train, val, refs, missing = split_mask_folders(root, images, masks, mask_suffix, split=split,
                                                          val_ratio=val_ratio, seed=seed, train_list=train_list,
                                                          val_list=val_list)
    report(missing)
    return make_box_splits(files, refs, train, val, classes=classes, reader=InstanceMaskReader(),
                           bad_boxes="error", where=str(root), has_masks=True)
