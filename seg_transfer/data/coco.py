"""The ``coco`` format: COCO instance annotations painted into semantic masks with pycocotools."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from ..errors import ConfigError
from .checks import Problem, fail, report
from .folder import DataSplits, check_classes, check_label_map, find_folder, make_splits
from .split import PathLike, split_names


@dataclass(frozen=True)
class CocoImage:
    """The mask reference of a COCO sample: its annotations file and image id (``str`` names both)."""

    annotations: str
    image_id: int
    file_name: str

    def __str__(self) -> str:
        return f"{self.file_name} (image id {self.image_id} in {self.annotations})"


class CocoMasks:
    """Paints instances into a semantic mask: in file order (later over earlier), crowd as ignore."""

    def __init__(self, labels: Mapping[int, int], ignore_index: int):
        self.labels = dict(labels)
        self.ignore_index = ignore_index
        self.sizes: dict[CocoImage, tuple[int, int]] = {}
        self.instances: dict[CocoImage, list[dict[str, Any]]] = {}

    def add(self, ref: CocoImage, height: int, width: int, instances: list[dict[str, Any]]) -> None:
        self.sizes[ref] = (height, width)
        self.instances[ref] = instances

    def __call__(self, ref: CocoImage) -> np.ndarray:
        height, width = self.sizes[ref]
        # uint8 when every label and the ignore index fit (fast to check); else int32 (e.g. ignore -100)
        small = 0 <= self.ignore_index <= 255 and len(self.labels) < 255
        mask = np.zeros((height, width), dtype=np.uint8 if small else np.int32)
        for ann in self.instances[ref]:
            region = decode(ann["segmentation"], height, width, f"{ref}, annotation {ann.get('id')}")
            mask[region] = self.ignore_index if ann.get("iscrowd") else self.labels[ann["category_id"]]
        return mask


def decode(segmentation: Any, height: int, width: int, where: str) -> np.ndarray:
    """A COCO segmentation (polygons, RLE or compressed RLE) -> boolean HxW mask."""
    try:
        if isinstance(segmentation, list):
            polygons = [p for p in segmentation if len(p) >= 6]  # fewer than 3 points enclose nothing
            if not polygons:
                return np.zeros((height, width), dtype=bool)
            rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
        elif isinstance(segmentation.get("counts"), list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = segmentation
        return mask_utils.decode(rle).astype(bool)
    except (TypeError, ValueError, AttributeError, KeyError) as err:
        raise fail(Problem("unreadable", where, f"{where}: cannot decode its segmentation ({err})")) from None


def load_instances(path: Path) -> dict[str, Any]:
    """A COCO instances JSON, checked for the three lists this format uses."""
    if not path.is_file():
        raise fail(Problem("missing_path", str(path), f"annotations file {path}: no such file"))
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise fail(Problem("unreadable", str(path), f"annotations file {path}: not valid JSON ({err})")) from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise fail(Problem("unreadable", str(path),
                               f"annotations file {path}: no '{key}' list, so not a COCO instances file"))
    return data


def _categories(data: dict[str, Any]) -> list[tuple[int, str]]:
    return sorted((int(c["id"]), str(c["name"])) for c in data["categories"])


def build_coco(root: PathLike, *, images: str = "images", annotations: str = "annotations.json",
               val_images: Optional[str] = None, val_annotations: Optional[str] = None,
               ignore_index: int = 255, label_map: Optional[Mapping[int, int]] = None,
               split: Optional[str] = None, val_ratio: float = 0.2, seed: int = 0,
               val_groups: Optional[Sequence[str]] = None, group_regex: Optional[str] = None,
               train_list: Optional[PathLike] = None, val_list: Optional[PathLike] = None) -> DataSplits:
    """COCO instances JSON(s) under ``root`` -> DataSplits of semantic masks; classes: background + categories.

    Categories get contiguous labels 1..K in id order (0 is background); crowd regions get
    ``ignore_index``. With ``val_annotations`` (and ``val_images``, default ``images``) val comes from
    that file; otherwise the one file is split like the folder format (ratio, lists or groups).
    COCO 2017: ``images: train2017, annotations: annotations/instances_train2017.json,
    val_images: val2017, val_annotations: annotations/instances_val2017.json``.
    """
    root = Path(root)
    label_map = check_label_map(label_map)
    sources = [(images, annotations)]
    if val_annotations is not None:
        given = {"split": split, "val_groups": val_groups, "group_regex": group_regex,
                 "train_list": train_list, "val_list": val_list}
        if any(v is not None for v in given.values()):
            raise ConfigError(f"{', '.join(k for k, v in given.items() if v is not None)}: not used when "
                              "val_annotations gives the val split")
        sources.append((val_images or images, val_annotations))
    loaded = [(find_folder(root, folder, "images"), root / ann, load_instances(root / ann))
              for folder, ann in sources]
    categories = _categories(loaded[0][2])
    for _, path, data in loaded[1:]:
        if _categories(data) != categories:
            raise fail(Problem("unreadable", str(path), (
                f"annotations file {path}: its categories differ from {loaded[0][1]}'s; "
                "both files must list the same ids and names")))
    labels = {cat_id: label for label, (cat_id, _) in enumerate(categories, start=1)}
    classes = check_classes(["background", *(name for _, name in categories)], ignore_index)
    masks = CocoMasks(labels, ignore_index)
    files, refs, origin = _collect(loaded, masks)
    if val_annotations is not None:
        train = [i for i, o in enumerate(origin) if o == 0]
        val = [i for i, o in enumerate(origin) if o == 1]
    else:
        train, val = split_names([ref.file_name for ref in refs], split=split, val_ratio=val_ratio,
                                 seed=seed, val_groups=val_groups, group_regex=group_regex,
                                 train_list=train_list, val_list=val_list, root=root)
    return make_splits(files, refs, train, val, classes=classes, ignore_index=ignore_index,
                       label_map=label_map, where=str(root), mask_reader=masks)


def _collect(loaded: Sequence[tuple[Path, Path, dict[str, Any]]],
             masks: CocoMasks) -> tuple[list[Path], list[CocoImage], list[int]]:
    """Image paths, mask references and source index of every image whose file exists."""
    files, refs, origin, problems = [], [], [], []
    for source, (folder, path, data) in enumerate(loaded):
        by_image: dict[int, list[dict[str, Any]]] = {}
        for ann in data["annotations"]:
            if ann.get("category_id") not in masks.labels and not ann.get("iscrowd"):
                raise fail(Problem("label_range", str(path), (
                    f"annotations file {path}: annotation {ann.get('id')} has category_id "
                    f"{ann.get('category_id')!r}, which is not in its categories")))
            by_image.setdefault(ann["image_id"], []).append(ann)
        for img in sorted(data["images"], key=lambda d: d["file_name"]):
            file = folder / img["file_name"]
            if not file.is_file():
                problems.append(Problem("missing_image", str(file), (
                    f"image {file}: no such file (listed in {path} as image id {img['id']})")))
                continue
            ref = CocoImage(str(path), int(img["id"]), str(img["file_name"]))
            masks.add(ref, int(img["height"]), int(img["width"]), by_image.get(img["id"], []))
            files.append(file)
            refs.append(ref)
            origin.append(source)
    report(problems)
    return files, refs, origin
