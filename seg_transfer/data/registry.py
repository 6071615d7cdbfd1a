"""The dataset formats by name: the ``format`` key of a YAML ``data:`` block picks one builder."""
from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

from ..errors import ConfigError, unknown
from .coco import build_coco
from .coco_boxes import build_coco_boxes
from .common import DataSplits
from .cvat_masks import build_cvat_masks
from .folder import build_folder
from .imagefolder import build_imagefolder
from .instance_masks import build_instance_masks
from .labelme import build_labelme, build_labelme_boxes
from .voc import build_voc
from .voc_boxes import build_voc_boxes
from .yolo import build_yolo

# Every builder takes the data root first and the format's own options as keywords, and returns DataSplits.
DATASETS: dict[str, Callable[..., DataSplits]] = {
    "folder": build_folder,  # segmentation: images + masks folders
    "voc": build_voc,  # segmentation: a VOCdevkit tree
    "coco": build_coco,  # segmentation: COCO instances painted into semantic masks
    "imagefolder": build_imagefolder,  # classification: one folder per class
    "voc_boxes": build_voc_boxes,  # detection: VOC XML boxes
    "coco_boxes": build_coco_boxes,  # detection: COCO instances JSON (boxes, masks: true for Mask R-CNN)
    "instance_masks": build_instance_masks,  # detection: instance-id mask PNGs (Penn-Fudan)
    "labelme": build_labelme,  # segmentation: LabelMe JSON shapes painted into masks
    "labelme_boxes": build_labelme_boxes,  # detection: LabelMe JSON rectangles (and shapes' bounding boxes)
    "cvat_masks": build_cvat_masks,  # segmentation: CVAT's "Segmentation mask 1.1" export (labelmap.txt colours)
    "yolo": build_yolo,  # detection: YOLO txt boxes with data.yaml / classes.txt names
}


def build_dataset(data: Mapping[str, Any]) -> DataSplits:
    """A ``data:`` block -> DataSplits; ``format`` names the builder, every other key is its argument."""
    options = dict(data)
    fmt = options.pop("format", None)
    if fmt is None:
        raise ConfigError(f"data: no 'format' key (one of {', '.join(sorted(DATASETS))})")
    if fmt not in DATASETS:
        raise unknown("format", fmt, DATASETS, where="data.format")
    params = inspect.signature(DATASETS[fmt]).parameters
    for key in options:
        if key not in params:
            raise unknown("key", f"data.{key}", ["data.format", *(f"data.{p}" for p in params)],
                          where=f"format {fmt}")
    missing = [p.name for p in params.values() if p.default is p.empty and p.name not in options]
    if missing:
        raise ConfigError(f"data: format {fmt} needs {', '.join(missing)}")
    return DATASETS[fmt](**options)
