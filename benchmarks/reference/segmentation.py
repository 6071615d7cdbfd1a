"""The segmentation reference: ``references/segmentation`` (presets + ``train.py``), written out.

The config's torchvision zoo model (``model.name``) from its weights with the classifier convs re-created
for the dataset's classes (``models.segmentation.replace_classifiers``, as the engine does); SGD
(``train.momentum``, ``train.weight_decay``) over every trainable parameter at one ``train.lr``; poly LR
(power 0.9) per iteration; random resize of the shorter side to 0.5-2.0x the base size (``model.resize``,
else the weights' own, else the image's), horizontal flip, pad (image 0, mask ignore) and random crop
(``augment.crop_size``); plain cross-entropy with the ignore index (+ ``train.aux_weight`` x the aux
head's, when the model has one), no class weights; every BatchNorm trains. Val images are resized to the
base size and scored by the engine's own confusion matrix. From the config it takes the data, model, crop,
batch, LR, momentum, weight decay, epochs, seed, workers, device and AMP; it ignores freezing, class
weights, warmup, precise BN, the backbone LR multiplier, the optimizer and scheduler names and the augment
lists.
"""
from __future__ import annotations

import contextlib
import random
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms.functional as TF
from torch import nn

from seg_transfer.config import Config
from seg_transfer.data.registry import build_dataset
from seg_transfer.engine.cv import Outcome
from seg_transfer.engine.evaluate import to_device
from seg_transfer.engine.metrics import ConfusionMatrix
from seg_transfer.engine.optim import autocast_settings, grad_scaler
from seg_transfer.engine.trainer import limit_train
from seg_transfer.errors import ConfigError
from seg_transfer.io import resolve_device
from seg_transfer.models.build import task_of
from seg_transfer.models.segmentation import replace_classifiers

from .common import Epoch, Items, finish, loader, seed_all, zoo_weights

POLY_POWER = 0.9


# ------------------------------------------------------------------------------------- presets
def resize_pair(image: torch.Tensor, mask: torch.Tensor, short: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Shorter side to ``short``: the image bilinear (antialiased), the mask nearest."""
    h, w = image.shape[-2:]
    size = [short, max(1, round(w * short / h))] if h <= w else [max(1, round(h * short / w)), short]
    image = TF.resize(image, size, antialias=True)
    mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0].long()
    return image, mask


class TrainTransform:
    """SegmentationPresetTrain: random resize 0.5-2.0x base (None: the image's shorter side), flip, pad,
    crop, normalise."""

    def __init__(self, base: Optional[int], crop: int, mean: Sequence[float], std: Sequence[float], ignore: int) -> None:
        self.base, self.crop, self.mean, self.std, self.ignore = base, crop, list(mean), list(std), ignore

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        img, tgt = torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(mask)
        base = self.base or min(img.shape[-2:])
        img, tgt = resize_pair(img, tgt, random.randint(int(0.5 * base), int(2.0 * base)))
        if random.random() < 0.5:
            img, tgt = img.flip(-1), tgt.flip(-1)
        ph, pw = max(self.crop - img.shape[-2], 0), max(self.crop - img.shape[-1], 0)
        img = F.pad(img, (0, pw, 0, ph), value=0)
        tgt = F.pad(tgt, (0, pw, 0, ph), value=self.ignore)
        top, left = random.randint(0, img.shape[-2] - self.crop), random.randint(0, img.shape[-1] - self.crop)
        img = img[:, top:top + self.crop, left:left + self.crop]
        tgt = tgt[top:top + self.crop, left:left + self.crop]
        return TF.normalize(img.float() / 255, self.mean, self.std), tgt


class ValTransform(TrainTransform):
    """SegmentationPresetEval: shorter side to the base size (None: as it is), normalise."""

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        img, tgt = torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(mask)
        if self.base:
            img, tgt = resize_pair(img, tgt, self.base)
        return TF.normalize(img.float() / 255, self.mean, self.std), tgt


def presets(cfg: Config, weights: Any, ignore: int) -> tuple[TrainTransform, ValTransform]:
    """The train and val presets of ``cfg``: base size ``model.resize``, else the weights' resize size (as
    the engine's Preprocess); mean and std from ``weights.transforms()``."""
    preset = weights.transforms()
    size = getattr(preset, "resize_size", None)
    size = size[0] if isinstance(size, (list, tuple)) else size
    base = cfg.model.resize if cfg.model.resize is not None else size
    args = (base or None, cfg.augment.crop_size, preset.mean, preset.std, ignore)
    return TrainTransform(*args), ValTransform(*args)


# ------------------------------------------------------------------------------------------ model
def build_model(cfg: Config, num_classes: int) -> tuple[nn.Module, Any]:
    """torchvision's builder with the config's weights; classifier convs re-created for ``num_classes``.
    Returns the model and the weights enum member its presets come from."""
    name = cfg.model.name
    if not name or task_of(cfg.model) != "segmentation":
        raise ConfigError(f"reference.segmentation: model.name must be a torchvision segmentation model, got {name!r}")
    weights = zoo_weights(cfg)
    if weights is None:
        model = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=num_classes)
        return model, torchvision.models.get_model_weights(name).DEFAULT
    model = torchvision.models.get_model(name, weights=weights)
    replace_classifiers(model, len(weights.meta["categories"]), num_classes)
    return model, weights


def seg_loss(out: dict[str, torch.Tensor], mask: torch.Tensor, ignore: int, aux_weight: float) -> torch.Tensor:
    loss = F.cross_entropy(out["out"].float(), mask, ignore_index=ignore)
    if "aux" in out:
        loss = loss + aux_weight * F.cross_entropy(out["aux"].float(), mask, ignore_index=ignore)
    return loss


# ------------------------------------------------------------------------------------------ the loop
def train_one_epoch(net: Callable[[torch.Tensor], dict[str, torch.Tensor]], model: nn.Module, batches: Any,
                    opt: torch.optim.Optimizer, sched: Any, device: torch.device, ignore: int, epoch: int,
                    aux_weight: float = 0.5, amp: tuple[bool, Optional[torch.dtype]] = (False, None),
                    scaler: Any = None, held: Sequence[nn.Module] = (), channels_last: bool = False) -> Epoch:
    """``train.py``'s ``train_one_epoch``: ``net`` (the model, or what a step calls instead: compiled, or a
    head on stored features) over ``batches``; ``held``: modules put back in eval after ``model.train()``
    (the BatchNorm a frozen stage keeps). Returns the epoch's record (``Epoch.end`` gives the row)."""
    model.train()
    for m in held:
        m.eval()
    record = Epoch(epoch)
    for image, mask in record.batches(batches):
        image, mask = to_device(image, device, channels_last), mask.to(device)  # images, or a dict of features
        with torch.autocast(device.type, dtype=amp[1], enabled=amp[0]) if amp[0] else contextlib.nullcontext():
            loss = seg_loss(net(image), mask, ignore, aux_weight)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        sched.step()
        record.losses.append(loss.item())
    return record


def poly_sgd(params: Any, cfg: Config, total_steps: int) -> tuple[torch.optim.Optimizer, Any]:
    """SGD at ``train.lr`` with the references' poly schedule (power 0.9) over ``total_steps`` iterations."""
    t = cfg.train
    opt = torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    total = max(1, total_steps)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda it: max(0.0, 1 - it / total) ** POLY_POWER)


@torch.inference_mode()
def score(model: nn.Module, dataset: Any, device: torch.device, num_classes: int, ignore: int,
          amp: tuple[bool, Optional[torch.dtype]] = (False, None)) -> dict[str, Any]:
    """Whole val images one at a time, one confusion matrix (the engine's): mIoU, pixel accuracy, per class."""
    matrix = ConfusionMatrix(num_classes, ignore)
    model.eval()
    with torch.autocast(device.type, dtype=amp[1], enabled=amp[0]) if amp[0] else contextlib.nullcontext():
        for i in range(len(dataset)):
            image, mask = dataset[i]
            matrix.update(model(image[None].to(device))["out"].argmax(1), mask[None].to(device))
    return matrix.compute()


# ------------------------------------------------------------------------------------------ one run
def train_and_score(cfg: Config, run_dir: Path, progress: bool = False) -> Outcome:
    """One run: train the references' way, score the val split; writes val_metrics_last.json and plain.json."""
    t = cfg.train
    seed_all(t.seed)
    device = resolve_device(None if t.device == "auto" else t.device)
    splits = limit_train(build_dataset(cfg.data), t.limit_train)  # as the engine keeps them
    ignore, classes = splits.ignore_index, list(splits.classes)
    model, weights = build_model(cfg, len(classes))
    train_t, val_t = presets(cfg, weights, ignore)
    train = Items(splits.train, train_t)
    batches = loader(train, cfg, device, drop_last=len(train) > t.batch_size)
    model.to(device)
    opt, sched = poly_sgd(model.parameters(), cfg, t.epochs * len(batches))
    amp = autocast_settings(device, t.amp)
    scaler = grad_scaler(device, t.amp)
    epochs = [train_one_epoch(model, model, batches, opt, sched, device, ignore, epoch, t.aux_weight, amp,
                              scaler).end(t.epochs, progress) for epoch in range(t.epochs)]
    metrics = score(model, Items(splits.val, val_t), device, len(classes), ignore, amp)
    return finish(metrics, classes, epochs, run_dir, "miou", "mIoU", base_size=train_t.base, crop=train_t.crop)


def albumentations_steps(crop: int) -> list[dict[str, Any]]:
    """``TrainTransform`` (base None) as the engine's ``augment.train`` steps: scale 0.5-2, pad, crop, flip."""
    return [{"name": "RandomScale", "scale_limit": [-0.5, 1.0], "p": 1.0},
            {"name": "PadIfNeeded", "min_height": crop, "min_width": crop, "border_mode": "constant"},
            {"name": "RandomCrop", "height": crop, "width": crop},
            {"name": "HorizontalFlip", "p": 0.5}]
