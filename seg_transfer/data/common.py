"""What the formats of every task share: file pairing by name, image and mask reading, folder listing,
the dataset base class and the ``DataSplits`` every builder returns."""
from __future__ import annotations

import copy
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator, Optional, Sequence, TypeVar, Union

import numpy as np
import torch.utils.data
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from ..errors import BadInputError, suggest
from ..io import IMAGE_EXTENSIONS, open_image, read_image
from .problems import Problem, fail

PathLike = Union[str, os.PathLike]
ORIENTATION = 0x0112  # the EXIF tag io.read_image honours
T = TypeVar("T")
R = TypeVar("R")


def stem(name: str) -> str:
    """'a/b/0001TP_006690.png' -> '0001TP_006690': the key that pairs images, masks and list entries."""
    base = os.path.basename(name.replace("\\", "/"))
    root, ext = os.path.splitext(base)
    return root if ext.lower() in IMAGE_EXTENSIONS else base


def read_rgb(path: PathLike) -> np.ndarray:
    """An image file as RGB uint8 HxWx3 (``io.read_image``: EXIF orientation, modes); an unreadable
    file is a DataError naming it."""
    try:
        return read_image(path).permute(1, 2, 0).numpy()
    except BadInputError as err:
        raise fail(Problem("unreadable", str(path), f"image {err}")) from None


def image_file_shape(path: PathLike, decode: bool = True) -> tuple[int, int]:
    """(H, W) of an image file as ``read_rgb`` returns it; no RGB copy is made. ``decode=True`` decodes the
    pixels too (the data check: finds truncated files), ``decode=False`` reads the header only."""
    try:
        if decode:
            img = open_image(path)
        else:
            try:
                img = Image.open(path)
            except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
                raise BadInputError(f"{path}: not an image file ({err})") from None
        with img:
            width, height = img.size
            # EXIF orientations 5-8 are quarter turns: read_image swaps the sides. A PNG's getexif decodes the
            # whole file to look for an eXIf chunk after the pixels: a header read takes what the header has.
            header_only = not decode and img.format == "PNG" and "exif" not in img.info
            turned = not header_only and img.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8)
    except BadInputError as err:
        raise fail(Problem("unreadable", str(path), f"image {err}")) from None
    return (width, height) if turned else (height, width)


class InlineImage(os.PathLike):
    """An image stored inside another file (LabelMe's ``imageData``): what a dataset's ``images`` may hold
    instead of a path. ``path`` is the file that holds it (also its ``os.fspath``), ``name`` its stem."""

    path: Path
    name: str

    def __fspath__(self) -> str:
        return str(self.path)

    def read(self) -> np.ndarray:
        """RGB uint8 HxWx3; a DataError names the file."""
        raise NotImplementedError

    def shape(self) -> tuple[int, int]:
        """(H, W) as ``read`` returns it."""
        raise NotImplementedError


ImageRef = Union[Path, InlineImage]  # an entry of a dataset's ``images``


def ref_name(ref: Union[PathLike, InlineImage]) -> str:
    """The stem that names an image (a file's, or an inline image's ``name``)."""
    return ref.name if isinstance(ref, InlineImage) else stem(str(ref))


def read_mask(path: PathLike) -> np.ndarray:
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


def find_folder(root: Path, name: PathLike, what: str) -> Path:
    """``root / name`` when it is a folder; else a DataError naming it, with a close match among root's folders."""
    if not root.is_dir():
        raise fail(Problem("missing_path", str(root), f"data root {root}: no such folder"))
    path = root / name
    if not path.is_dir():
        folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        raise fail(Problem("missing_path", str(path), (
            f"{what} folder {path}: no such folder{suggest(str(name), folders)}; "
            f"folders in {root}: {', '.join(folders) or 'none'}")))
    return path


def list_files(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted; hidden files (macOS ``._x.png``, ...) are skipped."""
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file())


def index_by_stem(files: Sequence[Path], suffix: str = "") -> dict[str, Path]:
    """{stem minus ``suffix``: path}; two files with one stem are ambiguous, so that is an error."""
    index: dict[str, Path] = {}
    for path in files:
        key = stem(path.name)
        if suffix:
            if not key.endswith(suffix):
                continue
            key = key[:-len(suffix)]
        if key in index:
            raise fail(Problem("duplicate_name", str(path), (
                f"{index[key]} and {path} share the name '{key}': files are paired by name without "
                "extension, so keep one")))
        index[key] = path
    return index


def dataset_images(folder: Path) -> list[Path]:
    """A dataset's images folder: ``list_files(folder)``; a DataError when it holds no image or two images
    share a name (files are paired with their labels by name)."""
    files = list_files(folder)
    if not files:
        raise fail(Problem("missing_image", str(folder),
                           f"images folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})"))
    index_by_stem(files)  # only to refuse ambiguous image names
    return files


def pair_masks(images: Sequence[Path], mask_dir: Path, mask_suffix: str,
               used: Iterable[int]) -> tuple[list[Optional[Path]], list[Problem]]:
    """The mask file of each image (``<stem><mask_suffix>`` in ``mask_dir``, or None) and a problem for
    each image of ``used`` (indices) without one."""
    by_stem = index_by_stem(list_files(mask_dir), mask_suffix)
    masks = [by_stem.get(stem(p.name)) for p in images]
    problems = [Problem("missing_mask", str(images[i]), (
        f"image {images[i]}: missing mask {mask_dir / (stem(images[i].name) + mask_suffix)}.png "
        f"(no file of that name in {mask_dir})")) for i in sorted(set(used)) if masks[i] is None]
    return masks, problems


def thread_pool() -> ThreadPoolExecutor:
    """Workers for a scan of every file; threads suffice, as PNG/JPEG decoding releases the GIL."""
    return ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))


def progress_bar(total: int, desc: str, unit: str = "file", enabled: bool = True) -> tqdm:
    """A bar with a count and an estimate on stderr, shown only once the loop has run 2 s (short scans stay quiet)."""
    return tqdm(total=total, desc=desc, unit=unit, delay=2, leave=False, file=sys.stderr, disable=not enabled,
                dynamic_ncols=True)


def scan(fn: Callable[[T], R], items: Sequence[T], desc: str, enabled: bool = True) -> list[R]:
    """``[fn(x) for x in items]`` on the thread pool, in order, under a ``progress_bar``."""
    out: list[R] = []
    with thread_pool() as pool, progress_bar(len(items), desc, enabled=enabled) as bar:
        for result in pool.map(fn, items):
            out.append(result)
            bar.update()
    return out


class ImageDataset(torch.utils.data.Dataset):
    """The base of the three task datasets: ``read(i)`` gives the raw item, ``transform(*item)`` is applied last."""

    classes: list[str]
    ignore_index: int
    transform: Optional[Callable[..., Any]]
    item_lists: ClassVar[tuple[str, ...]] = ()  # the attributes holding one entry per item, in item order

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, i: int) -> tuple[np.ndarray, Any]:
        """Raw item ``i``: (uint8 HxWx3 image, its label: mask, boxes or class index)."""
        raise NotImplementedError

    def inspect(self, i: int) -> tuple[Optional[np.ndarray], list[Problem]]:
        """(labels of item ``i`` or None when unusable, every problem of it); never raises for bad data."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        """Number of classes (for detection, background included)."""
        return len(self.classes)

    def __getitem__(self, i: int) -> Any:
        item = self.read(i)
        return self.transform(*item) if self.transform is not None else item

    def with_transform(self, transform: Optional[Callable[..., Any]]) -> ImageDataset:
        """A copy of this dataset (same files) that applies ``transform`` to each item."""
        clone = copy.copy(self)
        clone.transform = transform
        return clone

    def take(self, indices: Sequence[int]) -> ImageDataset:
        """A copy of this dataset holding items ``indices`` only (same options and transform)."""
        if not self.item_lists:  # a copy of every item would pass for a subset
            raise NotImplementedError(f"{type(self).__name__}.item_lists: not declared")
        clone = copy.copy(self)
        for name in self.item_lists:
            items = getattr(self, name)
            setattr(clone, name, [items[i] for i in indices])
        return clone


class AnnotatedImages(ImageDataset):
    """Image files (``images``) each paired with an annotation by name: the base of segmentation and box datasets."""

    images: list[ImageRef]

    def __len__(self) -> int:
        return len(self.images)

    @property
    def names(self) -> list[str]:
        """File stems, in dataset order."""
        return [ref_name(p) for p in self.images]

    def read_image(self, i: int) -> np.ndarray:
        """Image ``i`` as RGB uint8 HxWx3 (EXIF orientation and modes handled by ``io.read_image``)."""
        ref = self.images[i]
        return ref.read() if isinstance(ref, InlineImage) else read_rgb(ref)

    def image_shape(self, i: int, decode: bool = True) -> tuple[int, int]:
        """(H, W) of image ``i`` as ``read_image`` returns it; no RGB copy is made (``image_file_shape``)."""
        ref = self.images[i]
        return ref.shape() if isinstance(ref, InlineImage) else image_file_shape(ref, decode)


@dataclass
class DataSplits:
    """What every dataset builder returns: the train and val datasets and the class names they share."""

    train: ImageDataset
    val: ImageDataset
    classes: list[str]
    ignore_index: int = 255

    def __iter__(self) -> Iterator[ImageDataset]:
        """``train, val = build_folder(...)`` works too."""
        return iter((self.train, self.val))

    def with_transforms(self, train: Optional[Callable[..., Any]],
                        val: Optional[Callable[..., Any]]) -> DataSplits:
        """A copy whose splits apply ``train`` / ``val`` to each item."""
        return DataSplits(self.train.with_transform(train), self.val.with_transform(val),
                          self.classes, self.ignore_index)
