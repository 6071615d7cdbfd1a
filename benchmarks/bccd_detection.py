#!/usr/bin/env python
"""BCCD detection runs for benchmarks/RESULTS.md: fine-tune a config through the one Trainer,
with R-CNN sampling sized for a shared CPU, then print AP / AP50 overall and per class of best.pt.

torchvision's Faster R-CNN samples 512 RoIs per image from 2000 proposals in training; its box head's
fully connected layers then cost several times the MobileNet backbone, ~70 s a batch of 4 on this
machine's shared 2 cores. ``--rois`` / ``--proposals`` lower them (torchvision's defaults: 512 / 2000);
everything else is the config's. Usage::

    python benchmarks/bccd_detection.py configs/bccd_fasterrcnn_mobilenet.yaml output.name=bccd_standin
    python benchmarks/bccd_detection.py configs/bccd_fasterrcnn_mobilenet.yaml model.weights=null \\
        model.backbone_weights=runs/camvid_lraspp/best.pt output.name=bccd_from_camvid
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seg_transfer.config import load_config  # noqa: E402
from seg_transfer.engine.trainer import Trainer  # noqa: E402
from seg_transfer.models.checkpoint import read_checkpoint  # noqa: E402
from seg_transfer.run_folder import RunFolder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", help="key.path=value")
    parser.add_argument("--rois", type=int, default=128, help="RoIs sampled per image in training (torchvision: 512)")
    parser.add_argument("--proposals", type=int, default=500,
                        help="RPN proposals kept per image in training (torchvision: 2000)")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    start = time.perf_counter()
    trainer = Trainer(cfg, progress=False)
    model = trainer.model
    model.roi_heads.fg_bg_sampler.batch_size_per_image = args.rois
    model.rpn._pre_nms_top_n["training"] = 2 * args.proposals
    model.rpn._post_nms_top_n["training"] = args.proposals
    if model.info.transfer is not None:  # a backbone from another seg_transfer checkpoint
        print(model.info.transfer.format(), flush=True)
    result = trainer.fit()
    wall = time.perf_counter() - start
    best = read_checkpoint(RunFolder(result.run_dir).best)["metrics"]
    print(f"\n{args.config} {' '.join(args.overrides)} --rois {args.rois} --proposals {args.proposals}")
    print(f"epochs {len(result.history)}, wall {wall / 60:.1f} min (set-up + training + evaluation), "
          f"best AP {result.best:.4f} at epoch {result.best_epoch}")
    print(f"| class | AP | AP50 |\n|---|---|---|\n| all | {best['ap']:.3f} | {best['ap50']:.3f} |")
    for name, ap, ap50 in zip(trainer.classes[1:], best["ap_per_class"], best["ap50_per_class"]):
        print(f"| {name} | {ap:.3f} | {ap50:.3f} |")


if __name__ == "__main__":
    main()
