"""Image + boxes (+ instance masks) augmentation: the same YAML step lists as segmentation, with
albumentations' ``bbox_params`` so boxes follow flips, crops and resizes; degenerate boxes are dropped.

No normalisation here: torchvision's detectors normalise and resize inside the model
(``GeneralizedRCNNTransform``, ``SSD``'s transform), so images leave as float tensors in [0, 1].
"""
from __future__ import annotations

import warnings
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from .transforms import A, _all_steps, build_step

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


class BoxTransform:
    """(uint8 HxWx3 image, target of numpy arrays) -> (float 3xHxW tensor in [0, 1], target of tensors)."""

    def __init__(self, pipeline: Any, min_size: float = 1.0):
        self.pipeline, self.min_size = pipeline, min_size

    def reseed(self, seed: int) -> None:
        """Seed every step independently (as ``SegTransform.reseed``: one shared seed correlates steps)."""
        steps = _all_steps(self.pipeline)
        for step, child in zip(steps, np.random.SeedSequence(seed).spawn(len(steps))):
            step.set_random_seed(int(child.generate_state(1)[0]))

    def __call__(self, image: np.ndarray, target: Target) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        boxes = np.asarray(target["boxes"], dtype=np.float32).reshape(-1, 4)
        n = len(boxes)
        data: dict[str, Any] = {"image": image, "bboxes": boxes, "labels": np.asarray(target["labels"]),
                                "index": np.arange(n)}
        masks = target.get("masks")
        if masks is not None and n:
            data["masks"] = np.ascontiguousarray(masks)
        out = self.pipeline(**data)
        out_boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
        index = np.asarray(out["index"], dtype=np.int64).reshape(-1)
        # bbox_params filters by width/height; keep the rule explicit for steps that skip the check
        wide = (out_boxes[:, 2] - out_boxes[:, 0] >= self.min_size) & (out_boxes[:, 3] - out_boxes[:, 1] >= self.min_size)
        out_boxes, index = out_boxes[wide], index[wide]
        img = torch.from_numpy(np.ascontiguousarray(out["image"])).permute(2, 0, 1).float().div_(255)
        result = {"boxes": torch.from_numpy(out_boxes),
                  "labels": torch.as_tensor(np.asarray(target["labels"], dtype=np.int64)[index]),
                  "iscrowd": torch.as_tensor(np.asarray(target.get("iscrowd", np.zeros(n, np.int64)),
                                                        dtype=np.int64)[index])}
        if masks is not None:
            height, width = img.shape[-2:]
            kept = np.asarray(out["masks"])[index] if n else np.zeros((0, height, width), np.uint8)
            result["masks"] = torch.from_numpy(np.ascontiguousarray(kept, dtype=np.uint8).reshape(-1, height, width))
        return img, result

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
