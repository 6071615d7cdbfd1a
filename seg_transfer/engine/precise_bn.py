"""Precise BatchNorm statistics: recompute running mean/var over training batches before evaluating.

BatchNorm's running averages (momentum 0.1) trail the weights; after a short or fast-moving run they
describe an earlier network, and eval-mode predictions suffer for it (a model that trained from random
values for a few epochs can score several times lower in eval mode than with batch statistics).
Detectron2's PreciseBN hook and timm's ``--bn-recal`` address the same gap. Layers that ``apply_freeze``
holds in eval mode keep their pretrained statistics untouched.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..transfer.freeze import bn_held_in_eval


def trainable_bn(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers whose statistics training updates (not held in eval by a freeze)."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats
            and not bn_held_in_eval(m)]


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, batches: Iterable, step: Callable[[object], object], limit: int) -> int:
    """Set each trainable BatchNorm's running statistics to their average over up to ``limit`` batches,
    running ``step(batch)`` (a forward in train mode) on each; returns the number of batches used."""
    layers = trainable_bn(model)
    if not layers or limit <= 0:
        return 0
    saved = [(bn, bn.momentum) for bn in layers]
    for bn in layers:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: the plain mean over the batches seen
    was_training = model.training
    model.train()
    used = 0
    try:
        for batch in batches:
            if used >= limit:
                break
            step(batch)
            used += 1
    finally:
        for bn, momentum in saved:
            bn.momentum = momentum
        model.train(was_training)
    return used
