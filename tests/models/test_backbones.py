"""Backbones: every registered one gives named stage features at its declared strides and measured
channels, splits into stages that partition its parameters, preprocesses as its weights, dilates or refuses
a stride, builds under one neck/head per task, freezes stem..layer2, round-trips through a checkpoint, and
(a subset) exports to ONNX. The largest models run only in slow tests."""
from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torchvision
from torch import nn

from seg_transfer import create_model
from seg_transfer.errors import ConfigError
from seg_transfer.models.backbones import BACKBONES, build_backbone
from seg_transfer.models.checkpoint import load_checkpoint, save_checkpoint
from seg_transfer.models.stages import stage_modules
from seg_transfer.transfer import apply_freeze

OUT_STAGES = ["layer1", "layer2", "layer3", "layer4"]
DEFAULT_STRIDES = {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}
# DeepLab-style dilation: stages past the requested output stride keep its resolution.
DILATED_STRIDES = {
    8: {"layer1": 4, "layer2": 8, "layer3": 8, "layer4": 8},
    16: {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 16},
}
H, W = 64, 96
# Over 30M parameters (test_light_means_small checks the others are under), or VGG, whose classifier's
# 120M parameters make every build slow although its backbone is small; vgg16 is covered by the
# per-combination tests (conftest.CORE_BACKBONES).
HEAVY = {"resnet101", "resnet152", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2",
         *(f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")),
         "efficientnet_b5", "efficientnet_b6", "efficientnet_b7", "efficientnet_v2_m", "efficientnet_v2_l",
         "regnet_x_8gf", "regnet_x_16gf", "regnet_x_32gf", "regnet_y_8gf", "regnet_y_16gf", "regnet_y_32gf",
         "convnext_small", "convnext_base", "convnext_large", "swin_s", "swin_b", "swin_v2_s", "swin_v2_b", "vit_b_16"}
# The smallest of each family (its members share split, operators and code path) build under every task
# in the default suite; the rest of the registry does so in the slow one.
SMALLEST = {"ResNet": "resnet18", "ResNeXt": "resnext50_32x4d", "Wide ResNet": "wide_resnet50_2", "VGG": "vgg11",
            "MobileNetV2": "mobilenet_v2", "MobileNetV3": "mobilenet_v3_small", "EfficientNet": "efficientnet_b0",
            "RegNet": "regnet_x_400mf", "ConvNeXt": "convnext_tiny", "Swin": "swin_t", "ViT": "vit_b_16"}
FAST = set(SMALLEST.values()) - HEAVY - {"resnext50_32x4d"}  # ResNeXt's path is ResNet's


ZOO = [pytest.mark.slow, pytest.mark.zoo]  # the registry's large members: pyproject's addopts skip them


def _slow_unless(names: set[str]) -> list:
    return [n if n in names else pytest.param(n, marks=ZOO) for n in sorted(BACKBONES)]


NAMES = _slow_unless(set(BACKBONES) - HEAVY)
TASK_NAMES = _slow_unless(FAST)
# ONNX: one per family (a family shares its operators); exceptions in README.md.
ONNX = [n if n in {"mobilenet_v3_small", "regnet_x_400mf"} else pytest.param(n, marks=ZOO)
        for n in sorted(SMALLEST.values())]

pytestmark = pytest.mark.usefixtures("one_thread")


def test_registry_size_and_families():
    assert len(BACKBONES) >= 35
    families = {spec.family for spec in BACKBONES.values()}
    assert {"ResNet", "ResNeXt", "Wide ResNet", "VGG", "MobileNetV3", "EfficientNet", "RegNet", "ConvNeXt", "Swin",
            "ViT"} <= families
    assert set(HEAVY) <= set(BACKBONES)
    assert set(SMALLEST) == families and all(BACKBONES[n].family == f for f, n in SMALLEST.items())


@pytest.mark.parametrize("name", sorted(set(BACKBONES) - HEAVY))
def test_light_means_small(name):
    """What runs in the default suite is under 30M parameters (counted on the meta device where the builder
    allows it: no memory, no time; RegNet's builder computes widths with real tensors)."""
    try:
        with torch.device("meta"):
            net = torchvision.models.get_model(name, weights=None)
    except NotImplementedError:
        net = torchvision.models.get_model(name, weights=None)
    assert sum(p.numel() for p in net.parameters()) < 30e6


@pytest.fixture(scope="module", params=NAMES)
def name(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def backbone(name):
    """Each registered backbone with random weights, built once for this module."""
    return build_backbone(name, None)


def check_features(backbone, strides: dict[str, int]) -> None:
    """A forward pass gives layer1..layer4 with the advertised channels at the given strides."""
    backbone.eval()
    with torch.no_grad():
        feats = backbone(torch.rand(1, 3, H, W))
    assert isinstance(feats, OrderedDict)
    assert list(feats) == OUT_STAGES
    assert backbone.strides == strides
    for name, feat in feats.items():
        assert feat.shape == (1, backbone.out_channels[name], H // strides[name], W // strides[name]), name


def test_features_channels_and_strides(backbone):
    check_features(backbone, DEFAULT_STRIDES)


def test_stages_partition_the_parameters(backbone):
    """Freezing works by stage name: every stage has parameters, and together they hold all of them."""
    assert backbone.stage_names == ["stem", *OUT_STAGES]
    seen: set[int] = set()
    for name in backbone.stage_names:
        params = {id(p) for p in backbone.stage(name).parameters()}
        assert params, f"stage {name} has no parameters"
        assert not params & seen, f"stage {name} shares parameters with an earlier stage"
        seen |= params
    assert seen == {id(p) for p in backbone.parameters()}


def test_preprocess_follows_default_weights(name, backbone):
    """Random-init backbones normalise like torchvision's DEFAULT weights for that architecture."""
    preset = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    preprocess = backbone.preprocess
    assert preprocess.mean == pytest.approx(tuple(preset.mean))
    assert preprocess.std == pytest.approx(tuple(preset.std))


@pytest.mark.parametrize("output_stride", sorted(DILATED_STRIDES))
def test_output_stride_dilates_or_is_refused(name, output_stride):
    """Every backbone either dilates to the requested stride or refuses it, naming its family and what it supports."""
    spec = BACKBONES[name]
    if output_stride not in spec.strides:
        with pytest.raises(ConfigError, match=rf"model\.output_stride: {name} \({spec.family}\) supports .*"
                                              rf"{', '.join(map(str, spec.strides))}, got {output_stride}"):
            build_backbone(name, None, output_stride)
        return
    check_features(build_backbone(name, None, output_stride), DILATED_STRIDES[output_stride])


@pytest.mark.parametrize("name, output_stride", [("resnet50", 8), ("resnet50", 16), ("mobilenet_v3_large", 16)])
def test_dilation_supported(name, output_stride):
    assert build_backbone(name, None, output_stride).strides == DILATED_STRIDES[output_stride]


@pytest.mark.parametrize("name, output_stride", [("vgg16", 8), ("mobilenet_v3_large", 8), ("resnet18", 16),
                                                 ("convnext_tiny", 16)])
def test_unsupported_output_stride(name, output_stride):
    with pytest.raises(ConfigError, match=r"model\.output_stride.*" + name):
        build_backbone(name, None, output_stride)


# ----------------------------------------------------------------- one neck/head per task
TASK_MODELS = {
    "segmentation": {"neck": "fpn", "head": "fpn", "num_classes": 3},
    "detection": {"neck": "fpn", "head": "fasterrcnn", "classes": ["a", "b"]},
    "classification": {"neck": "none", "head": "classifier", "num_classes": 3},
}


def _task_loss(task: str, model: nn.Module) -> torch.Tensor:
    """A training step's loss at a small input (detectors: Faster R-CNN's loss dict, few proposals)."""
    x = torch.rand(2, 3, 64, 64)
    if task == "segmentation":
        out = model(x)
        assert out["out"].shape == (2, 3, 64, 64)
        return out["out"].mean()
    if task == "classification":
        out = model(x)
        assert out.shape == (2, 3)
        return out.mean()
    model.rpn._pre_nms_top_n = model.rpn._post_nms_top_n = {"training": 32, "testing": 32}
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 30.0]]), "labels": torch.tensor([1])}] * 2
    losses = model(list(x), targets)
    return sum(losses.values())


@pytest.mark.parametrize("task", sorted(TASK_MODELS))
@pytest.mark.parametrize("name", TASK_NAMES)
def test_builds_freezes_and_trains_under_each_task(name, task):
    """stem..layer2 frozen (no gradient; BatchNorm held in eval), layer3 on: a training step reaches layer3's
    weights and none of the frozen ones."""
    assert_freezes_and_trains(name, task)


def assert_freezes_and_trains(name: str, task: str) -> None:
    model = create_model(backbone=name, backbone_weights=None, resize=64, **TASK_MODELS[task])
    assert model.info.task == task
    stages = stage_modules(model)
    assert list(stages) == ["stem", *OUT_STAGES]
    apply_freeze(model, "partial", unfreeze_from="layer3")
    model.train()
    _task_loss(task, model).backward()
    for stage in ("stem", "layer1", "layer2"):
        params = list(stages[stage].parameters())
        assert params and all(not p.requires_grad and p.grad is None for p in params), stage
        assert all(not m.training for m in stages[stage].modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    assert any(p.grad is not None for p in stages["layer3"].parameters())


@pytest.mark.parametrize("name", TASK_NAMES)
def test_checkpoint_round_trip(name, tmp_path):
    assert_round_trip(name, tmp_path)


def assert_round_trip(name: str, tmp_path) -> None:
    """Saved and loaded, a model predicts the same."""
    model = create_model(backbone=name, backbone_weights=None, neck="fpn", head="fpn", num_classes=3, resize=64).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)["out"]
    loaded = load_checkpoint(save_checkpoint(tmp_path / "m.pt", model))
    assert loaded.info.config["backbone"] == name
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)["out"], expected)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning")
@pytest.mark.parametrize("name", ONNX)
def test_onnx_export_matches_eager(name, tmp_path):
    """One backbone per family exports (at a fixed size) and onnxruntime agrees with eager PyTorch."""
    pytest.importorskip("onnxruntime")
    from seg_transfer.predict.backends import load_model_file
    from seg_transfer.predict.export import export_model, sample_input

    model = create_model(backbone=name, backbone_weights=None, head="classifier", num_classes=3, resize=64).eval()
    runner = load_model_file(export_model(model, tmp_path / f"{name}.onnx", "onnx", dynamic=False))
    x = torch.rand_like(sample_input(model, dynamic=False))
    with torch.no_grad():
        torch.testing.assert_close(torch.as_tensor(runner(x)), model(x), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", [n if n in {"efficientnet_b0", "mobilenet_v3_small", "regnet_x_400mf"}
                                  else pytest.param(n, marks=ZOO) for n in sorted(SMALLEST.values())])
def test_default_weights_load_through_torchvision(name, standin):
    """DEFAULT weights load through torchvision's own path (enum -> cache -> strict load) from a stand-in
    under the official file name, into every stage."""
    state = torch.load(standin(name), weights_only=True)
    backbone = build_backbone(name, "DEFAULT")
    loaded = {k: v for k, v in backbone.state_dict().items() if not k.startswith("pyramid.")}
    assert loaded and all(any(torch.equal(v, s) for s in state.values() if s.shape == v.shape) for v in loaded.values())
