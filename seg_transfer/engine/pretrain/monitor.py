"""``pretrain.monitor``: how good the representation is, measured each epoch without training anything.

A labelled ``data:`` block (any classification or segmentation format) gives a train and a val split,
decoded once at the pretraining crop size (shorter side resized, centre crop). Each evaluation runs the
backbone over both and scores a weighted k-NN vote (DINO's: the k most cosine-similar train features vote
with weight ``exp(sim / 0.07)``) on the last stage's features:

- classification: one pooled feature per image, its class;
- segmentation: one feature per cell of the last stage's map, labelled by the class covering at least half
  of the cell's pixels (cells without such a class are left out): a dense probe, as segmentation needs.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import nn
from torchvision.transforms import InterpolationMode

from ...data.classification import ImageFolderDataset
from ...data.common import ImageDataset, progress_bar
from ...data.device_augment import normalise
from ...data.problems import DataError
from ...data.registry import build_dataset
from ...data.segmentation import SegDataset
from ...errors import ConfigError
from .methods import LAST

KNN_TEMPERATURE = 0.07
CELL_SHARE = 0.5  # a segmentation cell is labelled by a class covering at least this share of it
MAX_BANK = 50_000  # train features kept for the vote (a spread subset beyond it)


def _square(image: torch.Tensor, size: int, interpolation: InterpolationMode) -> torch.Tensor:
    image = TF.resize(image, [size], interpolation=interpolation, antialias=interpolation != InterpolationMode.NEAREST)
    return TF.center_crop(image, [size, size])


class Split:
    """One split decoded at ``size``: uint8 N x 3 x S x S images and their labels (N, or N x S x S masks)."""

    def __init__(self, dataset: ImageDataset, size: int, dense: bool, progress: bool = True) -> None:
        images, labels = [], []
        with progress_bar(len(dataset), "monitor: decoding", enabled=progress) as bar:
            for i in range(len(dataset)):
                image, label = dataset.read(i)
                images.append(_square(torch.from_numpy(image).permute(2, 0, 1), size, InterpolationMode.BILINEAR))
                if dense:
                    mask = torch.as_tensor(label, dtype=torch.int64)[None]
                    labels.append(_square(mask, size, InterpolationMode.NEAREST)[0])
                else:
                    labels.append(torch.tensor(int(label)))
                bar.update()
        self.images, self.labels = torch.stack(images), torch.stack(labels)


def cell_labels(masks: torch.Tensor, grid: tuple[int, int], num_classes: int) -> torch.Tensor:
    """N x S x S masks -> N x g x g labels: the class covering >= ``CELL_SHARE`` of a cell, else -1."""
    valid = (masks >= 0) & (masks < num_classes)
    onehot = F.one_hot(torch.where(valid, masks, 0), num_classes).permute(0, 3, 1, 2).float() * valid[:, None]
    share = F.adaptive_avg_pool2d(onehot, grid)
    best, label = share.max(1)
    return torch.where(best >= CELL_SHARE, label, -1)


def knn_accuracy(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, labels: torch.Tensor,
                 k: int, num_classes: int) -> float:
    """Share of ``queries`` whose weighted k-NN vote among ``bank`` (both L2-normalised rows) is their label."""
    k = min(k, len(bank))
    correct = 0
    for start in range(0, len(queries), 1024):
        sim, idx = (queries[start:start + 1024] @ bank.T).topk(k, dim=1)
        votes = torch.zeros(len(sim), num_classes, device=sim.device)
        votes.scatter_add_(1, bank_labels[idx], (sim / KNN_TEMPERATURE).exp())
        correct += int((votes.argmax(1) == labels[start:start + 1024]).sum())
    return correct / max(len(queries), 1)


class KnnMonitor:
    """The k-NN accuracy of a backbone's features on a labelled split (``__call__``), as described above."""

    def __init__(self, data: Mapping[str, Any], size: int, k: int, mean: Any, std: Any, progress: bool = True) -> None:
        try:
            splits = build_dataset(data)
        except (ConfigError, DataError) as err:  # said as the monitor's block
            raise type(err)(f"pretrain.monitor: {err}") from None
        if isinstance(splits.train, SegDataset):
            self.dense = True
        elif isinstance(splits.train, ImageFolderDataset):
            self.dense = False
        else:
            raise ConfigError(f"pretrain.monitor: a classification or segmentation dataset, not format "
                              f"{data.get('format')} ({type(splits.train).__name__})")
        if not len(splits.train) or not len(splits.val):
            raise ConfigError("pretrain.monitor: the k-NN monitor needs images in both its train and val splits")
        self.num_classes, self.k, self.mean, self.std = len(splits.classes), k, mean, std
        self.train = Split(splits.train, size, self.dense, progress)
        self.val = Split(splits.val, size, self.dense, progress)
        self.task = "segmentation" if self.dense else "classification"

    @torch.no_grad()
    def features(self, backbone: nn.Module, split: Split, device: torch.device,
                 batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """(L2-normalised features, their labels): one per image, or one per labelled cell."""
        feats, labels = [], []
        for start in range(0, len(split.images), batch):
            x = normalise(split.images[start:start + batch].to(device).float(), self.mean, self.std)
            f = backbone(x)[LAST].float()
            y = split.labels[start:start + batch].to(device)
            if self.dense:
                cells = cell_labels(y, (f.shape[-2], f.shape[-1]), self.num_classes).flatten()
                f = f.flatten(2).transpose(1, 2).reshape(-1, f.shape[1])
                keep = cells >= 0
                f, y = f[keep], cells[keep]
            else:
                f = f.mean((2, 3))
            feats.append(F.normalize(f, dim=1))
            labels.append(y)
        return torch.cat(feats), torch.cat(labels)

    def __call__(self, backbone: nn.Module, device: torch.device) -> Optional[float]:
        """The k-NN accuracy now (None when no val cell is labelled); the backbone's mode is restored."""
        was = backbone.training
        backbone.eval()
        try:
            bank, bank_labels = self.features(backbone, self.train, device)
            queries, labels = self.features(backbone, self.val, device)
        finally:
            backbone.train(was)
        if len(bank) > MAX_BANK:
            keep = torch.linspace(0, len(bank) - 1, MAX_BANK, device=bank.device).long()
            bank, bank_labels = bank[keep], bank_labels[keep]
        if not len(queries) or not len(bank):
            return None
        return knn_accuracy(bank, bank_labels, queries, labels, self.k, self.num_classes)
