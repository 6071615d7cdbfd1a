"""What the three reference recipes share: seeding, a split's raw items through a transform, the
waited-for batches of an epoch, and the files a run leaves."""
from __future__ import annotations

import json
import random
import statistics
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torchvision

from seg_transfer.config import Config
from seg_transfer.engine.cv import Outcome, jsonable
from seg_transfer.io import save_text
from seg_transfer.run_folder import RunFolder

PLAIN_JSON = "plain.json"  # a reference run's epochs, beside the engine-format val_metrics_last.json


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def zoo_weights(cfg: Config) -> Any:
    """``model.weights`` of a torchvision zoo model as its enum member (None: random init)."""
    enum = torchvision.models.get_model_weights(cfg.model.name)
    spec = cfg.model.weights
    return None if spec is None else enum.DEFAULT if spec == "DEFAULT" else enum[spec.split(".")[-1]]


class Items(torch.utils.data.Dataset):
    """A split's raw items (the format's reader: label map applied, targets checked) through ``transform``."""

    def __init__(self, dataset: Any, transform: Any) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        return self.transform(*self.dataset.read(i))


def loader(dataset: Any, cfg: Config, device: torch.device, **kw: Any) -> torch.utils.data.DataLoader:
    """The references' train loader: shuffled, seeded, pinned on CUDA."""
    t = cfg.train
    return torch.utils.data.DataLoader(dataset, batch_size=t.batch_size, shuffle=True, num_workers=t.workers or 0,
                                       pin_memory=device.type == "cuda",
                                       generator=torch.Generator().manual_seed(t.seed), **kw)


class Epoch:
    """One epoch's record: ``batches(loader)`` yields the loader's batches adding up the time spent waiting
    for them (the engine's ``data_seconds``); ``end()`` gives {epoch, train_loss, seconds, data_seconds}."""

    def __init__(self, index: int) -> None:
        self.index, self.losses, self.data_seconds = index, [], 0.0
        self.start = time.perf_counter()

    def batches(self, batches: Any) -> Iterator[Any]:
        it = iter(batches)
        while True:
            start = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.data_seconds += time.perf_counter() - start
            yield batch

    def end(self, total: int, progress: bool) -> dict[str, Any]:
        row = {"epoch": self.index + 1, "train_loss": statistics.fmean(self.losses) if self.losses else float("nan"),
               "seconds": time.perf_counter() - self.start, "data_seconds": self.data_seconds}
        if progress:
            print(f"   plain epoch {row['epoch']}/{total}: loss {row['train_loss']:.4f} {row['seconds']:.1f}s", flush=True)
        return row


def finish(metrics: dict[str, Any], classes: list[str], epochs: list[dict[str, Any]], run_dir: Path,
           metric: str, label: str, **extra: Any) -> Outcome:
    """val_metrics_last.json as the engine writes it, the epochs in plain.json; the cv Outcome."""
    save_text(json.dumps({**jsonable(metrics), "classes": classes}, indent=1) + "\n",
              RunFolder(run_dir).val_metrics_last)
    save_text(json.dumps({"epochs": epochs, **extra}, indent=1) + "\n", run_dir / PLAIN_JSON)
    return Outcome(metrics, metric, label)


def plain_epochs(run_dir: Path) -> list[dict[str, Any]]:
    return json.loads((Path(run_dir) / PLAIN_JSON).read_text())["epochs"]

