"""Detectors: every zoo name and assembled combination builds with random weights and runs in train mode
(targets -> loss dict) and eval mode (boxes, labels, scores) on tiny inputs; classes, predictors, errors."""
from __future__ import annotations

import inspect

import pytest
import torch
import torchvision
from torch import nn

from seg_transfer import create_model
from seg_transfer.errors import ConfigError, WeightsUnavailableError
from seg_transfer.models.backbones import build_backbone
from seg_transfer.models.build import model_names, torchvision_builders
from seg_transfer.models.detection import BACKGROUND, class_tensors, detection_classes
from seg_transfer.models.detection import HEADS as DETECTION_HEADS
from seg_transfer.models.detection import ZOO as DETECTION_ZOO

from conftest import CORE_BACKBONES

# SSD300-VGG16 runs a full VGG16 at 300x300: about 25 s on a shared CPU.
SLOW = pytest.mark.slow


def _mark(name: str, *values):
    return pytest.param(*values, marks=SLOW) if name == "ssd" else values if len(values) > 1 else values[0]


ZOO_NAMES = [_mark("ssd" if n == "ssd300_vgg16" else n, n) for n in sorted(DETECTION_ZOO)]
ASSEMBLED = [_mark(head, backbone, neck, head) for head, spec in sorted(DETECTION_HEADS.items())
             for backbone in (spec.backbones or CORE_BACKBONES) for neck in spec.necks]
# SSD's fixed square input (300/320 px) cannot shrink much: its last feature maps are 3x3 and 1x1.
SIZE = {"ssd": None, "ssdlite": None}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(model: nn.Module) -> nn.Module:
    """Few proposals and detections, so a random-weights R-CNN stays fast on a CPU."""
    if hasattr(model, "rpn"):
        model.rpn._pre_nms_top_n = model.rpn._post_nms_top_n = {"training": 64, "testing": 64}
    return model


def targets(n: int = 2, masks: bool = False) -> list[dict[str, torch.Tensor]]:
    out = []
    for i in range(n):
        t = {"boxes": torch.tensor([[4.0, 6.0, 40.0, 30.0], [20.0, 10.0, 60.0, 50.0]]), "labels": torch.tensor([1, 2])}
        if masks:
            t["masks"] = torch.zeros(2, 64, 80, dtype=torch.uint8)
            t["masks"][0, 6:30, 4:40] = 1
            t["masks"][1, 10:50, 20:60] = 1
        out.append(t)
    if n > 1:
        out[-1] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                   **({"masks": torch.zeros(0, 64, 80, dtype=torch.uint8)} if masks else {})}  # no objects
    return out


def run_both_modes(model: nn.Module, masks: bool = False) -> list[dict[str, torch.Tensor]]:
    """Train mode with targets -> finite loss dict that backpropagates; eval mode -> detections."""
    torch.manual_seed(0)
    images = [torch.rand(3, 64, 80), torch.rand(3, 64, 80)]  # batch 2: SSDlite's 1x1 maps need BN statistics
    model.train()
    losses = model(images, targets(len(images), masks))
    assert losses and all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    assert any(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == len(images)
    for det in out:
        assert det["boxes"].shape[1:] == (4,) and det["boxes"].shape[0] == det["labels"].shape[0] == det["scores"].shape[0]
        if len(det["boxes"]):  # boxes in input pixels
            assert det["boxes"][:, 2:].max() <= 80 + 1e-3 and det["boxes"].min() >= -1e-3
    return out


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_random_init_train_and_eval(name, one_thread):
    """weights=None + a new class count: COCO's architecture with only the class predictors resized."""
    model = tiny(create_model(name, weights=None, backbone_weights=None, classes=["cell", "dot"],
                              resize=None if "ssd" in name else 64))
    assert model.info.task == "detection"
    assert model.info.classes == [BACKGROUND, "cell", "dot"]
    assert model.info.preprocess.mean == (0.0, 0.0, 0.0) and model.info.preprocess.std == (1.0, 1.0, 1.0)
    out = run_both_modes(model, masks=name.startswith("maskrcnn"))
    assert all(set(det["labels"].tolist()) <= {1, 2} for det in out)
    if name.startswith("maskrcnn"):
        assert all(det["masks"].shape[1:] == (1, 64, 80) for det in out)


@pytest.mark.parametrize("backbone,neck,head", ASSEMBLED)
def test_assembled_train_and_eval(backbone, neck, head, one_thread):
    model = tiny(create_model(backbone=backbone, neck=neck, head=head, classes=["a", "b"], backbone_weights=None,
                              resize=SIZE.get(head, 64)))
    assert model.info.task == "detection" and model.info.classes == [BACKGROUND, "a", "b"]
    # Channels come from the backbone: a pyramid of neck_channels, or the last stage's own width.
    if head == "fasterrcnn":
        widths = {"fpn": 256, "none": None}
        assert model.backbone.out_channels == (widths[neck] or build_backbone(backbone, None).out_channels["layer4"])
    run_both_modes(model)


def test_registries_listed_for_the_cli_and_weights():
    names = model_names()
    assert names["detection_zoo"] == sorted(DETECTION_ZOO) and names["detection_heads"] == sorted(DETECTION_HEADS)
    assert set(DETECTION_ZOO) <= set(torchvision_builders())  # `seg-transfer weights fetch ssd300_vgg16`


def test_zoo_class_names_from_weights_meta():
    model = create_model("fasterrcnn_mobilenet_v3_large_320_fpn", weights=None, backbone_weights=None)
    assert len(model.info.classes) == 91 and model.info.classes[0] == BACKGROUND and "N/A" in model.info.classes
    assert model.roi_heads.box_predictor.cls_score.out_features == 91


@pytest.mark.parametrize("name", ["fasterrcnn_mobilenet_v3_large_320_fpn", "ssdlite320_mobilenet_v3_large"])
def test_new_classes_replace_only_class_predictors(name, standin):
    """Pretrained (stand-in) weights + 3 classes: every tensor but the class-indexed predictors (and, for
    R-CNN, the box regression per class) equals the checkpoint's."""
    state = torch.load(standin(name), map_location="cpu", weights_only=True)
    model = create_model(name, num_classes=3)
    assert model.info.classes == [BACKGROUND, "class_1", "class_2"]
    ours = model.state_dict()
    # Pretrained detectors use FrozenBatchNorm2d, which drops the stand-in's BatchNorm counters.
    assert set(ours) <= set(state) and all(k.endswith("num_batches_tracked") for k in set(state) - set(ours))
    changed = {k for k in ours if ours[k].shape != state[k].shape or not torch.equal(ours[k], state[k])}
    predictors = {f"{t.module}.{p}" for t in class_tensors(model) for p in ("weight", "bias")}
    assert changed == predictors
    for t in class_tensors(model):
        assert ours[f"{t.module}.weight"].shape[0] == t.anchors * 3 * t.per_class


def test_classes_count_background():
    assert detection_classes(None, ["a", "b"], None) == [BACKGROUND, "a", "b"]
    assert detection_classes(3, [BACKGROUND, "a", "b"], None) == [BACKGROUND, "a", "b"]
    with pytest.raises(ConfigError, match="count the background"):
        detection_classes(2, ["a", "b"], None)
    with pytest.raises(ConfigError, match="num_classes"):
        detection_classes(None, None, None)


@pytest.mark.parametrize("kwargs,match", [
    (dict(backbone="resnet50", neck="fpn", head="ssd"), "sits on backbone vgg16"),
    (dict(backbone="vgg16", neck="aspp", head="fasterrcnn"), "valid necks for it: fpn, none"),
    (dict(backbone="resnet5", neck="fpn", head="fasterrcnn"), "did you mean 'resnet50'"),
    (dict(name="ssd300_vgg16", output_stride=16), "output_stride"),
    (dict(name="fasterrcnn_resnet50_fpm"), "did you mean 'fasterrcnn_resnet50_fpn'"),
    (dict(backbone="resnet50", neck="fpn", head="fasterrcn"), "did you mean 'fasterrcnn'"),
])
def test_bad_combinations(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        create_model(**{"num_classes": 3, "backbone_weights": None, "weights": None, **kwargs})


@pytest.mark.parametrize("name", sorted(DETECTION_ZOO))
def test_default_backbone_weights_are_the_builders(name, tmp_path, monkeypatch):
    """``weights: null`` + ``backbone_weights: DEFAULT`` asks for the backbone entry torchvision's builder
    uses (SSD300: VGG16 IMAGENET1K_FEATURES, which its normalisation expects); offline, one clear error."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("SEG_TRANSFER_OFFLINE", "1")
    builder = torchvision.models.get_model_builder(name)
    default = inspect.signature(builder).parameters["weights_backbone"].default
    with pytest.raises(WeightsUnavailableError) as err:
        create_model(name, weights=None, num_classes=3)
    expected = f"{type(default).__name__}.{default.name}" if default is not None else "ResNet50_Weights.IMAGENET1K_V2"
    assert f"pretrained weights {expected} are not cached" in str(err.value)
