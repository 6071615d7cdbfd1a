"""``--check-data``'s second half: resolve everything a run would build from its config, without loading
weights or training, so that a bad model name, stage, optimizer or device fails in a second rather than
after the data check and the weights download of a real run."""
from __future__ import annotations

from typing import Callable

import torch

from ..config import Config
from ..data.common import DataSplits
from ..errors import SegTransferError
from ..io import resolve_device
from ..models import weights as W
from ..models.backbone_spec import TORCHVISION
from ..models.backbones import spec_of
from ..models.build import model_info
from ..models.stages import check_stages
from ..transfer.freeze import apply_freeze, param_groups
from ..transfer.sources import create_model, toolkit_checkpoint
from .loggers import build_loggers
from .optim import autocast_settings, build_optimizer, build_scheduler
from .tasks import build_task
from .trainer import LR_SCALING, model_block, steps_per_epoch


def preflight(cfg: Config, splits: DataSplits, note: Callable[[str], None] = lambda _m: None) -> list[str]:
    """The problems a run of ``cfg`` on ``splits`` would meet before its first step, as one line each (an
    empty list: it would start). ``note`` hears what is fine but worth knowing (weights still to download)."""
    model: list[torch.nn.Module] = []

    def architecture() -> None:  # the model as the run builds it, with random values instead of weights
        model.append(create_model(model_block(cfg, splits.classes, weights=None, backbone_weights=None)))

    problems = _run([architecture])
    if not model:  # an unknown name: the weights and the steps below have nothing to resolve against
        return problems
    net, f, t = model[0], cfg.freeze, cfg.train
    world = 1  # under torchrun the LR scales with the world; the check runs in one process

    def optimizer() -> None:
        lr = t.lr * LR_SCALING[t.lr_scaling](world)
        opt = build_optimizer(param_groups(net, lr, t.backbone_lr_mult), t.optimizer, lr=lr, momentum=t.momentum,
                              weight_decay=t.weight_decay)
        items = min(len(splits.train), t.limit_train or len(splits.train))  # --limit-train: the subset trains
        steps_ = steps_per_epoch(items, t.batch_size, t.accumulate, world)
        build_scheduler(opt, t.scheduler, total_steps=t.epochs * steps_, warmup_steps=round(t.warmup_epochs * steps_),
                        step_size=t.step_epochs * steps_, gamma=t.gamma)

    def device() -> None:
        autocast_settings(resolve_device(None if t.device == "auto" else t.device, "train.device:"), t.amp)

    return problems + _run([
        lambda: _check_weights(cfg, note),
        lambda: apply_freeze(net, f.strategy, f.stages, f.unfreeze_from, f.bn),
        lambda: check_stages(net, list(f.schedule.values()), "freeze.schedule") if f.schedule else None,
        lambda: _task(cfg, splits, net, note),
        optimizer, device,
        lambda: build_loggers(t.loggers, []),
    ])


def _task(cfg: Config, splits: DataSplits, net: torch.nn.Module, note: Callable[[str], None]) -> None:
    """The task's transforms build; settings it ignores (``augment.crop_size`` outside segmentation) are notes."""
    info = model_info(net)
    task = build_task(info.task, cfg, splits)
    task.transforms(cfg.augment, info.preprocess)
    for line in task.ignored_settings(cfg.augment):
        note(line.removeprefix("warning: "))


def _run(steps: list[Callable[[], object]]) -> list[str]:
    """Each step's SegTransferError as a line; the steps after a failing one still run (every problem at once)."""
    problems = []
    for step in steps:
        try:
            step()
        except SegTransferError as err:
            problems.append(str(err))
    return problems


def _check_weights(cfg: Config, note: Callable[[str], None]) -> None:
    """The weights specs resolve (names known, files there, init_from a checkpoint); an official checkpoint
    not cached yet is a note (the run downloads it)."""
    m = cfg.model
    if cfg.train.init_from:
        W.resolve("", cfg.train.init_from, "train.init_from")  # a missing file: its one-line error
    if m.name is not None:
        specs = [("model.weights", W.resolve(m.name, m.weights, "model.weights"))]
        if m.weights is None and toolkit_checkpoint(m.backbone_weights) is None:
            specs.append(("model.backbone_weights", W.resolve(m.name, m.backbone_weights, "model.backbone_weights",
                                                              enum=W.backbone_weights_enum(m.name)[0])))
    else:
        W.assembled_weights(m.weights)
        # torchvision's weights specs; another library's (timm/<name>) are resolved when the model is built
        specs = ([] if m.backbone is None or toolkit_checkpoint(m.backbone_weights) is not None
                 or spec_of(m.backbone).source is not TORCHVISION else
                 [("model.backbone_weights", W.resolve(m.backbone, m.backbone_weights, "model.backbone_weights"))])
    for key, resolved in specs:
        if isinstance(resolved, W.WeightsEnum) and not W.cache_path(resolved).is_file():
            size = resolved.meta.get("_file_size")
            note(f"{key}: {W.entry_name(resolved)} is not cached yet: the run downloads it"
                 + (f" (~{size:.0f} MB)" if size else "") + f" to {W.checkpoint_dir()}")
