"""The one stage map: how every backbone splits into ``stem, layer1..layer4``.

Freezing (``freeze.stages: 2``), gradual unfreezing, LR groups, the feature cache and cross-task
backbone transfer all name these stages, so they must mean the same layers in an assembled backbone,
a torchvision zoo model (segmenter, classifier, detector) and an SSD feature extractor. The cuts shared
by backbones and zoo models are written here once; each backbone's split is its registry entry
(``backbones.BACKBONES``); every other module asks ``stage_modules``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Iterable, Mapping, Optional, Protocol, Sequence, cast

from torch import nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.ssd import SSDFeatureExtractorVGG
from torchvision.models.detection.ssdlite import SSDLiteFeatureExtractorMobileNet

from ..errors import ConfigError, suggest

STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")
OUT_STAGES = STAGES[1:]
RESNET_STEM = ("conv1", "bn1", "relu", "maxpool")
# Where layer1..layer4 start in torchvision's ``features`` Sequential: where the resolution halves
# (VGG16: after each max-pool). MobileNetV3's layer3 ends where torchvision's LR-ASPP/DeepLab take
# their stride-16 features, and its zoo segmenters and SSDlite are cut at the same indices.
CUTS: dict[str, tuple[int, ...]] = {
    "vgg16": (5, 10, 17, 24),
    "mobilenet_v2": (2, 4, 7, 14),
    "mobilenet_v3_large": (2, 4, 7, 13),
}
# Inception v3's stages are its own layer names (Keras' mixed0..mixed10 are Mixed_5b..Mixed_7c); the
# parameter-free max-pools ride with the conv before them.
INCEPTION_STAGES = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                    "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                    "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c")
INCEPTION_TAIL = {"Conv2d_2b_3x3": "maxpool1", "Conv2d_4a_3x3": "maxpool2"}


class StagedBackbone(Protocol):
    """A backbone built here (``Backbone``, ``StageView``, ``DetectorBackbone``): it lists its own stages."""

    stage_names: list[str]

    def stage(self, name: str) -> nn.Module: ...


def resnet_stages(children: Mapping[str, nn.Module]) -> OrderedDict[str, nn.Module]:
    """A ResNet's named children as ``stem`` (conv1, bn1, relu, maxpool) and ``layer1..layer4``."""
    stem = nn.Sequential(OrderedDict((k, children[k]) for k in RESNET_STEM if k in children))
    return OrderedDict(stem=stem, **{k: children[k] for k in OUT_STAGES})


def cut(layers: nn.Sequential, bounds: Sequence[int]) -> OrderedDict[str, nn.Module]:
    """``layers`` sliced at ``bounds`` into consecutive stages (slices keep the layers' own names)."""
    cuts = (0, *bounds, len(layers))
    return OrderedDict((name, layers[a:b]) for name, a, b in zip(STAGES, cuts, cuts[1:]))


def inception_stages(net: nn.Module) -> OrderedDict[str, nn.Module]:
    return OrderedDict((name, nn.Sequential(getattr(net, name), getattr(net, INCEPTION_TAIL[name]))
                        if name in INCEPTION_TAIL else getattr(net, name)) for name in INCEPTION_STAGES)


def ssd_stages(backbone: nn.Module) -> Optional[OrderedDict[str, nn.Module]]:
    """``stem, layer1..layer4`` of torchvision's SSD feature extractors (views over their modules), else
    None. The layers torchvision adds (SSD's extra maps and L2 scale, SSDlite's extra blocks) are in no
    stage: they are the detector's neck."""
    if isinstance(backbone, SSDFeatureExtractorVGG):
        # `features` is VGG16 up to conv4_3; conv5 (+ fc6/fc7) is extra[0].
        layers, bounds, last = backbone.features, CUTS["vgg16"][:3], backbone.extra[0]
    elif isinstance(backbone, SSDLiteFeatureExtractorMobileNet):
        # features[0]: MobileNetV3 up to the C4 block's expansion; features[1]: the rest of the network.
        layers, bounds, last = backbone.features[0], CUTS["mobilenet_v3_large"][:3], backbone.features[1]
    else:
        return None
    stages = cut(layers, bounds)
    stages["layer4"] = last
    return stages


def stage_modules(model: nn.Module) -> OrderedDict[str, nn.Module]:
    """The backbone's stages in order, ``stem, layer1..layer4`` (Inception: its own layer names), for
    assembled and zoo models of every task.

    Backbones built here (``Backbone``, a zoo classifier's ``StageView``, ``DetectorBackbone``) list
    their stages themselves; for torchvision's own backbones the stages are views (containers over the
    model's modules): they share the parameters but are not registered in the model.
    """
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module):
        raise ConfigError(f"freeze: {type(model).__name__} has no 'backbone' module to split into stages")
    if hasattr(backbone, "stage_names") and hasattr(backbone, "stage"):
        staged = cast(StagedBackbone, backbone)
        return OrderedDict((name, staged.stage(name)) for name in staged.stage_names)
    ssd = ssd_stages(backbone)
    if ssd is not None:
        return ssd
    # torchvision's FPN detectors: the classifier network is `body`
    inner = backbone.body if isinstance(backbone, BackboneWithFPN) else backbone
    children = OrderedDict(inner.named_children())
    if all(k in children for k in ("conv1", *OUT_STAGES)):  # ResNet
        return resnet_stages(children)
    bounds = CUTS["mobilenet_v3_large"]
    if children and all(k.isdigit() for k in children) and len(children) > bounds[-1]:
        # MobileNetV3 zoo models: IntermediateLayerGetter over `features`, children '0'..'16'
        return cut(nn.Sequential(children), bounds)
    raise ConfigError(f"freeze: cannot split the backbone of {type(model).__name__} into stages "
                      f"(children: {', '.join(children) or 'none'})")


def check_stages(model: nn.Module, names: Iterable[str] | str, where: str) -> list[str]:
    """``names`` as a list, each a stage of ``model``; else a ConfigError naming ``where`` and the valid stages."""
    valid = list(stage_modules(model))
    names = [names] if isinstance(names, str) else list(names)
    for name in names:
        if name not in valid:
            raise ConfigError(f"{where}: unknown stage '{name}'{suggest(name, valid)}; "
                              f"valid stages, first to last: {', '.join(valid)}")
    return names
