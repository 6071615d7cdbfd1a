"""What a segmentation sample must satisfy: raw mask reading, per-file problems, the full scan, label counts.

Bad masks otherwise surface as a CUDA device-side assert deep inside the loss, so every rule here names
the file and says how to fix it. Datasets raise the first problem they meet; ``check_dataset`` lists all.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
from PIL import ImageOps

from ..errors import BadInputError, SegTransferError
from ..io import open_image

if TYPE_CHECKING:  # folder.py imports this module, so only the type checker may import it back
    from .folder import DataSplits, SegDataset

# Problem kinds, so callers (and tests) can tell them apart without parsing messages.
KINDS = ("missing_path", "unreadable", "missing_mask", "missing_image", "duplicate_name", "lossy_mask",
         "rgb_mask", "binary_mask", "size_mismatch", "label_range", "empty_split", "bad_list", "absent_class",
         "bad_box", "unknown_class")  # the last two: box annotations (data/boxes.py)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset; ``message`` names the file and the fix."""

    kind: str
    path: str
    message: str
    severity: str = "error"  # "warning": worth a look, training still works

    def __str__(self) -> str:
        return self.message


class DataError(SegTransferError):
    """A dataset file or split cannot be used; the message names the file."""

    def __init__(self, message: str, problem: Optional[Problem] = None):
        # Constructible from the message alone: a DataLoader re-raises a worker's error as
        # type(err)("Caught ... in DataLoader worker ...\n<traceback>"); keep only the message line.
        if problem is None and message.startswith("Caught DataError in DataLoader worker"):
            last = message.rstrip().splitlines()[-1]
            message = last.split(f"{DataError.__name__}: ", 1)[-1]
        super().__init__(message)
        self.problem = problem or Problem("error", "", message)


def fail(problem: Problem, more: int = 0) -> DataError:
    """The DataError for ``problem``; ``more`` counts the further problems left unmentioned."""
    tail = f" (and {more} more; the data check, --check-data, lists them all)" if more else ""
    return DataError(problem.message + tail, problem)


_collector: contextvars.ContextVar[Optional[list[Problem]]] = contextvars.ContextVar(
    "seg_transfer_data_problems", default=None)


@contextlib.contextmanager
def collecting() -> Iterator[list[Problem]]:
    """Inside this block, builders record construction problems here instead of raising the first."""
    found: list[Problem] = []
    token = _collector.set(found)
    try:
        yield found
    finally:
        _collector.reset(token)


def report(problems: Sequence[Problem]) -> None:
    """Raise the first of ``problems`` (outside ``collecting()``), or record them all (inside it)."""
    if not problems:
        return
    found = _collector.get()
    if found is None:
        raise fail(problems[0], len(problems) - 1)
    found.extend(problems)


def read_mask(path: Union[str, os.PathLike]) -> np.ndarray:
    """Raw pixel values of a mask file: HxW for single-channel and palette PNGs, HxWxC otherwise."""
    try:
        img = open_image(path)
    except BadInputError as err:
        raise fail(Problem("unreadable", str(path), f"mask {err}")) from None
    with img:
        img = ImageOps.exif_transpose(img)  # same orientation rule as io.read_image applies to images
        arr = np.array(img)  # palette ("P") PNGs give their indices here, not their colours
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    return arr


def apply_label_map(mask: np.ndarray, label_map: Optional[Mapping[int, int]]) -> np.ndarray:
    """int64 copy of ``mask`` with each ``src`` value replaced by ``label_map[src]``."""
    if not label_map:
        return mask.astype(np.int64)
    src = np.fromiter(label_map.keys(), dtype=np.int64)
    dst = np.fromiter(label_map.values(), dtype=np.int64)
    if mask.dtype.kind not in "ub" or src.min() < 0:  # signed masks: rare, so the plain way
        out = mask.astype(np.int64)
        result = out.copy()
        for s, d in zip(src, dst):
            result[out == s] = d
        return result
    lut = np.arange(max(int(mask.max()) if mask.size else 0, int(src.max())) + 1, dtype=np.int64)
    lut[src] = dst  # a lookup table indexed by the raw values: one pass, whatever the map's size
    return lut[mask]


def distinct(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values; a bincount for 8/16-bit masks, several times faster than np.unique."""
    if values.dtype.kind in "ub" and values.dtype.itemsize <= 2 and values.size:
        return np.flatnonzero(np.bincount(values.ravel()))
    return np.unique(values)


def _colours(rgb: np.ndarray, limit: int = 6) -> str:
    colours, counts = np.unique(rgb.reshape(-1, 3), axis=0, return_counts=True)
    top = colours[np.argsort(-counts)][:limit]
    listed = ", ".join(str(tuple(int(v) for v in c)) for c in top)
    return listed + (f", ... ({len(colours)} colours)" if len(colours) > limit else "")


def _hw(shape: Sequence[int]) -> str:
    return f"{shape[0]}x{shape[1]}"


def check_mask(raw: np.ndarray, *, name: str, num_classes: int, ignore_index: int,
               label_map: Optional[Mapping[int, int]] = None, image_name: str = "",
               image_shape: Optional[Sequence[int]] = None) -> tuple[Optional[np.ndarray], list[Problem]]:
    """Label-map and check one raw mask -> (int64 HxW labels, or None when unusable; its problems)."""
    problems: list[Problem] = []
    if raw.ndim == 3:
        colour = raw[..., :3] if raw.shape[2] >= 3 else raw[..., :1]
        if colour.shape[2] == 3 and not (np.array_equal(colour[..., 0], colour[..., 1])
                                         and np.array_equal(colour[..., 0], colour[..., 2])):
            return None, [Problem("rgb_mask", name, (
                f"mask {name} is RGB ({raw.shape[2]} channels): save class indices as a single-channel "
                f"PNG (mode L or P), one index per pixel, not colours; colours found: {_colours(colour)}"))]
        raw = colour[..., 0]  # grey stored as RGB, or grey + alpha: the indices are all there
    if raw.ndim != 2:
        return None, [Problem("unreadable", name, f"mask {name} has shape {raw.shape}: expected HxW")]
    if np.issubdtype(raw.dtype, np.floating) and not np.array_equal(raw, np.round(raw)):
        return None, [Problem("label_range", name,
                              f"mask {name} holds non-integer values: save class indices as integers")]
    if image_shape is not None and tuple(raw.shape[:2]) != tuple(image_shape[:2]):
        swapped = tuple(raw.shape[:2]) == tuple(image_shape[:2])[::-1]
        problems.append(Problem("size_mismatch", name, (
            f"mask {name} is {_hw(raw.shape)} but image {image_name} is {_hw(image_shape)} (HxW)"
            + ("; the sides are swapped: an EXIF rotation on one of them?" if swapped else ""))))
    raw_values = [int(v) for v in distinct(raw)]
    mapped = [(label_map or {}).get(v, v) for v in raw_values]
    bad = sorted({v for v in mapped if not 0 <= v < num_classes and v != ignore_index})
    # 0/255 masks are the usual binary-mask mistake: out of range, or (two classes, 255 ignored) silently
    # never showing class 1. label_map {255: 255} declares 255 a real ignore value and silences this.
    binary = set(raw_values) <= {0, 255} and 255 in raw_values and 255 not in (label_map or {})
    if binary and (bad or (num_classes == 2 and ignore_index == 255)):
        problems.append(Problem("binary_mask", name, (
            f"mask {name} holds only 0 and 255: a binary mask saved as 0/255; divide it by 255 "
            "or set label_map {255: 1} (if 255 really marks pixels to ignore, say so with label_map "
            "{255: 255})")))
    elif bad:
        shown = ", ".join(map(str, bad[:8])) + (", ..." if len(bad) > 8 else "")
        hint = (f"; is {num_classes} a void label? map it to the ignore index with label_map "
                f"{{{num_classes}: {ignore_index}}}" if bad == [num_classes] else
                f"; fix the masks or map these values with label_map (e.g. {{{bad[0]}: {ignore_index}}})")
        problems.append(Problem("label_range", name, (
            f"mask {name} holds labels outside [0, {num_classes}) other than the ignore value "
            f"{ignore_index}: {shown}{hint}")))
    mask = apply_label_map(raw, label_map)
    return mask, problems


def _pool() -> ThreadPoolExecutor:
    # Threads suffice: a scan is mostly PNG/JPEG decoding, which releases the GIL.
    return ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))


def label_frequencies(dataset: "SegDataset") -> np.ndarray:
    """Pixel count per class (int64, length num_classes) over every mask of ``dataset``; ignore excluded.

    One pass over the masks only (images are not decoded); raises DataError on the first bad mask.
    """
    counts = np.zeros(dataset.num_classes, dtype=np.int64)
    with _pool() as pool:
        for mask in pool.map(dataset.read_mask, range(len(dataset))):
            counts += _bincount(mask, dataset.num_classes, dataset.ignore_index)
    return counts


def _bincount(mask: np.ndarray, num_classes: int, ignore_index: int) -> np.ndarray:
    valid = mask[(mask != ignore_index) & (mask >= 0) & (mask < num_classes)]
    return np.bincount(valid.ravel(), minlength=num_classes)[:num_classes]


def check_dataset(data: Union[Mapping[str, Any], "DataSplits"]) -> list[Problem]:
    """Every problem at once: construction (pairing, lists, empty splits), then each file of each split.

    ``data`` is a ``data:`` block (a mapping with ``format``) or an already built ``DataSplits``.
    """
    problems: list[Problem] = []
    if isinstance(data, Mapping):
        from .registry import build_dataset  # here, not at the top: registry imports the formats, which import this

        with collecting() as problems:
            try:
                data = build_dataset(data)
            except DataError as err:
                return [*problems, err.problem]  # nothing left to scan (e.g. the images folder is missing)
    counts = np.zeros(len(data.classes), dtype=np.int64)
    with _pool() as pool:
        for split in (data.train, data.val):
            for mask, found in pool.map(split.inspect, range(len(split))):
                problems.extend(found)
                if mask is not None and not found:
                    # box datasets inspect to box labels and count them themselves
                    counts += (split.label_counts(mask) if hasattr(split, "label_counts")
                               else _bincount(mask, split.num_classes, split.ignore_index))
    if counts.any():
        problems.extend(_absent_classes(counts, data.classes))
    return problems


def _absent_classes(counts: np.ndarray, classes: Sequence[str]) -> list[Problem]:
    return [Problem("absent_class", name, f"class {c} '{name}' appears in no mask of train or val", "warning")
            for c, name in enumerate(classes) if counts[c] == 0]
