#!/usr/bin/env python
"""Transfer strategies for image classification, side by side: full fine-tuning vs fixed feature extractor
(backbone frozen, pooled features cached) vs partial (stages before ``--unfreeze-from`` frozen), at equal
epochs, on ants vs bees (``../shared/data/hymenoptera/train``, 20% of each class held out as val, the GIF
placeholder skipped).

All three Trainers are built from one config dict that differs only in ``freeze`` (and ``cache``), with
the same seed, split, augmentation, optimizer and schedule. Each side runs ``Trainer.train_epoch`` for
every epoch and one ``Trainer.evaluate`` at the end; ``fit()`` is not used, so no checkpoint or plot I/O
lands in the figures. ``setup s`` is the Trainer's construction (for the cached side: the one backbone
pass over train and val that fills the cache), ``train s`` all epochs, ``val s`` the final evaluation.

Starting weights are *stand-ins* (``seg_transfer.testing.build_standin``: the torchvision architecture
with random values saved under the official DEFAULT file name in a private TORCH_HOME; no real checkpoint
exists offline). So the "pretrained" features are random: the accuracies compare the strategies' mechanics
(a random frozen backbone gives a linear probe little to work with), never what ImageNet weights achieve.

    .venv/bin/python benchmarks/classification_strategies.py                    # resnet18, 3 epochs
    .venv/bin/python benchmarks/classification_strategies.py --limit 8 --epochs 1   # smoke test
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STRATEGIES = ("full", "feature_extraction", "partial")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="resnet18", help="zoo classifier (stand-in DEFAULT weights)")
    p.add_argument("--epochs", type=int, default=3, help="epochs on each side")
    p.add_argument("--unfreeze-from", default="layer3", help="partial: the first trainable stage")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=0.001)
    p.add_argument("--resize", type=int, default=None, help="model.resize (default: the weights' own, 256/224)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images of each class")
    p.add_argument("--data", default=str(REPO.parent / "shared/data/hymenoptera/train"))
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--json", help="also write the results here")
    return p.parse_args(argv)


def limited_root(root: Path, limit: int, tmp: Path) -> Path:
    """A folder of symlinks to the first ``limit`` files of each class (the data itself is not copied)."""
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        (tmp / folder.name).mkdir(parents=True)
        for f in sorted(folder.iterdir())[:limit]:
            (tmp / folder.name / f.name).symlink_to(f)
    return tmp


def base_config(args: argparse.Namespace, root: Path, out: Path) -> dict[str, Any]:
    return {
        "model": {"name": args.model, "weights": "DEFAULT", "resize": args.resize},
        "data": {"format": "imagefolder", "root": str(root), "val_ratio": 0.2, "seed": 0, "skip_bad": True},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "val_batch_size": args.batch_size,
                  "optimizer": "sgd", "lr": args.lr, "momentum": 0.9, "weight_decay": 0.0,
                  "scheduler": "cosine", "amp": "off", "device": "cpu", "seed": 0},
        "output": {"dir": str(out), "name": "unused", "num_predictions": 0},
    }


def side(strategy: str, args: argparse.Namespace) -> dict[str, Any]:
    if strategy == "feature_extraction":
        return {"freeze": {"strategy": strategy}, "cache": {"enabled": True, "copies": 1}}
    if strategy == "partial":
        return {"freeze": {"strategy": strategy, "unfreeze_from": args.unfreeze_from}, "cache": {"enabled": False}}
    return {"freeze": {"strategy": "full"}, "cache": {"enabled": False}}


def run(strategy: str, cfg_dict: dict[str, Any]) -> dict[str, Any]:
    from seg_transfer.config import Config, from_dict
    from seg_transfer.engine.trainer import Trainer

    cfg = from_dict(Config, cfg_dict)
    start = time.perf_counter()
    trainer = Trainer(cfg, progress=False, log=lambda _msg: None)
    setup = time.perf_counter() - start
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    epochs = []
    for epoch in range(cfg.train.epochs):
        t0 = time.perf_counter()
        trainer.train_epoch(epoch)
        epochs.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    val_loss, metrics, _ = trainer.evaluate()
    val = time.perf_counter() - t0
    return {"strategy": strategy, "cached": trainer.cached, "trainable": trainable, "setup_s": setup,
            "epoch_s": epochs, "train_s": sum(epochs), "val_s": val, "total_s": setup + sum(epochs) + val,
            "val_accuracy": metrics["accuracy"], "val_loss": val_loss,
            "train_images": len(trainer.train_set), "val_images": len(trainer.val_set)}


def table(rows: list[dict[str, Any]]) -> str:
    full = next(r for r in rows if r["strategy"] == "full")
    header = ("strategy", "trainable", "setup s", "train s", "val s", "total s", "x full", "val acc")
    lines = [header]
    for r in rows:
        name = r["strategy"] + (" (cached)" if r["cached"] else "")
        lines.append((name, f"{r['trainable']:,}", f"{r['setup_s']:.1f}", f"{r['train_s']:.1f}", f"{r['val_s']:.1f}",
                      f"{r['total_s']:.1f}", f"{r['total_s'] / full['total_s']:.2f}", f"{r['val_accuracy']:.4f}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    fmt = lambda line: "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                          for i, (c, w) in enumerate(zip(line, widths))) + " |"
    rule = "|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    return "\n".join([fmt(lines[0]), rule, *(fmt(line) for line in lines[1:])])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["TORCH_HOME"] = str(tmp / "torch_home")  # stand-ins only: never the user's cache
        os.environ["SEG_TRANSFER_OFFLINE"] = "1"
        from seg_transfer.testing import build_standin

        build_standin(args.model)
        root = Path(args.data)
        if args.limit:
            root = limited_root(root, args.limit, tmp / "data")
        base = base_config(args, root, tmp / "runs")
        rows = []
        for strategy in STRATEGIES:
            cfg = copy.deepcopy(base)
            cfg.update(side(strategy, args))
            rows.append(run(strategy, cfg))
            print(f"{strategy}: done in {rows[-1]['total_s']:.1f}s", file=sys.stderr, flush=True)
    r = rows[0]
    print(f"# {args.model}, stand-in DEFAULT weights (random values), {args.epochs} epoch(s) each, "
          f"{r['train_images']} train / {r['val_images']} val images, batch {args.batch_size}, SGD lr {args.lr} "
          f"cosine; partial: unfreeze_from {args.unfreeze_from}; CPU {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
