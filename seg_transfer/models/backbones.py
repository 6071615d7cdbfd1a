"""Backbones: name -> ``BackboneSpec``; ``build_backbone`` returns a ``Backbone`` whose forward gives
named stage features.

Every backbone has the stages ``stem, layer1, layer2, layer3, layer4`` (cut where ``stages.py`` says);
``layer1..layer4`` are returned, at strides 4, 8, 16, 32 unless dilated.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter

from ..errors import ConfigError, unknown
from . import weights as W
from .preprocess import Preprocess
from .stages import OUT_STAGES, STAGE_SPLITS


class Backbone(nn.Module):
    """Named stages run in order; ``out_channels``/``strides`` per returned stage are measured, not typed."""

    def __init__(self, stages: OrderedDict[str, nn.Module], preprocess: Preprocess,
                 out_stages: tuple[str, ...] = OUT_STAGES) -> None:
        super().__init__()
        self.stage_names = list(stages)
        self.body = IntermediateLayerGetter(nn.Sequential(stages), {s: s for s in out_stages})
        self.preprocess = preprocess
        self.out_channels, self.strides = self._probe()

    @torch.no_grad()
    def _probe(self) -> tuple[dict[str, int], dict[str, int]]:
        # One tiny forward tells channels and strides for any stage split or dilation.
        size = 64
        was_training = self.training
        self.eval()
        feats = self.body(torch.zeros(1, 3, size, size))
        self.train(was_training)
        return ({k: v.shape[1] for k, v in feats.items()},
                {k: size // v.shape[-1] for k, v in feats.items()})

    def stage(self, name: str) -> nn.Module:
        return self.body[name]

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.body(x)


def _no_dilation(output_stride: int) -> dict[str, Any]:
    return {}


def _resnet_dilation(output_stride: int) -> dict[str, Any]:
    # DeepLab's dilation: keep resolution in the last stages instead of striding.
    return {"replace_stride_with_dilation": [False, output_stride <= 8, output_stride <= 16]}


def _mobilenet_v3_dilation(output_stride: int) -> dict[str, Any]:
    return {"dilated": output_stride == 16}


@dataclass(frozen=True)
class BackboneSpec:
    """A torchvision classifier used as a backbone: the output strides it supports, and the builder
    keyword arguments that give one (dilation)."""

    tv_name: str
    strides: tuple[int, ...] = (32,)
    dilation: Callable[[int], dict[str, Any]] = _no_dilation


BACKBONES: dict[str, BackboneSpec] = {spec.tv_name: spec for spec in (
    BackboneSpec("resnet18"),  # torchvision's BasicBlock cannot dilate: output stride 32 only
    BackboneSpec("resnet50", (8, 16, 32), _resnet_dilation),
    BackboneSpec("vgg16"),
    BackboneSpec("mobilenet_v2"),
    BackboneSpec("mobilenet_v3_large", (16, 32), _mobilenet_v3_dilation),
)}


def build_backbone(name: str, weights: W.Spec = "DEFAULT", output_stride: Optional[int] = None,
                   resize: Optional[int] = 520, key: str = "backbone_weights") -> Backbone:
    """Registered backbone ``name`` with ``weights``; preprocessing from the weights (or, for random or
    local weights, from the family's DEFAULT weights), shorter side ``resize``."""
    if name not in BACKBONES:
        raise unknown("backbone", name, BACKBONES, "model.backbone")
    spec = BACKBONES[name]
    stride = output_stride or 32
    if stride not in spec.strides:
        raise ConfigError(f"model.output_stride: {name} supports {', '.join(map(str, spec.strides))}, "
                          f"got {stride}")
    net, resolved = W.build_torchvision(name, weights, key, **spec.dilation(stride))
    transforms = W.enum_or_default(name, resolved).transforms()
    return Backbone(STAGE_SPLITS[name](net), Preprocess.from_transforms(transforms, resize_size=resize))
