"""Semantic segmentation models: heads over any registered backbone (``HEADS``), torchvision's
segmenters by name (``ZOO``), and their forward split at the backbone (``encode`` / ``decode``, so a
frozen backbone's features can be cached).

An assembled model is backbone -> neck -> head (+ torchvision's auxiliary FCN head on ``layer3``),
returning ``{"out", "aux"}`` logits at the input size like torchvision's segmenters. Zoo models stay
torchvision's own modules; a new class count re-creates only their final 1x1 classifier convs. A binary
model (``model.binary``) has one output channel, the foreground's logit, for two class names.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Mapping, Optional, Sequence, cast

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import WeightsEnum
from torchvision.models.segmentation._utils import _SimpleSegmentationModel
from torchvision.models.segmentation.deeplabv3 import DeepLabHead
from torchvision.models.segmentation.fcn import FCNHead
from torchvision.models.segmentation.lraspp import LRASPP as TorchvisionLRASPP
from torchvision.models.segmentation.lraspp import LRASPPHead
from torchvision.ops.misc import Conv2dNormActivation

from ..config import ModelConfig
from ..errors import ConfigError, unknown
from . import weights as W
from .backbones import Backbone, build_backbone
from .necks import NECKS, aspp_rates
from .preprocess import Built, Preprocess


def _up(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class SegmentationModel(nn.Module):
    """backbone -> neck -> head, logits upsampled to the input size as ``{"out", "aux"}`` like torchvision."""

    def __init__(self, backbone: Backbone, neck: nn.Module, head: nn.Module,
                 aux: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.backbone, self.neck, self.head, self.aux_classifier = backbone, neck, head, aux

    def decode(self, feats: Mapping[str, torch.Tensor], size: Sequence[int]) -> dict[str, torch.Tensor]:
        """Neck, head and aux head on backbone features, upsampled to ``size``."""
        out = {"out": _up(self.head(self.neck(feats)), size)}
        if self.aux_classifier is not None:
            out["aux"] = _up(self.aux_classifier(feats["layer3"]), size)
        return out

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.decode(self.backbone(x), x.shape[-2:])


# ----------------------------------------------------------------------------------------- heads
class LastLevel(nn.Module):
    """Applies a torchvision head to the last (coarsest) feature map."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(next(reversed(feats.values())))


class LRASPP(nn.Module):
    """torchvision ``LRASPPHead`` fed with the stride-8 level (low) and the last level (high)."""

    def __init__(self, in_channels: dict[str, int], strides: dict[str, int], num_classes: int,
                 inter_channels: int = 128) -> None:
        super().__init__()
        self.high = list(in_channels)[-1]
        # The finest level at stride <= 8 gives the detail LR-ASPP adds back.
        self.low = next(k for k in in_channels if strides[k] >= 8)
        self.head = LRASPPHead(in_channels[self.low], in_channels[self.high], num_classes, inter_channels)

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head({"low": feats[self.low], "high": feats[self.high]})


class SemanticFPNHead(nn.Module):
    """Panoptic-FPN's semantic branch: each level upsampled to stride 4 by conv+2x stages, summed, classified."""

    def __init__(self, in_channels: dict[str, int], strides: dict[str, int], num_classes: int,
                 channels: int = 128) -> None:
        super().__init__()
        norm = partial(nn.GroupNorm, 32)
        self.target = min(strides.values())
        self.branches = nn.ModuleDict()
        for name, c in in_channels.items():
            steps = max(int(math.log2(strides[name] // self.target)), 0)
            layers: list[nn.Module] = []
            for i in range(max(steps, 1)):
                layers.append(Conv2dNormActivation(c if i == 0 else channels, channels, 3, norm_layer=norm))
                if steps:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.branches[name] = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        outs = [self.branches[k](v) for k, v in feats.items()]
        size = outs[0].shape[-2:]
        merged = sum(o if o.shape[-2:] == size else _up(o, size) for o in outs)
        return self.classifier(merged)


def fcn_head(in_channels: dict[str, int], strides: dict[str, int], num_classes: int,
             output_stride: Optional[int] = None) -> nn.Module:
    return LastLevel(FCNHead(list(in_channels.values())[-1], num_classes))


def deeplabv3_head(in_channels: dict[str, int], strides: dict[str, int], num_classes: int,
                   output_stride: Optional[int] = None) -> nn.Module:
    return LastLevel(DeepLabHead(list(in_channels.values())[-1], num_classes, aspp_rates(output_stride)))


def lraspp_head(in_channels: dict[str, int], strides: dict[str, int], num_classes: int,
                output_stride: Optional[int] = None) -> nn.Module:
    return LRASPP(in_channels, strides, num_classes)


def fpn_head(in_channels: dict[str, int], strides: dict[str, int], num_classes: int,
             output_stride: Optional[int] = None) -> nn.Module:
    return SemanticFPNHead(in_channels, strides, num_classes)


@dataclass(frozen=True)
class SegmentationHead:
    """A segmentation head: its builder ``(in_channels, strides, num_classes, output_stride)`` and the
    necks it can sit on."""

    build: Callable[..., nn.Module]
    necks: tuple[str, ...]


# DeepLabV3 and LR-ASPP carry their own context module, and the semantic-FPN head merges a pyramid,
# so it needs the FPN neck.
HEADS: dict[str, SegmentationHead] = {
    "fcn": SegmentationHead(fcn_head, ("none", "fpn", "aspp")),
    "deeplabv3": SegmentationHead(deeplabv3_head, ("none", "fpn")),
    "lraspp": SegmentationHead(lraspp_head, ("none", "fpn")),
    "fpn": SegmentationHead(fpn_head, ("fpn",)),
}


def aux_head(in_channels: int, num_classes: int) -> nn.Module:
    """torchvision's auxiliary FCN head (on ``layer3``), as its FCN/DeepLab models use."""
    return FCNHead(in_channels, num_classes)


# ---------------------------------------------------------------------------------------- binary
BINARY_CLASSES = ("background", "foreground")


def binary_classes(num_classes: Optional[int], classes: Optional[Sequence[str]]) -> list[str]:
    """A binary model's class names, background first: ``classes`` (one name: the foreground; two: background
    and foreground) or ``background, foreground``. ``num_classes`` may count the output channel (1) or both
    sides (2)."""
    if num_classes not in (None, 1, 2):
        raise ConfigError(f"model.num_classes: {num_classes} with model.binary: true; a binary model has one "
                          f"output channel (a foreground vs the background): give num_classes: 1 or leave it out")
    if classes is None:
        return list(BINARY_CLASSES)
    if len(classes) == 1:
        return ["background", str(classes[0])]
    if len(classes) == 2:
        return [str(c) for c in classes]
    raise ConfigError(f"model.classes: a binary model has a background and one foreground class, got "
                      f"{len(classes)} names ({', '.join(map(str, classes))})")


def class_names(cfg: ModelConfig, default: Optional[list[str]]) -> list[str]:
    """The model's class names (``binary_classes`` for a binary model)."""
    if cfg.binary:
        return binary_classes(cfg.num_classes, cfg.classes)
    return W.class_names(cfg.num_classes, cfg.classes, default)


def build_assembled(cfg: ModelConfig, backbone_weights: W.Spec) -> Built:
    """``backbone`` + ``neck`` + a segmentation ``head`` (+ the aux head with ``aux_loss``)."""
    if cfg.neck not in NECKS:
        raise unknown("neck", cfg.neck, NECKS, "model.neck")
    head_spec = HEADS[str(cfg.head)]
    if cfg.neck not in head_spec.necks:
        raise ConfigError(f"model: head '{cfg.head}' cannot sit on neck '{cfg.neck}'; "
                          f"valid necks for it: {', '.join(head_spec.necks)}")
    classes = class_names(cfg, None)
    channels = 1 if cfg.binary else len(classes)
    backbone = build_backbone(str(cfg.backbone), backbone_weights, cfg.output_stride,
                              520 if cfg.resize is None else cfg.resize)
    neck = NECKS[cfg.neck](backbone.out_channels, cfg.neck_channels, cfg.output_stride)
    head = head_spec.build(neck.out_channels, backbone.strides, channels, cfg.output_stride)
    aux = aux_head(backbone.out_channels["layer3"], channels) if cfg.aux_loss else None
    return SegmentationModel(backbone, neck, head, aux), backbone.preprocess, classes


# ------------------------------------------------------------------------------------------ zoo
@dataclass(frozen=True)
class SegmentationZoo:
    """A torchvision segmenter by builder name."""

    tv_name: str


ZOO: dict[str, SegmentationZoo] = {name: SegmentationZoo(name) for name in (
    "fcn_resnet50", "fcn_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101",
    "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large")}


def replace_classifiers(model: nn.Module, old: int, new: int) -> list[str]:
    """Re-create the final 1x1 convs (``old`` outputs) of ``classifier``/``aux_classifier`` with ``new``
    outputs; every other pretrained layer is kept. Returns the names replaced."""
    replaced = []
    for head_name in ("classifier", "aux_classifier"):
        head = getattr(model, head_name, None)
        if head is None:
            continue
        for name, conv in list(head.named_modules()):
            if isinstance(conv, nn.Conv2d) and conv.out_channels == old and conv.kernel_size == (1, 1):
                parent = head.get_submodule(name.rpartition(".")[0]) if "." in name else head
                setattr(parent, name.rpartition(".")[2],
                        nn.Conv2d(conv.in_channels, new, 1, bias=conv.bias is not None))
                replaced.append(f"{head_name}.{name}")
    return replaced


def build_zoo(cfg: ModelConfig) -> Built:
    """A torchvision segmenter by name with its preprocessing; a new class count replaces its classifiers."""
    tv_name = ZOO[str(cfg.name)].tv_name
    if cfg.output_stride is not None:
        raise ConfigError("model.output_stride: zoo models keep torchvision's stride; use an assembled model")
    # output channels: a binary model has one (the foreground's logit), whatever it calls its two classes
    num_classes = 1 if cfg.binary else len(cfg.classes) if cfg.classes is not None else cfg.num_classes
    resolved = W.resolve(tv_name, cfg.weights, "weights")
    family = W.enum_or_default(tv_name, resolved)
    official = W.official_arch_kwargs(tv_name, resolved if isinstance(resolved, WeightsEnum) else None)
    if resolved is not None:
        # Pretrained: build exactly the saved architecture, then adapt it. No backbone weights:
        # the whole model's file overwrites them (torchvision would fetch them for a local file).
        model, _ = W.build_torchvision(tv_name, resolved, "weights", weights_backbone=None, **official)
        if cfg.aux_loss is False and getattr(model, "aux_classifier", None) is not None:
            model.aux_classifier = None  # type: ignore[assignment]  # torch's __setattr__ stub omits None (valid here)
        default = W.categories(family)
        if num_classes is not None and num_classes != official["num_classes"]:
            replace_classifiers(model, official["num_classes"], num_classes)
            default = None
    else:
        bb = W.resolve(tv_name, cfg.backbone_weights, "backbone_weights", enum=W.backbone_weights_enum(tv_name)[0])
        if isinstance(bb, WeightsEnum):
            W.ensure_cached(tv_name, bb, "backbone_weights")
        elif bb is not None:
            raise ConfigError(f"backbone_weights: a local file is not supported for zoo model {tv_name}; "
                              f"give the whole model's file in 'weights' or use an assembled model")
        kwargs = {"num_classes": num_classes or official["num_classes"], "weights_backbone": bb}
        if "aux_loss" in official:
            kwargs["aux_loss"] = cfg.aux_loss
        model, _ = W.build_torchvision(tv_name, None, "weights", **kwargs)
        default = W.categories(family) if kwargs["num_classes"] == official["num_classes"] else None
    preprocess = Preprocess.from_transforms(family.transforms(), resize_size=cfg.resize)
    return model, preprocess, class_names(cfg, default)


# -------------------------------------------------------------------------------- split forward
def can_split(model: nn.Module) -> bool:
    """Whether ``encode``/``decode`` know this model's forward (assembled, FCN, DeepLabV3, LR-ASPP)."""
    return isinstance(model, (SegmentationModel, TorchvisionLRASPP, _SimpleSegmentationModel))


def encode(model: nn.Module, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
    """The backbone's features of ``x``, as the rest of the network reads them."""
    feats = OrderedDict(cast(nn.Module, model.backbone)(x))
    if isinstance(model, _SimpleSegmentationModel) and model.aux_classifier is None:
        feats.pop("aux", None)  # a pretrained zoo model keeps returning it after aux_loss=False
    return feats


def decode(model: nn.Module, feats: Mapping[str, torch.Tensor], size: Sequence[int]) -> dict[str, torch.Tensor]:
    """Logits from ``encode``'s features, upsampled to ``size``: mirrors the forward of
    ``SegmentationModel`` and of torchvision's FCN/DeepLabV3 (``_SimpleSegmentationModel``) and LRASPP."""
    if isinstance(model, SegmentationModel):
        return model.decode(feats, size)
    net: Any = model  # torchvision's LRASPP or _SimpleSegmentationModel (untyped)
    result: OrderedDict[str, torch.Tensor] = OrderedDict()
    if isinstance(net, TorchvisionLRASPP):
        result["out"] = _up(net.classifier(feats), size)
        return result
    result["out"] = _up(net.classifier(feats["out"]), size)
    if net.aux_classifier is not None:
        result["aux"] = _up(net.aux_classifier(feats["aux"]), size)
    return result
