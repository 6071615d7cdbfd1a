#!/usr/bin/env python
"""The plain reference: minimal torchvision-style training loops for the three tasks, run on the same folds
as ``seg-transfer cv`` and summarised in the same fields (scored by the engine's own meters), so the engine
is always measured against the plain recipe on equal terms.

Segmentation (``references/segmentation/train.py``, written out): the config's torchvision zoo model
(``model.name``) from its weights with the classifier convs re-created for the dataset's classes; SGD
(``train.momentum``, ``train.weight_decay``) over every parameter at one ``train.lr``; poly LR (power 0.9)
per iteration; random resize of the shorter side to 0.5-2.0x the base size (``model.resize``, else the
weights' own, else the image's), horizontal flip, pad (image 0, mask ignore) and random crop
(``augment.crop_size``); plain cross-entropy with the ignore index (+ ``train.aux_weight`` x the aux head's,
when the model has one), no class weights; every BatchNorm trains. Val images are resized to the base size
and scored by the engine's own confusion matrix. From the config it takes the data, model, crop, batch,
LR, momentum, weight decay, epochs, seed, workers, device and AMP; it ignores freezing, class weights,
warmup, precise BN, the backbone LR multiplier, the optimizer and scheduler names and the augment lists.

Classification (PyTorch's transfer-learning tutorial, "finetuning the ConvNet"): the zoo model from its
weights with the last Linear re-created; RandomResizedCrop to the weights' crop size + horizontal flip;
val through ``weights.transforms()``; SGD over every parameter; StepLR(7 epochs, x0.1); plain
cross-entropy. Detection (torchvision's detection fine-tuning tutorial / ``references/detection``):
Faster R-CNN from its weights with a new ``FastRCNNPredictor``; horizontal flip; SGD over every trainable
parameter with the references' linear warmup (first epoch, up to 1000 iterations, from 0.001x) and LR
x0.1 at 16/26 and 22/26 of the epochs (their 26-epoch schedule, scaled); the summed loss dict. Both take
the config's data, model, batch, LR, momentum, weight decay, epochs, seed and device.

    seg-transfer cv configs/camvid_lraspp.yaml --folds 3 train.epochs=20 --out runs/cv_engine
    .venv/bin/python benchmarks/plain_loop.py configs/camvid_lraspp.yaml --folds 3 train.epochs=20 \\
        --out runs/cv_plain --against runs/cv_engine          # + the paired verdict: engine vs plain

Offline, the weights must be in $TORCH_HOME; stand-ins (random values under the official names, for
screening the machinery only): ``TORCH_HOME=/tmp/standin python tools/make_standins.py lraspp_mobilenet_v3_large``.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional, cast

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms.functional as TF
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from seg_transfer.config import Config, load_config  # noqa: E402
from seg_transfer.data.registry import build_dataset  # noqa: E402
from seg_transfer.engine.compare import compare_summaries  # noqa: E402
from seg_transfer.engine.cv import CrossValidation, Outcome, format_summary, jsonable, plan_folds, pool_of, run_schedule  # noqa: E402
from seg_transfer.engine.metrics import ConfusionMatrix  # noqa: E402
from seg_transfer.engine.optim import autocast_settings, grad_scaler  # noqa: E402
from seg_transfer.engine.trainer import limit_train  # noqa: E402
from seg_transfer.errors import ConfigError, SegTransferError  # noqa: E402
from seg_transfer.io import resolve_device, save_text  # noqa: E402
from seg_transfer.models.build import task_of  # noqa: E402
from seg_transfer.run_folder import CvFolder, RunFolder  # noqa: E402

POLY_POWER = 0.9


# ------------------------------------------------------------------------------------- transforms
def resize_pair(image: torch.Tensor, mask: torch.Tensor, short: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Shorter side to ``short``: the image bilinear (antialiased), the mask nearest."""
    h, w = image.shape[-2:]
    size = [short, max(1, round(w * short / h))] if h <= w else [max(1, round(h * short / w)), short]
    image = TF.resize(image, size, antialias=True)
    mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0].long()
    return image, mask


class TrainTransform:
    """The references' SegmentationPresetTrain: random resize 0.5-2.0x base, flip, pad, crop, normalise."""

    def __init__(self, base: Optional[int], crop: int, mean: list[float], std: list[float], ignore: int) -> None:
        self.base, self.crop, self.mean, self.std, self.ignore = base, crop, mean, std, ignore

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        img, tgt = torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(mask)
        base = self.base or min(img.shape[-2:])
        img, tgt = resize_pair(img, tgt, random.randint(int(0.5 * base), int(2.0 * base)))
        if random.random() < 0.5:
            img, tgt = img.flip(-1), tgt.flip(-1)
        ph, pw = max(self.crop - img.shape[-2], 0), max(self.crop - img.shape[-1], 0)
        img = F.pad(img, (0, pw, 0, ph), value=0)
        tgt = F.pad(tgt, (0, pw, 0, ph), value=self.ignore)
        top, left = random.randint(0, img.shape[-2] - self.crop), random.randint(0, img.shape[-1] - self.crop)
        img = img[:, top:top + self.crop, left:left + self.crop]
        tgt = tgt[top:top + self.crop, left:left + self.crop]
        return TF.normalize(img.float() / 255, self.mean, self.std), tgt


class ValTransform(TrainTransform):
    """The references' SegmentationPresetEval: shorter side to the base size, normalise."""

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        img, tgt = torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(mask)
        if self.base:
            img, tgt = resize_pair(img, tgt, self.base)
        return TF.normalize(img.float() / 255, self.mean, self.std), tgt


class Items(torch.utils.data.Dataset):
    """A split's raw items (the format's reader: label map applied, masks checked) through ``transform``."""

    def __init__(self, dataset: Any, transform: Any) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        return self.transform(*self.dataset.read(i))


# ------------------------------------------------------------------------------------------ model
def build_model(cfg: Config, num_classes: int) -> tuple[nn.Module, Any]:
    """torchvision's builder with the config's weights; classifier convs re-created for ``num_classes``."""
    name, spec = cfg.model.name, cfg.model.weights
    if not name or task_of(cfg.model) != "segmentation":
        raise ConfigError(f"plain_loop.py: model.name must be a torchvision segmentation model, got {name!r}")
    enum = torchvision.models.get_model_weights(name)
    if spec is None:
        model = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=num_classes)
        return model, enum.DEFAULT
    weights = enum.DEFAULT if spec == "DEFAULT" else enum[spec.split(".")[-1]]
    model = torchvision.models.get_model(name, weights=weights)
    trained = len(weights.meta["categories"])
    for head in ("classifier", "aux_classifier"):
        module = getattr(model, head, None)
        for parent in (module.modules() if module is not None else ()):
            for child_name, child in parent.named_children():
                if isinstance(child, nn.Conv2d) and child.out_channels == trained:
                    k, stride, pad = cast(Any, (child.kernel_size, child.stride, child.padding))  # tuples of 2
                    setattr(parent, child_name, nn.Conv2d(child.in_channels, num_classes, k, stride, pad,
                                                          bias=child.bias is not None))
    return model, weights


def waited(loader: Any, wait: list[float]) -> Iterator[Any]:
    """``loader``'s batches; ``wait[0]`` adds up the seconds spent waiting for them (the engine's data time)."""
    it = iter(loader)
    while True:
        start = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            return
        wait[0] += time.perf_counter() - start
        yield batch


def end_epoch(epochs: list[dict[str, Any]], total: int, losses: list[float], start: float, progress: bool,
              data_seconds: float = 0.0) -> None:
    """Record the epoch just trained (mean loss, seconds, seconds waiting for data) in ``epochs`` and, with
    ``progress``, print it."""
    epochs.append({"epoch": len(epochs) + 1, "train_loss": statistics.fmean(losses) if losses else float("nan"),
                   "seconds": time.perf_counter() - start, "data_seconds": data_seconds})
    if progress:
        print(f"   plain epoch {len(epochs)}/{total}: loss {epochs[-1]['train_loss']:.4f} "
              f"{epochs[-1]['seconds']:.1f}s", flush=True)


# ------------------------------------------------------------------------------------------ one run
def train_and_score(cfg: Config, run_dir: Path, progress: bool = False) -> Outcome:
    """One fold: train the plain way, score the val split; writes val_metrics_last.json and plain.json."""
    t = cfg.train
    random.seed(t.seed)
    np.random.seed(t.seed)
    torch.manual_seed(t.seed)
    device = resolve_device(None if t.device == "auto" else t.device)
    splits = limit_train(build_dataset(cfg.data), cfg.train.limit_train)  # as the engine keeps them
    ignore, classes = splits.ignore_index, list(splits.classes)
    model, weights = build_model(cfg, len(classes))
    preset = weights.transforms()
    preset_size = getattr(preset, "resize_size", None)
    preset_size = preset_size[0] if isinstance(preset_size, (list, tuple)) else preset_size
    base = cfg.model.resize if cfg.model.resize is not None else preset_size  # as the engine's Preprocess
    mean, std = list(preset.mean), list(preset.std)
    crop = cfg.augment.crop_size
    train = Items(splits.train, TrainTransform(base or None, crop, mean, std, ignore))
    loader = torch.utils.data.DataLoader(train, batch_size=t.batch_size, shuffle=True, num_workers=t.workers or 0,
                                         pin_memory=device.type == "cuda",  # as torchvision's references
                                         drop_last=len(train) > t.batch_size,
                                         generator=torch.Generator().manual_seed(t.seed))
    model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    total = max(1, t.epochs * len(loader))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: max(0.0, 1 - it / total) ** POLY_POWER)
    amp, dtype = autocast_settings(device, t.amp)
    scaler = grad_scaler(device, t.amp)
    epochs: list[dict[str, Any]] = []
    for epoch in range(t.epochs):
        model.train()
        start, losses, wait = time.perf_counter(), [], [0.0]
        for image, mask in waited(loader, wait):
            image, mask = image.to(device), mask.to(device)
            with torch.autocast(device.type, dtype=dtype, enabled=amp):
                out = model(image)
                loss = F.cross_entropy(out["out"].float(), mask, ignore_index=ignore)
                if "aux" in out:
                    loss = loss + t.aux_weight * F.cross_entropy(out["aux"].float(), mask, ignore_index=ignore)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            losses.append(loss.item())
        end_epoch(epochs, t.epochs, losses, start, progress, wait[0])
    matrix = ConfusionMatrix(len(classes), ignore)
    val = Items(splits.val, ValTransform(base or None, crop, mean, std, ignore))
    model.eval()
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=amp):
        for i in range(len(val)):
            image, mask = val[i]
            matrix.update(model(image[None].to(device))["out"].argmax(1), mask[None].to(device))
    metrics = matrix.compute()
    save_text(json.dumps({**metrics, "classes": classes}, indent=1) + "\n", RunFolder(run_dir).val_metrics_last)
    save_text(json.dumps({"epochs": epochs, "base_size": base, "crop": crop}, indent=1) + "\n", run_dir / "plain.json")
    return Outcome(metrics, "miou", "mIoU")


# --------------------------------------------------------------------------- classification, detection
def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _weights(cfg: Config) -> Any:
    enum = torchvision.models.get_model_weights(cfg.model.name)
    spec = cfg.model.weights
    return None if spec is None else enum.DEFAULT if spec == "DEFAULT" else enum[spec.split(".")[-1]]


class ClassTrain:
    """The tutorial's train transform: RandomResizedCrop(crop) + flip, normalised as the weights say."""

    def __init__(self, crop: int, mean: list[float], std: list[float]) -> None:
        self.crop, self.mean, self.std = crop, mean, std

    def __call__(self, image: np.ndarray, label: int) -> tuple[torch.Tensor, int]:
        img = torch.from_numpy(image).permute(2, 0, 1)
        img = torchvision.transforms.RandomResizedCrop(self.crop, antialias=True)(img)
        if random.random() < 0.5:
            img = img.flip(-1)
        return TF.normalize(img.float() / 255, self.mean, self.std), label


class ClassVal:
    """``weights.transforms()`` as it is (resize, centre crop, normalise)."""

    def __init__(self, preset: Any) -> None:
        self.preset = preset

    def __call__(self, image: np.ndarray, label: int) -> tuple[torch.Tensor, int]:
        return self.preset(torch.from_numpy(image).permute(2, 0, 1)), label


def train_and_score_classification(cfg: Config, run_dir: Path, progress: bool = False) -> Outcome:
    """One fold of the tutorial's recipe; the engine's ClassificationMeter scores it."""
    from seg_transfer.engine.metrics import ClassificationMeter

    t = cfg.train
    _seed_all(t.seed)
    device = resolve_device(None if t.device == "auto" else t.device)
    splits = limit_train(build_dataset(cfg.data), cfg.train.limit_train)  # as the engine keeps them
    classes = list(splits.classes)
    weights = _weights(cfg)
    model = torchvision.models.get_model(cfg.model.name, weights=weights)
    head_parent, head_name, head = next((parent, name, child) for parent in reversed(list(model.modules()))
                                        for name, child in parent.named_children() if isinstance(child, nn.Linear))
    setattr(head_parent, head_name, nn.Linear(head.in_features, len(classes)))
    preset = (weights or torchvision.models.get_model_weights(cfg.model.name).DEFAULT).transforms()
    crop = preset.crop_size[0] if isinstance(preset.crop_size, (list, tuple)) else preset.crop_size
    train = Items(splits.train, ClassTrain(crop, list(preset.mean), list(preset.std)))
    loader = torch.utils.data.DataLoader(train, batch_size=t.batch_size, shuffle=True, num_workers=t.workers or 0,
                                         pin_memory=device.type == "cuda",  # as torchvision's references
                                         generator=torch.Generator().manual_seed(t.seed))
    model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.1)
    epochs: list[dict[str, Any]] = []
    for epoch in range(t.epochs):
        model.train()
        start, losses, wait = time.perf_counter(), [], [0.0]
        for image, label in waited(loader, wait):
            loss = F.cross_entropy(model(image.to(device)), label.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        sched.step()
        end_epoch(epochs, t.epochs, losses, start, progress, wait[0])
    meter = ClassificationMeter(len(classes), min(5, len(classes)))
    val = torch.utils.data.DataLoader(Items(splits.val, ClassVal(preset)), batch_size=t.val_batch_size)
    model.eval()
    with torch.inference_mode():
        for image, label in val:
            meter.update(model(image.to(device)), label.to(device))
    return _finish(meter.compute(), classes, epochs, run_dir, "accuracy", "accuracy")


def train_and_score_detection(cfg: Config, run_dir: Path, progress: bool = False) -> Outcome:
    """One fold of the detection tutorial's recipe; the engine's CocoMeter scores it."""
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

    from seg_transfer.data.detection import detection_collate
    from seg_transfer.engine.metrics import CocoMeter

    t = cfg.train
    _seed_all(t.seed)
    device = resolve_device(None if t.device == "auto" else t.device)
    splits = limit_train(build_dataset(cfg.data), cfg.train.limit_train)  # as the engine keeps them
    classes = list(splits.classes)  # __background__ first, as torchvision's detectors
    model = torchvision.models.get_model(cfg.model.name, weights=_weights(cfg))
    if not hasattr(model, "roi_heads"):
        raise ConfigError(f"plain_loop.py: detection runs Faster R-CNN models, got {cfg.model.name!r}")
    box = model.roi_heads.box_predictor
    model.roi_heads.box_predictor = FastRCNNPredictor(box.cls_score.in_features, len(classes))

    def to_tensors(image: np.ndarray, target: dict[str, np.ndarray]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        img = torch.from_numpy(image).permute(2, 0, 1).float() / 255
        return img, {"boxes": torch.as_tensor(np.asarray(target["boxes"], np.float32)).reshape(-1, 4),
                     "labels": torch.as_tensor(np.asarray(target["labels"], np.int64))}

    def flip(image: np.ndarray, target: dict[str, np.ndarray]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        img, tgt = to_tensors(image, target)
        if random.random() < 0.5:
            img, width = img.flip(-1), img.shape[-1]
            tgt["boxes"] = torch.stack([width - tgt["boxes"][:, 2], tgt["boxes"][:, 1],
                                        width - tgt["boxes"][:, 0], tgt["boxes"][:, 3]], 1)
        return img, tgt

    loader = torch.utils.data.DataLoader(Items(splits.train, flip), batch_size=t.batch_size, shuffle=True,
                                         num_workers=t.workers or 0, collate_fn=detection_collate,
                                         generator=torch.Generator().manual_seed(t.seed))
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    milestones = sorted({round(t.epochs * 16 / 26), round(t.epochs * 22 / 26)} - {0})
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
    epochs: list[dict[str, Any]] = []
    for epoch in range(t.epochs):
        model.train()
        warm = min(1000, len(loader) - 1) if epoch == 0 else 0
        warmup = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.001, total_iters=warm) if warm else None
        start, losses, wait = time.perf_counter(), [], [0.0]
        for images, targets in waited(loader, wait):
            loss_dict = model([i.to(device) for i in images], [{k: v.to(device) for k, v in tg.items()} for tg in targets])
            loss = sum(loss_dict.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if warmup is not None:
                warmup.step()
            losses.append(loss.item())
        sched.step()
        end_epoch(epochs, t.epochs, losses, start, progress, wait[0])
    meter = CocoMeter(len(classes))
    val = torch.utils.data.DataLoader(Items(splits.val, to_tensors), batch_size=t.val_batch_size,
                                      collate_fn=detection_collate)
    model.eval()
    with torch.inference_mode():
        for images, targets in val:
            meter.update(model([i.to(device) for i in images]), targets)
    return _finish(meter.compute(), classes, epochs, run_dir, "ap", "AP")


def _finish(metrics: dict[str, Any], classes: list[str], epochs: list[dict[str, Any]], run_dir: Path,
            metric: str, label: str) -> Outcome:
    save_text(json.dumps({**jsonable(metrics), "classes": classes}, indent=1) + "\n",
              RunFolder(run_dir).val_metrics_last)
    save_text(json.dumps({"epochs": epochs}, indent=1) + "\n", run_dir / "plain.json")
    return Outcome(metrics, metric, label)


PLAIN_RUNNERS = {"segmentation": train_and_score, "classification": train_and_score_classification,
                 "detection": train_and_score_detection}


def plain_runner(cfg: Config, run_dir: Path, progress: bool = False) -> Outcome:
    """The plain loop of ``cfg``'s task."""
    return PLAIN_RUNNERS[task_of(cfg.model)](cfg, run_dir, progress)


# ------------------------------------------------------------------------------------------ main
def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--limit-train", type=int)
    p.add_argument("--out", type=Path, help="default: output.dir/plain_<config>")
    p.add_argument("--against", type=Path, metavar="CV_DIR", help="an engine `seg-transfer cv` folder run on "
                   "the same folds: print and write the paired verdict (A = plain, B = engine)")
    p.add_argument("-q", "--quiet", action="store_true")
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        plan = plan_folds(pool_of(cfg), args.folds, limit_train=args.limit_train)
        out = args.out or Path(cfg.output.dir) / f"plain_{Path(args.config).stem}"
        log = (lambda _m: None) if args.quiet else print
        log(f"plain loop: {plan.describe()}; {args.seeds} seed(s) each; runs in {out}/")
        cv = CrossValidation(cfg, plan, out, lambda c, d: plain_runner(c, d, not args.quiet), seeds=args.seeds,
                             name="plain", source=args.config, overrides=args.overrides)
        run_schedule([cv], log)
        summary = cv.write()
        print("\n" + format_summary(summary))
        if args.against:
            against = CvFolder(args.against)
            engine = against.summary()
            theirs = against.fold_plan()["folds"]
            if theirs != plan.to_dict()["folds"]:
                raise ConfigError(f"{args.against}: its folds differ from these (same config, --folds and "
                                  "--limit-train?)")
            result = compare_summaries(summary, engine, names=("plain", "engine"))
            save_text(json.dumps(jsonable(result), indent=1) + "\n", CvFolder(out).compare)
            print(f"\nplain vs engine ({args.against}): {result['verdict']}")
    except SegTransferError as err:
        print(f"plain_loop.py: error: {err}", file=sys.stderr)
        return 2
    return 0 if summary["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
