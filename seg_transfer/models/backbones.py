"""Backbones: name -> builder returning a ``Backbone`` whose forward gives named stage features.

Every backbone has the stages ``stem, layer1, layer2, layer3, layer4`` (the names freezing refers
to); ``layer1..layer4`` are returned, at strides 4, 8, 16, 32 unless dilated.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Optional

import torch
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter

from ..errors import ConfigError
from . import weights as W
from .preprocess import Preprocess

STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")
OUT_STAGES = STAGES[1:]


class Backbone(nn.Module):
    """Named stages run in order; ``out_channels``/``strides`` per returned stage are measured, not typed."""

    def __init__(self, stages: "OrderedDict[str, nn.Module]", preprocess: Preprocess,
                 out_stages: tuple[str, ...] = OUT_STAGES) -> None:
        super().__init__()
        self.stage_names = list(stages)
        self.body = IntermediateLayerGetter(nn.Sequential(stages), {s: s for s in out_stages})
        self.preprocess = preprocess
        self.out_channels, self.strides = self._probe(out_stages)

    @torch.no_grad()
    def _probe(self, out_stages: tuple[str, ...]) -> tuple[dict[str, int], dict[str, int]]:
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

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return self.body(x)


BackboneBuilder = Callable[..., Backbone]
BACKBONES: dict[str, BackboneBuilder] = {}


def register(name: str) -> Callable[[BackboneBuilder], BackboneBuilder]:
    def wrap(fn: BackboneBuilder) -> BackboneBuilder:
        if name in BACKBONES:
            raise ValueError(f"backbone {name!r} registered twice")
        BACKBONES[name] = fn
        return fn
    return wrap


def _preprocess(tv_name: str, resolved: W.Resolved, resize: Optional[int]) -> Preprocess:
    # Random or local weights normalise like the family's DEFAULT weights, so that a model
    # started from random values and one started from ImageNet see inputs the same way.
    enum = resolved if isinstance(resolved, W.WeightsEnum) else W.weights_enum(tv_name).DEFAULT
    return Preprocess.from_transforms(enum.transforms(), resize_size=resize)


def _check_stride(name: str, output_stride: Optional[int], allowed: tuple[int, ...]) -> int:
    output_stride = output_stride or 32
    if output_stride not in allowed:
        raise ConfigError(f"model.output_stride: {name} supports {', '.join(map(str, allowed))}, "
                          f"got {output_stride}")
    return output_stride


def _resnet(tv_name: str, strides: tuple[int, ...] = (8, 16, 32)) -> BackboneBuilder:
    def build(weights: W.Spec = "DEFAULT", output_stride: Optional[int] = None,
              resize: Optional[int] = 520, key: str = "backbone_weights") -> Backbone:
        os_ = _check_stride(tv_name, output_stride, strides)
        # DeepLab's dilation: keep resolution in the last stages instead of striding.
        dilation = [False, os_ <= 8, os_ <= 16]
        net, resolved = W.build_torchvision(tv_name, weights, key, replace_stride_with_dilation=dilation)
        stem = nn.Sequential(OrderedDict(conv1=net.conv1, bn1=net.bn1, relu=net.relu, maxpool=net.maxpool))
        stages = OrderedDict(stem=stem, layer1=net.layer1, layer2=net.layer2,
                             layer3=net.layer3, layer4=net.layer4)
        return Backbone(stages, _preprocess(tv_name, resolved, resize))
    build.__doc__ = f"torchvision {tv_name}; output stride {', '.join(map(str, strides))} (dilated like DeepLab)."
    return build


def _sliced(tv_name: str, bounds: tuple[int, ...], strides: tuple[int, ...] = (32,),
            tv_kwargs: Optional[Callable[[int], dict]] = None) -> BackboneBuilder:
    """Backbones whose ``features`` Sequential is cut at ``bounds`` into stem, layer1..layer4."""
    def build(weights: W.Spec = "DEFAULT", output_stride: Optional[int] = None,
              resize: Optional[int] = 520, key: str = "backbone_weights") -> Backbone:
        os_ = _check_stride(tv_name, output_stride, strides)
        net, resolved = W.build_torchvision(tv_name, weights, key, **(tv_kwargs(os_) if tv_kwargs else {}))
        cuts = (0, *bounds, len(net.features))
        stages = OrderedDict((name, net.features[a:b]) for name, a, b in zip(STAGES, cuts, cuts[1:]))
        return Backbone(stages, _preprocess(tv_name, resolved, resize))
    build.__doc__ = f"torchvision {tv_name}, features cut at {bounds}."
    return build


# torchvision's BasicBlock cannot dilate, so ResNet-18 only runs at output stride 32.
register("resnet18")(_resnet("resnet18", strides=(32,)))
register("resnet50")(_resnet("resnet50"))
# VGG16: each stage ends at a max-pool, so layer1..layer4 sit at strides 4..32.
register("vgg16")(_sliced("vgg16", (5, 10, 17, 24)))
# MobileNets: cut where the resolution halves; layer3 ends where torchvision's
# LR-ASPP/DeepLab take their stride-16 features.
# Where stem, layer1..layer4 start in MobileNetV3-Large's `features` (torchvision's zoo models cut there too).
MOBILENET_V3_BOUNDS = (2, 4, 7, 13)
register("mobilenet_v2")(_sliced("mobilenet_v2", (2, 4, 7, 14)))
register("mobilenet_v3_large")(_sliced("mobilenet_v3_large", MOBILENET_V3_BOUNDS, strides=(16, 32),
                                       tv_kwargs=lambda os_: {"dilated": os_ == 16}))
