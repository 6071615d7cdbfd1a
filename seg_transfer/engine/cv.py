"""K-fold cross-validation of a config: the config's train and val items pooled, split into folds (whole
groups by ``group_regex``, stratified by class for classification), each fold x seed trained as a normal
run folder, then per-run and mean +- std of every metric and per-class figure (cv_summary.json / .csv, cv.png).

A fold's run is an ordinary config whose data block names its items through list files (``train.txt``,
``val.txt`` in its folder), so ``seg-transfer finetune DIR/fold1_seed0/config.yaml`` repeats it. The
figures of a run are those of its last epoch: picking the best epoch on the held-out fold would flatter it.
"""
from __future__ import annotations

import csv
import inspect
import io
import json
import math
import statistics
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..config import Config
from ..data.classification import ImageFolderDataset
from ..data.common import AnnotatedImages, ImageDataset
from ..data.registry import DATASETS, build_dataset
from ..data.split import group_keys, kfold, limit_items
from ..errors import ConfigError
from ..io import save_text
from ..models.build import task_of
from ..run_folder import CvFolder, RunFolder
from .plots import plot_cross_validation


@dataclass
class Outcome:
    """What one run reports: its final evaluation's metrics (the task meter's) and which one is the main."""

    metrics: dict[str, Any]
    metric: str  # the main metric's key: miou, iou (binary), ap, accuracy
    label: str  # how it is named: mIoU, IoU, AP, accuracy


# One run: (the fold's config, its run folder) -> its Outcome.
Runner = Callable[[Config, Path], Outcome]
NOT_PER_CLASS = ("support", "image_scores")  # counts, and one score per val image: not per-class scores
PLOTTED_PER_CLASS = ("iou", "recall", "ap_per_class")  # per-class accuracy: IoU, recall, AP


# ------------------------------------------------------------------------------------------- folds
@dataclass
class Pool:
    """The items of a config's train and val splits together, sorted by name."""

    names: list[str]  # what the list files name (stems; imagefolder: paths relative to the root)
    files: list[str]  # file names, for group_regex
    classes: list[str]
    labels: Optional[list[int]] = None  # classification: stratify by these
    groups: Optional[list[str]] = None  # group_regex keys


def _items(dataset: ImageDataset) -> tuple[list[str], list[str], Optional[list[int]]]:
    if isinstance(dataset, ImageFolderDataset):
        return dataset.names, [p.name for p in dataset.files], list(dataset.labels)
    if isinstance(dataset, AnnotatedImages):
        return dataset.names, [Path(p).name for p in dataset.images], None
    raise ConfigError(f"cv: {type(dataset).__name__} items have no names for list files")


def pool_of(cfg: Config) -> Pool:
    """The pooled items of ``cfg.data`` (train and val; an item in both counts once)."""
    if cfg.data.get("val_annotations") is not None:
        raise ConfigError("data.val_annotations: cross-validation pools train and val, which list files "
                          "cannot do across two annotation files; merge them into one annotations file")
    splits = build_dataset(cfg.data)
    seen: dict[str, tuple[str, Optional[int]]] = {}
    whole_lines = isinstance(splits.train, ImageFolderDataset)  # imagefolder list files: one path per line
    for dataset in (splits.train, splits.val):
        names, files, labels = _items(dataset)
        for i, name in enumerate(names):
            seen.setdefault(name, (files[i], None if labels is None else labels[i]))
    names = sorted(seen)
    bad = [n for n in names if n != n.strip() or n.startswith("#") or (not whole_lines and len(n.split()) != 1)]
    if bad:
        raise ConfigError(f"cv: {len(bad)} file name(s) cannot be written to a list file (spaces, or a "
                          f"leading '#'): {', '.join(repr(b) for b in bad[:3])}; rename them")
    files = [seen[n][0] for n in names]
    labels = [int(label) for n in names if (label := seen[n][1]) is not None] if whole_lines else None
    regex = cfg.data.get("group_regex")
    return Pool(names, files, list(splits.classes), labels, group_keys(files, regex) if regex else None)


@dataclass
class FoldPlan:
    """Which pooled items each fold trains and validates on (indices into ``pool.names``)."""

    pool: Pool
    val: list[list[int]]
    train: list[list[int]]
    seed: int = 0

    @property
    def k(self) -> int:
        return len(self.val)

    def describe(self) -> str:
        p = self.pool
        how = (f"whole groups of group_regex ({len(set(p.groups))} groups)" if p.groups is not None else
               f"stratified by class ({len(p.classes)} classes)" if p.labels is not None else "shuffled")
        sizes = ", ".join(f"{len(t)}/{len(v)}" for t, v in zip(self.train, self.val))
        return f"{self.k} folds over {len(p.names)} items, {how}; train/val per fold: {sizes}"

    def to_dict(self) -> dict[str, Any]:
        p = self.pool
        return {"seed": self.seed, "items": len(p.names), "classes": p.classes,
                "folds": [{"fold": f + 1, "train": [p.names[i] for i in t], "val": [p.names[i] for i in v],
                           **({"val_groups": sorted({p.groups[i] for i in v})} if p.groups is not None else {})}
                          for f, (t, v) in enumerate(zip(self.train, self.val))]}


def plan_folds(pool: Pool, k: int, *, limit_train: Optional[int] = None, seed: int = 0) -> FoldPlan:
    """``k`` folds of ``pool``; ``limit_train`` keeps a seeded subset of that many train items per fold
    (the same subset for every seed and recipe, so runs stay paired)."""
    n = len(pool.names)
    val = kfold(n, k, groups=pool.groups, labels=pool.labels, seed=seed)
    train = []
    for f, held in enumerate(val):
        out = set(held)
        train.append(limit_items([i for i in range(n) if i not in out], limit_train, seed * 1000 + f))
    return FoldPlan(pool, val, train, seed)


def fold_config(cfg: Config, plan: FoldPlan, fold: int, seed: int, run_dir: Path) -> Config:
    """``cfg`` trained on fold ``fold``'s items with ``train.seed`` = ``seed``; writes the list files into ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lists = {}
    for side, idx in (("train", plan.train[fold]), ("val", plan.val[fold])):
        path = RunFolder(run_dir).list_file(side)
        save_text("".join(f"{plan.pool.names[i]}\n" for i in idx), path)
        lists[f"{side}_list"] = str(path.resolve())
    # group_regex and val_groups pick a split of their own, which the lists replace
    data = {k: v for k, v in cfg.data.items() if k not in ("group_regex", "val_groups")}
    if "split" in inspect.signature(DATASETS[data["format"]]).parameters:
        data["split"] = "list"
    # A run's figures are its last evaluation's: earlier ones only cost time, unless val_interval asks for them.
    every = cfg.train.val_interval if cfg.train.val_interval > 1 else max(1, cfg.train.epochs)
    return replace(cfg, data={**data, **lists}, train=replace(cfg.train, seed=seed, val_interval=every),
                   output=replace(cfg.output, dir=str(run_dir.parent), name=run_dir.name))


# ------------------------------------------------------------------------------------------ running
def read_metrics(run_dir: Path) -> dict[str, Any]:
    """The last evaluation a run folder holds (``val_metrics_last.json``), class names left out."""
    folder = RunFolder(run_dir)
    metrics = folder.val_metrics("last")
    if metrics is None:
        raise ConfigError(f"{folder.val_metrics_last}: no evaluation was written (train.epochs: 0?)")
    metrics.pop("classes", None)
    return metrics


def engine_runner(progress: bool = True, log: Optional[Callable[[str], None]] = None) -> Runner:
    """A Runner that trains with the engine's Trainer, as ``seg-transfer finetune`` does. The transfer report
    and freezing table, the same for every fold, are printed for each recipe's first run only."""
    from .trainer import Trainer  # the Trainer pulls in the whole engine: only when a run starts

    shown: set[Path] = set()  # the recipes' folders (cv's DIR; compare's DIR/A, DIR/B) whose tables were printed

    def run(cfg: Config, run_dir: Path) -> Outcome:
        RunFolder(run_dir).val_metrics_last.unlink(missing_ok=True)  # never an earlier run's figures
        trainer = Trainer(cfg, run_dir=run_dir, progress=progress, log=log, show_transfer=run_dir.parent not in shown)
        shown.add(run_dir.parent)
        trainer.fit()
        return Outcome(read_metrics(run_dir), trainer.task.main_metric, trainer.task.metric_label)

    return run


@dataclass
class FoldRun:
    """One fold x seed: where it ran, its sizes, time, metrics; ``error`` when it failed."""

    fold: int  # 1-based
    seed: int
    run_dir: Path
    train: int
    val: int
    seconds: float = math.nan
    metrics: dict[str, Any] = field(default_factory=dict)
    error: Optional[str] = None


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _stats(values: Sequence[float]) -> dict[str, float]:
    """mean, std (sample) and n over the finite values (NaN: a class absent from a fold, a failed run)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return {"mean": statistics.fmean(finite) if finite else math.nan,
            "std": statistics.stdev(finite) if len(finite) > 1 else math.nan, "n": len(finite)}


def jsonable(value: Any) -> Any:
    """NaN -> null (JSON has no NaN), Paths -> str, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return str(value) if isinstance(value, Path) else value


class CrossValidation:
    """One recipe over a FoldPlan: runs each fold x seed through ``runner``, keeps every result and
    rewrites the summary after each run, so a failed or interrupted run loses nothing else."""

    def __init__(self, cfg: Config, plan: FoldPlan, out: Path, runner: Runner, *, seeds: int = 1,
                 base_seed: Optional[int] = None, name: str = "", source: str = "",
                 overrides: Sequence[str] = ()) -> None:
        if seeds < 1:
            raise ConfigError(f"--seeds: expected at least 1, got {seeds}")
        self.cfg, self.plan, self.out, self.runner, self.seeds = cfg, plan, Path(out), runner, seeds
        self.base_seed = cfg.train.seed if base_seed is None else base_seed
        self.name, self.source, self.overrides = name, source, list(overrides)
        self.task = task_of(cfg.model)
        self.metric: Optional[str] = None  # the main metric, as the first completed run reports it
        self.label = ""
        self.runs: list[FoldRun] = []
        self.out.mkdir(parents=True, exist_ok=True)
        save_text(json.dumps(plan.to_dict(), indent=1) + "\n", CvFolder(self.out).folds)

    def run_one(self, fold: int, s: int) -> FoldRun:
        """Train fold ``fold`` (0-based) with seed ``base_seed + s``; an exception becomes the run's error."""
        seed = self.base_seed + s
        folder = CvFolder(self.out).run(fold + 1, seed)
        run_dir = folder.path
        record = FoldRun(fold + 1, seed, run_dir, len(self.plan.train[fold]), len(self.plan.val[fold]))
        folder.error.unlink(missing_ok=True)  # an earlier attempt's
        start = time.perf_counter()
        try:
            outcome = self.runner(fold_config(self.cfg, self.plan, fold, seed, run_dir), run_dir)
            record.metrics, self.metric, self.label = outcome.metrics, outcome.metric, outcome.label
        except Exception as err:  # noqa: BLE001 - any failure of one run is reported, the others go on
            record.error = f"{type(err).__name__}: {err}".splitlines()[0]
            run_dir.mkdir(parents=True, exist_ok=True)
            save_text(traceback.format_exc(), folder.error)
        record.seconds = time.perf_counter() - start
        self.runs.append(record)
        self.write(plot=False)  # the figures so far survive a crash or Ctrl-C; the plot comes at the end
        return record

    def summary(self) -> dict[str, Any]:
        """Per-run figures and mean +- std over the completed runs: every scalar metric, every per-class list."""
        classes = self.plan.pool.classes
        ok = [r for r in self.runs if r.error is None]
        scalars: list[str] = []
        per_class: dict[str, list[str]] = {}
        for r in ok:
            for key, value in r.metrics.items():
                if _number(value) and key not in scalars:
                    scalars.append(key)
                elif (isinstance(value, list) and key not in NOT_PER_CLASS and key not in per_class
                      and all(v is None or _number(v) for v in value)):
                    if len(value) == len(classes):
                        per_class[key] = classes
                    elif len(value) == len(classes) - 1:  # detection: no figure for the background
                        per_class[key] = classes[1:]

        def num(v: Any) -> float:
            return math.nan if v is None else float(v)

        runs = []
        for r in self.runs:
            row: dict[str, Any] = {"fold": r.fold, "seed": r.seed, "run_dir": r.run_dir, "train": r.train,
                                   "val": r.val, "seconds": r.seconds, "error": r.error,
                                   "metrics": {k: num(r.metrics[k]) for k in scalars if k in r.metrics}}
            row["per_class"] = {key: dict(zip(names, map(num, r.metrics[key])))
                                for key, names in per_class.items() if key in r.metrics}
            runs.append(row)
        done = [row for row in runs if row["error"] is None]
        return {
            "name": self.name, "config": self.source, "overrides": self.overrides,
            "folds": self.plan.k, "seeds": self.seeds, "split": self.plan.describe(),
            "task": self.task, "metric": self.metric, "metric_label": self.label, "classes": classes,
            "completed": len(done), "failed": len(runs) - len(done), "runs": runs,
            "mean_std": {**{k: _stats([row["metrics"].get(k, math.nan) for row in done]) for k in scalars},
                         "seconds": _stats([row["seconds"] for row in done])} if done else {},
            "per_class": {key: {c: _stats([row["per_class"].get(key, {}).get(c, math.nan) for row in done])
                                for c in names} for key, names in per_class.items()},
        }

    def write(self, plot: bool = True) -> dict[str, Any]:
        """cv_summary.json, cv_summary.csv and (``plot``) cv.png into the output folder; returns the summary."""
        s = self.summary()
        folder = CvFolder(self.out)
        save_text(json.dumps(jsonable(s), indent=1) + "\n", folder.summary_json)
        save_text(summary_csv(s), folder.summary_csv)
        done = [row for row in s["runs"] if row["error"] is None]
        if done and plot:
            key = next((k for k in PLOTTED_PER_CLASS if k in s["per_class"]), next(iter(s["per_class"]), None))
            scores = {k: [row["metrics"].get(k, math.nan) for row in done] for k in s["mean_std"] if k != "seconds"}
            classes = {c: [row["per_class"].get(key, {}).get(c, math.nan) for row in done]
                       for c in (s["per_class"][key] if key else {})}
            title = f"{self.name + ': ' if self.name else ''}{s['folds']} folds x {s['seeds']} seed(s), " \
                    f"{len(done)} run(s)"
            plot_cross_validation(scores, classes, key or "", folder.plot, title)
        return s


def summary_csv(s: dict[str, Any]) -> str:
    """One row per run (its metrics, then per-class figures as ``key[class]``), then the mean and std rows."""
    scalars = [k for k in s["mean_std"] if k != "seconds"]
    per_class = [(key, c) for key, classes in s["per_class"].items() for c in classes]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["run", "fold", "seed", "train", "val", "seconds", *scalars,
                     *(f"{key}[{c}]" for key, c in per_class), "error"])

    def cell(v: Any) -> str:
        return "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.6g}"

    for row in s["runs"]:
        writer.writerow([f"fold{row['fold']}_seed{row['seed']}", row["fold"], row["seed"], row["train"], row["val"],
                         cell(row["seconds"]), *(cell(row["metrics"].get(k)) for k in scalars),
                         *(cell(row["per_class"].get(key, {}).get(c)) for key, c in per_class), row["error"] or ""])
    for stat in ("mean", "std"):
        writer.writerow([stat, "", "", "", "", cell(s["mean_std"].get("seconds", {}).get(stat)),
                         *(cell(s["mean_std"][k][stat]) for k in scalars),
                         *(cell(s["per_class"][key][c][stat]) for key, c in per_class), ""])
    return buf.getvalue()


def format_summary(s: dict[str, Any]) -> str:
    """The summary as text: a row per run, mean +- std, then the per-class table."""
    scalars = [k for k in s["mean_std"] if k != "seconds"]

    def pm(stat: dict[str, float], digits: int = 4) -> str:
        if not math.isfinite(stat["mean"]):
            return "-"
        return f"{stat['mean']:.{digits}f}" + (f" +- {stat['std']:.{digits}f}" if math.isfinite(stat["std"]) else "")

    head = f"{s['name'] + ': ' if s['name'] else ''}{s['folds']} folds x {s['seeds']} seed(s): " \
           f"{s['completed']} run(s) completed, {s['failed']} failed ({s['split']})"
    rows = [["run", *scalars, "seconds"]]
    for row in s["runs"]:
        run = f"fold{row['fold']} seed{row['seed']}"
        if row["error"] is not None:
            rows.append([run, f"FAILED: {row['error']}"])
            continue
        rows.append([run, *(f"{row['metrics'].get(k, math.nan):.4f}" for k in scalars), f"{row['seconds']:.0f}"])
    if s["mean_std"]:
        rows.append(["mean +- std", *(pm(s["mean_std"][k]) for k in scalars), pm(s["mean_std"]["seconds"], 0)])
    lines = [head, *_columns(rows)]
    if s["per_class"]:
        keys = list(s["per_class"])
        table = [["class (mean +- std)", *keys]]
        for c in dict.fromkeys(c for key in keys for c in s["per_class"][key]):  # every class, in order
            table.append([c, *(pm(s["per_class"][key][c]) if c in s["per_class"][key] else "-" for key in keys)])
        lines += ["", *_columns(table)]
    return "\n".join(lines)


def _columns(rows: list[list[str]]) -> list[str]:
    """Rows as left-aligned text columns; a short row (a failed run) runs on past the columns."""
    width = max(len(r) for r in rows)
    widths = [max((len(r[i]) for r in rows if i < len(r) and len(r) == width), default=0) for i in range(width)]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() if len(r) == width else "  ".join(r)
            for r in rows]


def duration(seconds: float) -> str:
    """45 -> '45s', 192 -> '3m12s', 3900 -> '1h05m'."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _recipe(cv: CrossValidation) -> str:
    """How a finished run's line names its recipe: compare's 'A (a.yaml): '; cv has one recipe, unnamed."""
    if not cv.name:
        return ""
    return f"{cv.name} ({Path(cv.source).name}): " if cv.source else f"{cv.name}: "


def run_schedule(cvs: Sequence[CrossValidation], log: Callable[[str], None] = print,
                 finished: Optional[Callable[[str], None]] = None) -> None:
    """Every fold x seed of every recipe, fold by fold (recipes side by side, so pairs complete early),
    with 'fold k/K' progress and the time left estimated from the runs so far. Each finished run is one
    line (recipe, fold, seed, main metric, time) to ``finished``, or to ``log`` under its run's header."""
    plan, seeds = cvs[0].plan, cvs[0].seeds
    jobs = [(f, s, cv) for f in range(plan.k) for s in range(seeds) for cv in cvs]
    start = time.perf_counter()
    for n, (f, s, cv) in enumerate(jobs):
        left = f", ~{duration((time.perf_counter() - start) / n * (len(jobs) - n))} left" if n else ""
        log(f"== {cv.name + ': ' if cv.name else ''}fold {f + 1}/{plan.k}, seed {cv.base_seed + s} "
            f"({s + 1}/{seeds}); run {n + 1}/{len(jobs)}; {len(plan.train[f])} train / {len(plan.val[f])} val{left}")
        r = cv.run_one(f, s)
        line = f"{_recipe(cv)}fold {f + 1}/{plan.k} seed {r.seed}: " + (
            f"FAILED ({r.error}); details in {RunFolder(r.run_dir).error}" if r.error else
            f"{cv.label} {float(r.metrics.get(cv.metric or '', math.nan)):.4f} in {duration(r.seconds)}")
        if finished is not None:
            finished(line)
        else:
            log("   " + line)


def run_cv(cfg: Config, *, folds: int, out: Path, seeds: int = 1, limit_train: Optional[int] = None,
           split_seed: int = 0, runner: Optional[Runner] = None, log: Callable[[str], None] = print,
           progress: bool = True, source: str = "", overrides: Sequence[str] = (),
           finished: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
    """Cross-validate ``cfg``: ``folds`` folds x ``seeds`` seeds into ``out``; returns the summary it wrote.
    ``finished``: where each finished run's line goes instead of ``log`` (run_schedule)."""
    plan = plan_folds(pool_of(cfg), folds, limit_train=limit_train, seed=split_seed)
    log(f"cv: {plan.describe()}; {seeds} seed(s) each; runs in {out}/")
    cv = CrossValidation(cfg, plan, out, runner or engine_runner(progress, log), seeds=seeds, source=source,
                         overrides=overrides)
    run_schedule([cv], log, finished)
    return cv.write()
