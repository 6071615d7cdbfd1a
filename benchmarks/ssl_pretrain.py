#!/usr/bin/env python
"""Random init vs self-supervised pretraining on the unlabelled rest of the data, few labels, cross-validated:
issue 26's first table in ``benchmarks/RESULTS.md``.

For each preset and each labelled-set size N: the shipped config's data cut into folds (CamVid: whole video
sequences held out, as ``configs/camvid_lraspp.yaml`` holds one out; ants/bees: stratified), the same N
labelled train items per fold for both recipes (``engine.cv.plan_folds(limit_train=N)``), and:

- ``random``: the model fine-tuned from random initialisation;
- ``ssl``: first ``seg-transfer pretrain`` on the fold's unlabelled pool (every image of the fold's train
  side, the labelled ones included; never a val image), then the same fine-tune with
  ``model.backbone_weights`` = that pretraining's checkpoint;
- ``ssl_selftrain``: the same pretrained start, fine-tuned with ``selftrain:`` on the same pool (FixMatch
  pseudo-labels, threshold 0.9, from a quarter of the epochs on). The pool is the fold's own (a folder of
  links to its files): the held-out images are never seen, with or without labels (inductive).

The three recipes share the folds, seeds, epochs and recipe; one pretraining per fold x seed serves every
labelled-set size and both pretrained sides. The table gives mean +- std over folds and the paired
differences ssl - random and ssl_selftrain - ssl (``engine.compare``). Only CamVid's train frames exist here
(its test split is withheld), so no test frame is used anywhere.

    .venv/bin/python benchmarks/ssl_pretrain.py --out /tmp/ssl_bench                  # the full run
    .venv/bin/python benchmarks/ssl_pretrain.py --out /tmp/ssl_smoke --smoke          # minutes: a tiny run

``--labelled``, ``--epochs`` and ``--pretrain-epochs`` shrink a preset to the time there is (the command in
RESULTS.md says which was used).

A run folder whose val_metrics_last.json exists is kept: an interrupted benchmark resumes.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from seg_transfer.config import Config, PretrainRunConfig, from_dict, load_config  # noqa: E402
from seg_transfer.data.common import stem  # noqa: E402
from seg_transfer.engine.compare import compare_summaries  # noqa: E402
from seg_transfer.engine.cv import (  # noqa: E402
    CrossValidation,
    Outcome,
    Runner,
    engine_runner,
    format_summary,
    plan_folds,
    pool_of,
    read_metrics,
)
from seg_transfer.io import IMAGE_EXTENSIONS, save_text  # noqa: E402
from seg_transfer.run_folder import RunFolder  # noqa: E402


@dataclass
class Preset:
    config: str
    folds: int
    labelled: list[int]  # labelled train items per fold (the table's rows)
    images: str  # the folder (under data.root) whose files are the unlabelled pool
    overrides: list[str]  # the fine-tune recipe, shared by both sides: random init, equal epochs
    pretrain: dict[str, Any]  # the pretrain: block
    image_size: int  # pretraining views


PRESETS = {
    "camvid": Preset(
        "configs/camvid_lraspp.yaml", folds=3, labelled=[20, 50], images="train",
        overrides=["model.name=null", "model.backbone=mobilenet_v3_large", "model.head=lraspp", "model.weights=null",
                   "model.backbone_weights=null", "model.resize=180", "augment.crop_size=160",
                   "freeze.strategy=full", "freeze.unfreeze_from=null", "train.epochs=60", "train.lr=0.02",
                   "train.backbone_lr_mult=1.0", "train.precise_bn=0"],
        pretrain={"method": "pixcontrast", "epochs": 100, "batch_size": 64, "lr": 0.002}, image_size=160),
    "hymenoptera": Preset(
        "configs/hymenoptera_resnet18.yaml", folds=5, labelled=[40], images=".",  # 20 per class
        overrides=["model.name=null", "model.backbone=resnet18", "model.head=classifier", "model.weights=null",
                   "model.backbone_weights=null", "data.classes=null", "train.epochs=60", "train.lr=0.01",
                   "train.scheduler=cosine", "augment.crop_size=128", "model.resize=146"],
        pretrain={"method": "simclr", "epochs": 200, "batch_size": 64, "lr": 0.002}, image_size=128),
}
SMOKE_FINETUNE = ["train.epochs=1", "train.batch_size=4", "augment.crop_size=64", "model.resize=72", "train.workers=0"]
SMOKE_PRETRAIN = {"epochs": 1, "batch_size": 4, "hidden_dim": 64, "projection_dim": 32}


def pool_list(cfg: Config, images: str, run_dir: Path) -> Path:
    """The fold's unlabelled pool as a ``data.list`` file (``run_dir/unlabelled.txt``): every image under
    ``images`` that is not a val item."""
    val = {stem(line) for line in Path(cfg.data["val_list"]).read_text().split()}
    root = Path(cfg.data["root"]) / images
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and stem(p.name) not in val)
    path = run_dir / "unlabelled.txt"
    save_text("".join(f"{p.relative_to(cfg.data['root'])}\n" for p in files), path)
    return path


def pool_folder(files: list[Path], folder: Path) -> Path:
    """``files`` as a folder of links (``selftrain.unlabelled`` takes a folder): the fold's pool and no more."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(files):
        link = folder / f"{i:05d}_{f.name}"
        if not link.is_symlink():
            link.symlink_to(f)
    return folder


def ssl_runner(preset: Preset, smoke: bool, pretrain_root: Path, pretrain_epochs: Optional[int],
               selftrain: bool = False) -> Runner:
    """Pretrain on the fold's pool (``pretrain_root/<fold-seed>``, once, shared by every side and labelled-set
    size), then the engine's fine-tune from that backbone; ``selftrain``: with pseudo-labels on that pool."""
    from seg_transfer.engine.pretrain.run import Pretrainer

    finetune = engine_runner(progress=False)

    def run(cfg: Config, run_dir: Path) -> Outcome:
        pre_dir = pretrain_root / run_dir.name
        pool = pool_list(cfg, preset.images, pre_dir)
        if not RunFolder(pre_dir).last.is_file():
            epochs = {"epochs": pretrain_epochs} if pretrain_epochs else {}
            block = {**preset.pretrain, **epochs, "image_size": 64 if smoke else preset.image_size,
                     "seed": cfg.train.seed, **(SMOKE_PRETRAIN if smoke else {})}
            pre = from_dict(PretrainRunConfig, {
                "model": {"backbone": cfg.model.backbone},
                "data": {"root": cfg.data["root"], "list": str(pool)},
                "pretrain": block})
            Pretrainer(pre, run_dir=pre_dir, progress=False).fit()
        model = dataclasses.replace(cfg.model, backbone_weights=str(RunFolder(pre_dir).last))
        cfg = dataclasses.replace(cfg, model=model)
        if selftrain:
            root = Path(cfg.data["root"])
            files = [root / line for line in pool.read_text().split()]
            unlabelled = pool_folder(files, pre_dir / "unlabelled")
            cfg = dataclasses.replace(cfg, selftrain=dataclasses.replace(
                cfg.selftrain, unlabelled=str(unlabelled), threshold=0.9, start_epoch=cfg.train.epochs // 4))
        return finetune(cfg, run_dir)

    return run


def kept(runner: Runner) -> Runner:
    """``runner``, except where the run folder already holds its final metrics (resume)."""
    def run(cfg: Config, run_dir: Path) -> Outcome:
        if RunFolder(run_dir).val_metrics_last.is_file() and RunFolder(run_dir).run_json.is_file():
            info = RunFolder(run_dir).run() or {}
            return Outcome(read_metrics(run_dir), info.get("metric", ""), info.get("metric_label", ""))
        return runner(cfg, run_dir)
    return run


SIDES = ("random", "ssl", "ssl_selftrain")
PAIRS = (("random", "ssl"), ("ssl", "ssl_selftrain"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("presets", nargs="*", default=list(PRESETS), choices=list(PRESETS))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--labelled", type=int, nargs="+", help="labelled train items per fold (default: the preset's)")
    ap.add_argument("--epochs", type=int, help="fine-tune epochs, every side (default: the preset's)")
    ap.add_argument("--pretrain-epochs", type=int, help="pretraining epochs (default: the preset's)")
    ap.add_argument("--sides", nargs="+", default=list(SIDES), choices=SIDES)
    ap.add_argument("--smoke", action="store_true", help="a tiny run (1 epoch each side, 2 folds, 4 labelled items)")
    args = ap.parse_args()
    lines = []
    for name in args.presets:
        preset = PRESETS[name]
        epochs = [f"train.epochs={args.epochs}"] if args.epochs else []
        overrides = [*preset.overrides, *epochs, *(SMOKE_FINETUNE if args.smoke else [])]
        cfg = load_config(str(REPO / preset.config), overrides)
        cfg = dataclasses.replace(cfg, data={**cfg.data, "root": str((REPO / cfg.data["root"]).resolve())})
        pool = pool_of(cfg)
        pretrain_root = args.out / name / "pretrain"
        runners = {"random": engine_runner(progress=False),
                   "ssl": ssl_runner(preset, args.smoke, pretrain_root, args.pretrain_epochs),
                   "ssl_selftrain": ssl_runner(preset, args.smoke, pretrain_root, args.pretrain_epochs, selftrain=True)}
        for n in ([4] if args.smoke else args.labelled or preset.labelled):
            plan = plan_folds(pool, 2 if args.smoke else preset.folds, limit_train=n, seed=0)
            out = args.out / name / f"n{n}"
            sides = {side: CrossValidation(cfg, plan, out / side, kept(runners[side]), seeds=args.seeds, name=side)
                     for side in args.sides}
            for fold in range(plan.k):  # interleaved: every side sees the same machine load
                for s in range(args.seeds):
                    for cv in sides.values():
                        cv.run_one(fold, s)  # kept in cv.runs
                        cv.write(plot=False)
            summaries = {side: cv.summary() for side, cv in sides.items()}
            lines.append(f"== {name}, {n} labelled train items per fold, {plan.k} folds x {args.seeds} seed(s)")
            for side, summary in summaries.items():
                lines.append(f"-- {side}\n{format_summary(summary)}")
            for a, b in PAIRS:
                if a in summaries and b in summaries:
                    cmp = compare_summaries(summaries[a], summaries[b], (a, b))
                    lo, hi = cmp["ci"]
                    lines.append(f"{b} - {a} {cmp['metric_label']}: {cmp['mean_diff']:+.4f} (95% CI {lo:+.4f} .. "
                                 f"{hi:+.4f}, n={cmp['n']}); {cmp['verdict']}")
            print("\n".join(lines[-1 - len(summaries) - len(PAIRS):]), flush=True)
    print("\n\n".join(lines))


if __name__ == "__main__":
    main()
