"""The contract between the engine and a task (segmentation, detection, classification).

The Trainer owns everything shared: seeding, freezing, the transfer report, the optimizer and schedule,
AMP, accumulation, clipping, checkpoints, resume, early stopping, rank-0-only I/O and the sampler. A task
owns what differs: transforms and collate, how a batch becomes a loss, how predictions become metrics,
and the plots of its predictions. Tasks never touch the optimizer, the file system layout or ranks.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..metrics import Meter


class Task:
    """One task's side of the engine; subclasses set the class attributes and implement the methods."""

    name: str = ""
    main_metric: str = ""   # key of ``compute()``, higher is better: picks best.pt, drives early stopping
    metric_label: str = ""  # how logs name it ("mIoU", "AP", "accuracy")
    fields: tuple[str, ...] = ()  # metrics.csv columns after epoch/train_loss/val_loss (lr/seconds follow)

    collate: Callable[[list[Any]], tuple[Any, Any]]

    def transforms(self, augment: Any, preprocess: Any) -> tuple[Callable, Callable]:
        """(train, val) transforms from the ``augment:`` block and the model's preprocessing."""
        raise NotImplementedError

    def to_device(self, targets: Any, device: torch.device) -> Any:
        return targets.to(device)

    def train_loss(self, model: nn.Module, inputs: Any, targets: Any, cached: bool) -> torch.Tensor:
        """The scalar loss of one training batch (model in train mode)."""
        raise NotImplementedError

    def eval_batch(self, model: nn.Module, inputs: Any, targets: Any, cached: bool,
                   meter: Meter) -> Optional[torch.Tensor]:
        """Update ``meter`` with one val batch (model in eval mode); return its loss, or None if the
        task has no val loss (torchvision detectors compute losses in train mode only)."""
        raise NotImplementedError

    def meter(self) -> Meter:
        raise NotImplementedError

    def row(self, metrics: dict[str, Any]) -> dict[str, float]:
        """The metrics.csv columns (``fields``) of one evaluation."""
        return {k: float(metrics[k]) for k in self.fields}

    def summary(self, metrics: dict[str, Any]) -> str:
        """The metric part of the per-epoch log line."""
        return "  ".join(f"{k} {float(metrics[k]):.4f}" for k in self.fields)

    def report_lines(self, metrics: dict[str, Any]) -> list[str]:
        """What ``seg-transfer evaluate`` prints: the summary, then per-class figures."""
        return [self.summary(metrics)]

    def plot_predictions(self, model: nn.Module, dataset: Any, n: int, device: torch.device, path: Path) -> None:
        """predictions.png: the first ``n`` val items with ground truth and prediction."""

    def write_report(self, metrics: dict[str, Any], meter: Meter, out_dir: Path) -> dict[str, Any]:
        """Extra evaluation outputs (``seg-transfer evaluate``): files in ``out_dir``; returns JSON-able
        additions to the report."""
        return {}
