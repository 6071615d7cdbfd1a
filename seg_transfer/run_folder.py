"""The run folder's layout, spelled once, and its reader: the files a fine-tune leaves in its folder
(``RunFolder``: run.json, config.yaml, best.pt / last.pt, metrics.csv, the plots, the val metrics,
report.html), what ``seg-transfer evaluate`` writes into its out folder (the same names, and metrics.json),
and a cross-validation folder (``CvFolder``: folds.json, cv_summary.json / .csv, cv.png, compare.json, and
a run folder per fold x seed with its train.txt / val.txt list files).

The writers stay with what they write (the trainer, ``evaluate``, the loggers, the tasks' reports) and
take the names from here; what reads a run folder back reads it here. No torch import: the CLI uses it.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

# ------------------------------------------------------------------------------------ a run folder
RUN_JSON = "run.json"  # command, cwd, timings, freezing, history (the trainer's and evaluate's)
CONFIG = "config.yaml"  # the resolved config: reruns the run from any folder
BEST = "best.pt"
LAST = "last.pt"  # what --resume continues from
METRICS_CSV = "metrics.csv"  # one row per epoch (train.loggers: csv)
CURVES = "curves.png"
PREDICTIONS = "predictions.png"  # predictions spread over the val split, at each best epoch and the last
BEST_WORST = "predictions_best_worst.png"  # the best epoch's best and worst val images
CONFUSION = "confusion.png"  # the task's report at the best epoch
PR_CURVES = "pr_curves.png"  # detection's
VAL_METRICS_LAST = "val_metrics_last.json"  # the last evaluation (cv scores a run by it)
VAL_METRICS_BEST = "val_metrics_best.json"  # the best epoch's metrics, per-class figures and image scores
TRANSFER_REPORT = "transfer_report.json"  # what was loaded, skipped, re-initialised
REPORT = "report.html"
EVAL_METRICS = "metrics.json"  # evaluate's out folder: the checkpoint's metrics
EVAL_DIR = "eval"  # evaluate's default out folder, beside the checkpoint
ERROR = "error.txt"  # cv: the traceback of a run that failed
# suggest's out folder (default RUN_DIR/suggest): which pool images to label next
SUGGEST_DIR = "suggest"
SUGGESTIONS_CSV = "suggestions.csv"  # every pool image: the picks in rank order, then the rest by uncertainty
SUGGESTIONS_TXT = "suggestions.txt"  # the picked images' paths, one a line: what goes to the annotators
SUGGESTIONS_PNG = "suggestions.png"  # the contact sheet of the picks with their predictions
MARKERS = (RUN_JSON, CONFIG, METRICS_CSV, EVAL_METRICS)  # any one of them: a run folder (or evaluate's)

# ---------------------------------------------------------------------- a cross-validation folder
FOLDS = "folds.json"
CV_SUMMARY_JSON = "cv_summary.json"
CV_SUMMARY_CSV = "cv_summary.csv"
CV_PLOT = "cv.png"
COMPARE = "compare.json"  # compare's out folder (and plain_loop.py's, with --against)

PathLike = Union[str, Path]


def list_name(side: str) -> str:
    """A fold's list file of ``side`` (train, val) in its run folder: ``train.txt``."""
    return f"{side}.txt"


def fold_dir(fold: int, seed: int) -> str:
    """The run folder of fold ``fold`` (1-based) with seed ``seed`` in a cross-validation folder."""
    return f"fold{fold}_seed{seed}"


def load_json(path: PathLike) -> Any:
    """The JSON in ``path``: an absent or broken file raises."""
    return json.loads(Path(path).read_text())


def read_json(path: PathLike) -> Optional[dict[str, Any]]:
    """The JSON object in ``path``; None when the file is absent, unreadable, not JSON or not an object
    (a page about a run shows what is there)."""
    try:
        data = load_json(path)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _number(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


class _In:
    """A file of the folder by its name: ``RunFolder(d).best`` is ``d / BEST``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, folder: Any, owner: Any = None) -> Path:
        return folder.path / self.name


@dataclass(frozen=True)
class _Folder:
    """A folder of known files: frozen, compared and hashed by its path."""

    path: Path

    def __init__(self, path: PathLike) -> None:
        object.__setattr__(self, "path", Path(path))


class RunFolder(_Folder):
    """The files of one run folder (a fine-tune's, or evaluate's out folder) as paths, and their reader."""

    run_json = _In(RUN_JSON)
    config = _In(CONFIG)
    best = _In(BEST)
    last = _In(LAST)
    metrics_csv = _In(METRICS_CSV)
    curves = _In(CURVES)
    predictions = _In(PREDICTIONS)
    best_worst = _In(BEST_WORST)
    confusion = _In(CONFUSION)
    pr_curves = _In(PR_CURVES)
    val_metrics_last = _In(VAL_METRICS_LAST)
    val_metrics_best = _In(VAL_METRICS_BEST)
    transfer_report = _In(TRANSFER_REPORT)
    report = _In(REPORT)
    eval_metrics = _In(EVAL_METRICS)
    error = _In(ERROR)

    def list_file(self, side: str) -> Path:
        """cv's list file of ``side`` (train, val)."""
        return self.path / list_name(side)

    def is_run_folder(self) -> bool:
        """Whether any of ``MARKERS`` is there."""
        return any((self.path / m).is_file() for m in MARKERS)

    # ---------------------------------------------------------------------------------- reading
    def run(self) -> Optional[dict[str, Any]]:
        """run.json; None when the folder has none."""
        return load_json(self.run_json) if self.run_json.is_file() else None

    def saved_config(self) -> Optional[Path]:
        """The run's saved config.yaml; None when the folder has none."""
        return self.config if self.config.is_file() else None

    def metrics_rows(self) -> list[dict[str, Any]]:
        """metrics.csv's rows, numbers as floats; [] when the folder has none."""
        if not self.metrics_csv.is_file():
            return []
        with open(self.metrics_csv, newline="") as f:
            return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]

    def val_metrics(self, which: str = "last") -> Optional[dict[str, Any]]:
        """``val_metrics_last.json`` (``which="last"``) or ``val_metrics_best.json`` (``"best"``); None when absent."""
        path = {"last": self.val_metrics_last, "best": self.val_metrics_best}[which]
        return load_json(path) if path.is_file() else None


class CvFolder(_Folder):
    """The files of a cross-validation folder (``seg-transfer cv``'s out folder, and each side of compare's)."""

    def run(self, fold: int, seed: int) -> RunFolder:
        """The run folder of fold ``fold`` (1-based) with seed ``seed``."""
        return RunFolder(self.path / fold_dir(fold, seed))

    folds = _In(FOLDS)
    summary_json = _In(CV_SUMMARY_JSON)
    summary_csv = _In(CV_SUMMARY_CSV)
    plot = _In(CV_PLOT)
    compare = _In(COMPARE)

    def summary(self) -> Any:
        """cv_summary.json (an absent file raises)."""
        return load_json(self.summary_json)

    def fold_plan(self) -> Any:
        """folds.json: the plan the runs were split by (an absent file raises)."""
        return load_json(self.folds)
