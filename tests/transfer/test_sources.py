"""``transfer/sources.py``: the one model factory (``create_model``) and where a run's starting weights
come from (``toolkit_checkpoint``, ``source_weights``)."""
from __future__ import annotations

import pytest
import torch

from seg_transfer import create_model
from seg_transfer.config import Config, ModelConfig, from_dict
from seg_transfer.errors import ConfigError
from seg_transfer.models.checkpoint import save_checkpoint
from seg_transfer.transfer.sources import source_weights, toolkit_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
ASSEMBLED = dict(backbone="resnet18", neck="none", head="fcn", num_classes=3, backbone_weights=None)


def same_shapes(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}


def test_create_model_takes_a_name_keywords_or_a_model_block():
    by_keywords = create_model(**ASSEMBLED)
    assert by_keywords.info.task == "segmentation" and by_keywords.info.classes == ["class_0", "class_1", "class_2"]
    assert same_shapes(create_model(ASSEMBLED), by_keywords)  # a dict: the config's model block
    assert same_shapes(create_model(from_dict(ModelConfig, ASSEMBLED, "model")), by_keywords)  # a ModelConfig
    zoo = create_model("lraspp_mobilenet_v3_large", weights=None, backbone_weights=None, num_classes=4)
    assert zoo.info.task == "segmentation" and zoo.info.config["name"] == "lraspp_mobilenet_v3_large"
    with pytest.raises(TypeError, match="not both"):
        create_model(ASSEMBLED, num_classes=5)
    with pytest.raises(ConfigError, match="model.bakcbone|unknown key"):
        create_model(bakcbone="resnet18", num_classes=3)


def test_toolkit_checkpoint_tells_a_checkpoint_from_other_specs(tmp_path):
    path = save_checkpoint(tmp_path / "best.pt", create_model(**ASSEMBLED))
    other = tmp_path / "weights.pth"
    torch.save({"conv.weight": torch.zeros(1)}, other)
    assert toolkit_checkpoint(str(path)) == path
    assert toolkit_checkpoint(str(other)) is None  # a plain state dict: torchvision's loader takes it
    assert toolkit_checkpoint("DEFAULT") is None and toolkit_checkpoint(None) is None
    assert toolkit_checkpoint(str(tmp_path / "missing.pt")) is None


def run_config(tmp_path, **model) -> Config:
    return from_dict(Config, {"model": model, "data": {"format": "folder", "root": str(tmp_path)},
                              "output": {"dir": str(tmp_path)}})


def test_source_weights_init_from_a_checkpoint(tmp_path):
    model = create_model(**ASSEMBLED)
    path = save_checkpoint(tmp_path / "best.pt", model)
    cfg = run_config(tmp_path, **ASSEMBLED)
    cfg.train.init_from = str(path)
    classes, state, description = source_weights(cfg)
    assert classes == model.info.classes and description == f"checkpoint {path}"
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_source_weights_of_a_zoo_model_are_its_pretrained_file(tmp_path, standin):
    standin("lraspp_mobilenet_v3_large")
    classes, state, description = source_weights(run_config(tmp_path, name="lraspp_mobilenet_v3_large"))
    assert len(classes) == 21 and classes[0] == "__background__"  # the VOC categories of its DEFAULT entry
    assert description.startswith("LRASPP_MobileNet_V3_Large_Weights.") and "classifier.low_classifier.weight" in state


def test_no_whole_model_source_for_an_assembled_model(tmp_path):
    assert source_weights(run_config(tmp_path, **ASSEMBLED)) is None
