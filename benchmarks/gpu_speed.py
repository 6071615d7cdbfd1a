#!/usr/bin/env python
"""Training speed on an accelerator: for each task, the engine (its defaults there: the built-in recipe
augmented on whole batches on the device from decoded images in RAM, bf16 where the GPU has it) and the
engine's albumentations path (``augment.backend: cpu``) against the plain torchvision-style loop of
``benchmarks/reference/`` at the same recipe, model, batch, crop, epochs, seed and workers, in one run.

Per side: training images/s (train items / epoch training seconds, median over the epochs after the
first), the share of the training time spent waiting for the next batch, the first epoch's seconds, the
whole run's wall time (set-up, epochs, the final evaluation), and the task's main metric on a fixed val
split (segmentation: CamVid's 0016E5 sequence held out; classification: hymenoptera's 20% seeded split;
detection: BCCD's own val list). Weights: whatever ``$TORCH_HOME`` holds (offline: stand-ins, random
values under the official file names, made here when missing), so the metric only says the sides agree.

    python benchmarks/gpu_speed.py --device cuda --data ../shared/data     # ~6 min on one H200 (8 min cap)
    python benchmarks/gpu_speed.py --small                                  # the same code on the CPU, ~1 min

Prints one table per task and writes it, with every run's history, to ``--out``/gpu_speed.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from reference import RUNNERS as PLAIN_RUNNERS  # noqa: E402
from reference.common import plain_epochs  # noqa: E402

from seg_transfer.config import Config, load_config  # noqa: E402
from seg_transfer.engine.optim import autocast_settings  # noqa: E402
from seg_transfer.engine.trainer import Trainer, loader_workers  # noqa: E402
from seg_transfer.models.build import task_of  # noqa: E402

# task -> (config, its data folder under --data, overrides that make the recipe one the plain loop runs too)
TASKS = {
    "segmentation": ("configs/camvid_lraspp.yaml", "CamVid",
                     ["freeze.strategy=full", "freeze.unfreeze_from=null", "train.backbone_lr_mult=1",
                      "train.warmup_epochs=0", "train.precise_bn=0", "train.class_weights=null"]),
    "classification": ("configs/hymenoptera_resnet18.yaml", "hymenoptera/train", []),
    "detection": ("configs/bccd_fasterrcnn_mobilenet.yaml", "BCCD_Dataset/BCCD", []),
}
SIDES = {"engine": [], "engine, device recipe": ["augment.backend=device", "cache.images=ram"],
         "engine, albumentations path": ["augment.backend=cpu", "cache.images=none"], "plain loop": []}


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="folder holding CamVid, "
                   "hymenoptera, BCCD_Dataset (default: ../shared/data)")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--crop", type=int, default=320, help="segmentation crop (the issue's protocol: 320)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, help="both sides' loader processes (default: the engine's auto)")
    p.add_argument("--limit-train", type=int, help="train items per task (default: all)")
    p.add_argument("--small", action="store_true", help="a CPU smoke run: 2 epochs, 16 train items, crop 96")
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "gpu_speed")
    args = p.parse_args(argv)
    if args.small:
        args.device, args.epochs, args.crop, args.batch_size, args.limit_train = "cpu", 2, 96, 4, 16
        args.workers = 0 if args.workers is None else args.workers
    return args


def config(args: argparse.Namespace, task: str, side: str, out: Path) -> Config:
    path, folder, common = TASKS[task]
    # both sides get the same loader processes: the engine's own choice for the device unless given
    workers = [f"train.workers={loader_workers(args.workers, torch.device(args.device))}"]
    overrides = [f"data.root={args.data / folder}", f"train.epochs={args.epochs}", f"train.batch_size={args.batch_size}",
                 f"train.device={args.device}", f"output.dir={out}", f"output.name={task}_{side.split(',')[0]}",
                 "output.num_predictions=0", f"train.val_interval={args.epochs}", *workers, *common, *SIDES[side]]
    if task == "segmentation":
        overrides += [f"augment.crop_size={args.crop}"] + (["model.resize=120"] if args.small else [])
    if task == "detection" and args.small:
        overrides += ["train.batch_size=2"]
    if args.limit_train:
        overrides += [f"train.limit_train={args.limit_train}"]
    if args.small:
        overrides += ["train.val_batch_size=4"]
    return load_config(str(REPO / path), overrides)


def run_engine(cfg: Config) -> dict[str, Any]:
    start = time.perf_counter()
    trainer = Trainer(cfg, progress=False, log=lambda _m: None)
    result = trainer.fit()
    wall = time.perf_counter() - start
    history = result.history
    return {"items": len(trainer.train_set), "epochs": [{"seconds": r["train_seconds"], "data_seconds": r["data_seconds"]}
                                                        for r in history],
            "first_epoch": history[0]["seconds"], "wall": wall, "metric": result.best,
            "metric_name": trainer.task.metric_label, "path": "device" if trainer.recipe else "albumentations",
            "amp": amp_label(trainer.amp_enabled, trainer.amp_dtype)}


def amp_label(enabled: bool, dtype: torch.dtype) -> str:
    """The precision a side trained in: bfloat16, float16 or fp32."""
    return str(dtype).replace("torch.", "") if enabled else "fp32"


def run_plain(cfg: Config, out: Path) -> dict[str, Any]:
    """The plain loop of the task (``train.limit_train`` keeps the engine's subset there too)."""
    from seg_transfer.data.registry import build_dataset

    run_dir = out / "plain"
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    outcome = PLAIN_RUNNERS[task_of(cfg.model)](cfg, run_dir)
    wall = time.perf_counter() - start
    epochs = plain_epochs(run_dir)
    items = min(cfg.train.limit_train or 10**9, len(build_dataset(cfg.data).train))
    return {"items": items, "epochs": epochs, "first_epoch": epochs[0]["seconds"], "wall": wall,
            "metric": float(outcome.metrics[outcome.metric]), "metric_name": outcome.label, "path": "albumentations",
            # the reference resolves train.amp as the engine does
            "amp": amp_label(*autocast_settings(torch.device(cfg.train.device), cfg.train.amp))}


def summarise(r: dict[str, Any], batch: int) -> dict[str, Any]:
    steady = r["epochs"][1:] or r["epochs"]
    seconds = statistics.median(e["seconds"] for e in steady)
    return {**r, "images_per_s": r["items"] // batch * batch / seconds if seconds else float("nan"),
            "data_share": statistics.median(e["data_seconds"] / e["seconds"] for e in steady if e["seconds"])}


def table(task: str, rows: dict[str, dict[str, Any]]) -> str:
    plain = rows.get("plain loop", {}).get("images_per_s")
    lines = [f"{task}: side | path | amp | img/s | vs plain | waiting for data | first epoch s | whole run s | val "
             f"{next(iter(rows.values()))['metric_name']}", "|".join(["---"] * 9)]
    for side, r in rows.items():
        ratio = f"{r['images_per_s'] / plain:.2f}x" if plain else "-"
        lines.append(f"{side} | {r['path']} | {r['amp']} | {r['images_per_s']:.1f} | {ratio} | {r['data_share']:.0%} | "
                     f"{r['first_epoch']:.1f} | {r['wall']:.1f} | {r['metric']:.4f}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    home = os.environ.get("TORCH_HOME")
    if not home or not any(Path(home).glob("hub/checkpoints/*.pth")):
        from seg_transfer.testing import build_standin

        os.environ["TORCH_HOME"] = home or str(args.out / "torch_home")
        for name in ("lraspp_mobilenet_v3_large", "resnet18", "fasterrcnn_mobilenet_v3_large_320_fpn"):
            build_standin(name)
        print(f"weights: stand-ins in {os.environ['TORCH_HOME']} (random values: the metric only says the sides agree)")
    print(f"device {args.device} ({torch.cuda.get_device_name() if args.device.startswith('cuda') else 'CPU'}), "
          f"torch {torch.__version__}, {args.epochs} epochs, batch {args.batch_size}, workers "
          f"{'auto' if args.workers is None else args.workers}" + (", --small" if args.small else ""))
    results: dict[str, dict[str, Any]] = {}
    for task in args.tasks.split(","):
        rows = {}
        for side in SIDES:
            out = args.out / task / side.replace(" ", "_").replace(",", "")
            cfg = config(args, task, side, out)
            if side == "engine, device recipe" and rows.get("engine", {}).get("path") == "device":
                continue  # the engine's defaults are the device recipe here (CUDA): measured once
            r = run_plain(cfg, out) if side == "plain loop" else run_engine(cfg)
            rows[side] = summarise(r, cfg.train.batch_size)
            print(f"  {task} / {side}: {rows[side]['images_per_s']:.1f} img/s, whole run {r['wall']:.1f}s", flush=True)
        results[task] = rows
        print("\n" + table(task, rows) + "\n", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_speed.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                         "results": results}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
