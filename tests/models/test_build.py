"""Assembled models: every backbone x neck x head, config errors, classes, and whole-model/backbone weights."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seg_transfer import create_model
from seg_transfer.errors import ConfigError, WeightsUnavailableError
from seg_transfer.models.backbones import BACKBONES
from seg_transfer.models.necks import NECKS
from seg_transfer.models.segmentation import HEADS, ZOO

from conftest import CORE_BACKBONES

HEAD_NECKS = {name: head.necks for name, head in HEADS.items()}

VALID = [(b, n, h) for b in CORE_BACKBONES for h in sorted(HEAD_NECKS) for n in HEAD_NECKS[h]]
INVALID = [(n, h) for h in sorted(HEADS) for n in sorted(NECKS) if n not in HEAD_NECKS[h]]
SMALL = "resnet18"  # the cheapest backbone, where any one will do


def assembled(**kwargs):
    """An assembled model with random weights (no checkpoint needed)."""
    return create_model(**{"backbone": SMALL, "head": "fcn", "num_classes": 3, "backbone_weights": None,
                           **kwargs})


def run(model, x: torch.Tensor) -> dict[str, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("backbone, neck, head", VALID)
def test_every_valid_combination(backbone, neck, head):
    """Each allowed combination gives full-resolution float32 logits, plus the aux head's when asked."""
    model = create_model(backbone=backbone, neck=neck, head=head, num_classes=3,
                         backbone_weights=None, aux_loss=True)
    out = run(model, torch.rand(1, 3, 64, 96))
    assert set(out) == {"out", "aux"}
    for value in out.values():
        assert value.shape == (1, 3, 64, 96) and value.dtype == torch.float32


def test_no_aux_unless_asked():
    model = assembled()
    assert model.aux_classifier is None
    assert set(run(model, torch.rand(1, 3, 64, 64))) == {"out"}


@pytest.mark.parametrize("head", sorted(HEAD_NECKS))
def test_backward_every_parameter_gets_a_gradient(head):
    """Training mode (batch 2: BatchNorm needs it after pooling): the loss reaches every parameter."""
    model = assembled(neck=HEAD_NECKS[head][0], head=head, aux_loss=True).train()
    out = model(torch.rand(2, 3, 64, 64))
    target = torch.randint(0, 3, (2, 64, 64))
    (F.cross_entropy(out["out"], target) + 0.5 * F.cross_entropy(out["aux"], target)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


@pytest.mark.parametrize("backbone, output_stride", [("resnet50", 8), ("mobilenet_v3_large", 16)])
@pytest.mark.parametrize("head", sorted(HEAD_NECKS))
def test_dilated_backbone_under_every_head(head, backbone, output_stride):
    model = assembled(backbone=backbone, neck=HEAD_NECKS[head][0], head=head, output_stride=output_stride)
    assert run(model, torch.rand(1, 3, 64, 96))["out"].shape == (1, 3, 64, 96)


@pytest.mark.parametrize("neck, head", INVALID)
def test_invalid_combination_lists_valid_necks(neck, head):
    with pytest.raises(ConfigError) as err:
        assembled(neck=neck, head=head)
    message = str(err.value)
    assert f"'{head}'" in message and f"'{neck}'" in message
    assert all(valid in message for valid in HEAD_NECKS[head])


@pytest.mark.parametrize("kwargs, key, registry, close", [
    ({"backbone": "resnet5"}, "model.backbone", BACKBONES, "resnet50"),
    ({"neck": "fpm"}, "model.neck", NECKS, "fpn"),
    ({"head": "fcnn"}, "model.head", HEADS, "fcn"),
    ({"name": "fcn_resnet5", "backbone": None, "head": None}, "model.name", ZOO, "fcn_resnet50"),
])
def test_unknown_name_suggests_and_lists(kwargs, key, registry, close):
    with pytest.raises(ConfigError) as err:
        assembled(**kwargs)
    message = str(err.value)
    assert message.startswith(key) and f"did you mean '{close}'" in message
    assert all(name in message for name in registry)


def test_unknown_key_suggests():
    with pytest.raises(ConfigError, match=r"'model\.num_clases' \(did you mean 'model\.num_classes'\?\)"):
        create_model(backbone="resnet18", head="fcn", num_clases=3)


@pytest.mark.parametrize("kwargs", [
    {"name": "fcn_resnet50", "backbone": "resnet18", "head": "fcn"},  # both kinds at once
    {"name": None, "backbone": "resnet18", "head": None},  # neither
    {"weights": "IMAGENET1K_V1"},  # an assembled model's 'weights' is a local file only
])
def test_ambiguous_or_incomplete_spec(kwargs):
    with pytest.raises(ConfigError, match="model"):
        assembled(**kwargs)


def test_classes_default_names_and_count():
    classes = assembled(num_classes=3).info.classes
    assert len(classes) == 3 and len(set(classes)) == 3


def test_classes_set_names_and_head_size():
    model = assembled(num_classes=None, classes=["bg", "cat", "dog", "car"])
    assert model.info.classes == ["bg", "cat", "dog", "car"]
    assert run(model, torch.rand(1, 3, 64, 64))["out"].shape[1] == 4


@pytest.mark.parametrize("kwargs", [{"num_classes": 3, "classes": ["a", "b"]}, {"num_classes": None}])
def test_classes_mismatch_or_missing(kwargs):
    with pytest.raises(ConfigError, match=r"model\.(classes|num_classes)"):
        assembled(**kwargs)


@pytest.mark.parametrize("resize, expected", [(None, 520), (300, 300), (0, None)])
def test_resize(resize, expected):
    """resize: None -> the segmentation default 520, N -> N, 0 -> no resizing (as for zoo models)."""
    assert assembled(resize=resize).info.preprocess.resize_size == expected


def test_whole_model_weights_from_local_file(tmp_path):
    """A saved state dict rebuilds the same model (no backbone checkpoint needed: it is overwritten)."""
    source = assembled(neck="fpn", aux_loss=True)
    path = tmp_path / "model.pth"
    torch.save(source.state_dict(), path)
    rebuilt = create_model(backbone=SMALL, neck="fpn", head="fcn", num_classes=3, aux_loss=True,
                           weights=str(path))
    x = torch.rand(1, 3, 64, 64)
    expected, got = run(source, x), run(rebuilt, x)
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


@pytest.mark.parametrize("saved", [
    {"aux_loss": False},  # the file lacks the aux head the config asks for
    {"num_classes": 4},
])
def test_whole_model_weights_that_do_not_fit(tmp_path, saved):
    path = tmp_path / "other.pth"
    torch.save(assembled(**{"aux_loss": True, **saved}).state_dict(), path)
    with pytest.raises(WeightsUnavailableError, match="do not fit"):
        assembled(aux_loss=True, weights=str(path))


def test_backbone_default_weights_load_the_cached_checkpoint(standin):
    """backbone_weights='DEFAULT' goes through torchvision's loader and reads the cached file."""
    state = torch.load(standin(SMALL), map_location="cpu", weights_only=True)
    model = create_model(backbone=SMALL, head="fcn", num_classes=3)  # backbone_weights defaults to DEFAULT
    layer1 = model.backbone.stage("layer1").state_dict()
    assert layer1
    assert all(torch.equal(value, state[f"layer1.{key}"]) for key, value in layer1.items())


# ------------------------------------------------------------------------------------------ binary
@pytest.mark.parametrize("kwargs, classes", [
    (dict(num_classes=1), ["background", "foreground"]),
    (dict(binary=True, num_classes=None), ["background", "foreground"]),
    (dict(binary=True, num_classes=None, classes=["person"]), ["background", "person"]),  # one name: the foreground
    (dict(binary=True, num_classes=2, classes=["bg", "person"]), ["bg", "person"]),
], ids=str)
def test_binary_model_has_one_channel_and_two_class_names(kwargs, classes):
    """num_classes: 1 or binary: true -> one sigmoid channel (out and aux); the classes name both sides."""
    model = assembled(**kwargs, aux_loss=True)
    out = run(model, torch.rand(1, 3, 64, 64))
    assert out["out"].shape == out["aux"].shape == (1, 1, 64, 64)
    assert model.info.binary and model.info.config["binary"] is True and model.info.classes == classes


def test_binary_zoo_model_replaces_its_classifiers_with_one_channel():
    model = create_model("lraspp_mobilenet_v3_large", weights=None, backbone_weights=None, num_classes=1)
    assert run(model, torch.rand(1, 3, 64, 64))["out"].shape == (1, 1, 64, 64) and model.info.binary


@pytest.mark.parametrize("kwargs, match", [
    (dict(binary=True, num_classes=3), "model.num_classes: 3 with model.binary: true"),
    (dict(binary=True, num_classes=None, classes=["a", "b", "c"]), "a binary model has a background and one"),
    (dict(binary=False, num_classes=1), "model.num_classes: 1 with model.binary: false"),
    (dict(head="fasterrcnn", neck="fpn", binary=True), "only segmentation models have a binary mode; this is a "
                                                      "detection model"),
])
def test_binary_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        assembled(**kwargs)


def test_binary_checkpoint_round_trip(tmp_path):
    from seg_transfer.models.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint

    model = assembled(binary=True, num_classes=None, classes=["person"]).eval()
    save_checkpoint(tmp_path / "m.pt", model)
    saved = read_checkpoint(tmp_path / "m.pt")
    assert saved["model"]["binary"] is True and saved["classes"] == ["background", "person"]
    back = load_checkpoint(tmp_path / "m.pt")
    assert back.info.binary and back.info.classes == ["background", "person"]
    x = torch.rand(1, 3, 48, 48)
    torch.testing.assert_close(run(back, x)["out"], run(model, x)["out"])
