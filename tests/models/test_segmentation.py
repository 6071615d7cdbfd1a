"""torchvision's zoo models: random init, pretrained (stand-in) weights, new classes, local files."""
from __future__ import annotations

import inspect
import shutil

import pytest
import torch
import torchvision
from torch import nn

from seg_transfer import create_model
from seg_transfer.errors import ConfigError
from seg_transfer.models.segmentation import ZOO

NAMES = sorted(ZOO)


def has_aux(name: str) -> bool:
    """Whether torchvision's builder offers an auxiliary head."""
    return "aux_loss" in inspect.signature(torchvision.models.get_model_builder(name)).parameters


def default_weights(name: str):
    return torchvision.models.get_model_weights(name).DEFAULT


def forward(model: nn.Module) -> dict[str, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        return model(torch.rand(1, 3, 64, 64))


def load(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_only_classifiers_replaced(model: nn.Module, state: dict[str, torch.Tensor], num_classes: int) -> None:
    """Every tensor equals the checkpoint's except the final 1x1 classifier convs, which now have
    ``num_classes`` outputs instead of the checkpoint's."""
    ours = model.state_dict()
    assert set(ours) == set(state)
    changed = {k for k in ours if ours[k].shape != state[k].shape or not torch.equal(ours[k], state[k])}
    replaced = {f"{name}.{p}" for name, m in model.named_modules()
                if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.out_channels == num_classes
                and name.split(".")[0] in ("classifier", "aux_classifier")
                for p, _ in m.named_parameters()}
    assert any(k.startswith("classifier.") for k in replaced)
    assert changed == replaced
    assert all(ours[k].shape[0] == num_classes != state[k].shape[0] for k in replaced)


@pytest.mark.parametrize("name", NAMES)
def test_random_init(name):
    """weights=None: torchvision's architecture, VOC class names from the weights' meta, full-size logits."""
    model = create_model(name, weights=None, backbone_weights=None, aux_loss=True if has_aux(name) else None)
    assert model.info.classes == list(default_weights(name).meta["categories"])
    preset = default_weights(name).transforms()
    assert model.info.preprocess.mean == pytest.approx(tuple(preset.mean))
    assert model.info.preprocess.std == pytest.approx(tuple(preset.std))
    out = forward(model)
    assert set(out) == ({"out", "aux"} if has_aux(name) else {"out"})
    assert all(v.shape == (1, len(model.info.classes), 64, 64) for v in out.values())


@pytest.mark.parametrize("name", NAMES)
def test_pretrained_new_classes_keep_everything_but_the_classifiers(name, standin):
    """num_classes=5 on DEFAULT weights: only the final 1x1 classifier conv(s) are re-created."""
    state = load(standin(name))
    model = create_model(name, num_classes=5)
    assert_only_classifiers_replaced(model, state, 5)
    assert model.info.classes == [f"class_{i}" for i in range(5)]
    out = forward(model)
    assert all(v.shape == (1, 5, 64, 64) for v in out.values())


def test_pretrained_aux_loss_false_drops_aux(standin):
    name = "fcn_resnet50"
    state = load(standin(name))
    model = create_model(name, aux_loss=False)
    assert model.aux_classifier is None
    assert model.info.classes == list(default_weights(name).meta["categories"])
    ours = model.state_dict()
    assert set(ours) == {k for k in state if not k.startswith("aux_classifier.")}
    assert all(torch.equal(v, state[k]) for k, v in ours.items())
    assert set(forward(model)) == {"out"}


@pytest.mark.parametrize("name", ["fcn_resnet50", "lraspp_mobilenet_v3_large"])
def test_local_whole_model_file(name, standin, tmp_path, monkeypatch):
    """A local copy of an official checkpoint loads with an empty cache (nothing fetched) and adapts."""
    path = tmp_path / "copy.pth"
    shutil.copyfile(standin(name), path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_home"))
    model = create_model(name, weights=str(path), num_classes=5)
    assert_only_classifiers_replaced(model, load(path), 5)
    assert not (tmp_path / "empty_home").exists()


def test_zoo_rejects_output_stride():
    with pytest.raises(ConfigError, match=r"model\.output_stride"):
        create_model("lraspp_mobilenet_v3_large", weights=None, backbone_weights=None, output_stride=16)


def test_zoo_rejects_local_backbone_file(tmp_path):
    path = tmp_path / "backbone.pth"
    path.write_bytes(b"unused")
    with pytest.raises(ConfigError, match="backbone_weights"):
        create_model("lraspp_mobilenet_v3_large", weights=None, backbone_weights=str(path))
