"""Detectors: torchvision's zoo detectors by name, and Faster R-CNN / RetinaNet / FCOS / SSD / SSDlite assembled over the
registered backbones from torchvision's parts (``FasterRCNN``, ``SSD``, anchor generators, predictors).

Conventions are torchvision's: class 0 is ``__background__`` and ``num_classes`` counts it; the model
takes a list of 3xHxW float images in [0, 1] and resizes and normalises them itself
(``GeneralizedRCNNTransform``), so the preprocessing that travels with a detector only scales to [0, 1],
as the weights' ``ObjectDetection`` preset does. Channel counts are read from the backbone, never typed.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from itertools import chain
from typing import Any, Callable, Optional, Sequence, cast

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import WeightsEnum
from torchvision.models.detection._utils import retrieve_out_channels
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
from torchvision.models.detection.faster_rcnn import FasterRCNN, FastRCNNPredictor
from torchvision.models.detection.fcos import FCOS, FCOSClassificationHead
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.models.detection.retinanet import RetinaNet, RetinaNetClassificationHead
from torchvision.models.detection.ssd import SSD, SSDFeatureExtractorVGG, SSDScoringHead
from torchvision.models.detection.ssdlite import SSDLiteFeatureExtractorMobileNet, SSDLiteHead
from torchvision.ops import MultiScaleRoIAlign

from ..config import ModelConfig
from ..errors import ConfigError
from . import weights as W
from .backbones import Backbone, build_backbone, features, stage_of
from .necks import NECKS, Neck
from .preprocess import Built, Preprocess

BACKGROUND = "__background__"


def is_detector(model: nn.Module) -> bool:
    """Whether ``model`` was built as a detector (its ``info.task``)."""
    return getattr(getattr(model, "info", None), "task", None) == "detection"


def detection_preprocess() -> Preprocess:
    """torchvision's ``ObjectDetection`` preset: uint8 -> float in [0, 1], nothing else (the model
    resizes and normalises inside, with its own mean/std)."""
    return Preprocess(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), resize_size=None)


def with_background(classes: Sequence[str]) -> list[str]:
    """``[__background__, *classes]``; a list that already starts with it is kept as it is."""
    classes = list(classes)
    return classes if classes and classes[0] in (BACKGROUND, "background") else [BACKGROUND, *classes]


def detection_classes(num_classes: Optional[int], classes: Optional[Sequence[str]],
                      default: Optional[Sequence[str]]) -> list[str]:
    """Class names, background first. ``num_classes`` counts the background (torchvision's convention),
    ``classes`` may list it or not."""
    if classes is not None:
        names = with_background(classes)
        if num_classes is not None and num_classes != len(names):
            raise ConfigError(f"model.num_classes: {num_classes} given, but model.classes names {len(names) - 1} "
                              f"object classes; detectors count the background too (num_classes {len(names)})")
        return names
    if num_classes is None:
        if default is None:
            raise ConfigError("model.num_classes: required (or give model.classes) for an assembled detector")
        return list(default)
    if num_classes < 2:
        raise ConfigError(f"model.num_classes: a detector needs the background and at least one object class "
                          f"(num_classes >= 2), got {num_classes}")
    if default is not None and num_classes == len(default):
        return list(default)
    return [BACKGROUND, *(f"class_{i}" for i in range(1, num_classes))]


# ---------------------------------------------------------------------------- class predictors
@dataclass(frozen=True)
class ClassTensor:
    """A predictor module whose output rows are laid out per class: for anchor ``a`` (of ``anchors``)
    and class ``c`` (of C), rows ``(a * C + c) * per_class ... + per_class``."""

    module: str
    anchors: int = 1
    per_class: int = 1

    def rows(self, c: int, num_classes: int) -> list[int]:
        return [(a * num_classes + c) * self.per_class + j for a in range(self.anchors) for j in range(self.per_class)]


def class_tensors(model: nn.Module) -> list[ClassTensor]:
    """Every module of ``model`` whose outputs are indexed by class (what a new ``num_classes`` replaces)."""
    found: list[ClassTensor] = []
    roi_heads = getattr(model, "roi_heads", None)
    if roi_heads is not None:  # Faster/Mask R-CNN
        found += [ClassTensor("roi_heads.box_predictor.cls_score"),
                  ClassTensor("roi_heads.box_predictor.bbox_pred", per_class=4)]
        if getattr(roi_heads, "mask_predictor", None) is not None:
            found.append(ClassTensor("roi_heads.mask_predictor.mask_fcn_logits"))
    head = getattr(model, "head", None)
    cls_head = getattr(head, "classification_head", None)
    if isinstance(cls_head, SSDScoringHead):  # SSD, SSDlite: one conv per feature map
        anchors = _anchors_per_location(model)
        for i, (name, _) in enumerate(_last_convs(cls_head)):
            found.append(ClassTensor(f"head.classification_head.{name}", anchors=anchors[i]))
    elif isinstance(cls_head, (RetinaNetClassificationHead, FCOSClassificationHead)):
        found.append(ClassTensor("head.classification_head.cls_logits", anchors=cls_head.num_anchors))
    return found


def _anchors_per_location(model: nn.Module) -> list[int]:
    """An SSD's anchors per location of each feature map."""
    anchor_generator: Any = model.anchor_generator  # torchvision's DefaultBoxGenerator (untyped)
    return anchor_generator.num_anchors_per_location()


def _last_convs(head: SSDScoringHead) -> list[tuple[str, nn.Conv2d]]:
    """The final conv of each of an SSD scoring head's blocks (SSD: the block is the conv)."""
    out = []
    for i, block in enumerate(head.module_list):
        if isinstance(block, nn.Conv2d):
            out.append((f"module_list.{i}", block))
        else:
            name, conv = [(n, m) for n, m in block.named_modules() if isinstance(m, nn.Conv2d)][-1]
            out.append((f"module_list.{i}.{name}", conv))
    return out


def _fresh_conv(old: nn.Conv2d, out_channels: int) -> nn.Conv2d:
    """``old``'s geometry with ``out_channels`` outputs: small normal weights (std 0.01, as RetinaNet's
    ``cls_logits``) and zero bias, so new classes start near-uniform."""
    # torch's stubs type these attributes tuple[int, ...], the same parameters int | tuple[int, int]
    new = nn.Conv2d(old.in_channels, out_channels,
                    old.kernel_size, old.stride, old.padding, old.dilation,  # type: ignore[arg-type]  # torch stub mismatch
                    old.groups, old.bias is not None)
    nn.init.normal_(new.weight, std=0.01)
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    return new


def replace_class_predictors(model: nn.Module, num_classes: int) -> list[str]:
    """Re-create only the class-indexed predictors for ``num_classes`` (background included); box
    regression of SSD/RetinaNet and every feature layer keep their weights. Returns the modules replaced."""
    replaced = []
    roi_heads = getattr(model, "roi_heads", None)
    if roi_heads is not None:
        roi_heads.box_predictor = FastRCNNPredictor(roi_heads.box_predictor.cls_score.in_features, num_classes)
        replaced.append("roi_heads.box_predictor")
        if getattr(roi_heads, "mask_predictor", None) is not None:
            old = roi_heads.mask_predictor.conv5_mask
            roi_heads.mask_predictor = MaskRCNNPredictor(old.in_channels, old.out_channels, num_classes)
            replaced.append("roi_heads.mask_predictor")
        return replaced
    head: Any = model.head  # torchvision's SSD/RetinaNet head (untyped)
    cls_head = head.classification_head
    if isinstance(cls_head, SSDScoringHead):
        anchors = _anchors_per_location(model)
        for (name, conv), a in zip(_last_convs(cls_head), anchors):
            parent = cls_head.get_submodule(name.rpartition(".")[0])
            setattr(parent, name.rpartition(".")[2], _fresh_conv(conv, a * num_classes))
            replaced.append(f"head.classification_head.{name}")
        cls_head.num_columns = num_classes
    elif isinstance(cls_head, (RetinaNetClassificationHead, FCOSClassificationHead)):
        old = cls_head.cls_logits
        cls_head.cls_logits = _fresh_conv(old, cls_head.num_anchors * num_classes)
        # RetinaNet's (and FCOS's) focal-loss prior: start every class at probability 0.01, as torchvision does.
        nn.init.constant_(cls_head.cls_logits.bias, -torch.log(torch.tensor((1 - 0.01) / 0.01)).item())
        cls_head.num_classes = num_classes
        replaced.append("head.classification_head.cls_logits")
    else:
        raise ConfigError(f"model.num_classes: cannot find the class predictor of {type(model).__name__}")
    return replaced


# ------------------------------------------------------------------------------------ input size
def set_input_size(model: nn.Module, resize: Optional[int]) -> None:
    """``resize``: the shorter side the detector resizes to (R-CNN/RetinaNet keep their max/min ratio),
    or the side of SSD's fixed square input (anchors then follow the feature-map grid)."""
    if not resize:
        return
    t: Any = model.transform  # torchvision's GeneralizedRCNNTransform (untyped)
    if t.fixed_size is not None:
        t.fixed_size, t.min_size, t.max_size = (resize, resize), (resize,), resize
        anchor_generator: Any = model.anchor_generator  # torchvision's DefaultBoxGenerator (untyped)
        anchor_generator.steps = None  # torchvision's steps are tuned to 300/320 px
    else:
        t.max_size = max(resize, round(resize * t.max_size / t.min_size[0]))
        t.min_size = (resize,)


def _train_all(model: nn.Module) -> nn.Module:
    # torchvision freezes early layers itself (trainable_backbone_layers); here the freeze: config
    # decides (transfer.apply_freeze). FrozenBatchNorm2d layers of pretrained models stay frozen.
    for p in model.parameters():
        p.requires_grad_(True)
    return model


# ------------------------------------------------------------------------------------------ zoo
@dataclass(frozen=True)
class DetectorZoo:
    """A torchvision detector by builder name."""

    tv_name: str


ZOO: dict[str, DetectorZoo] = {name: DetectorZoo(name) for name in (
    "fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2", "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn", "ssd300_vgg16", "ssdlite320_mobilenet_v3_large",
    "retinanet_resnet50_fpn_v2", "maskrcnn_resnet50_fpn")}


def build_zoo(cfg: ModelConfig) -> Built:
    """A torchvision detector by name; a new ``num_classes`` replaces only its class predictors."""
    tv_name = ZOO[str(cfg.name)].tv_name
    if cfg.output_stride is not None:
        raise ConfigError("model.output_stride: zoo models keep torchvision's stride; use an assembled model")
    _check_no_aux(cfg)
    resolved = W.resolve(tv_name, cfg.weights, "weights")
    official = len(W.weights_enum(tv_name).DEFAULT.meta["categories"])
    names = detection_classes(cfg.num_classes, cfg.classes, W.categories(W.enum_or_default(tv_name, resolved)))
    if resolved is not None:
        # The saved architecture first (no backbone download: the whole model's file covers it).
        model, _ = W.build_torchvision(tv_name, resolved, "weights", weights_backbone=None, num_classes=official)
        if len(names) != official:
            replace_class_predictors(model, len(names))
    else:
        enum, default_bb = W.backbone_weights_enum(tv_name)
        bb = W.resolve(tv_name, cfg.backbone_weights, "backbone_weights", enum=enum)
        if isinstance(bb, WeightsEnum) and default_bb is not None \
                and str(cfg.backbone_weights).split(".")[-1] == "DEFAULT":
            # DEFAULT means the builder's own choice: SSD300 normalises for VGG16's IMAGENET1K_FEATURES,
            # the R-CNNs were trained from ResNet-50's IMAGENET1K_V1, not the enums' newest entries.
            bb = default_bb
        if isinstance(bb, WeightsEnum):
            W.ensure_cached(tv_name, bb, "backbone_weights")
        elif bb is not None:
            raise ConfigError(f"backbone_weights: a plain .pth file is not supported for zoo model {tv_name}; "
                              f"give the whole model's file in 'weights', or a seg_transfer checkpoint")
        model, _ = W.build_torchvision(tv_name, None, "weights", num_classes=len(names), weights_backbone=bb)
    set_input_size(model, cfg.resize)
    return _train_all(model), detection_preprocess(), names


# ------------------------------------------------------------------------------------ assembled
class DetectorBackbone(nn.Module):
    """A registered backbone's stages (+ an FPN neck) as torchvision's detectors want a backbone: an int
    ``out_channels`` and a dict of feature maps. Stage tensors keep the names of assembled segmentation
    models (``backbone.body.<stage>...``), so checkpoints of either task share them."""

    def __init__(self, backbone: Backbone, neck: Optional[Neck]) -> None:
        super().__init__()
        self.body, self.stage_names, self.neck = backbone.body, list(backbone.stage_names), neck
        self.pyramid = backbone.pyramid  # a plain ViT's levels (None for the others: no state-dict names)
        self.last = list(backbone.out_channels)[-1]
        self.out_channels = (next(iter(neck.out_channels.values())) if neck is not None
                             else backbone.out_channels[self.last])
        # FPN: every stage plus a max-pooled level, as torchvision's BackboneWithFPN; no neck: the last stage.
        self.levels = [*backbone.out_channels, "pool"] if neck is not None else [self.last]

    def stage(self, name: str) -> nn.Module:
        return stage_of(self.body, self.pyramid, name)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = features(self.body, self.pyramid, x)
        if self.neck is None:
            return OrderedDict([(self.last, feats[self.last])])
        out = OrderedDict(self.neck(feats))
        out["pool"] = F.max_pool2d(out[self.last], 1, 2, 0)  # torchvision's LastLevelMaxPool
        return out


def _detector_backbone(backbone: Backbone, cfg: ModelConfig) -> DetectorBackbone:
    neck = NECKS["fpn"](backbone.out_channels, cfg.neck_channels, None) if cfg.neck == "fpn" else None
    return DetectorBackbone(backbone, neck)


def _normalised(backbone: Backbone) -> dict[str, Any]:
    """The detector's own normalisation: the backbone weights' mean and std."""
    return {"image_mean": list(backbone.preprocess.mean), "image_std": list(backbone.preprocess.std)}


def _fasterrcnn(backbone: Backbone, cfg: ModelConfig, num_classes: int) -> nn.Module:
    body = _detector_backbone(backbone, cfg)
    # torchvision's Faster R-CNN anchors: one size per pyramid level, or all sizes on a single map.
    sizes = (32, 64, 128, 256, 512)
    if len(body.levels) > 1:
        anchors = AnchorGenerator(tuple((s,) for s in sizes[:len(body.levels)]), ((0.5, 1.0, 2.0),) * len(body.levels))
    else:
        anchors = AnchorGenerator((sizes,), ((0.5, 1.0, 2.0),))
    roi_pool = MultiScaleRoIAlign([lv for lv in body.levels if lv != "pool"], output_size=7, sampling_ratio=2)
    return FasterRCNN(body, num_classes, rpn_anchor_generator=anchors, box_roi_pool=roi_pool, **_normalised(backbone))


def _retinanet(backbone: Backbone, cfg: ModelConfig, num_classes: int) -> nn.Module:
    """torchvision's RetinaNet over the FPN of any backbone: 3 scales x 3 ratios per level, as its builder."""
    body = _detector_backbone(backbone, cfg)
    sizes = [(s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in (32, 64, 128, 256, 512)[:len(body.levels)]]
    anchors = AnchorGenerator(tuple(sizes), ((0.5, 1.0, 2.0),) * len(sizes))
    return RetinaNet(body, num_classes, anchor_generator=anchors, **_normalised(backbone))


def _fcos(backbone: Backbone, cfg: ModelConfig, num_classes: int) -> nn.Module:
    """torchvision's FCOS (anchor-free: one point per location) over the FPN of any backbone."""
    body = _detector_backbone(backbone, cfg)
    sizes = tuple((s,) for s in (8, 16, 32, 64, 128)[:len(body.levels)])
    anchors = AnchorGenerator(sizes, ((1.0,),) * len(sizes))
    return FCOS(body, num_classes, anchor_generator=anchors, **_normalised(backbone))


def _features(backbone: Backbone) -> nn.Sequential:
    # The sliced backbones' stages are consecutive slices of torchvision's `features`: rejoin them
    # (same modules, same weights) for torchvision's SSD feature extractors.
    return nn.Sequential(*chain.from_iterable(cast(nn.Sequential, backbone.stage(s)) for s in backbone.stage_names))


def _ssd(backbone: Backbone, cfg: ModelConfig, num_classes: int) -> nn.Module:
    """torchvision's SSD300 recipe over the registered VGG16."""
    extractor = SSDFeatureExtractorVGG(_features(backbone), highres=False)
    anchors = DefaultBoxGenerator([[2], [2, 3], [2, 3], [2, 3], [2], [2]],
                                  scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05], steps=[8, 16, 32, 64, 100, 300])
    return SSD(extractor, anchors, (300, 300), num_classes, **_normalised(backbone))


def _ssdlite(backbone: Backbone, cfg: ModelConfig, num_classes: int) -> nn.Module:
    """torchvision's SSDlite320 recipe over the registered MobileNetV3-Large."""
    features = _features(backbone)
    norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)  # torchvision's SSDlite extras and head
    # C4: the last strided block before the end, where torchvision splits the network.
    c4 = [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)][-1]
    extractor = SSDLiteFeatureExtractorMobileNet(features, c4, norm)
    size = (320, 320)
    anchors = DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=0.2, max_ratio=0.95)
    head = SSDLiteHead(retrieve_out_channels(extractor, size), anchors.num_anchors_per_location(), num_classes, norm)
    return SSD(extractor, anchors, size, num_classes, head=head, score_thresh=0.001, nms_thresh=0.55,
               detections_per_img=300, topk_candidates=300, **_normalised(backbone))


@dataclass(frozen=True)
class DetectionHead:
    """An assembled detector's recipe and what it may sit on (``backbones`` None: any registered one)."""

    build: Callable[[Backbone, ModelConfig, int], nn.Module]
    necks: tuple[str, ...]
    backbones: Optional[tuple[str, ...]] = None


HEADS: dict[str, DetectionHead] = {
    "fasterrcnn": DetectionHead(_fasterrcnn, necks=("fpn", "none")),
    "retinanet": DetectionHead(_retinanet, necks=("fpn",)),
    "fcos": DetectionHead(_fcos, necks=("fpn",)),
    "ssd": DetectionHead(_ssd, necks=("none",), backbones=("vgg16",)),
    "ssdlite": DetectionHead(_ssdlite, necks=("none",), backbones=("mobilenet_v3_large",)),
}


def _check_no_aux(cfg: ModelConfig) -> None:
    if cfg.aux_loss:
        raise ConfigError("model.aux_loss: detectors have no auxiliary head")


def build_assembled(cfg: ModelConfig, backbone_weights: W.Spec) -> Built:
    """``backbone`` + ``neck`` + a detection ``head`` (``HEADS``)."""
    _check_no_aux(cfg)
    head = HEADS[str(cfg.head)]
    if head.backbones is not None and cfg.backbone not in head.backbones:
        raise ConfigError(f"model: head '{cfg.head}' sits on backbone {', '.join(head.backbones)} only, "
                          f"not '{cfg.backbone}'")
    if cfg.neck not in head.necks:
        raise ConfigError(f"model: head '{cfg.head}' cannot sit on neck '{cfg.neck}'; "
                          f"valid necks for it: {', '.join(head.necks)}")
    names = detection_classes(cfg.num_classes, cfg.classes, None)
    backbone = build_backbone(str(cfg.backbone), backbone_weights, cfg.output_stride, 0)
    model = head.build(backbone, cfg, len(names))
    set_input_size(model, cfg.resize)
    return _train_all(model), detection_preprocess(), names
