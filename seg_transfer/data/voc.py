"""The ``voc`` format: a VOCdevkit tree of segmentation masks, read as a ``folder`` split by its ImageSets lists."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

from .colors import ColorsOption
from .common import DataSplits, PathLike
from .folder import build_folder
from .problems import Problem, fail

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
               "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")


def find_voc_root(root: PathLike) -> Path:
    """The folder holding JPEGImages: ``root`` itself, or its single ``VOC*`` (or ``VOCdevkit/VOC*``) child."""
    root = Path(root)
    if (root / "JPEGImages").is_dir():
        return root
    found = sorted(p.parent for pattern in ("VOC*/JPEGImages", "VOCdevkit/VOC*/JPEGImages")
                   for p in root.glob(pattern) if p.is_dir())
    if len(found) == 1:
        return found[0]
    listed = f"; candidates: {', '.join(map(str, found))} (point root at one)" if found else ""
    raise fail(Problem("missing_path", str(root),
                       f"VOC root {root}: no JPEGImages folder in it or in a VOC*/ child{listed}"))


def build_voc(root: PathLike, *, classes: Sequence[str] = VOC_CLASSES, masks: str = "SegmentationClass",
              ignore_index: int = 255, label_map: Optional[Mapping[int, int]] = None,
              train_list: PathLike = "ImageSets/Segmentation/train.txt",
              val_list: PathLike = "ImageSets/Segmentation/val.txt", colors: ColorsOption = None) -> DataSplits:
    """A VOCdevkit tree (``VOC2012/`` or a folder holding it) -> DataSplits; 255 in the masks is ignored.

    Masks are the palette PNGs of ``SegmentationClass`` (pixel value = class index; ``masks`` may name
    ``SegmentationClassAug`` instead); the split is ImageSets/Segmentation's train.txt and val.txt.
    Masks saved as RGB in VOC's colours are read as their indices; ``colors`` names another palette.
    """
    return build_folder(find_voc_root(root), images="JPEGImages", masks=masks, classes=classes,
                        ignore_index=ignore_index, label_map=label_map, split="list",
                        train_list=train_list, val_list=val_list, colors=colors)
