"""Transfer rules on detectors: stages of every detector backbone, freezing with the neck inside the
backbone, class-aware init of class-indexed predictors, a detector checkpoint's round trip (a backbone from
another task's checkpoint: tests/transfer/test_backbone.py)."""
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
