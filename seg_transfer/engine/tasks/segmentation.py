"""Semantic segmentation glue: per-pixel losses, the confusion-matrix meter (mIoU), mask plots."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ...config import Config, to_dict
from ...data.checks import label_frequencies
from ...data.segmentation import SegCollate, build_transforms
from ..losses import SegmentationCriterion, build_loss
from ..metrics import Meter, SegmentationMeter
from ..plots import confusion_report, plot_predictions, sample_predictions, spread
from .base import Task


def segmentation_forward(model: nn.Module, inputs: Any, size: Any, cached: bool) -> dict[str, torch.Tensor]:
    """The model on images, or its neck and head on cached backbone features."""
    if cached:  # model is then a split_forward.Decoder (maybe in DDP): neck and head on features
        return model(inputs, size)
    return model(inputs)


class SegmentationTask(Task):
    name = "segmentation"
    main_metric = "miou"
    metric_label = "mIoU"
    fields = ("miou", "pixel_acc", "mean_acc")

    def __init__(self, cfg: Config, splits: Any) -> None:
        self.classes, self.ignore_index = list(splits.classes), splits.ignore_index
        t = cfg.train
        spec: Any = t.loss
        if t.class_weights is not None:
            spec = {"name": t.loss, "class_weights": t.class_weights} if isinstance(t.loss, str) else t.loss
        counts = label_frequencies(splits.train).tolist() if isinstance(t.class_weights, str) else None
        self.criterion = SegmentationCriterion(build_loss(spec, len(self.classes), self.ignore_index, counts),
                                               aux_weight=t.aux_weight)
        self.collate = SegCollate(self.ignore_index)

    def transforms(self, augment: Any, preprocess: Any) -> tuple[Any, Any]:
        return build_transforms(**to_dict(augment), preprocess=preprocess, ignore_index=self.ignore_index)

    def train_loss(self, model: nn.Module, inputs: Any, targets: torch.Tensor, cached: bool) -> torch.Tensor:
        return self.criterion(segmentation_forward(model, inputs, targets.shape[-2:], cached), targets)

    def eval_batch(self, model: nn.Module, inputs: Any, targets: torch.Tensor, cached: bool,
                   meter: Meter) -> Optional[torch.Tensor]:
        out = segmentation_forward(model, inputs, targets.shape[-2:], cached)
        meter.update(out, targets)
        return self.criterion({k: v.float() for k, v in out.items()}, targets)

    def meter(self) -> SegmentationMeter:
        return SegmentationMeter(len(self.classes), self.ignore_index)

    def row(self, metrics: dict[str, Any]) -> dict[str, float]:
        return {"miou": float(metrics["miou"]), "pixel_acc": float(metrics["pixel_accuracy"]),
                "mean_acc": float(metrics["mean_accuracy"])}

    def summary(self, metrics: dict[str, Any]) -> str:
        return f"mIoU {metrics['miou']:.4f}  pixel_acc {metrics['pixel_accuracy']:.4f}"

    def report_lines(self, metrics: dict[str, Any]) -> list[str]:
        lines = [f"mIoU {metrics['miou']:.4f}  pixel_acc {metrics['pixel_accuracy']:.4f}  "
                 f"mean_acc {metrics['mean_accuracy']:.4f}"]
        return lines + [f"  {name:<20} IoU {float(iou):.4f}" for name, iou in zip(self.classes, metrics["iou"])]

    def plot_predictions(self, model: nn.Module, dataset: Any, n: int, device: torch.device, path: Path) -> None:
        # Spread over the split: neighbouring video frames (CamVid) would show one scene n times.
        images, targets, preds = sample_predictions(model, dataset, spread(n, len(dataset)), device,
                                                    lambda out: out["out"].argmax(1)[0].cpu().numpy())
        plot_predictions(images, [t.numpy() for t in targets], preds, self.classes, path,
                         ignore_index=self.ignore_index)

    def write_report(self, metrics: dict[str, Any], meter: Meter, out_dir: Path) -> dict[str, Any]:
        assert isinstance(meter, SegmentationMeter)
        return confusion_report(meter.matrix.mat, self.classes, out_dir)
