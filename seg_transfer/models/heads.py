"""Segmentation heads: name -> builder ``(in_channels, strides, num_classes, output_stride)`` returning a
module that maps a feature dict to logits at the resolution of its finest input."""
from __future__ import annotations

import math
from functools import partial
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import DeepLabHead
from torchvision.models.segmentation.fcn import FCNHead
from torchvision.models.segmentation.lraspp import LRASPPHead
from torchvision.ops.misc import Conv2dNormActivation


def _rates(output_stride: Optional[int]) -> tuple[int, int, int]:
    return {8: (12, 24, 36), 16: (6, 12, 18)}.get(output_stride or 32, (3, 6, 9))


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

    def forward(self, feats):
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

    def forward(self, feats):
        outs = [self.branches[k](v) for k, v in feats.items()]
        size = outs[0].shape[-2:]
        merged = sum(o if o.shape[-2:] == size else F.interpolate(o, size=size, mode="bilinear",
                                                                   align_corners=False) for o in outs)
        return self.classifier(merged)


HeadBuilder = Callable[..., nn.Module]
HEADS: dict[str, HeadBuilder] = {
    "fcn": lambda in_channels, strides, num_classes, output_stride=None:
        LastLevel(FCNHead(list(in_channels.values())[-1], num_classes)),
    "deeplabv3": lambda in_channels, strides, num_classes, output_stride=None:
        LastLevel(DeepLabHead(list(in_channels.values())[-1], num_classes, _rates(output_stride))),
    "lraspp": lambda in_channels, strides, num_classes, output_stride=None:
        LRASPP(in_channels, strides, num_classes),
    "fpn": lambda in_channels, strides, num_classes, output_stride=None:
        SemanticFPNHead(in_channels, strides, num_classes),
}


def aux_head(in_channels: int, num_classes: int) -> nn.Module:
    """torchvision's auxiliary FCN head (on ``layer3``), as its FCN/DeepLab models use."""
    return FCNHead(in_channels, num_classes)
