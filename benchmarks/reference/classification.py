"""The classification reference: PyTorch's transfer-learning tutorial ("finetuning the ConvNet").

The zoo model from its weights with the last Linear re-created; RandomResizedCrop to the weights' crop
size + horizontal flip; val through ``weights.transforms()``; SGD over every parameter; StepLR (7 epochs,
x0.1); plain cross-entropy. Takes the config's data, model, batch, LR, momentum, weight decay, epochs,
seed, workers and device; scored by the engine's ClassificationMeter.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms.functional as TF
from torch import nn

from seg_transfer.config import Config
from seg_transfer.data.registry import build_dataset
from seg_transfer.engine.cv import Outcome
from seg_transfer.engine.metrics import ClassificationMeter
from seg_transfer.engine.trainer import limit_train
from seg_transfer.io import resolve_device

from .common import Epoch, Items, finish, loader, seed_all, zoo_weights


class TrainTransform:
    """The tutorial's train transform: RandomResizedCrop(crop) + flip, normalised as the weights say."""

    def __init__(self, crop: int, mean: list[float], std: list[float]) -> None:
        self.crop, self.mean, self.std = crop, mean, std

    def __call__(self, image: np.ndarray, label: int) -> tuple[torch.Tensor, int]:
        img = torch.from_numpy(image).permute(2, 0, 1)
        img = torchvision.transforms.RandomResizedCrop(self.crop, antialias=True)(img)
        if random.random() < 0.5:
            img = img.flip(-1)
        return TF.normalize(img.float() / 255, self.mean, self.std), label


class ValTransform:
    """``weights.transforms()`` as it is (resize, centre crop, normalise)."""

    def __init__(self, preset: Any) -> None:
        self.preset = preset

    def __call__(self, image: np.ndarray, label: int) -> tuple[torch.Tensor, int]:
        return self.preset(torch.from_numpy(image).permute(2, 0, 1)), label


def build_model(cfg: Config, num_classes: int) -> tuple[nn.Module, Any]:
    """The zoo classifier with its last Linear re-created for ``num_classes``; its presets' weights."""
    weights = zoo_weights(cfg)
    model = torchvision.models.get_model(cfg.model.name, weights=weights)
    parent, name, head = next((parent, name, child) for parent in reversed(list(model.modules()))
                              for name, child in parent.named_children() if isinstance(child, nn.Linear))
    setattr(parent, name, nn.Linear(head.in_features, num_classes))
    return model, weights or torchvision.models.get_model_weights(cfg.model.name).DEFAULT


def train_and_score(cfg: Config, run_dir: Path, progress: bool = False) -> Outcome:
    """One run of the tutorial's recipe; the engine's ClassificationMeter scores it."""
    t = cfg.train
    seed_all(t.seed)
    device = resolve_device(None if t.device == "auto" else t.device)
    splits = limit_train(build_dataset(cfg.data), t.limit_train)  # as the engine keeps them
    classes = list(splits.classes)
    model, weights = build_model(cfg, len(classes))
    preset = weights.transforms()
    crop = preset.crop_size[0] if isinstance(preset.crop_size, (list, tuple)) else preset.crop_size
    batches = loader(Items(splits.train, TrainTransform(crop, list(preset.mean), list(preset.std))), cfg, device)
    model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.1)
    epochs = []
    for epoch in range(t.epochs):
        model.train()
        record = Epoch(epoch)
        for image, label in record.batches(batches):
            loss = F.cross_entropy(model(image.to(device)), label.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            record.losses.append(loss.item())
        sched.step()
        epochs.append(record.end(t.epochs, progress))
    meter = ClassificationMeter(len(classes), min(5, len(classes)))
    val = torch.utils.data.DataLoader(Items(splits.val, ValTransform(preset)), batch_size=t.val_batch_size)
    model.eval()
    with torch.inference_mode():
        for image, label in val:
            meter.update(model(image.to(device)), label.to(device))
    return finish(meter.compute(), classes, epochs, run_dir, "accuracy", "accuracy")
