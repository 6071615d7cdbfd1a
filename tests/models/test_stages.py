"""``models/stages.py``: the one stage map. Every zoo model of every task splits into named stages that
partition part of its backbone, the same names mean the same layers in a zoo model and in the assembled
backbone, and a wrong stage name is refused with the valid ones."""
from __future__ import annotations

import pytest
from torch import nn

from seg_transfer import create_model
from seg_transfer.errors import ConfigError
from seg_transfer.models.backbones import build_backbone
from seg_transfer.models.classification import ZOO as CLASSIFICATION_ZOO
from seg_transfer.models.detection import ZOO as DETECTION_ZOO
from seg_transfer.models.segmentation import ZOO as SEGMENTATION_ZOO
from seg_transfer.models.stages import INCEPTION_STAGES, STAGES, check_stages, stage_modules

pytestmark = pytest.mark.usefixtures("one_thread")
HEAVY = {"deeplabv3_resnet101", "fcn_resnet101", "ssd300_vgg16", "maskrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2",
         "retinanet_resnet50_fpn_v2"}
ZOO = sorted({*SEGMENTATION_ZOO, *CLASSIFICATION_ZOO, *DETECTION_ZOO})


def zoo(name: str) -> nn.Module:
    return create_model(name, weights=None, backbone_weights=None, num_classes=3)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in ZOO])
def test_every_zoo_model_splits_into_disjoint_stages_of_its_backbone(name):
    model = zoo(name)
    stages = stage_modules(model)
    assert list(stages) == list(INCEPTION_STAGES if name == "inception_v3" else STAGES)  # Inception: its own names
    backbone = {id(p) for p in model.backbone.parameters()}
    seen: set[int] = set()
    for stage, module in stages.items():
        ids = {id(p) for p in module.parameters()}
        assert ids and not ids & seen and ids <= backbone, stage
        seen |= ids


@pytest.mark.parametrize("zoo_name, backbone, output_stride", [("lraspp_mobilenet_v3_large", "mobilenet_v3_large", 16),
                                                               ("fcn_resnet50", "resnet50", 8)])
def test_zoo_stages_are_the_assembled_backbones_stages(zoo_name, backbone, output_stride):
    """A stage name means the same layers in a zoo model and in the assembled backbone."""
    def shapes(module):
        return [tuple(t.shape) for t in module.state_dict().values()]
    zoo_stages = stage_modules(zoo(zoo_name))
    assembled = build_backbone(backbone, None, output_stride)
    for name in STAGES:
        assert shapes(zoo_stages[name]) == shapes(assembled.stage(name)), name


def test_check_stages_returns_names_and_refuses_unknown_ones():
    model = create_model(backbone="resnet18", neck="none", head="fcn", num_classes=3, backbone_weights=None)
    assert check_stages(model, "layer2", "freeze.unfreeze_from") == ["layer2"]
    assert check_stages(model, ["stem", "layer1"], "freeze.stages") == ["stem", "layer1"]
    with pytest.raises(ConfigError, match=r"freeze.unfreeze_from: unknown stage 'layer5' \(did you mean 'layer.'\?\); "
                                          r"valid stages, first to last: stem, layer1, layer2, layer3, layer4"):
        check_stages(model, "layer5", "freeze.unfreeze_from")


def test_a_model_without_a_backbone_has_no_stages():
    with pytest.raises(ConfigError, match="no 'backbone' module"):
        stage_modules(nn.Sequential(nn.Conv2d(3, 3, 1)))
    plain = nn.Module()
    plain.backbone = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU())
    with pytest.raises(ConfigError, match="cannot split the backbone"):
        stage_modules(plain)
