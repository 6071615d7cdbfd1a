"""Image classification models: a ``classifier`` head over any registered backbone (``HEADS``), and
torchvision's classifiers by name (``ZOO``: ``resnet18`` ... ``inception_v3``) with only their last
linear layer replaced.

Both kinds expose what the rest of the toolkit relies on: ``model.backbone`` with ``stage_names`` and
``stage(name)`` (freezing, LR groups, the feature cache) and a forward split at the pooled features
(``encode`` / ``decode``, so a frozen backbone's pooled features can be cached).

Zoo classifiers stay torchvision's own modules, so their state-dict names are the official checkpoint's
(the transfer report and class-aware init compare names with the source file); their ``backbone`` is a
*view*: containers over the model's own layers, kept outside the module tree so no parameter is listed
twice.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Optional, cast

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError, unknown
from . import weights as W
from .backbones import BACKBONES, Backbone, backbone_transforms, build_backbone
from .preprocess import Built, Preprocess
from .stages import inception_stages

POOLS = ("avg", "max", "avgmax")


def classification_preprocess(transforms: Any, resize: Optional[int] = None) -> Preprocess:
    """A classification preset (``weights.transforms()``: resize shorter side, centre crop, normalise).

    ``resize`` None keeps the preset's sizes; N resizes the shorter side to N and crops the preset's
    share of it (224/256 for most ImageNet weights); 0 neither resizes nor crops.
    """
    base = Preprocess.from_transforms(transforms, resize_size=resize)
    crop = transforms.crop_size[0]
    if resize is None:
        return dataclasses.replace(base, crop_size=crop)
    if resize == 0:
        return base
    return dataclasses.replace(base, crop_size=max(1, round(resize * crop / transforms.resize_size[0])))


# --------------------------------------------------------------------------------- the head
class GlobalPool(nn.Module):
    """N x C x H x W -> N x C (``avg``, ``max``) or N x 2C (``avgmax``: both, concatenated)."""

    def __init__(self, pool: str = "avg") -> None:
        super().__init__()
        if pool not in POOLS:
            raise unknown("pool", pool, POOLS, "model.pool")
        self.pool = pool

    @property
    def factor(self) -> int:
        return 2 if self.pool == "avgmax" else 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool == "avg":
            return x.mean((2, 3))
        if self.pool == "max":
            return x.amax((2, 3))
        return torch.cat([x.mean((2, 3)), x.amax((2, 3))], 1)


class ClassifierHead(nn.Module):
    """Global pooling -> dropout -> [linear ``hidden`` -> ReLU -> dropout] -> linear ``num_classes``
    (the Keras recipe's GlobalAveragePooling2D + Dense(1024) + Dense(classes) with ``hidden: 1024``)."""

    def __init__(self, in_channels: int, num_classes: int, pool: str = "avg", dropout: float = 0.0,
                 hidden: Optional[int] = None) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"model.dropout: expected a probability in [0, 1), got {dropout!r}")
        if hidden is not None and (isinstance(hidden, bool) or hidden < 1):
            raise ConfigError(f"model.hidden: expected a positive number of units, got {hidden!r}")
        self.pool = GlobalPool(pool)
        width = in_channels * self.pool.factor
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        if hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.classifier = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(x))


class ClassificationModel(nn.Module):
    """backbone -> its last stage's features -> ``ClassifierHead`` -> logits N x num_classes."""

    def __init__(self, backbone: Backbone, head: ClassifierHead) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(next(reversed(self.backbone(x).values())))


def classifier_head(in_channels: int, num_classes: int, cfg: ModelConfig) -> ClassifierHead:
    return ClassifierHead(in_channels, num_classes, cfg.pool or "avg", cfg.dropout or 0.0, cfg.hidden)


@dataclass(frozen=True)
class ClassificationHead:
    """An image-classification head: its builder ``(in_channels, num_classes, cfg)`` over the last
    stage, and the necks it can sit on."""

    build: Callable[[int, int, ModelConfig], ClassifierHead]
    necks: tuple[str, ...] = ("none",)


# global pooling -> dropout -> [hidden] -> linear, on any backbone
HEADS: dict[str, ClassificationHead] = {"classifier": ClassificationHead(classifier_head)}


def _check_stride(cfg: ModelConfig) -> None:
    if cfg.output_stride not in (None, 32):
        raise ConfigError("model.output_stride: classifiers run at output stride 32")


def build_assembled(cfg: ModelConfig, backbone_weights: W.Spec) -> Built:
    """A registered backbone (stride 32) + a classification head, preprocessed as the backbone's weights."""
    _check_stride(cfg)
    if cfg.neck != "none":
        raise ConfigError(f"model: head '{cfg.head}' pools the last stage; it takes neck 'none', "
                          f"not '{cfg.neck}'")
    if cfg.aux_loss:
        raise ConfigError(f"model.aux_loss: head '{cfg.head}' has no auxiliary head")
    classes = W.class_names(cfg.num_classes, cfg.classes, None)
    body = build_backbone(str(cfg.backbone), backbone_weights, None, None)
    last = body.stage_names[-1]
    head = HEADS[str(cfg.head)].build(body.out_channels[last], len(classes), cfg)
    transforms = backbone_transforms(str(cfg.backbone), backbone_weights)
    return ClassificationModel(body, head), classification_preprocess(transforms, cfg.resize), classes


# ------------------------------------------------------------------------------ zoo classifiers
class StageView(nn.Module):
    """The backbone of a torchvision classifier as named stages over the model's own layers, ending in
    global pooling; ``forward`` gives the flattened pooled features the classifier layers read."""

    def __init__(self, stages: OrderedDict[str, nn.Module], pool: nn.Module, head: tuple[str, ...],
                 prepare: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> None:
        super().__init__()
        stages = OrderedDict(stages)
        last = next(reversed(stages))
        stages[last] = nn.Sequential(stages[last], pool)  # pooling rides with the last stage
        self.stage_names = list(stages)
        self.stages = nn.Sequential(stages)
        self.head_names = head          # the model's attributes applied after the pooled features
        self.prepare = prepare          # input transform inside the model (Inception's transform_input)

    def stage(self, name: str) -> nn.Module:
        return self.stages[self.stage_names.index(name)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.prepare is not None:
            x = self.prepare(x)
        return torch.flatten(self.stages(x), 1)


def _avgpool(net: nn.Module) -> nn.Module:
    return cast(nn.Module, net.avgpool)


def _new_avgpool(net: nn.Module) -> nn.Module:
    # torchvision's MobileNetV2 pools functionally in forward: a module for the view to run
    return nn.AdaptiveAvgPool2d((1, 1))


def _no_kwargs(pretrained: bool) -> dict[str, Any]:
    return {}


def _inception_kwargs(pretrained: bool) -> dict[str, Any]:
    # The checkpoint has the auxiliary head and expects transform_input (torchvision sets both when
    # loading it); the aux head is dropped after loading, as torchvision does for aux_logits=False.
    return {"aux_logits": True, "transform_input": True, "init_weights": not pretrained}


@dataclass(frozen=True)
class ClassifierZoo:
    """How to see torchvision classifier ``tv_name`` as stages (its backbone entry's split, or ``split``)
    + global pooling + classifier layers."""

    tv_name: str
    head: tuple[str, ...]   # attributes applied to the pooled features, in order
    pool: Callable[[nn.Module], nn.Module] = _avgpool
    kwargs: Callable[[bool], dict[str, Any]] = _no_kwargs
    split: Optional[Callable[[nn.Module], OrderedDict[str, nn.Module]]] = None  # None: BACKBONES[tv_name].split


ZOO: dict[str, ClassifierZoo] = {z.tv_name: z for z in (
    ClassifierZoo("resnet18", ("fc",)),
    ClassifierZoo("resnet50", ("fc",)),
    ClassifierZoo("vgg16", ("classifier",)),
    ClassifierZoo("mobilenet_v2", ("classifier",), _new_avgpool),
    ClassifierZoo("mobilenet_v3_large", ("classifier",)),
    ClassifierZoo("inception_v3", ("dropout", "fc"), kwargs=_inception_kwargs, split=inception_stages),
)}


def _last_linear(net: nn.Module, head: tuple[str, ...]) -> tuple[nn.Module, str, nn.Linear]:
    """(parent, attribute, layer) of the last ``nn.Linear`` among the classifier layers."""
    found = None
    for attr in head:
        module = getattr(net, attr)
        if isinstance(module, nn.Linear):
            found = (net, attr, module)
        for name, m in module.named_modules():
            if name and isinstance(m, nn.Linear):
                parent = module.get_submodule(name.rpartition(".")[0]) if "." in name else module
                found = (parent, name.rpartition(".")[2], m)
    assert found is not None, f"no linear layer in {head}"
    return found


def attach_view(net: nn.Module, spec: ClassifierZoo) -> nn.Module:
    """Give torchvision classifier ``net`` its ``backbone`` view (not registered: see the module doc)."""
    prepare = getattr(net, "_transform_input", None) if spec.tv_name == "inception_v3" else None
    split = spec.split or BACKBONES[spec.tv_name].split
    object.__setattr__(net, "backbone", StageView(split(net), spec.pool(net), spec.head,
                                                  prepare))
    return net


def build_zoo(cfg: ModelConfig) -> Built:
    """torchvision classifier ``cfg.name`` with ``cfg.weights``; a new class count replaces only the last
    linear layer. Class names: the weights' categories when kept."""
    spec = ZOO[str(cfg.name)]
    name = spec.tv_name
    _check_stride(cfg)
    if (cfg.pool, cfg.dropout, cfg.hidden) != (None, None, None):
        raise ConfigError(f"model: pool/dropout/hidden belong to the 'classifier' head; zoo classifier "
                          f"{name} keeps torchvision's classifier layers")
    if cfg.aux_loss:
        raise ConfigError(f"model.aux_loss: not supported for classifier {name} (its auxiliary head is dropped)")
    num_classes = len(cfg.classes) if cfg.classes is not None else cfg.num_classes
    resolved = W.resolve(name, cfg.weights, "model.weights")
    family = W.enum_or_default(name, resolved)
    official = len(family.meta["categories"])
    # Always the official architecture first, so the checkpoint (or a local copy of it) loads strictly.
    net, _ = W.build_torchvision(name, resolved, "model.weights", num_classes=official,
                                 **spec.kwargs(resolved is not None))
    if getattr(net, "AuxLogits", None) is not None:
        net.aux_logits, net.AuxLogits = False, None  # type: ignore[assignment]  # torch's __setattr__ stub: modules/tensors only
    default = W.categories(family)
    if num_classes is not None and num_classes != official:
        parent, attr, old = _last_linear(net, spec.head)
        setattr(parent, attr, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))
        default = None
    attach_view(net, spec)
    preprocess = classification_preprocess(family.transforms(), cfg.resize)
    return net, preprocess, W.class_names(cfg.num_classes, cfg.classes, default)


# --------------------------------------------------------------------------------- split forward
def can_split(model: nn.Module) -> bool:
    """Whether ``model`` is one of this module's classifiers (assembled, or zoo with its view)."""
    return isinstance(model, ClassificationModel) or isinstance(model.__dict__.get("backbone"), StageView)


def encode(model: nn.Module, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
    """``{"pooled": N x C}``: the backbone's globally pooled features (the input of the classifier layers)."""
    if isinstance(model, ClassificationModel):
        return OrderedDict(pooled=model.head.pool(next(reversed(model.backbone(x).values()))))
    return OrderedDict(pooled=cast(StageView, model.backbone)(x))  # a zoo classifier: attach_view's StageView


def decode(model: nn.Module, feats: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits from ``encode``'s features: ``decode(model, encode(model, x))`` equals ``model(x)``."""
    x = feats["pooled"]
    if isinstance(model, ClassificationModel):
        return model.head.classifier(x)
    for attr in cast(StageView, model.backbone).head_names:  # a zoo classifier: attach_view's StageView
        x = getattr(model, attr)(x)
    return x
