"""The full data scan: every problem of a dataset at once (``--check-data``), and label counts.

Datasets raise the first problem they meet; ``check_dataset`` builds the dataset collecting construction
problems, then inspects each file of each split, whatever the task: each image and mask decoded once, under
a progress bar once the scan takes more than 2 s.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence, Union

import numpy as np

from .common import DataSplits, ImageDataset, progress_bar, thread_pool
from .problems import DataError, Problem, collecting
from .registry import build_dataset
from .segmentation import SegDataset, binary_splits


def label_frequencies(dataset: SegDataset, progress: bool = True) -> np.ndarray:
    """Pixel count per class (int64, length num_classes) over every mask of ``dataset``; ignore excluded.

    One pass over the masks only (images are not decoded); raises DataError on the first bad mask.
    """
    counts = np.zeros(dataset.num_classes, dtype=np.int64)
    with thread_pool() as pool, progress_bar(len(dataset), "counting labels", "mask", progress) as bar:
        for mask in pool.map(dataset.read_mask, range(len(dataset))):
            counts += _bincount(mask, dataset.num_classes, dataset.ignore_index)
            bar.update()
    return counts


def _bincount(mask: np.ndarray, num_classes: int, ignore_index: int) -> np.ndarray:
    valid = mask[(mask != ignore_index) & (mask >= 0) & (mask < num_classes)]
    return np.bincount(valid.ravel(), minlength=num_classes)[:num_classes]


def check_dataset(data: Union[Mapping[str, Any], DataSplits], progress: bool = True,
                  binary: bool = False) -> list[Problem]:
    """Every problem at once: construction (pairing, lists, empty splits), then each file of each split.

    ``data`` is a ``data:`` block (a mapping with ``format``) or an already built ``DataSplits``;
    ``binary``: checked as a binary model reads it (``segmentation.binary_splits``: 0/255 masks are fine).
    """
    problems: list[Problem] = []
    if isinstance(data, Mapping):
        with collecting() as problems:
            try:
                data = build_dataset(data)
            except DataError as err:
                return [*problems, err.problem]  # nothing left to scan (e.g. the images folder is missing)
    if binary:
        data = binary_splits(data)
    counts = np.zeros(len(data.classes), dtype=np.int64)
    # An item in both splits (split: all, or val.txt inside train.txt) is looked at once.
    items = list({_key(split, i): (split, i) for split in (data.train, data.val) for i in range(len(split))}.values())
    with thread_pool() as pool, progress_bar(len(items), "data check", "file", progress) as bar:
        for (split, _), (labels, found) in zip(items, pool.map(lambda item: item[0].inspect(item[1]), items)):
            bar.update()
            problems.extend(found)
            if labels is not None and not found:
                # box datasets inspect to box labels and count them themselves
                counts += (split.label_counts(labels) if hasattr(split, "label_counts")
                           else _bincount(labels, split.num_classes, split.ignore_index))
    if counts.any():
        problems.extend(_absent_classes(counts, data.classes))
    return problems


def _key(split: ImageDataset, i: int) -> tuple[str, ...]:
    """What item ``i`` of ``split`` is made of: its image file and its annotation (mask, XML, ...)."""
    parts = [getattr(split, name)[i] for name in ("images", "files", "masks", "annotations") if hasattr(split, name)]
    return tuple(str(p) for p in parts) or (str(id(split)), str(i))  # a dataset of another kind: by position


def _absent_classes(counts: np.ndarray, classes: Sequence[str]) -> list[Problem]:
    return [Problem("absent_class", name, f"class {c} '{name}' appears in no mask of train or val", "warning")
            for c, name in enumerate(classes) if counts[c] == 0]
