#!/usr/bin/env python
"""bf16 autocast against fp32 on this CPU: why ``train.amp: auto`` leaves the CPU in fp32
(``engine.optim.autocast_settings``). Two workloads, both sides interleaved round by round, medians:

- a 512 x 512 matmul (what native bf16 support, AVX512-BF16 or AMX, speeds up most);
- one training step (forward, loss, backward) of LR-ASPP over MobileNetV3-Large at batch 8, crop 160 (random
  values: speed only), the model the CamVid recipes train.

    python benchmarks/amp_cpu.py                      # ~1 minute on 2 cores
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F
import torchvision


def cpu_flags() -> str:
    """The bf16-related flags /proc/cpuinfo lists (empty where none)."""
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    return " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags) or "none of them"


def timed(fn: Callable[[], None], bf16: bool, repeat: int) -> float:
    """Seconds per call of ``fn`` under autocast (``bf16``) or in fp32, mean of ``repeat`` calls."""
    start = time.perf_counter()
    for _ in range(repeat):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            fn()
    return (time.perf_counter() - start) / repeat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    torch.manual_seed(0)
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    model = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                      num_classes=11)
    x, y = torch.randn(8, 3, 160, 160), torch.randint(0, 11, (8, 160, 160))

    def step() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x)["out"].float(), y).backward()

    work = {"matmul 512x512 (ms)": (lambda: a @ b, 20, 1e3), "LR-ASPP train step, batch 8 @160 (s)": (step, 1, 1.0)}
    for fn, repeat, _ in work.values():  # warm-up: oneDNN picks its kernels on the first calls
        timed(fn, False, repeat), timed(fn, True, repeat)
    times: dict[tuple[str, bool], list[float]] = {}
    for _ in range(args.rounds):
        for name, (fn, repeat, scale) in work.items():
            for bf16 in (False, True):
                times.setdefault((name, bf16), []).append(timed(fn, bf16, repeat) * scale)
    print(f"{platform.processor() or platform.machine()}, flags: {cpu_flags()}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {args.rounds} interleaved rounds, medians\n")
    print("| workload | fp32 | bf16 autocast | bf16 / fp32 time |\n|---|---:|---:|---:|")
    for name in work:
        fp32, bf16 = statistics.median(times[(name, False)]), statistics.median(times[(name, True)])
        print(f"| {name} | {fp32:.3f} | {bf16:.3f} | {bf16 / fp32:.2f} |")


if __name__ == "__main__":
    main()
