#!/usr/bin/env python
"""The simulated labelling loop of issue 26: does ``seg-transfer suggest`` pick better frames to label than
random picks of the same size?

CamVid train frames only (``../shared/data/CamVid``: three video sequences; no val or test frames are used).
Folds hold out one whole sequence each (leave-one-sequence-out: neighbouring frames look alike); the other
two sequences are the pool. Per fold x seed, both sides start from the same ``--start`` random labelled
frames and the same random-init model recipe (no ImageNet weights exist here). Each of ``--rounds`` rounds
fine-tunes on the labelled frames, scores the held-out sequence, then adds ``--per-round`` frames: the
``suggest`` side picks them with ``predict.suggest`` from its own round's best.pt over the unlabelled rest
of the pool (masks unseen), the ``random`` side draws them at random (seeded). A last fine-tune scores the
final labelled set. The table: mIoU per round, mean +- std over fold x seed, and the paired difference
suggest - random. Round 0 (the start frames) is one run that both sides share.

    python benchmarks/active_learning.py --out /tmp/al_camvid                  # the full run
    python benchmarks/active_learning.py --small --out /tmp/al_smoke           # a minute-long smoke run
    python benchmarks/active_learning.py --out /tmp/al_camvid --table          # the table again

A run folder that already holds ``result.json`` is not run again: an interrupted benchmark resumes.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from seg_transfer.config import load_config  # noqa: E402
from seg_transfer.engine.cv import FoldPlan, fold_config, plan_folds, pool_of, read_metrics  # noqa: E402
from seg_transfer.run_folder import BEST, SUGGEST_DIR  # noqa: E402

CONFIG = REPO / "configs" / "camvid_lraspp.yaml"
SIDES = ("suggest", "random")
RESULT = "result.json"
# the shipped CamVid recipe from random init (no pretrained weights here), at screening scale
COMMON = ["model.weights=null", "model.backbone_weights=null", "freeze.strategy=full", "freeze.unfreeze_from=null",
          "model.resize=180", "augment.crop_size=160", "train.backbone_lr_mult=1.0", "train.workers=0",
          "output.num_predictions=0", f"data.root={REPO.parent / 'shared' / 'data' / 'CamVid'}"]
SMALL = ["model.resize=64", "augment.crop_size=64", "train.epochs=1", "train.batch_size=2", "train.precise_bn=0"]


def train_round(cfg: Any, plan: FoldPlan, labelled: list[int], val: list[int], seed: int, run_dir: Path) -> float:
    """Fine-tune on ``labelled`` and score ``val`` (indices into the pool); the run folder's mIoU."""
    from seg_transfer.engine.trainer import Trainer

    result = run_dir / RESULT
    if result.is_file():
        return float(json.loads(result.read_text())["miou"])
    one = FoldPlan(plan.pool, [val], [labelled], plan.seed)
    Trainer(fold_config(cfg, one, 0, seed, run_dir), run_dir=run_dir, progress=False, log=lambda _m: None,
            show_transfer=False).fit()
    miou = float(read_metrics(run_dir)["miou"])
    result.write_text(json.dumps({"miou": miou, "labelled": [plan.pool.names[i] for i in labelled]}) + "\n")
    return miou


def picks(side: str, run_dir: Path, plan: FoldPlan, candidates: list[int], n: int, rng: random.Random,
          device: str, images: Path) -> list[int]:
    """``n`` of ``candidates``: suggest's from the round's best.pt, or random ones."""
    if side == "random":
        return rng.sample(candidates, min(n, len(candidates)))
    from seg_transfer.predict import Predictor
    from seg_transfer.predict.suggest import suggest

    files = [images / plan.pool.files[i] for i in candidates]  # the folder format lists names under images/
    found = suggest(Predictor.from_checkpoint(run_dir / BEST, device=device), files, n, run_dir / SUGGEST_DIR,
                    progress=False, log=lambda _m: None)
    return [candidates[i] for i, _, _ in found.picks]


def run(args: argparse.Namespace) -> dict[str, Any]:
    cfg = load_config(str(CONFIG), COMMON + (SMALL if args.small else []) + [f"train.device={args.device}",
                                                                            *args.overrides])
    pool = pool_of(cfg)
    images = Path(cfg.data["root"]) / cfg.data["images"]
    plan = plan_folds(pool, 3)  # group_regex: one whole sequence held out per fold
    folds = list(range(plan.k))[:args.folds]
    rows: dict[str, dict[str, list[float]]] = {s: {} for s in SIDES}
    for fold in folds:
        val = plan.val[fold][:args.val_limit] if args.val_limit else plan.val[fold]
        for seed in range(args.seeds):
            rng0 = random.Random(1000 * fold + seed)
            start = rng0.sample(plan.train[fold], args.start)
            for side in SIDES:
                rng = random.Random(7 + 1000 * fold + seed)
                labelled = list(start)
                for r in range(args.rounds + 1):
                    # round 0 is the same run for both sides (same frames, seed and recipe): trained once
                    run_dir = args.out / (side if r else "start") / f"fold{fold + 1}_seed{seed}" / f"round{r}"
                    miou = train_round(cfg, plan, labelled, val, seed, run_dir)
                    rows[side].setdefault(f"round{r} ({len(labelled)} frames)", []).append(miou)
                    print(f"{side:<8} fold {fold + 1} seed {seed} round {r}: {len(labelled)} labelled, "
                          f"mIoU {miou:.4f}", flush=True)
                    if r < args.rounds:
                        rest = [i for i in plan.train[fold] if i not in set(labelled)]
                        rest = rest[:args.pool_limit] if args.pool_limit else rest
                        labelled += picks(side, run_dir, plan, rest, args.per_round, rng, args.device, images)
    summary = {"config": str(CONFIG), "overrides": COMMON + (SMALL if args.small else []) + list(args.overrides),
               "folds": len(folds), "seeds": args.seeds, "start": args.start, "per_round": args.per_round,
               "rows": rows}
    (args.out / "active_learning.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def table(summary: dict[str, Any]) -> str:
    def stats(v: list[float]) -> str:
        return f"{statistics.mean(v):.4f} +- {statistics.stdev(v) if len(v) > 1 else 0.0:.4f}"

    lines = [f"{summary['folds']} fold(s) x {summary['seeds']} seed(s); start {summary['start']} frames, "
             f"+{summary['per_round']} per round",
             f"{'round':<24} {'suggest mIoU':>18} {'random mIoU':>18} {'suggest - random (paired)':>26}"]
    for key, a in summary["rows"]["suggest"].items():
        b = summary["rows"]["random"].get(key, [])
        diff = [x - y for x, y in zip(a, b)]
        lines.append(f"{key:<24} {stats(a):>18} {stats(b) if b else '':>18} {stats(diff) if diff else '':>26}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--folds", type=int, default=3, help="how many of the 3 leave-one-sequence-out folds")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--start", type=int, default=20, help="labelled frames before the first round")
    p.add_argument("--per-round", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--pool-limit", type=int, default=0, help="score only this many candidates (0: all)")
    p.add_argument("--val-limit", type=int, default=0, help="score only this many held-out frames (0: all)")
    p.add_argument("--small", action="store_true", help="a smoke run: tiny images, 1 epoch, 1 fold, 1 seed, "
                                                        "4 + 2 x 2 frames, 8 candidates, 4 val frames")
    p.add_argument("--table", action="store_true", help="print the table of an earlier run's --out")
    p.add_argument("overrides", nargs="*", help="KEY=VALUE overrides of the recipe")
    args = p.parse_args()
    if args.table:
        print(table(json.loads((args.out / "active_learning.json").read_text())))
        return
    if args.small:
        args = replace_small(args)
    print(table(run(args)))


def replace_small(args: argparse.Namespace) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "folds": 1, "seeds": 1, "start": 4, "per_round": 2, "rounds": 2,
                                 "pool_limit": 8, "val_limit": 4})


if __name__ == "__main__":
    main()
