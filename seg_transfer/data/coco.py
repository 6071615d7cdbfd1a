"""The ``coco`` format: COCO instance annotations painted into semantic masks with pycocotools; and the
COCO reading that the ``coco_boxes`` format shares (files, categories, images, segmentation decoding)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from ..errors import ConfigError
from .common import DataSplits, PathLike, find_folder
from .problems import Problem, fail, report
from .segmentation import check_classes, check_label_map, make_splits
from .split import split_names

# (images folder, annotations file, its JSON) of the train file and, when given, the val file
Loaded = list[tuple[Path, Path, dict[str, Any]]]
Annotated = tuple[tuple[int, int], list[dict[str, Any]]]  # an image's (H, W) and its annotations


@dataclass(frozen=True)
class CocoImage:
    """The mask reference of a COCO sample: its annotations file and image id (``str`` names both)."""

    annotations: str
    image_id: int
    file_name: str

    def __str__(self) -> str:
        return f"{self.file_name} (image id {self.image_id} in {self.annotations})"


@dataclass
class CocoSamples:
    """Every listed image whose file exists: path, reference and source (0: the train file, 1: the val
    file), in file-name order per source; ``images`` maps each reference to its size and annotations."""

    files: list[Path] = field(default_factory=list)
    refs: list[CocoImage] = field(default_factory=list)
    origin: list[int] = field(default_factory=list)
    images: dict[CocoImage, Annotated] = field(default_factory=dict)

    def by_origin(self) -> tuple[list[int], list[int]]:
        """(train, val) indices when each annotations file gives one split."""
        return ([i for i, o in enumerate(self.origin) if o == 0],
                [i for i, o in enumerate(self.origin) if o == 1])


class CocoMasks:
    """Paints instances into a semantic mask: in file order (later over earlier), crowd as ignore."""

    def __init__(self, labels: Mapping[int, int], ignore_index: int, images: Mapping[CocoImage, Annotated]):
        self.labels = dict(labels)
        self.ignore_index = ignore_index
        self.images = images

    def __call__(self, ref: CocoImage) -> np.ndarray:
        (height, width), instances = self.images[ref]
        # uint8 when every label and the ignore index fit (fast to check); else int32 (e.g. ignore -100)
        small = 0 <= self.ignore_index <= 255 and len(self.labels) < 255
        mask = np.zeros((height, width), dtype=np.uint8 if small else np.int32)
        for ann in instances:
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


def categories(data: Mapping[str, Any]) -> list[tuple[int, str]]:
    """(id, name) of each category of a COCO instances JSON, in id order."""
    return sorted((int(c["id"]), str(c["name"])) for c in data["categories"])


def load_coco(root: Path, images: str, annotations: str, val_images: Optional[str],
              val_annotations: Optional[str]) -> tuple[Loaded, list[tuple[int, str]]]:
    """The annotations file(s) under ``root`` with their images folders, and the categories they share;
    a DataError when the val file's categories differ (its labels would mean other classes)."""
    sources = [(images, annotations)]
    if val_annotations is not None:
        sources.append((val_images or images, val_annotations))
    loaded = [(find_folder(root, folder, "images"), root / ann, load_instances(root / ann))
              for folder, ann in sources]
    shared = categories(loaded[0][2])
    for _, path, data in loaded[1:]:
        if categories(data) != shared:
            raise fail(Problem("unreadable", str(path), (
                f"annotations file {path}: its categories differ from {loaded[0][1]}'s; "
                "both files must list the same ids and names")))
    return loaded, shared


def collect(loaded: Loaded) -> CocoSamples:
    """Every image of ``loaded`` with its annotations; a listed image without its file is a problem."""
    samples, problems = CocoSamples(), []
    for source, (folder, path, data) in enumerate(loaded):
        by_image: dict[Any, list[dict[str, Any]]] = {}
        for ann in data["annotations"]:
            by_image.setdefault(ann.get("image_id"), []).append(ann)
        for img in sorted(data["images"], key=lambda d: str(d["file_name"])):
            file = folder / img["file_name"]
            if not file.is_file():
                problems.append(Problem("missing_image", str(file), (
                    f"image {file}: no such file (listed in {path} as image id {img['id']})")))
                continue
            ref = CocoImage(str(path), int(img["id"]), str(img["file_name"]))
            samples.images[ref] = ((int(img["height"]), int(img["width"])), by_image.get(img["id"], []))
            samples.files.append(file)
            samples.refs.append(ref)
            samples.origin.append(source)
    report(problems)
    return samples


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
    if val_annotations is not None:
        given = {"split": split, "val_groups": val_groups, "group_regex": group_regex,
                 "train_list": train_list, "val_list": val_list}
        if any(v is not None for v in given.values()):
            raise ConfigError(f"{', '.join(k for k, v in given.items() if v is not None)}: not used when "
                              "val_annotations gives the val split")
    loaded, cats = load_coco(root, images, annotations, val_images, val_annotations)
    labels = {cat_id: label for label, (cat_id, _) in enumerate(cats, start=1)}
    classes = check_classes(["background", *(name for _, name in cats)], ignore_index)
    for _, path, data in loaded:  # a crowd region is ignored whatever its category; any other must be known
        for ann in data["annotations"]:
            if ann.get("category_id") not in labels and not ann.get("iscrowd"):
                raise fail(Problem("label_range", str(path), (
                    f"annotations file {path}: annotation {ann.get('id')} has category_id "
                    f"{ann.get('category_id')!r}, which is not in its categories")))
    samples = collect(loaded)
    if val_annotations is not None:
        train, val = samples.by_origin()
    else:
        train, val = split_names([ref.file_name for ref in samples.refs], split=split, val_ratio=val_ratio,
                                 seed=seed, val_groups=val_groups, group_regex=group_regex,
                                 train_list=train_list, val_list=val_list, root=root)
    return make_splits(samples.files, samples.refs, train, val, classes=classes, ignore_index=ignore_index,
                       label_map=label_map, where=str(root),
                       mask_reader=CocoMasks(labels, ignore_index, samples.images))
