"""Backbones: named stage features, measured channels/strides, dilation, stages and preprocessing."""
from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torchvision

from seg_transfer.errors import ConfigError
from seg_transfer.models.backbones import BACKBONES, build_backbone

OUT_STAGES = ["layer1", "layer2", "layer3", "layer4"]
DEFAULT_STRIDES = {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}
# DeepLab-style dilation: stages past the requested output stride keep its resolution.
DILATED_STRIDES = {
    8: {"layer1": 4, "layer2": 8, "layer3": 8, "layer4": 8},
    16: {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 16},
}
H, W = 64, 96


@pytest.fixture(scope="module", params=sorted(BACKBONES))
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
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_output_stride_dilates_or_is_refused(name, output_stride):
    """Every backbone either dilates to the requested stride or refuses it as a ConfigError."""
    try:
        backbone = build_backbone(name, None, output_stride)
    except ConfigError as err:
        assert "model.output_stride" in str(err) and str(output_stride) in str(err)
        return
    check_features(backbone, DILATED_STRIDES[output_stride])


@pytest.mark.parametrize("name, output_stride", [("resnet50", 8), ("resnet50", 16), ("mobilenet_v3_large", 16)])
def test_dilation_supported(name, output_stride):
    assert build_backbone(name, None, output_stride).strides == DILATED_STRIDES[output_stride]


@pytest.mark.parametrize("name, output_stride", [("vgg16", 8), ("mobilenet_v3_large", 8), ("resnet18", 16)])
def test_unsupported_output_stride(name, output_stride):
    with pytest.raises(ConfigError, match=r"model\.output_stride.*" + name):
        build_backbone(name, None, output_stride)
