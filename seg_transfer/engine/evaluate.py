"""``seg-transfer evaluate``: score a checkpoint on a config's val split; JSON report and confusion PNG."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Union

from ..config import Config
from ..data.registry import build_dataset
from ..errors import ConfigError
from ..io import save_text
from ..models.checkpoint import load_checkpoint
from ..predict import resolve_device
from .tasks import build_task
from .trainer import _plain, evaluate


def evaluate_checkpoint(cfg: Config, checkpoint: Union[str, os.PathLike], out_dir: Optional[str] = None,
                        device: Optional[str] = "cpu", progress: bool = True) -> dict[str, Any]:
    """Metrics of ``checkpoint`` on ``cfg``'s val split, written to ``out_dir`` (metrics.json and the
    task's plots, e.g. confusion.png)."""
    device_ = resolve_device(device)
    model = load_checkpoint(checkpoint, device_)
    splits = build_dataset(cfg.data)
    classes = list(model.info.classes)
    if list(splits.classes) != classes:
        raise ConfigError(f"data.classes {list(splits.classes)} differ from the checkpoint's {classes}")
    task = build_task(model.info.task, cfg, splits)
    _, val_t = task.transforms(cfg.augment, model.info.preprocess)
    dataset = splits.val.with_transform(val_t)
    val_loss, metrics, meter = evaluate(model, dataset, task, device_, cfg.train.val_batch_size, progress=progress)
    out = Path(out_dir) if out_dir else Path(checkpoint).resolve().parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    extra = task.write_report(metrics, meter, out)
    report = {**_plain(metrics), "val_loss": val_loss, "classes": classes, "images": len(dataset),
              "checkpoint": str(checkpoint), **extra, "out_dir": str(out),
              "summary": task.report_lines(metrics), "files": ["metrics.json", *sorted(extra.get("files", []))]}
    save_text(json.dumps(report, indent=1) + "\n", out / "metrics.json")
    return report
