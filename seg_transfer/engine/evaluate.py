"""``seg-transfer evaluate``: score a checkpoint on a config's val split; JSON report and confusion PNG."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Union

from ..config import Config, to_dict
from ..data.registry import build_dataset
from ..data.transforms import build_transforms
from ..errors import ConfigError
from ..io import save_text
from ..models.checkpoint import load_checkpoint
from ..predict import resolve_device
from .trainer import _plain, evaluate


def evaluate_checkpoint(cfg: Config, checkpoint: Union[str, os.PathLike], out_dir: Optional[str] = None,
                        device: Optional[str] = "cpu", progress: bool = True) -> dict[str, Any]:
    """Metrics of ``checkpoint`` on ``cfg``'s val split, written to ``out_dir`` (metrics.json, confusion.png)."""
    from .plots import plot_confusion

    device_ = resolve_device(device)
    model = load_checkpoint(checkpoint, device_)
    splits = build_dataset(cfg.data)
    classes = list(model.info.classes)
    if list(splits.classes) != classes:
        raise ConfigError(f"data.classes {list(splits.classes)} differ from the checkpoint's {classes}")
    _, val_t = build_transforms(**to_dict(cfg.augment), preprocess=model.info.preprocess,
                                ignore_index=splits.ignore_index)
    dataset = splits.val.with_transform(val_t)
    _, metrics, matrix = evaluate(model, dataset, None, len(classes), splits.ignore_index, device_,
                                  cfg.train.val_batch_size, progress=progress)
    out = Path(out_dir) if out_dir else Path(checkpoint).resolve().parent / "eval"
    report = {**_plain(metrics), "classes": classes, "images": len(dataset), "checkpoint": str(checkpoint),
              "confusion": matrix.mat.tolist(), "out_dir": str(out)}
    save_text(json.dumps(report, indent=1) + "\n", out / "metrics.json")
    plot_confusion(matrix.mat.cpu().numpy(), classes, out / "confusion.png")
    return report
