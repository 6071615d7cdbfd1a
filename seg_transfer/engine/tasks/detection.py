"""Object detection (torchvision Faster R-CNN, SSD, RetinaNet, Mask R-CNN): the detector's own loss dict,
COCO AP through pycocotools, predictions drawn as boxes.

The main metric is COCO AP (mean over IoU 0.50:0.95), the figure torchvision's weights report as
``box_map``; AP50 is logged beside it. torchvision detectors compute losses only in train mode, so
there is no val loss (the log shows NaN).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, cast

import torch
from torch import nn

from ...config import Config, to_dict
from ...data.detection import build_box_transforms, detection_collate
from ...errors import SegTransferError
from ..metrics import STATS, CocoMeter, Meter
from ..plots import plot_detections
from .base import Task

SCORE_THRESHOLD = 0.5  # boxes drawn in predictions.png


class DetectionTask(Task):
    name = "detection"
    main_metric = "ap"
    metric_label = "AP"

    def __init__(self, cfg: Config, splits: Any) -> None:
        self.classes = list(splits.classes)  # __background__ first, as torchvision counts labels
        self.masks = bool(getattr(splits.train, "has_masks", False))
        self.fields = STATS + (("mask_ap",) if self.masks else ())
        self.collate = detection_collate

    def transforms(self, augment: Any, preprocess: Any) -> tuple[Any, Any]:
        # preprocess (mean/std, resize) is applied inside torchvision's detectors: images stay in [0, 1]
        return build_box_transforms(**to_dict(augment))

    def to_device(self, targets: Any, device: torch.device) -> Any:
        return [{k: v.to(device) for k, v in t.items()} for t in targets]

    def train_loss(self, model: nn.Module, inputs: Any, targets: Any, cached: bool) -> torch.Tensor:
        if cached:
            raise SegTransferError("cache: the feature cache serves segmentation models; set cache.enabled: false")
        keep = ("boxes", "labels", "masks") if self.masks else ("boxes", "labels")
        # crowd regions (COCO iscrowd) are scored as "ignore" by COCOeval, never trained on as objects
        solo = [t["iscrowd"] == 0 if "iscrowd" in t else slice(None) for t in targets]
        losses = model(inputs, [{k: t[k][s] for k in keep if k in t} for t, s in zip(targets, solo)])
        return sum(losses.values())

    def eval_batch(self, model: nn.Module, inputs: Any, targets: Any, cached: bool,
                   meter: Meter) -> Optional[torch.Tensor]:
        outputs = model(inputs)
        cast(CocoMeter, meter).update(outputs, targets, [tuple(i.shape[-2:]) for i in inputs])  # made by self.meter()
        return None

    def meter(self) -> CocoMeter:
        return CocoMeter(len(self.classes), masks=self.masks)

    def summary(self, metrics: dict[str, Any]) -> str:
        text = f"AP {metrics['ap']:.4f}  AP50 {metrics['ap50']:.4f}"
        return text + (f"  mask AP {metrics['mask_ap']:.4f}" if self.masks else "")

    def report_lines(self, metrics: dict[str, Any]) -> list[str]:
        lines = ["  ".join(f"{k} {metrics[k]:.4f}" for k in self.fields)]
        return lines + [f"  {name:<20} AP {ap:.4f}  AP50 {ap50:.4f}" for name, ap, ap50
                        in zip(self.classes[1:], metrics["ap_per_class"], metrics["ap50_per_class"])]

    def plot_predictions(self, model: nn.Module, dataset: Any, n: int, device: torch.device, path: Path) -> None:
        plot_detections(model, dataset, n, device, self.classes, path, SCORE_THRESHOLD)

    def write_report(self, metrics: dict[str, Any], meter: Meter, out_dir: Path) -> dict[str, Any]:
        per_class = {name: {"ap": ap, "ap50": ap50} for name, ap, ap50
                     in zip(self.classes[1:], metrics["ap_per_class"], metrics["ap50_per_class"])}
        return {"per_class": per_class}
