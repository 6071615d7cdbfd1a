#!/usr/bin/env python
"""CPU speed per backbone family under the FPN neck + semantic-FPN head at 512x512: inference milliseconds
(batch 1, eval, no_grad) and training images/s (one SGD step on a batch: forward, cross-entropy, backward).

Interleaved: each round measures every backbone once, in a shuffled order, so a slow spell of a shared
machine falls on all of them alike; after ``--warmup`` untimed passes per backbone, the table reports the
median over ``--rounds`` rounds and each backbone's ratio to ``--baseline`` (its median of per-round ratios,
measured in the same round). Weights are random (speed does not depend on the values; no download).

    python benchmarks/backbone_speed.py                       # one per family, 512x512, 5 rounds
    python benchmarks/backbone_speed.py --backbones resnet50,convnext_tiny --rounds 3 --size 256

Run it on a quiet machine; it prints a markdown table for RESULTS.md with the command that made it.
"""
from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from seg_transfer import create_model  # noqa: E402
from seg_transfer.models.backbones import BACKBONES  # noqa: E402

# The smallest member of each family, plus ResNet-50 (the baseline most recipes start from).
DEFAULT = ["resnet18", "resnet50", "resnext50_32x4d", "vgg16", "mobilenet_v2", "mobilenet_v3_large",
           "efficientnet_b0", "efficientnet_v2_s", "regnet_y_400mf", "convnext_tiny", "swin_t", "swin_v2_t", "vit_b_16"]


def build(name: str, classes: int):
    return create_model(backbone=name, backbone_weights=None, neck="fpn", head="fpn", num_classes=classes, resize=0)


def infer_ms(model, x: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        start = time.perf_counter()
        model(x)
        return (time.perf_counter() - start) * 1e3


def train_images_per_s(model, opt, x: torch.Tensor, y: torch.Tensor) -> float:
    model.train()
    start = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x)["out"], y).backward()
    opt.step()
    return len(x) / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", default=",".join(DEFAULT))
    p.add_argument("--baseline", default="resnet50")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=2, help="training batch (inference: 1)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    names = args.backbones.split(",")
    unknown = [n for n in names if n not in BACKBONES]
    if unknown or args.baseline not in names:
        p.error(f"unknown backbones {unknown} or --baseline not among --backbones")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    classes = 11
    x1 = torch.rand(1, 3, args.size, args.size)
    xb = torch.rand(args.batch_size, 3, args.size, args.size)
    yb = torch.randint(0, classes, (args.batch_size, args.size, args.size))
    models = {n: build(n, classes) for n in names}
    opts = {n: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for n, m in models.items()}
    for n, m in models.items():
        for _ in range(args.warmup):
            infer_ms(m, x1)
            train_images_per_s(m, opts[n], xb, yb)
    ms: dict[str, list[float]] = {n: [] for n in names}
    ips: dict[str, list[float]] = {n: [] for n in names}
    order = list(names)
    rng = random.Random(0)
    for r in range(args.rounds):
        rng.shuffle(order)
        for n in order:
            ms[n].append(infer_ms(models[n], x1))
            ips[n].append(train_images_per_s(models[n], opts[n], xb, yb))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    base = args.baseline
    print(f"`python benchmarks/backbone_speed.py {' '.join(sys.argv[1:])}`: {platform.processor() or platform.machine()}, "
          f"{args.threads} threads, torch {torch.__version__}; {args.size}x{args.size}, FPN neck + semantic-FPN head, "
          f"train batch {args.batch_size}; medians of {args.rounds} interleaved rounds\n")
    print(f"| backbone | family | params (M) | infer ms | x {base} | train img/s | x {base} |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for n in names:
        params = sum(p.numel() for p in models[n].parameters()) / 1e6
        ms_ratio = statistics.median(a / b for a, b in zip(ms[n], ms[base]))
        ips_ratio = statistics.median(a / b for a, b in zip(ips[n], ips[base]))
        print(f"| {n} | {BACKBONES[n].family} | {params:.1f} | {statistics.median(ms[n]):.0f} | {ms_ratio:.2f} | "
              f"{statistics.median(ips[n]):.2f} | {ips_ratio:.2f} |")


if __name__ == "__main__":
    main()
