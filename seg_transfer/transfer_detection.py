"""Detectors in the transfer rules: their backbones' stages, their necks that live inside ``backbone``,
and class-aware initialisation of their class-indexed predictors (``transfer.py`` calls these)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Mapping, Optional, Sequence

import torch
from torch import nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.ssd import SSDFeatureExtractorVGG
from torchvision.models.detection.ssdlite import SSDLiteFeatureExtractorMobileNet

from .errors import ConfigError
from .models.backbones import MOBILENET_V3_BOUNDS, STAGES
from .models.detection import class_tensors, with_background


def is_detector(model: nn.Module) -> bool:
    return getattr(getattr(model, "info", None), "task", None) == "detection"


def classifier_children(backbone: nn.Module) -> Optional[nn.Module]:
    """The classifier network inside a torchvision FPN detector's backbone (``body``), else None."""
    return backbone.body if isinstance(backbone, BackboneWithFPN) else None


def ssd_stages(backbone: nn.Module) -> Optional["OrderedDict[str, nn.Module]"]:
    """``stem, layer1..layer4`` of torchvision's SSD feature extractors (views over their modules), else
    None. The layers torchvision adds (SSD's extra maps and L2 scale, SSDlite's extra blocks) are in no
    stage: they are the detector's neck."""
    if isinstance(backbone, SSDFeatureExtractorVGG):
        # `features` is VGG16 up to conv4_3; each VGG stage ends at a max-pool; conv5 (+ fc6/fc7) is extra[0].
        layers = list(backbone.features)
        ends = [i + 1 for i, m in enumerate(layers) if isinstance(m, nn.MaxPool2d)][:3]
        cuts, last = (0, *ends, len(layers)), backbone.extra[0]
    elif isinstance(backbone, SSDLiteFeatureExtractorMobileNet):
        # features[0]: MobileNetV3 up to the C4 block's expansion; features[1]: the rest of the network.
        layers = list(backbone.features[0])
        cuts, last = (0, *MOBILENET_V3_BOUNDS[:3], len(layers)), backbone.features[1]
    else:
        return None
    stages = [nn.Sequential(*layers[a:b]) for a, b in zip(cuts, cuts[1:])] + [last]
    return OrderedDict(zip(STAGES, stages))


@torch.no_grad()
def detection_class_aware_init(model: nn.Module, source_classes: Sequence[str], target_classes: Sequence[str],
                               source_state: Mapping[str, torch.Tensor]) -> list[str]:
    """Copy the source predictors' rows of classes present in both (R-CNN class scores, the 4 box
    deltas per class and mask logits; SSD/RetinaNet class logits, for every anchor) into the model."""
    from .transfer import _class_key

    source, target = with_background(source_classes), with_background(target_classes)
    index: dict[str, int] = {}
    for i, name in enumerate(source):
        index.setdefault(_class_key(name), i)
    pairs = [(j, index[_class_key(name)]) for j, name in enumerate(target) if _class_key(name) in index]
    modules = dict(model.named_modules())
    copied = 0
    for t in class_tensors(model):
        for pname, param in modules[t.module].named_parameters(recurse=False):
            src = source_state.get(f"{t.module}.{pname}")
            # The source's same-named tensor must be laid out for its own class count, same inputs.
            if src is None or src.shape[0] != t.anchors * t.per_class * len(source) or src.shape[1:] != param.shape[1:]:
                continue
            if param.shape[0] != t.anchors * t.per_class * len(target):
                continue
            for j, i in pairs:
                param[t.rows(j, len(target))] = src[t.rows(i, len(source))].to(param.dtype)
            copied += 1
    if not copied:
        raise ConfigError(f"class_aware_init: no class predictor of the model ({len(target)} classes) matches "
                          f"one of the source weights ({len(source)} classes)")
    return [target[j] for j, _ in pairs]
