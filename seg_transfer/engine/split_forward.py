"""A model's forward split at the backbone: ``encode`` (its features) and ``decode`` (the rest), for the
tasks whose models say how (``models.segmentation`` and ``models.classification``: ``can_split``,
``encode``, ``decode``).

``decode(model, encode(model, x), x.shape[-2:])`` equals ``model(x)``, so a frozen backbone's features
can be computed once and the neck and head trained on them (the feature cache).
"""
from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from types import ModuleType
from typing import Iterator, Mapping, Optional, Sequence, cast

import torch
from torch import nn

from ..models import classification, segmentation

WRAPPERS = (nn.DataParallel, nn.parallel.DistributedDataParallel)


def _task(model: nn.Module) -> ModuleType:
    """The models module that knows how to split ``model``."""
    for task in (segmentation, classification):
        if task.can_split(model):
            return task
    if isinstance(model, WRAPPERS):
        # Calling the wrapped module's parts directly would skip DDP's gradient synchronisation.
        raise TypeError(f"split_forward: pass the model that {type(model).__name__} wraps (.module); to "
                        "distribute the decoding, wrap Decoder(model) instead")
    raise TypeError(f"split_forward: cannot split {type(model).__name__}; supported: SegmentationModel, "
                    "torchvision's FCN, DeepLabV3 and LRASPP, and the image classifiers")


def can_split(model: nn.Module) -> bool:
    """Whether ``encode``/``decode`` know this model's forward."""
    try:
        _task(model)
    except TypeError:
        return False
    return True


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Every submodule in eval mode inside the block, then back to its own mode (held BatchNorm included)."""
    modes = [(m, m.training) for m in module.modules()]
    try:
        for m, _ in modes:
            m.training = False  # set directly: a BatchNorm held by apply_freeze overrides train()
        yield module
    finally:
        for m, training in modes:
            m.training = training


def encode(model: nn.Module, x: torch.Tensor, keys: Optional[Sequence[str]] = None) -> dict[str, torch.Tensor]:
    """The backbone's features of ``x``, as the rest of the network reads them; ``keys`` keeps only those."""
    feats = _task(model).encode(model, x)
    if keys is None:
        return feats
    missing = [k for k in keys if k not in feats]
    if missing:
        raise KeyError(f"encode: the backbone returns no {', '.join(missing)} (it returns {', '.join(feats)})")
    return OrderedDict((k, v) for k, v in feats.items() if k in keys)  # backbone order: heads may rely on it


def decode(model: nn.Module, feats: Mapping[str, torch.Tensor], size: Sequence[int]) -> dict[str, torch.Tensor]:
    """Neck, head and aux head on backbone features, upsampled to ``size``: ``{"out", "aux"?}`` like
    ``model(x)``; for classifiers ``{"out": logits}`` (``size`` does not apply)."""
    task = _task(model)
    feats = OrderedDict(feats)  # a copy: nothing downstream may alter a cached dict
    if task is classification:
        return {"out": classification.decode(model, feats)}
    return segmentation.decode(model, feats, tuple(size)[-2:])


def used_features(model: nn.Module, feats: Mapping[str, torch.Tensor], size: Sequence[int]) -> list[str]:
    """The keys of ``feats`` that ``decode`` reads, in order; all of them unless leaving the rest out
    provably gives the same output.

    Found by gradient (a key no output depends on gets none), so it holds for any neck or head: e.g. an
    FCN head on the identity neck reads only ``layer4`` (plus ``layer3`` for the aux head), which is what
    keeps a feature cache of a ResNet small. Modules run in eval mode here, then get their modes back.
    """
    # Eval mode: no BatchNorm statistics update and no dropout, so the two passes can be compared.
    with eval_mode(model), torch.enable_grad():
        # A clone: inference tensors (from torch.inference_mode) cannot require grad.
        probe = OrderedDict((k, v.detach().clone().requires_grad_(True)) for k, v in feats.items())
        full = decode(model, probe, size)
        total = cast(torch.Tensor, sum(o.float().sum() for o in full.values()))  # decode gives at least "out"
        grads = torch.autograd.grad(total, list(probe.values()), allow_unused=True)
        keys = [k for k, g in zip(probe, grads) if g is not None]
        if len(keys) == len(probe):
            return keys
        with torch.no_grad():
            try:
                kept = decode(model, OrderedDict((k, feats[k]) for k in keys), size)
            except (KeyError, IndexError, StopIteration, RuntimeError):  # read for its shape only, say
                return list(feats)
    same = set(kept) == set(full) and all(
        torch.allclose(kept[k], full[k].detach(), rtol=1e-4, atol=1e-6) for k in full)
    return keys if same else list(feats)


def forward_module(model: nn.Module, cached: bool) -> nn.Module:
    """What a step calls: ``model`` on images, or a ``Decoder`` (the rest of it) on cached features."""
    return Decoder(model) if cached else model


class Decoder(nn.Module):
    """``decode`` as a module, for wrappers that must see a forward (DistributedDataParallel, compile)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        _task(model)
        self.model = model

    def forward(self, feats: Mapping[str, torch.Tensor], size: Sequence[int]) -> dict[str, torch.Tensor]:
        return decode(self.model, feats, size)
