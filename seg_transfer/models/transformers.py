"""Vision transformers seen as ``stem, layer1..layer4`` of NCHW feature maps.

Swin's stages run on channels-last (NHWC) tensors: each stage is wrapped between permutes so that what
passes between stages, and what the necks read, is NCHW like every other backbone's. A plain ViT has
one stride-16 map: its 12 blocks are split 3 per stage, and ViTDet's *simple feature pyramid* (Li et
al., 2022: deconvolutions up to strides 8 and 4, a max-pool down to 32) turns the last map into the
four levels the necks and heads expect.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.convnext import LayerNorm2d
from torchvision.ops.misc import Permute

from .stages import OUT_STAGES

TO_NCHW, TO_NHWC = [0, 3, 1, 2], [0, 2, 3, 1]


def swin_stages(net: Any) -> OrderedDict[str, nn.Module]:
    """torchvision Swin (v1, v2): the patch embedding, then each (patch merging +) stage; the final norm
    rides with ``layer4``. Every stage takes and returns NCHW."""
    f = net.features
    stages: OrderedDict[str, nn.Module] = OrderedDict(stem=nn.Sequential(f[0], Permute(TO_NCHW)))
    for name, (a, b) in zip(OUT_STAGES, ((1, 2), (2, 4), (4, 6), (6, 8))):
        tail = [net.norm] if name == OUT_STAGES[-1] else []
        stages[name] = nn.Sequential(Permute(TO_NHWC), *f[a:b], *tail, Permute(TO_NCHW))
    return stages


class ViTStem(nn.Module):
    """Patch embedding plus the position embedding, resized to the input's grid (no class token: ViTDet's
    way of running a ViT at any size). Returns N x D x H/16 x W/16."""

    def __init__(self, net: Any) -> None:
        super().__init__()
        self.conv_proj = net.conv_proj
        self.pos_embedding = net.encoder.pos_embedding  # 1 x (1 + g*g) x D, the class token's first
        self.grid = int(net.image_size) // int(net.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_proj(x)
        d = x.shape[1]
        pos = self.pos_embedding[:, 1:].reshape(1, self.grid, self.grid, d).permute(0, 3, 1, 2)
        if pos.shape[-2:] != x.shape[-2:]:
            pos = F.interpolate(pos, size=x.shape[-2:], mode="bicubic", align_corners=False)
        return x + pos


class ViTBlocks(nn.Module):
    """Some of a ViT's encoder blocks over an NCHW map (flattened to tokens and back)."""

    def __init__(self, blocks: list[nn.Module], norm: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, d, h, w = x.shape
        tokens = self.blocks(x.flatten(2).transpose(1, 2))
        if self.norm is not None:
            tokens = self.norm(tokens)
        return tokens.transpose(1, 2).reshape(n, d, h, w)


def vit_stages(net: Any) -> OrderedDict[str, nn.Module]:
    """torchvision ViT: the stem, then its encoder blocks in four equal groups (the final norm with the last)."""
    blocks = list(net.encoder.layers)
    per = len(blocks) // len(OUT_STAGES)
    stages: OrderedDict[str, nn.Module] = OrderedDict(stem=ViTStem(net))
    for i, name in enumerate(OUT_STAGES):
        last = i == len(OUT_STAGES) - 1
        stages[name] = ViTBlocks(blocks[i * per:None if last else (i + 1) * per], net.encoder.ln if last else None)
    return stages


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid: one stride-16 map of ``dim`` channels -> ``layer1..layer4`` at
    strides 4, 8, 16, 32 (dim/4, dim/2, dim, dim channels). Its layers are new (not pretrained); the FPN
    neck adds the per-level convolutions ViTDet puts here."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.up4 = nn.Sequential(nn.ConvTranspose2d(dim, dim // 2, 2, 2), LayerNorm2d(dim // 2), nn.GELU(),
                                 nn.ConvTranspose2d(dim // 2, dim // 4, 2, 2))
        self.up2 = nn.ConvTranspose2d(dim, dim // 2, 2, 2)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return OrderedDict(layer1=self.up4(x), layer2=self.up2(x), layer3=x, layer4=F.max_pool2d(x, 2, 2))


def vit_pyramid(net: Any) -> nn.Module:
    return SimpleFeaturePyramid(int(net.hidden_dim))
