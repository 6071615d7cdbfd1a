"""Image classification models: a ``classifier`` head over any registered backbone, and torchvision's
classifiers by name (``resnet18`` ... ``inception_v3``) with only their last linear layer replaced.

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
from typing import Callable, Optional

import torch
from torch import nn
from torchvision.models import WeightsEnum

from ..errors import ConfigError, unknown
from . import weights as W
from .backbones import BACKBONES, MOBILENET_V3_BOUNDS, Backbone
from .preprocess import Preprocess

POOLS = ("avg", "max", "avgmax")


# ------------------------------------------------------------------------------------ preprocess
def classification_preprocess(transforms: object, resize: Optional[int] = None) -> Preprocess:
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


def _family_enum(tv_name: str, resolved: W.Resolved) -> WeightsEnum:
    # Random or local weights preprocess like the family's DEFAULT ones (as backbones.py does).
    return resolved if isinstance(resolved, WeightsEnum) else W.weights_enum(tv_name).DEFAULT


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


def build_assembled(backbone: str, num_classes: int, backbone_weights: W.Spec = "DEFAULT",
                    pool: Optional[str] = None, dropout: Optional[float] = None, hidden: Optional[int] = None,
                    resize: Optional[int] = None) -> tuple[nn.Module, Preprocess]:
    """A registered backbone (stride 32) + ``ClassifierHead``, preprocessed as the backbone's weights."""
    if backbone not in BACKBONES:
        raise unknown("backbone", backbone, BACKBONES, "model.backbone")
    body = BACKBONES[backbone](backbone_weights, None, None)
    last = body.stage_names[-1]
    head = ClassifierHead(body.out_channels[last], num_classes, pool or "avg", dropout or 0.0, hidden)
    enum = _family_enum(backbone, W.resolve(backbone, backbone_weights, "model.backbone_weights"))
    return ClassificationModel(body, head), classification_preprocess(enum.transforms(), resize)


# ------------------------------------------------------------------------------ zoo classifiers
class StageView(nn.Module):
    """The backbone of a torchvision classifier as named stages over the model's own layers, ending in
    global pooling; ``forward`` gives the flattened pooled features the classifier layers read."""

    def __init__(self, stages: "OrderedDict[str, nn.Module]", head: tuple[str, ...],
                 prepare: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> None:
        super().__init__()
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


def _seq(*modules: nn.Module) -> nn.Sequential:
    return nn.Sequential(*modules)


def _resnet_stages(net: nn.Module) -> "OrderedDict[str, nn.Module]":
    return OrderedDict(stem=_seq(net.conv1, net.bn1, net.relu, net.maxpool), layer1=net.layer1,
                       layer2=net.layer2, layer3=net.layer3, layer4=_seq(net.layer4, net.avgpool))


def _cut(bounds: tuple[int, ...], pool: Callable[[nn.Module], nn.Module]):
    """``features`` cut at ``bounds`` into stem, layer1..layer4 (as backbones.py cuts them), then pooling."""
    def stages(net: nn.Module) -> "OrderedDict[str, nn.Module]":
        cuts = (0, *bounds, len(net.features))
        names = ("stem", "layer1", "layer2", "layer3", "layer4")
        out = OrderedDict((n, net.features[a:b]) for n, a, b in zip(names, cuts, cuts[1:]))
        out["layer4"] = _seq(*out["layer4"], pool(net))
        return out
    return stages


# Inception v3's stages are its own layer names (Keras' mixed0..mixed10 are Mixed_5b..Mixed_7c); the
# parameter-free max-pools ride with the conv before them.
INCEPTION_STAGES = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                    "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                    "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c")
_INCEPTION_TAIL = {"Conv2d_2b_3x3": "maxpool1", "Conv2d_4a_3x3": "maxpool2", "Mixed_7c": "avgpool"}


def _inception_stages(net: nn.Module) -> "OrderedDict[str, nn.Module]":
    return OrderedDict((name, _seq(getattr(net, name), getattr(net, _INCEPTION_TAIL[name]))
                        if name in _INCEPTION_TAIL else getattr(net, name)) for name in INCEPTION_STAGES)


@dataclass(frozen=True)
class ZooClassifier:
    """How to see torchvision classifier ``tv_name`` as stages + classifier layers."""

    tv_name: str
    stages: Callable[[nn.Module], "OrderedDict[str, nn.Module]"]
    head: tuple[str, ...]   # attributes applied to the pooled features, in order
    kwargs: Callable[[bool], dict] = lambda pretrained: {}


ZOO_CLASSIFIERS: dict[str, ZooClassifier] = {z.tv_name: z for z in (
    ZooClassifier("resnet18", _resnet_stages, ("fc",)),
    ZooClassifier("resnet50", _resnet_stages, ("fc",)),
    ZooClassifier("vgg16", _cut((5, 10, 17, 24), lambda net: net.avgpool), ("classifier",)),
    ZooClassifier("mobilenet_v2", _cut((2, 4, 7, 14), lambda net: nn.AdaptiveAvgPool2d((1, 1))), ("classifier",)),
    ZooClassifier("mobilenet_v3_large", _cut(MOBILENET_V3_BOUNDS, lambda net: net.avgpool), ("classifier",)),
    # The checkpoint has the auxiliary head and expects transform_input (torchvision sets both when
    # loading it); the aux head is dropped after loading, as torchvision does for aux_logits=False.
    ZooClassifier("inception_v3", _inception_stages, ("dropout", "fc"),
                  lambda pretrained: {"aux_logits": True, "transform_input": True, "init_weights": not pretrained}),
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


def attach_view(net: nn.Module, spec: ZooClassifier) -> nn.Module:
    """Give torchvision classifier ``net`` its ``backbone`` view (not registered: see the module doc)."""
    prepare = getattr(net, "_transform_input", None) if spec.tv_name == "inception_v3" else None
    object.__setattr__(net, "backbone", StageView(spec.stages(net), spec.head, prepare))
    return net


def build_zoo_classifier(name: str, weights: W.Spec = "DEFAULT", num_classes: Optional[int] = None,
                         resize: Optional[int] = None, aux_loss: Optional[bool] = None
                         ) -> tuple[nn.Module, Preprocess, Optional[list[str]]]:
    """torchvision classifier ``name`` with ``weights``; a new ``num_classes`` replaces only the last linear
    layer. Returns (model, preprocessing, class names: the weights' categories when kept)."""
    spec = ZOO_CLASSIFIERS[name]
    if aux_loss:
        raise ConfigError(f"model.aux_loss: not supported for classifier {name} (its auxiliary head is dropped)")
    resolved = W.resolve(name, weights, "model.weights")
    default = W.weights_enum(name).DEFAULT
    official = len(default.meta["categories"])
    # Always the official architecture first, so the checkpoint (or a local copy of it) loads strictly.
    net, _ = W.build_torchvision(name, resolved, "model.weights", num_classes=official,
                                 **spec.kwargs(resolved is not None))
    if getattr(net, "AuxLogits", None) is not None:
        net.aux_logits, net.AuxLogits = False, None
    classes = W.categories(resolved) or W.categories(default)
    if num_classes is not None and num_classes != official:
        parent, attr, old = _last_linear(net, spec.head)
        setattr(parent, attr, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))
        classes = None
    attach_view(net, spec)
    return net, classification_preprocess(_family_enum(name, resolved).transforms(), resize), classes


# --------------------------------------------------------------------------------- split forward
def is_classifier(model: nn.Module) -> bool:
    """Whether ``model`` is one of this module's classifiers (assembled, or zoo with its view)."""
    return isinstance(model, ClassificationModel) or isinstance(model.__dict__.get("backbone"), StageView)


def encode(model: nn.Module, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
    """``{"pooled": N x C}``: the backbone's globally pooled features (the input of the classifier layers)."""
    if isinstance(model, ClassificationModel):
        return OrderedDict(pooled=model.head.pool(next(reversed(model.backbone(x).values()))))
    return OrderedDict(pooled=model.backbone(x))


def decode(model: nn.Module, feats: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits from ``encode``'s features: ``decode(model, encode(model, x))`` equals ``model(x)``."""
    x = feats["pooled"]
    if isinstance(model, ClassificationModel):
        return model.head.classifier(x)
    for attr in model.backbone.head_names:
        x = getattr(model, attr)(x)
    return x


def classifier_names() -> list[str]:
    return sorted(ZOO_CLASSIFIERS)
