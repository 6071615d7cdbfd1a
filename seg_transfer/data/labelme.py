"""The ``labelme`` (segmentation) and ``labelme_boxes`` (detection) formats: a folder of LabelMe JSON files
beside their images.

Segmentation paints each file's shapes into a class mask in file order, later over earlier, as LabelMe's
own ``labelme2voc`` export does: polygons, rectangles and circles filled, lines and line strips 10 px
wide, points 5 px discs, ``mask`` shapes pasted; a shape labelled ``__ignore__`` paints the ignore index.
Detection takes each area shape's bounding box (lines and points have none). The files are read once, when
the dataset is built: a file that is not JSON, a polygon of fewer than 3 points, a label outside
``classes``, a missing image are problems named by file and shape; a shape reaching outside the image is
clipped, with a warning. The image is the file ``imagePath`` names (relative to the JSON), else one of the
JSON's name beside it, else the ``imageData`` embedded in the JSON.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from ..errors import BadInputError, suggest
from ..io import IMAGE_EXTENSIONS, read_image
from .common import ORIENTATION, DataSplits, ImageRef, InlineImage, PathLike, image_file_shape, ref_name, scan
from .detection import RawBoxes, check_bad_boxes, make_box_splits
from .detection import check_classes as check_box_classes
from .problems import DataError, Problem, fail, report, say_once, warn
from .segmentation import check_classes, make_splits
from .split import split_names

BACKGROUND_NAMES = ("background", "_background_", "__background__")  # class 0 (labelme2voc: _background_)
IGNORE = "__ignore__"  # labelme2voc's label for regions that count as no class
LINE_WIDTH, POINT_RADIUS = 10, 5  # labelme's shape_to_mask defaults
MIN_POINTS = {"polygon": 3, "rectangle": 2, "circle": 2, "mask": 2, "line": 2, "linestrip": 2, "point": 1}
STROKES = ("line", "linestrip", "point")  # no area: painted as strokes, never a box


@dataclass
class Shape:
    """One LabelMe shape: its label, ``shape_type``, points (N x 2, x then y), for ``mask`` the base64 PNG, and
    its index in the file's ``shapes`` (what messages name)."""

    label: str
    kind: str
    points: np.ndarray
    mask: Optional[str] = None
    index: int = 0

    def extent(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of the area the shape covers (of its points, for lines and points)."""
        if self.kind == "circle":
            (cx, cy), (px, py) = self.points[:2]
            d = float(np.hypot(cx - px, cy - py))
            return cx - d, cy - d, cx + d, cy + d
        if self.kind == "mask":
            height, width = decode_mask(self.mask or "").shape
            x0, y0 = (int(v) for v in self.points[0])
            return x0, y0, x0 + width, y0 + height
        (x0, y0), (x1, y1) = self.points.min(axis=0), self.points.max(axis=0)
        return float(x0), float(y0), float(x1), float(y1)


@dataclass
class LabelmeFile:
    """A LabelMe JSON as read: its path, its image (a file, or ``EmbeddedImage``), (H, W) and shapes."""

    path: Path
    image: ImageRef
    size: tuple[int, int]
    shapes: list[Shape]


def decode_mask(data: str) -> np.ndarray:
    """A ``mask`` shape's base64 PNG -> bool HxW (non-zero is inside, as labelme reads it)."""
    with Image.open(io.BytesIO(base64.b64decode(data))) as img:
        return np.asarray(img) != 0 if img.mode != "RGBA" else np.asarray(img)[..., 3] != 0


class EmbeddedImage(InlineImage):
    """The image stored in a LabelMe JSON's ``imageData`` (base64 of the image file)."""

    def __init__(self, path: Path):
        self.path, self.name = path, path.stem

    def __str__(self) -> str:
        return f"{self.path} (its imageData)"

    def _open(self) -> Image.Image:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))["imageData"]
            img = Image.open(io.BytesIO(base64.b64decode(data)))
            img.load()
            return img
        except (OSError, ValueError, KeyError, TypeError, binascii.Error, UnidentifiedImageError) as err:
            raise fail(Problem("unreadable", str(self.path),
                               f"LabelMe file {self.path}: cannot decode its imageData ({err})")) from None

    def read(self) -> np.ndarray:
        with self._open() as img:
            try:
                return read_image(img).permute(1, 2, 0).numpy()
            except BadInputError as err:
                raise fail(Problem("unreadable", str(self.path), f"LabelMe file {self.path}: imageData {err}")) from None

    def shape(self) -> tuple[int, int]:
        with self._open() as img:
            width, height = img.size
            turned = img.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8)
        return (width, height) if turned else (height, width)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EmbeddedImage) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)


# ------------------------------------------------------------------------------------------ reading
def find_image(path: Path, data: Mapping[str, Any]) -> Optional[ImageRef]:
    """The image of the LabelMe file ``path``: ``imagePath`` (relative to the JSON; Windows separators
    allowed), that name beside the JSON, a file of the JSON's name, or its ``imageData``; None if none."""
    candidates = []
    named = data.get("imagePath")
    if isinstance(named, str) and named.strip():
        relative = named.strip().replace("\\", "/")
        candidates += [path.parent / relative, path.parent / PurePosixPath(relative).name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    for ext in IMAGE_EXTENSIONS:
        for suffix in (ext, ext.upper()):
            if path.with_suffix(suffix).is_file():
                return path.with_suffix(suffix)
    return EmbeddedImage(path) if data.get("imageData") else None


def _shape(raw: Any, index: int, path: Path) -> Union[Shape, Problem]:
    where = f"LabelMe file {path}, shape {index}"
    if not isinstance(raw, dict):
        return Problem("bad_shape", where, f"{where}: not a shape object ({str(raw)[:60]})")
    label, kind = raw.get("label"), raw.get("shape_type") or "polygon"
    if not isinstance(label, str) or not label:
        return Problem("bad_shape", where, f"{where}: no label")
    what = f"{where} ('{label}')"
    if kind not in MIN_POINTS:
        return Problem("bad_shape", where, (
            f"{what}: shape_type '{kind}' is not one LabelMe draws ({', '.join(MIN_POINTS)}){suggest(kind, MIN_POINTS)}"))
    try:
        points = np.asarray(raw.get("points"), dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 2 or not np.isfinite(points).all():
            raise ValueError
    except (TypeError, ValueError):
        return Problem("bad_shape", where, f"{what}: points must be [[x, y], ...] numbers, got {str(raw.get('points'))[:60]}")
    if len(points) < MIN_POINTS[kind]:
        need = MIN_POINTS[kind]
        tail = ("encloses nothing: a polygon needs at least 3; add points or delete the shape" if kind == "polygon"
                else f"needs {need}")
        return Problem("bad_shape", where, f"{what}: a {kind} of {len(points)} point(s) {tail}")
    mask = raw.get("mask")
    if kind == "mask":
        try:
            decode_mask(str(mask))
        except (TypeError, ValueError, binascii.Error, OSError, UnidentifiedImageError):
            return Problem("bad_shape", where, f"{what}: a mask shape whose 'mask' is not a base64 PNG")
    return Shape(label, kind, points, mask if kind == "mask" else None, index)


def load_file(path: Path) -> tuple[Optional[LabelmeFile], list[Problem]]:
    """One LabelMe JSON -> (the file, or None when unusable; its problems: errors and clipping warnings)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as err:
        return None, [Problem("unreadable", str(path), f"LabelMe file {path}: not valid JSON ({err})")]
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        return None, [Problem("unreadable", str(path), f"LabelMe file {path}: no 'shapes' list, so not a LabelMe file")]
    image = find_image(path, data)
    if image is None:
        return None, [Problem("missing_image", str(path), (
            f"LabelMe file {path}: its image {data.get('imagePath')!r} is missing (looked beside the JSON) and "
            "the file holds no imageData; put the image beside it, or save with LabelMe's 'Save With Image Data'"))]
    shapes: list[Shape] = []
    problems: list[Problem] = []
    for j, raw in enumerate(data["shapes"]):
        found = _shape(raw, j, path)
        if isinstance(found, Problem):
            problems.append(Problem(found.kind, str(path), found.message))
        else:
            shapes.append(found)
    height, width = data.get("imageHeight"), data.get("imageWidth")
    if not (isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0):
        try:  # not stated: the image's own size, from its header
            height, width = image.shape() if isinstance(image, InlineImage) else image_file_shape(image, decode=False)
        except DataError as err:
            return None, [*problems, err.problem]
    outside = [f"{s.index} ('{s.label}')" for s in shapes if _outside(s.extent(), height, width)]
    if outside:
        problems.append(Problem("clipped", str(path), (
            f"LabelMe file {path}: shape(s) {', '.join(outside[:5])}{', ...' if len(outside) > 5 else ''} reach "
            f"outside the {width}x{height} (WxH) image; clipped to it"), "warning"))
    return LabelmeFile(path, image, (height, width), shapes), problems


def _outside(extent: tuple[float, float, float, float], height: int, width: int) -> bool:
    x0, y0, x1, y1 = extent
    return x0 < 0 or y0 < 0 or x1 > width or y1 > height


def find_files(root: Path) -> list[Path]:
    """Every ``*.json`` under ``root`` (sub-folders too, hidden ones skipped), sorted."""
    if not root.is_dir():
        raise fail(Problem("missing_path", str(root), f"data root {root}: no such folder"))
    files = sorted(p for p in root.rglob("*.json")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise fail(Problem("missing_path", str(root), f"data root {root}: no LabelMe .json files in it or its sub-folders"))
    return files


def read_folder(root: Path) -> tuple[list[LabelmeFile], list[Problem]]:
    """Every LabelMe file under ``root``, read once (threads, a progress bar after 2 s): (usable files, problems)."""
    loaded = scan(load_file, find_files(root), "reading LabelMe files")
    files = [f for f, _ in loaded if f is not None]
    problems = [p for _, found in loaded for p in found]
    return files, problems


def label_problems(files: Sequence[LabelmeFile], known: Sequence[str], classes: Sequence[str]) -> list[Problem]:
    """An ``unknown_class`` problem for each shape whose label is not in ``known``."""
    problems = []
    for f in files:
        for s in f.shapes:
            if s.label not in known:
                problems.append(Problem("unknown_class", str(f.path), (
                    f"LabelMe file {f.path}, shape {s.index}: label '{s.label}' is not one of the classes "
                    f"({', '.join(classes)}){suggest(s.label, classes)}; add it to data.classes or fix the label")))
    return problems


def _split_and_report(root: Path, files: list[LabelmeFile], problems: list[Problem], split_options: dict[str, Any]
                      ) -> tuple[list[LabelmeFile], list[int], list[int]]:
    """Report the problems (errors raise, or are recorded by the data check; warnings are said), drop the
    files with errors, and split the rest by their images' names (an embedded image: the JSON's)."""
    errors = [p for p in problems if p.severity == "error"]
    report(errors)
    warn([p for p in problems if p.severity != "error"])
    bad = {p.path for p in errors}
    files = [f for f in files if str(f.path) not in bad]
    names = [ref_name(f.image) for f in files]  # what the datasets' names and list files call the items
    first: dict[str, LabelmeFile] = {}
    for name, f in zip(names, files):
        if name in first:
            raise fail(Problem("duplicate_name", str(f.path), (
                f"LabelMe files {first[name].path} and {f.path} both name an image '{name}': items are named by "
                "image, without folder or extension, so rename one")))
        first[name] = f
    train, val = split_names(names, root=root, **split_options)
    return files, train, val


def _discovered(root: Path, files: Sequence[LabelmeFile], problems: Sequence[Problem], what: str) -> list[str]:
    found = sorted({s.label for f in files for s in f.shapes} - {IGNORE, *BACKGROUND_NAMES})
    if not found:
        report([p for p in problems if p.severity == "error"])  # broken files first: they may be why
        raise fail(Problem("absent_class", str(root), f"data root {root}: no labelled shapes in its {len(files)} "
                                                       "readable LabelMe files, so no classes to learn"))
    say_once(f"labelme: {len(found)} classes found in the {len(files)} files under {root}: {', '.join(found)} "
             f"({what}; data.classes fixes the list and its order)")
    return found


# ------------------------------------------------------------------------------------ segmentation
def _with_background(classes: Sequence[str]) -> Sequence[str]:
    """A class list with ``__ignore__`` dropped and ``background`` first (anything else: left for check_classes)."""
    if isinstance(classes, str) or not isinstance(classes, Sequence) or not all(isinstance(c, str) for c in classes):
        return classes
    names = [c for c in classes if c != IGNORE]
    return names if names and names[0] in BACKGROUND_NAMES else ["background", *names]


class LabelmeMasks:
    """A LabelMe JSON path -> its class mask (uint8, int32 when labels exceed 255): shapes painted in file order."""

    def __init__(self, files: Sequence[LabelmeFile], values: Mapping[str, int]):
        self.files = {str(f.path): f for f in files}
        self.values = dict(values)
        self.mode = "L" if all(0 <= v <= 255 for v in self.values.values()) else "I"

    def __call__(self, ref: PathLike) -> np.ndarray:
        f = self.files[str(ref)]
        height, width = f.size
        canvas = Image.new(self.mode, (width, height), 0)
        draw = ImageDraw.Draw(canvas)
        for s in f.shapes:
            paint(canvas, draw, s, self.values[s.label])
        return np.asarray(canvas)


def paint(canvas: Image.Image, draw: ImageDraw.ImageDraw, shape: Shape, value: int) -> None:
    """Paint ``shape`` with ``value`` as labelme's ``shape_to_mask`` draws it (PIL clips at the image border)."""
    xy = [(float(x), float(y)) for x, y in shape.points]
    if shape.kind == "polygon":
        draw.polygon(xy, fill=value, outline=value)
    elif shape.kind in ("rectangle", "circle"):
        x0, y0, x1, y1 = shape.extent()  # corners in any order: PIL wants them sorted
        (draw.rectangle if shape.kind == "rectangle" else draw.ellipse)([x0, y0, x1, y1], fill=value, outline=value)
    elif shape.kind in ("line", "linestrip"):
        draw.line(xy, fill=value, width=LINE_WIDTH)
    elif shape.kind == "point":
        (cx, cy), r = xy[0], POINT_RADIUS
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=value, outline=value)
    else:  # mask: its bitmap pasted at its first point
        inside = decode_mask(shape.mask or "")
        x0, y0 = (int(v) for v in shape.points[0])
        stencil = Image.fromarray(inside.astype(np.uint8) * 255, "L")
        canvas.paste(value, (x0, y0, x0 + stencil.width, y0 + stencil.height), stencil)


def build_labelme(root: PathLike, *, classes: Optional[Sequence[str]] = None, ignore_index: int = 255,
                  split: Optional[str] = None, val_ratio: float = 0.2, seed: int = 0,
                  val_groups: Optional[Sequence[str]] = None, group_regex: Optional[str] = None,
                  train_list: Optional[PathLike] = None, val_list: Optional[PathLike] = None) -> DataSplits:
    """LabelMe JSON files under ``root`` (sub-folders too) -> DataSplits of class masks.

    ``classes``: the class names in index order, background first (``background`` is put first when not
    listed; ``__ignore__`` entries are dropped, as in labelme's labels.txt); left out, every label found,
    sorted, after ``background``. The split: ``val_ratio`` + ``seed``, list files of names, or
    ``group_regex`` (+ ``val_groups``), as the folder format. Example::

        build_labelme("annotations", classes=["background", "crack", "spall"], val_ratio=0.2)
    """
    root = Path(root)
    files, problems = read_folder(root)
    names = check_classes(["background", *_discovered(root, files, problems, "0 is background")] if classes is None
                          else _with_background(classes), ignore_index)
    values = {name: k for k, name in enumerate(names)}
    values.update({b: 0 for b in BACKGROUND_NAMES if b not in values})
    values[IGNORE] = ignore_index
    problems += label_problems(files, list(values), names)
    files, train, val = _split_and_report(root, files, problems, dict(
        split=split, val_ratio=val_ratio, seed=seed, val_groups=val_groups, group_regex=group_regex,
        train_list=train_list, val_list=val_list))
    return make_splits([f.image for f in files], [f.path for f in files], train, val, classes=names,
                       ignore_index=ignore_index, label_map=None, where=str(root),
                       mask_reader=LabelmeMasks(files, values))


# --------------------------------------------------------------------------------------- detection
class LabelmeBoxes:
    """A LabelMe JSON path -> RawBoxes (computed when the dataset is built)."""

    def __init__(self, boxes: Mapping[str, RawBoxes]):
        self.boxes = dict(boxes)

    def __call__(self, ref: PathLike) -> RawBoxes:
        return self.boxes[str(ref)]


def boxes_of(f: LabelmeFile, label_of: Mapping[str, int]) -> tuple[RawBoxes, list[Problem]]:
    """The bounding box of each area shape, clipped to the image; lines and points (no area) skipped with a warning."""
    height, width = f.size
    boxes, labels, names, strokes = [], [], [], []
    for s in f.shapes:
        if s.label == IGNORE:
            continue
        if s.kind in STROKES:
            strokes.append(f"{s.index} ('{s.label}', a {s.kind})")
            continue
        x0, y0, x1, y1 = s.extent()
        boxes.append([min(max(x0, 0), width), min(max(y0, 0), height), min(max(x1, 0), width), min(max(y1, 0), height)])
        labels.append(label_of.get(s.label, -1))
        names.append(s.label)
    problems = [Problem("bad_shape", str(f.path), (
        f"LabelMe file {f.path}: shape(s) {', '.join(strokes[:5])} have no area, so no box; skipped"), "warning")
        ] if strokes else []
    if not boxes:
        return RawBoxes.empty(f.size), problems
    return RawBoxes(np.array(boxes, np.float64), np.array(labels, np.int64), names, None,
                    np.zeros(len(boxes), np.int64), f.size), problems


def build_labelme_boxes(root: PathLike, *, classes: Optional[Sequence[str]] = None, bad_boxes: str = "error",
                        split: Optional[str] = None, val_ratio: float = 0.2, seed: int = 0,
                        val_groups: Optional[Sequence[str]] = None, group_regex: Optional[str] = None,
                        train_list: Optional[PathLike] = None, val_list: Optional[PathLike] = None) -> DataSplits:
    """LabelMe JSON files under ``root`` -> DataSplits of BoxDatasets: rectangles, and the bounding boxes of
    polygons, circles and masks; labels 1..K in ``classes`` order (default: every label found, sorted), 0 is
    background. Example::

        build_labelme_boxes("annotations", classes=["cat", "dog"], val_ratio=0.2)
    """
    root = Path(root)
    bad_boxes = check_bad_boxes(bad_boxes)
    files, problems = read_folder(root)
    names = check_box_classes(_discovered(root, files, problems, "labels 1.., 0 is background") if classes is None else classes)
    label_of = {name: k for k, name in enumerate(names) if k > 0}
    problems += label_problems(files, [*label_of, IGNORE], names[1:])
    boxes = {}
    for f in files:
        boxes[str(f.path)], found = boxes_of(f, label_of)
        problems += found
    files, train, val = _split_and_report(root, files, problems, dict(
        split=split, val_ratio=val_ratio, seed=seed, val_groups=val_groups, group_regex=group_regex,
        train_list=train_list, val_list=val_list))
    return make_box_splits([f.image for f in files], [f.path for f in files], train, val, classes=names,
                           reader=LabelmeBoxes(boxes), bad_boxes=bad_boxes, where=str(root))
