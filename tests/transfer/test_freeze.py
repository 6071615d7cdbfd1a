"""Freezing, gradual unfreezing, param groups, partial loading and class-aware init, on every backbone
(assembled, random weights) and on two zoo models (ResNet and MobileNetV3 based)."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from seg_transfer import create_model
from seg_transfer.engine.losses import SegmentationCriterion, build_loss
from seg_transfer.errors import ConfigError
from seg_transfer.models.stages import STAGES, stage_modules
from seg_transfer.transfer import (
    FreezeState,
    apply_freeze,
    bn_held_in_eval,
    class_aware_init,
    classifier_convs,
    freeze_counts,
    freeze_table,
    load_matching,
    param_groups,
    unfreeze,
)

from conftest import CORE_BACKBONES

ZOO_MODELS = ["lraspp_mobilenet_v3_large", "fcn_resnet50"]
MODELS = list(CORE_BACKBONES) + ZOO_MODELS
VOC = create_model("lraspp_mobilenet_v3_large", weights=None, backbone_weights=None).info.classes
TARGET = ["__background__", "Cat", "dog", "unknownthing"]


def make(name: str, num_classes: int | None = None, classes: list[str] | None = None, seed: int = 0, **kw):
    """A zoo model by name, or a backbone name assembled with an FCN head (+ aux); random weights."""
    torch.manual_seed(seed)
    if name in ZOO_MODELS:
        model = create_model(name, weights=None, backbone_weights=None, num_classes=num_classes,
                             classes=classes, **kw)
    else:
        model = create_model(**{"backbone": name, "head": "fcn", "aux_loss": True, "backbone_weights": None,
                                "num_classes": num_classes or (None if classes else 3), "classes": classes, **kw})
    return model


@torch.no_grad()
def calibrate_bn(model):
    """Set every BatchNorm's running statistics to those of one random batch, as pretrained weights
    would have them: with the initial (0, 1) statistics an eval-mode random network saturates
    (MobileNetV2's ReLU6 gives constant maps), and a head behind it would learn nothing."""
    momenta = {m: m.momentum for m in model.modules() if isinstance(m, _BatchNorm)}
    for m in momenta:
        m.momentum = 1.0
    model.train()(torch.rand(2, 3, 64, 64))
    for m, momentum in momenta.items():
        m.momentum = momentum
    return model


_built: dict[str, torch.nn.Module] = {}


def built(name: str):
    """``make(name)`` with calibrated BatchNorm statistics, built once per session."""
    if name not in _built:
        _built[name] = calibrate_bn(make(name))
    return _built[name]


@pytest.fixture(params=MODELS)
def model(request):
    """A fresh copy of each model (copying is much cheaper than building)."""
    return copy.deepcopy(built(request.param))


def frozen_stage_set(model) -> set[str]:
    """Stages whose every parameter is frozen; asserts no stage is half-frozen."""
    frozen = set()
    for name, stage in stage_modules(model).items():
        flags = {p.requires_grad for p in stage.parameters()}
        assert len(flags) == 1, f"stage {name} is partly frozen"
        if flags == {False}:
            frozen.add(name)
    return frozen


def outside_backbone_trainable(model) -> bool:
    backbone = {id(p) for p in model.backbone.parameters()}
    return all(p.requires_grad for p in model.parameters() if id(p) not in backbone)


def train_steps(model, steps: int = 2) -> None:
    """SGD with momentum on random 1x3x64x64 inputs in train mode, as the trainer will do it."""
    torch.manual_seed(1)
    num_classes = len(model.info.classes)
    criterion = SegmentationCriterion(build_loss("ce", num_classes, 255))
    optimizer = torch.optim.SGD(param_groups(model, lr=0.1, backbone_lr_mult=0.5), momentum=0.9)
    for _ in range(steps):
        model.train()
        out = model(torch.rand(1, 3, 64, 64))
        target = torch.randint(0, num_classes, (1, 64, 64))
        optimizer.zero_grad()
        criterion(out, target).backward()
        optimizer.step()


# ------------------------------------------------------------------------------------ stages
def test_stages_partition_the_backbone(model):
    stages = stage_modules(model)
    assert list(stages) == list(STAGES)
    seen: set[int] = set()
    for name, stage in stages.items():
        ids = {id(p) for p in stage.parameters()}
        assert ids and not ids & seen, name
        seen |= ids
    assert seen == {id(p) for p in model.backbone.parameters()}


# the zoo models' stages against the assembled backbones': tests/models/test_stages.py


# ---------------------------------------------------------------------------------- freezing
@pytest.mark.parametrize("freeze", [{"strategy": "feature_extraction"},
                                    {"strategy": "partial", "unfreeze_from": "layer3"}], ids=["fe", "partial"])
def test_training_changes_only_trainable_tensors(model, freeze):
    """After SGD steps in train mode: frozen parameters and frozen BN statistics are bitwise unchanged,
    every trainable parameter changed."""
    state = apply_freeze(model, **freeze)
    held = {name for name, m in model.named_modules() if bn_held_in_eval(m)}
    stages = stage_modules(model)
    in_frozen = {id(m) for s in state.frozen_stages for m in stages[s].modules() if isinstance(m, _BatchNorm)}
    assert held == {name for name, m in model.named_modules() if id(m) in in_frozen}  # none in VGG16
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    train_steps(model)
    after = model.state_dict()
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) != (name in trainable), name
    for bn in held:
        for buf in ("running_mean", "running_var", "num_batches_tracked"):
            assert torch.equal(after[f"{bn}.{buf}"], before[f"{bn}.{buf}"]), f"{bn}.{buf}"
        assert not model.get_submodule(bn).training  # model.train() did not switch it back
    live_bn = [n for n, m in model.named_modules() if isinstance(m, _BatchNorm) and n not in held]
    assert live_bn and all(not torch.equal(after[f"{n}.running_mean"], before[f"{n}.running_mean"]) for n in live_bn)
    assert frozen_stage_set(model) == set(state.frozen_stages)


def test_bn_false_lets_frozen_stages_batchnorm_adapt():
    model = copy.deepcopy(built("resnet18"))
    apply_freeze(model, "partial", stages=2, bn=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_steps(model)
    after = model.state_dict()
    stem = "backbone.body.stem"
    assert torch.equal(after[f"{stem}.conv1.weight"], before[f"{stem}.conv1.weight"])
    assert not torch.equal(after[f"{stem}.bn1.weight"], before[f"{stem}.bn1.weight"])
    assert not torch.equal(after[f"{stem}.bn1.running_mean"], before[f"{stem}.bn1.running_mean"])
    assert not any(bn_held_in_eval(m) for m in model.modules())


def test_frozen_sets_for_every_rule(model):
    for n in range(len(STAGES) + 1):
        state = apply_freeze(model, "partial", stages=n)
        assert frozen_stage_set(model) == set(STAGES[:n]) == set(state.frozen_stages)
        assert outside_backbone_trainable(model)
    for i, first in enumerate(STAGES):
        apply_freeze(model, "partial", unfreeze_from=first)
        assert frozen_stage_set(model) == set(STAGES[:i])
    apply_freeze(model, "feature_extraction")
    assert frozen_stage_set(model) == set(STAGES) and outside_backbone_trainable(model)
    state = apply_freeze(model, "feature_extraction", bn=False)  # BatchNorm layers stay trainable
    bns = {id(p) for m in model.backbone.modules() if isinstance(m, _BatchNorm) for p in m.parameters()}
    assert all(p.requires_grad == (id(p) in bns) for p in model.backbone.parameters())
    assert isinstance(state, FreezeState) and state.to_dict() == {
        "strategy": "feature_extraction", "frozen_stages": list(STAGES), "bn_eval": False}
    apply_freeze(model, "full")  # replaces the earlier freeze entirely
    assert frozen_stage_set(model) == set()
    assert all(p.requires_grad for p in model.parameters())
    assert not any(bn_held_in_eval(m) for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())


def test_held_bn_survives_train_deepcopy_and_pickle(tmp_path):
    model = copy.deepcopy(built("mobilenet_v3_large"))
    apply_freeze(model, "partial", stages=3)
    bn = next(m for m in stage_modules(model)["layer2"].modules() if isinstance(m, _BatchNorm))
    later = next(m for m in stage_modules(model)["layer3"].modules() if isinstance(m, _BatchNorm))
    model.train()
    assert not bn.training and later.training
    copied = copy.deepcopy(model).train()
    torch.save(model, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False).train()
    for other in (copied, loaded):
        held = [m for m in stage_modules(other)["layer2"].modules() if isinstance(m, _BatchNorm)]
        assert held and all(bn_held_in_eval(m) and not m.training for m in held)
    model.eval()
    assert not later.training
    model.train()
    assert later.training and not bn.training


def test_freeze_config_errors():
    model = copy.deepcopy(built("resnet18"))
    with pytest.raises(ConfigError, match="unknown stage 'layr3' \\(did you mean 'layer3'\\?\\); "
                                          "valid stages, first to last: stem, layer1, layer2, layer3, layer4"):
        apply_freeze(model, "partial", unfreeze_from="layr3")
    with pytest.raises(ConfigError, match="unknown freeze strategy 'partal' \\(did you mean 'partial'\\?\\)"):
        apply_freeze(model, "partal")
    with pytest.raises(ConfigError, match="exactly one of"):
        apply_freeze(model, "partial", stages=2, unfreeze_from="layer2")
    with pytest.raises(ConfigError, match="exactly one of"):
        apply_freeze(model, "partial")
    with pytest.raises(ConfigError, match="from 0 to 5"):
        apply_freeze(model, "partial", stages=6)
    with pytest.raises(ConfigError, match="only apply to strategy 'partial'"):
        apply_freeze(model, "full", stages=1)
    with pytest.raises(ConfigError, match="unknown stage 'head'"):
        unfreeze(model, ["layer4", "head"])
    with pytest.raises(ConfigError, match="every parameter is frozen"):
        for p in model.parameters():
            p.requires_grad_(False)
        param_groups(model, 0.1)


def test_gradual_unfreezing(model):
    state = apply_freeze(model, "feature_extraction")
    optimizer = torch.optim.SGD(param_groups(model, lr=0.1, backbone_lr_mult=0.1))
    new = unfreeze(model, "layer4", state)
    assert {id(p) for p in new} == {id(p) for p in stage_modules(model)["layer4"].parameters()}
    assert state.frozen_stages == ["stem", "layer1", "layer2", "layer3"]
    assert frozen_stage_set(model) == set(state.frozen_stages)
    layer4_bn = [m for m in stage_modules(model)["layer4"].modules() if isinstance(m, _BatchNorm)]
    model.train()
    assert all(m.training and not bn_held_in_eval(m) for m in layer4_bn)  # (VGG16 has none)
    optimizer.add_param_group({"params": new, "lr": 0.01})
    assert unfreeze(model, ["layer4"]) == []  # already trainable: nothing new
    assert len(unfreeze(model, ["layer3", "layer2"], state)) > 0 and state.frozen_stages == ["stem", "layer1"]


def test_param_groups_lrs_and_frozen_excluded():
    model = copy.deepcopy(built("resnet18"))
    apply_freeze(model, "partial", unfreeze_from="layer3")
    groups = {g["name"]: g for g in param_groups(model, lr=0.01, backbone_lr_mult=0.1)}
    assert groups["head"]["lr"] == 0.01 and groups["backbone"]["lr"] == pytest.approx(0.001)
    backbone = {id(p) for p in model.backbone.parameters()}
    assert all(id(p) in backbone for p in groups["backbone"]["params"])
    assert all(id(p) not in backbone for p in groups["head"]["params"])
    listed = [id(p) for g in groups.values() for p in g["params"]]
    assert sorted(listed) == sorted(id(p) for p in model.parameters() if p.requires_grad)
    apply_freeze(model, "feature_extraction")
    assert [g["name"] for g in param_groups(model, lr=0.01)] == ["head"]


def test_freeze_table_counts_add_up(model):
    apply_freeze(model, "partial", stages=3)
    counts = freeze_counts(model)
    assert list(counts)[:5] == list(STAGES) and "head" in counts
    assert sum(t + f for t, f in counts.values()) == sum(p.numel() for p in model.parameters())
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert sum(f for _, f in counts.values()) == frozen
    assert all(counts[s][0] == 0 for s in STAGES[:3]) and all(counts[s][1] == 0 for s in STAGES[3:])
    table = freeze_table(model)
    total = table.splitlines()[-1].split()
    assert total[0] == "total" and int(total[1].replace(",", "")) + int(total[2].replace(",", "")) \
        == sum(p.numel() for p in model.parameters())
    assert len(table.splitlines()) <= 12


# ------------------------------------------------------------------------------ partial loading
@torch.no_grad()
def with_num_classes(model, num_classes: int):
    """A copy of ``model`` with its classifier convs re-created for ``num_classes`` (what
    ``zoo.replace_classifiers`` does) and every other tensor shifted, so loaded values can be told apart."""
    other = copy.deepcopy(model)
    for name, conv in classifier_convs(other, len(model.info.classes)):
        parent, _, attr = name.rpartition(".")
        setattr(other.get_submodule(parent), attr, torch.nn.Conv2d(conv.in_channels, num_classes, 1))
    for value in other.state_dict().values():
        value.add_(1)
    return other


def test_load_matching_other_num_classes(model):
    """Everything but the classifier loads from a model with another number of classes."""
    source = with_num_classes(model, 7)
    report = load_matching(model, source.state_dict())
    convs = [name for name, _ in classifier_convs(model, len(model.info.classes))]
    assert convs
    expected_skipped = {f"{c}.{k}" for c in convs for k in ("weight", "bias")}
    assert {s[0] for s in report.skipped} == expected_skipped
    assert all(s[1][0] == 7 and s[2][0] == len(model.info.classes) for s in report.skipped)
    assert not report.missing and not report.unexpected
    own = model.state_dict()
    assert set(report.loaded) == set(own) - expected_skipped
    assert all(torch.equal(own[k], source.state_dict()[k]) for k in report.loaded)
    text = report.format()
    assert f"loaded {len(report.loaded)} of the model's {len(own)} tensors; {len(expected_skipped)} skipped" in text
    assert len(text.splitlines()) < 30 and "stem" in text and "head" in text
    data = json.loads(json.dumps(report.to_dict()))
    assert data["counts"] == {"loaded": len(report.loaded), "skipped": len(expected_skipped),
                              "missing": 0, "unexpected": 0}


def test_load_matching_missing_and_unexpected():
    with_aux, without_aux = copy.deepcopy(built("resnet18")), make("resnet18", aux_loss=False)
    report = load_matching(with_aux, without_aux.state_dict())
    assert report.missing and all(k.startswith("aux_classifier.") for k in report.missing)
    assert not report.unexpected and not report.skipped
    assert report.by_part()["aux"]["missing"] == len(report.missing)
    back = load_matching(without_aux, with_aux.state_dict())
    assert back.unexpected and all(k.startswith("aux_classifier.") for k in back.unexpected)
    assert back.by_part()["aux"]["unexpected"] == len(back.unexpected)
    text = back.format(max_names=3)
    assert "unexpected (ignored):" in text and f"... and {len(back.unexpected) - 3} more" in text


# ------------------------------------------------------------------------------ class-aware init
@pytest.mark.parametrize("name, kw", [("lraspp_mobilenet_v3_large", {}),
                                      ("resnet18", {"head": "lraspp"}),
                                      ("resnet18", {"head": "fcn"})], ids=["zoo-lraspp", "lraspp", "fcn+aux"])
def test_class_aware_init_keeps_matching_logits(name, kw):
    source = make(name, classes=VOC, **kw)
    target = make(name, classes=TARGET, seed=5, **kw)
    report = load_matching(target, source.state_dict())
    assert {s[0].rpartition(".")[0] for s in report.skipped} == {n for n, _ in classifier_convs(target, 4)}
    assert not report.missing and not report.unexpected
    matched = class_aware_init(target, source.info.classes, target.info.classes, source.state_dict())
    assert matched == ["__background__", "Cat", "dog"]
    x = torch.rand(1, 3, 64, 64)
    source.eval(), target.eval()
    with torch.no_grad():
        src, tgt = source(x), target(x)
    for key in src:  # out, and aux when the model has one
        for j, i in [(0, VOC.index("__background__")), (1, VOC.index("cat")), (2, VOC.index("dog"))]:
            torch.testing.assert_close(tgt[key][:, j], src[key][:, i], rtol=1e-4, atol=1e-5)
        assert not torch.allclose(tgt[key][:, 3], src[key][:, 0])  # 'unknownthing' keeps its fresh init


def test_class_aware_init_background_synonym_and_errors():
    source = make("resnet18", classes=["background", "Person", "car"])
    target = make("resnet18", classes=["__BACKGROUND__", "truck", "person"], seed=2)
    load_matching(target, source.state_dict())
    assert class_aware_init(target, source.info.classes, target.info.classes,
                            source.state_dict()) == ["__BACKGROUND__", "person"]
    w = target.head.head[4].weight
    assert torch.equal(w[2], source.head.head[4].weight[1]) and torch.equal(w[0], source.head.head[4].weight[0])
    with pytest.raises(ConfigError, match="no classifier conv"):
        class_aware_init(target, ["a", "b"], target.info.classes, source.state_dict())
