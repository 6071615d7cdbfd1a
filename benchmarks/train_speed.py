#!/usr/bin/env python
"""Training speed: the engine's train step against a minimal torchvision-references-style loop, both
sides in one run, interleaved round by round, with the same model, batch, crop, optimizer and threads.

Modes (the engine's ``freeze.strategy``; the reference freezes exactly the parameters the engine froze,
the plain way: ``requires_grad_(False)``, those BatchNorm layers put back in eval after ``model.train()``):
  full                every parameter trains
  partial             stem and layer1 frozen (``unfreeze_from: layer2``)
  feature_extraction  the whole backbone frozen, cache off: every step still runs the backbone forward
  cached              the same with ``cache.enabled: true``: steps train the head on stored backbone
                      features. Its reference is the plain version of the same idea: the backbone run
                      once (no_grad, eval) over one augmented crop per frame, features kept in a list,
                      a shuffled DataLoader over it, the model's own head + upsampling on each batch.
Variants:
  channels_last       the engine's ``train.channels_last: true`` (off in every other variant: its CPU
                      default is on); the reference: ``model.to(memory_format=torch.channels_last)`` and
                      each batch's inputs converted
  compile             ``torch.compile`` of what the step calls (the engine: ``train.compile: true``; the
                      reference's model or head); compiling happens in the warm-up epochs, reported
                      apart (first epoch less a steady one) with inductor's on-disk caches off. The
                      engine warms up first; dynamo keeps compiled code per function in the process,
                      so the reference reuses it where its guards pass (its compile time is then ~0)
Every mode runs eager (``--variants`` first entry); the other variants run for ``--variant-modes``.

Timing: per case (mode x variant) both sides first run ``--warmup`` untimed epochs, then ``--rounds``
rounds; each round runs, in a shuffled order, one epoch of ``--iters`` iterations on each side (the
engine's ``Trainer.train_epoch``; the reference's loop) and one pass of each side's DataLoader alone
(the same frames and transforms, no model). images/s = iters x batch / epoch seconds; medians over
rounds; the ratio is engine / reference images/s per round, its median and range. Loading runs inline
(``--workers 0`` by default, on both sides), so "loader share" (training images/s over loader images/s)
is the fraction of each step spent loading. Memory (both sides live in one process; freed heap is
handed back with glibc's ``malloc_trim`` before each mark): "state" is the RSS a side's construction
adds (model, data, optimizer, the feature cache), "step" the peak over a timed epoch above the RSS at
its start (VmHWM, reset with ``5 > /proc/self/clear_refs``), the largest over rounds; the process peak
includes both sides. Frames: ``iters x batch`` CamVid train frames (sequences 0001TP, 0006R0, evenly spaced) from
../shared/data/CamVid. Weights are stand-ins (random values under the official file names, in a
temporary TORCH_HOME): speed does not depend on the values.

    .venv/bin/python benchmarks/train_speed.py            # full run: ~15 min on 2 quiet CPU cores
    .venv/bin/python benchmarks/train_speed.py --iters 2 --rounds 2 --batch-size 2 --crop 128 \\
        --variants eager,channels_last,compile       # smoke run (~5 min, most of it compiling)

Run it on a quiet machine: with every core's thread busy, one other process on a core stalls each
parallel region (measured here on a shared 2-core box: the same step from 45 ms to over 1 s, run to
run); ``--threads 1`` is steadier there, but is not the default setting.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import importlib
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.segmentation import LRASPP

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from common import CAMVID_CLASSES  # noqa: E402
from reference.common import Items  # noqa: E402
from reference.segmentation import TrainTransform, albumentations_steps, build_model, poly_sgd, train_one_epoch  # noqa: E402

from seg_transfer.config import Config, from_dict  # noqa: E402
from seg_transfer.data.registry import build_dataset  # noqa: E402
from seg_transfer.engine.trainer import Trainer  # noqa: E402
from seg_transfer.io import save_text  # noqa: E402
from seg_transfer.testing import build_standin  # noqa: E402
from seg_transfer.transfer.freeze import bn_held_in_eval  # noqa: E402

MODES = ["full", "partial", "feature_extraction", "cached"]
VARIANTS = ["eager", "channels_last", "compile", "channels_last+compile"]
IGNORE = 255


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="lraspp_mobilenet_v3_large",
                   help="a torchvision segmentation builder (lraspp_*, fcn_*, deeplabv3_*)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--crop", type=int, default=256, help="square train crop (augment.crop_size)")
    p.add_argument("--iters", type=int, default=8, help="iterations per timed epoch (frames = iters x batch)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per case (one epoch per side each)")
    p.add_argument("--warmup", type=int, default=1, help="untimed epochs per side first (compile happens here)")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--variants", default=",".join(VARIANTS), help="the first runs for every mode")
    p.add_argument("--variant-modes", default="full", help="modes that also run the other variants")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers, both sides")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "CamVid"))
    p.add_argument("--torch-home", default=None, help="TORCH_HOME for the stand-ins (default: temporary)")
    p.add_argument("--out", default=None, help="folder for table.md and results.json (default: temporary)")
    p.add_argument("--profile", action="store_true", help="after each case's rounds, one epoch per side under "
                   "torch.profiler: the ops whose self CPU time differs most between the sides")
    args = p.parse_args(argv)
    for key, allowed in (("modes", MODES), ("variants", VARIANTS), ("variant_modes", MODES)):
        bad = [v for v in getattr(args, key).split(",") if v not in allowed]
        if bad:
            p.error(f"--{key.replace('_', '-')}: unknown {', '.join(bad)}; choose from {', '.join(allowed)}")
    return args


# ------------------------------------------------------------------------------------- measuring

def settle() -> None:
    """Collect garbage and hand freed heap pages back to the kernel (glibc ``malloc_trim``), so that the
    RSS growth that follows is what the next piece of work needs, not what an earlier one left resident."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the growth figures are then lower bounds
        pass


def rss_mib() -> float:
    return _status_mib("VmRSS")


def reset_peak_rss() -> tuple[bool, float]:
    """Reset the kernel's peak-RSS mark of this process; (whether it could, the RSS now in MiB)."""
    settle()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        ok = True
    except OSError:
        ok = False
    return ok, _status_mib("VmRSS")


def peak_rss_mib() -> float:
    return _status_mib("VmHWM")


def _status_mib(key: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return cpu


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


# ------------------------------------------------------------------------------------- the engine

def frames(root: Path, n: int) -> tuple[list[str], list[str]]:
    """``n`` train stems (0001TP, 0006R0), evenly spaced, and one val stem (0016E5)."""
    stems = sorted(p.stem for p in (root / "train").glob("*.png"))
    train = [s for s in stems if not s.startswith("0016E5")]
    val = [s for s in stems if s.startswith("0016E5")][:1]
    if n > len(train):
        sys.exit(f"train_speed.py: --iters x --batch-size = {n} frames, but {root / 'train'} has {len(train)} "
                 "train frames outside 0016E5")
    return train[:: len(train) // n][:n], val


def engine_config(args: argparse.Namespace, mode: str, lists: dict[str, str], out: Path, name: str,
                  channels_last: bool = False, compiled: bool = False) -> dict[str, Any]:
    crop = args.crop
    strategy = "feature_extraction" if mode == "cached" else mode
    return {
        "model": {"name": args.model, "weights": "DEFAULT", "resize": 360},
        "data": {"format": "folder", "root": args.data, "images": "train", "masks": "trainannot",
                 "classes": CAMVID_CLASSES, "label_map": {11: IGNORE}, "ignore_index": IGNORE, **lists},
        "augment": {"crop_size": crop, "train": albumentations_steps(crop), "val": []},
        "freeze": {"strategy": strategy, "unfreeze_from": "layer2" if mode == "partial" else None},
        "train": {"epochs": args.warmup + args.rounds, "batch_size": args.batch_size, "optimizer": "sgd",
                  "lr": args.lr, "momentum": 0.9, "weight_decay": 1e-4, "scheduler": "poly", "amp": "off",
                  "workers": args.workers, "device": "cpu", "seed": args.seed, "channels_last": channels_last,
                  "compile": compiled},
        "cache": {"enabled": mode == "cached", "copies": 1, "dtype": "float32"},
        "output": {"dir": str(out), "name": name, "num_predictions": 0},
    }


class EngineSide:
    """``seg_transfer``'s Trainer; an epoch is ``Trainer.train_epoch`` as ``fit()`` calls it."""

    def __init__(self, args: argparse.Namespace, mode: str, variant: str, lists: dict[str, str], out: Path) -> None:
        name = f"{mode}_{variant}"
        # the engine's own switches (train.channels_last, train.compile); eager turns its CPU default off
        cfg = from_dict(Config, engine_config(args, mode, lists, out, name, "channels_last" in variant,
                                              "compile" in variant))
        self.trainer = Trainer(cfg, run_dir=out / name, progress=False, log=lambda m: None)
        self.args, self.epoch_index, self.loader_index = args, 0, 1000
        self.cache_s = self.trainer.cache_seconds

    @property
    def model(self) -> nn.Module:
        return self.trainer.model

    def epoch(self) -> float:
        loss = self.trainer.train_epoch(self.epoch_index)
        self.epoch_index += 1
        return loss

    def load(self) -> int:
        """One epoch of the engine's training batches alone (``Trainer.batches``: what ``train_epoch`` steps on)."""
        n = sum(len(targets) for _, targets in self.trainer.batches(self.loader_index))
        self.loader_index += 1
        return n


# ------------------------------------------------------------------------------------- the reference

def reference_model(cfg: Config, num_classes: int, like: nn.Module) -> tuple[nn.Module, Any]:
    """The reference's model (``reference.segmentation.build_model``: torchvision's builder, classifiers
    re-created), checked against the engine's model and given its starting values (speed does not depend
    on them; the same start keeps the two runs comparable)."""
    model, weights = build_model(cfg, num_classes)
    if getattr(model, "aux_classifier", None) is not None and getattr(like, "aux_classifier", None) is None:
        model.aux_classifier = None  # the engine built it without the aux head: so does the reference
    theirs = {k: tuple(v.shape) for k, v in like.state_dict().items()}
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if theirs != ours:
        diff = sorted(set(theirs.items()) ^ set(ours.items()))[:3]
        sys.exit(f"train_speed.py: the reference's {cfg.model.name} differs from the engine's: {diff}")
    model.load_state_dict(like.state_dict())
    return model, weights


class PlainHead(nn.Module):
    """The reference's cached step: the model's own head and upsampling on stored backbone features
    (torchvision's LRASPP / _SimpleSegmentationModel forward, minus the backbone)."""

    def __init__(self, model: nn.Module, size: tuple[int, int]) -> None:
        super().__init__()
        self.model, self.size = model, size  # the crops' size: every stored item is one crop

    def forward(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        m: Any = self.model
        size = self.size

        def up(x: torch.Tensor) -> torch.Tensor:
            return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

        if isinstance(m, LRASPP):
            return {"out": up(m.classifier(feats))}
        out = {"out": up(m.classifier(feats["out"]))}
        if m.aux_classifier is not None:
            out["aux"] = up(m.aux_classifier(feats["aux"]))
        return out


class FeatureList(torch.utils.data.Dataset):
    def __init__(self, items: list[tuple[dict[str, torch.Tensor], torch.Tensor]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return self.items[i]


@torch.no_grad()  # not inference_mode: the stored tensors feed autograd later
def store_features(model: nn.Module, dataset: Any, batch_size: int) -> FeatureList:
    backbone: Any = model.backbone
    backbone.eval()
    items = []
    for image, mask in torch.utils.data.DataLoader(dataset, batch_size=batch_size):
        feats = backbone(image)
        items += [({k: v[b].clone() for k, v in feats.items()}, mask[b]) for b in range(len(image))]
    return FeatureList(items)


class ReferenceSide:
    """The minimal loop of torchvision's references/segmentation/train.py (``reference.segmentation``)."""

    def __init__(self, args: argparse.Namespace, mode: str, variant: str, engine: EngineSide) -> None:
        cfg = engine.trainer.cfg  # its data (the same frames), model and crop
        model, weights = reference_model(cfg, len(CAMVID_CLASSES), engine.model)
        # Freeze what the engine froze, the plain way.
        frozen = {n for n, p in engine.model.named_parameters() if not p.requires_grad}
        for n, p in model.named_parameters():
            p.requires_grad_(n not in frozen)
        modules = dict(model.named_modules())
        self.held = [modules[n] for n, m in engine.model.named_modules() if bn_held_in_eval(m)]
        self.channels_last, self.cached = "channels_last" in variant, mode == "cached"
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        preset = weights.transforms()
        dataset: Any = Items(build_dataset(cfg.data).train, TrainTransform(None, args.crop, preset.mean, preset.std,
                                                                           IGNORE))
        self.cache_s = 0.0
        if self.cached:
            start = time.perf_counter()
            dataset = store_features(model, dataset, args.batch_size)
            self.cache_s = time.perf_counter() - start
        self.model = model
        step_module: nn.Module = PlainHead(model, (args.crop, args.crop)) if self.cached else model
        self.net: Callable[..., Any] = torch.compile(step_module) if "compile" in variant else step_module
        self.loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                                  num_workers=args.workers,
                                                  generator=torch.Generator().manual_seed(args.seed))
        self.opt, self.sched = poly_sgd([p for p in model.parameters() if p.requires_grad], cfg,
                                        (args.warmup + args.rounds) * len(self.loader))
        self.epochs = 0

    def epoch(self) -> float:
        record = train_one_epoch(self.net, self.model, self.loader, self.opt, self.sched, torch.device("cpu"), IGNORE,
                                 self.epochs, held=self.held, channels_last=self.channels_last)
        self.epochs += 1
        return statistics.fmean(record.losses)

    def load(self) -> int:
        return sum(len(target) for _, target in self.loader)


# ------------------------------------------------------------------------------------- one case

def run_case(args: argparse.Namespace, mode: str, variant: str, lists: dict[str, str],
             out: Path, rng: random.Random) -> dict[str, Any]:
    """Both sides of one (mode, variant): warm-up, then interleaved timed rounds."""
    print(f"\n== {mode} / {variant}", flush=True)
    settle()
    rss0, start = rss_mib(), time.perf_counter()
    engine = EngineSide(args, mode, variant, lists, out)
    engine_init = time.perf_counter() - start
    settle()
    rss1, start = rss_mib(), time.perf_counter()
    reference = ReferenceSide(args, mode, variant, engine)
    reference_init = time.perf_counter() - start
    settle()
    state = {"engine": rss1 - rss0, "reference": rss_mib() - rss1}
    sides: dict[str, Any] = {"engine": engine, "reference": reference}
    result: dict[str, Any] = {"mode": mode, "variant": variant, "error": None,
                              "cache_build_s": {"engine": engine.cache_s, "reference": reference.cache_s},
                              "setup_s": {"engine": engine_init, "reference": reference_init}, "state_mib": state}
    images = args.iters * args.batch_size
    warm: dict[str, list[float]] = {s: [] for s in sides}
    try:
        for _ in range(args.warmup):
            for name, side in sides.items():
                t = time.perf_counter()
                side.epoch()
                warm[name].append(time.perf_counter() - t)
    except Exception as err:  # noqa: BLE001 -- torch.compile failing here is a result to report, not a crash
        result["error"] = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        print(f"   failed in warm-up: {result['error']}", flush=True)
        if "compile" in variant:
            torch._dynamo.reset()
        return result
    result["warmup_s"] = warm
    runs: dict[str, dict[str, list[float]]] = {s: {"train_s": [], "load_s": [], "peak_mib": [], "step_mib": [],
                                                   "loss": []} for s in sides}
    loader_too = variant == args.variants.split(",")[0]  # the loader does not depend on the variant
    rss_reset = True
    for r in range(args.rounds):
        jobs = [(s, "train") for s in sides] + ([(s, "load") for s in sides] if loader_too else [])
        rng.shuffle(jobs)
        for name, kind in jobs:
            if kind == "load":
                gc.collect()
                t = time.perf_counter()
                n = sides[name].load()
                runs[name]["load_s"].append(time.perf_counter() - t)
                assert n == images, (name, n, images)
                continue
            ok, rss = reset_peak_rss()
            rss_reset = rss_reset and ok
            t = time.perf_counter()
            loss = sides[name].epoch()
            runs[name]["train_s"].append(time.perf_counter() - t)
            peak = peak_rss_mib()
            runs[name]["peak_mib"].append(peak)
            runs[name]["step_mib"].append(peak - rss)
            runs[name]["loss"].append(loss)
        e, f = runs["engine"]["train_s"][-1], runs["reference"]["train_s"][-1]
        print(f"   round {r + 1}/{args.rounds}: engine {images / e:.2f} img/s, reference {images / f:.2f} img/s",
              flush=True)
    result["rounds"] = runs
    result["rss_reset"] = rss_reset
    if args.profile:
        result["profile"] = profile_sides(sides)
    result["images_per_epoch"], result["iters"] = images, args.iters
    del sides, engine, reference
    if "compile" in variant:
        torch._dynamo.reset()
    gc.collect()
    return result


def profile_sides(sides: dict[str, Any], top: int = 12) -> dict[str, Any]:
    """One more epoch per side under torch.profiler: each op's self CPU ms per side, and the ops whose time
    differs most between the sides (where a gap between them lives)."""
    from torch.profiler import ProfilerActivity, profile

    ms: dict[str, dict[str, float]] = {}
    for name, side in sides.items():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            side.epoch()
        ms[name] = {e.key: e.self_cpu_time_total / 1000 for e in prof.key_averages()}
    ops = set(ms["engine"]) | set(ms["reference"])
    diff = sorted(ops, key=lambda k: -abs(ms["engine"].get(k, 0.0) - ms["reference"].get(k, 0.0)))[:top]
    totals = {k: sum(v.values()) for k, v in ms.items()}
    print(f"   profile (self CPU ms per epoch): engine {totals['engine']:.0f}, reference {totals['reference']:.0f}; "
          "largest differences:", flush=True)
    for k in diff:
        e, r = ms["engine"].get(k, 0.0), ms["reference"].get(k, 0.0)
        print(f"     {k:<48} engine {e:8.1f}  reference {r:8.1f}  diff {e - r:+8.1f}", flush=True)
    return {"total_ms": totals, "largest_differences": [[k, ms["engine"].get(k, 0.0), ms["reference"].get(k, 0.0)]
                                                        for k in diff]}


# ------------------------------------------------------------------------------------- report

def summarise(r: dict[str, Any]) -> dict[str, Any]:
    """Medians and ratios of one case's rounds."""
    if r["error"]:
        return {}
    n, iters, runs = r["images_per_epoch"], r["iters"], r["rounds"]
    s: dict[str, Any] = {}
    for side, v in runs.items():
        train = statistics.median(v["train_s"])
        load = n / statistics.median(v["load_s"]) if v["load_s"] else None
        s[side] = {"img_s": n / train, "ms_per_iter": 1000 * train / iters, "load_img_s": load,
                   "load_share": n / train / load if load else None,
                   "peak_mib": max(v["peak_mib"]), "step_mib": max(v["step_mib"]), "state_mib": r["state_mib"][side],
                   "warmup_s": r["warmup_s"][side][0] if r["warmup_s"][side] else float("nan")}
    ratios = [f / e for e, f in zip(runs["engine"]["train_s"], runs["reference"]["train_s"])]
    s["ratio"], s["ratio_min"], s["ratio_max"] = statistics.median(ratios), min(ratios), max(ratios)
    return s


def table(results: list[dict[str, Any]]) -> str:
    rows = ["| mode | variant | engine img/s | reference img/s | engine / reference (range) | target >= 1 | "
            "engine ms/iter | reference ms/iter | loader alone img/s, engine / reference (share of a step) | "
            "RSS MiB engine / reference: state + step (process peak) | first epoch s engine / reference | "
            "cache build s |",
            "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if r["error"]:
            rows.append(f"| {r['mode']} | {r['variant']} | failed: {r['error'][:120]} |||||||||")
            continue
        s = r["summary"]
        e, f = s["engine"], s["reference"]
        loader = "-"
        if e["load_img_s"]:
            loader = (f"{e['load_img_s']:.1f} ({100 * e['load_share']:.0f}%) / "
                      f"{f['load_img_s']:.1f} ({100 * f['load_share']:.0f}%)")
        cache = "-"
        if r["mode"] == "cached":
            cache = f"{r['cache_build_s']['engine']:.1f} / {r['cache_build_s']['reference']:.1f}"
        rows.append(f"| {r['mode']} | {r['variant']} | {e['img_s']:.2f} | {f['img_s']:.2f} | "
                    f"{s['ratio']:.2f} ({s['ratio_min']:.2f}-{s['ratio_max']:.2f}) | "
                    f"{'met' if s['ratio'] >= 1 else 'MISSED'} | {e['ms_per_iter']:.0f} | {f['ms_per_iter']:.0f} | "
                    f"{loader} | {e['state_mib']:.0f} + {e['step_mib']:.0f} / {f['state_mib']:.0f} + {f['step_mib']:.0f} "
                    f"({max(e['peak_mib'], f['peak_mib']):.0f}) | "
                    f"{e['warmup_s']:.1f} / {f['warmup_s']:.1f} | {cache} |")
    return "\n".join(rows)


def variant_lines(results: list[dict[str, Any]], base: str) -> list[str]:
    """Each variant's images/s over the same mode's ``base`` variant, per side (what the defaults follow);
    for compile, the compile time: the first epoch less a steady one."""
    eager = {r["mode"]: r["summary"] for r in results if r["variant"] == base and not r["error"]}
    lines = []
    for r in results:
        if r["variant"] == base or r["error"] or r["mode"] not in eager:
            continue
        s, b = r["summary"], eager[r["mode"]]
        text = (f"{r['mode']} {r['variant']} vs {base}: engine x{s['engine']['img_s'] / b['engine']['img_s']:.2f}, "
                f"reference x{s['reference']['img_s'] / b['reference']['img_s']:.2f}")
        if "compile" in r["variant"]:
            n = r["images_per_epoch"]
            comp = [max(0.0, s[side]["warmup_s"] - n / s[side]["img_s"]) for side in ("engine", "reference")]
            text += (f"; compile ~{comp[0]:.0f}s engine (warmed up first), ~{comp[1]:.0f}s reference (first epoch "
                     "less a steady one; dynamo keeps compiled code per function in the process, so the reference "
                     "reuses the engine's where its guards pass)")
        lines.append(text)
    return lines


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    wall = time.perf_counter()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="train_speed_"))
    out.mkdir(parents=True, exist_ok=True)
    os.environ["TORCH_HOME"] = args.torch_home or tempfile.mkdtemp(prefix="standin_torch_home_")
    torch.set_num_threads(args.threads)
    if "compile" in args.variants:
        torch.compiler.config.force_disable_caches = True  # compile measured cold (no on-disk inductor cache)
        # What torch.compile imports, loaded here rather than inside the first case's "state" figure.
        importlib.import_module("torch._dynamo")
        torch.compile(nn.Identity())
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    print(f"stand-in weights (random values) for {args.model}: {build_standin(args.model)}", flush=True)
    stems, val = frames(Path(args.data), args.iters * args.batch_size)
    lists = {}
    for side, names in (("train", stems), ("val", val)):
        path = out / f"{side}.txt"
        save_text("\n".join(names) + "\n", path)
        lists[f"{side}_list"] = str(path)
    load_before = load_average()
    variants = args.variants.split(",")
    rng = random.Random(args.seed)
    results = []
    for mode in args.modes.split(","):
        for variant in variants if mode in args.variant_modes.split(",") else variants[:1]:
            r = run_case(args, mode, variant, lists, out, rng)
            r["summary"] = summarise(r)
            results.append(r)
    wall = time.perf_counter() - wall
    rss_ok = all(r.get("rss_reset", True) for r in results)
    header = (f"{args.model} (stand-in weights), CamVid {len(stems)} train frames, batch {args.batch_size}, crop "
              f"{args.crop}, SGD (momentum 0.9, wd 1e-4, poly), fp32, {args.iters} iterations per epoch, "
              f"{args.warmup} warm-up + {args.rounds} timed epochs per side and case, workers {args.workers}; "
              f"{machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, torchvision "
              f"{torchvision.__version__}, {torch.get_num_threads()} threads; load average {load_before} at the start, "
              f"{load_average()} at the end; {datetime.date.today().isoformat()}; wall {wall / 60:.1f} min"
              + ("" if rss_ok else "; peak RSS could NOT be reset (clear_refs refused): peaks are since start"))
    lines = variant_lines(results, variants[0])
    timed = [r for r in results if not r["error"]]
    met = sum(r["summary"]["ratio"] >= 1 for r in timed)
    verdict = (f"target (engine at least as fast as the reference in every mode): "
               f"{'met' if timed and met == len(results) else 'MISSED'} (median ratio >= 1 in {met} of "
               f"{len(results)} cases{'' if len(timed) == len(results) else f'; {len(results) - len(timed)} failed'})")
    text = "\n\n".join([header, table(results), verdict] + (["\n".join(f"- {x}" for x in lines)] if lines else []))
    print("\n" + text)
    save_text(text + "\n", out / "table.md")
    save_text(json.dumps({"args": vars(args), "wall_s": wall, "results": results}, indent=1, default=str) + "\n",
              out / "results.json")
    print(f"\nwritten: {out / 'table.md'}, {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
