#!/usr/bin/env python
"""Feature cache benchmark: epoch time and final val mIoU with and without ``cache.enabled``, side by side.

Two Trainers are built from one config dict that differ only in ``cache.enabled`` (true / false), with
``freeze.strategy: feature_extraction`` (the backbone wholly frozen: the case the cache exists for), on
real CamVid (``../shared/data/CamVid`` from the repository root; whole sequences held out for val, as in
configs/camvid_lraspp.yaml). Each side runs the same epochs through ``Trainer.train_epoch`` (timed one
by one) and one ``Trainer.evaluate`` at the end (timed apart); ``fit()`` is not used, so no checkpoint,
plot or prediction I/O lands in the figures.

Starting weights are *stand-ins* (``seg_transfer.testing.build_standin``: torchvision architectures with
random values saved under the official file names in a private TORCH_HOME; no real checkpoint exists
offline). The mIoU is therefore only comparable between the two sides, never meaningful as accuracy.

Augmentation is random but deterministic: ``EpochSeeded`` seeds item ``i`` at epoch ``e`` with
``item_seed(seed, e, i)`` and the cache draws copy ``k`` with the same seed as epoch ``k``. The cached
side stores ``--copies`` augmented copies (default 2) and replays them (epoch ``e`` reads copy
``e % copies``) while the uncached side keeps drawing new ones; the mIoU column shows what replaying costs.
With ``--copies`` equal to ``--epochs`` both sides see exactly the same images (and the cache build then
costs as many backbone passes as the uncached epochs).

Columns: ``cache build s`` is the one-off backbone pass over train (x copies) and val, inside the
Trainer's construction (``Trainer.cache_seconds``); ``median epoch s`` the median of the per-epoch train
times; ``val s`` the one final evaluation; ``total s`` = cache build + every epoch + val. Per-epoch
breakdown: ``data`` is the epoch's wait for batches (``Trainer.data_seconds``; with ``--workers 0`` the
dataset's ``__getitem__`` and the collate inline: PNG decode + augment, or a cache lookup), the rest is the
model's (or neck + head's) forward, the loss, backward and the optimizer step.

    .venv/bin/python benchmarks/feature_cache.py                     # full run, ~6 min on 2 idle CPU cores
    .venv/bin/python benchmarks/feature_cache.py --limit 8 --epochs 1  # smoke test
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from common import CAMVID_CLASSES, out_and_torch_home  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--epochs", type=int, default=6, help="epochs on each side")
    # A light head on a heavy frozen backbone: the feature-extraction case (a linear-probe-like head).
    # With resnet50+none+fcn (FCNHead's 3x3 conv on 2048 channels) the head itself costs about a third
    # of the uncached step, which caps the per-epoch gain near 4x.
    p.add_argument("--model", default="resnet50+none+lraspp",
                   help="BACKBONE+NECK+HEAD (assembled; stand-in backbone weights) or a zoo name such as "
                        "fcn_resnet50 (stand-in whole-model weights)")
    p.add_argument("--crop", type=int, default=320, help="augment.crop_size (square train crops)")
    p.add_argument("--copies", type=int, default=2,
                   help="cache.copies: augmented copies stored per train image, replayed in turn (set it to "
                        "--epochs for exactly the uncached side's augmentations, at that many backbone passes)")
    p.add_argument("--limit", type=int, default=None,
                   help="use only N train and N val images (evenly spaced), for a quick run")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=0,
                   help="train.workers (0: loading runs inline, and the per-epoch breakdown is exact)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="cache.dtype")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "CamVid"), help="CamVid root")
    p.add_argument("--torch-home", default=None,
                   help="TORCH_HOME for the stand-in checkpoints (default: a temporary folder)")
    p.add_argument("--out", default=None,
                   help="folder for results.json and table.md (default: a temporary folder)")
    p.add_argument("--order", default="uncached,cached", help="which side runs first")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------- config

def model_block(spec: str) -> tuple[dict[str, Any], list[str]]:
    """``--model`` -> (model config block, torchvision builders whose DEFAULT weights need a stand-in)."""
    if "+" in spec:
        backbone, neck, head = spec.split("+")
        return ({"backbone": backbone, "neck": neck, "head": head, "weights": None,
                 "backbone_weights": "DEFAULT", "resize": 360}, [backbone])
    return {"name": spec, "weights": "DEFAULT", "backbone_weights": None, "aux_loss": False, "resize": 360}, [spec]


def camvid_data(root: str, limit: int | None, workdir: Path) -> dict[str, Any]:
    """The data block of configs/camvid_lraspp.yaml (sequence 0016E5 held out); with ``limit``, list
    files of N evenly spaced names from each side of that same split."""
    data = {"format": "folder", "root": root, "images": "train", "masks": "trainannot",
            "classes": CAMVID_CLASSES, "label_map": {11: 255}, "ignore_index": 255,
            "group_regex": r"^(\w+?)_", "val_groups": ["0016E5"]}
    if limit is None:
        return data
    from seg_transfer.data.registry import build_dataset

    splits = build_dataset(data)
    lists = {}
    for side, ds in (("train", splits.train), ("val", splits.val)):
        names = [Path(n).stem for n in ds.names]
        step = max(1, len(names) // limit)
        path = workdir / f"{side}_limit{limit}.txt"
        path.write_text("\n".join(names[::step][:limit]) + "\n")
        lists[f"{side}_list"] = str(path)
    for key in ("group_regex", "val_groups"):
        data.pop(key)
    return {**data, **lists}


def base_config(args: argparse.Namespace, data: dict[str, Any], out: Path) -> dict[str, Any]:
    model, _ = model_block(args.model)
    crop = args.crop
    return {
        "model": model,
        "data": data,
        "augment": {  # written out (not the default list): random, but seeded per (seed, epoch, item)
            "crop_size": crop,
            "train": [{"name": "RandomScale", "scale_limit": [-0.5, 1.0], "p": 1.0},
                      {"name": "PadIfNeeded", "min_height": crop, "min_width": crop, "border_mode": "constant"},
                      {"name": "RandomCrop", "height": crop, "width": crop},
                      {"name": "HorizontalFlip", "p": 0.5}],
            "val": [],  # CamVid is 360x480 already: whole images
        },
        "freeze": {"strategy": "feature_extraction", "bn": True},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "val_batch_size": 1, "optimizer": "sgd",
                  "lr": 0.02, "momentum": 0.9, "weight_decay": 1e-4, "scheduler": "poly",
                  "class_weights": "median_frequency", "amp": "off", "workers": args.workers,
                  "device": "cpu", "seed": 0},
        "cache": {"enabled": None, "copies": args.copies or args.epochs, "dtype": args.dtype, "max_gb": 6.0},
        "output": {"dir": str(out), "name": None, "num_predictions": 0},
    }


# ------------------------------------------------------------------------------------- running

def run_side(name: str, cfg_dict: dict[str, Any], enabled: bool, out: Path) -> dict[str, Any]:
    import torch

    from seg_transfer.config import Config, from_dict
    from seg_transfer.engine.trainer import Trainer

    cfg_dict = copy.deepcopy(cfg_dict)  # the two sides differ in cache.enabled only
    cfg_dict["cache"]["enabled"] = enabled
    cfg_dict["output"]["name"] = name
    cfg = from_dict(Config, cfg_dict)

    print(f"\n== {name}: cache.enabled={enabled}", flush=True)
    start = time.perf_counter()
    trainer = Trainer(cfg, run_dir=out / name, progress=False, log=lambda m: print(f"   {m}", flush=True))
    construct = time.perf_counter() - start
    assert trainer.cached == enabled, (name, trainer.cached)
    cache_build = trainer.cache_seconds  # the Trainer's own timing of FeatureCache.build (train + val)
    cache_bytes = 0
    if trainer.cached:
        cache_bytes = trainer.train_set.cache.nbytes + trainer.val_set.cache.nbytes
    print(f"   {len(trainer.train_set)} train / {len(trainer.val_set)} val items; Trainer() {construct:.1f}s"
          + (f" (cache build {cache_build:.1f}s; {cache_bytes / 2**20:.0f} MiB)" if trainer.cached else ""), flush=True)

    epochs = []
    for epoch in range(cfg.train.epochs):
        start = time.perf_counter()
        loss = trainer.train_epoch(epoch)
        seconds = time.perf_counter() - start
        data = trainer.data_seconds  # the epoch's wait for batches (workers 0: dataset + collate, inline)
        epochs.append({"epoch": epoch + 1, "seconds": seconds, "train_loss": loss, "data": data,
                       "step": seconds - data})
        print(f"   epoch {epoch + 1}: {seconds:.1f}s (data {data:.1f}s, forward+backward+step "
              f"{seconds - data:.1f}s)  train_loss {loss:.4f}", flush=True)
    start = time.perf_counter()
    val_loss, metrics, _ = trainer.evaluate()
    val_seconds = time.perf_counter() - start
    print(f"   val: {val_seconds:.1f}s  val_loss {val_loss:.4f}  "
          f"mIoU {metrics['miou']:.4f}", flush=True)
    times = [e["seconds"] for e in epochs]
    result = {
        "variant": name, "cache_enabled": enabled, "trainer_init_s": construct, "cache_build_s": cache_build,
        "cache_mib": cache_bytes / 2**20, "epochs": epochs, "median_epoch_s": statistics.median(times),
        "val_s": val_seconds, "total_s": cache_build + sum(times) + val_seconds,
        "val_loss": val_loss, "miou": float(metrics["miou"]), "pixel_acc": float(metrics["pixel_accuracy"]),
        "train_items": len(trainer.train_set), "val_items": len(trainer.val_set), "threads": torch.get_num_threads(),
    }
    del trainer
    return result


# ------------------------------------------------------------------------------------- report

def table(results: dict[str, dict[str, Any]]) -> str:
    rows = ["| variant | cache build s | median epoch s | val s | total s | final val mIoU |",
            "|---|---:|---:|---:|---:|---:|"]
    for r in results.values():
        build = f"{r['cache_build_s']:.1f}" if r["cache_enabled"] else "-"
        rows.append(f"| {r['variant']} | {build} | {r['median_epoch_s']:.2f} | {r['val_s']:.1f} | "
                    f"{r['total_s']:.1f} | {100 * r['miou']:.2f} |")
    return "\n".join(rows)


def ratio_line(results: dict[str, dict[str, Any]]) -> str:
    u, c = results["uncached"], results["cached"]
    epoch, total = u["median_epoch_s"] / c["median_epoch_s"], u["total_s"] / c["total_s"]
    diff = 100 * (c["miou"] - u["miou"])
    return (f"speed-up (uncached / cached): median epoch {epoch:.1f}x, total incl. cache build {total:.2f}x "
            f"(target >= 5x: epoch {'met' if epoch >= 5 else 'MISSED'}, total {'met' if total >= 5 else 'MISSED'}); "
            f"mIoU cached - uncached {diff:+.2f} points (target within 1: {'met' if abs(diff) <= 1 else 'MISSED'})")


def breakdown(results: dict[str, dict[str, Any]]) -> str:
    rows = ["| variant | epoch | s | data s | forward+backward+step s | train loss |",
            "|---|---:|---:|---:|---:|---:|"]
    for r in results.values():
        for e in r["epochs"]:
            rows.append(f"| {r['variant']} | {e['epoch']} | {e['seconds']:.2f} | {e['data']:.2f} | "
                        f"{e['step']:.2f} | {e['train_loss']:.4f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wall = time.perf_counter()
    out = out_and_torch_home(args.out, args.torch_home, "feature_cache_bench")

    import torch
    import torchvision

    from seg_transfer.config import Config, from_dict
    from seg_transfer.engine.cache import estimate_bytes
    from seg_transfer.models.build import build_model
    from seg_transfer.testing import build_standin

    _, standins = model_block(args.model)
    for name in standins:
        print(f"stand-in weights (random values) for {name}: {build_standin(name)}", flush=True)

    cfg_dict = base_config(args, camvid_data(args.data, args.limit, out), out)
    # Cache size before building anything big: train crops x copies + whole val images (360x480).
    model_cfg = from_dict(Config, cfg_dict).model
    probe = build_model({**{k: v for k, v in vars(model_cfg).items()}, "classes": CAMVID_CLASSES, "num_classes": None})
    from seg_transfer.transfer import apply_freeze
    apply_freeze(probe, "feature_extraction", None, None, True)
    n_train = args.limit or 163
    n_val = args.limit or 204
    copies = args.copies or args.epochs
    est = (estimate_bytes(probe, (args.crop, args.crop), n_train, copies, args.dtype)
           + estimate_bytes(probe, (360, 480), n_val, 1, args.dtype))
    del probe
    print(f"cache estimate: {est / 2**30:.2f} GiB ({n_train} train x {copies} copies at {args.crop}x{args.crop} "
          f"+ {n_val} val at 360x480, {args.dtype})", flush=True)

    results = {}
    for side in args.order.split(","):
        results[side] = run_side(side, cfg_dict, side == "cached", out)

    wall = time.perf_counter() - wall
    header = (f"model {args.model} (stand-in weights: random values), CamVid {results['cached']['train_items']} "
              f"train / {results['cached']['val_items']} val images, crop {args.crop}, batch {args.batch_size}, "
              f"{args.epochs} epochs, cache.copies {copies}, cache.dtype {args.dtype}, workers {args.workers}; "
              f"torch {torch.__version__}, torchvision {torchvision.__version__}, {results['cached']['threads']} "
              f"threads, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}); "
              f"{datetime.date.today().isoformat()}")
    text = "\n\n".join([header, table(results), ratio_line(results), breakdown(results),
                        f"benchmark wall time {wall:.0f}s (incl. Trainer set-up: "
                        + ", ".join(f"{r['variant']} {r['trainer_init_s'] - r['cache_build_s']:.1f}s"
                                    for r in results.values()) + " outside the cache build)"])
    print("\n" + text)
    (out / "table.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({"args": vars(args), "wall_s": wall, "results": results},
                                                 indent=1) + "\n")
    print(f"\nwritten: {out / 'table.md'}, {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
