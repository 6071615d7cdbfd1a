"""``transfer/backbone.py``: a backbone from another seg_transfer checkpoint of any task, matched stage by
stage (``model.backbone_weights: run/best.pt``), and what its report says."""
from __future__ import annotations

import pytest
import torch

from seg_transfer import create_model
from seg_transfer.errors import ConfigError
from seg_transfer.models.checkpoint import save_checkpoint
from seg_transfer.models.stages import STAGES
from seg_transfer.transfer.backbone import load_backbone, stage_layers

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def seg_checkpoint(tmp_path_factory):
    """A segmentation checkpoint of this toolkit (random LR-ASPP MobileNetV3, 11 CamVid-like classes)."""
    torch.manual_seed(0)
    seg = create_model("lraspp_mobilenet_v3_large", weights=None, backbone_weights=None, num_classes=11)
    for m in seg.modules():  # distinguishable statistics, not the 0/1 defaults a fresh detector has too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
    return seg, save_checkpoint(tmp_path_factory.mktemp("seg") / "best.pt", seg)


def test_segmentation_backbone_into_zoo_detector(seg_checkpoint):
    """lraspp's ``backbone.<i>`` -> Faster R-CNN's ``backbone.body.<i>``: every stage tensor loads."""
    seg, path = seg_checkpoint
    det = create_model("fasterrcnn_mobilenet_v3_large_fpn", weights=None, backbone_weights=str(path), num_classes=4)
    report = det.info.transfer
    assert len(report.loaded) == sum(len(layer.tensors) for layer in stage_layers(det)) > 300
    assert not report.skipped and not report.missing and not report.unexpected
    assert set(report.by_part()) == set(STAGES)
    assert "segmentation" in report.source and "lraspp_mobilenet_v3_large" in report.source
    src, dst = seg.state_dict(), det.state_dict()
    for a, b in [("backbone.0.0.weight", "backbone.body.0.0.weight"),
                 ("backbone.16.1.running_mean", "backbone.body.16.1.running_mean"),
                 ("backbone.13.block.1.0.weight", "backbone.body.13.block.1.0.weight")]:
        assert torch.equal(src[a], dst[b]), (a, b)
    assert det.info.config["backbone_weights"] == str(path)


def test_segmentation_backbone_into_ssdlite_reports_reduced_tail(seg_checkpoint):
    """SSDlite splits MobileNetV3 inside its C4 block and, without ImageNet weights, narrows its tail:
    stages still line up, and the narrowed tensors are reported as shape mismatches."""
    seg, path = seg_checkpoint
    det = create_model("ssdlite320_mobilenet_v3_large", weights=None, backbone_weights=str(path), num_classes=4)
    report = det.info.transfer
    assert report.loaded and report.skipped and not report.missing
    assert {report.parts[n] for n, _, _ in report.skipped} == {"layer4"}
    assert torch.equal(seg.state_dict()["backbone.13.block.0.0.weight"],
                       det.state_dict()["backbone.features.0.13.0.weight"])  # the split C4 block


def test_assembled_segmentation_backbone_into_assembled_detector(tmp_path):
    seg = create_model(backbone="resnet18", neck="fpn", head="fpn", num_classes=5, backbone_weights=None)
    path = save_checkpoint(tmp_path / "seg.pt", seg)
    det = create_model(backbone="resnet18", neck="fpn", head="fasterrcnn", num_classes=3, backbone_weights=str(path))
    report = det.info.transfer
    assert report.loaded and not report.skipped and not report.missing and not report.unexpected
    assert all(n.startswith("backbone.body.") for n in report.loaded)
    assert torch.equal(seg.state_dict()["backbone.body.layer4.1.conv2.weight"],
                       det.state_dict()["backbone.body.layer4.1.conv2.weight"])


def test_other_family_loads_nothing(seg_checkpoint):
    """A MobileNet backbone into a ResNet-18 detector: the layers differ from the first conv, so nothing loads."""
    _, path = seg_checkpoint
    det = create_model(backbone="resnet18", neck="none", head="fasterrcnn", num_classes=3, backbone_weights=str(path))
    assert not det.info.transfer.loaded and det.info.transfer.missing and det.info.transfer.unexpected


def test_backbone_checkpoint_needs_zoo_weights_null(seg_checkpoint):
    _, path = seg_checkpoint
    with pytest.raises(ConfigError, match="weights: null"):
        create_model("fasterrcnn_mobilenet_v3_large_fpn", backbone_weights=str(path), num_classes=4)


@pytest.mark.parametrize("source,target", [
    (dict(name="resnet18", num_classes=2), dict(backbone="resnet18", neck="fpn", head="fasterrcnn", num_classes=3)),
    (dict(name="fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=3), dict(name="lraspp_mobilenet_v3_large", num_classes=5)),
    (dict(name="fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=3),
     dict(backbone="mobilenet_v3_large", neck="none", head="lraspp", num_classes=5)),
], ids=["classifier->detector", "detector->segmentation zoo", "detector->assembled segmentation"])
def test_backbone_between_any_tasks(source, target, tmp_path):
    """The same config line works in every direction: a classifier's or a detector's backbone too."""
    torch.manual_seed(0)
    src = create_model(**source, weights=None, backbone_weights=None)
    path = save_checkpoint(tmp_path / "src.pt", src)
    model = create_model(**target, weights=None, backbone_weights=str(path))
    report = model.info.transfer
    assert report.loaded and not report.skipped and not report.missing and not report.unexpected
    assert len(report.loaded) == sum(len(layer.tensors) for layer in stage_layers(model))
    ours, theirs = stage_layers(model), stage_layers(src)
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for a, b in zip(ours, theirs) for k in a.tensors)


def test_load_backbone_between_built_models_copies_only_stage_tensors():
    """``load_backbone`` on two models in memory: the stage tensors are copied, the heads are left alone."""
    torch.manual_seed(0)
    src = create_model(backbone="resnet18", neck="none", head="fcn", num_classes=3, backbone_weights=None)
    dst = create_model(backbone="resnet18", neck="none", head="fcn", num_classes=3, backbone_weights=None)
    head_before = {k: v.clone() for k, v in dst.state_dict().items() if not k.startswith("backbone.")}
    report = load_backbone(dst, src, "in memory")
    assert report.source == "in memory" and len(report.loaded) == sum(len(x.tensors) for x in stage_layers(dst))
    assert all(torch.equal(src.state_dict()[k], dst.state_dict()[k]) for k in report.loaded)
    assert all(torch.equal(v, dst.state_dict()[k]) for k, v in head_before.items())
