"""The full data scan: every problem of a dataset at once (``--check-data``), and label counts.

Datasets raise the first problem they meet; ``check_dataset`` builds the dataset collecting construction
problems, then inspects each file of each split, whatever the task: each image and mask decoded once, under
a progress bar once the scan takes more than 2 s.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, Union

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


@dataclass(frozen=True)
class Labels:
    """How a task's labels are counted and named in the data check's messages."""

    plural: str  # what is counted: "labelled pixels", "boxes", "images"
    where: str  # what holds them, for 'class k appears in no ...'
    first: int  # the first class counted (detection: 1, its class 0 is the background)
    least: int  # classes a split must hold labels of, at most the number there are


LABELS = {
    "segmentation": Labels("labelled pixels", "mask", 0, 2),
    "detection": Labels("boxes", "box", 1, 1),
    "classification": Labels("images", "image label", 0, 2),
}


@dataclass
class SplitScan:
    """What the data check saw in one split: its items and, per class, what is labelled (pixels, boxes or
    images: the split's ``LABELS``); ``ignored``: pixels at the ignore value (segmentation)."""

    name: str
    items: int
    counts: np.ndarray
    ignored: int = 0
    errors: int = 0  # items with an error (their labels are not counted)


@dataclass
class DataScan:
    """Every problem of a dataset and what each split holds (``summary()``: the data check's last line)."""

    problems: list[Problem]
    splits: list[SplitScan] = field(default_factory=list)
    labels: Labels = LABELS["segmentation"]
    data: Optional[DataSplits] = None  # the dataset scanned (None: it could not be built)

    def summary(self) -> str:
        """``scanned train: 300 images, 25.3M labelled pixels of 11 classes; val: ...``."""
        def one(s: SplitScan) -> str:
            counted = s.counts[self.labels.first:]
            present = int((counted > 0).sum())
            return (f"{s.name}: {s.items} image{'s' * (s.items != 1)}, {_amount(int(counted.sum()))} "
                    f"{self.labels.plural} of {present} class{'es' * (present != 1)}")
        return "scanned " + "; ".join(one(s) for s in self.splits) if self.splits else "scanned nothing"


def labels_of(split: ImageDataset) -> Labels:
    if isinstance(split, SegDataset):
        return LABELS["segmentation"]
    return LABELS["detection"] if hasattr(split, "label_counts") else LABELS["classification"]


def _amount(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 10**6 else f"{n / 1e3:.1f}k" if n >= 10**4 else str(n)


def check_dataset(data: Union[Mapping[str, Any], DataSplits], progress: bool = True,
                  binary: bool = False) -> list[Problem]:
    """Every problem at once: construction (pairing, lists, empty splits), then each file of each split,
    then each split as a whole (labels of too few classes to learn from); ``scan_dataset`` also says what
    each split holds.

    ``data`` is a ``data:`` block (a mapping with ``format``) or an already built ``DataSplits``;
    ``binary``: checked as a binary model reads it (``segmentation.binary_splits``: 0/255 masks are fine).
    """
    return scan_dataset(data, progress, binary).problems


def scan_dataset(data: Union[Mapping[str, Any], DataSplits], progress: bool = True,
                 binary: bool = False) -> DataScan:
    """``check_dataset``'s problems and what each split holds (``DataScan``)."""
    problems: list[Problem] = []
    if isinstance(data, Mapping):
        with collecting() as problems:
            try:
                data = build_dataset(data)
            except DataError as err:
                return DataScan([*problems, err.problem])  # nothing left to scan (e.g. the images folder is missing)
    if binary:
        data = binary_splits(data)
    labels = labels_of(data.train)
    splits = [("train", data.train), ("val", data.val)]
    # An item in both splits (split: all, or val.txt inside train.txt) is looked at once.
    keys = [[_key(split, i) for i in range(len(split))] for _, split in splits]
    items = list({key: (split, i) for (_, split), ks in zip(splits, keys) for i, key in enumerate(ks)}.items())
    found: dict[tuple[str, ...], tuple[Optional[np.ndarray], list[Problem]]] = {}
    with thread_pool() as pool, progress_bar(len(items), "data check", "file", progress) as bar:
        for (key, _), result in zip(items, pool.map(lambda item: item[1][0].inspect(item[1][1]), items)):
            bar.update()
            problems.extend(result[1])
            found[key] = result
    scans = [_split_scan(name, split, [found[k] for k in ks]) for (name, split), ks in zip(splits, keys)]
    total = sum(s.counts for s in scans)
    if isinstance(total, np.ndarray) and total.any():
        problems.extend(_absent_classes(total, data.classes, labels))
    problems.extend(p for s in scans if (p := _too_few_classes(s, data.classes, data.ignore_index, labels)))
    return DataScan(problems, scans, labels, data)


def _split_scan(name: str, split: ImageDataset, results: Sequence[tuple[Optional[np.ndarray], list[Problem]]]
                ) -> SplitScan:
    counts = np.zeros(split.num_classes, dtype=np.int64)
    ignored = errors = 0
    for labels, problems in results:
        if labels is None or any(p.severity == "error" for p in problems):
            errors += 1
            continue
        # box datasets inspect to box labels and count them themselves
        counts += (split.label_counts(labels) if hasattr(split, "label_counts")
                   else _bincount(labels, split.num_classes, split.ignore_index))
        if isinstance(split, SegDataset):
            ignored += int((labels == split.ignore_index).sum())
    return SplitScan(name, len(results), counts, ignored, errors)


def _key(split: ImageDataset, i: int) -> tuple[str, ...]:
    """What item ``i`` of ``split`` is made of: its image file and its annotation (mask, XML, ...)."""
    parts = [getattr(split, name)[i] for name in ("images", "files", "masks", "annotations") if hasattr(split, name)]
    return tuple(str(p) for p in parts) or (str(id(split)), str(i))  # a dataset of another kind: by position


def _absent_classes(counts: np.ndarray, classes: Sequence[str], labels: Labels) -> list[Problem]:
    return [Problem("absent_class", name, f"class {c} '{name}' appears in no {labels.where} of train or val", "warning")
            for c, name in enumerate(classes) if c >= labels.first and counts[c] == 0]


def _too_few_classes(scan: SplitScan, classes: Sequence[str], ignore_index: int, labels: Labels) -> Optional[Problem]:
    """A split whose labels cover fewer classes than a model can learn from (``Labels.least``): nothing
    labelled, or (segmentation, classification) one class only. Not said where items had errors of their
    own (those are listed already)."""
    counts = scan.counts[labels.first:]
    present = [c + labels.first for c in np.flatnonzero(counts)]
    least = min(labels.least, len(classes) - labels.first)
    if scan.errors or not scan.items or len(present) >= least:
        return None
    what = f"{scan.name}: {scan.items} image{'s' * (scan.items != 1)}"
    if labels is LABELS["detection"]:
        return Problem("too_few_classes", scan.name, (
            f"{what} and no boxes: every image is background, so there is nothing to learn; check where the "
            "format reads its annotations (YOLO: labels/<name>.txt beside images/<name>.jpg; VOC: Annotations/"
            "<name>.xml) and that data.root points there"))
    if labels is LABELS["classification"]:
        seen = f"all of class {present[0]} '{classes[present[0]]}'" if present else "none labelled"
        return Problem("too_few_classes", scan.name, (
            f"{what}, {seen}: a classifier needs images of at least two classes in each split; check data.root "
            "(one folder per class) and the split (data.val_ratio, data.split)"))
    ignored = f"{_amount(scan.ignored)} pixels at the ignore value {ignore_index}"
    if not present:
        seen = f"no labelled pixels ({ignored})"
    else:
        c = present[0]
        seen = f"only class {c} '{classes[c]}' labelled ({_amount(int(scan.counts[c]))} pixels; {ignored})"
    hint = ("check data.classes, data.label_map and data.ignore_index against the values the masks hold")
    if ignore_index == 255 and scan.ignored and present in ([0], []):
        hint = ("masks of 0 and 255 are binary masks saved as 0/255: for a foreground/background model set "
                "model.binary: true (or model.num_classes: 1); if 255 is a class of yours, map it with "
                "data.label_map {255: 1}; else " + hint)
    return Problem("too_few_classes", scan.name, f"{what} with {seen}: a model can learn nothing from it; {hint}")
