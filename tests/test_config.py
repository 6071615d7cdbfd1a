"""Config dataclasses: YAML loading and validation errors that name the key and suggest a fix."""
from __future__ import annotations

from pathlib import Path

import pytest

from seg_transfer.config import ModelConfig, from_dict, load_model_config, load_yaml
from seg_transfer.errors import ConfigError
from seg_transfer.models import build_model

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "models").glob("*.yaml"))


def test_from_dict_fills_defaults_and_types():
    cfg = from_dict(ModelConfig, {"backbone": "resnet18", "head": "fcn", "num_classes": 3}, "model")
    assert cfg.neck == "none" and cfg.weights == "DEFAULT" and cfg.num_classes == 3


def test_unknown_key_names_path_and_suggests():
    with pytest.raises(ConfigError, match=r"unknown key 'model.num_clases' \(did you mean 'model.num_classes'\?\)"):
        from_dict(ModelConfig, {"num_clases": 3}, "model")


@pytest.mark.parametrize("key, value, expected", [
    ("num_classes", "three", "model.num_classes: expected int"),
    ("num_classes", True, "model.num_classes: expected int"),
    ("classes", "cat", "model.classes: expected a list"),
    ("classes", ["cat", 3], r"model.classes\[1\]: expected str"),
    ("aux_loss", "yes", "model.aux_loss: expected bool"),
])
def test_bad_values_name_the_key(key, value, expected):
    with pytest.raises(ConfigError, match=expected):
        from_dict(ModelConfig, {key: value}, "model")


def test_block_must_be_a_mapping():
    with pytest.raises(ConfigError, match="model: expected a mapping"):
        from_dict(ModelConfig, ["resnet50"], "model")


def test_load_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_yaml(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  backbone: [resnet50\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+, column \d+ invalid YAML"):
        load_yaml(str(bad))
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        load_yaml(str(listy))
    empty = tmp_path / "empty.yaml"
    empty.write_text("data: {}\n")
    with pytest.raises(ConfigError, match="no 'model:' block"):
        load_model_config(str(empty))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_model_configs_build(path):
    """Every shipped example builds (random values, so no checkpoint is needed)."""
    cfg = load_model_config(str(path))
    cfg.weights, cfg.backbone_weights = None, None
    model = build_model(cfg)
    assert len(model.info.classes) == (cfg.num_classes or 21)
