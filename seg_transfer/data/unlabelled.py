"""Images nobody labelled, for the two commands that learn from them.

- ``selftrain.unlabelled``: a folder read as a dataset of the labelled split's kind (``UnlabelledImages``),
  each image with a placeholder label, so that the task's own train transforms (albumentations or the
  device recipe) make its weak view. A segmentation placeholder is a mask of zeros: after the recipe's
  padding, the pixels that hold the ignore value are those outside the image, which the pseudo-labels skip.
- ``seg-transfer pretrain``'s ``data:``: every image file under a folder, or the files a list names
  (``unlabelled_files``), decoded with the shorter side at one size so a batch fits one ``Canvas``
  (``PretrainImages``).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from ..io import expand_inputs
from .common import ImageDataset, PathLike, image_file_shape, read_rgb, scan, stem
from .memory import start_size
from .problems import DataError, Problem, fail


def image_files(folder: PathLike, key: str) -> list[Path]:
    """Every image file under ``folder`` (``io.expand_inputs``: recursively, sorted); a missing folder, a
    file, or a folder without images is a DataError naming ``key``."""
    if not Path(folder).is_dir():
        raise fail(Problem("missing_path", str(folder), f"{key}: {folder}: no such folder"))
    files, errors = expand_inputs([folder])
    if errors:
        raise fail(Problem("missing_image", str(folder), f"{key}: {errors[0]}"))
    return files


class UnlabelledImages(ImageDataset):
    """Image files with placeholder labels like ``like``'s items: a zero mask (``dense``: the labelled
    split has masks) or class 0."""

    item_lists = ("files",)

    def __init__(self, files: list[Path], like: ImageDataset) -> None:
        self.files = list(files)
        self.classes, self.ignore_index = list(like.classes), like.ignore_index
        self.dense = hasattr(like, "masks")
        if self.dense:  # placeholders: data.memory then caches (zero) masks too
            self.masks: list[None] = [None] * len(self.files)
        self.transform = None

    def __len__(self) -> int:
        return len(self.files)

    @property
    def names(self) -> list[str]:
        return [stem(p.name) for p in self.files]

    def read(self, i: int) -> tuple[np.ndarray, Any]:
        image = read_rgb(self.files[i])
        return image, (np.zeros(image.shape[:2], np.int64) if self.dense else 0)

    def inspect(self, i: int) -> tuple[Optional[np.ndarray], list[Problem]]:
        raise NotImplementedError("unlabelled images have no labels to check")


def unlabelled_images(folder: PathLike, like: ImageDataset, key: str = "selftrain.unlabelled") -> UnlabelledImages:
    """The unlabelled images under ``folder``, read as ``like``'s kind."""
    return UnlabelledImages(image_files(Path(folder), key), like)


def unlabelled_files(root: PathLike, list_file: Optional[PathLike] = None, progress: bool = True) -> list[Path]:
    """The image files under ``root`` (recursively, sorted), or those ``list_file`` names (one path per line,
    relative to ``root``); files whose header cannot be read are left out with one note saying how many."""
    root = Path(root)
    if list_file is None:
        files = image_files(root, "data.root")
    else:
        path = root / list_file if not Path(list_file).is_absolute() else Path(list_file)
        if not path.is_file():
            raise DataError(f"data.list {path}: no such file")
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        files = [root / name for name in names]
        absent = [str(f) for f in files if not f.is_file()]
        if absent:
            raise DataError(f"data.list {path}: {len(absent)} listed file(s) absent, e.g. {absent[0]}")
        if not files:
            raise DataError(f"data.list {path}: lists no files")

    def readable(file: Path) -> bool:
        try:
            image_file_shape(file, decode=False)
            return True
        except DataError:
            return False

    ok = scan(readable, files, "checking images", enabled=progress)
    kept = [f for f, good in zip(files, ok) if good]
    if len(kept) < len(files):
        print(f"seg-transfer: note: {len(files) - len(kept)} of {len(files)} files under {root} are not "
              f"readable images; left out", file=sys.stderr)
    if not kept:
        raise DataError(f"data.root {root}: no readable image")
    return kept


class PretrainImages(torch.utils.data.Dataset):
    """Item ``i``: (uint8 3 x H x W tensor, its shorter side ``shorter`` pixels; label 0), the item shape
    ``device_augment.canvas_collate`` batches. ``cache``: decode each file once and keep it."""

    def __init__(self, files: Sequence[Path], shorter: Optional[int], cache: bool = True) -> None:
        self.files, self.shorter = list(files), shorter
        self.cached: Optional[list[Optional[torch.Tensor]]] = [None] * len(self.files) if cache else None

    def __len__(self) -> int:
        return len(self.files)

    def image(self, i: int) -> torch.Tensor:
        if self.cached is not None and self.cached[i] is not None:
            return self.cached[i]  # type: ignore[return-value]  # checked just above
        rgb = read_rgb(self.files[i])
        h, w = start_size(rgb.shape[0], rgb.shape[1], self.shorter)
        if (h, w) != rgb.shape[:2]:
            rgb = np.array(Image.fromarray(rgb).resize((w, h), Image.Resampling.BILINEAR, reducing_gap=2.0))
        tensor = torch.from_numpy(np.array(rgb)).permute(2, 0, 1).contiguous()  # a writable copy
        if self.cached is not None:
            self.cached[i] = tensor
        return tensor

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.image(i), 0
