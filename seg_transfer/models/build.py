"""Model config -> ``nn.Module``: picks the task whose registry holds the model, and calls its builder.

Each task module (``segmentation``, ``detection``, ``classification``) has the same two registries,
``ZOO`` (torchvision's models by name) and ``HEADS`` (heads assembled over ``backbones.BACKBONES``),
and the same two builders. This is the one place that combines them; where a model's starting
weights come from beyond torchvision's own (another seg_transfer checkpoint) is ``transfer``'s job.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, cast

from torch import nn

from ..config import ModelConfig, from_dict, to_dict
from ..errors import ConfigError, unknown
from . import classification, detection, segmentation
from . import weights as W
from .backbones import BACKBONES, spec_of
from .necks import NECKS
from .preprocess import Built, Preprocess


@dataclass(frozen=True)
class TaskModels:
    """One task's model registries and builders (``build_assembled`` takes the backbone's weights spec)."""

    zoo: Mapping[str, Any]
    heads: Mapping[str, Any]
    build_zoo: Callable[[ModelConfig], Built]
    build_assembled: Callable[[ModelConfig, W.Spec], Built]


TASKS: dict[str, TaskModels] = {
    "segmentation": TaskModels(segmentation.ZOO, segmentation.HEADS, segmentation.build_zoo,
                               segmentation.build_assembled),
    "detection": TaskModels(detection.ZOO, detection.HEADS, detection.build_zoo, detection.build_assembled),
    "classification": TaskModels(classification.ZOO, classification.HEADS, classification.build_zoo,
                                 classification.build_assembled),
}


@dataclass
class ModelInfo:
    """What travels with a model: class names, preprocessing and the config that rebuilds it."""

    classes: list[str]
    preprocess: Preprocess
    config: dict[str, Any] = field(default_factory=dict)
    task: str = "segmentation"
    # Binary segmentation: one sigmoid output channel (foreground probability); ``classes`` still names
    # both sides, background first, e.g. ["background", "person"].
    binary: bool = False
    # The transfer report of a backbone taken from another seg_transfer checkpoint (backbone_weights).
    transfer: Any = None


def model_names() -> dict[str, list[str]]:
    """Everything buildable, by registry: ``backbones``, ``necks``, then ``<task>_zoo`` and ``<task>_heads``."""
    names = {"backbones": sorted(BACKBONES), "necks": sorted(NECKS)}
    for task, models in TASKS.items():
        names[f"{task}_zoo"] = sorted(models.zoo)
        names[f"{task}_heads"] = sorted(models.heads)
    return names


def task_of(cfg: ModelConfig) -> str:
    """The task whose registry holds ``model.name`` (zoo) or ``model.head`` (assembled)."""
    if cfg.name is not None:
        if cfg.backbone is not None or cfg.head is not None:
            raise ConfigError("model: give either 'name' (a zoo model) or 'backbone' + 'head', not both")
        found = [task for task, models in TASKS.items() if cfg.name in models.zoo]
        if not found:
            raise unknown("model", cfg.name, [n for m in TASKS.values() for n in m.zoo], "model.name")
        return found[0]
    if cfg.backbone is None or cfg.head is None:
        raise ConfigError(f"model: give 'name' (one of {', '.join(sorted(segmentation.ZOO))}) "
                          f"or both 'backbone' and 'head'")
    spec_of(cfg.backbone)  # an unknown name (or timm/<name> without timm) fails here
    found = [task for task, models in TASKS.items() if cfg.head in models.heads]
    if not found:
        raise unknown("head", cfg.head, [n for m in TASKS.values() for n in m.heads], "model.head")
    return found[0]


def is_binary(cfg: ModelConfig | dict[str, Any]) -> bool:
    """Whether a ``model:`` block describes a binary segmentation model (one sigmoid channel, foreground vs
    background): ``binary: true``, or ``num_classes: 1`` on a segmentation model."""
    cfg = from_dict(ModelConfig, cfg, "model")
    task = task_of(cfg)
    if cfg.binary is None:
        return task == "segmentation" and cfg.num_classes == 1
    if cfg.binary and task != "segmentation":
        raise ConfigError(f"model.binary: only segmentation models have a binary mode; this is a {task} model")
    if not cfg.binary and task == "segmentation" and cfg.num_classes == 1:
        raise ConfigError("model.num_classes: 1 with model.binary: false: a one-class softmax predicts that class "
                          "everywhere; use binary: true (one sigmoid channel) or give 2 or more classes")
    return cfg.binary


def build_model(cfg: ModelConfig | dict[str, Any]) -> nn.Module:
    """Build the model a ``model:`` config block describes; the result carries ``.info`` (a ``ModelInfo``).

    Weights are torchvision's (an enum entry, or a local ``.pth`` of the same architecture); an
    assembled model's ``weights`` may name a whole-model ``.pth`` file, loaded strictly after assembly.
    """
    cfg = from_dict(ModelConfig, cfg, "model")
    task = task_of(cfg)
    binary = is_binary(cfg)
    if binary:  # resolved once: the builders, the saved config and checkpoints all read binary: true
        cfg = dataclasses.replace(cfg, binary=True)
    models = TASKS[task]
    if cfg.name is not None:
        model, preprocess, classes = models.build_zoo(cfg)
    else:
        whole = W.assembled_weights(cfg.weights)
        model, preprocess, classes = models.build_assembled(cfg, None if whole else cfg.backbone_weights)
        if whole:
            path = cast(Path, W.resolve("", whole, "model.weights"))  # a local spec resolves to its file
            W.load_into(model, W.read_state_dict(path), whole)
    info = ModelInfo(classes=classes, preprocess=preprocess, config=to_dict(cfg), task=task, binary=binary)
    model.info = info  # type: ignore[assignment]  # torch's __setattr__ stub: modules/tensors only (read it with model_info)
    return model


def model_info(model: nn.Module) -> ModelInfo:
    """``model.info``, typed: the ``ModelInfo`` that ``build_model`` attaches to every model it builds."""
    info = getattr(model, "info", None)
    if not isinstance(info, ModelInfo):
        raise ConfigError(f"{type(model).__name__} has no seg_transfer model info (.info): build it with "
                          f"build_model or load_checkpoint")
    return info


def torchvision_builders() -> list[str]:
    """The torchvision builders whose weights the registries can load (for ``seg-transfer weights``)."""
    return (sorted(segmentation.ZOO) + sorted(BACKBONES) + sorted(set(classification.ZOO) - set(BACKBONES))
            + sorted(detection.ZOO))
