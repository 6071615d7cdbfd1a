"""``seg-transfer pretrain``: a backbone trained by a self-supervised method on unlabelled images.

The backbone lives inside a classification model (``backbone`` + ``classifier``, one placeholder class),
so the run's ``last.pt`` is an ordinary seg_transfer checkpoint: ``model.backbone_weights: RUN/last.pt``
loads its backbone into any task's model stage by stage (``transfer.backbone``), and the file's
``pretrain`` entry (``models.checkpoint.PRETRAIN_KEY``) lets the transfer report say where the weights
came from. The method's projector heads, the optimizer, the schedule and the history ride in the same file
for ``--resume``. The run folder has finetune's layout (``run_folder``): config.yaml, run.json, last.pt,
metrics.csv (the loss, and ``knn_accuracy`` with a monitor) and curves.png.

Each epoch: the images (decoded once at ``load_size``) -> batches of uint8 canvases -> two views on the
device (``views.TwoViews``) -> the method's loss (``methods.METHODS``) -> AdamW, cosine schedule after a
linear warmup. Under torchrun each process takes its shard of every epoch (``distributed.make_loader``)
and its own views; gradients are averaged by DDP.
"""
from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, cast

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ...config import PretrainRunConfig, dump_config, to_dict
from ...data.device_augment import canvas_collate
from ...data.unlabelled import PretrainImages, unlabelled_files
from ...errors import ConfigError
from ...io import resolve_device, save_text
from ...models import weights as W
from ...models.backbones import Backbone, spec_of
from ...models.build import build_model, model_info
from ...models.checkpoint import PRETRAIN_KEY, read_checkpoint, save_checkpoint
from ...run_folder import RunFolder
from ...version import __version__
from .. import distributed as D
from ..loggers import build_loggers
from ..optim import autocast_settings, build_optimizer, build_scheduler, grad_scaler
from ..plots import plot_curves
from ..trainer import TrainingDiverged, loader_workers, resumed_run_info, seed_everything
from .methods import LAST, METHODS, SSLModel
from .monitor import KnnMonitor
from .views import TwoViews, cell_points

KNN = "knn_accuracy"  # metrics.csv's monitor column
PLACEHOLDER_CLASS = "unlabelled"  # the checkpoint's classifier: a placeholder, never trained


def backbone_model(cfg: PretrainRunConfig) -> nn.Module:
    """The classification model that carries the backbone (its classifier is a placeholder)."""
    spec_of(cfg.model.backbone)  # an unknown name fails with the valid ones
    return build_model({"backbone": cfg.model.backbone, "head": "classifier", "classes": [PLACEHOLDER_CLASS],
                        "weights": None, "backbone_weights": cfg.model.weights, "resize": cfg.pretrain.image_size})


class Pretrainer:
    """Build everything a pretrain config describes, then ``fit()``; ``resume`` continues ``run_dir``'s last.pt."""

    def __init__(self, cfg: PretrainRunConfig, run_dir: Optional[Path] = None, resume: bool = False,
                 progress: bool = True, log: Optional[Callable[[str], None]] = None,
                 command: Optional[Sequence[str]] = None) -> None:
        p = cfg.pretrain
        self.cfg, self.resume, self.command = cfg, resume, list(command) if command is not None else None
        self.device = D.setup(resolve_device(None if p.device == "auto" else p.device, "pretrain.device:"))
        self.progress = progress and D.is_main()
        self.log = (log or (lambda msg: print(msg, flush=True))) if D.is_main() else (lambda _msg: None)
        seed_everything(p.seed, p.deterministic)
        name = cfg.output.name or f"pretrain_{cfg.model.backbone}_{p.method}_{time.strftime('%Y%m%d-%H%M%S')}"
        self.run_dir = Path(run_dir) if run_dir else Path(cfg.output.dir) / name

        files = unlabelled_files(cfg.data.root, cfg.data.list, progress=self.progress)
        if len(files) < 2:
            raise ConfigError(f"data.root {cfg.data.root}: pretraining needs at least 2 images, found {len(files)}")
        self.workers = loader_workers(p.workers, self.device)
        load_size = p.load_size or round(1.5 * p.image_size)
        self.images = PretrainImages(files, load_size, cache=self.workers == 0)

        self.model = backbone_model(cfg)
        backbone = cast(Backbone, self.model.backbone)
        preprocess = model_info(self.model).preprocess
        self.views = TwoViews(p.image_size, preprocess.mean, preprocess.std, p.min_scale, p.color, p.grayscale)
        self.grid: int = max(1, p.image_size // backbone.strides[LAST])
        method = METHODS[p.method](backbone.out_channels[LAST], p)
        self.ssl = SSLModel(backbone, method).to(self.device)
        self.batch_size = min(p.batch_size, len(files) // D.world_size())
        if self.batch_size < 2:
            raise ConfigError(f"pretrain.batch_size: each process needs batches of 2 or more images; "
                              f"{len(files)} images over {D.world_size()} process(es)")
        self.steps = len(files) // (self.batch_size * D.world_size())
        self.optimizer = build_optimizer(self.ssl.parameters(), "adamw", lr=p.lr, weight_decay=p.weight_decay)
        total = p.epochs * self.steps
        self.scheduler = build_scheduler(self.optimizer, "cosine", total_steps=total,
                                         warmup_steps=min(total, round(p.warmup_epochs * self.steps)))
        self.amp_enabled, self.amp_dtype = autocast_settings(self.device, p.amp)
        self.scaler = grad_scaler(self.device, p.amp)
        self.monitor = (KnnMonitor(p.monitor, p.image_size, p.knn_k, preprocess.mean, preprocess.std, self.progress)
                        if p.monitor and D.is_main() else None)
        self.loggers = build_loggers(p.loggers, [KNN])
        self.start_epoch = 0
        self.history: list[dict[str, Any]] = []
        if resume:
            self._load_state(self.folder.last)
        self.net: nn.Module = (DistributedDataParallel(self.ssl, device_ids=[self.device] if self.device.type == "cuda"
                                                       else None) if D.is_dist() else self.ssl)

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.run_dir)

    # ---------------------------------------------------------------------------------- training
    def train_epoch(self, epoch: int) -> tuple[float, float]:
        """One epoch of steps: (mean loss over every process's images, seconds spent waiting for batches)."""
        p = self.cfg.pretrain
        torch.manual_seed(p.seed * 1000 + epoch + 7919 * D.rank())
        generator = torch.Generator().manual_seed(p.seed * 1000 + epoch + 7919 * D.rank())
        loader = D.make_loader(self.images, self.batch_size, shuffle=True, seed=p.seed, epoch=epoch,
                               workers=self.workers, collate_fn=canvas_collate, drop_last=True,
                               pin_memory=self.device.type == "cuda")
        self.ssl.train()
        total, count, waited = 0.0, 0, 0.0
        bar = tqdm(total=self.steps, desc=f"epoch {epoch + 1}/{p.epochs}", unit="batch", leave=False,
                   disable=not self.progress)
        batches = iter(loader)
        for step in range(self.steps):
            wait = time.perf_counter()
            canvas = next(batches).to(self.device, non_blocking=True)
            waited += time.perf_counter() - wait
            v1, v2 = self.views(canvas, generator)
            p1 = cell_points(v1.windows, p.image_size, self.grid).to(self.device)
            p2 = cell_points(v2.windows, p.image_size, self.grid).to(self.device)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_enabled):
                losses = self.net(v1.images, v2.images, p1, p2)
            loss = losses["loss"]
            value = loss.item()
            if not math.isfinite(value):
                raise TrainingDiverged(f"epoch {epoch + 1}, batch {step + 1}: loss is {value}; stopped. "
                                       f"Lower pretrain.lr (now {p.lr:g}) or set pretrain.amp=off")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.loggers.step(self.scheduler.last_epoch, {f"train/{k}": float(v.detach()) for k, v in losses.items()}
                              | {"lr": self.optimizer.param_groups[0]["lr"]})
            total += value * len(canvas)
            count += len(canvas)
            bar.update()
            bar.set_postfix(loss=f"{total / count:.4f}")
        bar.close()
        loss_sum, items = D.all_sum(total, count)
        return loss_sum / max(items, 1), waited

    def knn(self) -> Optional[float]:
        """The monitor's k-NN accuracy now (None without a monitor)."""
        return self.monitor(self.ssl.backbone, self.device) if self.monitor is not None else None

    def fit(self) -> list[dict[str, Any]]:
        """Train every epoch left; on rank 0 the run folder gets its files as each epoch ends. The history."""
        try:
            return self._fit()
        finally:
            self.loggers.close()

    def _fit(self) -> list[dict[str, Any]]:
        p = self.cfg.pretrain
        if D.is_main():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_text(dump_config(self.cfg), self.folder.config)
            self.loggers.start(self.run_dir, {"config": dump_config(self.cfg)},
                               self.scheduler.last_epoch + 1 if self.resume else 0)
            self.run_info = self._start_run_info()
        self.log(f"run folder: {self.run_dir}")
        self.log(f"pretrain: {p.method} on {len(self.images)} unlabelled images, {self.cfg.model.backbone} "
                 f"({'random init' if self.cfg.model.weights is None else self.cfg.model.weights}), "
                 f"{p.image_size}px views, batch {self.batch_size} x {D.world_size()} process(es), "
                 f"{self.steps} steps/epoch; device {self.device}")
        if self.monitor is not None and not self.resume:
            before = self.knn()
            self.log(f"k-NN monitor ({self.monitor.task}, k={p.knn_k}) before training: {before:.4f}"
                     if before is not None else "k-NN monitor: no labelled val cell")
            self.run_info["knn_before"] = before
        for epoch in range(self.start_epoch, p.epochs):
            start = time.perf_counter()
            loss, waited = self.train_epoch(epoch)
            row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": loss, "lr": self.optimizer.param_groups[0]["lr"]}
            monitored = (epoch + 1) % p.monitor_every == 0 or epoch + 1 == p.epochs
            knn = self.knn() if monitored else None
            if knn is not None:
                row[KNN] = knn
            row.update(seconds=time.perf_counter() - start, data_seconds=waited)
            self.history.append(row)
            self.log(f"epoch {epoch + 1}/{p.epochs}  loss {loss:.4f}" + (f"  k-NN {knn:.4f}" if knn is not None else "")
                     + f"  lr {row['lr']:.2e}  {row['seconds']:.1f}s")
            if D.is_main():
                self._write_epoch(epoch)
        if D.is_main():
            self.run_info["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            self._save_run_info()
            self.log(f"pretrained backbone: {self.folder.last} (model.backbone_weights: {self.folder.last})")
        return self.history

    # ----------------------------------------------------------------------------- outputs, state
    def provenance(self, epochs: int) -> dict[str, Any]:
        """The checkpoint's ``pretrain`` entry: what the transfer report says about these weights."""
        p = self.cfg.pretrain
        return {"method": p.method, "epochs": epochs, "images": len(self.images), "backbone": self.cfg.model.backbone,
                "image_size": p.image_size, "start": self.cfg.model.weights, "data": os.path.abspath(self.cfg.data.root)}

    def _start_run_info(self) -> dict[str, Any]:
        now, here, info = resumed_run_info(self.folder, self.resume, self.command, self.device, self.start_epoch)
        if info is not None:
            return info
        return {"kind": "pretrain", **here, "started": now, "finished": None, "method": self.cfg.pretrain.method,
                "backbone": self.cfg.model.backbone, "images": {"unlabelled": len(self.images)},
                "monitor": self.monitor.task if self.monitor is not None else None, "metric": KNN,
                "versions": {"seg_transfer": __version__, "torch": torch.__version__,
                             "python": platform.python_version()}}

    def _save_run_info(self) -> None:
        self.run_info["history"] = [dict(r) for r in self.history]
        save_text(json.dumps(self.run_info, indent=1, default=float) + "\n", self.folder.run_json)

    def _write_epoch(self, epoch: int) -> None:
        plot_curves(self.history, self.folder.curves, metric=KNN if self.monitor is not None else None)
        self.loggers.epoch(self.history, {}, {})
        self._save_run_info()
        save_checkpoint(self.folder.last, self.model, **{PRETRAIN_KEY: self.provenance(epoch + 1)},
                        epoch=epoch + 1, history=[dict(r) for r in self.history],
                        method_state=self.ssl.method.state_dict(), optimizer=self.optimizer.state_dict(),
                        scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(),
                        config=to_dict(self.cfg))

    def _load_state(self, path: Path) -> None:
        ckpt = read_checkpoint(path)
        if PRETRAIN_KEY not in ckpt:
            raise ConfigError(f"--resume: {path} is not a pretrain run's checkpoint")
        W.load_into(self.model, ckpt["state_dict"], path)
        self.ssl.method.load_state_dict(ckpt["method_state"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.start_epoch = int(ckpt["epoch"])
        self.history[:] = ckpt["history"]
        self.log(f"resumed from {path} at epoch {self.start_epoch}")
