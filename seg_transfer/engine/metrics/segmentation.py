"""Segmentation's meters: mIoU from a streaming confusion matrix of pixels, each image's own mIoU; a binary
model's foreground IoU, Dice, precision and recall at a threshold from a 2×2 one."""
from __future__ import annotations

import math
from typing import Any

import torch

from .base import ConfusionMatrix, Meter, flat_scores, gather_in_order


def image_iou(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """Per image of an N x H x W batch, the mean IoU over the classes present in its labels or its
    prediction (labelled pixels only); 1.0 for an image without labelled pixels."""
    n = num_classes
    target, pred = target.flatten(1).long(), pred.flatten(1).long()
    keep = (target != ignore_index) & (target >= 0) & (target < n) & (pred >= 0) & (pred < n)
    image = torch.arange(len(target), device=target.device)[:, None].expand_as(target)
    flat = (image * n * n + target * n + pred)[keep]
    mat = torch.bincount(flat, minlength=len(target) * n * n).view(len(target), n, n).double()
    tp = mat.diagonal(dim1=1, dim2=2)
    union = mat.sum(2) + mat.sum(1) - tp
    present = union > 0
    iou = torch.where(present, tp / union.clamp_min(1), torch.zeros_like(tp)).sum(1)
    count = present.sum(1)
    return torch.where(count > 0, iou / count.clamp_min(1), torch.ones_like(iou))



class SegmentationMeter(Meter):
    """The confusion matrix of argmax predictions over labelled pixels; each image's own mIoU."""

    def __init__(self, num_classes: int, ignore_index: int) -> None:
        self.matrix = ConfusionMatrix(num_classes, ignore_index)
        self.scores: list[Any] = []  # per batch a tensor of image mIoUs; floats after reduce()

    def update(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor) -> None:
        pred = outputs["out"].argmax(1)
        self.matrix.update(pred, targets)
        self.scores.append(image_iou(pred, targets, self.matrix.num_classes, self.matrix.ignore_index))

    def reduce(self) -> SegmentationMeter:
        self.matrix.reduce()
        self.scores = gather_in_order(self.image_scores())
        return self

    def compute(self) -> dict[str, Any]:
        return self.matrix.compute()

    def image_scores(self) -> list[float]:
        return flat_scores(self.scores)



# --------------------------------------------------------------------------- binary segmentation
def binary_prediction(logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """0/1 (long) N×H×W from a binary model's N×1×H×W (or N×H×W) logits: 1 where sigmoid >= ``threshold``."""
    logit = logits[:, 0] if logits.dim() == 4 else logits
    return (logit.float().sigmoid() >= threshold).long()


def binary_scores(mat: torch.Tensor) -> dict[str, float]:
    """The foreground's ``iou``, ``dice``, ``precision``, ``recall`` and the ``pixel_accuracy`` from a 2×2
    confusion matrix (rows labels, columns predictions, index 1 the foreground); NaN where nothing was
    there to measure (no foreground predicted: precision; none labelled: recall; neither: IoU, Dice)."""
    m = mat.detach().to("cpu", torch.float64)
    tn, fp, fn, tp = (float(v) for v in m.flatten())

    def ratio(num: float, den: float) -> float:
        return num / den if den > 0 else math.nan

    return {"iou": ratio(tp, tp + fp + fn), "dice": ratio(2 * tp, 2 * tp + fp + fn),
            "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn),
            "pixel_accuracy": ratio(tp + tn, tp + tn + fp + fn)}


def binary_image_iou(pred: torch.Tensor, target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Per image of an N×H×W batch, the foreground IoU over its labelled pixels; 1.0 for an image with
    foreground in neither its labels nor its prediction (nothing to find, nothing found)."""
    keep = (target != ignore_index) & (target >= 0) & (target < 2)
    fg_true, fg_pred = ((target == 1) & keep).flatten(1), ((pred == 1) & keep).flatten(1)
    inter = (fg_true & fg_pred).sum(1).double()
    union = (fg_true | fg_pred).sum(1).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


class BinarySegmentationMeter(SegmentationMeter):
    """A binary model's meter: its one sigmoid channel thresholded at ``threshold``, counted in a 2×2
    confusion matrix (background, foreground); ``compute`` gives the foreground's IoU, Dice, precision and
    recall (``binary_scores``) beside the two-class figures; each image's own foreground IoU."""

    def __init__(self, threshold: float = 0.5, ignore_index: int = 255) -> None:
        super().__init__(2, ignore_index)
        self.threshold = threshold

    def update(self, outputs: dict[str, torch.Tensor] | torch.Tensor, targets: torch.Tensor) -> None:
        logits = outputs["out"] if isinstance(outputs, dict) else outputs
        pred = binary_prediction(logits, self.threshold)
        self.matrix.update(pred, targets)
        self.scores.append(binary_image_iou(pred, targets, self.matrix.ignore_index))

    def compute(self) -> dict[str, Any]:
        both = self.matrix.compute()  # per class: background, foreground
        return {**binary_scores(self.matrix.mat), "threshold": self.threshold, "miou": both["miou"],
                "class_iou": both["iou"], "class_accuracy": both["class_accuracy"],
                "mean_accuracy": both["mean_accuracy"]}
