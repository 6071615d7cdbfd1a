#!/usr/bin/env python
"""Recipes side by side on the same cross-validation folds and seeds, the plain torchvision-references loop
(``benchmarks/plain_loop.py``) among them: the issue-18 tables of ``benchmarks/RESULTS.md``.

Each preset is a shipped config, overrides shared by every recipe (screening scale, equal model, epochs,
crop, batch and LR) and named recipes (overrides on top, or the plain loop). Every fold x seed x recipe is
an ordinary run folder ``OUT/<recipe>/fold<k>_seed<s>/``; the runs are spread over ``--jobs`` worker
processes of ``--threads`` each, interleaved so every recipe sees the same machine load. The table: mean
+- std over fold x seed runs of the main metric and the others, each recipe's paired difference from the
reference recipe (paired t, 95%), per-class figures and seconds per run.

    TORCH_HOME=/tmp/standin .venv/bin/python tools/make_standins.py lraspp_mobilenet_v3_large
    TORCH_HOME=/tmp/standin SEG_TRANSFER_OFFLINE=1 .venv/bin/python benchmarks/cv_recipes.py camvid \\
        --seeds 2 --jobs 2 --out /tmp/cvr_camvid
    .venv/bin/python benchmarks/cv_recipes.py camvid --out /tmp/cvr_camvid --table      # the table again

A run folder that already holds ``result.json`` is not run again: an interrupted benchmark resumes.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from seg_transfer.config import Config, load_config  # noqa: E402
from seg_transfer.engine.compare import compare_summaries  # noqa: E402
from seg_transfer.engine.cv import CrossValidation, FoldPlan, FoldRun, Outcome, engine_runner, fold_config, plan_folds, pool_of  # noqa: E402
from seg_transfer.run_folder import CvFolder  # noqa: E402

PLAIN = "plain"  # the recipe run by benchmarks/plain_loop.py instead of the engine
RESULT = "result.json"  # this benchmark's record of a run (in the run folder, beside the engine's files)


@dataclass
class Preset:
    config: str
    folds: int
    common: list[str]  # overrides every recipe gets
    recipes: dict[str, Any]  # name -> overrides (list) or PLAIN
    reference: str = PLAIN
    baseline: str = "engine"  # what the ablations add one change to: each gets a paired column against it too
    limit_train: Optional[int] = None
    notes: list[str] = field(default_factory=list)


# The shipped CamVid recipe at screening scale (half resolution), switched to what the plain loop does
# (full fine-tuning, one LR, no class weights, no warmup, no precise BN): "engine" is the engine with its
# own defaults; each ablation adds one of the shipped recipe's choices back; "shipped" adds them all.
CAMVID_COMMON = ["model.resize=180", "augment.crop_size=160", "freeze.strategy=full", "freeze.unfreeze_from=null",
                 "train.epochs=8", "train.class_weights=null", "train.precise_bn=0", "train.warmup_epochs=0",
                 "train.backbone_lr_mult=1", "train.workers=0", "output.num_predictions=0"]
PRESETS = {
    "camvid": Preset(
        config="configs/camvid_lraspp.yaml", folds=3, common=CAMVID_COMMON,
        recipes={
            "plain": PLAIN,
            "engine": [],
            "cw_median": ["train.class_weights=median_frequency"],
            "cw_sqrt": ["train.class_weights=sqrt_frequency"],
            "cw_inverse_log": ["train.class_weights=inverse_log"],
            "precise_bn": ["train.precise_bn=10"],
            "warmup": ["train.warmup_epochs=0.5"],
            "no_scale_aug": ["augment.train=[{name: SmallestMaxSize, max_size: 180}, {name: PadIfNeeded, "
                             "min_height: 160, min_width: 160, border_mode: constant}, {name: RandomCrop, "
                             "height: 160, width: 160}, {name: HorizontalFlip, p: 0.5}]"],
            "shipped": ["train.class_weights=median_frequency", "train.precise_bn=10", "train.warmup_epochs=0.5",
                        "train.backbone_lr_mult=0.1"],
            # the shipped recipe as the table above changed it (no class weights), at the plain loop's LR
            "default": ["train.precise_bn=10", "train.warmup_epochs=0.5"],
        }),
    # The shipped ants/bees recipe is the PyTorch tutorial's (SGD 0.001, StepLR 7 x0.1, full fine-tuning),
    # 8 epochs so the step lands once; stratified 5 folds.
    "hymenoptera": Preset(
        config="configs/hymenoptera_resnet18.yaml", folds=5,
        common=["train.epochs=8", "train.workers=0", "output.num_predictions=0"],
        recipes={"plain": PLAIN, "engine": []}),
    # The shipped BCCD recipe (h+v flips, cosine, warmup, grad clip) at a short schedule on 48 train
    # images per fold (Faster R-CNN steps cost seconds on this CPU), 3 folds.
    "bccd": Preset(
        config="configs/bccd_fasterrcnn_mobilenet.yaml", folds=3, limit_train=48,
        common=["train.epochs=3", "train.workers=0", "output.num_predictions=0"],
        recipes={"plain": PLAIN, "engine": []}),
}


def recipe_config(preset: Preset, name: str, extra: list[str]) -> Config:
    spec = preset.recipes[name]
    return load_config(str(REPO / preset.config), [*preset.common, *extra, *([] if spec == PLAIN else spec)])


def jobs_of(preset: Preset, plan: FoldPlan, seeds: int) -> list[tuple[int, int, str]]:
    """(fold, seed, recipe) in the order they run: seed by seed, fold by fold, recipes side by side."""
    return [(f, s, r) for s in range(seeds) for f in range(plan.k) for r in preset.recipes]


def claim(run_dir: Path) -> bool:
    """Take ``run_dir`` for this process (its PID in ``claimed``); False while another live process holds it.
    A claim whose process is gone (an interrupted benchmark) is taken over."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "claimed"
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            os.kill(int(path.read_text() or 0), 0)
            return False
        except PermissionError:  # alive, someone else's
            return False
        except (ProcessLookupError, ValueError):
            path.write_text(str(os.getpid()))
            return True
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def run_job(preset: Preset, plan: FoldPlan, out: Path, fold: int, seed: int, recipe: str, extra: list[str]) -> None:
    """One fold x seed x recipe into its run folder; result.json holds its metrics or its error."""
    folder = CvFolder(out / recipe).run(fold + 1, seed)
    run_dir = folder.path
    if (run_dir / RESULT).is_file():
        return
    if not claim(run_dir):  # another live worker (e.g. one added later with --reverse) runs it
        return
    cfg = recipe_config(preset, recipe, extra)
    start = time.perf_counter()
    result: dict[str, Any] = {"fold": fold + 1, "seed": seed, "train": len(plan.train[fold]),
                              "val": len(plan.val[fold])}
    try:
        fcfg = fold_config(cfg, plan, fold, seed, run_dir)
        if preset.recipes[recipe] == PLAIN:
            import plain_loop
            outcome: Outcome = plain_loop.plain_runner(fcfg, run_dir)
        else:
            outcome = engine_runner(progress=False, log=lambda _m: None)(fcfg, run_dir)
        result.update(metrics=outcome.metrics, metric=outcome.metric, label=outcome.label)
    except Exception as err:  # noqa: BLE001 - one failed run is reported, the others go on
        result["error"] = f"{type(err).__name__}: {err}".splitlines()[0]
        run_dir.mkdir(parents=True, exist_ok=True)
        folder.error.write_text(traceback.format_exc())
    result["seconds"] = time.perf_counter() - start
    tmp = run_dir / f"{RESULT}.tmp"
    tmp.write_text(json.dumps(result, default=float) + "\n")
    tmp.replace(run_dir / RESULT)
    score = f"{result.get('label')} {result.get('metrics', {}).get(result.get('metric', ''), math.nan):.4f}"
    print(f"{time.strftime('%H:%M:%S')} {recipe} fold {fold + 1} seed {seed}: {result.get('error') or score} "
          f"in {result['seconds']:.0f}s", flush=True)


def summaries(preset: Preset, plan: FoldPlan, out: Path, seeds: int) -> dict[str, dict[str, Any]]:
    """Each recipe's cv summary (the engine's own format) from the result.json files there."""
    result = {}
    for name in preset.recipes:
        cv = CrossValidation(recipe_config(preset, name, []), plan, out / name, lambda c, d: None,  # type: ignore
                             seeds=seeds, base_seed=0, name=name, source=preset.config,
                             overrides=[*preset.common, *([] if preset.recipes[name] == PLAIN else preset.recipes[name])])
        for f in range(plan.k):
            for s in range(seeds):
                path = CvFolder(out / name).run(f + 1, s).path / RESULT
                if not path.is_file():
                    continue
                r = json.loads(path.read_text())
                cv.runs.append(FoldRun(f + 1, s, path.parent, r["train"], r["val"], r["seconds"],
                                       r.get("metrics", {}), r.get("error")))
                if "metric" in r:
                    cv.metric, cv.label = r["metric"], r["label"]
        if cv.runs:
            result[name] = cv.write()
    return result


def pm(stat: Optional[dict[str, Any]], scale: float = 100.0, digits: int = 1) -> str:
    if not stat or stat.get("mean") is None or not math.isfinite(stat["mean"]):
        return "-"
    std = stat.get("std")
    return f"{scale * stat['mean']:.{digits}f} +- {scale * std:.{digits}f}" if std is not None and math.isfinite(std) \
        else f"{scale * stat['mean']:.{digits}f}"


def _ci(lo: Optional[float], hi: Optional[float]) -> str:
    if lo is None or hi is None or not math.isfinite(lo):
        return "-"
    return f"[{100 * lo:+.1f}, {100 * hi:+.1f}]"


def paired(a: Optional[dict[str, Any]], b: dict[str, Any], a_name: str, b_name: str, others: list[str]) -> list[str]:
    """Cells: the main metric's paired difference b - a (95% CI, b's wins), then each of ``others``'."""
    if a is None or a_name == b_name:
        return ["(reference)" if a is not None else "-", *["" for _ in others]]
    c = compare_summaries(a, b, names=(a_name, b_name))
    cells = [f"{100 * c['mean_diff']:+.1f} {_ci(*c['ci'])}, {c['b_ahead']}/{c['n']}"]
    for k in others:
        d = c["metrics"].get(k)
        cells.append(f"{100 * d['mean_diff']:+.1f} {_ci(*d['ci'])}" if d and d["n"] else "-")
    return cells


def table(preset: Preset, summ: dict[str, dict[str, Any]]) -> str:
    """The markdown tables: recipes (mean +- std, difference from the reference), then per-class means."""
    ref = summ.get(preset.reference)
    any_s = next(iter(summ.values()))
    metric, label = any_s["metric"], any_s["metric_label"]
    others = [k for k in any_s["mean_std"] if k not in (metric, "seconds") and not k.startswith("top")][:2]
    base = summ.get(preset.baseline)
    head = ["recipe", "runs", f"{label} (%)", *[f"{k} (%)" for k in others],
            f"{label} - {preset.reference} (95% CI, wins)", *[f"{k} - {preset.reference} (95% CI)" for k in others],
            *([f"{label} - {preset.baseline} (95% CI, wins)", f"{others[0]} - {preset.baseline} (95% CI)"]
              if base is not None and others else []), "s / run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in summ.items():
        ms = s["mean_std"]
        cells = [name, f"{s['completed']}" + (f" ({s['failed']} failed)" if s["failed"] else ""),
                 pm(ms.get(metric)), *[pm(ms.get(k)) for k in others]]
        cells += paired(ref, s, preset.reference, name, others)
        if base is not None and others:
            cells += paired(base, s, preset.baseline, name, others[:1])
        cells.append(f"{ms['seconds']['mean']:.0f}" if ms else "-")
        lines.append("| " + " | ".join(cells) + " |")
    key = next((k for k in ("iou", "recall", "ap_per_class") if k in any_s["per_class"]), None)
    if key:
        classes = list(any_s["per_class"][key])
        lines += ["", f"per-class {key} (%, mean over runs):", "",
                  "| recipe | " + " | ".join(classes) + " |", "|---|" + "---:|" * len(classes)]
        for name, s in summ.items():
            row = s["per_class"].get(key, {})
            lines.append(f"| {name} | " + " | ".join(pm(row.get(c), digits=1).split(" +-")[0] for c in classes) + " |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("preset", choices=sorted(PRESETS))
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="applied to every recipe, after the preset's")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--jobs", type=int, default=1, help="worker processes side by side")
    p.add_argument("--threads", type=int, default=0, help="torch threads per worker (default: cores / jobs)")
    p.add_argument("--only", help="comma-separated recipes (default: all of the preset's)")
    p.add_argument("--limit-train", type=int, help="train on N items of each fold (default: the preset's)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--table", action="store_true", help="only print the table of what OUT holds")
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--reverse", action="store_true", help="as a worker, take the runs from the end: a helper "
                   "started later beside a running benchmark (runs another worker has claimed are skipped)")
    args = p.parse_args(argv)
    preset = PRESETS[args.preset]
    if args.only:
        keep = args.only.split(",")
        preset.recipes = {k: v for k, v in preset.recipes.items() if k in keep or k == preset.reference}
    if args.limit_train:
        preset.limit_train = args.limit_train
    base = recipe_config(preset, next(iter(preset.recipes)), args.overrides)
    plan = plan_folds(pool_of(base), preset.folds, limit_train=preset.limit_train)
    jobs = jobs_of(preset, plan, args.seeds)
    if args.worker is not None:
        import torch
        torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // args.jobs))
        mine = jobs[args.worker::args.jobs]
        for f, s, r in (mine[::-1] if args.reverse else mine):
            run_job(preset, plan, args.out, f, s, r, args.overrides)
        return 0
    if not args.table:
        print(f"{args.preset}: {plan.describe()}; {len(preset.recipes)} recipes x {args.seeds} seed(s) = "
              f"{len(jobs)} runs on {args.jobs} worker(s); {args.out}/", flush=True)
        start = time.perf_counter()
        argv_w = [sys.executable, __file__, args.preset, *args.overrides, "--seeds", str(args.seeds), "--jobs",
                  str(args.jobs), "--threads", str(args.threads), "--out", str(args.out)]
        if args.only:
            argv_w += ["--only", args.only]
        if args.limit_train:
            argv_w += ["--limit-train", str(args.limit_train)]
        procs = [subprocess.Popen([*argv_w, "--worker", str(w)]) for w in range(args.jobs)]
        codes = [pr.wait() for pr in procs]
        print(f"wall {time.perf_counter() - start:.0f}s; workers exited {codes}", flush=True)
    summ = summaries(preset, plan, args.out, args.seeds)
    text = table(preset, summ)
    (args.out / "table.md").write_text(text + "\n")
    print(f"\n{args.preset}: {plan.describe()}; common overrides: {' '.join(preset.common + args.overrides)}\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
