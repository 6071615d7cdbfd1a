#!/usr/bin/env python
"""The plain reference on ``seg-transfer cv``'s folds: each fold and seed trained by the task's reference
recipe (``benchmarks/reference/``: torchvision's references and tutorials, written out), summarised in the
same fields and scored by the engine's own meters, so the engine is always measured against the plain
recipe on equal terms.

    seg-transfer cv configs/camvid_lraspp.yaml --folds 3 train.epochs=20 --out runs/cv_engine
    .venv/bin/python benchmarks/plain_loop.py configs/camvid_lraspp.yaml --folds 3 train.epochs=20 \\
        --out runs/cv_plain --against runs/cv_engine          # + the paired verdict: engine vs plain

Offline, the weights must be in $TORCH_HOME; stand-ins (random values under the official names, for
screening the machinery only): ``TORCH_HOME=/tmp/standin python tools/make_standins.py lraspp_mobilenet_v3_large``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from reference import RUNNERS as PLAIN_RUNNERS  # noqa: E402

from seg_transfer.config import Config, load_config  # noqa: E402
from seg_transfer.engine.compare import compare_summaries  # noqa: E402
from seg_transfer.engine.cv import CrossValidation, Outcome, format_summary, jsonable, plan_folds, pool_of, run_schedule  # noqa: E402
from seg_transfer.errors import ConfigError, SegTransferError  # noqa: E402
from seg_transfer.io import save_text  # noqa: E402
from seg_transfer.models.build import task_of  # noqa: E402
from seg_transfer.run_folder import CvFolder  # noqa: E402


def plain_runner(cfg: Config, run_dir: Path, progress: bool = False) -> Outcome:
    """The reference recipe of ``cfg``'s task."""
    return PLAIN_RUNNERS[task_of(cfg.model)](cfg, run_dir, progress)


# ------------------------------------------------------------------------------------------ main
def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--limit-train", type=int)
    p.add_argument("--out", type=Path, help="default: output.dir/plain_<config>")
    p.add_argument("--against", type=Path, metavar="CV_DIR", help="an engine `seg-transfer cv` folder run on "
                   "the same folds: print and write the paired verdict (A = plain, B = engine)")
    p.add_argument("-q", "--quiet", action="store_true")
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        plan = plan_folds(pool_of(cfg), args.folds, limit_train=args.limit_train)
        out = args.out or Path(cfg.output.dir) / f"plain_{Path(args.config).stem}"
        log = (lambda _m: None) if args.quiet else print
        log(f"plain loop: {plan.describe()}; {args.seeds} seed(s) each; runs in {out}/")
        cv = CrossValidation(cfg, plan, out, lambda c, d: plain_runner(c, d, not args.quiet), seeds=args.seeds,
                             name="plain", source=args.config, overrides=args.overrides)
        run_schedule([cv], log)
        summary = cv.write()
        print("\n" + format_summary(summary))
        if args.against:
            against = CvFolder(args.against)
            engine = against.summary()
            theirs = against.fold_plan()["folds"]
            if theirs != plan.to_dict()["folds"]:
                raise ConfigError(f"{args.against}: its folds differ from these (same config, --folds and "
                                  "--limit-train?)")
            result = compare_summaries(summary, engine, names=("plain", "engine"))
            save_text(json.dumps(jsonable(result), indent=1) + "\n", CvFolder(out).compare)
            print(f"\nplain vs engine ({args.against}): {result['verdict']}")
    except SegTransferError as err:
        print(f"plain_loop.py: error: {err}", file=sys.stderr)
        return 2
    return 0 if summary["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
