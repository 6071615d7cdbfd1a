"""Classification models: the ``classifier`` head on every backbone, torchvision's classifiers by name,
their stages, the split at the pooled features, head replacement and checkpoints."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from seg_transfer.engine.split_forward import decode, encode
from seg_transfer.errors import ConfigError
from seg_transfer.models.build import build_model
from seg_transfer.models.checkpoint import load_checkpoint, save_checkpoint
from seg_transfer.models.classification import ZOO as ZOO_CLASSIFIERS
from seg_transfer.models.stages import INCEPTION_STAGES, stage_modules
from seg_transfer.transfer import apply_freeze, freeze_counts

from conftest import CORE_BACKBONES

# FutureWarning: Inception's init_weights default
pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.usefixtures("one_thread")]




def _size(model: nn.Module) -> int:
    return 75 if "inception" in (model.info.config.get("name") or "") else 32  # Inception's minimum


def _forward_backward(model: nn.Module, classes: int) -> None:
    model.train()
    x = torch.randn(2, 3, _size(model), _size(model))
    logits = model(x)
    assert logits.shape == (2, classes)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


# Every backbone with every pooling, except vgg16 (slow to build) with one pooling only.
HEAD_CASES = [(b, p) for b in CORE_BACKBONES for p in ("avg", "max", "avgmax") if b != "vgg16" or p == "avgmax"]


@pytest.mark.parametrize("backbone,pool", HEAD_CASES)
def test_classifier_head_on_every_backbone(backbone, pool):
    model = build_model(dict(backbone=backbone, head="classifier", backbone_weights=None, num_classes=3,
                             pool=pool, dropout=0.2))
    assert model.info.task == "classification" and model.info.classes == ["class_0", "class_1", "class_2"]
    last = model.backbone.out_channels[model.backbone.stage_names[-1]]
    assert model.head.classifier[-1].in_features == last * (2 if pool == "avgmax" else 1)
    _forward_backward(model, 3)


def test_hidden_layer_as_keras_recipe():
    model = build_model(dict(backbone="resnet18", head="classifier", backbone_weights=None, classes=["a", "b"],
                             hidden=1024))
    linears = [m for m in model.head.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 1024), (1024, 2)]
    _forward_backward(model, 2)


@pytest.mark.parametrize("name", sorted(ZOO_CLASSIFIERS))
def test_zoo_classifier_builds_and_trains(name):
    model = build_model(dict(name=name, weights=None, num_classes=4))
    assert model.info.task == "classification" and len(model.info.classes) == 4
    _forward_backward(model, 4)


@pytest.mark.parametrize("name", sorted(ZOO_CLASSIFIERS))
def test_split_at_pooled_features_equals_forward(name):
    model = build_model(dict(name=name, weights=None, num_classes=3)).eval()
    x = torch.randn(2, 3, _size(model), _size(model))
    with torch.no_grad():
        feats = encode(model, x)
        assert list(feats) == ["pooled"] and feats["pooled"].dim() == 2
        assert torch.equal(decode(model, feats, x.shape[-2:])["out"], model(x))


def test_split_of_assembled_classifier():
    model = build_model(dict(backbone="mobilenet_v3_large", head="classifier", backbone_weights=None,
                             num_classes=3, pool="avgmax", hidden=8)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(decode(model, encode(model, x), ())["out"], model(x))


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "mobilenet_v3_large"])
def test_zoo_stages_are_the_backbone_stages(name):
    """stem, layer1..layer4 mean the same layers in a zoo classifier and in the assembled backbone."""
    zoo = build_model(dict(name=name, weights=None, num_classes=2))
    assembled = build_model(dict(backbone=name, head="classifier", backbone_weights=None, num_classes=2))

    def counts(model):
        return {k: sum(p.numel() for p in m.parameters()) for k, m in stage_modules(model).items()}
    assert counts(zoo) == counts(assembled)


def test_zoo_parameters_are_listed_once():
    """The backbone view is not registered: the state dict is torchvision's, names and count."""
    import torchvision

    model = build_model(dict(name="resnet18", weights=None))
    reference = torchvision.models.resnet18()
    assert list(model.state_dict()) == list(reference.state_dict())
    parts = freeze_counts(model)
    assert list(parts) == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert sum(t + f for t, f in parts.values()) == sum(p.numel() for p in reference.parameters())


def test_inception_stage_names_and_unfreeze_from():
    model = build_model(dict(name="inception_v3", weights=None, num_classes=2))
    assert list(stage_modules(model)) == list(INCEPTION_STAGES)
    state = apply_freeze(model, "partial", unfreeze_from="Mixed_6a")
    assert state.frozen_stages == list(INCEPTION_STAGES[:INCEPTION_STAGES.index("Mixed_6a")])
    assert not any(p.requires_grad for p in model.Mixed_5d.parameters())
    assert all(p.requires_grad for p in model.Mixed_6a.parameters()) and model.fc.weight.requires_grad
    assert model.AuxLogits is None  # the auxiliary head is dropped, as torchvision does for aux_logits=False
    with pytest.raises(ConfigError, match="unknown stage 'mixed6'"):
        apply_freeze(model, "partial", unfreeze_from="mixed6")


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_large", "inception_v3"])
def test_new_num_classes_replaces_only_the_last_linear(name, standin):
    path = standin(name)
    source = torch.load(path, weights_only=True)
    model = build_model(dict(name=name, num_classes=3))
    own = model.state_dict()
    differ = [k for k in own if k in source and not torch.equal(own[k], source[k])]
    last = [k for k in own if k not in source or own[k].shape != source[k].shape]
    assert differ == last and len(last) == 2 and last[0].endswith("weight") and own[last[0]].shape[0] == 3
    assert set(source) - set(own) <= {k for k in source if k.startswith("AuxLogits.")}


def test_weights_categories_are_the_classes(standin):
    import torchvision

    standin("resnet18")
    model = build_model(dict(name="resnet18"))
    assert model.info.classes == torchvision.models.ResNet18_Weights.DEFAULT.meta["categories"]
    assert (model.info.preprocess.resize_size, model.info.preprocess.crop_size) == (256, 224)


def test_resize_scales_the_crop():
    pre = build_model(dict(name="inception_v3", weights=None, num_classes=2, resize=171)).info.preprocess
    assert (pre.resize_size, pre.crop_size) == (171, 150)  # 299/342 of it, as the preset
    pre = build_model(dict(name="resnet18", weights=None, num_classes=2, resize=0)).info.preprocess
    assert (pre.resize_size, pre.crop_size) == (None, None)


@pytest.mark.parametrize("spec", [
    dict(name="resnet18", weights=None, num_classes=2, hidden=8),
    dict(backbone="resnet18", head="classifier", neck="fpn", backbone_weights=None, num_classes=2),
    dict(backbone="resnet18", head="classifier", backbone_weights=None, num_classes=2, pool="mean"),
    dict(backbone="resnet18", head="classifier", backbone_weights=None),
    dict(name="inception_v3", weights=None, num_classes=2, aux_loss=True),
])
def test_bad_classifier_configs(spec):
    with pytest.raises(ConfigError):
        build_model(spec)


@pytest.mark.parametrize("spec", [
    dict(name="inception_v3", weights=None, classes=["ant", "bee"]),
    dict(backbone="mobilenet_v2", head="classifier", backbone_weights=None, classes=["a", "b", "c"],
         pool="avgmax", hidden=16, dropout=0.1, resize=64),
])
def test_checkpoint_round_trip(spec, tmp_path):
    model = build_model(spec).eval()
    path = save_checkpoint(tmp_path / "m.pt", model)
    loaded = load_checkpoint(path)
    assert loaded.info.task == "classification" and loaded.info.classes == model.info.classes
    assert loaded.info.preprocess == model.info.preprocess
    x = torch.randn(1, 3, 80, 80)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_lr_groups_of_a_zoo_classifier():
    """The backbone view decides the LR groups: only the classifier layers are the head."""
    from seg_transfer.transfer import param_groups

    model = build_model(dict(name="mobilenet_v3_large", weights=None, num_classes=2))
    groups = {g["name"]: g for g in param_groups(model, 0.1, backbone_lr_mult=0.01)}
    assert {id(p) for p in groups["head"]["params"]} == {id(p) for p in model.classifier.parameters()}
    assert groups["backbone"]["lr"] == pytest.approx(0.001)
    assert len(groups["head"]["params"]) + len(groups["backbone"]["params"]) == len(list(model.parameters()))
