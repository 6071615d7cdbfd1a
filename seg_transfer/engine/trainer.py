"""The fine-tuning loop: config -> data, model, transfer init, freezing -> epochs of train/eval ->
metrics.csv (and the other ``train.loggers``), curves.png, predictions.png, last.pt / best.pt, and at
each best epoch the task's report files (confusion.png...) and the best/worst val images; run.json
(command, timings, freezing) and report.html at the end. One engine for every task (what differs lives
in ``engine/tasks/``); rank-0-only I/O."""
from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import platform
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Generator, Iterable, Optional, Sequence, Union, cast

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..config import Config, dump_config, to_dict
from ..data.common import DataSplits, ImageDataset
from ..data.memory import DecodedDataset, auto_images, estimate_bytes, start_shapes
from ..data.registry import build_dataset
from ..data.segmentation import binary_splits
from ..data.split import limit_items
from ..data.strong_augment import StrongAugment
from ..data.unlabelled import unlabelled_images
from ..errors import ConfigError, SegTransferError
from ..io import resolve_device, save_text
from ..models import weights as W
from ..models.build import ModelInfo, is_binary, model_info
from ..models.checkpoint import read_checkpoint, save_checkpoint
from ..run_folder import BEST, RunFolder
from ..transfer.class_init import class_aware_init
from ..transfer.freeze import apply_freeze, bn_held_in_eval, freeze_counts, freeze_table, param_groups, unfreeze
from ..transfer.loading import TransferReport, load_matching
from ..transfer.sources import create_model, source_weights
from ..version import __version__
from . import distributed as D
from .cache import CachedFeatureDataset, FeatureCache, can_cache, collate_features, trainable_backbone
from .evaluate import evaluate, plain_metrics, to_device
from .loggers import Loggers, build_loggers
from .metrics.base import Meter
from .optim import add_param_group, autocast_settings, build_optimizer, build_scheduler, grad_scaler
from .plots import plot_curves
from .precise_bn import recompute_bn_stats, trainable_bn
from .report import write_report
from .selftrain import FIELDS as SELFTRAIN_FIELDS
from .selftrain import SelfTraining
from .split_forward import forward_module
from .tasks import Task, build_task
from .tasks.base import BatchRecipe

# train.lr_scaling: the factor applied to train.lr for a world of N processes (global batch N x batch_size)
LR_SCALING: dict[str, Callable[[int], float]] = {"none": lambda n: 1.0, "linear": float, "sqrt": math.sqrt}


def _sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """``train.sync_bn``: BatchNorm statistics over the global batch (CUDA only, nothing frozen)."""
    if device.type != "cuda":
        raise SegTransferError("train.sync_bn: SyncBatchNorm runs on CUDA devices only (nccl); set train.sync_bn: false")
    if any(bn_held_in_eval(m) for m in model.modules()):
        # convert_sync_batchnorm re-creates every BatchNorm layer: the frozen stages' layers would start
        # updating their pretrained statistics again.
        raise SegTransferError("train.sync_bn: frozen stages hold their BatchNorm layers in eval mode (freeze.bn: "
                               "true), which SyncBatchNorm would undo; use freeze.bn: false, freeze.strategy: full, "
                               "or train.sync_bn: false")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)  # children converted in place: model.info stays


def use_channels_last(setting: Optional[bool], task: str, device: torch.device) -> bool:
    """``train.channels_last``; None (auto): on for batched images (not detectors' lists) on the CPU, where
    it measured faster per step (benchmarks/RESULTS.md, "Training speed"); CUDA is left as it is (not
    measured here)."""
    if setting is None:
        return task != "detection" and device.type == "cpu"
    return setting


def run_splits(cfg: Config) -> DataSplits:
    """The data a run trains on: the config's dataset, read as a binary model reads it when the model is one
    (one sigmoid channel: masks as background/foreground, 0/255 included)."""
    splits = build_dataset(cfg.data)
    return binary_splits(splits) if is_binary(cfg.model) else splits


def limit_train(splits: DataSplits, n: Optional[int]) -> DataSplits:
    """``train.limit_train``: ``n`` train items drawn with a fixed seed (not train.seed: runs that differ in
    seed or recipe train on the same items, as cv's ``--limit-train`` keeps them paired); val untouched."""
    keep = limit_items(range(len(splits.train)), n)
    return splits if len(keep) == len(splits.train) else replace(splits, train=splits.train.take(keep))


def model_block(cfg: Config, classes: Sequence[str], **weights: Optional[str]) -> dict[str, Any]:
    """The ``model:`` block a run builds: the config's, with the data's class names (``weights``: overrides,
    e.g. ``weights=None, backbone_weights=None`` for the architecture alone)."""
    return {**to_dict(cfg.model), "classes": list(classes), "num_classes": None,
            "binary": True if is_binary(cfg.model) else cfg.model.binary, **weights}


def batches_per_epoch(train_items: int, batch_size: int, world: int = 1) -> int:
    """Batches each process trains on per epoch: the loader drops a last partial batch when there is more
    than one batch."""
    per_rank = math.ceil(train_items / world)
    return per_rank // batch_size if train_items > batch_size else math.ceil(per_rank / batch_size)


def steps_per_epoch(train_items: int, batch_size: int, accumulate: int = 1, world: int = 1) -> int:
    """Optimizer steps per epoch as train_epoch makes them, so that poly and cosine reach their end on the
    last step."""
    return max(1, math.ceil(batches_per_epoch(train_items, batch_size, world) / accumulate))


def loader_workers(setting: Optional[int], device: torch.device) -> int:
    """``train.workers``; None (auto): 0 on the CPU, where worker processes would share the cores the step
    uses, and min(8, cores - 1) on CUDA, where decoding and augmenting one image at a time must keep up
    with the GPU."""
    if setting is not None:
        return setting
    return min(8, max(1, (os.cpu_count() or 2) - 1)) if device.type == "cuda" else 0


def recipe_batches(images: DecodedDataset, recipe: BatchRecipe, batch_size: int, seed: int, epoch: int,
                   device: torch.device, channels_last: bool) -> Generator[tuple[Any, Any], None, None]:
    """One epoch of ``recipe`` batches from decoded ``images`` on ``device``: this rank's shard, its order
    and the recipe's random parameters a function of (seed, epoch, rank), drawn on the CPU (any device alike)."""
    order = list(D.ShardSampler(len(images), shuffle=True, seed=seed, epoch=epoch, rank=D.rank(),
                                world=D.world_size()))
    generator = torch.Generator().manual_seed(D.item_seed(seed, epoch, D.rank(), copy=1))
    pin = device.type == "cuda" and images.pixels.device.type == "cpu"
    for b in range(batches_per_epoch(len(images), batch_size, D.world_size())):
        canvas = images.canvas(order[b * batch_size:(b + 1) * batch_size])
        canvas = (canvas.pin_memory() if pin else canvas).to(device, non_blocking=pin)
        inputs, targets = recipe.augment(canvas, generator)
        if channels_last and isinstance(inputs, torch.Tensor):
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        yield inputs, targets


class TrainingDiverged(SegTransferError):
    """The loss became NaN or infinite."""


@dataclass
class RunResult:
    run_dir: Path
    history: list[dict[str, float]] = field(default_factory=list)
    best: float = float("nan")
    best_epoch: int = -1
    stopped_early: bool = False
    metric: str = "miou"


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def resumed_run_info(folder: RunFolder, resume: bool, command: Optional[Sequence[str]], device: torch.device,
                     epoch: int) -> tuple[str, dict[str, Any], Optional[dict[str, Any]]]:
    """(now, how this process runs, and when ``resume``: the run's run.json with this resume listed in it):
    a resumed run keeps its original command and start."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    here = {"command": command, "cwd": os.getcwd(), "world_size": D.world_size(), "device": str(device)}
    info = folder.run() if resume else None
    if info is not None:
        info.setdefault("resumes", []).append({**here, "at": now, "epoch": epoch})
        info["finished"] = None
    return now, here, info


class Trainer:
    """Build everything a config describes, then ``fit()``. ``command``: the argv that started the run
    (``seg-transfer finetune ...``), recorded in run.json so the report can say how to reproduce it.
    ``show_transfer``: print the transfer report and freezing table at the start (cv: its first fold only;
    the run folder keeps them either way)."""

    def __init__(self, cfg: Config, run_dir: Optional[Path] = None, resume: bool = False,
                 progress: bool = True, log: Optional[Callable[[str], None]] = None,
                 command: Optional[Sequence[str]] = None, show_transfer: bool = True) -> None:
        setup_start = time.perf_counter()
        t = cfg.train
        self.command = list(command) if command is not None else None
        self.show_transfer = show_transfer
        self.cache_seconds = 0.0
        # Under torchrun: join the process group first, so rank-0-only logging and I/O know the rank.
        self.device = D.setup(resolve_device(None if t.device == "auto" else t.device, "train.device:"))
        self.cfg, self.resume, self.progress = cfg, resume, progress and D.is_main()
        # flush: a run logged to a file (nohup, CI) shows each epoch as it ends
        self.log = (log or (lambda msg: print(msg, flush=True))) if D.is_main() else (lambda _msg: None)
        seed_everything(t.seed, t.deterministic)
        self.workers = loader_workers(t.workers, self.device)
        self.run_dir = Path(run_dir) if run_dir else Path(cfg.output.dir) / (cfg.output.name or _default_name(cfg))

        splits = self.build_splits()
        info = self.build_model(splits)
        self.build_data(splits, info)
        self.build_optimizer()
        self.start_epoch, self.best, self.best_epoch = 0, -1.0, -1
        self.history: list[dict[str, float]] = []
        self.unfrozen: list[str] = []
        if resume:
            self._load_state(self.folder.last)
        self.net = self._wrap()
        self.setup_seconds = time.perf_counter() - setup_start

    # ------------------------------------------------------------------------------------- set-up

    def build_splits(self) -> DataSplits:
        """The config's train and val items (``train.limit_train`` applied); ``train_split``: the train
        split's size before the limit."""
        splits = run_splits(self.cfg)
        self.train_split = len(splits.train)
        splits = limit_train(splits, self.cfg.train.limit_train)
        self.classes, self.ignore_index = list(splits.classes), splits.ignore_index
        return splits

    def build_model(self, splits: DataSplits) -> ModelInfo:
        """The model with its starting weights, freezing, SyncBatchNorm under torchrun, on the device; the
        task it trains for, its loggers."""
        cfg, t = self.cfg, self.cfg.train
        self.model = create_model(model_block(cfg, self.classes))
        self.report = self._transfer_init()
        f = cfg.freeze
        self.freeze_state = apply_freeze(self.model, f.strategy, f.stages, f.unfreeze_from, f.bn)
        if t.sync_bn and D.is_dist():
            self.model = _sync_batchnorm(self.model, self.device)
        self.model.to(self.device)
        info = model_info(self.model)
        self.task: Task = build_task(info.task, cfg, splits)
        for warning in self.task.ignored_settings(cfg.augment):
            self.log(warning)
        self.channels_last = use_channels_last(t.channels_last, info.task, self.device)
        if self.channels_last:  # before the optimizer exists: it keeps the parameters it is given
            self.model.to(memory_format=torch.channels_last)
        # every rank builds them (a missing extra fails alike everywhere); rank 0 alone writes
        selftrain = SELFTRAIN_FIELDS if cfg.selftrain.unlabelled else ()
        loggers = build_loggers(t.loggers, (*self.task.fields, *selftrain))
        self.loggers = loggers if D.is_main() else Loggers()
        return info

    def build_data(self, splits: DataSplits, info: ModelInfo) -> None:
        """The train and val sets and how training batches are made: the feature cache (a frozen backbone),
        or decoded images (``cache.images``) augmented on the device (``augment.backend``) or in the loader."""
        train_t, val_t = self.task.transforms(self.cfg.augment, info.preprocess)
        # with the feature cache on, both become CachedFeatureDatasets (_build_caches)
        self.train_set: Union[D.EpochSeeded, CachedFeatureDataset]
        self.val_set: Union[ImageDataset, CachedFeatureDataset]
        self.val_set = self.val_images = splits.val.with_transform(val_t)
        self.collate = self.task.collate
        self.cached = self._use_cache()
        # None: albumentations in the loader; else the built-in recipe on whole batches on the device
        self.recipe = None if self.cached else self._batch_recipe(info.preprocess)
        self.images = self._image_cache(splits.train)
        self.train_set = D.EpochSeeded((self.images or splits.train).with_transform(train_t), self.cfg.train.seed)
        self._loader: Optional[torch.utils.data.DataLoader] = None  # the persistent one, built on first use
        if self.cached:
            self._build_caches()
        self.selftrain = self._self_training(splits.train, train_t, info.preprocess)

    def build_optimizer(self) -> None:
        """The optimizer over the trainable parameters (the backbone's at ``backbone_lr_mult``), its LR
        schedule in optimizer steps, mixed precision and its grad scaler."""
        t = self.cfg.train
        self.steps_per_epoch = steps_per_epoch(len(self.train_set), t.batch_size, t.accumulate, D.world_size())
        self.lr = t.lr * LR_SCALING[t.lr_scaling](D.world_size())
        self.optimizer = build_optimizer(param_groups(self.model, self.lr, t.backbone_lr_mult), t.optimizer,
                                         lr=self.lr, momentum=t.momentum, weight_decay=t.weight_decay)
        self.scheduler = build_scheduler(self.optimizer, t.scheduler, total_steps=t.epochs * self.steps_per_epoch,
                                         warmup_steps=round(t.warmup_epochs * self.steps_per_epoch),
                                         step_size=t.step_epochs * self.steps_per_epoch, gamma=t.gamma)
        self.amp_enabled, self.amp_dtype = autocast_settings(self.device, t.amp)
        self.scaler = grad_scaler(self.device, t.amp)

    def _self_training(self, labelled: ImageDataset, transform: Any, preprocess: Any) -> Optional[SelfTraining]:
        """``selftrain.unlabelled``: the unlabelled images as a stream of weak views made as the labelled
        batches are (the loader's albumentations, or the device recipe from decoded images)."""
        s, t = self.cfg.selftrain, self.cfg.train
        if s.unlabelled is None:
            return None
        if self.task.pseudo_unit is None:
            raise ConfigError(f"selftrain.unlabelled: self-training covers segmentation and classification, "
                              f"not {self.task.name}; remove selftrain.unlabelled")
        if D.is_dist():
            raise ConfigError("selftrain.unlabelled: self-training runs on one process (not under torchrun yet); "
                              "run it without torchrun")
        pool = unlabelled_images(s.unlabelled, labelled)
        images = None if self.recipe is None else DecodedDataset(
            pool, self.recipe.shorter, self.cfg.cache.max_gb, progress=self.progress, what="unlabelled",
            log=self.log, shared=False)
        data = D.EpochSeeded((images or pool).with_transform(transform), t.seed + 1)
        batch = t.batch_size * s.ratio

        def stream(epoch: int) -> Generator[tuple[Any, Any], None, None]:
            # endless: a pool smaller than the epoch's need is drawn again, each pass in a new order
            for n in itertools.count():
                at = epoch * 1000 + n
                if images is None or self.recipe is None:
                    yield from self._on_device(D.make_loader(data, batch, shuffle=True, seed=t.seed + 1, epoch=at,
                                                             workers=self.workers, collate_fn=self.collate,
                                                             drop_last=len(data) > batch))
                else:
                    yield from recipe_batches(images, self.recipe, batch, t.seed + 1, at, self.device,
                                              self.channels_last)

        self.log(f"self-training: {len(pool)} unlabelled images from {s.unlabelled}, {batch} per step; "
                 f"{self.task.pseudo_unit} whose confidence reaches {s.threshold:g} are pseudo-labelled from epoch "
                 f"{s.start_epoch + 1}, weight {s.weight:g}")
        return SelfTraining(self.task, s, StrongAugment(preprocess.mean, preprocess.std), stream,
                            self.ignore_index, t.seed)

    def _transfer_init(self) -> TransferReport | None:
        source = source_weights(self.cfg)
        if source is None:  # a backbone from another seg_transfer checkpoint was loaded at build time
            return getattr(self.model.info, "transfer", None)
        source_classes, state, description = source
        with torch.no_grad():
            report = load_matching(self.model, state)
            report.source = description
            if self.cfg.freeze.class_aware_init and source_classes and list(source_classes) != self.classes:
                try:
                    report.class_aware = class_aware_init(self.model, source_classes, self.classes, state,
                                                          binary=model_info(self.model).binary)
                except SegTransferError as err:  # the source has no classifier of the expected shape
                    report.class_aware = []
                    self.log(f"class-aware init skipped: {err}")
        return report

    def _batch_recipe(self, preprocess: Any) -> Optional[BatchRecipe]:
        """``augment.backend``: device (the built-in recipe on whole batches on the training device), cpu
        (albumentations per image in the loader), auto (device on CUDA where the recipe is a built-in one)."""
        backend = self.cfg.augment.backend
        if backend == "cpu" or (backend == "auto" and self.device.type != "cuda"):
            return None
        recipe = self.task.batch_recipe(self.cfg.augment, preprocess)
        if recipe is None and backend == "device":
            raise SegTransferError("augment.backend: device runs the built-in train recipes only, and this config "
                                   "names its own augment.train steps; set augment.backend: cpu (or auto)")
        return recipe

    def _image_cache(self, train: ImageDataset) -> Optional[DecodedDataset]:
        """``cache.images``: the train split decoded once (ram, or on the training device), at the size the
        recipe starts from; auto: ram when it fits (``auto_images``); the device recipe needs decoded images,
        so it turns the RAM cache on."""
        c = self.cfg.cache
        mode = c.images
        if self.cached:  # the feature cache runs the backbone once per item: nothing left to decode
            return None
        shorter = self.recipe.shorter if self.recipe is not None else None  # the CPU pipeline starts from the file
        if self.recipe is not None and mode in ("auto", "none"):
            mode = "ram"
        if mode == "none":
            return None
        shared = self.workers > 0
        shapes = start_shapes(train, shorter)  # the headers, read once for the estimate and the cache
        if mode == "auto":
            mode, why = auto_images(estimate_bytes(train, shorter, shapes), c.max_gb, shared)
            if mode == "none":
                self.log(f"image cache: off ({why}; cache.images: auto)")
                return None
        images = DecodedDataset(train, shorter, c.max_gb, progress=self.progress, log=self.log, shapes=shapes,
                                shared=shared and mode == "ram")
        return images.to(self.device) if mode == "device" else images

    def _use_cache(self) -> bool:
        """The feature cache is on when asked, or by default when the backbone is wholly frozen for good."""
        wanted = self.cfg.cache.enabled
        if wanted is False:
            return False
        if D.is_dist():
            # Every rank would run the backbone over the whole dataset: N copies of the work and the memory.
            if wanted:
                raise SegTransferError("cache.enabled: the feature cache runs on one process only (under torchrun "
                                       "each rank would cache the whole dataset); run the cached feature extraction "
                                       "without torchrun (it is fast), or set cache.enabled: false")
            self.log("feature cache: off under torchrun (each rank would cache the whole dataset)")
            return False
        if self.cfg.selftrain.unlabelled:
            if wanted:
                raise SegTransferError("cache.enabled: the feature cache trains on stored features, and "
                                       "self-training runs the backbone on new views of the unlabelled images; "
                                       "set cache.enabled: false")
            return False
        if self.cfg.freeze.schedule:
            if wanted:
                raise SegTransferError("cache.enabled: the feature cache needs a backbone that stays frozen, "
                                       "but freeze.schedule unfreezes stages during training")
            return False
        if not can_cache(self.model):
            if wanted:
                raise SegTransferError(f"cache.enabled: backbone parameters still train "
                                       f"({', '.join(trainable_backbone(self.model)[:3])}...); use "
                                       f"freeze.strategy: feature_extraction")
            return False
        return True

    def _build_caches(self) -> None:
        """Run the frozen backbone once per (train item, copy) and once per val item; epochs then train
        only the neck and head on the stored features."""
        c, t = self.cfg.cache, self.cfg.train
        common: dict[str, Any] = dict(dtype=c.dtype, max_bytes=int(c.max_gb * 2**30), seed=t.seed, workers=self.workers,
                                      progress=self.progress)
        start = time.perf_counter()
        assert isinstance(self.train_set, D.EpochSeeded)  # the image datasets: caches are built once
        train = FeatureCache.build(self.model, self.train_set.dataset, c.copies, **common)
        val = FeatureCache.build(self.model, self.val_set, 1, batch_size=1, **common)
        self.train_set, self.val_set = CachedFeatureDataset(train, seed=t.seed), CachedFeatureDataset(val)
        self.collate = collate_features
        self.cache_seconds = time.perf_counter() - start
        self.log(f"feature cache: {len(train)} x {c.copies} train + {len(val)} val items, "
                 f"{(train.nbytes + val.nbytes) / 2**20:.0f} MiB, built in {self.cache_seconds:.1f}s")

    def _forward_module(self) -> nn.Module:
        """What a training step calls: the model on images, or a ``Decoder`` (neck and head) on cached features."""
        return forward_module(self.model, self.cached)

    def _wrap(self) -> nn.Module:
        """The forward module, in DistributedDataParallel under torchrun. Frozen parameters stay out of its
        buckets (DDP skips parameters that need no gradient); every registered architecture puts each
        trainable parameter in the loss, so ``find_unused_parameters`` stays off. ``train.compile``: the
        result through ``torch.compile`` (the module's own weights: checkpoints keep their names)."""
        module = self._forward_module()
        if D.is_dist():
            ids = [self.device.index] if self.device.type == "cuda" else None
            module = DistributedDataParallel(module, device_ids=ids)
        return cast(nn.Module, torch.compile(module)) if self.cfg.train.compile else module

    def train_loss(self, inputs: Any, targets: Any) -> torch.Tensor:
        """One batch's loss: the task runs the model on images, or its neck and head on cached features; with
        ``selftrain``, plus the weighted loss of a batch of pseudo-labelled unlabelled images."""
        loss = self.task.train_loss(self.net, inputs, targets, self.cached)
        unlabelled = self.selftrain.loss(self.model) if self.selftrain is not None else None
        return loss if unlabelled is None else loss + unlabelled

    def _unfreeze_for(self, epoch: int) -> None:
        """Apply ``freeze.schedule`` entries due at ``epoch``: stages join the optimizer at the backbone LR."""
        for at, stage in sorted(self.cfg.freeze.schedule.items()):
            if at == epoch and stage not in self.unfrozen:
                new = unfreeze(self.model, stage, self.freeze_state)
                if new:
                    add_param_group(self.optimizer, self.scheduler, new, self.cfg.train.backbone_lr_mult, name=stage)
                    self.net = self._wrap()  # DDP registers its parameters once: wrap again to add the new ones
                self.unfrozen.append(stage)
                self.log(f"epoch {epoch + 1}: unfroze {stage} ({sum(p.numel() for p in new):,} parameters)")

    # ----------------------------------------------------------------------------------- training

    def train_loader(self, epoch: int) -> torch.utils.data.DataLoader:
        """The albumentations path's loader for ``epoch``: with workers, one persistent loader for the run
        (pinned memory on CUDA; the epoch travels with each index), else a new one per epoch."""
        t = self.cfg.train
        pin = self.device.type == "cuda"
        if self._loader is None or not self._loader.persistent_workers:
            self._loader = D.make_loader(self.train_set, t.batch_size, shuffle=True, seed=t.seed, epoch=epoch,
                                         workers=self.workers, collate_fn=self.collate, pin_memory=pin,
                                         drop_last=len(self.train_set) > t.batch_size, persistent=True)
        sampler = self._loader.sampler
        if isinstance(sampler, D.ShardSampler):
            sampler.set_epoch(epoch)
        return self._loader

    def batches_per_epoch(self) -> int:
        return batches_per_epoch(len(self.train_set), self.cfg.train.batch_size, D.world_size())

    def batches(self, epoch: int) -> Generator[tuple[Any, Any], None, None]:
        """The epoch's training batches, on the device and augmented: the seam between the data and the step
        (``train_epoch`` consumes it; benchmarks time it alone)."""
        if self.recipe is None:
            yield from self._on_device(self.train_loader(epoch))
            return
        assert self.images is not None  # the device recipe reads decoded images (_image_cache)
        yield from recipe_batches(self.images, self.recipe, self.cfg.train.batch_size, self.cfg.train.seed, epoch,
                                  self.device, self.channels_last)

    def _on_device(self, loader: Iterable[tuple[Any, Any]]) -> Generator[tuple[Any, Any], None, None]:
        for inputs, targets in loader:
            yield to_device(inputs, self.device, self.channels_last), self.task.to_device(targets, self.device)

    def train_epoch(self, epoch: int) -> float:
        """One epoch of optimizer steps; its mean loss. ``self.data_seconds``: the time it waited for batches."""
        t = self.cfg.train
        # dropout etc.: a function of (seed, epoch, rank), for exact resume
        torch.manual_seed(t.seed * 1000 + epoch + 7919 * D.rank())
        self.model.train()
        if self.selftrain is not None:
            self.selftrain.start(epoch)
        n = self.batches_per_epoch()
        total, count = 0.0, 0
        window, window_items = 0.0, 0  # the loss since the last optimizer step, for the loggers
        self.data_seconds = 0.0
        self.optimizer.zero_grad(set_to_none=True)
        bar = tqdm(total=n, desc=f"epoch {epoch + 1}/{t.epochs}", unit="batch", leave=False, disable=not self.progress)
        batches = self.batches(epoch)
        for step in range(n):
            wait = time.perf_counter()
            inputs, targets = next(batches)
            self.data_seconds += time.perf_counter() - wait
            update = (step + 1) % t.accumulate == 0 or step + 1 == n
            # Accumulating: gradients stay local until the step that updates (DDP's no_sync).
            sync = self.net.no_sync() if isinstance(self.net, DistributedDataParallel) and not update \
                else contextlib.nullcontext()
            with sync:
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_enabled):
                    loss = self.train_loss(inputs, targets)
                # the step's one host sync (on CUDA each .item() or tensor truth test waits for the GPU)
                value = loss.item()
                if not math.isfinite(value):
                    raise TrainingDiverged(
                        f"epoch {epoch + 1}, batch {step + 1}: loss is {value}; stopped ({BEST} is intact). "
                        f"Lower train.lr (now {self.lr:g}), set train.grad_clip, or train.amp=off")
                self.scaler.scale(loss / t.accumulate).backward()
            total += value * len(targets)
            count += len(targets)
            window += value * len(targets)
            window_items += len(targets)
            if update:
                lrs = {f"lr/{g.get('name', f'group{i}')}": g["lr"] for i, g in enumerate(self.optimizer.param_groups)}
                if t.grad_clip:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                # the step: optimizer steps over the whole run (the scheduler counts them, also across a resume);
                # the loss: rank 0's own batches (no per-step reduction across ranks), the epoch figures are global
                self.loggers.step(self.scheduler.last_epoch, {"train/loss": window / max(window_items, 1), **lrs})
                window, window_items = 0.0, 0
            bar.update()
            bar.set_postfix(loss=f"{total / count:.4f}")
        bar.close()
        batches.close()
        loss_sum, items = D.all_sum(total, count)  # every rank's items: the epoch's mean loss
        return loss_sum / max(items, 1)

    def _trained_lr(self) -> float:
        """The first param group's LR at the last optimizer step: the scheduler has stepped past it already
        (at the end of a poly or cosine run to 0, an LR no step used)."""
        return float(self.scheduler.base_lrs[0]) * self.scheduler.factor(self.scheduler.last_epoch - 1)

    def precise_bn(self, epoch: int) -> int:
        """``train.precise_bn``: BatchNorm statistics recomputed over that many train batches (fixed
        order, seeded by epoch) with the current weights; the checkpoint saves them."""
        n = self.cfg.train.precise_bn
        if n <= 0:
            return 0
        t = self.cfg.train
        loader = D.make_loader(self.train_set, t.batch_size, shuffle=True, seed=t.seed + 1, epoch=epoch,
                               workers=self.workers, collate_fn=self.collate, drop_last=len(self.train_set) > t.batch_size)

        # The unwrapped module: DDP would overwrite every rank's statistics with rank 0's at each forward.
        forward = self._forward_module()

        def step(batch: Any) -> None:
            inputs, targets = batch
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_enabled):
                self.task.train_loss(forward, to_device(inputs, self.device, self.channels_last),
                                     self.task.to_device(targets, self.device), self.cached)

        used = recompute_bn_stats(self.model, loader, step, n)
        D.average_buffers(trainable_bn(self.model))  # each rank saw its shard: the mean over all of them
        return used

    @torch.inference_mode()
    def evaluate(self) -> tuple[float, dict[str, Any], Meter]:
        """Val loss and metrics over the val split (all ranks contribute to the meter)."""
        return evaluate(self.model, self.val_set, self.task, self.device, self.cfg.train.val_batch_size,
                        self.collate, self.progress, (self.amp_enabled, self.amp_dtype), cached=self.cached,
                        channels_last=self.channels_last)

    def fit(self) -> RunResult:
        """Train every epoch left; on rank 0 the run folder gets its files as each epoch ends, and
        report.html at the end."""
        try:
            result = self._fit()
        finally:
            self.loggers.close()
        if D.is_main():
            self.log(f"report: {write_report(self.run_dir)}")
        return result

    def _fit(self) -> RunResult:
        t = self.cfg.train
        fit_start = time.perf_counter()
        if D.is_main():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_text(dump_config(self.cfg), self.folder.config)
            if self.report is not None:
                save_text(json.dumps(self.report.to_dict(), indent=1) + "\n", self.folder.transfer_report)
            texts = {"config": dump_config(self.cfg), "freeze": freeze_table(self.model)}
            if self.report is not None:
                texts["transfer"] = self.report.format()
            self.loggers.start(self.run_dir, texts, self.scheduler.last_epoch + 1 if self.resume else 0)
            self.run_info = self._start_run_info()
            self._save_run_info()
        self._print_start()
        stale = 0
        key, label = self.task.main_metric, self.task.metric_label
        result = RunResult(self.run_dir, self.history, self.best, self.best_epoch, metric=key)
        for epoch in range(self.start_epoch, t.epochs):
            self._unfreeze_for(epoch)
            start = time.perf_counter()
            train_loss = self.train_epoch(epoch)
            if not self._evaluates(epoch):
                took = time.perf_counter() - start
                row = {"epoch": epoch + 1, "train_loss": train_loss, "lr": self._trained_lr(),
                       "seconds": took, "train_seconds": took, "data_seconds": self.data_seconds, **self._selftrain_row()}
                self.history.append(row)
                self.log(f"epoch {epoch + 1}/{t.epochs}  train_loss {train_loss:.4f}{_accepted(row)}  lr {row['lr']:.2e}  "
                         f"{row['seconds']:.1f}s{_data_share(row)}  (no evaluation: train.val_interval {t.val_interval})")
                if D.is_main():
                    self._save_info_and_last(epoch, {})
                continue
            self.precise_bn(epoch)
            trained = time.perf_counter()
            val_loss, metrics, meter = self.evaluate()
            now = time.perf_counter()
            row = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, **self.task.row(metrics),
                   "lr": self._trained_lr(), "seconds": now - start, "train_seconds": trained - start,
                   "data_seconds": self.data_seconds, "eval_seconds": now - trained, **self._selftrain_row()}
            self.history.append(row)
            score = float(metrics[key])
            improved = score > self.best
            if improved:
                self.best, self.best_epoch, stale = score, epoch + 1, 0
            else:
                stale += 1
            self.log(f"epoch {epoch + 1}/{t.epochs}  train_loss {train_loss:.4f}{_accepted(row)}  val_loss {val_loss:.4f}  "
                     f"{self.task.summary(metrics)}  lr {row['lr']:.2e}  {row['seconds']:.1f}s{_data_share(row)}"
                     + ("  *best*" if improved else ""))
            if D.is_main():
                self._write_epoch(epoch, metrics, improved, meter)
            if t.patience is not None and stale >= t.patience:  # evaluations without a gain
                self.log(f"early stop: no {label} gain for {t.patience} epoch(s); best {self.best:.4f} "
                         f"at epoch {self.best_epoch}")
                result.stopped_early = True
                break
        result.best, result.best_epoch = self.best, self.best_epoch
        if D.is_main():
            self.run_info["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            self.run_info["stopped_early"] = result.stopped_early
            self.run_info["fit_seconds"] = self.run_info.get("fit_seconds", 0.0) + time.perf_counter() - fit_start
            self._save_run_info()
        return result

    # ------------------------------------------------------------------------------ outputs, state

    @property
    def folder(self) -> RunFolder:
        """The run folder's files (``run_dir``)."""
        return RunFolder(self.run_dir)

    def _print_start(self) -> None:
        self.log(f"run folder: {self.run_dir}")
        limited = (f" (train.limit_train: a fixed subset of {self.train_split})"
                   if len(self.train_set) < self.train_split else "")
        self.log(f"data: {len(self.train_set)} train{limited} / {len(self.val_set)} val images, "
                 f"{len(self.classes)} classes; device {self.device}")
        t, world = self.cfg.train, D.world_size()
        if world > 1:
            self.log(f"distributed: {world} processes ({D.backend()}); batch {t.batch_size} per process x {world} "
                     f"x accumulate {t.accumulate} = {t.batch_size * world * t.accumulate} per step; "
                     f"lr {t.lr:g} x {LR_SCALING[t.lr_scaling](world):g} (train.lr_scaling: {t.lr_scaling}) = {self.lr:g}")
        if self.show_transfer:
            if self.report is not None:
                self.log(self.report.format())
            self.log(freeze_table(self.model))

    def _start_run_info(self) -> dict[str, Any]:
        """run.json's start: how the run was started, on what, and what was frozen. A resumed run keeps
        the original command and start, and lists each resume."""
        now, here, info = resumed_run_info(self.folder, self.resume, self.command, self.device, self.start_epoch)
        if info is not None:
            return info
        counts = freeze_counts(self.model)
        held = sum(1 for m in self.model.modules() if bn_held_in_eval(m))
        return {"kind": "finetune", **here, "started": now, "finished": None,
                "task": self.task.name, "metric": self.task.main_metric, "metric_label": self.task.metric_label,
                "image_score": self.task.image_score, "classes": self.classes,
                "images": {"train": len(self.train_set), "val": len(self.val_set)},
                # train.limit_train (in config.yaml too): how many of the train split's items were kept
                "limit_train": {"kept": len(self.train_set), "of": self.train_split} if self.cfg.train.limit_train else None,
                "freeze": {"strategy": self.cfg.freeze.strategy,
                           "parts": {p: {"trainable": a, "frozen": b} for p, (a, b) in counts.items()},
                           "bn_held_in_eval": held, "table": freeze_table(self.model)},
                "setup_seconds": self.setup_seconds, "cache_seconds": self.cache_seconds,
                "versions": {"seg_transfer": __version__, "torch": torch.__version__,
                             "python": platform.python_version()}}

    def _save_run_info(self) -> None:
        self.run_info.update(history=[dict(r) for r in self.history], best=float(self.best), best_epoch=self.best_epoch,
                             unfrozen=list(self.unfrozen))
        save_text(json.dumps(self.run_info, indent=1, default=float) + "\n", self.folder.run_json)

    def _write_epoch(self, epoch: int, metrics: dict[str, Any], improved: bool, meter: Optional[Meter] = None) -> None:
        folder = self.folder
        save_text(json.dumps({**metrics, "classes": self.classes}, indent=1, default=float) + "\n",
                  folder.val_metrics_last)
        plot_curves(self.history, folder.curves, metric=self.task.main_metric)
        images: dict[str, Path] = {}
        n = self.cfg.output.num_predictions
        # Drawn at the epochs that become the best and at the last one, not every epoch: the drawing
        # (the model on n val images, then PNG encoding) cost more than a short run's steps (RESULTS.md,
        # "Run overhead"); the curves, every epoch, show progress in between.
        if n and (improved or epoch + 1 == self.cfg.train.epochs):
            images["predictions"] = folder.predictions
            self.task.plot_predictions(self.model, self.val_images, n, self.device, images["predictions"])
        if improved and meter is not None:
            # the best epoch's own figures: what report.html shows
            extra = self.task.write_report(metrics, meter, self.run_dir)
            scores = meter.image_scores()
            if n and self.task.plot_best_worst(self.model, self.val_images, scores, max(1, n // 2), self.device,
                                               folder.best_worst):
                images["best_worst"] = folder.best_worst
            names = getattr(self.val_images, "names", None)
            best = {**plain_metrics(metrics), "classes": self.classes, "epoch": epoch + 1,
                    "metric": self.task.main_metric, "per_class": self.task.per_class(metrics),
                    "image_score": self.task.image_score, "image_scores": scores,
                    "image_names": names if isinstance(names, list) else None, **extra}
            save_text(json.dumps(best, indent=1, default=float) + "\n", folder.val_metrics_best)
        self.loggers.epoch(self.history, self.task.per_class(metrics), images)
        self._save_info_and_last(epoch, metrics, improved)

    def _selftrain_row(self) -> dict[str, float]:
        """The epoch's self-training columns (``accepted``); none without ``selftrain``."""
        return self.selftrain.row() if self.selftrain is not None else {}

    def _evaluates(self, epoch: int) -> bool:
        """``train.val_interval``: every N-th epoch is evaluated, and always the last."""
        return (epoch + 1) % self.cfg.train.val_interval == 0 or epoch + 1 == self.cfg.train.epochs

    def _save_info_and_last(self, epoch: int, metrics: dict[str, Any], improved: bool = False) -> None:
        """run.json and last.pt after every epoch (resume needs them); best.pt when ``improved``."""
        self._save_run_info()
        extra = {"epoch": epoch + 1, "best_metric": float(self.best), "metric": self.task.main_metric,
                 "best_epoch": self.best_epoch,
                 "history": [dict(r) for r in self.history], "unfrozen": list(self.unfrozen),
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "scaler": self.scaler.state_dict(), "config": to_dict(self.cfg), "metrics": plain_metrics(metrics)}
        save_checkpoint(self.folder.last, self.model, **extra)
        if improved:
            save_checkpoint(self.folder.best, self.model, **extra)

    def _load_state(self, path: Path) -> None:
        ckpt = read_checkpoint(path)
        for stage in ckpt.get("unfrozen", []):  # rebuild the optimizer's param groups in their order
            new = unfreeze(self.model, stage, self.freeze_state)
            if new:
                add_param_group(self.optimizer, self.scheduler, new, self.cfg.train.backbone_lr_mult, name=stage)
            self.unfrozen.append(stage)
        W.load_into(self.model, ckpt["state_dict"], path)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.start_epoch, self.best, self.best_epoch = ckpt["epoch"], ckpt["best_metric"], ckpt["best_epoch"]
        self.history[:] = ckpt["history"]
        self.log(f"resumed from {path} at epoch {self.start_epoch}")


def _data_share(row: dict[str, float]) -> str:
    """' (data 12%)': the share of the epoch's training time spent waiting for batches (a starved device)."""
    return f" (data {row['data_seconds'] / row['train_seconds']:.0%})" if row.get("train_seconds") else ""


def _accepted(row: dict[str, float]) -> str:
    """'  accepted 41%': the epoch's share of pseudo-labels accepted (self-training)."""
    share = row.get("accepted")
    return "" if share is None or math.isnan(share) else f"  accepted {share:.0%}"


def _default_name(cfg: Config) -> str:
    model = cfg.model.name or f"{cfg.model.backbone}_{cfg.model.neck}_{cfg.model.head}"
    return f"{model}_{time.strftime('%Y%m%d-%H%M%S')}"
