"""Images nobody labelled (``selftrain.unlabelled``): a folder read as a dataset of the labelled split's kind,
each image with a placeholder label, so that the task's own train transforms (albumentations or the device
recipe) make its weak view. A segmentation placeholder is a mask of zeros: after the recipe's padding,
the pixels that hold the ignore value are those outside the image, which the pseudo-labels skip too."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..io import expand_inputs
from .common import ImageDataset, PathLike, read_rgb, stem
from .problems import Problem, fail


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
