"""Image classification data: the ``ImageFolderDataset`` of labelled images, the checks an image file must
pass, and the image transforms and collate.

Real folders are messy, so every file is looked at before training: a file that is not a photo (a GIF
placeholder, a 0-byte or text file, a truncated JPEG) is an error naming the file; a CMYK or 16-bit image
(converted to 8-bit RGB when read) and a name with spaces are warnings.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import ConfigError
from ..models.preprocess import Preprocess
from .common import ImageDataset, read_rgb
from .problems import Problem
from .transforms import reseed

IGNORE_INDEX = -100  # never a class index: image labels have no ignore value (CrossEntropyLoss' default)
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")

LabelTransform = Callable[[np.ndarray, int], Any]


def check_image(path: Path, decode: bool = False) -> list[Problem]:
    """What is wrong with one image file: errors (unusable) and warnings (usable, worth knowing).

    ``decode=False`` reads the header only (fast: format, mode); ``decode=True`` also decodes the pixels,
    which finds truncated files.
    """
    name = str(path)
    problems: list[Problem] = []
    if " " in path.name:
        problems.append(Problem("name_spaces", name, (
            f"{name}: the name has spaces; it is read fine, but list files (train_list/val_list) must "
            "give it on a line of its own"), "warning"))
    if path.stat().st_size == 0:
        return problems + [Problem("unreadable", name, f"{name}: empty file (0 bytes); delete it")]
    try:
        with Image.open(path) as img:
            fmt, mode = img.format, img.mode
            if decode:
                img.load()
    except UnidentifiedImageError:
        return problems + [Problem("unreadable", name, f"{name}: not an image (a text or other file?); "
                                   "move it out of the class folder")]
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return problems + [Problem("unreadable", name, f"{name}: cannot decode image ({err}); re-save or "
                                   "delete it")]
    if fmt == "GIF":
        # Web scrapes fill class folders with 'image not found' placeholders and animations: GIFs.
        problems.append(Problem("not_photo", name, (
            f"{name}: a GIF, not a photo (placeholders and animations are GIFs); delete it, or convert it "
            "to JPEG/PNG if it really is a photo of its class")))
    elif mode == "CMYK":
        problems.append(Problem("converted", name, f"{name}: a CMYK image; converted to RGB when read "
                                "(colours may shift slightly)", "warning"))
    elif mode in HIGH_BIT_MODES:
        problems.append(Problem("converted", name, f"{name}: a {mode} (16/32-bit) image; scaled to 8-bit "
                                "greyscale RGB when read", "warning"))
    return problems


def relative_name(path: Path, root: Optional[Path]) -> str:
    """``path`` relative to ``root`` in POSIX form (``ants/0013035.jpg``); the file name without a root."""
    try:
        return path.relative_to(root).as_posix() if root is not None else path.name
    except ValueError:
        return str(path)


class ImageFolderDataset(ImageDataset):
    """(uint8 HxWx3 image, int label) per file; ``transform(image, label)`` is applied last."""

    item_lists = ("files", "labels")

    def __init__(self, files: Sequence[Path], labels: Sequence[int], classes: Sequence[str],
                 root: Optional[Path] = None, transform: Optional[LabelTransform] = None) -> None:
        self.files, self.labels, self.classes = list(files), [int(v) for v in labels], list(classes)
        self.root, self.transform = root, transform
        self.ignore_index = IGNORE_INDEX
        self.decoded = False  # True: each file was decoded when the dataset was built (skip_bad), found whole

    def __len__(self) -> int:
        return len(self.files)

    @property
    def names(self) -> list[str]:
        """Paths relative to the root (``ants/0013035.jpg``), in dataset order."""
        return [relative_name(p, self.root) for p in self.files]

    def read(self, i: int) -> tuple[np.ndarray, int]:
        """Raw item ``i``: (RGB uint8 HxWx3, label); a DataError names the file."""
        return read_rgb(self.files[i]), self.labels[i]

    def inspect(self, i: int) -> tuple[Optional[np.ndarray], list[Problem]]:
        """(label as a 0-d array, or None when unusable; every problem of file ``i``) after a full decode (made
        here, or when the dataset was built); never raises for bad data (``checks.check_dataset`` calls it)."""
        problems = check_image(self.files[i], decode=not self.decoded)
        ok = not any(p.severity == "error" for p in problems)
        return (np.array(self.labels[i]) if ok else None), problems


# ------------------------------------------------------------------------------------ transforms
def default_train_spec(crop: Optional[int]) -> list[dict[str, Any]]:
    """Random resized crop to the weights' crop size (torchvision's reference: 8-100% of the area) + h-flip."""
    steps: list[dict[str, Any]] = [{"name": "HorizontalFlip", "p": 0.5}]
    if crop:
        steps.insert(0, {"name": "RandomResizedCrop", "size": [crop, crop], "scale": [0.08, 1.0]})
    return steps


def default_val_spec(resize: Optional[int], crop: Optional[int]) -> list[dict[str, Any]]:
    """Shorter side to the weights' resize size, then the centre crop: ``weights.transforms()`` in albumentations."""
    steps: list[dict[str, Any]] = []
    if resize:
        steps.append({"name": "SmallestMaxSize", "max_size": resize, "interpolation": "area"})
    if crop:
        steps.append({"name": "CenterCrop", "height": crop, "width": crop, "pad_if_needed": True})
    return steps


class ClassTransform:
    """(uint8 HxWx3 image, int label) -> (normalised float 3xHxW tensor, int64 0-d label tensor)."""

    def __init__(self, pipeline: Any, preprocess: Preprocess) -> None:
        self.pipeline = pipeline
        # Only mean/std: resizing and cropping are the pipeline's job.
        self.normalize = dataclasses.replace(preprocess, resize_size=None, crop_size=None)

    def reseed(self, seed: int) -> None:
        """Seed every step independently (``transforms.reseed``), for the feature cache's reproducible copies."""
        reseed(self.pipeline, seed)

    def __call__(self, image: np.ndarray, label: int) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.pipeline(image=image)["image"]
        img = torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1)
        return self.normalize(img), torch.tensor(int(label), dtype=torch.int64)


def classification_collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N x 3 x H x W images, N labels); images of different sizes cannot stack, so that is a ConfigError."""
    images, labels = zip(*batch)
    if len({tuple(i.shape) for i in images}) != 1:
        raise ConfigError("images of different sizes in one batch: crop them to one size (the default "
                          "augment pipelines do; model.resize: 0 turns the crop off)")
    return torch.stack(images), torch.stack(labels)
