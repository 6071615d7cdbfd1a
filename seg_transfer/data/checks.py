"""The full data scan: every problem of a dataset at once (``--check-data``), and label counts.

Datasets raise the first problem they meet; ``check_dataset`` builds the dataset collecting construction
problems, then inspects each file of each split, whatever the task.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence, Union

import numpy as np

from .common import DataSplits, thread_pool
from .problems import DataError, Problem, collecting
from .registry import build_dataset
from .segmentation import SegDataset


def label_frequencies(dataset: SegDataset) -> np.ndarray:
    """Pixel count per class (int64, length num_classes) over every mask of ``dataset``; ignore excluded.

    One pass over the masks only (images are not decoded); raises DataError on the first bad mask.
    """
    counts = np.zeros(dataset.num_classes, dtype=np.int64)
    with thread_pool() as pool:
        for mask in pool.map(dataset.read_mask, range(len(dataset))):
            counts += _bincount(mask, dataset.num_classes, dataset.ignore_index)
    return counts


def _bincount(mask: np.ndarray, num_classes: int, ignore_index: int) -> np.ndarray:
    valid = mask[(mask != ignore_index) & (mask >= 0) & (mask < num_classes)]
    return np.bincount(valid.ravel(), minlength=num_classes)[:num_classes]


def check_dataset(data: Union[Mapping[str, Any], DataSplits]) -> list[Problem]:
    """Every problem at once: construction (pairing, lists, empty splits), then each file of each split.

    ``data`` is a ``data:`` block (a mapping with ``format``) or an already built ``DataSplits``.
    """
    problems: list[Problem] = []
    if isinstance(data, Mapping):
        with collecting() as problems:
            try:
                data = build_dataset(data)
            except DataError as err:
                return [*problems, err.problem]  # nothing left to scan (e.g. the images folder is missing)
    counts = np.zeros(len(data.classes), dtype=np.int64)
    with thread_pool() as pool:
        for split in (data.train, data.val):
            for labels, found in pool.map(split.inspect, range(len(split))):
                problems.extend(found)
                if labels is not None and not found:
                    # box datasets inspect to box labels and count them themselves
                    counts += (split.label_counts(labels) if hasattr(split, "label_counts")
                               else _bincount(labels, split.num_classes, split.ignore_index))
    if counts.any():
        problems.extend(_absent_classes(counts, data.classes))
    return problems


def _absent_classes(counts: np.ndarray, classes: Sequence[str]) -> list[Problem]:
    return [Problem("absent_class", name, f"class {c} '{name}' appears in no mask of train or val", "warning")
            for c, name in enumerate(classes) if counts[c] == 0]
