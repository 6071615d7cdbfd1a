"""The detection reference: torchvision's detection fine-tuning tutorial / ``references/detection``.

Faster R-CNN from its weights with a new ``FastRCNNPredictor``; horizontal flip; SGD over every trainable
parameter with the references' linear warmup (first epoch, up to 1000 iterations, from 0.001x) and LR
x0.1 at 16/26 and 22/26 of the epochs (their 26-epoch schedule, scaled); the summed loss dict. Takes the
config's data, model, batch, LR, momentum, weight decay, epochs, seed, workers and device; scored by the
engine's CocoMeter.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

from seg_transfer.config import Config
from seg_transfer.data.detection import detection_collate
from seg_transfer.data.registry import build_dataset
from seg_transfer.engine.cv import Outcome
from seg_transfer.engine.metrics import CocoMeter
from seg_transfer.engine.trainer import limit_train
from seg_transfer.errors import ConfigError
from seg_transfer.io import resolve_device

from .common import Epoch, Items, finish, loader, seed_all, zoo_weights


def to_tensors(image: np.ndarray, target: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    img = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    return img, {"boxes": torch.as_tensor(np.asarray(target["boxes"], np.float32)).reshape(-1, 4),
                 "labels": torch.as_tensor(np.asarray(target["labels"], np.int64))}


def flip(image: np.ndarray, target: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The tutorial's train transform: a horizontal flip half the time, boxes with it."""
    img, tgt = to_tensors(image, target)
    if random.random() < 0.5:
        img, width = img.flip(-1), img.shape[-1]
        tgt["boxes"] = torch.stack([width - tgt["boxes"][:, 2], tgt["boxes"][:, 1],
                                    width - tgt["boxes"][:, 0], tgt["boxes"][:, 3]], 1)
    return img, tgt


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    """The zoo Faster R-CNN with a new box predictor for ``num_classes`` (background included)."""
    model = torchvision.models.get_model(cfg.model.name, weights=zoo_weights(cfg))
    if not hasattr(model, "roi_heads"):
        raise ConfigError(f"reference.detection: runs Faster R-CNN models, got {cfg.model.name!r}")
    box = model.roi_heads.box_predictor
    model.roi_heads.box_predictor = FastRCNNPredictor(box.cls_score.in_features, num_classes)
    return model


def train_and_score(cfg: Config, run_dir: Path, progress: bool = False) -> Outcome:
    """One run of the tutorial's recipe; the engine's CocoMeter scores it."""
    t = cfg.train
    seed_all(t.seed)
    device = resolve_device(None if t.device == "auto" else t.device)
    splits = limit_train(build_dataset(cfg.data), t.limit_train)  # as the engine keeps them
    classes = list(splits.classes)  # __background__ first, as torchvision's detectors
    model = build_model(cfg, len(classes)).to(device)
    batches = loader(Items(splits.train, flip), cfg, device, collate_fn=detection_collate)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=t.lr, momentum=t.momentum,
                          weight_decay=t.weight_decay)
    milestones = sorted({round(t.epochs * 16 / 26), round(t.epochs * 22 / 26)} - {0})
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
    epochs = []
    for epoch in range(t.epochs):
        model.train()
        warm = min(1000, len(batches) - 1) if epoch == 0 else 0
        warmup = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.001, total_iters=warm) if warm else None
        record = Epoch(epoch)
        for images, targets in record.batches(batches):
            loss_dict = model([i.to(device) for i in images], [{k: v.to(device) for k, v in tg.items()} for tg in targets])
            loss = sum(loss_dict.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if warmup is not None:
                warmup.step()
            record.losses.append(loss.item())
        sched.step()
        epochs.append(record.end(t.epochs, progress))
    meter = CocoMeter(len(classes))
    val = torch.utils.data.DataLoader(Items(splits.val, to_tensors), batch_size=t.val_batch_size,
                                      collate_fn=detection_collate)
    model.eval()
    with torch.inference_mode():
        for images, targets in val:
            meter.update(model([i.to(device) for i in images]), targets)
    return finish(meter.compute(), classes, epochs, run_dir, "ap", "AP")
