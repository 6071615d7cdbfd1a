"""encode/decode: the forward split at the backbone gives exactly ``model(x)``, for every zoo model and
assembled combinations drawn from the registries; ``used_features`` finds what the head reads."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from seg_transfer import create_model
from seg_transfer.engine.split_forward import Decoder, can_split, decode, encode, eval_mode, used_features
from seg_transfer.models.backbones import BACKBONES
from seg_transfer.models.segmentation import HEADS, ZOO

HEAD_NECKS = {name: head.necks for name, head in HEADS.items()}

# Every head on every neck it allows, on the cheapest ResNet; every head on its first neck on a MobileNet.
ASSEMBLED = ([("resnet18", n, h) for h in sorted(HEAD_NECKS) for n in HEAD_NECKS[h]]
             + [("mobilenet_v3_large", HEAD_NECKS[h][0], h) for h in sorted(HEAD_NECKS)])
assert {b for b, _, _ in ASSEMBLED} <= set(BACKBONES)


pytestmark = pytest.mark.usefixtures("one_thread")


def zoo(name: str, aux: bool = True) -> nn.Module:
    has_aux = not name.startswith("lraspp")
    return create_model(name, weights=None, backbone_weights=None, num_classes=3,
                        aux_loss=aux if has_aux else None).eval()


def assert_split_matches(model: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        whole = model(x)
        split = decode(model, encode(model, x), x.shape[-2:])
    assert list(split) == list(whole)
    for key in whole:
        assert torch.equal(split[key], whole[key]), key


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_split_equals_forward(name):
    torch.manual_seed(0)
    assert_split_matches(zoo(name), torch.rand(2, 3, 64, 80))


@pytest.mark.parametrize("backbone, neck, head", ASSEMBLED)
def test_assembled_split_equals_forward(backbone, neck, head):
    torch.manual_seed(0)
    model = create_model(backbone=backbone, neck=neck, head=head, num_classes=3, backbone_weights=None,
                         aux_loss=True).eval()
    assert_split_matches(model, torch.rand(2, 3, 64, 80))


def test_zoo_without_aux_classifier_encodes_no_aux():
    """A pretrained zoo model with aux_loss=False keeps the backbone's 'aux' output; encode drops it."""
    model = zoo("fcn_resnet50")
    model.aux_classifier = None
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert list(encode(model, x)) == ["out"]
    assert_split_matches(model, x)


@pytest.mark.parametrize("kwargs, keys", [
    ({"neck": "none", "head": "fcn"}, ["layer4"]),
    ({"neck": "none", "head": "fcn", "aux_loss": True}, ["layer3", "layer4"]),
    ({"neck": "aspp", "head": "fcn"}, ["layer4"]),
    ({"neck": "none", "head": "lraspp"}, ["layer2", "layer4"]),
    ({"neck": "fpn", "head": "fpn"}, ["layer1", "layer2", "layer3", "layer4"]),
])
def test_used_features_and_pruned_decode(kwargs, keys):
    """Only what the head reads is needed, and decoding from just that gives the same output."""
    model = create_model(backbone="resnet18", num_classes=3, backbone_weights=None, **kwargs).train()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        feats = encode(model, x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert used_features(model, feats, x.shape[-2:]) == keys
    assert all(m.training for m in model.modules())  # modes given back
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # no BN statistics moved
    model.eval()
    with torch.no_grad():
        assert list(encode(model, x, keys)) == keys
        assert torch.equal(decode(model, encode(model, x, keys), (64, 64))["out"], model(x)["out"])


def test_used_features_zoo_lraspp():
    model = zoo("lraspp_mobilenet_v3_large")
    with torch.no_grad():
        feats = encode(model, torch.rand(1, 3, 64, 64))
    assert used_features(model, feats, (64, 64)) == ["low", "high"]


def test_encode_unknown_key():
    model = zoo("lraspp_mobilenet_v3_large")
    with pytest.raises(KeyError, match="returns no layer9"):
        encode(model, torch.rand(1, 3, 32, 32), ["layer9"])


def test_eval_mode_restores_held_modes():
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)).train()
    model[1].eval()
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert model.training and model[0].training and not model[1].training


def test_unsupported_models():
    plain = nn.Sequential(nn.Conv2d(3, 3, 1))
    assert not can_split(plain)
    with pytest.raises(TypeError, match="cannot split Sequential"):
        encode(plain, torch.rand(1, 3, 8, 8))
    wrapped = nn.DataParallel(zoo("lraspp_mobilenet_v3_large"))
    with pytest.raises(TypeError, match="Decoder"):
        decode(wrapped, {}, (8, 8))


def test_decoder_module_trains_like_decode():
    model = zoo("lraspp_mobilenet_v3_large")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        feats = encode(model, x)
    out = Decoder(model)(feats, x.shape[-2:])
    out["out"].sum().backward()
    assert model.classifier.low_classifier.weight.grad is not None
    assert torch.equal(out["out"].detach(), model(x)["out"].detach())
