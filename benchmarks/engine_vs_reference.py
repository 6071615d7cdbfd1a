#!/usr/bin/env python
"""The engine against a minimal torchvision-references-style loop on CamVid, in one run.

Both sides start from the same weights (zoo ``lraspp_mobilenet_v3_large`` DEFAULT, with its 21-class
classifiers re-created for CamVid's 11 classes), train the same epochs on the same frames with the same
crop and batch, and are scored by the same function (one confusion matrix over whole val frames at
native 360x480; sequence 0016E5 held out, as in configs/camvid_lraspp.yaml).

* reference: ``benchmarks/reference/segmentation.py`` (what ``references/segmentation/train.py`` does,
  written out in plain PyTorch): SGD (momentum 0.9, weight decay 1e-4) over every parameter, poly LR per
  iteration, random scale 0.5-2.0 + pad + random crop + horizontal flip, plain cross-entropy (ignore 255),
  BatchNorm in train mode.
* engine: ``seg_transfer``'s Trainer with the shipped configs/camvid_lraspp.yaml recipe: partial
  fine-tuning from layer2 (stem and layer1 frozen, their BatchNorm held in eval), backbone LR x0.1,
  median-frequency class weights (CamVid is heavily imbalanced), half an epoch of linear warmup, the
  same augmentation list as the reference.

Starting weights are *stand-ins* (random values saved under the official file name in a private
TORCH_HOME; no real checkpoint exists offline): the mIoU compares the two loops, it says nothing about
how good LR-ASPP is on CamVid.

    .venv/bin/python benchmarks/engine_vs_reference.py                       # ~15 min on 2 CPU cores
    .venv/bin/python benchmarks/engine_vs_reference.py --epochs 1 --limit 8  # smoke test
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from common import CAMVID_CLASSES as CLASSES  # noqa: E402

MODEL = "lraspp_mobilenet_v3_large"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--crop", type=int, default=320)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--limit", type=int, default=None, help="N train and N val frames (evenly spaced)")
    p.add_argument("--val-every", type=int, default=2, help="score every k-th val frame (0016E5 is 204 frames)")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "CamVid"))
    p.add_argument("--out", default=None, help="folder for table.md and results.json (default: temporary)")
    p.add_argument("--order", default="reference,engine")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def frames(root: Path, limit: int | None, val_every: int) -> tuple[list[str], list[str]]:
    """Train stems (sequences 0001TP, 0006R0) and val stems (0016E5), sorted."""
    stems = sorted(p.stem for p in (root / "train").glob("*.png"))
    train = [s for s in stems if not s.startswith("0016E5")]
    val = [s for s in stems if s.startswith("0016E5")][::val_every]
    if limit:
        train = train[:: max(1, len(train) // limit)][:limit]
        val = val[:: max(1, len(val) // limit)][:limit]
    return train, val


def engine_config(args: argparse.Namespace, train: list[str], val: list[str], out: Path) -> dict[str, Any]:
    """The engine's recipe; the reference reads its data, model, crop, batch, LR, epochs and seed."""
    from reference.segmentation import albumentations_steps

    lists = {}
    for side, stems in (("train", train), ("val", val)):
        path = out / f"{side}.txt"
        path.write_text("\n".join(stems) + "\n")
        lists[f"{side}_list"] = str(path)
    crop = args.crop
    return {
        "model": {"name": MODEL, "weights": "DEFAULT", "resize": 360},  # 360: CamVid's own height
        "data": {"format": "folder", "root": args.data, "images": "train", "masks": "trainannot",
                 "classes": CLASSES, "label_map": {11: 255}, "ignore_index": 255, **lists},
        "augment": {"crop_size": crop, "train": albumentations_steps(crop), "val": []},
        "freeze": {"strategy": "partial", "unfreeze_from": "layer2"},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "backbone_lr_mult": 0.1,
                  "scheduler": "poly", "warmup_epochs": 0.5, "class_weights": "median_frequency",
                  "amp": "auto", "workers": 0, "device": "cpu", "seed": args.seed},
        "cache": {"enabled": False},
        "output": {"dir": str(out), "name": "engine", "num_predictions": 0},
    }


def run_reference(cfg_dict: dict[str, Any], out: Path) -> dict[str, Any]:
    from reference.common import plain_epochs
    from reference.segmentation import train_and_score

    from seg_transfer.config import Config, from_dict

    start = time.perf_counter()
    outcome = train_and_score(from_dict(Config, cfg_dict), out / "reference", progress=True)
    epochs = plain_epochs(out / "reference")
    return {"epochs": epochs, **summary(outcome.metrics),
            "eval_s": time.perf_counter() - start - sum(e["seconds"] for e in epochs)}


def run_engine(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    import torch
    from reference.common import Items
    from reference.segmentation import presets, score

    from seg_transfer.config import Config, from_dict
    from seg_transfer.data.registry import build_dataset
    from seg_transfer.engine.trainer import Trainer

    cfg = from_dict(Config, cfg_dict)
    trainer = Trainer(cfg, progress=False, log=lambda m: None)
    epochs = []
    for epoch in range(cfg.train.epochs):
        start = time.perf_counter()
        loss = trainer.train_epoch(epoch)
        epochs.append({"seconds": time.perf_counter() - start, "train_loss": loss})
        print(f"   engine epoch {epoch + 1}: {epochs[-1]['seconds']:.1f}s  loss {loss:.4f}", flush=True)
    # scored as the reference scores itself: its val preset (the same base size), the same function
    import torchvision

    _, val_t = presets(cfg, torchvision.models.get_model_weights(MODEL).DEFAULT, 255)
    start = time.perf_counter()
    metrics = score(trainer.model, Items(build_dataset(cfg.data).val, val_t), torch.device("cpu"), len(CLASSES), 255)
    return {"epochs": epochs, **summary(metrics), "eval_s": time.perf_counter() - start}


def summary(metrics: dict[str, Any]) -> dict[str, Any]:
    iou = [float(v) for v in metrics["iou"]]
    return {"miou": float(metrics["miou"]), "pixel_acc": float(metrics["pixel_accuracy"]),
            "iou": [None if v != v else round(v, 4) for v in iou]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="engine_vs_reference_"))
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCH_HOME", tempfile.mkdtemp(prefix="standin_torch_home_"))
    import torch
    import torchvision

    from seg_transfer.testing import build_standin

    print(f"stand-in weights (random values) for {MODEL}: {build_standin(MODEL)}", flush=True)
    train, val = frames(Path(args.data), args.limit, args.val_every)
    print(f"{len(train)} train frames (0001TP, 0006R0), {len(val)} val frames (0016E5)", flush=True)
    cfg_dict = engine_config(args, train, val, out)
    results = {}
    for side in args.order.split(","):
        print(f"\n== {side}", flush=True)
        start = time.perf_counter()
        results[side] = run_reference(cfg_dict, out) if side == "reference" else run_engine(cfg_dict)
        results[side]["total_s"] = time.perf_counter() - start

    rows = ["| loop | train s (all epochs) | median epoch s | final train loss | val mIoU | val pixel acc |",
            "|---|---:|---:|---:|---:|---:|"]
    for side, r in results.items():
        secs = [e["seconds"] for e in r["epochs"]]
        rows.append(f"| {side} | {sum(secs):.1f} | {statistics.median(secs):.1f} | {r['epochs'][-1]['train_loss']:.4f} "
                    f"| {100 * r['miou']:.2f} | {100 * r['pixel_acc']:.2f} |")
    ref, eng = results["reference"], results["engine"]
    t_ref, t_eng = (sum(e["seconds"] for e in r["epochs"]) for r in (ref, eng))
    ratio = (f"engine / reference: train time {t_eng / t_ref:.2f}x (target <= 1: {'met' if t_eng <= t_ref else 'MISSED'}); "
             f"mIoU {100 * (eng['miou'] - ref['miou']):+.2f} points (target > 0: "
             f"{'met' if eng['miou'] > ref['miou'] else 'MISSED'})")
    per_class = ["| class | reference IoU | engine IoU |", "|---|---:|---:|"]
    for c, a, b in zip(CLASSES, ref["iou"], eng["iou"]):
        per_class.append(f"| {c} | {'-' if a is None else f'{100 * a:.1f}'} | {'-' if b is None else f'{100 * b:.1f}'} |")
    header = (f"{MODEL} from stand-in DEFAULT weights (random values), CamVid {len(train)} train frames "
              f"(0001TP+0006R0) / {len(val)} val frames (0016E5, every {args.val_every}th), {args.epochs} epochs, "
              f"crop {args.crop}, batch {args.batch_size}, lr {args.lr}; torch {torch.__version__}, torchvision "
              f"{torchvision.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs "
              f"({platform.machine()}); {datetime.date.today().isoformat()}")
    text = "\n\n".join([header, "\n".join(rows), ratio, "\n".join(per_class)])
    print("\n" + text)
    (out / "table.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1) + "\n")
    print(f"\nwritten: {out / 'table.md'}, {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
