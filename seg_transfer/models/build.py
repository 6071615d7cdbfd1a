"""Model config -> ``nn.Module``: the one place that combines the backbone, neck, head and zoo registries."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig, from_dict, to_dict
from ..errors import ConfigError, unknown
from . import weights as W
from .backbones import BACKBONES, Backbone
from .classification import ZOO_CLASSIFIERS, build_assembled, build_zoo_classifier
from .detection import DETECTION_HEADS, DETECTION_ZOO, build_detector, is_detection
from .heads import HEADS, aux_head
from .necks import NECKS
from .preprocess import Preprocess
from .zoo import ZOO

# Which necks each head can sit on: DeepLabV3 and LR-ASPP carry their own context module,
# and the semantic-FPN head merges a pyramid, so it needs the FPN neck.
HEAD_NECKS: dict[str, tuple[str, ...]] = {
    "fcn": ("none", "fpn", "aspp"),
    "deeplabv3": ("none", "fpn"),
    "lraspp": ("none", "fpn"),
    "fpn": ("fpn",),
}
assert set(HEAD_NECKS) == set(HEADS)


@dataclass
class ModelInfo:
    """What travels with a model: class names, preprocessing and the config that rebuilds it."""

    classes: list[str]
    preprocess: Preprocess
    config: dict[str, Any] = field(default_factory=dict)
    task: str = "segmentation"
    # The transfer report of a backbone taken from another seg_transfer checkpoint (backbone_weights).
    transfer: Any = None


class SegmentationModel(nn.Module):
    """backbone -> neck -> head, logits upsampled to the input size as ``{"out", "aux"}`` like torchvision."""

    def __init__(self, backbone: Backbone, neck: nn.Module, head: nn.Module,
                 aux: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.backbone, self.neck, self.head, self.aux_classifier = backbone, neck, head, aux

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        feats = self.backbone(x)
        out = {"out": F.interpolate(self.head(self.neck(feats)), size=size, mode="bilinear", align_corners=False)}
        if self.aux_classifier is not None:
            out["aux"] = F.interpolate(self.aux_classifier(feats["layer3"]), size=size, mode="bilinear",
                                       align_corners=False)
        return out


def model_names() -> dict[str, list[str]]:
    """Everything buildable, by registry."""
    return {"zoo": sorted(ZOO), "backbones": sorted(BACKBONES), "necks": sorted(NECKS), "heads": sorted(HEADS),
            "classifiers": sorted(ZOO_CLASSIFIERS), "detectors": sorted(DETECTION_ZOO),
            "detection_heads": sorted(DETECTION_HEADS)}


# The image-classification head: global pooling -> dropout -> [hidden] -> linear, on any backbone.
CLASSIFIER_HEAD = "classifier"


def _build_classifier(cfg: ModelConfig) -> tuple[nn.Module, Preprocess, Optional[list[str]]]:
    """A zoo classifier by name, or a backbone with the ``classifier`` head (task: classification)."""
    if cfg.output_stride not in (None, 32):
        raise ConfigError("model.output_stride: classifiers run at output stride 32")
    num_classes = len(cfg.classes) if cfg.classes is not None else cfg.num_classes
    if cfg.name is not None:
        if cfg.backbone is not None or cfg.head is not None:
            raise ConfigError("model: give either 'name' (a zoo model) or 'backbone' + 'head', not both")
        if (cfg.pool, cfg.dropout, cfg.hidden) != (None, None, None):
            raise ConfigError(f"model: pool/dropout/hidden belong to the '{CLASSIFIER_HEAD}' head; zoo classifier "
                              f"{cfg.name} keeps torchvision's classifier layers")
        return build_zoo_classifier(cfg.name, cfg.weights, num_classes, cfg.resize, cfg.aux_loss)
    if cfg.neck != "none":
        raise ConfigError(f"model: head '{CLASSIFIER_HEAD}' pools the last stage; it takes neck 'none', "
                          f"not '{cfg.neck}'")
    if cfg.aux_loss:
        raise ConfigError(f"model.aux_loss: head '{CLASSIFIER_HEAD}' has no auxiliary head")
    whole = None if cfg.weights is None or cfg.weights.lower() in ("default", "none", "null") else cfg.weights
    _, classes = _class_names(num_classes, None, None)
    model, preprocess = build_assembled(cfg.backbone, len(classes), None if whole else cfg.backbone_weights,
                                        cfg.pool, cfg.dropout, cfg.hidden, cfg.resize)
    if whole:
        W.load_into(model, W.read_state_dict(W.resolve("", whole, "model.weights")), whole)
    return model, preprocess, None


def _class_names(num_classes: Optional[int], classes: Optional[list[str]],
                 default: Optional[list[str]]) -> tuple[int, list[str]]:
    if classes is not None:
        if num_classes is not None and num_classes != len(classes):
            raise ConfigError(f"model.classes: {len(classes)} names given but model.num_classes is {num_classes}")
        return len(classes), list(classes)
    if num_classes is None and default is None:
        raise ConfigError("model.num_classes: required (or give model.classes) for an assembled model")
    if default is not None and (num_classes is None or num_classes == len(default)):
        return len(default), list(default)
    return num_classes, [f"class_{i}" for i in range(num_classes)]


def _assemble(cfg: ModelConfig) -> tuple[nn.Module, Preprocess, Optional[list[str]]]:
    if cfg.backbone not in BACKBONES:
        raise unknown("backbone", cfg.backbone, BACKBONES, "model.backbone")
    if cfg.neck not in NECKS:
        raise unknown("neck", cfg.neck, NECKS, "model.neck")
    if cfg.head not in HEADS:
        raise unknown("head", cfg.head, [*HEADS, CLASSIFIER_HEAD, *DETECTION_HEADS], "model.head")
    if cfg.neck not in HEAD_NECKS[cfg.head]:
        raise ConfigError(f"model: head '{cfg.head}' cannot sit on neck '{cfg.neck}'; "
                          f"valid necks for it: {', '.join(HEAD_NECKS[cfg.head])}")
    whole = W.assembled_weights(cfg.weights)
    num_classes, _ = _class_names(cfg.num_classes, cfg.classes, None)
    backbone = BACKBONES[cfg.backbone](None if whole else cfg.backbone_weights, cfg.output_stride,
                                       520 if cfg.resize is None else cfg.resize)
    neck = NECKS[cfg.neck](backbone.out_channels, cfg.neck_channels, cfg.output_stride)
    head = HEADS[cfg.head](neck.out_channels, backbone.strides, num_classes, cfg.output_stride)
    aux = aux_head(backbone.out_channels["layer3"], num_classes) if cfg.aux_loss else None
    model = SegmentationModel(backbone, neck, head, aux)
    if whole:
        W.load_into(model, W.read_state_dict(W.resolve("", whole, "model.weights")), whole)
    return model, backbone.preprocess, None


def _toolkit_checkpoint(spec: Optional[str]) -> Optional[Path]:
    """``spec`` as a seg_transfer checkpoint file (of any task), else None."""
    if spec is None or not W.is_local_spec(spec) or not Path(spec).expanduser().is_file():
        return None
    from .checkpoint import is_checkpoint  # checkpoint.py builds models through this module
    return Path(spec).expanduser() if is_checkpoint(Path(spec).expanduser()) else None


def build_model(cfg: ModelConfig | dict[str, Any]) -> nn.Module:
    """Build the model a ``model:`` config block describes; the result carries ``.info`` (a ``ModelInfo``)."""
    cfg = from_dict(ModelConfig, cfg, "model")
    source = _toolkit_checkpoint(cfg.backbone_weights)
    if source is not None:
        # Another seg_transfer model's backbone, of any task: build without one, then load its stages.
        if cfg.name is not None and str(cfg.weights).lower() not in ("none", "null", ""):
            raise ConfigError(f"model.backbone_weights: {source} is used only with model.weights: null "
                              f"(zoo model {cfg.name} would otherwise load its own pretrained weights)")
        from ..backbone_transfer import load_backbone_checkpoint  # sits above models: imported on use
        model = build_model(dataclasses.replace(cfg, backbone_weights=None))
        model.info.transfer = load_backbone_checkpoint(model, source)
        model.info.config["backbone_weights"] = str(source)
        return model
    if is_detection(cfg):
        model, preprocess, classes = build_detector(cfg)
        model.info = ModelInfo(classes=classes, preprocess=preprocess, config=to_dict(cfg), task="detection")
        return model
    if cfg.name in ZOO_CLASSIFIERS or (cfg.name is None and cfg.head == CLASSIFIER_HEAD):
        model, preprocess, default_classes = _build_classifier(cfg)
        _, classes = _class_names(cfg.num_classes, cfg.classes, default_classes)
        model.info = ModelInfo(classes=classes, preprocess=preprocess, config=to_dict(cfg), task="classification")
        return model
    if cfg.name is not None:
        if cfg.backbone is not None or cfg.head is not None:
            raise ConfigError("model: give either 'name' (a zoo model) or 'backbone' + 'head', not both")
        if cfg.name not in ZOO:
            raise unknown("model", cfg.name, [*ZOO, *ZOO_CLASSIFIERS, *DETECTION_ZOO], "model.name")
        num_classes = len(cfg.classes) if cfg.classes is not None else cfg.num_classes
        model, preprocess, default_classes = ZOO[cfg.name](
            weights=cfg.weights, backbone_weights=cfg.backbone_weights, num_classes=num_classes,
            aux_loss=cfg.aux_loss, resize=cfg.resize)
        if cfg.output_stride is not None:
            raise ConfigError("model.output_stride: zoo models keep torchvision's stride; use an assembled model")
    elif cfg.backbone is not None and cfg.head is not None:
        model, preprocess, default_classes = _assemble(cfg)
    else:
        raise ConfigError(f"model: give 'name' (one of {', '.join(sorted(ZOO))}) or both 'backbone' and 'head'")
    num_classes, classes = _class_names(cfg.num_classes, cfg.classes, default_classes)
    model.info = ModelInfo(classes=classes, preprocess=preprocess, config=to_dict(cfg))
    return model


def create_model(name: Optional[str] = None, **kwargs: Any) -> nn.Module:
    """Python API: ``create_model("fcn_resnet50")`` or ``create_model(backbone="resnet50", neck="fpn",
    head="fpn", num_classes=5)``; keyword arguments are those of the ``model:`` config block."""
    return build_model({"name": name, **kwargs})


def torchvision_builders() -> list[str]:
    """The torchvision builders whose weights the registries can load (for ``seg-transfer weights``)."""
    return sorted(ZOO) + sorted(BACKBONES) + sorted(set(ZOO_CLASSIFIERS) - set(BACKBONES)) + sorted(DETECTION_ZOO)
