"""The ``coco_boxes`` format: COCO instances JSON read as boxes (and, with ``masks: true``, instance masks
decoded by pycocotools) for detectors; categories become labels 1..K in id order."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from .coco import Annotated, CocoImage, collect, decode, load_coco
from .common import DataSplits, PathLike
from .detection import RawBoxes, check_bad_boxes, check_classes, make_box_splits
from .split import split_names


class CocoBoxReader:
    """CocoImage -> RawBoxes: ``bbox`` [x, y, w, h] -> xyxy; category ids outside the file's
    categories get label -1 (reported by the check with the annotation's index)."""

    def __init__(self, labels: Mapping[int, int], masks: bool, images: Mapping[CocoImage, Annotated]):
        self.labels, self.masks, self.images = dict(labels), masks, images

    def __call__(self, ref: CocoImage) -> RawBoxes:
        (height, width), anns = self.images[ref]
        if not anns:
            return RawBoxes.empty((height, width))
        boxes, labels, names, crowd, masks = [], [], [], [], []
        for ann in anns:
            x, y, w, h = (float(v) for v in ann.get("bbox", (np.nan,) * 4))
            boxes.append([x, y, x + w, y + h])
            cat: Any = ann.get("category_id")  # as the JSON has it: unknown or missing ids get label -1
            labels.append(self.labels.get(cat, -1))
            names.append(f"category id {cat}")
            crowd.append(int(bool(ann.get("iscrowd", 0))))
            if self.masks:
                masks.append(decode(ann["segmentation"], height, width, f"{ref}, annotation {ann.get('id')}")
                             if "segmentation" in ann else np.zeros((height, width), bool))
        return RawBoxes(np.array(boxes, np.float64), np.array(labels, np.int64), names,
                        np.stack(masks).astype(np.uint8) if self.masks else None,
                        np.array(crowd, np.int64), (height, width))


def build_coco_boxes(root: PathLike, *, images: str = "images", annotations: str = "annotations.json",
                     val_images: Optional[str] = None, val_annotations: Optional[str] = None,
                     masks: bool = False, bad_boxes: str = "error", split: Optional[str] = None,
                     val_ratio: float = 0.2, seed: int = 0, train_list: Optional[PathLike] = None,
                     val_list: Optional[PathLike] = None) -> DataSplits:
    """COCO instances JSON(s) under ``root`` -> DataSplits of BoxDatasets; classes are the categories'
    names in id order (labels 1..K, background 0).

    With ``val_annotations`` (and ``val_images``, default ``images``) val comes from that file;
    otherwise the one file is split by ratio or list files. ``masks: true`` decodes each instance's
    segmentation (polygons or RLE) for Mask R-CNN. Crowd annotations are kept as ``iscrowd`` (ignored
    by COCOeval, not trained on).
    """
    root = Path(root)
    bad_boxes = check_bad_boxes(bad_boxes)
    loaded, categories = load_coco(root, images, annotations, val_images, val_annotations)
    classes = check_classes([name for _, name in categories])
    samples = collect(loaded)
    if val_annotations is not None:
        train, val = samples.by_origin()
    else:
        train, val = split_names([r.file_name for r in samples.refs], split=split, val_ratio=val_ratio, seed=seed,
                                 train_list=train_list, val_list=val_list, root=root)
    reader = CocoBoxReader({cat: k for k, (cat, _) in enumerate(categories, start=1)}, masks, samples.images)
    return make_box_splits(samples.files, samples.refs, train, val, classes=classes, reader=reader,
                           bad_boxes=bad_boxes, where=str(root), has_masks=masks)
