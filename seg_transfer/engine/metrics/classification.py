"""Classification's meter: accuracy, top-k and per-class precision / recall / F1 from a confusion matrix of
images; each image's score is the probability its true class was given."""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.distributed as dist

from .base import ConfusionMatrix, Meter, flat_scores, gather_in_order


def informative_k(k: Optional[int], num_classes: int) -> Optional[int]:
    """``k`` for top-k accuracy, or None when k >= the number of classes: every label is then in the top k,
    and the figure is 1 whatever the model does."""
    return k if k is not None and k < num_classes else None


class ClassificationMeter(Meter):
    """A confusion matrix (label rows x predicted columns) plus top-k hits (none when k covers every class)."""

    def __init__(self, num_classes: int, k: Optional[int]) -> None:
        self.matrix = ConfusionMatrix(num_classes, ignore_index=-100)
        self.k = informative_k(k, num_classes)
        self.topk = torch.zeros(2, dtype=torch.int64)  # (hits, count)
        self.scores: list[Any] = []  # per batch the probabilities of the true class; floats after reduce()

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.matrix.update(outputs.argmax(1), targets)
        if self.k is not None:
            top = outputs.topk(self.k, dim=1).indices
            hits = (top == targets[:, None]).any(1).sum()
            self.topk = self.topk.to(targets.device) + torch.stack([hits, targets.new_tensor(len(targets))])
        self.scores.append(outputs.detach().float().softmax(1).gather(1, targets[:, None].long())[:, 0])

    def reduce(self) -> ClassificationMeter:
        self.matrix.reduce()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.topk, op=dist.ReduceOp.SUM)
        self.scores = gather_in_order(self.image_scores())
        return self

    def image_scores(self) -> list[float]:
        """The probability each image's true class was given."""
        return flat_scores(self.scores)

    def compute(self) -> dict[str, Any]:
        return classification_metrics(self.matrix.mat, self.topk, self.k)


def classification_metrics(mat: torch.Tensor, topk: torch.Tensor, k: Optional[int]) -> dict[str, Any]:
    """accuracy, top-k accuracy (only for k below the number of classes), per-class precision/recall/F1 (NaN
    where undefined) and their macro means."""
    mat = mat.detach().to("cpu", torch.float64)
    tp, labelled, predicted = mat.diag(), mat.sum(1), mat.sum(0)
    nan = torch.full_like(tp, math.nan)
    precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), nan)
    recall = torch.where(labelled > 0, tp / labelled.clamp_min(1), nan)
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom, torch.where(labelled > 0, 0.0, nan))
    total = float(mat.sum())
    hits, count = (int(v) for v in topk.tolist())
    k = informative_k(k, len(tp))
    return {
        "accuracy": float(tp.sum()) / total if total else math.nan,
        **({f"top{k}": hits / count if count else math.nan} if k is not None else {}),
        "macro_f1": float(f1.nanmean()),
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "support": [int(v) for v in labelled.tolist()],
    }
