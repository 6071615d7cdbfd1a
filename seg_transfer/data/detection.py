"""Object detection data: the ``BoxDataset`` every box format returns, the rules a box must satisfy, and
the image + boxes (+ instance masks) transforms and collate.

Class 0 is ``__background__`` and the config's classes are labels 1..K, as torchvision's detectors and
their weights' ``meta["categories"]`` count them. Boxes are ``xyxy`` in pixels (``xmax`` exclusive-or-
inclusive does not matter to the detectors; VOC writes 1-based inclusive corners, read as they are).
Augmentation uses the same YAML step lists as segmentation, with albumentations' ``bbox_params`` so boxes
follow flips, crops and resizes. No normalisation here: torchvision's detectors normalise and resize
inside the model (``GeneralizedRCNNTransform``, ``SSD``'s transform), so images leave as floats in [0, 1].
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch

from ..errors import ConfigError, unknown
from .common import AnnotatedImages, DataSplits, ImageRef
from .problems import DataError, Problem, fail
from .split import report_empty
from .transforms import A, build_step, reseed

BACKGROUND = "__background__"
BAD_BOXES = ("error", "drop")  # what a bad box is: an error that stops training, or a warning and dropped


@dataclass
class RawBoxes:
    """One image's annotations as a format reads them, before any check.

    ``labels`` are 1..K, or -1 where ``names[j]`` is not a configured class; ``size`` is (H, W) when the
    annotation file states one; ``masks`` (N x H x W uint8) only for formats with instance masks.
    """

    boxes: np.ndarray                      # float64 N x 4, xyxy pixels
    labels: np.ndarray                     # int64 N
    names: list[str] = field(default_factory=list)
    masks: Optional[np.ndarray] = None
    iscrowd: Optional[np.ndarray] = None
    size: Optional[tuple[int, int]] = None

    @classmethod
    def empty(cls, size: Optional[tuple[int, int]] = None) -> RawBoxes:
        """No objects (an image without annotations)."""
        return cls(np.zeros((0, 4)), np.zeros(0, np.int64), [], None, None, size)


Reader = Callable[[Any], RawBoxes]
Transform = Callable[[np.ndarray, dict[str, np.ndarray]], Any]


def check_classes(classes: Optional[Sequence[str]]) -> list[str]:
    """``[__background__, *classes]``; ConfigError when missing or duplicated (background is implied)."""
    if not classes or isinstance(classes, str) or not all(isinstance(c, str) for c in classes):
        raise ConfigError(f"classes: expected a list of object class names, e.g. [RBC, WBC], got {classes!r}")
    names = [c for c in classes if c != BACKGROUND]  # tolerate it listed first, as in weights' meta
    dupes = sorted({c for c in names if names.count(c) > 1})
    if dupes:
        raise ConfigError(f"classes: duplicate names {', '.join(dupes)}")
    return [BACKGROUND, *names]


def check_bad_boxes(bad_boxes: str) -> str:
    """``bad_boxes`` itself when it is one of BAD_BOXES; ConfigError otherwise."""
    if bad_boxes not in BAD_BOXES:
        raise unknown("value", bad_boxes, BAD_BOXES, "data.bad_boxes")
    return bad_boxes


def check_boxes(raw: RawBoxes, *, where: str, image_shape: Optional[Sequence[int]], classes: Sequence[str],
                bad_boxes: str = "error", image_name: str = "") -> tuple[np.ndarray, list[Problem]]:
    """(bool N: boxes to keep, problems) for one image's boxes; each problem names file and object index.

    Unknown class names are always errors (a typo in ``classes`` must not silently drop a class);
    geometry (outside the image, zero or negative size) is an error, or with ``bad_boxes: drop`` a
    warning and the box is dropped.
    """
    problems: list[Problem] = []
    n = len(raw.labels)
    keep = np.ones(n, dtype=bool)
    known = ", ".join(classes[1:])
    if image_shape is not None and raw.size is not None and tuple(raw.size) != tuple(image_shape[:2]):
        problems.append(Problem("size_mismatch", where, (
            f"annotation {where} states size {raw.size[0]}x{raw.size[1]} (HxW) but image {image_name} is "
            f"{image_shape[0]}x{image_shape[1]}; boxes are checked against the image")))
    height, width = (image_shape[:2] if image_shape is not None else raw.size or (None, None))
    geometry = "warning" if bad_boxes == "drop" else "error"
    tail = "; dropped (bad_boxes: drop)" if bad_boxes == "drop" else \
        "; fix the annotation, or set data.bad_boxes: drop to skip such boxes"
    for j in range(n):
        name = raw.names[j] if j < len(raw.names) else str(raw.labels[j])
        what = f"annotation {where}, object {j} ({name})"
        if raw.labels[j] < 0:
            keep[j] = False
            problems.append(Problem("unknown_class", where, (
                f"{what}: '{name}' is not one of the classes ({known}); add it to data.classes (COCO: "
                "to the file's categories) or remove the object")))
            continue
        x0, y0, x1, y1 = (float(v) for v in raw.boxes[j])
        box = f"[{x0:g}, {y0:g}, {x1:g}, {y1:g}]"
        if not np.isfinite(raw.boxes[j]).all():
            message = f"box {box} is not finite"
        elif x1 <= x0 or y1 <= y0:
            size = "zero" if (x1 == x0 or y1 == y0) and x1 >= x0 and y1 >= y0 else "negative"
            message = f"box {box} (xmin, ymin, xmax, ymax) has {size} width or height"
        elif width is not None and height is not None and (x0 < 0 or y0 < 0 or x1 > width or y1 > height):
            message = f"box {box} lies outside the {width}x{height} (WxH) image"
        else:
            continue
        keep[j] = False
        problems.append(Problem("bad_box", where, f"{what}: {message}{tail}", geometry))
    return keep, problems


class BoxDataset(AnnotatedImages):
    """Images and their box annotations, read raw (uint8 HxWx3, target dict of numpy arrays) and checked.

    ``annotations`` holds one reference per image that ``reader`` turns into ``RawBoxes``; ``transform``
    (``(image, target) -> anything``) is applied last. A target holds ``boxes`` (float32 N x 4 xyxy),
    ``labels`` (int64 N, 1..K), ``iscrowd`` (int64 N) and, when the format has them, ``masks`` (uint8 N x H x W).
    """

    item_lists = ("images", "annotations")
    ignore_index = -1  # no pixel labels: nothing to ignore (DataSplits carries the field for segmentation)

    def __init__(self, images: Sequence[ImageRef], annotations: Sequence[Any], *, classes: Sequence[str],
                 reader: Reader, bad_boxes: str = "error", has_masks: bool = False,
                 transform: Optional[Transform] = None):
        if len(images) != len(annotations):
            raise ValueError(f"{len(images)} images but {len(annotations)} annotations")
        self.images, self.annotations = list(images), list(annotations)
        self.classes, self.reader, self.bad_boxes, self.transform = list(classes), reader, bad_boxes, transform
        self.has_masks = has_masks  # targets carry instance masks (Mask R-CNN can train on them)

    def _target(self, i: int, image_shape: Optional[Sequence[int]]) -> tuple[dict[str, np.ndarray], list[Problem]]:
        raw = self.reader(self.annotations[i])
        keep, problems = check_boxes(raw, where=str(self.annotations[i]), image_shape=image_shape,
                                     classes=self.classes, bad_boxes=self.bad_boxes, image_name=str(self.images[i]))
        n = len(raw.labels)
        target = {"boxes": raw.boxes[keep].astype(np.float32).reshape(-1, 4),
                  "labels": raw.labels[keep].astype(np.int64),
                  "iscrowd": (raw.iscrowd if raw.iscrowd is not None else np.zeros(n, np.int64))[keep]}
        if raw.masks is not None:
            target["masks"] = raw.masks[keep]
        elif self.has_masks:  # an image without objects still gets a (0, H, W) stack, so batches agree
            height, width = image_shape[:2] if image_shape is not None else (raw.size or (0, 0))
            target["masks"] = np.zeros((0, height, width), np.uint8)
        return target, problems

    def read_target(self, i: int) -> dict[str, np.ndarray]:
        """Target ``i`` (checked against the stated size only; the image is not decoded)."""
        target, problems = self._target(i, None)
        errors = [p for p in problems if p.severity == "error"]
        if errors:
            raise fail(errors[0], len(errors) - 1)
        return target

    def inspect(self, i: int) -> tuple[Optional[np.ndarray], list[Problem]]:
        """(box labels or None, every problem of sample ``i``); never raises for bad data."""
        shape, problems = None, []
        try:
            shape = self.image_shape(i)
        except DataError as err:
            problems.append(err.problem)
        try:
            target, found = self._target(i, shape)
        except DataError as err:
            return None, [*problems, err.problem]
        return target["labels"], [*problems, *found]

    def label_counts(self, labels: np.ndarray) -> np.ndarray:
        """Boxes per class for the data check; background counts once per image (it is wherever boxes are not)."""
        counts = np.bincount(labels, minlength=self.num_classes)[:self.num_classes]
        counts[0] += 1
        return counts

    def read(self, i: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Raw sample ``i``: (uint8 HxWx3 image, target); raises DataError on its first error."""
        image = self.read_image(i)
        target, problems = self._target(i, image.shape)
        errors = [p for p in problems if p.severity == "error" and p.kind != "size_mismatch"]
        if errors:
            raise fail(errors[0], len(errors) - 1)
        if "masks" in target and target["masks"].shape[1:] != image.shape[:2]:
            raise fail(Problem("size_mismatch", str(self.annotations[i]), (
                f"instance masks of {self.annotations[i]} are {target['masks'].shape[1]}x{target['masks'].shape[2]} "
                f"but image {self.images[i]} is {image.shape[0]}x{image.shape[1]} (HxW)")))
        return image, target


def make_box_splits(images: Sequence[ImageRef], annotations: Sequence[Any], train: Sequence[int],
                    val: Sequence[int], *, classes: Sequence[str], reader: Reader, bad_boxes: str,
                    where: str, has_masks: bool = False) -> DataSplits:
    """The chosen indices as train and val BoxDatasets; an empty split is a problem."""
    report_empty(train, val, where)

    def subset(idx: Sequence[int]) -> BoxDataset:
        return BoxDataset([images[i] for i in idx], [annotations[i] for i in idx], classes=classes,
                          reader=reader, bad_boxes=bad_boxes, has_masks=has_masks)

    return DataSplits(subset(train), subset(val), list(classes), BoxDataset.ignore_index)


# ------------------------------------------------------------------------------------ transforms
Target = dict[str, Any]
LABEL_FIELDS = ("labels", "index")  # index: which masks / iscrowd flags survive with their boxes


def default_train_spec() -> list[dict[str, Any]]:
    """A horizontal flip: the detector's own transform resizes, so no scale/crop by default."""
    return [{"name": "HorizontalFlip", "p": 0.5}]


def build_box_pipeline(spec: Sequence[Mapping[str, Any]], where: str = "augment.train",
                       min_size: float = 1.0) -> Any:
    """A YAML list of steps -> albumentations Compose moving image, boxes and masks together.

    Boxes are clipped to the image after each step; those left narrower or lower than ``min_size``
    pixels are dropped with their labels and masks. Padding fills masks with 0 (no instance).
    """
    if isinstance(spec, (str, Mapping)) or not isinstance(spec, Sequence):
        raise ConfigError(f"{where}: expected a list of transforms, got {spec!r}")
    steps = [build_step(e, 0, f"{where}[{i}]") for i, e in enumerate(spec)]
    params = A.BboxParams(format="pascal_voc", label_fields=list(LABEL_FIELDS), min_width=min_size,
                          min_height=min_size, clip=True, filter_invalid_bboxes=True)
    with warnings.catch_warnings():  # an empty (val) list "has no transform to process bboxes": fine
        warnings.simplefilter("ignore", UserWarning)
        return A.Compose(steps, bbox_params=params)


def target_tensors(target: Target, boxes: Any, index: Any, masks: Any, size: Sequence[int],
                   min_size: float = 1.0) -> dict[str, torch.Tensor]:
    """A target as the detectors take it, after its image was transformed: ``boxes`` (x1, y1, x2, y2 at
    ``size`` (H, W)) and ``index`` (which of ``target``'s objects each box is) as the transform left them,
    ``masks`` (the transformed instance masks of every object, or None); boxes narrower or lower than
    ``min_size`` are dropped with their labels, iscrowd flags and masks (degenerate boxes stop a detector)."""
    out_boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    index = np.asarray(index, dtype=np.int64).reshape(-1)
    # bbox_params filters by width/height; keep the rule explicit for steps (and paths) that skip the check
    wide = (out_boxes[:, 2] - out_boxes[:, 0] >= min_size) & (out_boxes[:, 3] - out_boxes[:, 1] >= min_size)
    out_boxes, index = out_boxes[wide], index[wide]
    labels = np.asarray(target["labels"], dtype=np.int64)
    result = {"boxes": torch.from_numpy(np.ascontiguousarray(out_boxes)),
              "labels": torch.as_tensor(labels[index]),
              "iscrowd": torch.as_tensor(np.asarray(target.get("iscrowd", np.zeros(len(labels), np.int64)),
                                                    dtype=np.int64)[index])}
    if target.get("masks") is not None:
        height, width = (int(v) for v in size)
        kept = np.asarray(masks)[index] if masks is not None else np.zeros((0, height, width), np.uint8)
        result["masks"] = torch.from_numpy(np.ascontiguousarray(kept, dtype=np.uint8).reshape(-1, height, width))
    return result


class BoxTransform:
    """(uint8 HxWx3 image, target of numpy arrays) -> (float 3xHxW tensor in [0, 1], target of tensors)."""

    def __init__(self, pipeline: Any, min_size: float = 1.0):
        self.pipeline, self.min_size = pipeline, min_size

    def reseed(self, seed: int) -> None:
        """Seed every step independently (``transforms.reseed``), for reproducible augmented copies."""
        reseed(self.pipeline, seed)

    def __call__(self, image: np.ndarray, target: Target) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        boxes = np.asarray(target["boxes"], dtype=np.float32).reshape(-1, 4)
        n = len(boxes)
        data: dict[str, Any] = {"image": image, "bboxes": boxes, "labels": np.asarray(target["labels"]),
                                "index": np.arange(n)}
        masks = target.get("masks")
        if masks is not None and n:
            data["masks"] = np.ascontiguousarray(masks)
        out = self.pipeline(**data)
        img = torch.from_numpy(np.ascontiguousarray(out["image"])).permute(2, 0, 1).float().div_(255)
        return img, target_tensors(target, out["bboxes"], out["index"], out.get("masks") if n else None,
                                   img.shape[-2:], self.min_size)

    def __repr__(self) -> str:
        return f"BoxTransform({self.pipeline!r})"


def build_box_transforms(train: Optional[Sequence[Mapping[str, Any]]] = None,
                         val: Optional[Sequence[Mapping[str, Any]]] = None,
                         crop_size: Optional[int] = None, **_: Any) -> tuple[BoxTransform, BoxTransform]:
    """An ``augment:`` block -> (train, val) BoxTransforms; ``crop_size`` is a segmentation default and
    unused here (name a crop step, e.g. ``RandomSizedBBoxSafeCrop``, to crop)."""
    train_spec = default_train_spec() if train is None else train
    return (BoxTransform(build_box_pipeline(train_spec, "augment.train")),
            BoxTransform(build_box_pipeline(val or [], "augment.val")))


def detection_collate(batch: Sequence[tuple[torch.Tensor, Target]]) -> tuple[list[torch.Tensor], list[Target]]:
    """(list of image tensors, list of target dicts): detectors take images of different sizes as a list."""
    images, targets = zip(*batch)
    return list(images), list(targets)
