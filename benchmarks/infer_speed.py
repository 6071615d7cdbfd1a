"""Inference speed: torchvision's plain recipe vs ``Predictor`` on each backend (eager, the fast path,
onnxruntime, OpenVINO), one image end to end (batch 1) and the model call on a batch of 8, with the
achieved GFLOP/s against this CPU's measured fp32 GEMM peak, peak RSS and each backend's agreement with
eager PyTorch.

Sides, per model, interleaved in every round (medians over rounds; shuffled order per round):
  plain     torchvision's recipe: ``weights.transforms()(read_image(f))`` -> model -> softmax, then the
            same outputs as Predictor: segmentation probabilities resized to the image and their argmax;
            classification top-5; detection boxes over the score threshold
  eager     ``Predictor(model).predict(f)``            fast  ``Predictor(model, fast=True)``
  ort       ``Predictor(model, backend="onnxruntime")`` ov    ``Predictor(model, backend="openvino")``
Weights are stand-ins (random values under the official file names, in a temporary TORCH_HOME) unless
--torch-home points at real ones: speed does not depend on the values, agreement is measured on stand-ins.

    .venv/bin/python benchmarks/infer_speed.py                    # ~20 min on 2 quiet cores
    .venv/bin/python benchmarks/infer_speed.py --models lraspp_mobilenet_v3_large --rounds 5   # smoke run
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PHOTO = REPO.parent / "shared" / "images" / "dog1.jpg"
MODELS = ["fcn_resnet50", "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large", "mobilenet_v2+fpn+fpn",
          "resnet18", "ssdlite320_mobilenet_v3_large"]
SIDES = ["plain", "eager", "fast", "ort", "ov"]


def peak_rss_reset() -> None:
    """Reset the kernel's peak-RSS mark of this process (Linux: 5 > clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def gemm_peak(torch: Any) -> float:
    """fp32 GFLOP/s of a 2048^3 matmul on all threads (median of 7)."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    times = []
    for _ in range(7):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * 2048 ** 3 / statistics.median(times) / 1e9


def model_gflop(torch: Any, model: Any, x: Any, detection: bool) -> float:
    """FLOPs of the useful work: the model without torchvision's aux segmentation head, which eager still
    computes in eval mode but the fast path and the ONNX export drop (so eager's own rate is understated)."""
    from torch.utils.flop_counter import FlopCounterMode

    from seg_transfer.predict.fast import drop_aux_heads

    lean = copy.deepcopy(model).eval()
    drop_aux_heads(lean)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        lean([x[0]] if detection else x)
    return counter.get_total_flops() / 1e9


def build(name: str) -> Any:
    from seg_transfer import create_model

    if name == "mobilenet_v2+fpn+fpn":
        return create_model(backbone="mobilenet_v2", neck="fpn", head="fpn", num_classes=21)
    return create_model(name)


def plain_recipe(torch: Any, name: str, model: Any, task: str) -> Callable[[Path], Any]:
    """The recipe of torchvision's docs, plus what it takes to get Predictor's outputs."""
    import torch.nn.functional as F
    import torchvision
    from torchvision.io import read_image

    from seg_transfer.models.build import model_info

    if name in torchvision.models.list_models():
        transforms = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    else:  # an assembled model has no torchvision recipe: its own preprocessing, called plainly
        transforms = model_info(model).preprocess

    @torch.inference_mode()
    def run(path: Path) -> Any:
        img = read_image(str(path))
        batch = transforms(img).unsqueeze(0)
        if task == "detection":
            out = model(list(batch))[0]
            return out["boxes"][out["scores"] >= 0.5]
        out = model(batch)
        if task == "classification":
            return out.softmax(1).topk(5)
        probs = out["out"].softmax(dim=1)
        probs = F.interpolate(probs, size=img.shape[-2:], mode="bilinear", align_corners=False)
        return probs.argmax(1)
    return run


def agreement(task: str, ref: Any, got: Any) -> str:
    if task == "segmentation":
        return f"{(ref.mask == got.mask).float().mean().item():.4%} / {(ref.probs - got.probs).abs().max().item():.0e}"
    if task == "classification":
        return f"top1 {'=' if ref.label == got.label else '!='} / {(ref.probs - got.probs).abs().max().item():.0e}"
    from torchvision.ops import box_iou
    if not len(ref) or not len(got):
        return f"{len(got)} vs {len(ref)} boxes"
    best = box_iou(ref.boxes, got.boxes).max(1).values
    return f"{int((best > 0.99).sum())}/{len(ref)} boxes"


def bench_model(torch: Any, name: str, rounds: int, batch_rounds: int, peak: float) -> list[dict[str, Any]]:
    from seg_transfer.models.build import model_info
    from seg_transfer.predict import Predictor

    model = build(name).eval()
    task = model_info(model).task
    predictors: dict[str, Any] = {"eager": Predictor(model), "fast": Predictor(model, fast=True)}
    for side, backend in (("ort", "onnxruntime"), ("ov", "openvino")):
        try:
            predictors[side] = Predictor(model, backend=backend)
        except Exception as err:  # noqa: BLE001 - a backend that cannot take the model is a row, not a crash
            print(f"  {name}: {side} unavailable: {type(err).__name__}: {str(err).splitlines()[0][:120]}", file=sys.stderr)
    options = {"score_threshold": 0.5} if task == "detection" else {}
    plain = plain_recipe(torch, name, model, task)
    calls: dict[str, Callable[[], Any]] = {"plain": lambda: plain(PHOTO)}
    for side, p in predictors.items():
        calls[side] = lambda p=p: p.predict(PHOTO, **options)
    times: dict[str, list[float]] = {s: [] for s in calls}
    rss: dict[str, float] = {}
    for side, call in calls.items():  # warm-up, and each side's peak RSS over two calls
        call()
        peak_rss_reset()
        call()
        rss[side] = peak_rss_mb()
    for _ in range(rounds):
        order = list(calls)
        random.shuffle(order)
        for side in order:
            t = time.perf_counter()
            calls[side]()
            times[side].append(time.perf_counter() - t)
    ref = predictors["eager"].predict(PHOTO, **{**options, **({"score_threshold": 0.0} if task == "detection" else {})})
    agree = {s: agreement(task, ref, p.predict(PHOTO, **({"score_threshold": 0.0} if task == "detection" else {})))
             for s, p in predictors.items()}
    # batch 8: the model call alone on one preprocessed batch (detection: a list of 8 images)
    x = predictors["eager"].preprocess(__import__("seg_transfer.io", fromlist=["read_image"]).read_image(PHOTO))[None]
    batch = x.expand(8, *x.shape[1:]).contiguous()
    gflop = model_gflop(torch, model, x, task == "detection")
    runners: dict[str, Callable[[], Any]] = {}
    with torch.inference_mode():
        plain_batch = list(batch) if task == "detection" else batch
        runners["plain"] = lambda: model(plain_batch)
    for side, p in predictors.items():
        runners[side] = lambda r=p.runner: r(list(batch) if task == "detection" else batch)
    btimes: dict[str, list[float]] = {s: [] for s in runners}
    for side, run in runners.items():
        with torch.inference_mode():
            run()
    for _ in range(batch_rounds):
        order = list(runners)
        random.shuffle(order)
        for side in order:
            with torch.inference_mode():
                t = time.perf_counter()
                runners[side]()
                btimes[side].append(time.perf_counter() - t)
    rows = []
    base = statistics.median(times["plain"])
    for side in SIDES:
        if side not in times:
            continue
        ts = sorted(times[side])
        p50, p90 = statistics.median(ts), ts[min(len(ts) - 1, int(0.9 * len(ts)))]
        b8 = statistics.median(btimes[side])
        rows.append({"model": name, "side": side, "p50": p50 * 1000, "p90": p90 * 1000, "ips1": 1 / p50,
                     "ratio": base / p50, "ips8": 8 / b8, "gflops": gflop * 8 / b8, "peak": gflop * 8 / b8 / peak,
                     "rss": rss[side], "agree": agree.get(side, "reference" if side == "eager" else "-")})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--rounds", type=int, default=15, help="batch-1 rounds (default 15)")
    parser.add_argument("--batch-rounds", type=int, default=4, help="batch-8 rounds (default 4)")
    parser.add_argument("--torch-home", help="use the weights cached here instead of stand-ins")
    args = parser.parse_args()
    home = args.torch_home or tempfile.mkdtemp(prefix="standin_")
    os.environ["TORCH_HOME"] = home
    warnings.simplefilter("ignore")
    import torch

    from seg_transfer.testing import build_standin

    if not args.torch_home:
        for name in args.models:
            build_standin(name.split("+")[0])  # an assembled model: its backbone's ImageNet weights
    peak = gemm_peak(torch)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; fp32 GEMM peak {peak:.0f} GFLOP/s; photo {PHOTO.name}; "
          f"{'real weights' if args.torch_home else 'stand-in weights'}")
    print(f"{'model':<30} {'side':<6} {'p50 ms':>8} {'p90 ms':>8} {'img/s b1':>9} {'vs plain':>9} {'img/s b8':>9} "
          f"{'GFLOP/s':>8} {'of peak':>8} {'peak RSS':>9}  agreement with eager (argmax / max prob diff)")
    for name in args.models:
        for r in bench_model(torch, name, args.rounds, args.batch_rounds, peak):
            print(f"{r['model']:<30} {r['side']:<6} {r['p50']:>8.1f} {r['p90']:>8.1f} {r['ips1']:>9.2f} {r['ratio']:>8.2f}x "
                  f"{r['ips8']:>9.2f} {r['gflops']:>8.1f} {r['peak']:>8.0%} {r['rss']:>7.0f}MB  {r['agree']}", flush=True)


if __name__ == "__main__":
    main()
