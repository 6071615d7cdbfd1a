#!/usr/bin/env python
"""Transfer strategies benchmark: from scratch vs feature extraction vs partial vs full vs gradual
unfreezing, at equal epochs, on a small downstream task that starts from the toolkit's own checkpoint.

The seeds' question ("with a pretrained checkpoint and 20 labelled images, which strategy?"), answered
with measured numbers on real CamVid (``../shared/data/CamVid`` from the repository root):

1. Upstream: ``Trainer(cfg).fit()`` trains zoo ``lraspp_mobilenet_v3_large`` (21 -> 11 classes) on two
   sequences, ``0001TP`` + ``0006R0`` (163 frames; every ``--upstream-val-every``-th frame is held back
   as its val, the rest train), starting from *stand-in* DEFAULT weights (``build_standin``: the
   torchvision architecture with random values under the official file name in a private TORCH_HOME;
   no real checkpoint exists offline). Its ``best.pt`` is the upstream checkpoint.
2. Downstream: sequence ``0016E5`` only (204 frames): ``--n-train`` (20) evenly spaced frames train,
   the rest (184) are val; both sides are list files in the output folder. Every strategy is one
   ``Trainer(cfg).fit()`` of the same config dict that differs only in the lines below:

   - scratch: ``weights: null``, no ``train.init_from`` (random init; ``strategy: full``, LR mult 1)
   - feature_extraction: ``init_from``, ``freeze.strategy: feature_extraction``, ``cache.enabled: true``
     (``cache.copies`` = epochs, so the cache holds the same augmented crops the other sides draw)
   - partial: ``init_from``, ``strategy: partial``, ``unfreeze_from: layer3``, ``backbone_lr_mult: 0.1``
   - full: ``init_from``, ``strategy: full``, ``backbone_lr_mult: 0.1``
   - gradual: ``init_from``, ``strategy: feature_extraction``, ``freeze.schedule: {E/3: layer4,
     2E/3: layer3}`` (0-based epoch indices, rounded), ``backbone_lr_mult: 0.1``, ``cache.enabled: false``

Columns: mIoU / pixel accuracy on the downstream val after the last epoch (``final``) and the best
epoch's (``best``, with its epoch; choosing it *on val* flatters it); ``trainable`` parameters at the
start (-> at the end, where a schedule unfreezes more); ``cache s`` the one-off backbone pass inside
``Trainer()``; ``train s`` = cache build + every epoch's training incl. the per-epoch last.pt/best.pt
and curves.png writes (``fit()`` minus the evaluations); ``eval s`` the per-epoch val passes added up;
``total s`` = ``Trainer()`` (data index, model build, init_from load, cache build) + ``fit()``; ``x full``
is total / full fine-tuning's total.

    .venv/bin/python benchmarks/transfer_strategies.py --smoke      # ~35 s: does it run at all
    .venv/bin/python benchmarks/transfer_strategies.py              # default run: 26 min measured on
                                                                    # 2 shared CPU cores (eval-bound)
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from common import CAMVID_CLASSES, out_and_torch_home  # noqa: E402

MODEL = "lraspp_mobilenet_v3_large"
UPSTREAM_SEQUENCES = ("0001TP", "0006R0")
DOWNSTREAM_SEQUENCE = "0016E5"
STRATEGIES = ("scratch", "feature_extraction", "partial", "full", "gradual")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--upstream-epochs", type=int, default=4, help="epochs of the upstream run")
    p.add_argument("--epochs", type=int, default=8, help="epochs of every downstream strategy")
    p.add_argument("--resize", type=int, default=240, help="model.resize (shorter side, train and val)")
    p.add_argument("--crop", type=int, default=224, help="augment.crop_size (square train crops)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--val-batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.02, help="train.lr (head; backbone x backbone_lr_mult)")
    p.add_argument("--n-train", type=int, default=20, help="labelled downstream frames (evenly spaced)")
    p.add_argument("--limit-val", type=int, default=None,
                   help="score every strategy on only N downstream val frames (evenly spaced)")
    p.add_argument("--upstream-val-every", type=int, default=10,
                   help="every N-th upstream frame goes to the upstream val, the rest train")
    p.add_argument("--copies", type=int, default=None, help="cache.copies of feature extraction (default: --epochs)")
    p.add_argument("--strategies", default=",".join(STRATEGIES), help=f"comma list out of {', '.join(STRATEGIES)}")
    p.add_argument("--upstream", default=None,
                   help="reuse this upstream best.pt instead of training one (its figures are then not re-measured)")
    p.add_argument("--recalibrate-bn", action="store_true",
                   help="before the downstream runs, re-estimate the upstream checkpoint's BatchNorm running "
                        "statistics (one no-grad pass over its train frames, cumulative average) and start "
                        "from that copy: a few CPU epochs from random weights leave them far from the weights'")
    p.add_argument("--smoke", action="store_true",
                   help="tiny run (1 epoch each, few images, small crops): checks that everything runs")
    p.add_argument("--workers", type=int, default=0, help="train.workers")
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads (1: on 2 CPU cores shared with other jobs, 2 threads measured "
                        "5-20x slower than 1 per forward+backward, the OpenMP threads waiting on each other)")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "CamVid"), help="CamVid root")
    p.add_argument("--torch-home", default=None,
                   help="TORCH_HOME for the stand-in checkpoints (default: a temporary folder)")
    p.add_argument("--out", default=None,
                   help="folder for run folders, list files, results.json and table.md (default: a temporary folder)")
    args = p.parse_args(argv)
    if args.smoke:
        args.upstream_epochs, args.epochs, args.resize, args.crop = 1, 1, 96, 96
        args.n_train, args.limit_val, args.upstream_val_every = 4, 4, 40
    unknown = set(args.strategies.split(",")) - set(STRATEGIES)
    if unknown:
        p.error(f"--strategies: unknown {', '.join(sorted(unknown))} (choices: {', '.join(STRATEGIES)})")
    return args


# ------------------------------------------------------------------------------------- data

def sequence_names(root: str, sequence: str) -> list[str]:
    """Sorted file stems of one CamVid sequence (frame order)."""
    return sorted(p.stem for p in (Path(root) / "train").iterdir() if p.name.startswith(sequence + "_"))


def evenly(names: list[str], n: int) -> list[str]:
    """``n`` names spread evenly from first to last (all of them when ``n >= len``)."""
    if n >= len(names):
        return list(names)
    if n == 1:
        return [names[len(names) // 2]]
    return [names[round(i * (len(names) - 1) / (n - 1))] for i in range(n)]


def write_list(path: Path, names: list[str]) -> str:
    path.write_text("\n".join(names) + "\n")
    return str(path)


def camvid_data(root: str, train_list: str, val_list: str) -> dict[str, Any]:
    """configs/camvid_lraspp.yaml's data block with a list-file split instead of the group split."""
    return {"format": "folder", "root": root, "images": "train", "masks": "trainannot",
            "classes": CAMVID_CLASSES, "label_map": {11: 255}, "ignore_index": 255,
            "train_list": train_list, "val_list": val_list}


def upstream_split(args: argparse.Namespace, out: Path) -> tuple[str, str, int, int]:
    names = [n for seq in UPSTREAM_SEQUENCES for n in sequence_names(args.data, seq)]
    val = names[args.upstream_val_every // 2::args.upstream_val_every]
    train = [n for n in names if n not in set(val)]
    if args.smoke:
        train = evenly(train, 8)
    return (write_list(out / "upstream_train.txt", train), write_list(out / "upstream_val.txt", val),
            len(train), len(val))


def downstream_split(args: argparse.Namespace, out: Path) -> tuple[str, str, int, int]:
    names = sequence_names(args.data, DOWNSTREAM_SEQUENCE)
    train = evenly(names, args.n_train)
    val = [n for n in names if n not in set(train)]
    if args.limit_val:
        val = evenly(val, args.limit_val)
    return (write_list(out / "downstream_train.txt", train), write_list(out / "downstream_val.txt", val),
            len(train), len(val))


# ------------------------------------------------------------------------------------- configs

def base_config(args: argparse.Namespace, data: dict[str, Any], epochs: int, out: Path) -> dict[str, Any]:
    return {
        "model": {"name": MODEL, "weights": None, "backbone_weights": None, "resize": args.resize},
        "data": data,
        "augment": {"crop_size": args.crop},  # default pipeline: resize, random scale 0.5-2, pad, crop, flip
        "freeze": {"strategy": "full", "bn": True},
        "train": {"epochs": epochs, "batch_size": args.batch_size, "val_batch_size": args.val_batch_size,
                  "optimizer": "sgd", "lr": args.lr, "momentum": 0.9, "weight_decay": 1e-4,
                  "scheduler": "poly", "class_weights": "median_frequency", "amp": "off",
                  "workers": args.workers, "device": "cpu", "seed": 0},
        "cache": {"enabled": False, "copies": 1, "dtype": "float32", "max_gb": 4.0},
        "output": {"dir": str(out), "name": None, "num_predictions": 0},
    }


def gradual_schedule(epochs: int) -> dict[int, str]:
    """``{E/3: layer4, 2E/3: layer3}`` (0-based epoch indices, rounded; kept distinct and inside the run)."""
    first = min(max(round(epochs / 3), 0), max(epochs - 1, 0))
    second = max(round(2 * epochs / 3), first + 1)
    return {first: "layer4", second: "layer3"}


def strategy_config(name: str, base: dict[str, Any], upstream: str, args: argparse.Namespace) -> dict[str, Any]:
    cfg = copy.deepcopy(base)
    cfg["output"]["name"] = name
    if name == "scratch":
        return cfg  # weights null, backbone_weights null, no init_from, strategy full, LR mult 1
    cfg["train"]["init_from"] = upstream
    if name == "feature_extraction":
        cfg["freeze"]["strategy"] = "feature_extraction"
        cfg["cache"].update(enabled=True, copies=args.copies or args.epochs)
    elif name == "partial":
        cfg["freeze"].update(strategy="partial", unfreeze_from="layer3")
        cfg["train"]["backbone_lr_mult"] = 0.1
    elif name == "full":
        cfg["train"]["backbone_lr_mult"] = 0.1
    elif name == "gradual":
        cfg["freeze"].update(strategy="feature_extraction", schedule=gradual_schedule(args.epochs))
        cfg["train"]["backbone_lr_mult"] = 0.1
    return cfg


# ------------------------------------------------------------------------------------- running



def trainable(model: Any) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def run(name: str, cfg_dict: dict[str, Any], out: Path) -> dict[str, Any]:
    """One ``Trainer(cfg).fit()``, timed: construction (incl. cache build), per-epoch eval, the rest."""
    from seg_transfer.config import Config, from_dict
    from seg_transfer.engine.trainer import Trainer
    from seg_transfer.run_folder import RunFolder

    cfg = from_dict(Config, cfg_dict)
    print(f"\n== {name}", flush=True)
    start = time.perf_counter()
    trainer = Trainer(cfg, run_dir=out / name, progress=False, log=lambda m: print(f"   {m}", flush=True))
    construct = time.perf_counter() - start
    params_start = trainable(trainer.model)
    start = time.perf_counter()
    result = trainer.fit()
    fit = time.perf_counter() - start
    hist = result.history
    # the Trainer's own timings: the feature cache's build, and each epoch's evaluation (metrics.csv)
    box = {"cache": trainer.cache_seconds, "eval": sum(r.get("eval_seconds", 0.0) for r in hist)}
    best = max(hist, key=lambda r: r["miou"])
    out_row = {
        "name": name, "cached": trainer.cached, "train_items": len(trainer.train_set),
        "val_items": len(trainer.val_set), "epochs": len(hist),
        "trainable_start": params_start, "trainable_end": trainable(trainer.model),
        "total_params": sum(p.numel() for p in trainer.model.parameters()),
        "final_miou": hist[-1]["miou"], "final_pixel_acc": hist[-1]["pixel_acc"],
        "best_miou": best["miou"], "best_pixel_acc": best["pixel_acc"], "best_epoch": best["epoch"],
        "construct_s": construct, "cache_s": box["cache"], "fit_s": fit, "eval_s": box["eval"],
        "train_s": box["cache"] + fit - box["eval"], "total_s": construct + fit,
        "unfrozen": list(trainer.unfrozen), "history": [dict(r) for r in hist],
        "best_pt": str(RunFolder(result.run_dir).best),
        "transfer": None if trainer.report is None else trainer.report.to_dict(),
    }
    print(f"   -> final mIoU {out_row['final_miou']:.4f}, best {out_row['best_miou']:.4f} (epoch {best['epoch']}); "
          f"total {out_row['total_s']:.1f}s (eval {box['eval']:.1f}s)", flush=True)
    del trainer
    return out_row


def score_upstream(model: Any, cfg_dict: dict[str, Any], args: argparse.Namespace) -> dict[str, float]:
    """Val mIoU / pixel accuracy of ``model`` (eval mode) on the upstream val frames."""
    import torch

    from seg_transfer.config import Config, from_dict
    from seg_transfer.data.registry import build_dataset
    from seg_transfer.engine.evaluate import evaluate
    from seg_transfer.engine.tasks import build_task

    cfg = from_dict(Config, cfg_dict)
    splits = build_dataset(cfg.data)
    task = build_task("segmentation", cfg, splits)
    _, val_t = task.transforms(cfg.augment, model.info.preprocess)
    _, metrics, _ = evaluate(model, splits.val.with_transform(val_t), task, torch.device("cpu"), args.val_batch_size)
    return {"miou": float(metrics["miou"]), "pixel_acc": float(metrics["pixel_accuracy"])}


def recalibrate_bn(best_pt: str, cfg_dict: dict[str, Any], args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """A copy of the upstream checkpoint whose BatchNorm running statistics are re-estimated from its own
    train frames (val transform: no augmentation), as "precise BN" does; weights are unchanged.

    Why: training from random weights at lr 0.02 for a few dozen steps moves the weights faster than the
    running averages (momentum 0.1) follow, so eval-mode outputs no longer match train-mode ones."""
    import torch
    from torch import nn

    from seg_transfer.config import Config, from_dict
    from seg_transfer.data.registry import build_dataset
    from seg_transfer.engine.tasks import build_task
    from seg_transfer.models.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint

    start = time.perf_counter()
    model = load_checkpoint(best_pt)
    before = score_upstream(model, cfg_dict, args)
    cfg = from_dict(Config, cfg_dict)
    splits = build_dataset(cfg.data)
    _, val_t = build_task("segmentation", cfg, splits).transforms(cfg.augment, model.info.preprocess)
    train = splits.train.with_transform(val_t)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over every batch of the pass
    model.train()
    with torch.no_grad():
        for i in range(0, len(train), args.batch_size):
            model(torch.stack([train[j][0] for j in range(i, min(i + args.batch_size, len(train)))]))
    for m in bns:
        m.momentum = 0.1
    model.eval()
    after = score_upstream(model, cfg_dict, args)
    ckpt = read_checkpoint(best_pt)
    path = save_checkpoint(out / "upstream_bn_recalibrated.pt", model, config=ckpt.get("config"))
    seconds = time.perf_counter() - start
    print(f"   BN recalibrated on {len(train)} frames: upstream val mIoU {100 * before['miou']:.2f} -> "
          f"{100 * after['miou']:.2f}, pixel acc {100 * before['pixel_acc']:.2f} -> {100 * after['pixel_acc']:.2f} "
          f"({seconds:.0f}s) -> {path}", flush=True)
    return {"path": str(path), "before": before, "after": after, "seconds": seconds, "frames": len(train)}


# ------------------------------------------------------------------------------------- report

def params(r: dict[str, Any]) -> str:
    s, e = r["trainable_start"], r["trainable_end"]
    return f"{s:,}" if s == e else f"{s:,} -> {e:,}"


def table(rows: dict[str, dict[str, Any]]) -> str:
    full = rows.get("full")
    lines = ["| strategy | final mIoU | best mIoU (epoch) | final pixel acc | best pixel acc | trainable params "
             "| cache s | train s | eval s | total s | x full (total) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows.values():
        ratio = f"{r['total_s'] / full['total_s']:.2f}" if full else "-"
        lines.append(f"| {r['name']} | {100 * r['final_miou']:.2f} | {100 * r['best_miou']:.2f} ({r['best_epoch']}) | "
                     f"{100 * r['final_pixel_acc']:.2f} | {100 * r['best_pixel_acc']:.2f} | {params(r)} | "
                     f"{r['cache_s']:.1f} | {r['train_s']:.1f} | {r['eval_s']:.1f} | {r['total_s']:.1f} | {ratio} |")
    return "\n".join(lines)


def curves(rows: dict[str, dict[str, Any]]) -> str:
    epochs = max(r["epochs"] for r in rows.values())
    lines = ["| strategy | " + " | ".join(f"ep {e + 1}" for e in range(epochs)) + " |",
             "|---|" + "---:|" * epochs]
    for r in rows.values():
        lines.append(f"| {r['name']} | " + " | ".join(f"{100 * h['miou']:.2f}" for h in r["history"]) + " |")
    return "val mIoU per epoch (%):\n\n" + "\n".join(lines)


def upstream_line(up: dict[str, Any] | None, args: argparse.Namespace, n_train: int, n_val: int) -> str:
    if up is None:
        return f"upstream: reused {args.upstream} (not re-measured)"
    return (f"upstream: {MODEL} from stand-in DEFAULT weights (random values; 21 -> 11 classes), sequences "
            f"{' + '.join(UPSTREAM_SEQUENCES)}: {n_train} train / {n_val} val frames, {up['epochs']} epochs, "
            f"strategy full: val mIoU per epoch "
            + ", ".join(f"{100 * h['miou']:.2f}" for h in up["history"])
            + f" (best {100 * up['best_miou']:.2f} at epoch {up['best_epoch']}); {up['total_s']:.0f}s")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wall = time.perf_counter()
    out = out_and_torch_home(args.out, args.torch_home, "transfer_strategies_bench")

    import torch
    import torchvision

    from seg_transfer.testing import build_standin

    torch.set_num_threads(args.threads)

    up_train, up_val, n_up_train, n_up_val = upstream_split(args, out)
    upstream, up, recal = args.upstream, None, None
    up_cfg = base_config(args, camvid_data(args.data, up_train, up_val), args.upstream_epochs, out)
    up_cfg["model"]["weights"] = "DEFAULT"  # the stand-in: random values under the official file name
    up_cfg["output"]["name"] = "upstream"
    if upstream is None:
        print(f"stand-in weights (random values) for {MODEL}: {build_standin(MODEL)}", flush=True)
        up = run("upstream", up_cfg, out)
        upstream = up["best_pt"]
    if args.recalibrate_bn:
        recal = recalibrate_bn(upstream, up_cfg, args, out)
        upstream = recal["path"]

    down_train, down_val, n_train, n_val = downstream_split(args, out)
    base = base_config(args, camvid_data(args.data, down_train, down_val), args.epochs, out)
    rows = {}
    for name in args.strategies.split(","):
        rows[name] = run(name, strategy_config(name, base, upstream, args), out)

    wall = time.perf_counter() - wall
    header = (f"{MODEL}; upstream checkpoint trained by this toolkit from *stand-in* weights (random values, "
              f"no real pretrained checkpoint offline); downstream CamVid {DOWNSTREAM_SEQUENCE}: {n_train} train / "
              f"{n_val} val frames, {args.epochs} epochs each, resize {args.resize}, crop {args.crop}, batch "
              f"{args.batch_size}, lr {args.lr}, poly, median-frequency class weights, gradual schedule "
              f"{gradual_schedule(args.epochs)}{', SMOKE' if args.smoke else ''}; torch {torch.__version__}, "
              f"torchvision {torchvision.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs "
              f"({platform.processor() or platform.machine()}), shared with other jobs; "
              f"{datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}")
    up_text = upstream_line(up, args, n_up_train, n_up_val)
    if recal:
        up_text += (f"; BatchNorm running statistics re-estimated on its {recal['frames']} train frames "
                    f"(--recalibrate-bn, {recal['seconds']:.0f}s): upstream val mIoU {100 * recal['before']['miou']:.2f} "
                    f"-> {100 * recal['after']['miou']:.2f}, pixel acc {100 * recal['before']['pixel_acc']:.2f} -> "
                    f"{100 * recal['after']['pixel_acc']:.2f}; downstream runs start from that copy")
    text = "\n\n".join([header, up_text, table(rows), curves(rows),
                        f"benchmark wall time {wall:.0f}s"])
    print("\n" + text)
    (out / "table.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({"args": vars(args), "wall_s": wall, "upstream": up,
                                                  "recalibrated": recal, "strategies": rows}, indent=1, default=str) + "\n")
    print(f"\nwritten: {out / 'table.md'}, {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
