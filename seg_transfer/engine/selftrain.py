"""Self-training from unlabelled images (``selftrain:``), FixMatch's recipe (Sohn et al., 2020) for
segmentation and classification: each step also draws ``ratio`` x batch unlabelled images as weak views
(the task's own train recipe), takes the model's prediction on them without gradient as pseudo-labels,
and trains the strong view (``data.strong_augment``) on those whose confidence reaches ``threshold``.

The teacher is the model itself, as in FixMatch, not an EMA copy: with a high threshold FixMatch's own
predictions were enough, a second set of weights would double the model's memory on the device and add
state to checkpoint and resume, and best.pt stays the one network that made the pseudo-labels.

The share of pseudo-labels accepted (pixels or images) is counted on the device, without a host sync per
step, and reduced over ranks once per epoch: metrics.csv's ``accepted`` column.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import SelfTrainConfig
from ..data.strong_augment import StrongAugment
from . import distributed as D
from .tasks import Task

FIELDS = ("accepted",)  # the metrics.csv column self-training adds: the share of pseudo-labels accepted


def pseudo_label_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor, keep: torch.Tensor,
                      threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FixMatch's unlabelled loss: cross-entropy of the student's logits against the teacher's argmax where
    the teacher's softmax maximum reaches ``threshold`` (and ``keep``), averaged over every kept element
    (pixels N x H x W, or images N); the rejected add zero. Returns (loss, accepted, kept) counts."""
    with torch.no_grad():
        confidence, labels = teacher_logits.float().softmax(dim=1).max(dim=1)
        accepted = keep & (confidence >= threshold)
    losses = F.cross_entropy(student_logits.float(), labels, reduction="none")
    kept = keep.sum()
    loss = (losses * accepted).sum() / kept.clamp(min=1)
    return loss, accepted.sum(), kept


class SelfTraining:
    """The unlabelled side of a run: ``start(epoch)`` at each epoch, ``loss(model)`` at each step (added to
    the labelled loss), ``share()`` at the epoch's end. ``stream(epoch)``: endless batches of weak views
    and their placeholder targets (the ignore value outside the image), on the device."""

    def __init__(self, task: Task, cfg: SelfTrainConfig, strong: StrongAugment,
                 stream: Callable[[int], Iterator[tuple[Any, Any]]], ignore_index: int, seed: int) -> None:
        self.task, self.cfg, self.strong, self.stream = task, cfg, strong, stream
        self.ignore_index, self.seed = ignore_index, seed
        self.batches: Optional[Iterator[tuple[Any, Any]]] = None
        self.active = False
        self.accepted: Any = 0
        self.kept: Any = 0

    def start(self, epoch: int) -> None:
        """A new epoch: its batches and strong-view draws are a function of (seed, epoch, rank)."""
        self.close()
        self.active = epoch >= self.cfg.start_epoch
        self.accepted, self.kept = 0, 0
        if self.active:
            self.batches = self.stream(epoch)
            self.generator = torch.Generator().manual_seed(D.item_seed(self.seed, epoch, D.rank(), copy=2))

    def loss(self, model: nn.Module) -> Optional[torch.Tensor]:
        """The weighted unlabelled loss of one step (None before ``start_epoch``). ``model``: the module
        itself, not its DDP wrapper, so each step makes one DDP forward."""
        if not self.active or self.batches is None:
            return None
        weak, targets = next(self.batches)
        keep = targets != self.ignore_index  # pixels outside the image (padding); images: all
        with torch.no_grad():
            teacher = self.task.class_logits(model, weak)
        strong, kept = self.strong(weak, self.generator)
        if keep.dim() == kept.dim():  # pixels: the cutout box has no pseudo-label
            keep = keep & kept.to(keep.device)
        loss, accepted, counted = pseudo_label_loss(teacher, self.task.class_logits(model, strong), keep,
                                                    self.cfg.threshold)
        self.accepted, self.kept = self.accepted + accepted, self.kept + counted
        return self.cfg.weight * loss

    def share(self) -> Optional[float]:
        """The epoch's share of pseudo-labels accepted, over every rank; None when none were drawn."""
        if not self.active:
            return None
        accepted, kept = D.all_sum(float(self.accepted), float(self.kept))
        return accepted / kept if kept else 0.0

    def row(self) -> dict[str, float]:
        """metrics.csv's ``accepted`` (NaN in the labelled-only epochs)."""
        share = self.share()
        return {"accepted": float("nan") if share is None else share}

    def close(self) -> None:
        if self.batches is not None and hasattr(self.batches, "close"):
            self.batches.close()
        self.batches = None
