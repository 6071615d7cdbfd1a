"""Two recipes on the same folds and seeds: paired per-run differences of the task's main metric, a
paired-t confidence interval and a one-line verdict (compare.json).

Pairing matters: folds differ far more from each other than two recipes differ on one fold, and the
paired difference cancels that. The t interval (not a bootstrap) because a handful of folds is too few
for resampling to see the spread.
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..config import Config
from ..errors import ConfigError
from ..io import save_text
from ..run_folder import COMPARE
from .cv import CrossValidation, Runner, engine_runner, jsonable, plan_folds, pool_of, run_schedule

LEVEL = 0.95
# A mean difference below this (0.1 points) is no difference, however tight its interval: two identical
# recipes on a GPU differ in the last digits from run to run, and that is not a finding.
TOLERANCE = 0.001


def paired_interval(diffs: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """The paired-t ``level`` confidence interval of the mean of ``diffs`` (NaN, NaN with fewer than two)."""
    from scipy import stats

    if len(diffs) < 2:
        return math.nan, math.nan
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    half = float(stats.t.ppf(0.5 + level / 2, len(diffs) - 1)) * sd / math.sqrt(len(diffs))
    return mean - half, mean + half


def pairs(a: dict[str, Any], b: dict[str, Any], metric: str) -> list[dict[str, Any]]:
    """(fold, seed, a, b, b - a) for every fold x seed both summaries completed."""
    done_a = {(r["fold"], r["seed"]): r for r in a["runs"] if r["error"] is None and metric in r["metrics"]}
    out = []
    for r in b["runs"]:
        other = done_a.get((r["fold"], r["seed"]))
        if r["error"] is None and other is not None and metric in r["metrics"]:
            # a summary read back from cv_summary.json holds null where the run had NaN
            va, vb = (math.nan if v is None else float(v) for v in (other["metrics"][metric], r["metrics"][metric]))
            if math.isfinite(va) and math.isfinite(vb):
                out.append({"fold": r["fold"], "seed": r["seed"], "a": va, "b": vb, "diff": vb - va})
    return out


def verdict(diffs: Sequence[float], label: str, names: tuple[str, str] = ("A", "B"), unit: str = "folds",
            level: float = LEVEL, tolerance: float = TOLERANCE) -> str:
    """'B better by 2.1 +- 0.8 mIoU points (95% CI), 5/5 folds' or 'no difference the folds can see ...'."""
    a, b = names
    n = len(diffs)
    if n == 0:
        return "no completed pair of runs to compare"
    mean = statistics.fmean(diffs)
    wins = sum(d > 0 for d in diffs)
    if n < 2:
        return (f"no difference the folds can see: one pair only ({b} - {a} = {100 * mean:+.1f} {label} points); "
                f"use more folds or seeds")
    lo, hi = paired_interval(diffs, level)
    half = 100 * (hi - lo) / 2
    pct = f"{100 * level:g}% CI"
    if (lo > 0 or hi < 0) and abs(mean) >= tolerance:
        better, count = (b, wins) if mean > 0 else (a, sum(d < 0 for d in diffs))
        return f"{better} better by {100 * abs(mean):.1f} +- {half:.1f} {label} points ({pct}), {count}/{n} {unit}"
    return (f"no difference the folds can see: {b} - {a} = {100 * mean:+.1f} +- {half:.1f} {label} points "
            f"({pct}), {b} ahead in {wins}/{n} {unit}")


def compare_summaries(a: dict[str, Any], b: dict[str, Any], names: tuple[str, str] = ("A", "B"),
                      level: float = LEVEL, tolerance: float = TOLERANCE) -> dict[str, Any]:
    """The paired comparison of two cv summaries over the same folds: main metric, verdict, every metric's
    mean difference and interval."""
    if a["metric"] and b["metric"] and a["metric"] != b["metric"]:
        raise ConfigError(f"compare: the recipes score different metrics ({a['metric']} vs {b['metric']})")
    metric, label = (a["metric"], a["metric_label"]) if a["metric"] else (b["metric"], b["metric_label"])
    if metric is None:  # no run of either recipe completed
        metric = ""
    unit = "folds" if a["seeds"] == 1 else "fold x seed pairs"
    main = pairs(a, b, metric)
    diffs = [p["diff"] for p in main]
    others = {}
    for key in a["mean_std"]:
        if key in b["mean_std"] and key != "seconds":
            d = [p["diff"] for p in pairs(a, b, key)]
            lo, hi = paired_interval(d, level)
            others[key] = {"mean_diff": statistics.fmean(d) if d else math.nan, "ci": [lo, hi], "n": len(d)}
    lo, hi = paired_interval(diffs, level)
    return {"metric": metric, "metric_label": label, "names": list(names), "level": level, "method": "paired t",
            "tolerance": tolerance, "n": len(diffs), "lost": max(len(a["runs"]), len(b["runs"])) - len(diffs),
            "mean_diff": statistics.fmean(diffs) if diffs else math.nan, "ci": [lo, hi],
            "b_ahead": sum(d > 0 for d in diffs), "a_ahead": sum(d < 0 for d in diffs), "pairs": main,
            "verdict": verdict(diffs, label, names, unit, level, tolerance), "metrics": others}


def run_compare(cfg_a: Config, cfg_b: Config, *, folds: int, out: Path, seeds: int = 1,
                limit_train: Optional[int] = None, split_seed: int = 0, runner: Optional[Runner] = None,
                log: Callable[[str], None] = print, progress: bool = True, sources: tuple[str, str] = ("", ""),
                overrides: Sequence[str] = (), finished: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
    """Both recipes on the same folds (from A's data) and seeds (from A's ``train.seed``), into ``out/A``
    and ``out/B``; writes compare.json and returns its content plus ``summaries``, the two cv summaries.
    ``finished``: where each finished run's line goes instead of ``log`` (run_schedule)."""
    pool = pool_of(cfg_a)
    other = pool_of(cfg_b)
    if other.names != pool.names:
        missing = sorted(set(pool.names) ^ set(other.names))
        raise ConfigError(f"compare: the two configs' data differ ({len(pool.names)} vs {len(other.names)} items, "
                          f"e.g. {', '.join(missing[:3])}); the folds need the same images on both sides")
    plan = plan_folds(pool, folds, limit_train=limit_train, seed=split_seed)
    run = runner or engine_runner(progress, log)
    out = Path(out)
    cvs = [CrossValidation(cfg, plan, out / name, run, seeds=seeds, base_seed=cfg_a.train.seed, name=name,
                           source=src, overrides=overrides) for name, cfg, src in zip("AB", (cfg_a, cfg_b), sources)]
    if cvs[0].task != cvs[1].task:
        raise ConfigError(f"compare: the recipes train different tasks ({cvs[0].task} vs {cvs[1].task})")
    log(f"compare: A = {sources[0] or 'first config'}, B = {sources[1] or 'second config'}; {plan.describe()}; "
        f"{seeds} seed(s) each; runs in {out}/A and {out}/B")
    run_schedule(cvs, log, finished)
    summaries = [cv.write() for cv in cvs]
    result = {"a": {"config": sources[0], "dir": str(out / "A")}, "b": {"config": sources[1], "dir": str(out / "B")},
              "overrides": list(overrides), **compare_summaries(summaries[0], summaries[1])}
    save_text(json.dumps(jsonable(result), indent=1) + "\n", out / COMPARE)
    return {**result, "summaries": summaries}  # the two cv summaries: in memory only (each has its own file)

