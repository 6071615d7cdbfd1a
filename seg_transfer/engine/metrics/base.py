"""The ``Meter`` contract every task's metric follows (``update`` per batch, ``reduce`` across ranks,
``compute`` once, ``image_scores`` per image), and what the tasks share: the streaming confusion matrix
(segmentation counts pixels in it, classification images) and the gathering of per-image lists across ranks."""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist

from ..distributed import is_dist, unshard, world_size


class Meter:
    """Accumulates one evaluation pass: ``update`` per batch, ``reduce`` across ranks, ``compute`` once."""

    def update(self, outputs: Any, targets: Any) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def reduce(self) -> Meter:
        """Sum the state over ranks (no-op unless torch.distributed is initialised)."""
        return self

    def compute(self) -> dict[str, Any]:  # pragma: no cover - interface
        raise NotImplementedError

    def image_scores(self) -> list[float]:
        """One score per image seen, in dataset order (after ``reduce``), higher is better; [] if none."""
        return []


def flat_scores(scores: list[Any]) -> list[float]:
    """Per-image scores kept batch by batch (tensors, or floats after a reduce) as one flat list."""
    return [float(v) for s in scores for v in (s.tolist() if isinstance(s, torch.Tensor) else [s])]


def gather_in_order(items: list[Any]) -> list[Any]:
    """Every rank's per-item list of an unpadded sharded pass, back in dataset order (itself on one process)."""
    if not is_dist():
        return items
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, items)
    return unshard(gathered)



class ConfusionMatrix:
    """Counts ``mat[target, pred]`` over every labelled pixel seen by ``update``; ``compute`` derives
    IoU and accuracies from the counts, so results do not depend on how images were batched.

    Pixels labelled ``ignore_index`` (or with any label outside ``[0, num_classes)``) are not counted.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.mat.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """``pred``: class indices shaped like ``target`` (N×H×W), or logits N×C×H×W (argmax over C)."""
        if pred.dim() == target.dim() + 1:
            pred = pred.argmax(1)
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} does not match target {tuple(target.shape)}")
        if self.mat.device != target.device:
            # Counting stays on the inputs' device: no copy of every batch to the host.
            self.mat = self.mat.to(target.device)
        n = self.num_classes
        target, pred = target.flatten().long(), pred.flatten().long()
        keep = (target != self.ignore_index) & (target >= 0) & (target < n) & (pred >= 0) & (pred < n)
        self.mat += torch.bincount(target[keep] * n + pred[keep], minlength=n * n).view(n, n)

    def reduce(self) -> ConfusionMatrix:
        """Sum the counts of every process when ``torch.distributed`` is initialised (torchrun); else no-op.
        Call it once, after the last ``update`` and before ``compute``: a second call would double-count."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.mat, op=dist.ReduceOp.SUM)
        return self

    def compute(self) -> dict[str, Any]:
        """``miou``, ``iou`` (per class; NaN for a class absent from both predictions and labels, left out
        of the mean), ``pixel_accuracy``, ``mean_accuracy`` (over classes present in the labels)."""
        mat = self.mat.detach().to("cpu", torch.float64)
        tp = mat.diag()
        labelled = mat.sum(1)
        predicted = mat.sum(0)
        union = labelled + predicted - tp
        nan = torch.full_like(tp, math.nan)
        iou = torch.where(union > 0, tp / union.clamp_min(1), nan)
        acc = torch.where(labelled > 0, tp / labelled.clamp_min(1), nan)
        total = mat.sum()
        return {
            "miou": float(iou.nanmean()),
            "iou": iou.tolist(),
            "pixel_accuracy": float(tp.sum() / total) if total > 0 else math.nan,
            "mean_accuracy": float(acc.nanmean()),
            "class_accuracy": acc.tolist(),
        }
