"""Box predictions: ``DetectionResult`` (boxes, labels, scores, class names, optional instance masks)
for ``Predictor``, drawn with torchvision's ``draw_bounding_boxes`` / ``draw_segmentation_masks``."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..errors import ConfigError, unknown
from ..io import ImageInput, image_name, read_image, save_image, save_text
from ..models.preprocess import Preprocess
from ..models.tta import TTA
from ..models.tta import detections as tta_detections
from ..viz import draw_boxes
from .backends import Runner, as_runner
from .tiling import DEFAULT_OVERLAP, auto_tile, detect_tiled

DEFAULT_SCORE_THRESHOLD = 0.5


@dataclass
class DetectionResult:
    """One image's detections: ``boxes`` Nx4 (x1, y1, x2, y2 in input pixels), ``labels`` N class
    indices into ``classes`` (0 is the background), ``scores`` N, best first; ``masks`` NxHxW
    probabilities for instance-segmentation models, else None; ``image`` 3xHxW uint8."""

    image: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor
    classes: list[str]
    masks: Optional[torch.Tensor] = None
    name: str = "image"
    score_threshold: float = DEFAULT_SCORE_THRESHOLD

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def label_names(self) -> list[str]:
        return [self.classes[int(i)] for i in self.labels]

    def class_index(self, name: str) -> int:
        if name not in self.classes:
            raise unknown("class", name, self.classes, "--class")
        return self.classes.index(name)

    def only(self, classes: Sequence[str]) -> DetectionResult:
        """The detections of the named classes only (all of them when ``classes`` is empty)."""
        if not classes:
            return self
        ids = torch.tensor([self.class_index(c) for c in classes], dtype=self.labels.dtype)
        keep = torch.isin(self.labels, ids)
        return replace(self, boxes=self.boxes[keep], labels=self.labels[keep], scores=self.scores[keep],
                       masks=None if self.masks is None else self.masks[keep])

    def counts(self) -> dict[str, int]:
        """Detections per class name, most frequent first."""
        out: dict[str, int] = {}
        for name in self.label_names:
            out[name] = out.get(name, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def describe(self) -> str:
        """One line for the CLI: how many objects of each class, and the best score."""
        if not len(self):
            return f"no objects scoring >= {self.score_threshold:g}"
        per_class = ", ".join(f"{n} {name}" for name, n in self.counts().items())
        return f"{len(self)} object(s) scoring >= {self.score_threshold:g}: {per_class} (best {float(self.scores.max()):.2f})"

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.name, "height": int(self.image.shape[-2]), "width": int(self.image.shape[-1]),
                "score_threshold": self.score_threshold,
                "detections": [{"label": name, "label_id": int(i), "score": round(float(s), 6),
                                "box": [round(float(v), 2) for v in b]}
                               for name, i, s, b in zip(self.label_names, self.labels, self.scores, self.boxes)]}

    def boxes_image(self) -> Image.Image:
        """The image with instance masks (if any) overlaid and each box drawn with 'class score'."""
        canvas = draw_boxes(self.image, self.boxes, self.labels, self.classes, self.scores, self.masks)
        return Image.fromarray(canvas.permute(1, 2, 0).numpy())

    def save(self, out_dir: Union[str, os.PathLike], classes: Sequence[str] = (), json_report: bool = False,
             stem: Optional[str] = None) -> list[Path]:
        """Write ``<stem>_boxes.png`` and, with ``json_report``, ``<stem>.json`` (boxes, labels, scores);
        ``classes`` keeps only those classes' detections."""
        result = self.only(classes)  # an unknown class fails before anything is written
        out, stem = Path(out_dir), stem or self.name
        written = [save_image(result.boxes_image(), out / f"{stem}_boxes.png")]
        if json_report:
            written.append(save_text(json.dumps(result.to_dict(), indent=2) + "\n", out / f"{stem}.json"))
        return written


@torch.inference_mode()
def predict(model: Union[nn.Module, Runner], preprocess: Preprocess, image: ImageInput,
            score_threshold: float = DEFAULT_SCORE_THRESHOLD, classes: Sequence[str] = (),
            tile: Optional[int] = None, overlap: int = DEFAULT_OVERLAP, tta: Optional[TTA] = None) -> DetectionResult:
    """torchvision's recipe, ``model([weights.transforms()(img)])[0]``, keeping boxes scoring at least
    ``score_threshold`` (and, with ``classes``, of those classes only). ``tile``: detections of
    overlapping tiles and the whole image merged by class-wise NMS (SAHI's recipe), for small objects in
    large images; ``tta``: the views' detections merged the same way."""
    if isinstance(score_threshold, bool) or not isinstance(score_threshold, (int, float)) \
            or not 0.0 <= score_threshold <= 1.0:
        raise ConfigError(f"--score-threshold: expected a number from 0 to 1, got {score_threshold!r}")
    runner = as_runner(model)
    rgb = read_image(image)
    x = preprocess(rgb)

    def detect(images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return runner(images) if tta is None else tta_detections(runner, images, tta)

    size = auto_tile(rgb.shape[-2], rgb.shape[-1], tile)
    if size:
        out = detect_tiled(detect, x, tile=size, overlap=overlap)
    else:
        out = {k: v.cpu() for k, v in detect([x])[0].items()}
    boxes, masks = out["boxes"].float(), out.get("masks")
    if x.shape[-2:] != rgb.shape[-2:]:  # a preprocessing resize (--resize): back to input pixels
        sy, sx = rgb.shape[-2] / x.shape[-2], rgb.shape[-1] / x.shape[-1]
        boxes = boxes * torch.tensor([sx, sy, sx, sy])
        if masks is not None and len(masks):
            masks = F.interpolate(masks.float(), size=rgb.shape[-2:], mode="bilinear", align_corners=False)
    keep = out["scores"] >= score_threshold
    result = DetectionResult(image=rgb, boxes=boxes[keep], labels=out["labels"][keep], scores=out["scores"][keep],
                             classes=list(runner.classes), masks=None if masks is None else masks[keep][:, 0],
                             name=image_name(image), score_threshold=float(score_threshold))
    return result.only(classes)
