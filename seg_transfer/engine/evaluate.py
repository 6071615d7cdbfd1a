"""Evaluation: a model's val loss and its task's metrics over a dataset (``evaluate``, run by the trainer
each epoch), and ``seg-transfer evaluate``'s checkpoint scoring with its JSON report, plots, best and
worst images and report.html."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import nn
from tqdm import tqdm

from ..config import Config, dump_config, load_yaml
from ..data.registry import build_dataset
from ..data.segmentation import binary_splits
from ..errors import ConfigError
from ..io import resolve_device, save_text
from ..models.build import model_info
from ..models.checkpoint import load_checkpoint
from ..models.tta import TTA, TTAModel
from ..run_folder import BEST_WORST, CONFIG, EVAL_DIR, EVAL_METRICS, REPORT, RUN_JSON, RunFolder
from . import distributed as D
from .metrics.base import Meter
from .report import write_report
from .split_forward import forward_module
from .tasks import Task, build_task


def evaluate(model: nn.Module, dataset: Any, task: Task, device: torch.device, batch_size: int = 1,
             collate: Optional[Callable] = None, progress: bool = False,
             amp: tuple[bool, Optional[torch.dtype]] = (False, None), cached: bool = False,
             channels_last: bool = False) -> tuple[float, dict[str, Any], Meter]:
    """Val loss (NaN where the task has none) and ``task``'s metrics of ``model`` over ``dataset``
    (transformed items, or cached features with ``cached=True``). Under torchrun each rank scores its
    own shard (no item twice) and the meters and losses are summed over ranks: the figures are exact."""
    model.eval()
    forward = forward_module(model, cached)
    meter = task.meter()
    loader = D.make_loader(dataset, batch_size, shuffle=False, seed=0, collate_fn=collate or task.collate, pad=False)
    total, count = 0.0, 0
    with torch.inference_mode():
        for inputs, targets in tqdm(loader, desc="eval", unit="batch", leave=False, disable=not progress):
            inputs, targets = to_device(inputs, device, channels_last), task.to_device(targets, device)
            with torch.autocast(device.type, dtype=amp[1], enabled=amp[0]):
                loss = task.eval_batch(forward, inputs, targets, cached, meter)
            if loss is not None:
                total += loss.item() * len(targets)
                count += len(targets)
    meter.reduce()
    loss_sum, items = D.all_sum(total, count)
    return (loss_sum / items if items else float("nan")), meter.compute(), meter


def to_device(inputs: Any, device: torch.device, channels_last: bool = False) -> Any:
    """Images (a batch tensor, or a list of images of different sizes), or a dict of cached features, onto
    ``device``; ``channels_last``: batches of images and feature maps (4-d) in that memory format."""
    if isinstance(inputs, dict):
        return {k: to_device(v, device, channels_last) for k, v in inputs.items()}
    if isinstance(inputs, (list, tuple)):  # detectors take a list of differently sized images
        return [x.to(device) for x in inputs]
    if channels_last and inputs.dim() == 4:
        return inputs.to(device, memory_format=torch.channels_last)
    return inputs.to(device)


def plain_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics as floats/lists only (checkpoints load with weights_only=True)."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor):
            v = v.tolist()
        out[k] = [float(x) for x in v] if isinstance(v, (list, tuple)) else float(v)
    return out


def run_data(checkpoint: Union[str, os.PathLike]) -> Optional[tuple[dict[str, Any], Path]]:
    """The ``data:`` block of the run folder ``checkpoint`` lies in (its config.yaml, as the run saved it:
    list files, group split, absolute root) and that file; None for a checkpoint outside a run folder.
    Its val split is the one the run validated on."""
    folder = RunFolder(Path(checkpoint).parent)  # as the user named the checkpoint: what is printed
    path = folder.saved_config()
    if path is None:
        return None
    data = load_yaml(str(path)).get("data")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: no 'data:' block to score the run's val split with; give data overrides")
    root = data.get("root")
    if isinstance(root, str) and not os.path.isabs(root):  # a run saved before roots were made absolute
        info = folder.run()
        cwd = info.get("cwd") if info is not None else None
        if cwd:  # relative to where that run was started, which run.json recorded
            data = {**data, "root": os.path.join(cwd, root)}
    return data, path


def evaluate_checkpoint(cfg: Config, checkpoint: Union[str, os.PathLike], out_dir: Optional[str] = None,
                        device: Optional[str] = "cpu", progress: bool = True,
                        command: Optional[Sequence[str]] = None, tta: Optional[TTA] = None,
                        data_from: Optional[str] = None) -> dict[str, Any]:
    """Metrics of ``checkpoint`` on ``cfg``'s val split, written to ``out_dir``: metrics.json, the task's
    plots (confusion.png...), the best and worst images, config.yaml, run.json (``command``, timings,
    ``data_from``: the file whose data block was scored) and report.html. ``tta``: score the model seen
    through test-time augmentation (flips, scales)."""
    started, start = time.strftime("%Y-%m-%dT%H:%M:%S"), time.perf_counter()
    device_ = resolve_device(device)
    model = load_checkpoint(checkpoint, device_)
    splits = build_dataset(cfg.data)
    info = model_info(model)
    if info.binary:  # the checkpoint's model is binary: its masks are read as it was trained on them
        splits = binary_splits(splits)
    classes = list(info.classes)
    if list(splits.classes) != classes:
        raise ConfigError(f"data.classes {list(splits.classes)} differ from the checkpoint's {classes}")
    task = build_task(info.task, cfg, splits)
    if tta is not None:
        model = TTAModel(model, info.task, tta, binary=info.binary)
    _, val_t = task.transforms(cfg.augment, info.preprocess)
    dataset = splits.val.with_transform(val_t)
    loaded = time.perf_counter()
    val_loss, metrics, meter = evaluate(model, dataset, task, device_, cfg.train.val_batch_size, progress=progress)
    evaluated = time.perf_counter()
    out = Path(out_dir) if out_dir else Path(checkpoint).resolve().parent / EVAL_DIR
    folder = RunFolder(out)
    out.mkdir(parents=True, exist_ok=True)
    extra = task.write_report(metrics, meter, out)
    files = list(extra.get("files", []))
    scores = meter.image_scores()
    k = max(1, cfg.output.num_predictions // 2) if cfg.output.num_predictions else 0
    if task.plot_best_worst(model, dataset, scores, k, device_, folder.best_worst):
        files.append(BEST_WORST)
    save_text(dump_config(cfg), folder.config)
    names = getattr(dataset, "names", None)
    report = {**plain_metrics(metrics), "val_loss": val_loss, "classes": classes, "images": len(dataset),
              "checkpoint": str(checkpoint), "tta": str(tta) if tta else None, **extra, "out_dir": str(out),
              "metric": task.main_metric,
              "per_class": task.per_class(metrics), "image_score": task.image_score, "image_scores": scores,
              "image_names": names if isinstance(names, list) else None,
              "summary": task.report_lines(metrics),
              "files": [EVAL_METRICS, *sorted([*files, CONFIG, RUN_JSON, REPORT])]}
    save_text(json.dumps(report, indent=1) + "\n", folder.eval_metrics)
    train_run = Path(checkpoint).resolve().parent
    run = {"kind": "evaluate", "command": list(command) if command is not None else None, "cwd": os.getcwd(),
           "checkpoint": str(Path(checkpoint).resolve()),
           "train_run": str(train_run) if RunFolder(train_run).saved_config() else None,
           "data_from": data_from,
           "task": task.name, "metric": task.main_metric, "metric_label": task.metric_label,
           "image_score": task.image_score, "classes": classes, "images": {"val": len(dataset)},
           "device": str(device_), "world_size": 1, "started": started, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "load_seconds": loaded - start, "eval_seconds": evaluated - loaded,
           "total_seconds": time.perf_counter() - start}
    save_text(json.dumps(run, indent=1) + "\n", folder.run_json)
    write_report(out)
    return report
