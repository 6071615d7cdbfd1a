"""Necks: name -> builder ``(in_channels, channels, output_stride)`` taking the backbone's
``out_channels`` and returning a module that maps its feature dict to a feature dict with
``out_channels`` of its own."""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Optional

import torch
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP
from torchvision.ops import FeaturePyramidNetwork


class Neck(nn.Module):
    """Base: identity over the feature dict."""

    def __init__(self, in_channels: dict[str, int]) -> None:
        super().__init__()
        self.out_channels = dict(in_channels)

    def forward(self, feats: OrderedDict[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
        return feats


class FPNNeck(Neck):
    """torchvision ``FeaturePyramidNetwork``: every level gets ``channels`` channels."""

    def __init__(self, in_channels: dict[str, int], channels: int = 256) -> None:
        super().__init__(in_channels)
        self.fpn = FeaturePyramidNetwork(list(in_channels.values()), channels)
        self.out_channels = {k: channels for k in in_channels}

    def forward(self, feats):
        return self.fpn(feats)


def aspp_rates(output_stride: Optional[int]) -> tuple[int, int, int]:
    """DeepLab's atrous rates: (12, 24, 36) at output stride 8, halved at 16; 32 is too coarse to dilate much."""
    return {8: (12, 24, 36), 16: (6, 12, 18)}.get(output_stride or 32, (3, 6, 9))


class ASPPNeck(Neck):
    """torchvision's DeepLabV3 ``ASPP`` on the last level; lower levels pass through unchanged."""

    def __init__(self, in_channels: dict[str, int], channels: int = 256,
                 output_stride: Optional[int] = None) -> None:
        super().__init__(in_channels)
        self.last = list(in_channels)[-1]
        self.aspp = ASPP(in_channels[self.last], list(aspp_rates(output_stride)), channels)
        self.out_channels[self.last] = channels

    def forward(self, feats):
        out = OrderedDict(feats)
        out[self.last] = self.aspp(feats[self.last])
        return out


def identity_neck(in_channels: dict[str, int], channels: int = 256, output_stride: Optional[int] = None) -> Neck:
    return Neck(in_channels)


def fpn_neck(in_channels: dict[str, int], channels: int = 256, output_stride: Optional[int] = None) -> Neck:
    return FPNNeck(in_channels, channels)


def aspp_neck(in_channels: dict[str, int], channels: int = 256, output_stride: Optional[int] = None) -> Neck:
    return ASPPNeck(in_channels, channels, output_stride)


NeckBuilder = Callable[[dict[str, int], int, Optional[int]], Neck]
NECKS: dict[str, NeckBuilder] = {"none": identity_neck, "fpn": fpn_neck, "aspp": aspp_neck}
