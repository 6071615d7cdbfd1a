"""The contract between the engine and a task (segmentation, detection, classification).

The Trainer owns everything shared: seeding, freezing, the transfer report, the optimizer and schedule,
AMP, accumulation, clipping, checkpoints, resume, early stopping, rank-0-only I/O and the sampler. A task
owns what differs: transforms and collate, how a batch becomes a loss, how predictions become metrics,
and the plots of its predictions. Tasks never touch the optimizer, the file system layout or ranks.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from ...config import AugmentConfig
from ..metrics.base import Meter


@dataclass
class BatchRecipe:
    """A task's built-in train augmentation on a batch: ``augment(canvas, generator) -> (inputs, targets)``
    on the canvas's device, from images cached at ``shorter`` side (None: as decoded)."""

    augment: Callable[..., tuple[Any, Any]]
    shorter: Optional[int] = None


class Task:
    """One task's side of the engine; subclasses set the class attributes and implement the methods."""

    name: str = ""
    main_metric: str = ""   # key of ``compute()``, higher is better: picks best.pt, drives early stopping
    metric_label: str = ""  # how logs name it ("mIoU", "AP", "accuracy")
    fields: tuple[str, ...] = ()  # metrics.csv columns after epoch/train_loss/val_loss (lr/seconds follow)
    image_score: str = ""   # what the meter's per-image score is ("image mIoU"...): titles of the best/worst grid
    # what sets the train crop instead, for a task that does not read ``augment.crop_size`` (None: it reads it)
    crop_size_instead: Optional[str] = None
    # self-training (``selftrain:``): what a pseudo-label is given to ("pixels", "images"); None: not supported
    pseudo_unit: Optional[str] = None

    collate: Callable[[list[Any]], tuple[Any, Any]]

    def transforms(self, augment: Any, preprocess: Any) -> tuple[Callable, Callable]:
        """(train, val) transforms from the ``augment:`` block and the model's preprocessing."""
        raise NotImplementedError

    def batch_recipe(self, augment: Any, preprocess: Any) -> Optional[BatchRecipe]:
        """The built-in train recipe as one call on a whole batch (``data.device_augment``), or None when the
        config names its own ``augment.train`` steps (they run in albumentations, one image at a time)."""
        return None

    def ignored_settings(self, augment: Any) -> list[str]:
        """One-line warnings for ``augment:`` keys the config sets and this task does not read: the config
        loads before the model names its task, so the Trainer logs these at start. ``crop_size`` at its
        default says nothing (every task's config carries it)."""
        if self.crop_size_instead is None or augment.crop_size == AugmentConfig.crop_size:
            return []
        return [f"warning: augment.crop_size: {augment.crop_size} is not used by {self.name}: {self.crop_size_instead}"]

    def to_device(self, targets: Any, device: torch.device) -> Any:
        return targets.to(device)

    def train_loss(self, model: nn.Module, inputs: Any, targets: Any, cached: bool) -> torch.Tensor:
        """The scalar loss of one training batch (model in train mode)."""
        raise NotImplementedError

    def class_logits(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        """Per-class logits of a batch of images, N x C (an image's) or N x C x H x W (a pixel's), as
        self-training's pseudo-labels and its loss read them (``pseudo_unit`` tasks only)."""
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

    def per_class(self, metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
        """The per-class figures of one evaluation: class name -> {metric: value}, in class order."""
        return {}

    def plot_predictions(self, model: nn.Module, dataset: Any, n: int, device: torch.device, path: Path,
                         indices: Optional[Sequence[int]] = None, titles: Optional[Sequence[str]] = None) -> None:
        """predictions.png: ``n`` val items (or items ``indices``, each row titled by ``titles``) with
        ground truth and prediction."""

    def plot_best_worst(self, model: nn.Module, dataset: Any, scores: Sequence[float], k: int,
                        device: torch.device, path: Path) -> Optional[Path]:
        """The ``k`` best and ``k`` worst items of ``dataset`` by their per-image ``scores`` (a meter's
        ``image_scores``, in dataset order) in one prediction grid; None when there are no scores."""
        if not scores or k < 1 or len(scores) != len(dataset):
            return None
        order = sorted(range(len(scores)), key=lambda i: (scores[i], i))
        best = order[::-1][:k]
        worst = [i for i in order[:k] if i not in best]
        names = getattr(dataset, "names", None)

        def title(kind: str, rank: int, i: int) -> str:
            name = str(names[i]) if isinstance(names, list) and i < len(names) else ""
            if len(name) > 32:  # a grid column is narrow: the end of a long relative path names the file
                name = "..." + name[-29:]
            return f"{kind} {rank + 1} ({self.image_score} {scores[i]:.3f})" + (f"\n{name}" if name else "")
        titles = [title("best", r, i) for r, i in enumerate(best)] + [title("worst", r, i) for r, i in enumerate(worst)]
        self.plot_predictions(model, dataset, len(best) + len(worst), device, path, indices=best + worst, titles=titles)
        return path

    def write_report(self, metrics: dict[str, Any], meter: Meter, out_dir: Path) -> dict[str, Any]:
        """Extra evaluation outputs (the run folder at each best epoch, ``seg-transfer evaluate``'s folder):
        files in ``out_dir`` (confusion.png...); returns JSON-able additions to the report, with "files"."""
        return {}
