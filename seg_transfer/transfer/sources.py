"""Where a model's starting weights come from, beyond torchvision's own (which ``models/`` resolves
at build time): another seg_transfer checkpoint's backbone (``model.backbone_weights: run/best.pt``,
any task to any task), and the whole-model source a fine-tune transfers from (``train.init_from``, or
a zoo model's pretrained file) for partial loading and class-aware init."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import nn

from ..config import Config, ModelConfig, from_dict
from ..errors import ConfigError
from ..models import weights as W
from ..models.build import build_model, model_info
from ..models.checkpoint import is_checkpoint, read_checkpoint
from .backbone import built_backbone_report, load_backbone_checkpoint


def toolkit_checkpoint(spec: Optional[str]) -> Optional[Path]:
    """``spec`` as a seg_transfer checkpoint file (of any task), else None."""
    if spec is None or not W.is_local_spec(spec) or not Path(spec).expanduser().is_file():
        return None
    path = Path(spec).expanduser()
    return path if is_checkpoint(path) else None


def create_model(model: str | ModelConfig | Mapping[str, Any] | None = None, **kwargs: Any) -> nn.Module:
    """The toolkit's model factory (one name, as timm's ``create_model``): ``create_model("fcn_resnet50")``,
    ``create_model(backbone="resnet50", neck="fpn", head="fpn", num_classes=5)``, or a whole ``model:``
    block (a ``ModelConfig`` or a dict); keyword arguments are that block's keys. Over ``models.build_model``
    (the architecture and torchvision's weights) it adds ``backbone_weights`` naming a seg_transfer
    checkpoint of any task: the model is built without backbone weights, then that checkpoint's backbone
    stages are loaded (``model.info.transfer`` holds the report)."""
    if isinstance(model, (ModelConfig, Mapping)):
        if kwargs:
            raise TypeError("create_model: pass a model block or keyword arguments, not both")
        cfg = from_dict(ModelConfig, model, "model")
    else:
        cfg = from_dict(ModelConfig, {"name": model, **kwargs}, "model")
    source = toolkit_checkpoint(cfg.backbone_weights)
    if source is None:
        built = build_model(cfg)
        pretrained = str(cfg.backbone_weights).lower() not in ("none", "null", "")
        if cfg.name is None and pretrained and W.assembled_weights(cfg.weights) is None:
            model_info(built).transfer = built_backbone_report(
                built, f"{cfg.backbone} weights {cfg.backbone_weights}, loaded whole when the model was built")
        return built
    if cfg.name is not None and str(cfg.weights).lower() not in ("none", "null", ""):
        raise ConfigError(f"model.backbone_weights: {source} is used only with model.weights: null "
                          f"(zoo model {cfg.name} would otherwise load its own pretrained weights)")
    built = build_model(dataclasses.replace(cfg, backbone_weights=None))
    info = model_info(built)
    info.transfer = load_backbone_checkpoint(built, source)
    info.config["backbone_weights"] = str(source)
    return built


def source_weights(cfg: Config) -> Optional[tuple[Optional[list[str]], dict[str, torch.Tensor], str]]:
    """(classes, state dict, description) of the whole-model weights a run starts from, if any."""
    if cfg.train.init_from:
        ckpt = read_checkpoint(cfg.train.init_from)
        return list(ckpt["classes"]), ckpt["state_dict"], f"checkpoint {cfg.train.init_from}"
    if cfg.model.name and cfg.model.weights is not None:
        resolved = W.resolve(cfg.model.name, cfg.model.weights)
        if isinstance(resolved, W.WeightsEnum):
            return W.categories(resolved), W.read_state_dict(W.cache_path(resolved)), W.entry_name(resolved)
        if isinstance(resolved, Path):
            return W.categories(W.weights_enum(cfg.model.name).DEFAULT), W.read_state_dict(resolved), str(resolved)
    return None
