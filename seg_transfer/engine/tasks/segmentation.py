"""Semantic segmentation glue: per-pixel losses, the confusion-matrix meter (mIoU), mask plots; a binary
model's (one sigmoid channel) in ``BinarySegmentationTask``."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from ...config import Config
from ...data.checks import label_frequencies
from ...data.device_augment import SegmentationBatchAugment
from ...data.segmentation import SegCollate, build_transforms
from ...errors import ConfigError
from ..losses import SegmentationCriterion, build_binary_loss, build_loss
from ..metrics.base import Meter
from ..metrics.segmentation import BinarySegmentationMeter, SegmentationMeter, binary_prediction
from ..plots import confusion_report, plot_predictions, sample_predictions, spread
from .base import BatchRecipe, Task


def segmentation_forward(model: nn.Module, inputs: Any, size: Any, cached: bool) -> dict[str, torch.Tensor]:
    """The model on images, or its neck and head on cached backbone features."""
    if cached:  # model is then a split_forward.Decoder (maybe in DDP): neck and head on features
        return model(inputs, size)
    return model(inputs)


class SegmentationTask(Task):
    name = "segmentation"
    main_metric = "miou"
    metric_label = "mIoU"
    fields: tuple[str, ...] = ("miou", "pixel_acc", "mean_acc")
    image_score = "image mIoU"
    pseudo_unit = "pixels"

    def __init__(self, cfg: Config, splits: Any) -> None:
        self.classes, self.ignore_index = list(splits.classes), splits.ignore_index
        t = cfg.train
        spec: Any = t.loss or "ce"
        if t.class_weights is not None and isinstance(spec, str):
            spec = {"name": spec, "class_weights": t.class_weights}
        counts = label_frequencies(splits.train).tolist() if isinstance(t.class_weights, str) else None
        self.criterion = SegmentationCriterion(build_loss(spec, len(self.classes), self.ignore_index, counts),
                                               aux_weight=t.aux_weight)
        self.collate = SegCollate(self.ignore_index)

    def transforms(self, augment: Any, preprocess: Any) -> tuple[Any, Any]:
        return build_transforms(augment.train, augment.val, augment.crop_size, preprocess=preprocess,
                                ignore_index=self.ignore_index)

    def batch_recipe(self, augment: Any, preprocess: Any) -> Optional[BatchRecipe]:
        if augment.train is not None:
            return None
        return BatchRecipe(SegmentationBatchAugment(augment.crop_size, preprocess, self.ignore_index),
                           preprocess.resize_size)

    def train_loss(self, model: nn.Module, inputs: Any, targets: torch.Tensor, cached: bool) -> torch.Tensor:
        return self.criterion(segmentation_forward(model, inputs, targets.shape[-2:], cached), targets)

    def class_logits(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        return model(inputs)["out"]

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

    CLASS_IOU = "iou"  # the meter's per-class IoU key

    def per_class(self, metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
        return {name: {"iou": float(iou), "accuracy": float(acc)}
                for name, iou, acc in zip(self.classes, metrics[self.CLASS_IOU], metrics["class_accuracy"])}

    def predicted_mask(self, out: dict[str, torch.Tensor]) -> Any:
        """One image's class-index mask (numpy) from the model's output."""
        return out["out"].argmax(1)[0].cpu().numpy()

    def plot_predictions(self, model: nn.Module, dataset: Any, n: int, device: torch.device, path: Path,
                         indices: Optional[Sequence[int]] = None, titles: Optional[Sequence[str]] = None) -> None:
        # Spread over the split: neighbouring video frames (CamVid) would show one scene n times.
        items = list(indices) if indices is not None else spread(n, len(dataset))
        images, targets, preds = sample_predictions(model, dataset, items, device, self.predicted_mask)
        plot_predictions(images, [t.numpy() for t in targets], preds, self.classes, path,
                         ignore_index=self.ignore_index, max_samples=len(items), titles=titles)

    def write_report(self, metrics: dict[str, Any], meter: Meter, out_dir: Path) -> dict[str, Any]:
        assert isinstance(meter, SegmentationMeter)
        return confusion_report(meter.matrix.mat, self.classes, out_dir)


class BinarySegmentationTask(SegmentationTask):
    """A binary model (one sigmoid channel; classes [background, foreground]): BCE + Dice by default, the
    foreground's IoU, Dice, precision and recall at ``train.threshold``, thresholded mask plots."""

    main_metric = "iou"
    metric_label = "IoU"
    fields = ("iou", "dice", "precision", "recall", "pixel_acc")
    image_score = "image IoU"

    def __init__(self, cfg: Config, splits: Any) -> None:
        self.classes, self.ignore_index = list(splits.classes), splits.ignore_index
        t = cfg.train
        if t.class_weights is not None:
            raise ConfigError("train.class_weights: a binary model weighs its foreground with the bce loss's "
                              "pos_weight instead, e.g. loss: [{name: bce, pos_weight: 3}, dice]")
        if not 0.0 < t.threshold < 1.0:
            raise ConfigError(f"train.threshold: expected a number between 0 and 1, got {t.threshold!r}")
        self.threshold = t.threshold
        self.criterion = SegmentationCriterion(build_binary_loss(t.loss, self.ignore_index), aux_weight=t.aux_weight)
        self.collate = SegCollate(self.ignore_index)

    def class_logits(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        # the foreground logit z as two classes [0, z]: their softmax is [1 - sigmoid(z), sigmoid(z)], and
        # cross-entropy over them is the BCE of z
        z = model(inputs)["out"]
        return torch.cat([torch.zeros_like(z), z], dim=1)

    def meter(self) -> BinarySegmentationMeter:
        return BinarySegmentationMeter(self.threshold, self.ignore_index)

    def row(self, metrics: dict[str, Any]) -> dict[str, float]:
        return {**{k: float(metrics[k]) for k in ("iou", "dice", "precision", "recall")},
                "pixel_acc": float(metrics["pixel_accuracy"])}

    def summary(self, metrics: dict[str, Any]) -> str:
        return f"IoU {metrics['iou']:.4f}  Dice {metrics['dice']:.4f}"

    def report_lines(self, metrics: dict[str, Any]) -> list[str]:
        return [f"IoU {metrics['iou']:.4f}  Dice {metrics['dice']:.4f}  precision {metrics['precision']:.4f}  "
                f"recall {metrics['recall']:.4f}  pixel_acc {metrics['pixel_accuracy']:.4f}  "
                f"(threshold {metrics['threshold']:g}, {self.classes[1]} vs {self.classes[0]})"]

    CLASS_IOU = "class_iou"  # "iou" is the foreground's

    def predicted_mask(self, out: dict[str, torch.Tensor]) -> Any:
        return binary_prediction(out["out"], self.threshold)[0].cpu().numpy()


def segmentation_task(cfg: Config, splits: Any) -> SegmentationTask:
    """The segmentation task for ``splits``: binary when they are a binary model's (``binary_splits``)."""
    if getattr(splits.train, "binary", False):
        return BinarySegmentationTask(cfg, splits)
    return SegmentationTask(cfg, splits)
