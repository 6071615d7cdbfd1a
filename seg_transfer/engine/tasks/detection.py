"""Object detection (torchvision Faster R-CNN, SSD, RetinaNet, Mask R-CNN): the detector's own loss dict,
COCO AP through pycocotools, predictions drawn as boxes, a box confusion matrix and precision-recall curves.

The main metric is COCO AP (mean over IoU 0.50:0.95), the figure torchvision's weights report as
``box_map``; AP50 is logged beside it. torchvision detectors compute losses only in train mode, so the
val loss runs each val batch a second time in train mode (``loss_mode``: nothing is updated).
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, cast

import torch
from torch import nn

from ...config import Config
from ...data.detection import build_box_transforms, detection_collate
from ...data.device_augment import DetectionBatchAugment, detection_flips
from ...errors import SegTransferError
from ...run_folder import CONFUSION, PR_CURVES, RunFolder
from ..metrics.base import Meter
from ..metrics.detection import STATS, CocoMeter
from ..plots import plot_detection_confusion, plot_detections, plot_pr_curves, spread
from .base import BatchRecipe, Task

SCORE_THRESHOLD = 0.5  # boxes drawn in predictions.png and counted in the confusion matrix
IOU_THRESHOLD = 0.5    # a detection matches a box from this IoU on (the confusion matrix, per-image F1)
# Layers whose train mode changes state or draws randomness: kept in eval mode while a val loss is computed.
HELD_IN_EVAL = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)


@contextlib.contextmanager
def loss_mode(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """``model`` in train mode, so a torchvision detector returns its loss dict, with BatchNorm (running
    statistics) and dropout layers in eval mode, and the random state (which RoI sampling draws from)
    restored on exit; every module's mode is put back too. Use it under ``torch.no_grad``: then nothing
    about the model, and nothing the training's random stream would draw next, changes."""
    modes = [(m, m.training) for m in model.modules()]
    accelerator = device.type != "cpu"  # its own random state (CUDA, MPS) is forked too
    with torch.random.fork_rng(devices=[device] if accelerator else [],
                               device_type=device.type if accelerator else None):
        try:
            model.train()
            for m in model.modules():
                if isinstance(m, HELD_IN_EVAL):
                    m.eval()
            yield model
        finally:
            for m, mode in modes:
                m.training = mode


class DetectionTask(Task):
    name = "detection"
    main_metric = "ap"
    metric_label = "AP"
    image_score = f"F1@{IOU_THRESHOLD:g}"
    crop_size_instead = ("the detector resizes inside (model.resize); name a crop step in augment.train, "
                         "e.g. RandomSizedBBoxSafeCrop")

    def __init__(self, cfg: Config, splits: Any) -> None:
        self.classes = list(splits.classes)  # __background__ first, as torchvision counts labels
        self.masks = bool(getattr(splits.train, "has_masks", False))
        self.fields = STATS + (("mask_ap",) if self.masks else ())
        self.collate = detection_collate

    def transforms(self, augment: Any, preprocess: Any) -> tuple[Any, Any]:
        # preprocess (mean/std, resize) is applied inside torchvision's detectors: images stay in [0, 1]
        return build_box_transforms(augment.train, augment.val)

    def batch_recipe(self, augment: Any, preprocess: Any) -> Optional[BatchRecipe]:
        flips = detection_flips(augment.train)
        return None if flips is None else BatchRecipe(DetectionBatchAugment(*flips))

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
        return self.val_loss(model, inputs, targets)

    @torch.no_grad()
    def val_loss(self, model: nn.Module, inputs: Any, targets: Any) -> torch.Tensor:
        """The training loss of a val batch (the mean of its images'), computed without updating anything
        (``loss_mode``). Image by image, each with the same seed for the detector's sampling: an image's loss
        then does not depend on which images share its batch, nor on how ranks split the val set."""
        with loss_mode(model, inputs[0].device if len(inputs) else torch.device("cpu")):
            losses = []
            for image, target in zip(inputs, targets):
                torch.manual_seed(0)
                losses.append(self.train_loss(model, [image], [target], cached=False).detach())
        return torch.stack(losses).mean()

    def meter(self) -> CocoMeter:
        return CocoMeter(len(self.classes), masks=self.masks)

    def summary(self, metrics: dict[str, Any]) -> str:
        text = f"AP {metrics['ap']:.4f}  AP50 {metrics['ap50']:.4f}"
        return text + (f"  mask AP {metrics['mask_ap']:.4f}" if self.masks else "")

    def report_lines(self, metrics: dict[str, Any]) -> list[str]:
        lines = ["  ".join(f"{k} {metrics[k]:.4f}" for k in self.fields)]
        return lines + [f"  {name:<20} AP {ap:.4f}  AP50 {ap50:.4f}" for name, ap, ap50
                        in zip(self.classes[1:], metrics["ap_per_class"], metrics["ap50_per_class"])]

    def per_class(self, metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
        keys = {"ap": "ap_per_class", "ap50": "ap50_per_class", "precision": "precision_per_class",
                "recall": "recall_per_class", "boxes": "boxes_per_class"}
        return {name: {k: float(metrics[key][c]) for k, key in keys.items() if key in metrics}
                for c, name in enumerate(self.classes[1:])}

    def plot_predictions(self, model: nn.Module, dataset: Any, n: int, device: torch.device, path: Path,
                         indices: Optional[Sequence[int]] = None, titles: Optional[Sequence[str]] = None) -> None:
        items = list(indices) if indices is not None else spread(n, len(dataset))
        plot_detections(model, dataset, len(items), device, self.classes, path, SCORE_THRESHOLD,
                        indices=items, titles=titles)

    def write_report(self, metrics: dict[str, Any], meter: Meter, out_dir: Path) -> dict[str, Any]:
        """confusion.png (boxes matched at IoU 0.5, background row and column) and pr_curves.png."""
        assert isinstance(meter, CocoMeter)
        matrix = meter.confusion(IOU_THRESHOLD, SCORE_THRESHOLD)
        folder = RunFolder(out_dir)
        plot_detection_confusion(matrix, self.classes, folder.confusion, IOU_THRESHOLD, SCORE_THRESHOLD)
        plot_pr_curves(meter.pr_recall, meter.pr_precision, self.classes[1:], folder.pr_curves)
        return {"confusion": matrix.tolist(), "confusion_classes": ["background", *self.classes[1:]],
                "files": [CONFUSION, PR_CURVES]}
