"""One small, valid dataset per ``data.registry.DATASETS`` format, written with the other writers of this
package: ``FAKES[format](root) -> (data block, task)``. ``tests/data/test_registry.py`` checks every
format's builder against the same contract over them (torchvision's ``DatasetTestCase`` shape), and that
each registered format has a fake here."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import save
from .classification import make_classes
from .detection import make_instance_masks, voc_tree, voc_xml
from .folders import CLASSES as FOLDER_CLASSES
from .folders import FLAT, H, W, make_folder, pair
from .tool_files import cvat_export, image, labelme, rect, shape, yolo_line, yolo_tree

Fake = Callable[[Path], tuple[dict[str, Any], str]]
SQUARE = [(4, 4), (20, 4), (20, 16), (4, 16)]  # a polygon inside any of the fakes' images


def folder(root: Path) -> tuple[dict[str, Any], str]:
    make_folder(root, FLAT)
    return {"format": "folder", "root": str(root), "classes": FOLDER_CLASSES, "val_ratio": 0.5}, "segmentation"


def voc(root: Path) -> tuple[dict[str, Any], str]:
    base = root / "VOC2012"
    names = ["a", "b", "c", "d"]
    for k, name in enumerate(names):
        img, mask = pair(k, num_classes=3)
        save(base / "JPEGImages" / f"{name}.jpg", img)
        save(base / "SegmentationClass" / f"{name}.png", mask, "L")
    lists = base / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("a\nb\nc\n")
    (lists / "val.txt").write_text("d\n")
    return {"format": "voc", "root": str(base), "classes": FOLDER_CLASSES}, "segmentation"


def _coco_json(root: Path, n: int) -> None:
    images, annotations = [], []
    for k in range(n):
        save(root / "images" / f"i{k}.png", image(k))
        images.append({"id": k + 1, "file_name": f"i{k}.png", "height": H, "width": W})
        polygon = [float(v) for point in SQUARE for v in point]
        annotations.append({"id": k + 1, "image_id": k + 1, "category_id": 3 + k % 2, "bbox": [4, 4, 16, 12],
                            "area": 192.0, "segmentation": [polygon], "iscrowd": 0})
    categories = [{"id": 3, "name": "cat"}, {"id": 4, "name": "dog"}]
    (root / "annotations.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                       "categories": categories}))


def coco(root: Path) -> tuple[dict[str, Any], str]:
    _coco_json(root, 5)
    return {"format": "coco", "root": str(root), "val_ratio": 0.4}, "segmentation"


def coco_boxes(root: Path) -> tuple[dict[str, Any], str]:
    _coco_json(root, 5)
    return {"format": "coco_boxes", "root": str(root), "val_ratio": 0.4}, "detection"


def imagefolder(root: Path) -> tuple[dict[str, Any], str]:
    make_classes(root, n=4, size=24)
    return {"format": "imagefolder", "root": str(root), "val_ratio": 0.5}, "classification"


def voc_boxes(root: Path) -> tuple[dict[str, Any], str]:
    voc_tree(root, {f"n{k}": voc_xml([("cat", (1, 1, 20 + k, 20)), ("dog", (30, 5, 55, 35))]) for k in range(4)})
    return {"format": "voc_boxes", "root": str(root), "classes": ["cat", "dog"]}, "detection"


def instance_masks(root: Path) -> tuple[dict[str, Any], str]:
    make_instance_masks(root, n=5, size=48)
    return {"format": "instance_masks", "root": str(root), "classes": ["pedestrian"], "val_ratio": 0.4}, "detection"


def labelme_masks(root: Path) -> tuple[dict[str, Any], str]:
    for k in range(4):
        labelme(root, f"l{k}", [shape("car", SQUARE)])
    return {"format": "labelme", "root": str(root), "classes": ["background", "car"], "val_ratio": 0.5}, "segmentation"


def labelme_boxes(root: Path) -> tuple[dict[str, Any], str]:
    for k in range(4):
        labelme(root, f"l{k}", [rect("car", 2, 3, 20 + k, 18)])
    return {"format": "labelme_boxes", "root": str(root), "classes": ["car"], "val_ratio": 0.5}, "detection"


def cvat_masks(root: Path) -> tuple[dict[str, Any], str]:
    masks = {}
    for k in range(4):
        mask = np.zeros((H, W), np.uint8)
        mask[4:16, 4:20] = 1 + k % 2
        masks[f"c{k}"] = mask
    cvat_export(root, masks)
    return {"format": "cvat_masks", "root": str(root), "val_ratio": 0.5}, "segmentation"


def yolo(root: Path) -> tuple[dict[str, Any], str]:
    yolo_tree(root, {"train": {f"t{k}": [yolo_line(k % 2, (2, 3, 20, 18))] for k in range(3)},
                     "val": {"v0": [yolo_line(1, (10, 5, 40, 30))]}})
    return {"format": "yolo", "root": str(root)}, "detection"


FAKES: dict[str, Fake] = {
    "folder": folder, "voc": voc, "coco": coco, "imagefolder": imagefolder, "voc_boxes": voc_boxes,
    "coco_boxes": coco_boxes, "instance_masks": instance_masks, "labelme": labelme_masks,
    "labelme_boxes": labelme_boxes, "cvat_masks": cvat_masks, "yolo": yolo,
}
