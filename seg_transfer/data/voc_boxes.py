"""The ``voc_boxes`` format: Pascal VOC XML box annotations (``Annotations/`` + ``JPEGImages/`` +
``ImageSets/Main/*.txt``), e.g. BCCD; class names come from the config."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .common import DataSplits, PathLike, dataset_images, find_folder, stem
from .detection import RawBoxes, check_bad_boxes, check_classes, make_box_splits
from .problems import Problem, fail
from .split import split_names
from .voc import find_voc_root


class VocReader:
    """``Annotations/<stem>.xml`` -> RawBoxes; names outside ``classes`` get label -1 (reported by the check)."""

    def __init__(self, classes: Sequence[str]):
        self.label_of = {name: k for k, name in enumerate(classes) if k > 0}

    def __call__(self, path: Path) -> RawBoxes:
        try:
            root = ET.parse(path).getroot()
        except (ET.ParseError, OSError) as err:
            raise fail(Problem("unreadable", str(path), f"annotation {path}: not readable VOC XML ({err})")) from None
        size = None
        w, h = root.findtext("size/width"), root.findtext("size/height")
        try:
            if w and h and int(float(w)) > 0 and int(float(h)) > 0:  # some tools write 0x0: no size stated
                size = (int(float(h)), int(float(w)))
            boxes, labels, names, crowd = [], [], [], []
            for j, obj in enumerate(root.iter("object")):
                name = (obj.findtext("name") or "").strip()
                box = obj.find("bndbox")
                if box is None:
                    raise ValueError(f"object {j} ({name}) has no <bndbox>")
                boxes.append([float(box.findtext(k) or "nan") for k in ("xmin", "ymin", "xmax", "ymax")])
                labels.append(self.label_of.get(name, -1))
                names.append(name)
                crowd.append(0)
        except ValueError as err:
            raise fail(Problem("unreadable", str(path), f"annotation {path}: bad VOC XML ({err})")) from None
        if not boxes:
            return RawBoxes.empty(size)  # an image without objects is allowed
        return RawBoxes(np.array(boxes, dtype=np.float64), np.array(labels, dtype=np.int64), names,
                        None, np.array(crowd, dtype=np.int64), size)


def build_voc_boxes(root: PathLike, *, classes: Sequence[str], images: str = "JPEGImages",
                    annotations: str = "Annotations", bad_boxes: str = "error", split: Optional[str] = None,
                    train_list: Optional[PathLike] = "ImageSets/Main/train.txt",
                    val_list: Optional[PathLike] = "ImageSets/Main/val.txt", val_ratio: float = 0.2,
                    seed: int = 0) -> DataSplits:
    """A VOC detection tree (``root`` itself, or its ``VOC*`` child) -> DataSplits of BoxDatasets.

    ``classes`` are the object names in label order 1..K (background, 0, is implied). The split is
    ImageSets/Main's train.txt / val.txt; ``split: ratio`` (with ``val_ratio`` + ``seed``) or
    ``split: all`` ignore the lists. An image without an XML file, or an XML without objects, is an
    image without objects. ``bad_boxes: drop`` skips boxes of zero size or outside the image (with a
    warning) instead of stopping. BCCD::

        build_voc_boxes("BCCD_Dataset/BCCD", classes=["RBC", "WBC", "Platelets"], bad_boxes="drop")
    """
    classes = check_classes(classes)
    bad_boxes = check_bad_boxes(bad_boxes)
    root = find_voc_root(root) if images == "JPEGImages" else Path(root)
    image_dir, ann_dir = find_folder(root, images, "images"), find_folder(root, annotations, "annotations")
    files = dataset_images(image_dir)
    if split in ("ratio", "all"):
        train_list = val_list = None
    train, val = split_names([p.name for p in files], split=split, val_ratio=val_ratio, seed=seed,
                             train_list=train_list, val_list=val_list, root=root)
    xml = {p.stem: p for p in ann_dir.glob("*.xml") if not p.name.startswith(".")}
    reader = VocReader(classes)
    refs = [xml.get(stem(p.name), EMPTY) for p in files]
    return make_box_splits(files, refs, train, val, classes=classes, reader=_Empty(reader),
                           bad_boxes=bad_boxes, where=str(root))


EMPTY = Path("<no annotation>")


class _Empty:
    """The reader for images without an XML file: no objects."""

    def __init__(self, reader: VocReader):
        self.reader = reader

    def __call__(self, path: Path) -> RawBoxes:
        return RawBoxes.empty() if path == EMPTY else self.reader(path)
