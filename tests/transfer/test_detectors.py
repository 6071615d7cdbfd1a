"""Transfer rules on detectors: stages of every detector backbone, freezing with the neck inside the
backbone, class-aware init of class-indexed predictors, and a backbone from another task's checkpoint."""
from __future__ import annotations

import pytest
import torch
import torchvision

from seg_transfer import create_model
from seg_transfer.errors import ConfigError
from seg_transfer.models.checkpoint import load_checkpoint, save_checkpoint
from seg_transfer.models.detection import ZOO as DETECTION_ZOO
from seg_transfer.models.detection import class_tensors
from seg_transfer.models.stages import STAGES, stage_modules
from seg_transfer.transfer import apply_freeze, class_aware_init, freeze_counts, param_groups, unfreeze
from seg_transfer.transfer.backbone import stage_layers

DETECTORS = [pytest.param(n, marks=pytest.mark.slow) if n == "ssd300_vgg16" else n for n in sorted(DETECTION_ZOO)] + [
    dict(backbone="resnet18", neck="fpn", head="fasterrcnn"), dict(backbone="vgg16", neck="none", head="fasterrcnn"),
    dict(backbone="mobilenet_v3_large", neck="none", head="ssdlite")]


pytestmark = pytest.mark.usefixtures("one_thread")


def build(spec, **kwargs):
    spec = {"name": spec} if isinstance(spec, str) else spec
    return create_model(**spec, weights=None, backbone_weights=None, **{"num_classes": 3, **kwargs})


def params(module) -> set[int]:
    return {id(p) for p in module.parameters()}


@pytest.mark.parametrize("spec", DETECTORS, ids=str)
def test_stages_and_freezing(spec):
    """stem, layer1..layer4 split the classifier network; the detector's neck (FPN, SSD extras) sits
    inside ``backbone`` but outside the stages, and trains like the head under feature extraction."""
    model = build(spec)
    stages = stage_modules(model)
    assert list(stages) == list(STAGES)
    ids = [params(s) for s in stages.values()]
    assert all(ids) and sum(map(len, ids)) == len(set().union(*ids))  # non-empty, disjoint
    in_stages = set().union(*ids)
    no_neck = isinstance(spec, dict) and spec["neck"] == "none" and spec["head"] == "fasterrcnn"
    assert in_stages <= params(model.backbone) and (in_stages == params(model.backbone)) == no_neck

    apply_freeze(model, "feature_extraction")
    frozen = {id(p) for p in model.parameters() if not p.requires_grad}
    assert frozen == in_stages
    counts = freeze_counts(model)
    assert no_neck or (counts["neck"][0] > 0 and counts["neck"][1] == 0)
    groups = {g["name"]: g for g in param_groups(model, 0.01, 0.1)}
    assert set(groups) == {"head"}  # the neck learns at the head's rate

    apply_freeze(model, "partial", unfreeze_from="layer3")
    assert all(not p.requires_grad for s in ("stem", "layer1", "layer2") for p in stages[s].parameters())
    assert all(p.requires_grad for s in ("layer3", "layer4") for p in stages[s].parameters())
    groups = {g["name"]: g for g in param_groups(model, 0.01, 0.1)}
    assert {id(p) for p in groups["backbone"]["params"]} == params(stages["layer3"]) | params(stages["layer4"])
    assert groups["backbone"]["lr"] == pytest.approx(0.001)
    new = unfreeze(model, "layer2")
    assert {id(p) for p in new} == params(stages["layer2"])


@pytest.mark.parametrize("name", ["fasterrcnn_mobilenet_v3_large_320_fpn", "ssdlite320_mobilenet_v3_large"])
def test_class_aware_init_copies_coco_rows(name, standin):
    """COCO 'person' and 'car' rows (class scores, their 4 box deltas, every anchor's logits) start
    from the checkpoint's; a class COCO lacks keeps its fresh initialisation."""
    state = torch.load(standin(name), map_location="cpu", weights_only=True)
    coco = list(torchvision.models.get_model_weights(name).DEFAULT.meta["categories"])
    target = ["car", "cell", "person"]
    model = create_model(name, classes=target)
    classes = model.info.classes
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    matched = class_aware_init(model, coco, target, state)
    assert matched == ["__background__", "car", "person"]
    now = model.state_dict()
    tensors = class_tensors(model)
    assert tensors
    for t in tensors:
        for p in ("weight", "bias"):
            key = f"{t.module}.{p}"
            for name_ in ("__background__", "car", "person"):
                rows, src = t.rows(classes.index(name_), len(classes)), t.rows(coco.index(name_), len(coco))
                assert torch.equal(now[key][rows], state[key][src]), (key, name_)
            rows = t.rows(classes.index("cell"), len(classes))
            assert torch.equal(now[key][rows], fresh[key][rows])


def test_class_aware_init_without_matching_predictor():
    model = build("fasterrcnn_mobilenet_v3_large_320_fpn")
    with pytest.raises(ConfigError, match="no class predictor"):
        class_aware_init(model, ["__background__", "a"], model.info.classes, {})


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


def test_detector_checkpoint_round_trip(tmp_path):
    """A fine-tuned detector's checkpoint rebuilds from its own config: same classes, same detections."""
    torch.manual_seed(0)
    model = create_model("fasterrcnn_mobilenet_v3_large_320_fpn", weights=None, backbone_weights=None,
                         classes=["RBC", "WBC"]).eval()
    model.roi_heads.score_thresh = 0.0
    model.rpn._post_nms_top_n = {"training": 50, "testing": 50}
    path = save_checkpoint(tmp_path / "det.pt", model)
    again = load_checkpoint(path)
    again.roi_heads.score_thresh = 0.0
    again.rpn._post_nms_top_n = model.rpn._post_nms_top_n
    assert again.info.task == "detection" and again.info.classes == ["__background__", "RBC", "WBC"]
    image = [torch.rand(3, 120, 160)]
    with torch.no_grad():
        a, b = model(image)[0], again(image)[0]
    assert len(a["boxes"]) and torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["labels"], b["labels"])


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
