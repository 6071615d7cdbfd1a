"""torchvision's ready-made segmentation models by name, with the classifier swapped for new classes."""
from __future__ import annotations

import inspect
from functools import partial
from typing import Callable, Optional

import torchvision
from torch import nn
from torchvision.models import WeightsEnum

from ..errors import ConfigError
from . import weights as W
from .preprocess import Preprocess


def _backbone_enum(tv_name: str) -> type[WeightsEnum]:
    default = inspect.signature(torchvision.models.get_model_builder(tv_name)).parameters["weights_backbone"].default
    return type(default)


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


def build_zoo(tv_name: str, weights: W.Spec = "DEFAULT", backbone_weights: W.Spec = "DEFAULT",
              num_classes: Optional[int] = None, aux_loss: Optional[bool] = None,
              resize: Optional[int] = None) -> tuple[nn.Module, Preprocess, Optional[list[str]]]:
    """Build a torchvision segmentation model; returns it with its preprocessing and class names."""
    resolved = W.resolve(tv_name, weights, "weights")
    default = W.weights_enum(tv_name).DEFAULT
    official = W.official_arch_kwargs(tv_name, resolved if isinstance(resolved, WeightsEnum) else None)
    if resolved is not None:
        # Pretrained: build exactly the saved architecture, then adapt it. No backbone weights:
        # the whole model's file overwrites them (torchvision would fetch them for a local file).
        model, _ = W.build_torchvision(tv_name, resolved, "weights", weights_backbone=None, **official)
        if aux_loss is False and getattr(model, "aux_classifier", None) is not None:
            model.aux_classifier = None
        classes = W.categories(resolved) or W.categories(default)
        if num_classes is not None and num_classes != official["num_classes"]:
            replace_classifiers(model, official["num_classes"], num_classes)
            classes = None
    else:
        bb = W.resolve(tv_name, backbone_weights, "backbone_weights", enum=_backbone_enum(tv_name))
        if isinstance(bb, WeightsEnum):
            W.ensure_cached(tv_name, bb, "backbone_weights")
        elif bb is not None:
            raise ConfigError(f"backbone_weights: a local file is not supported for zoo model {tv_name}; "
                              f"give the whole model's file in 'weights' or use an assembled model")
        kwargs = {"num_classes": num_classes or official["num_classes"], "weights_backbone": bb}
        if "aux_loss" in official:
            kwargs["aux_loss"] = aux_loss
        model, _ = W.build_torchvision(tv_name, None, "weights", **kwargs)
        classes = W.categories(default) if kwargs["num_classes"] == official["num_classes"] else None
    preprocess = Preprocess.from_transforms((resolved if isinstance(resolved, WeightsEnum) else default).transforms(),
                                            resize_size=resize)
    return model, preprocess, classes


ZooBuilder = Callable[..., tuple]
ZOO: dict[str, ZooBuilder] = {
    name: partial(build_zoo, name)
    for name in ("fcn_resnet50", "fcn_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101",
                 "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large")
}
