"""The eager fast path: a copy of the model without the auxiliary heads inference never reads, with each
BatchNorm folded into the convolution before it (one pass over the weights instead of two per layer) and
channels-last weights (the layout oneDNN's CPU convolutions prefer), for inference only. The ONNX export
drops the aux head too (its output is not a graph output)."""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every eval-mode BatchNorm2d that directly follows a Conv2d, in place; returns how many.

    Covers the two ways torchvision writes the pair: consecutive children of a Sequential
    (``Conv2dNormActivation``, heads) and ``convN``/``bnN`` attributes (ResNet blocks).
    """
    folded = 0
    for module in list(model.modules()):
        names = list(module._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = module._modules[a], module._modules[b]
            if isinstance(module, nn.Sequential) or (a.startswith("conv") and b == "bn" + a[4:]):
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats \
                        and conv.out_channels == bn.num_features:
                    module._modules[a] = fuse_conv_bn_eval(conv, bn)
                    module._modules[b] = nn.Identity()
                    folded += 1
    return folded


def drop_aux_heads(model: nn.Module) -> int:
    """Remove torchvision's auxiliary segmentation heads, in place; returns how many. In eval mode they
    still run (FCN's on layer3 costs a tenth of the model) though inference never reads ``aux``."""
    dropped = 0
    for module in model.modules():
        if getattr(module, "aux_classifier", None) is not None:
            setattr(module, "aux_classifier", None)  # torchvision checks it for None
            dropped += 1
    return dropped


def optimize(model: nn.Module) -> nn.Module:
    """An optimised eval-mode copy: auxiliary heads dropped, BatchNorm folded, channels-last; ``model``
    itself is untouched."""
    fast = copy.deepcopy(model).eval()
    drop_aux_heads(fast)
    with torch.no_grad():
        fold_batchnorm(fast)
    return fast.to(memory_format=torch.channels_last)
