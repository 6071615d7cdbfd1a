"""Backbones: name -> ``BackboneSpec`` (one entry per torchvision classifier, declared family by family);
``build_backbone`` returns a ``Backbone`` whose forward gives named stage features.

Every backbone has the stages ``stem, layer1, layer2, layer3, layer4`` (cut by its entry's ``split``);
``layer1..layer4`` are returned, at strides 4, 8, 16, 32 unless dilated. A plain ViT has one stride-16
map: its entry's ``pyramid`` turns it into the four levels (``transformers.SimpleFeaturePyramid``).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Iterable, Optional, cast

import torch
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter

from ..errors import ConfigError, unknown
from . import timm_backbones
from . import weights as W
from .backbone_spec import BackboneSpec, Preset, Split, no_dilation
from .preprocess import Preprocess
from .stages import CUTS, OUT_STAGES, cut, resnet_stages
from .transformers import swin_stages, vit_pyramid, vit_stages


def features(body: nn.ModuleDict, pyramid: Optional[nn.Module], x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
    """``layer1..layer4`` of a backbone's ``body`` (an ``IntermediateLayerGetter`` over its stages), through
    its ``pyramid`` when it has one."""
    feats = body(x)
    return pyramid(feats[OUT_STAGES[-1]]) if pyramid is not None else feats


def stage_of(body: nn.ModuleDict, pyramid: Optional[nn.Module], name: str) -> nn.Module:
    """Stage ``name`` of ``body``; a pyramid's (new) layers ride with the last stage, so freezing and LR
    groups treat them as it."""
    if pyramid is not None and name == OUT_STAGES[-1]:
        return nn.ModuleList([body[name], pyramid])
    return body[name]


class Backbone(nn.Module):
    """Named stages run in order; ``out_channels``/``strides`` per returned stage are measured, not typed."""

    def __init__(self, stages: OrderedDict[str, nn.Module], preprocess: Preprocess,
                 pyramid: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.stage_names = list(stages)
        returned = OUT_STAGES[-1:] if pyramid is not None else OUT_STAGES
        self.body = IntermediateLayerGetter(nn.Sequential(stages), {s: s for s in returned})
        self.pyramid = pyramid
        self.preprocess = preprocess
        self.out_channels, self.strides = self._probe()

    @torch.no_grad()
    def _probe(self) -> tuple[dict[str, int], dict[str, int]]:
        # One tiny forward tells channels and strides for any stage split or dilation.
        size = 64
        was_training = self.training
        self.eval()
        feats = self(torch.zeros(1, 3, size, size, device=next(self.parameters()).device))
        self.train(was_training)
        return ({k: v.shape[1] for k, v in feats.items()},
                {k: size // v.shape[-1] for k, v in feats.items()})

    def stage(self, name: str) -> nn.Module:
        return stage_of(self.body, self.pyramid, name)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return features(self.body, self.pyramid, x)


# ------------------------------------------------------------------------------ stage splits
def _resnet(net: nn.Module) -> OrderedDict[str, nn.Module]:
    return resnet_stages(dict(net.named_children()))


def _features(net: nn.Module) -> nn.Sequential:
    """The ``features`` Sequential of a torchvision VGG, MobileNet, EfficientNet, ConvNeXt."""
    return cast(nn.Sequential, net.features)


def _cut_features(bounds: tuple[int, ...]) -> Split:
    """``features`` cut at ``bounds``: the blocks where the resolution halves start a stage."""
    return lambda net: cut(_features(net), bounds)


def _vgg(net: nn.Module) -> OrderedDict[str, nn.Module]:
    # A stage ends with its max-pool (VGG16: cuts 5, 10, 17, 24), with or without BatchNorm.
    pools = [i + 1 for i, m in enumerate(_features(net)) if isinstance(m, nn.MaxPool2d)]
    return cut(_features(net), pools[:4])


def _regnet(net: nn.Module) -> OrderedDict[str, nn.Module]:
    trunk = cast(nn.Module, net.trunk_output)
    return OrderedDict(stem=net.stem, **{s: getattr(trunk, f"block{i}") for i, s in enumerate(OUT_STAGES, 1)})


# ------------------------------------------------------------------------------ dilation
def _resnet_dilation(output_stride: int) -> dict[str, Any]:
    # DeepLab's dilation: keep resolution in the last stages instead of striding.
    return {"replace_stride_with_dilation": [False, output_stride <= 8, output_stride <= 16]}


def _mobilenet_v3_dilation(output_stride: int) -> dict[str, Any]:
    return {"dilated": output_stride == 16}


def family(name: str, builders: Iterable[str], split: Split, strides: tuple[int, ...] = (32,),
           dilation: Callable[[int], dict[str, Any]] = no_dilation,
           pyramid: Optional[Callable[[nn.Module], nn.Module]] = None) -> list[BackboneSpec]:
    """One entry per torchvision builder of a family that splits, dilates and preprocesses alike."""
    return [BackboneSpec(b, name, split, strides, dilation, pyramid) for b in builders]


def _registry(specs: Iterable[BackboneSpec]) -> dict[str, BackboneSpec]:
    registry: dict[str, BackboneSpec] = {}
    for spec in specs:
        if spec.tv_name in registry:
            raise ValueError(f"backbone {spec.tv_name} registered twice")
        registry[spec.tv_name] = spec
    return registry


# torchvision's BasicBlock cannot dilate (ResNet-18/34): output stride 32 only. EfficientNet, RegNet,
# ConvNeXt, Swin and ViT builders have no dilation option. RegNet-Y 128GF (644M parameters, SWAG
# weights only) is left out.
EFFICIENTNETS = [*(f"efficientnet_b{i}" for i in range(8)), "efficientnet_v2_s", "efficientnet_v2_m",
                 "efficientnet_v2_l"]
REGNETS = [f"regnet_{k}_{s}" for k in "xy" for s in ("400mf", "800mf", "1_6gf", "3_2gf", "8gf", "16gf", "32gf")]
BACKBONES: dict[str, BackboneSpec] = _registry([
    *family("ResNet", ["resnet18", "resnet34"], _resnet),
    *family("ResNet", ["resnet50", "resnet101", "resnet152"], _resnet, (8, 16, 32), _resnet_dilation),
    *family("ResNeXt", ["resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d"], _resnet, (8, 16, 32),
            _resnet_dilation),
    *family("Wide ResNet", ["wide_resnet50_2", "wide_resnet101_2"], _resnet, (8, 16, 32), _resnet_dilation),
    *family("VGG", [f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")], _vgg),
    *family("MobileNetV2", ["mobilenet_v2"], _cut_features(CUTS["mobilenet_v2"])),
    *family("MobileNetV3", ["mobilenet_v3_large"], _cut_features(CUTS["mobilenet_v3_large"]), (16, 32),
            _mobilenet_v3_dilation),
    *family("MobileNetV3", ["mobilenet_v3_small"], _cut_features((1, 2, 4, 9)), (16, 32), _mobilenet_v3_dilation),
    # B0-B7 and V2 S/M/L: features[0] is the stride-2 stem conv, features[2, 3, 4, 6] halve the resolution.
    *family("EfficientNet", EFFICIENTNETS, _cut_features((2, 3, 4, 6))),
    *family("RegNet", REGNETS, _regnet),
    # features: the stride-4 patchify stem, then (downsample +) stage pairs
    *family("ConvNeXt", ["convnext_tiny", "convnext_small", "convnext_base", "convnext_large"],
            _cut_features((1, 2, 4, 6))),
    *family("Swin", ["swin_t", "swin_s", "swin_b", "swin_v2_t", "swin_v2_s", "swin_v2_b"], swin_stages),
    *family("ViT", ["vit_b_16"], vit_stages, pyramid=vit_pyramid),
])


# Backbones of other libraries, ``<provider>/<name>``, resolved to a ``BackboneSpec`` when first named (timm
# has about 1,300 architectures: they are not listed one by one, and the library itself is optional).
PROVIDERS: dict[str, Callable[[str], BackboneSpec]] = {"timm": timm_backbones.timm_spec}


def spec_of(name: str) -> BackboneSpec:
    """The registry entry of backbone ``name`` (or a provider's, for ``<provider>/<name>``); an unknown
    name fails with the valid ones."""
    provider, slash, _ = name.partition("/")
    if slash and provider in PROVIDERS:
        return PROVIDERS[provider](name)
    if name not in BACKBONES:
        raise unknown("backbone", name, [*BACKBONES, *(f"{p}/<name>" for p in PROVIDERS)], "model.backbone")
    return BACKBONES[name]


def check_stride(name: str, output_stride: Optional[int]) -> int:
    """``output_stride`` (default 32) if backbone ``name`` supports it, else one line saying what it can do."""
    spec = spec_of(name)
    stride = output_stride or 32
    if stride not in spec.strides:
        only = "only " if len(spec.strides) == 1 else ""
        raise ConfigError(f"model.output_stride: {name} ({spec.family}) supports {only}"
                          f"{', '.join(map(str, spec.strides))}, got {stride}"
                          + ("" if spec.strides != (32,) else f"; {spec.family} cannot dilate"))
    return stride


def build_backbone(name: str, weights: W.Spec = "DEFAULT", output_stride: Optional[int] = None,
                   resize: Optional[int] = 520, key: str = "backbone_weights") -> Backbone:
    """Registered backbone ``name`` with ``weights``; preprocessing from the weights (or, for random or
    local weights, from the family's DEFAULT weights), shorter side ``resize``."""
    spec = spec_of(name)
    stride = check_stride(name, output_stride)
    net = spec.source.build(name, weights, key, **spec.dilation(stride))
    pyramid = spec.pyramid(net) if spec.pyramid is not None else None
    preprocess = Preprocess.from_transforms(backbone_transforms(name, weights), resize_size=resize)
    return Backbone(spec.split(net), preprocess, pyramid)


def backbone_transforms(name: str, weights: W.Spec) -> Preset:
    """The preprocessing preset of backbone ``name`` with ``weights`` (its library's, never typed here)."""
    return spec_of(name).source.transforms(name, weights)
