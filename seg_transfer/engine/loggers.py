"""Where a run's figures go while it trains (``train.loggers``): ``csv`` (metrics.csv, one row per epoch)
and ``tensorboard`` (event files in the run folder: per-step loss and learning rate of each param group,
per-epoch losses, metrics and per-class metrics, the prediction grid, the resolved config as text).

The trainer calls them on rank 0 only. ``tensorboard`` needs the optional extra
(``pip install -e ".[tensorboard]"``); without it the run stops before training with that one line.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
from PIL import Image

from ..errors import ConfigError, unknown
from ..io import save_text
from ..run_folder import RunFolder

PerClass = Mapping[str, Mapping[str, float]]  # class name -> {metric: value}


class RunLogger:
    """One destination of a run's figures; every hook is optional."""

    def start(self, run_dir: Path, texts: Mapping[str, str], first_step: int = 0) -> None:
        """The run begins (or resumes: ``first_step`` is the first optimizer step still to come)."""

    def step(self, step: int, scalars: Mapping[str, float]) -> None:
        """After optimizer step ``step`` (counted from 1 over the whole run)."""

    def epoch(self, history: Sequence[Mapping[str, Any]], per_class: PerClass,
              images: Mapping[str, Path]) -> None:
        """After an epoch's evaluation: ``history`` (its last row is this epoch), the per-class figures,
        the pictures written this epoch by name (e.g. ``predictions``: predictions.png)."""

    def close(self) -> None:
        """The run ends (also on error)."""


class CsvLogger(RunLogger):
    """metrics.csv: one row per epoch (epoch, train_loss, val_loss, the task's columns, lr, seconds, and
    data_seconds: the time the epoch waited for batches),
    rewritten whole each epoch so a resumed run's file holds exactly its history."""

    def __init__(self, fields: Sequence[str]) -> None:
        self.fields = tuple(fields)
        self.path: Optional[Path] = None

    def start(self, run_dir: Path, texts: Mapping[str, str], first_step: int = 0) -> None:
        self.path = RunFolder(run_dir).metrics_csv

    def epoch(self, history: Sequence[Mapping[str, Any]], per_class: PerClass,
              images: Mapping[str, Path]) -> None:
        assert self.path is not None, "start() first"
        write_csv(self.path, history, self.fields)


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> None:
    """metrics.csv from history rows (columns beyond the standard ones are left out)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=("epoch", "train_loss", "val_loss", *fields, "lr", "seconds", "data_seconds"),
                            extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    save_text(buf.getvalue(), path)


def summary_writer() -> Callable[..., Any]:
    """``torch.utils.tensorboard.SummaryWriter``, or the one-line error naming the optional extra."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch raises it when the tensorboard package is absent
        raise ConfigError('train.loggers: tensorboard needs the tensorboard package; install it with '
                          'pip install -e ".[tensorboard]" (or pip install tensorboard), or use loggers: [csv]') from None
    return SummaryWriter


def _finite(value: Any) -> Optional[float]:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _markdown_code(text: str) -> str:
    """TensorBoard renders text as Markdown: indented lines keep YAML and tables as they are."""
    return "\n".join("    " + line for line in text.splitlines())


class TensorBoardLogger(RunLogger):
    """Event files in the run folder: ``tensorboard --logdir runs`` shows every run side by side.

    Tags: per optimizer step ``train/loss`` and ``lr/<param group>``; per epoch ``loss/train``,
    ``loss/val``, ``val/<metric>`` (the metrics.csv columns), ``per_class/<metric>/<class>``,
    ``time/epoch_seconds``; the image ``predictions`` and the texts (``config``...) once."""

    def __init__(self, fields: Sequence[str]) -> None:
        self.fields = tuple(fields)
        self.writer: Any = None
        self.make = summary_writer()  # fails now, before any training, when the extra is missing

    def start(self, run_dir: Path, texts: Mapping[str, str], first_step: int = 0) -> None:
        # purge_step: a resumed run drops the events an interrupted epoch had logged past its last checkpoint
        self.writer = self.make(log_dir=str(run_dir), purge_step=first_step or None)
        for tag, text in texts.items():
            self.writer.add_text(tag, _markdown_code(text), 0)

    def step(self, step: int, scalars: Mapping[str, float]) -> None:
        for tag, value in scalars.items():
            if (v := _finite(value)) is not None:
                self.writer.add_scalar(tag, v, step)

    def epoch(self, history: Sequence[Mapping[str, Any]], per_class: PerClass,
              images: Mapping[str, Path]) -> None:
        row = history[-1]
        epoch = int(row["epoch"])
        scalars = {"loss/train": row.get("train_loss"), "loss/val": row.get("val_loss"),
                   "time/epoch_seconds": row.get("seconds"), **{f"val/{k}": row.get(k) for k in self.fields}}
        for name, figures in per_class.items():
            scalars.update({f"per_class/{metric}/{name}": v for metric, v in figures.items()})
        for tag, value in scalars.items():
            if (v := _finite(value)) is not None:
                self.writer.add_scalar(tag, v, epoch)
        for tag, path in images.items():
            if path.is_file():
                with Image.open(path) as img:
                    self.writer.add_image(tag, np.asarray(img.convert("RGB")), epoch, dataformats="HWC")
        self.writer.flush()  # a run watched live shows each epoch as it ends

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


LOGGERS: dict[str, Callable[[Sequence[str]], RunLogger]] = {"csv": CsvLogger, "tensorboard": TensorBoardLogger}


class Loggers(RunLogger):
    """Every logger ``train.loggers`` names, called in turn."""

    def __init__(self, loggers: Sequence[RunLogger] = ()) -> None:
        self.loggers = list(loggers)

    def start(self, run_dir: Path, texts: Mapping[str, str], first_step: int = 0) -> None:
        for lg in self.loggers:
            lg.start(run_dir, texts, first_step)

    def step(self, step: int, scalars: Mapping[str, float]) -> None:
        for lg in self.loggers:
            lg.step(step, scalars)

    def epoch(self, history: Sequence[Mapping[str, Any]], per_class: PerClass,
              images: Mapping[str, Path]) -> None:
        for lg in self.loggers:
            lg.epoch(history, per_class, images)

    def close(self) -> None:
        for lg in self.loggers:
            lg.close()


def build_loggers(names: Sequence[str], fields: Sequence[str]) -> Loggers:
    """``train.loggers`` -> the loggers (``fields``: the task's metrics.csv columns)."""
    for name in names:
        if name not in LOGGERS:
            raise unknown("logger", name, LOGGERS, "train.loggers")
    return Loggers([LOGGERS[name](fields) for name in dict.fromkeys(names)])
