"""Test-time augmentation: the same input seen flipped and at several scales, the softmax averaged
(segmentation, classification) or the boxes merged by class-wise NMS (detection). Used by ``infer --tta``
and ``evaluate --tta`` alike, so a user sees on their val split what it buys before they deploy it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms

from ..errors import ConfigError

# Boxes of two views overlapping more than this are one object (torchvision's detectors' own NMS value).
MERGE_IOU = 0.5


@dataclass(frozen=True)
class TTA:
    """The views: each scale, each with and without a horizontal flip when ``flip``."""

    flip: bool = False
    scales: tuple[float, ...] = (1.0,)

    @classmethod
    def parse(cls, spec: Optional[str]) -> Optional[TTA]:
        """``'flip'``, ``'scales=0.75,1,1.25'`` or ``'flip,scales=0.75,1,1.25'`` -> TTA; None/'' -> None."""
        if not spec:
            return None
        flip, scales, parts = False, [1.0], spec.split(",")
        i = 0
        while i < len(parts):
            part = parts[i].strip()
            if part == "flip":
                flip = True
            elif part.startswith("scales="):
                scales = [_scale(part[len("scales="):], spec)]
                while i + 1 < len(parts) and "=" not in parts[i + 1] and parts[i + 1].strip() != "flip":
                    i += 1
                    scales.append(_scale(parts[i], spec))
            else:
                raise ConfigError(f"--tta {spec}: unknown part '{part}' (expected flip and/or scales=S1,S2,...)")
            i += 1
        return cls(flip=flip, scales=tuple(scales))

    def views(self) -> list[tuple[float, bool]]:
        return [(s, f) for s in self.scales for f in ((False, True) if self.flip else (False,))]

    def __str__(self) -> str:
        return ",".join((["flip"] if self.flip else []) + [f"scales={','.join(f'{s:g}' for s in self.scales)}"])


def _scale(text: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--tta {spec}: scale '{text}' is not a number") from None
    if not 0.1 <= value <= 4.0:
        raise ConfigError(f"--tta {spec}: scale {value:g} is outside 0.1..4")
    return value


def _view(x: torch.Tensor, scale: float, flip: bool) -> torch.Tensor:
    if scale != 1.0:
        size = [max(1, round(d * scale)) for d in x.shape[-2:]]
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x.flip(-1) if flip else x


def binary_probs(logits: torch.Tensor) -> torch.Tensor:
    """A binary model's Nx1xHxW logits as Nx2xHxW probabilities ``[1 - p, p]`` (``p`` the sigmoid): what
    softmax gives a two-class model, so averaging views and blending tiles need no case of their own."""
    p = logits.float().sigmoid()
    return torch.cat([1 - p, p], dim=1)


def segmentation_probs(logits: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tta: TTA,
                       binary: bool = False) -> torch.Tensor:
    """Mean softmax over the views, NxCxHxW at the input's size; ``binary``: a binary model's mean
    ``binary_probs`` (Nx2xHxW)."""
    total = None
    for scale, flip in tta.views():
        out = logits(_view(x, scale, flip))
        out = out.flip(-1) if flip else out
        if out.shape[-2:] != x.shape[-2:]:
            out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        probs = binary_probs(out) if binary else out.float().softmax(1)
        total = probs if total is None else total + probs
    assert total is not None
    return total / len(tta.views())


def classification_probs(logits: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tta: TTA) -> torch.Tensor:
    """Mean softmax over the views, NxC."""
    probs = [logits(_view(x, scale, flip)).float().softmax(1) for scale, flip in tta.views()]
    return torch.stack(probs).mean(0)


def merge_detections(views: list[dict[str, torch.Tensor]], iou: float = MERGE_IOU) -> dict[str, torch.Tensor]:
    """The detections of several views of one image (boxes in its pixels) as one set: class-wise NMS."""
    boxes = torch.cat([v["boxes"] for v in views])
    labels = torch.cat([v["labels"] for v in views])
    scores = torch.cat([v["scores"] for v in views])
    keep = batched_nms(boxes.float(), scores.float(), labels, iou)
    return {"boxes": boxes[keep], "labels": labels[keep], "scores": scores[keep]}


def flip_boxes(boxes: torch.Tensor, width: int) -> torch.Tensor:
    """Boxes (x1, y1, x2, y2) of a horizontally flipped image of ``width`` in the original's pixels."""
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)


def detections(detect: Callable[[list[torch.Tensor]], list[dict[str, torch.Tensor]]], images: list[torch.Tensor],
               tta: TTA) -> list[dict[str, torch.Tensor]]:
    """Each image's detections over the views (scales resize the image; boxes come back to its pixels)."""
    per_image: list[list[dict[str, torch.Tensor]]] = [[] for _ in images]
    for scale, flip in tta.views():
        views = [_view(img[None], scale, flip)[0] for img in images]
        for k, (img, view, out) in enumerate(zip(images, views, detect(views))):
            boxes = out["boxes"].float()
            if flip:
                boxes = flip_boxes(boxes, view.shape[-1])
            if scale != 1.0:
                sy, sx = img.shape[-2] / view.shape[-2], img.shape[-1] / view.shape[-1]
                boxes = boxes * torch.tensor([sx, sy, sx, sy], device=boxes.device)
            per_image[k].append({"boxes": boxes, "labels": out["labels"], "scores": out["scores"]})
    return [merge_detections(v) for v in per_image]


class TTAModel(nn.Module):
    """``model`` seen through ``tta``, with the model's own output format: segmentation ``{"out": log of
    the mean softmax}`` (argmax and cross-entropy read it as logits; a ``binary`` model's one channel: the
    logit of the mean foreground probability), classification log-probabilities, detection the merged
    detections. In train mode, or given targets (detection's val loss), it is ``model`` itself.
    Parameters and ``info`` are ``model``'s."""

    def __init__(self, model: nn.Module, task: str, tta: TTA, binary: bool = False):
        super().__init__()
        self.model, self.task, self.tta, self.binary = model, task, tta, binary
        if hasattr(model, "info"):
            self.info = model.info  # classes and preprocessing travel with the wrapper

    def forward(self, x: Any, *targets: Any) -> Any:
        if self.training or targets:  # a loss: the model's own, on the plain view
            return self.model(x, *targets)
        if self.task == "segmentation":
            probs = segmentation_probs(lambda v: self.model(v)["out"], x, self.tta, binary=self.binary)
            if self.binary:
                return {"out": torch.logit(probs[:, 1:], eps=1e-6)}
            return {"out": probs.clamp_min(1e-12).log()}
        if self.task == "classification":
            return classification_probs(self.model, x, self.tta).clamp_min(1e-12).log()
        return detections(self.model, list(x), self.tta)
