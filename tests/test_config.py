"""Config dataclasses: YAML loading and validation errors that name the key and suggest a fix."""
from __future__ import annotations

from pathlib import Path

import pytest

from seg_transfer.config import ModelConfig, TrainConfig, from_dict, load_model_config, load_yaml
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


@pytest.mark.parametrize("key,value", [("val_interval", 0), ("batch_size", 0), ("accumulate", -1), ("precise_bn", -2),
                                       ("limit_train", 0)])
def test_counts_below_their_minimum_name_the_key(key, value):
    with pytest.raises(ConfigError, match=rf"train.{key}: expected at least \d, got {value}"):
        from_dict(TrainConfig, {key: value}, "train")


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


# ------------------------------------------------------------------------------- whole run configs

from seg_transfer.config import Config, apply_overrides, dump_config, load_config  # noqa: E402

SHIPPED = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_base_inheritance_and_overrides(tmp_path):
    _write(tmp_path / "base.yaml", "model: {name: lraspp_mobilenet_v3_large}\n"
                                   "train: {epochs: 5, lr: 0.1}\ndata: {format: folder, root: /a}\n")
    child = _write(tmp_path / "child.yaml", "_base_: base.yaml\ntrain: {epochs: 7}\n"
                                            "freeze: {strategy: partial, unfreeze_from: layer3, schedule: {3: layer2}}\n")
    cfg = load_config(child, ["train.batch_size=2", "data.root=/x", "train.class_weights=null", "model.classes=[a, b]"])
    assert (cfg.train.epochs, cfg.train.lr, cfg.train.batch_size) == (7, 0.1, 2)  # child, base, override
    assert cfg.data == {"format": "folder", "root": "/x"}
    assert cfg.freeze.schedule == {3: "layer2"} and cfg.model.classes == ["a", "b"]
    assert load_config(_write(tmp_path / "round.yaml", dump_config(cfg))) == cfg  # the saved config reloads


def test_one_level_of_inheritance_only(tmp_path):
    _write(tmp_path / "a.yaml", "train: {epochs: 1}\n")
    _write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="one level of inheritance only"):
        load_config(_write(tmp_path / "c.yaml", "_base_: b.yaml\n"))
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(_write(tmp_path / "d.yaml", "_base_: missing.yaml\n"))


@pytest.mark.parametrize("override, expected", [
    ("train.optimiser=sgd", r"unknown key 'train.optimiser' \(did you mean 'train.optimizer'\?\)"),
    ("train.optimizer=sdg", r"train.optimizer: unknown value 'sdg' \(did you mean 'sgd'\?\); valid: adamw, sgd"),
    ("freeze.strategy=parital", r"freeze.strategy: unknown value 'parital' \(did you mean 'partial'\?\)"),
    ("train.scheduler=cosin", r"did you mean 'cosine'"),
    ("train.epochs=abc", "train.epochs: expected int, got 'abc'"),
    ("trian.epochs=3", r"unknown key 'trian' \(did you mean 'train'\?\)"),
    ("train.epochs", "expected key.path=value"),
    ("freeze.schedule={x: layer3}", r"freeze.schedule.x: expected int"),
])
def test_bad_overrides_fail_at_load(tmp_path, override, expected):
    path = _write(tmp_path / "c.yaml", "model: {name: fcn_resnet50}\n")
    with pytest.raises(ConfigError, match=expected):
        load_config(path, [override])


def test_override_into_a_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="train is not a mapping"):
        apply_overrides({"train": 3}, ["train.epochs=1"])


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_run_configs_load(path):
    cfg = load_config(str(path))
    from seg_transfer.data.registry import DATASETS

    assert isinstance(cfg, Config) and cfg.data.get("format") in DATASETS


def test_saved_config_holds_absolute_paths(tmp_path, monkeypatch):
    """config.yaml (dump_config) makes what the run reads absolute from the folder it started in; a list
    file stays relative to data.root (every format reads it from there), output.dir stays as given."""
    import yaml

    monkeypatch.chdir(tmp_path)
    cfg = from_dict(Config, {
        "model": {"backbone": "resnet18", "head": "fcn", "weights": "w/whole.pth", "backbone_weights": "DEFAULT"},
        "data": {"format": "folder", "root": "../data/CamVid", "train_list": "lists/train.txt"},
        "train": {"init_from": "runs/a/best.pt"}, "output": {"dir": "runs"}})
    saved = yaml.safe_load(dump_config(cfg))
    assert saved["data"] == {"format": "folder", "root": str(tmp_path.parent / "data" / "CamVid"),
                             "train_list": "lists/train.txt"}
    assert saved["train"]["init_from"] == str(tmp_path / "runs" / "a" / "best.pt")
    assert (saved["model"]["weights"], saved["model"]["backbone_weights"]) == (str(tmp_path / "w" / "whole.pth"), "DEFAULT")
    assert saved["output"]["dir"] == "runs" and cfg.data["root"] == "../data/CamVid"  # the config itself is unchanged



def test_each_value_set_is_declared_once_and_the_code_acts_on_exactly_it():
    """The config's value sets are the registries' keys: adding a logger or a scaling rule in one place and
    not the other fails here."""
    from seg_transfer import config
    from seg_transfer.engine.loggers import LOGGERS
    from seg_transfer.engine.optim import AMP_MODES, OPTIMIZERS, SCHEDULERS
    from seg_transfer.engine.trainer import LR_SCALING
    from seg_transfer.transfer.freeze import STRATEGIES

    assert set(LOGGERS) == set(config.LOGGER_NAMES) and set(LR_SCALING) == set(config.LR_SCALINGS)
    assert (AMP_MODES, OPTIMIZERS, SCHEDULERS, STRATEGIES) == (config.AMP_MODES, config.OPTIMIZERS, config.SCHEDULERS,
                                                               config.FREEZE_STRATEGIES)


@pytest.mark.parametrize("written,mode", [("off", "off"), ("false", "off"), ("fp32", "off"), ("none", "off"),
                                          ("bf16", "bf16"), ("auto", "auto"), ("true", "auto")])
def test_amp_spellings_parse_in_overrides_and_files(tmp_path, written, mode):
    """YAML reads ``off`` as False: the trainer's own hint 'train.amp=off' must parse as printed."""
    from seg_transfer.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text(f"train:\n  amp: {written}\n")
    assert load_config(str(path)).train.amp == mode
    assert load_config(str(tmp_path / "c.yaml"), [f"train.amp={written}"]).train.amp == mode
    with pytest.raises(ConfigError, match="train.amp"):
        load_config(str(path), ["train.amp=fp8"])


def test_amp_auto_is_off_on_the_cpu():
    import torch

    from seg_transfer.engine.optim import autocast_settings

    assert autocast_settings(torch.device("cpu"), "auto") == (False, None)
    assert autocast_settings(torch.device("cpu"), "off") == (False, None)


@pytest.mark.cuda
def test_amp_auto_picks_bf16_where_the_gpu_has_it():
    import torch

    from seg_transfer.engine.optim import autocast_settings, grad_scaler

    enabled, dtype = autocast_settings(torch.device("cuda"), "auto")
    assert enabled and dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    assert grad_scaler(torch.device("cuda"), "auto").is_enabled() == (dtype == torch.float16)
