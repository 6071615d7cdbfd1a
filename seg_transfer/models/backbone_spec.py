"""One backbone registry entry (``BackboneSpec``) and where its network comes from (``NetSource``).

Every backbone, a torchvision classifier (``backbones.BACKBONES``) or a timm model resolved on demand
(``timm/<name>``, ``timm_backbones``), is one ``BackboneSpec``: its stage split, the output strides it
supports, a pyramid for a one-map ViT, and its ``NetSource``: how the network is built with a weights
spec and which preprocessing preset those weights want.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Optional

from torch import nn

from . import weights as W

Split = Callable[[nn.Module], "OrderedDict[str, nn.Module]"]


# What preprocessing reads off a weights preset (torchvision's ``weights.transforms()``, or timm's data config
# as ``timm_backbones.TimmPreset``): ``mean``, ``std``, ``resize_size``, ``crop_size``, ``interpolation``, ``antialias``.
Preset = Any


@dataclass(frozen=True)
class NetSource:
    """Where a backbone network comes from: ``build(name, weights, key, **kwargs)`` -> the network with
    ``weights`` loaded through its library's own path; ``transforms(name, weights)`` -> the preset those
    weights (or, for random or local weights, the name's default ones) preprocess with."""

    provider: str
    build: Callable[..., nn.Module]
    transforms: Callable[[str, W.Spec], Preset]


def _torchvision_net(name: str, weights: W.Spec, key: str, **kwargs: Any) -> nn.Module:
    return W.build_torchvision(name, weights, key, **kwargs)[0]


def _torchvision_transforms(name: str, weights: W.Spec) -> Preset:
    return W.enum_or_default(name, W.resolve(name, weights, "model.backbone_weights")).transforms()


TORCHVISION = NetSource("torchvision", _torchvision_net, _torchvision_transforms)


def no_dilation(output_stride: int) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class BackboneSpec:
    """A classifier used as a backbone: its family, how it splits into stages, the output strides it
    supports and the builder keyword arguments that give one (dilation), for a plain ViT the pyramid made
    from its one map, and the library it comes from (weights and preprocessing: that library's own)."""

    tv_name: str  # the name the library builds (torchvision's builder; timm's model name for timm/<name>)
    family: str
    split: Split
    strides: tuple[int, ...] = (32,)
    dilation: Callable[[int], dict[str, Any]] = no_dilation
    pyramid: Optional[Callable[[nn.Module], nn.Module]] = None
    source: NetSource = TORCHVISION
