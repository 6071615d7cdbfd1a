"""A backbone from another seg_transfer checkpoint, of any task (a CamVid segmentation model's backbone
into a detector, a detector's into a classifier...), matched stage by stage rather than by name.

Tensor names differ between tasks (``backbone.0.block...`` in torchvision's LR-ASPP,
``backbone.body.0.block...`` in its Faster R-CNN, ``backbone.features.0.0...`` in SSDlite,
``backbone.body.layer1...`` in assembled models), but both models split into the same stages
``stem, layer1..layer4`` (``models/stages.py``). The layers holding tensors inside those stages
are paired in order; a pair's tensors load where their shapes agree and are reported otherwise.
Pairing stops where the two layer sequences stop looking alike (a different kind of layer, or a conv
of another kernel size): that is where the architectures diverge.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Union, cast

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.ops import FrozenBatchNorm2d

from ..models.build import model_info
from ..models.checkpoint import PRETRAIN_KEY, read_checkpoint, rebuild
from ..models.stages import stage_modules
from .loading import TransferReport, parts_of_names


class _Layer:
    """One module with tensors of its own, inside a backbone stage."""

    def __init__(self, stage: str, name: str, module: nn.Module) -> None:
        self.stage, self.name, self.module = stage, name, module
        self.tensors = OrderedDict([*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)])

    @property
    def kind(self) -> str:
        # Pretrained torchvision detectors freeze BatchNorm as FrozenBatchNorm2d: the same statistics.
        return "norm" if isinstance(self.module, (_BatchNorm, FrozenBatchNorm2d)) else type(self.module).__name__

    def full(self, tensor: str) -> str:
        return f"{self.name}.{tensor}" if self.name else tensor

    def alike(self, other: _Layer) -> bool:
        if self.kind != other.kind:
            return False
        if isinstance(self.module, nn.Conv2d):
            theirs = cast(nn.Conv2d, other.module)  # the same kind: a Conv2d too
            return (self.module.kernel_size, self.module.groups > 1) == (theirs.kernel_size, theirs.groups > 1)
        return True


def stage_layers(model: nn.Module) -> list[_Layer]:
    """The modules holding tensors in the backbone's stages, in forward order, with their names in ``model``."""
    names: dict[int, str] = {}
    for name, module in model.named_modules():
        names.setdefault(id(module), name)
    layers, seen = [], set()
    for stage, root in stage_modules(model).items():
        for module in root.modules():
            if id(module) in seen:
                continue
            seen.add(id(module))
            layer = _Layer(stage, names.get(id(module), ""), module)
            if layer.tensors:
                layers.append(layer)
    return layers


@torch.no_grad()
def load_backbone(model: nn.Module, source: nn.Module, description: str = "") -> TransferReport:
    """Load ``source``'s backbone stages into ``model``'s; the report names ``model``'s tensors
    (loaded, skipped with both shapes, missing) and ``source``'s left over (unexpected)."""
    ours, theirs = stage_layers(model), stage_layers(source)
    report = TransferReport(source=description)
    n = 0
    while n < min(len(ours), len(theirs)) and ours[n].alike(theirs[n]):
        dst, src = ours[n], theirs[n]
        for key, tensor in dst.tensors.items():
            value = src.tensors.get(key)
            if value is None:
                report.missing.append(dst.full(key))
            elif value.shape != tensor.shape:
                report.skipped.append((dst.full(key), tuple(value.shape), tuple(tensor.shape)))
            else:
                tensor.copy_(value)
                report.loaded.append(dst.full(key))
        report.unexpected += [src.full(k) for k in src.tensors if k not in dst.tensors]
        n += 1
    report.missing += [layer.full(k) for layer in ours[n:] for k in layer.tensors]
    report.unexpected += [layer.full(k) for layer in theirs[n:] for k in layer.tensors]
    report.parts = parts_of_names(model, [*report.loaded, *report.missing, *(s[0] for s in report.skipped)])
    stage_of = {layer.full(k): layer.stage for layer in theirs for k in layer.tensors}
    report.parts.update({name: stage_of[name] for name in report.unexpected if name not in report.parts})
    return report


def built_backbone_report(model: nn.Module, description: str) -> TransferReport:
    """The report of a backbone whose pretrained weights its library loaded when the model was built
    (torchvision's and timm's loads are strict: every tensor of the network's stages came from the file).
    A plain ViT's pyramid is new: its tensors are reported missing (freshly initialised)."""
    pyramid = getattr(model.backbone, "pyramid", None)
    new = {id(t) for t in pyramid.state_dict(keep_vars=True).values()} if isinstance(pyramid, nn.Module) else set()
    report = TransferReport(source=description)
    for layer in stage_layers(model):
        for key, tensor in layer.tensors.items():
            (report.missing if id(tensor) in new else report.loaded).append(layer.full(key))
    report.parts = parts_of_names(model, [*report.loaded, *report.missing])
    return report


def load_backbone_checkpoint(model: nn.Module, path: Union[str, os.PathLike]) -> TransferReport:
    """``load_backbone`` from a seg_transfer checkpoint of any task (rebuilt from its own config); the
    report's source says where that backbone came from (a fine-tune, or ``seg-transfer pretrain``)."""
    ckpt = read_checkpoint(path)
    source = rebuild(ckpt, path)
    info = model_info(source)
    cfg = info.config
    pretrain = ckpt.get(PRETRAIN_KEY)
    if pretrain:
        return load_backbone(model, source, f"{cfg.get('backbone')} backbone of {Path(path)}: self-supervised "
                             f"pretraining ({pretrain['method']}, {pretrain['epochs']} epochs, "
                             f"{pretrain['images']} images)")
    arch = cfg.get("name") or f"{cfg.get('backbone')}+{cfg.get('neck')}+{cfg.get('head')}"
    return load_backbone(model, source, f"backbone stages of {Path(path)} ({info.task}, {arch})")
