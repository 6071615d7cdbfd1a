#!/usr/bin/env python
"""How fast the engine makes training batches, model aside: ``Trainer.batches(epoch)`` (the seam between
the data and the step) drained for an epoch, on three paths at the same recipe (CamVid frames, the
built-in segmentation recipe at ``--crop``, batch ``--batch-size``, ``--workers`` loader processes):

  files + albumentations   today's default: each epoch decodes the PNGs and augments one image at a time
  RAM + albumentations     ``cache.images: ram``: decoded once, the same per-image pipeline
  RAM + device recipe      ``cache.images: ram`` + ``augment.backend: device``: whole batches (here the
                           "device" is this CPU; on CUDA it is the GPU, see gpu_speed.py)

The three run interleaved, ``--rounds`` times in a shuffled order; images/s medians and each path's ratio
to the first, per round. Weights do not matter (no model runs); the model only fixes the preprocessing.

    python benchmarks/loader_speed.py                 # ~2 min on 2 quiet CPU cores
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from seg_transfer.config import load_config  # noqa: E402
from seg_transfer.engine.trainer import Trainer  # noqa: E402

PATHS = {
    "files + albumentations": ["cache.images=none", "augment.backend=cpu"],
    "RAM + albumentations": ["cache.images=ram", "augment.backend=cpu"],
    "RAM + device recipe": ["cache.images=ram", "augment.backend=device"],
}


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "CamVid")
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--items", type=int, default=96, help="train frames per epoch")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(tempfile.mkdtemp(prefix="loader_speed_"))
    trainers = {}
    for name, overrides in PATHS.items():
        cfg = load_config(str(REPO / "configs" / "camvid_lraspp.yaml"), [
            f"data.root={args.data}", "model.weights=null", "model.backbone_weights=null", f"augment.crop_size={args.crop}",
            f"train.batch_size={args.batch_size}", f"train.workers={args.workers}", f"train.limit_train={args.items}",
            "train.device=cpu", f"output.dir={out}", *overrides])
        trainers[name] = Trainer(cfg, progress=False, log=lambda _m: None)
    rates: dict[str, list[float]] = {name: [] for name in PATHS}
    for r in range(args.rounds + 1):  # round 0 warms up (page cache, allocator, persistent workers)
        order = list(PATHS)
        random.Random(r).shuffle(order)
        for name in order:
            trainer = trainers[name]
            start = time.perf_counter()
            images = sum(len(inputs) for inputs, _ in trainer.batches(r))
            if r:
                rates[name].append(images / (time.perf_counter() - start))
    base = rates["files + albumentations"]
    print(f"CamVid, {args.items} frames at resize 360, crop {args.crop}, batch {args.batch_size}, workers {args.workers}, "
          f"{args.threads} threads, {args.rounds} rounds (medians; ratio per round to files + albumentations)")
    print("path | images/s | ratio (range)")
    print("---|---|---")
    for name, values in rates.items():
        ratios = [v / b for v, b in zip(values, base)]
        print(f"{name} | {statistics.median(values):.0f} | {statistics.median(ratios):.2f}x "
              f"({min(ratios):.2f}-{max(ratios):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
