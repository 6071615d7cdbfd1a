"""The ``yolo`` format (detection): one txt file of ``class cx cy w h`` lines (fractions of the image's width
and height) per image, with the class names of an Ultralytics ``data.yaml`` (``names:`` a list or
{id: name}; ``train:`` / ``val:`` folders, list files or lists of them) or of a ``classes.txt`` /
``obj.names`` (labelImg, YOLO-Mark).

A label file is its image's path with the last ``images`` folder turned into ``labels`` and the extension
into ``.txt`` (Ultralytics ``images/train`` + ``labels/train``, Roboflow ``train/images`` + ``train/labels``),
or the image's own path with ``.txt`` (labelImg: beside it). An image without one has no objects. The
files are read once, when the dataset is built; a line that is not five numbers (a polygon line is read
as its bounding box, as Ultralytics does), a class index outside the names, coordinates outside [0, 1] are
problems named by file and line. Class k of the files is label k + 1 here: 0 is background.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import yaml

from ..errors import ConfigError
from ..io import IMAGE_EXTENSIONS
from .common import DataSplits, PathLike, image_file_shape, list_files, scan
from .detection import RawBoxes, check_bad_boxes, check_classes, make_box_splits
from .problems import DataError, Problem, fail, report, warn
from .split import split_names

NAME_FILES = ("classes.txt", "obj.names", "labels/classes.txt")
TOLERANCE = 0.01  # corners this little outside [0, 1] (labelling tools' rounding) are clipped silently


def label_path(image: Path) -> Path:
    """The label file of ``image``: Ultralytics' ``img2label_paths`` rule (``.../images/x.jpg`` ->
    ``.../labels/x.txt``), or the image's own path with ``.txt`` when no folder is called ``images``."""
    parts = list(image.parts)
    folders = [k for k, part in enumerate(parts[:-1]) if part == "images"]
    if folders:
        parts[folders[-1]] = "labels"
    return Path(*parts).with_suffix(".txt")


def read_names(value: Any, where: str) -> list[str]:
    """``names:`` of a data.yaml (a list, or {0: a, 1: b}) -> names in index order."""
    if isinstance(value, list) and value:
        return [str(n) for n in value]
    if isinstance(value, dict) and value:
        keys = sorted(value, key=lambda k: int(k) if str(k).isdigit() else -1)
        if [str(k) for k in keys] != [str(k) for k in range(len(keys))]:
            raise fail(Problem("unreadable", where, f"{where}: names: keys must be 0..{len(keys) - 1}, got "
                                                    f"{', '.join(map(str, keys))}"))
        return [str(value[k]) for k in keys]
    raise fail(Problem("unreadable", where, f"{where}: names: expected a list or {{0: name, ...}}, got {value!r}"))


def images_in(path: Path) -> list[Path]:
    """The images of a ``train:``/``val:`` entry: a folder (searched recursively) or a list file of image paths
    (relative ones from the list file's folder)."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                      and not any(part.startswith(".") for part in p.relative_to(path).parts))
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return [Path(line) if os.path.isabs(line) else path.parent / line for line in lines]


def _entry(value: str, key: str, base: Path, yaml_path: Path) -> Path:
    """A ``train:``/``val:`` path of data.yaml, resolved as Ultralytics does: against ``path:`` (else the
    yaml's folder); Roboflow's ``../train/images`` also from that folder itself."""
    given = Path(value)
    tries = [given] if given.is_absolute() else [base / given, yaml_path.parent / given]
    if value.startswith("../"):
        tries += [base / value[3:], yaml_path.parent / value[3:]]
    for path in tries:
        if path.exists():
            return path
    raise fail(Problem("missing_path", str(yaml_path), (
        f"{yaml_path}: {key}: {value}: no such folder or list file (looked at {', '.join(map(str, dict.fromkeys(tries)))})")))


def from_yaml(yaml_path: Path) -> tuple[Optional[list[str]], list[list[Path]]]:
    """(names, [train images, val images]) of an Ultralytics data.yaml (val empty when it names none)."""
    try:
        data = yaml.safe_load(yaml_path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise fail(Problem("unreadable", str(yaml_path), f"{yaml_path}: not readable YAML ({err})")) from None
    if not isinstance(data, dict):
        raise fail(Problem("unreadable", str(yaml_path), f"{yaml_path}: expected a mapping (train:, val:, names:)"))
    names = read_names(data["names"], str(yaml_path)) if data.get("names") is not None else None
    base = yaml_path.parent
    if isinstance(data.get("path"), str) and (base / data["path"]).is_dir():
        base = base / data["path"]  # else the yaml's folder: ``path: ../datasets/x`` rarely holds on another machine
    sides: list[list[Path]] = []
    for key in ("train", "val"):
        value = data.get(key)
        entries = value if isinstance(value, list) else [] if value is None else [value]
        sides.append([p for entry in entries for p in images_in(_entry(str(entry), key, base, yaml_path))])
    if not sides[0]:
        said = "has no train: entry" if data.get("train") is None else f"train: {data['train']!r} names no images"
        raise fail(Problem("missing_image", str(yaml_path), f"{yaml_path}: {said} (Ultralytics' layout: train: "
                           "images/train, val: images/val, names: [...]); add it, or delete the file to read "
                           "images/ and labels/ beside it"))
    return names, sides


def from_folder(root: Path) -> tuple[Optional[list[str]], list[list[Path]]]:
    """(names of classes.txt / obj.names, [train images, val images]) of a tree without data.yaml:
    ``images/train`` + ``images/val``, else every image under ``images/``, else the images in ``root``."""
    names = next(([line.strip() for line in (root / f).read_text().splitlines() if line.strip()]
                  for f in NAME_FILES if (root / f).is_file()), None)
    images = root / "images"
    if (images / "train").is_dir() and (images / "val").is_dir():
        return names, [images_in(images / "train"), images_in(images / "val")]
    return names, [images_in(images) if images.is_dir() else list_files(root), []]


class YoloBoxes:
    """A label file path -> RawBoxes (read when the dataset is built)."""

    def __init__(self, boxes: dict[str, RawBoxes]):
        self.boxes = boxes

    def __call__(self, ref: PathLike) -> RawBoxes:
        return self.boxes[str(ref)]


def parse_labels(path: Path, size: tuple[int, int], names: Sequence[str], bad_boxes: str
                 ) -> tuple[RawBoxes, list[Problem]]:
    """One label file -> (its boxes in pixels, labels 1..K; the problems of its lines, by line number).

    Bad lines are left out (the problems say which), so the data check can still scan the rest."""
    if not path.is_file():
        return RawBoxes.empty(size), []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        return RawBoxes.empty(size), [Problem("unreadable", str(path), f"label file {path}: not readable text ({err})")]
    height, width = size
    boxes, labels, found, problems = [], [], [], []
    severity = "warning" if bad_boxes == "drop" else "error"
    tail = ("; dropped (bad_boxes: drop)" if bad_boxes == "drop" else
            "; fix the line, or set data.bad_boxes: drop to skip such lines")
    for number, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        where = f"label file {path}, line {number}"
        try:
            values = np.array([float(t) for t in tokens])
        except ValueError:
            problems.append(Problem("unreadable", str(path), f"{where}: '{line.strip()}' is not numbers "
                                                              "(class cx cy w h, fractions of the image)"))
            continue
        if len(values) == 5:
            cx, cy, w, h = values[1:]
            coords, box = values[1:], np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        elif len(values) >= 7 and len(values) % 2 == 1:  # a segment: its bounding box
            xs, ys = values[1::2], values[2::2]
            coords, box = values[1:], np.array([xs.min(), ys.min(), xs.max(), ys.max()])
        else:
            problems.append(Problem("unreadable", str(path), (
                f"{where}: {len(values)} numbers; expected 5 (class cx cy w h, fractions of the image) or a "
                "polygon (class x1 y1 x2 y2 ...)")))
            continue
        cls = values[0]
        if not (cls.is_integer() and 0 <= cls < len(names)):
            problems.append(Problem("unknown_class", str(path), (
                f"{where}: class {tokens[0]} is not a class index 0..{len(names) - 1} ({', '.join(names)}); fix "
                "the line, or the names in data.yaml / classes.txt")))
            continue
        message = None
        if not np.isfinite(coords).all() or coords.min() < 0 or coords.max() > 1:
            message = (f"coordinates {' '.join(tokens[1:5])}{' ...' if len(tokens) > 5 else ''} lie outside [0, 1]: YOLO "
                       f"coordinates are fractions of the image's width and height ({width}x{height}), not pixels")
        elif box[2] <= box[0] or box[3] <= box[1]:
            message = f"box {' '.join(tokens[1:5])} has zero width or height"
        elif box.min() < -TOLERANCE or box.max() > 1 + TOLERANCE:
            message = f"box {' '.join(tokens[1:5])} reaches outside the image (corners {', '.join(f'{v:.3g}' for v in box)})"
        if message is not None:
            problems.append(Problem("bad_box", str(path), f"{where}: {message}{tail}", severity))
            continue
        box = box.clip(0, 1) * [width, height, width, height]
        boxes.append(box)
        labels.append(int(cls) + 1)
        found.append(f"{names[int(cls)]}, line {number}")
    if not boxes:
        return RawBoxes.empty(size), problems
    return RawBoxes(np.array(boxes, np.float64), np.array(labels, np.int64), found, None,
                    np.zeros(len(boxes), np.int64), size), problems


def build_yolo(root: PathLike, *, classes: Optional[Sequence[str]] = None, data_yaml: Optional[str] = None,
               bad_boxes: str = "error", split: Optional[str] = None, val_ratio: float = 0.2, seed: int = 0,
               train_list: Optional[PathLike] = None, val_list: Optional[PathLike] = None) -> DataSplits:
    """A YOLO dataset -> DataSplits of BoxDatasets; ``root`` is its folder or its data.yaml.

    Names come from ``data_yaml`` (default ``data.yaml`` in ``root`` when there is one), else from
    classes.txt / obj.names; ``classes`` gives or renames them (same count). The split is the yaml's
    ``train``/``val`` (or ``images/train`` + ``images/val``), else ``val_ratio`` + ``seed``; ``split:
    ratio`` or list files override it. Examples::

        build_yolo("coco8")                        # coco8/data.yaml, images/{train,val}, labels/{train,val}
        build_yolo("plates", classes=["plate"])    # plates/*.jpg with plates/*.txt beside them
    """
    root = Path(root)
    bad_boxes = check_bad_boxes(bad_boxes)
    yaml_path = (root if root.suffix.lower() in (".yaml", ".yml") else
                 root / data_yaml if data_yaml else root / "data.yaml")
    if yaml_path == root or data_yaml or yaml_path.is_file():
        if not yaml_path.is_file():
            raise fail(Problem("missing_path", str(yaml_path), f"{yaml_path}: no such file"))
        names, sides = from_yaml(yaml_path)
        root = yaml_path.parent
    elif not root.is_dir():
        raise fail(Problem("missing_path", str(root), f"data root {root}: no such folder"))
    else:
        names, sides = from_folder(root)
    names = _names(names, classes, root)
    index: dict[Path, int] = {}
    for image in (p for side in sides for p in side):
        index.setdefault(image, len(index))
    images = list(index)
    if not images:
        raise fail(Problem("missing_image", str(root), f"data root {root}: no images (and no data.yaml naming them)"))
    read = scan(lambda image: _read(image, names, bad_boxes), images, "reading YOLO labels")
    problems = [p for _, found in read for p in found]
    report([p for p in problems if p.severity == "error"])
    warn([p for p in problems if p.severity != "error"])
    kept = [(image, raw) for image, (raw, _) in zip(images, read) if raw is not None]  # None: image unreadable
    images = [image for image, _ in kept]
    boxes = {str(label_path(image)): raw for image, raw in kept}
    members = [set(side) for side in sides]
    by_origin = [[k for k, image in enumerate(images) if image in side] for side in members]
    if split is None and train_list is None and val_list is None and by_origin[1]:
        train, val = by_origin
    else:
        train, val = split_names([p.name for p in images], split=split, val_ratio=val_ratio, seed=seed,
                                 train_list=train_list, val_list=val_list, root=root)
    return make_box_splits(images, [label_path(p) for p in images], train, val, classes=check_classes(names),
                           reader=YoloBoxes(boxes), bad_boxes=bad_boxes, where=str(root))


def _names(found: Optional[list[str]], classes: Optional[Sequence[str]], root: Path) -> list[str]:
    if classes is not None:
        if isinstance(classes, str) or not all(isinstance(c, str) for c in classes):
            raise ConfigError(f"classes: expected a list of class names, got {classes!r}")
        if found is not None and len(found) != len(classes):
            raise ConfigError(f"data.classes has {len(classes)} names but the dataset's names list has {len(found)} "
                              f"({', '.join(found)}); the label files index that list")
        return list(classes)
    if not found:
        raise ConfigError(f"data: no class names for {root}: give data.classes, or a data.yaml with names:, "
                          f"or a classes.txt")
    return found


def _read(image: Path, names: Sequence[str], bad_boxes: str) -> tuple[Union[RawBoxes, None], list[Problem]]:
    try:
        size = image_file_shape(image, decode=False)  # normalised coordinates need the size; the header has it
    except DataError as err:
        return None, [err.problem]
    return parse_labels(label_path(image), size, names, bad_boxes)
