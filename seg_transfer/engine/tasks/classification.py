"""Image classification: cross-entropy (label smoothing, class weights), accuracy / top-k / per-class
precision, recall and F1 from a confusion matrix, and a grid of val images titled predicted vs true."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ...config import Config
from ...errors import ConfigError
from ...data.transforms import _all_steps, build_pipeline
from ...models.preprocess import Preprocess
from ..losses import WEIGHT_METHODS, class_weights_from_counts
from ..metrics import ConfusionMatrix
from .base import Meter, Task

TOP_K = 5


# ------------------------------------------------------------------------------------ transforms
def default_train_spec(crop: Optional[int]) -> list[dict[str, Any]]:
    """Random resized crop to the weights' crop size (torchvision's reference: 8-100% of the area) + h-flip."""
    steps: list[dict[str, Any]] = [{"name": "HorizontalFlip", "p": 0.5}]
    if crop:
        steps.insert(0, {"name": "RandomResizedCrop", "size": [crop, crop], "scale": [0.08, 1.0]})
    return steps


def default_val_spec(resize: Optional[int], crop: Optional[int]) -> list[dict[str, Any]]:
    """Shorter side to the weights' resize size, then the centre crop: ``weights.transforms()`` in albumentations."""
    steps: list[dict[str, Any]] = []
    if resize:
        steps.append({"name": "SmallestMaxSize", "max_size": resize, "interpolation": "area"})
    if crop:
        steps.append({"name": "CenterCrop", "height": crop, "width": crop, "pad_if_needed": True})
    return steps


class ClassTransform:
    """(uint8 HxWx3 image, int label) -> (normalised float 3xHxW tensor, int64 0-d label tensor)."""

    def __init__(self, pipeline: Any, preprocess: Preprocess) -> None:
        self.pipeline = pipeline
        # Only mean/std: resizing and cropping are the pipeline's job.
        self.normalize = dataclasses.replace(preprocess, resize_size=None, crop_size=None)

    def reseed(self, seed: int) -> None:
        """Each step its own seed (as ``SegTransform.reseed``), for the feature cache's reproducible copies."""
        steps = _all_steps(self.pipeline)
        for step, child in zip(steps, np.random.SeedSequence(seed).spawn(len(steps))):
            step.set_random_seed(int(child.generate_state(1)[0]))

    def __call__(self, image: np.ndarray, label: int) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.pipeline(image=image)["image"]
        img = torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1)
        return self.normalize(img), torch.tensor(int(label), dtype=torch.int64)


def collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*batch)
    if len({tuple(i.shape) for i in images}) != 1:
        raise ConfigError("images of different sizes in one batch: crop them to one size (the default "
                          "augment pipelines do; model.resize: 0 turns the crop off)")
    return torch.stack(images), torch.stack(labels)


# ---------------------------------------------------------------------------------------- metrics
class ClassificationMeter(Meter):
    """A confusion matrix (label rows x predicted columns) plus top-k hits."""

    def __init__(self, num_classes: int, k: int) -> None:
        self.matrix = ConfusionMatrix(num_classes, ignore_index=-100)
        self.k = k
        self.topk = torch.zeros(2, dtype=torch.int64)  # (hits, count)

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.matrix.update(outputs.argmax(1), targets)
        top = outputs.topk(self.k, dim=1).indices
        hits = (top == targets[:, None]).any(1).sum()
        self.topk = self.topk.to(targets.device) + torch.stack([hits, targets.new_tensor(len(targets))])

    def reduce(self) -> "ClassificationMeter":
        self.matrix.reduce()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.topk, op=dist.ReduceOp.SUM)
        return self

    def compute(self) -> dict[str, Any]:
        return classification_metrics(self.matrix.mat, self.topk, self.k)


def classification_metrics(mat: torch.Tensor, topk: torch.Tensor, k: int) -> dict[str, Any]:
    """accuracy, top-k accuracy, per-class precision/recall/F1 (NaN where undefined) and their macro means."""
    mat = mat.detach().to("cpu", torch.float64)
    tp, labelled, predicted = mat.diag(), mat.sum(1), mat.sum(0)
    nan = torch.full_like(tp, math.nan)
    precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), nan)
    recall = torch.where(labelled > 0, tp / labelled.clamp_min(1), nan)
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom, torch.where(labelled > 0, 0.0, nan))
    total = float(mat.sum())
    hits, count = (int(v) for v in topk.tolist())
    return {
        "accuracy": float(tp.sum()) / total if total else math.nan,
        f"top{k}": hits / count if count else math.nan,
        "macro_f1": float(f1.nanmean()),
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "support": [int(v) for v in labelled.tolist()],
    }


# ------------------------------------------------------------------------------------------ task
def classify(model: nn.Module, inputs: Any, cached: bool) -> torch.Tensor:
    """Logits of images, or of cached pooled features (the classifier layers only)."""
    if cached:
        from ..split_forward import decode
        return decode(model, inputs, ())["out"]
    out = model(inputs)
    return out.logits if hasattr(out, "logits") else out  # Inception's (logits, aux) in train mode


class ClassificationTask(Task):
    name = "classification"
    main_metric = "accuracy"
    metric_label = "accuracy"

    def __init__(self, cfg: Config, splits: Any) -> None:
        self.classes = list(splits.classes)
        t = cfg.train
        if t.loss not in ("ce", "cross_entropy"):
            raise ConfigError(f"train.loss: classification trains with cross-entropy ('ce'), got {t.loss!r}")
        if not 0.0 <= t.label_smoothing < 1.0:
            raise ConfigError(f"train.label_smoothing: expected a value in [0, 1), got {t.label_smoothing!r}")
        self.label_smoothing = t.label_smoothing
        self.weight = _class_weights(t.class_weights, splits.train, len(self.classes))
        self.k = min(TOP_K, len(self.classes))
        self.fields = ("accuracy", f"top{self.k}", "macro_f1")
        self.collate = collate

    def transforms(self, augment: Any, preprocess: Preprocess) -> tuple[ClassTransform, ClassTransform]:
        crop = preprocess.crop_size
        train = default_train_spec(crop) if augment.train is None else augment.train
        val = default_val_spec(preprocess.resize_size, crop) if augment.val is None else augment.val
        return (ClassTransform(build_pipeline(train, where="augment.train"), preprocess),
                ClassTransform(build_pipeline(val, where="augment.val"), preprocess))

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.to(logits.device)
        return F.cross_entropy(logits.float(), targets, weight=weight, label_smoothing=self.label_smoothing)

    def train_loss(self, model: nn.Module, inputs: Any, targets: torch.Tensor, cached: bool) -> torch.Tensor:
        return self.loss(classify(model, inputs, cached), targets)

    def eval_batch(self, model: nn.Module, inputs: Any, targets: torch.Tensor, cached: bool,
                   meter: Meter) -> Optional[torch.Tensor]:
        logits = classify(model, inputs, cached)
        meter.update(logits, targets)
        return self.loss(logits, targets)

    def meter(self) -> ClassificationMeter:
        return ClassificationMeter(len(self.classes), self.k)

    def summary(self, metrics: dict[str, Any]) -> str:
        return (f"acc {metrics['accuracy']:.4f}  top{self.k} {metrics[f'top{self.k}']:.4f}  "
                f"macro_f1 {metrics['macro_f1']:.4f}")

    def report_lines(self, metrics: dict[str, Any]) -> list[str]:
        lines = [self.summary(metrics), f"  {'class':<20} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}"]
        for name, p, r, f, n in zip(self.classes, metrics["precision"], metrics["recall"], metrics["f1"],
                                    metrics["support"]):
            lines.append(f"  {name:<20} {p:9.4f} {r:9.4f} {f:9.4f} {n:8d}")
        return lines

    def plot_predictions(self, model: nn.Module, dataset: Any, n: int, device: torch.device, path: Path) -> None:
        images, targets, preds = sample_predictions(model, dataset, n, device)
        plot_classifications(images, targets, preds, self.classes, path)

    def write_report(self, metrics: dict[str, Any], meter: Meter, out_dir: Path) -> dict[str, Any]:
        from ..plots import plot_confusion

        mat = meter.matrix.mat
        plot_confusion(mat.cpu().numpy(), self.classes, out_dir / "confusion.png")
        return {"confusion": mat.tolist(), "files": ["confusion.png"]}


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


# ------------------------------------------------------------------------------------------ plots
@torch.inference_mode()
def sample_predictions(model: nn.Module, dataset: Any, n: int, device: torch.device
                       ) -> tuple[list[np.ndarray], list[int], list[int]]:
    """``n`` val items spread evenly over the split (datasets list one class after another, so the first
    ``n`` would show one class) as (uint8 image, true label, predicted label)."""
    model.eval()
    norm = model.info.preprocess
    mean, std = torch.tensor(norm.mean).view(3, 1, 1), torch.tensor(norm.std).view(3, 1, 1)
    images, targets, preds = [], [], []
    for i in sorted({int(round(v)) for v in np.linspace(0, len(dataset) - 1, min(n, len(dataset)))}):
        image, label = dataset[i]
        preds.append(int(model(image[None].to(device)).argmax(1)[0]))
        images.append(((image * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy())
        targets.append(int(label))
    return images, targets, preds


def plot_classifications(images: Sequence[np.ndarray], targets: Sequence[int], preds: Sequence[int],
                         classes: Sequence[str], path: Path, columns: int = 4) -> Path:
    """predictions.png: a grid of images titled 'predicted / true', green when right, red when wrong."""
    from matplotlib.figure import Figure

    from ..plots import _save

    n = max(len(images), 1)
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(3 * cols, 3.2 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, image, true, pred in zip(axes, images, targets, preds):
        ax.imshow(image)
        ax.set_title(f"{classes[pred]} / {classes[true]}", color="green" if pred == true else "red", fontsize=10)
    fig.suptitle("predicted / true")
    return _save(fig, path)
