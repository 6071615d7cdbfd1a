"""Class-aware initialisation: a re-created classifier starts with the source's rows for classes the
two models share (case-insensitive; ``__background__`` == ``background``), so a matched class
predicts as before (a binary model's one channel: foreground minus background). Segmentation and
classification heads (their final 1x1 conv / linear layer) and detectors' class-indexed predictors
(R-CNN scores, box deltas and mask logits; SSD/RetinaNet logits)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..models.detection import class_tensors, is_detector, with_background


def class_key(name: str) -> str:
    key = str(name).strip().lower()
    return "background" if key in ("__background__", "background") else key


def matching_rows(source: Sequence[str], target: Sequence[str]) -> list[tuple[int, int]]:
    """(target index, source index) of each target class also in ``source`` (its first occurrence)."""
    index: dict[str, int] = {}
    for i, name in enumerate(source):
        index.setdefault(class_key(name), i)
    return [(j, index[class_key(name)]) for j, name in enumerate(target) if class_key(name) in index]


def classifier_convs(model: nn.Module, num_classes: int) -> list[tuple[str, nn.Conv2d | nn.Linear]]:
    """The final 1x1 convs with ``num_classes`` outputs outside the backbone (the rule of
    ``segmentation.replace_classifiers``): zoo ``classifier``/``aux_classifier``, an assembled model's head/aux;
    for image classifiers, the linear layers with ``num_classes`` outputs."""
    backbone = getattr(model, "backbone", None)
    inside = {id(m) for m in backbone.modules()} if isinstance(backbone, nn.Module) else set()
    found: list[tuple[str, nn.Conv2d | nn.Linear]] = []
    for top, child in model.named_children():
        if child is backbone or id(child) in inside:
            continue
        for name, m in child.named_modules(prefix=top):
            if (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.out_channels == num_classes) or \
                    (isinstance(m, nn.Linear) and m.out_features == num_classes):
                found.append((name, m))
    return found


@torch.no_grad()
def class_aware_init(model: nn.Module, source_classes: Sequence[str], target_classes: Sequence[str],
                     source_state: Mapping[str, torch.Tensor], binary: bool = False) -> list[str]:
    """Copy the source classifier's rows (weight, bias) into the model's re-created classifier for
    classes present in both (case-insensitive; '__background__' == 'background'), so a matched class
    starts out predicting as before. Returns the matched target class names in target order.

    ``binary``: the model has one sigmoid channel for ``target_classes`` = [background, foreground]; it
    starts as the source's foreground row minus its background row (the logit of foreground vs background
    under the source's softmax), when the source has both classes."""
    if is_detector(model):
        return _detection_class_aware_init(model, source_classes, target_classes, source_state)
    if binary:
        return _binary_class_aware_init(model, source_classes, target_classes, source_state)
    pairs = matching_rows(source_classes, target_classes)
    convs = _source_convs(model, len(target_classes), source_classes, source_state)
    for _, conv, weight, bias in convs:
        for j, i in pairs:
            conv.weight[j].copy_(weight[i])
            if conv.bias is not None and bias is not None:
                conv.bias[j].copy_(bias[i])
    return [target_classes[j] for j, _ in pairs]


def _source_convs(model: nn.Module, outputs: int, source_classes: Sequence[str],
                  source_state: Mapping[str, torch.Tensor]
                  ) -> list[tuple[str, nn.Conv2d | nn.Linear, torch.Tensor, Any]]:
    """The model's classifiers with ``outputs`` outputs, each with the source's same-named weight and bias."""
    convs = []
    for name, conv in classifier_convs(model, outputs):
        weight = source_state.get(f"{name}.weight")
        # The source's same-named conv must be its classifier: one row per source class, same inputs.
        if weight is not None and weight.shape[0] == len(source_classes) and weight.shape[1:] == conv.weight.shape[1:]:
            convs.append((name, conv, weight, source_state.get(f"{name}.bias")))
    if not convs:
        raise ConfigError(f"class_aware_init: no classifier conv with {outputs} outputs in the model "
                          f"matches one with {len(source_classes)} outputs in the source weights")
    return convs


def _binary_class_aware_init(model: nn.Module, source_classes: Sequence[str], target_classes: Sequence[str],
                             source_state: Mapping[str, torch.Tensor]) -> list[str]:
    # softmax over {bg, fg} alone is sigmoid(z_fg - z_bg): the difference of the two rows is that logit
    pairs = dict(matching_rows(source_classes, target_classes))
    convs = _source_convs(model, 1, source_classes, source_state)
    if set(pairs) != {0, 1}:
        return []  # without both rows there is no logit to start from
    fg, bg = pairs[1], pairs[0]
    for _, conv, weight, bias in convs:
        conv.weight[0].copy_(weight[fg] - weight[bg])
        if conv.bias is not None and bias is not None:
            conv.bias[0].copy_(bias[fg] - bias[bg])
    return list(target_classes)


@torch.no_grad()
def _detection_class_aware_init(model: nn.Module, source_classes: Sequence[str], target_classes: Sequence[str],
                                source_state: Mapping[str, torch.Tensor]) -> list[str]:
    """Copy the source predictors' rows of classes present in both (R-CNN class scores, the 4 box
    deltas per class and mask logits; SSD/RetinaNet class logits, for every anchor) into the model."""
    source, target = with_background(source_classes), with_background(target_classes)
    pairs = matching_rows(source, target)
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
