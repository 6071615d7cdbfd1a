"""Image classification glue: cross-entropy (label smoothing, class weights), the accuracy / top-k /
per-class F1 meter, a grid of val images titled predicted vs true, the confusion matrix."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...config import Config
from ...data.classification import ClassTransform, default_train_spec, default_val_spec
from ...data.classification import classification_collate as collate
from ...data.device_augment import ClassificationBatchAugment
from ...data.transforms import build_pipeline
from ...errors import ConfigError
from ...models.preprocess import Preprocess
from ..losses import WEIGHT_METHODS, class_weights_from_counts
from ..metrics.base import Meter
from ..metrics.classification import ClassificationMeter, informative_k
from ..plots import confusion_report, plot_classifications, sample_predictions, spread
from .base import BatchRecipe, Task

TOP_K = 5


# ------------------------------------------------------------------------------------------ task
def classify(model: nn.Module, inputs: Any, cached: bool) -> torch.Tensor:
    """Logits of images, or of cached pooled features (the classifier layers only)."""
    if cached:  # model is then a split_forward.Decoder (maybe in DDP): the classifier layers on features
        return model(inputs, ())["out"]
    out = model(inputs)
    return out.logits if hasattr(out, "logits") else out  # Inception's (logits, aux) in train mode


class ClassificationTask(Task):
    name = "classification"
    main_metric = "accuracy"
    metric_label = "accuracy"
    image_score = "p(true class)"
    pseudo_unit = "images"
    crop_size_instead = ("the crop is the weights' crop size; set model.resize: N to scale it, "
                         "or name a crop step in augment.train")

    def __init__(self, cfg: Config, splits: Any) -> None:
        self.classes = list(splits.classes)
        t = cfg.train
        if t.loss not in (None, "ce", "cross_entropy"):
            raise ConfigError(f"train.loss: classification trains with cross-entropy ('ce'), got {t.loss!r}")
        if not 0.0 <= t.label_smoothing < 1.0:
            raise ConfigError(f"train.label_smoothing: expected a value in [0, 1), got {t.label_smoothing!r}")
        self.label_smoothing = t.label_smoothing
        self.weight = _class_weights(t.class_weights, splits.train, len(self.classes))
        self.k = informative_k(TOP_K, len(self.classes))  # None with TOP_K classes or fewer: no top-k column
        self.fields = ("accuracy", *((f"top{self.k}",) if self.k else ()), "macro_f1")
        self.collate = collate

    def transforms(self, augment: Any, preprocess: Preprocess) -> tuple[ClassTransform, ClassTransform]:
        crop = preprocess.crop_size
        train = default_train_spec(crop) if augment.train is None else augment.train
        val = default_val_spec(preprocess.resize_size, crop) if augment.val is None else augment.val
        return (ClassTransform(build_pipeline(train, where="augment.train"), preprocess),
                ClassTransform(build_pipeline(val, where="augment.val"), preprocess))

    def batch_recipe(self, augment: Any, preprocess: Preprocess) -> Optional[BatchRecipe]:
        if augment.train is not None or not preprocess.crop_size:
            return None
        return BatchRecipe(ClassificationBatchAugment(preprocess.crop_size, preprocess))

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.to(logits.device)
        return F.cross_entropy(logits.float(), targets, weight=weight, label_smoothing=self.label_smoothing)

    def train_loss(self, model: nn.Module, inputs: Any, targets: torch.Tensor, cached: bool) -> torch.Tensor:
        return self.loss(classify(model, inputs, cached), targets)

    def class_logits(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        return classify(model, inputs, False)

    def eval_batch(self, model: nn.Module, inputs: Any, targets: torch.Tensor, cached: bool,
                   meter: Meter) -> Optional[torch.Tensor]:
        logits = classify(model, inputs, cached)
        meter.update(logits, targets)
        return self.loss(logits, targets)

    def meter(self) -> ClassificationMeter:
        return ClassificationMeter(len(self.classes), self.k)

    def summary(self, metrics: dict[str, Any]) -> str:
        top = f"top{self.k} {metrics[f'top{self.k}']:.4f}  " if self.k else ""
        return f"acc {metrics['accuracy']:.4f}  {top}macro_f1 {metrics['macro_f1']:.4f}"

    def report_lines(self, metrics: dict[str, Any]) -> list[str]:
        lines = [self.summary(metrics), f"  {'class':<20} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}"]
        for name, p, r, f, n in zip(self.classes, metrics["precision"], metrics["recall"], metrics["f1"],
                                    metrics["support"]):
            lines.append(f"  {name:<20} {p:9.4f} {r:9.4f} {f:9.4f} {n:8d}")
        return lines

    def per_class(self, metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
        return {name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": float(n)}
                for name, p, r, f, n in zip(self.classes, metrics["precision"], metrics["recall"], metrics["f1"],
                                            metrics["support"])}

    def plot_predictions(self, model: nn.Module, dataset: Any, n: int, device: torch.device, path: Path,
                         indices: Optional[Sequence[int]] = None, titles: Optional[Sequence[str]] = None) -> None:
        # Spread over the split: datasets list one class after another, so the first n would show one class.
        items = list(indices) if indices is not None else spread(n, len(dataset))
        images, targets, preds = sample_predictions(model, dataset, items, device,
                                                    lambda logits: int(logits.argmax(1)[0]))
        plot_classifications(images, [int(t) for t in targets], preds, self.classes, path, titles=titles)

    def write_report(self, metrics: dict[str, Any], meter: Meter, out_dir: Path) -> dict[str, Any]:
        assert isinstance(meter, ClassificationMeter)
        return confusion_report(meter.matrix.mat, self.classes, out_dir, unit="images")


def _class_weights(spec: Any, train: Any, num_classes: int) -> Optional[torch.Tensor]:
    """``train.class_weights``: None, a list of per-class weights, or a method over the train label counts."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec not in WEIGHT_METHODS:
            raise ConfigError(f"train.class_weights: '{spec}' is not one of {', '.join(WEIGHT_METHODS)} "
                              "or a list of weights")
        counts = np.bincount(np.asarray(train.labels, dtype=np.int64), minlength=num_classes)
        return torch.tensor(class_weights_from_counts(counts.tolist(), spec), dtype=torch.float32)
    if not isinstance(spec, (list, tuple)) or len(spec) != num_classes:
        raise ConfigError(f"train.class_weights: expected {num_classes} weights, got {spec!r}")
    return torch.tensor([float(w) for w in spec], dtype=torch.float32)
