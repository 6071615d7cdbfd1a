"""Image/mask pairs: the ``SegDataset`` every format returns, and the ``folder`` format (images + masks dirs)."""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import torch.utils.data

from ..errors import BadInputError, ConfigError, suggest
from ..io import IMAGE_EXTENSIONS, open_image, read_image
from .checks import DataError, Problem, check_mask, fail, read_mask, report
from .split import PathLike, split_names, stem

Transform = Callable[[np.ndarray, np.ndarray], Any]
ORIENTATION = 0x0112  # the EXIF tag io.read_image honours


def read_rgb(path: PathLike) -> np.ndarray:
    """An image file as RGB uint8 HxWx3 (``io.read_image``: EXIF orientation, modes); an unreadable
    file is a DataError naming it."""
    try:
        return read_image(path).permute(1, 2, 0).numpy()
    except BadInputError as err:
        raise fail(Problem("unreadable", str(path), f"image {err}")) from None


def image_file_shape(path: PathLike) -> tuple[int, int]:
    """(H, W) of an image file as ``read_rgb`` returns it, from the header: no RGB copy is made."""
    try:
        with open_image(path) as img:
            width, height = img.size
            # EXIF orientations 5-8 are quarter turns: read_image swaps the sides
            turned = img.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8)
    except BadInputError as err:
        raise fail(Problem("unreadable", str(path), f"image {err}")) from None
    return (width, height) if turned else (height, width)


class SegDataset(torch.utils.data.Dataset):
    """Image/mask pairs read raw (uint8 HxWx3, int64 HxW labels) and checked; ``transform`` is applied last.

    ``masks`` holds one reference per image (a mask file path, or what ``mask_reader`` understands).
    """

    def __init__(self, images: Sequence[Path], masks: Sequence[Any], *, classes: Sequence[str],
                 ignore_index: int = 255, label_map: Optional[Mapping[int, int]] = None,
                 mask_reader: Callable[[Any], np.ndarray] = read_mask,
                 transform: Optional[Transform] = None):
        if len(images) != len(masks):
            raise ValueError(f"{len(images)} images but {len(masks)} masks")
        self.images = list(images)
        self.masks = list(masks)
        self.classes = list(classes)
        self.ignore_index = ignore_index
        self.label_map = dict(label_map) if label_map else None
        self.mask_reader = mask_reader
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> list[str]:
        """File stems, in dataset order."""
        return [stem(str(p)) for p in self.images]

    def read_image(self, i: int) -> np.ndarray:
        """Image ``i`` as RGB uint8 HxWx3 (EXIF orientation and modes handled by ``io.read_image``)."""
        return read_rgb(self.images[i])

    def read_mask(self, i: int) -> np.ndarray:
        """Mask ``i`` as int64 HxW class indices (label map applied, labels checked; image not read)."""
        mask, problems = self._check(i, self.mask_reader(self.masks[i]))
        if problems:
            raise fail(problems[0])
        return mask

    def image_shape(self, i: int) -> tuple[int, int]:
        """(H, W) of image ``i`` as ``read_image`` would return it; decodes the file but skips the RGB copy."""
        return image_file_shape(self.images[i])

    def inspect(self, i: int) -> tuple[Optional[np.ndarray], list[Problem]]:
        """(int64 mask or None, every problem of sample ``i``); never raises for bad data."""
        shape = None
        problems: list[Problem] = []
        try:
            shape = self.image_shape(i)
        except DataError as err:
            problems.append(err.problem)
        try:
            raw = self.mask_reader(self.masks[i])
        except DataError as err:
            return None, [*problems, err.problem]
        mask, found = self._check(i, raw, shape)
        return mask, [*problems, *found]

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw sample ``i``: (uint8 HxWx3 image, int64 HxW mask); raises DataError on its first problem."""
        image = self.read_image(i)
        mask, problems = self._check(i, self.mask_reader(self.masks[i]), image.shape)
        if problems:
            raise fail(problems[0])
        return image, mask

    def __getitem__(self, i: int) -> Any:
        image, mask = self.read(i)
        return self.transform(image, mask) if self.transform is not None else (image, mask)

    def with_transform(self, transform: Optional[Transform]) -> "SegDataset":
        """A copy of this dataset (same files) that applies ``transform(image, mask)`` to each item."""
        clone = copy.copy(self)
        clone.transform = transform
        return clone

    def _check(self, i: int, raw: np.ndarray,
               image_shape: Optional[Sequence[int]] = None) -> tuple[Optional[np.ndarray], list[Problem]]:
        return check_mask(raw, name=str(self.masks[i]), num_classes=self.num_classes,
                          ignore_index=self.ignore_index, label_map=self.label_map,
                          image_name=str(self.images[i]), image_shape=image_shape)


@dataclass
class DataSplits:
    """What every dataset builder returns: the train and val datasets and the class names they share."""

    train: SegDataset
    val: SegDataset
    classes: list[str]
    ignore_index: int = 255

    def __iter__(self) -> Iterator[SegDataset]:
        """``train, val = build_folder(...)`` works too."""
        return iter((self.train, self.val))

    def with_transforms(self, train: Optional[Transform], val: Optional[Transform]) -> "DataSplits":
        """A copy whose splits apply ``train`` / ``val`` to each item."""
        return DataSplits(self.train.with_transform(train), self.val.with_transform(val),
                          self.classes, self.ignore_index)


def check_classes(classes: Optional[Sequence[str]], ignore_index: int) -> list[str]:
    """The class names as a list; ConfigError when missing, duplicated or colliding with the ignore index."""
    if not classes or isinstance(classes, str) or not all(isinstance(c, str) for c in classes):
        raise ConfigError(f"classes: expected a list of class names, got {classes!r}")
    dupes = sorted({c for c in classes if list(classes).count(c) > 1})
    if dupes:
        raise ConfigError(f"classes: duplicate names {', '.join(dupes)}")
    if 0 <= ignore_index < len(classes):
        raise ConfigError(f"ignore_index {ignore_index} is also the index of class '{classes[ignore_index]}'; "
                          f"use a value outside [0, {len(classes)}), e.g. 255")
    return list(classes)


def check_label_map(label_map: Optional[Mapping[Any, Any]]) -> Optional[dict[int, int]]:
    """``label_map`` as {int: int}; ConfigError for anything else."""
    if label_map is None:
        return None
    if not isinstance(label_map, Mapping):
        raise ConfigError(f"label_map: expected a mapping of source value -> label, got {label_map!r}")
    for key, value in label_map.items():
        for v in (key, value):
            if not isinstance(v, int) or isinstance(v, bool):
                raise ConfigError(f"label_map: expected integers, got {key!r}: {value!r}")
    return dict(label_map)


def make_splits(images: Sequence[Path], masks: Sequence[Any], train: Sequence[int], val: Sequence[int], *,
                classes: Sequence[str], ignore_index: int, label_map: Optional[Mapping[int, int]],
                where: str, mask_reader: Callable[[Any], np.ndarray] = read_mask) -> DataSplits:
    """Wrap the chosen indices of ``images``/``masks`` as train and val SegDatasets; an empty split is a problem."""
    report([Problem("empty_split", where, (
        f"{where}: the {side} split is empty ({len(train)} train, {len(val)} val images); "
        "check val_ratio, val_groups or the list files")) for side, idx in (("train", train), ("val", val))
        if not idx])

    def subset(idx: Sequence[int]) -> SegDataset:
        return SegDataset([images[i] for i in idx], [masks[i] for i in idx], classes=classes,
                          ignore_index=ignore_index, label_map=label_map, mask_reader=mask_reader)

    return DataSplits(subset(train), subset(val), list(classes), ignore_index)


def find_folder(root: Path, name: Union[str, os.PathLike], what: str) -> Path:
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


def build_folder(root: PathLike, *, classes: Sequence[str], images: str = "images", masks: str = "masks",
                 mask_suffix: str = "", ignore_index: int = 255,
                 label_map: Optional[Mapping[int, int]] = None, split: Optional[str] = None,
                 val_ratio: float = 0.2, seed: int = 0, val_groups: Optional[Sequence[str]] = None,
                 group_regex: Optional[str] = None, train_list: Optional[PathLike] = None,
                 val_list: Optional[PathLike] = None) -> DataSplits:
    """An images folder and a masks folder under ``root``, paired by file name -> DataSplits.

    Masks are single-channel PNGs of class indices named like their image (plus ``mask_suffix``).
    ``classes`` names the classes in index order; ``label_map`` ({src: dst}) rewrites mask values
    first, e.g. ``{11: 255}`` turns CamVid's void into the ignore index. The split: ``val_ratio`` +
    ``seed``; ``train_list`` / ``val_list`` files of names; or ``group_regex`` (its first group is the
    key, e.g. ``'^(\\w+?)_'``) with ``val_groups`` or ``val_ratio`` over groups. Example (CamVid)::

        build_folder("CamVid", images="train", masks="trainannot", classes=[...11 names...],
                     label_map={11: 255}, group_regex=r"^(\\w+?)_", val_groups=["0016E5"])
    """
    root = Path(root)
    classes = check_classes(classes, ignore_index)
    label_map = check_label_map(label_map)
    image_dir, mask_dir = find_folder(root, images, "images"), find_folder(root, masks, "masks")
    image_files = list_files(image_dir)
    if not image_files:
        raise fail(Problem("missing_image", str(image_dir),
                           f"images folder {image_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)})"))
    index_by_stem(image_files)  # only to refuse ambiguous image names
    train, val = split_names([p.name for p in image_files], split=split, val_ratio=val_ratio, seed=seed,
                             val_groups=val_groups, group_regex=group_regex, train_list=train_list,
                             val_list=val_list, root=root)
    mask_files = index_by_stem(list_files(mask_dir), mask_suffix)
    masks_of = [mask_files.get(stem(p.name)) for p in image_files]
    problems = [Problem("missing_mask", str(image_files[i]), (
        f"image {image_files[i]}: missing mask {mask_dir / (stem(image_files[i].name) + mask_suffix)}.png "
        f"(no file of that name in {mask_dir})")) for i in sorted({*train, *val}) if masks_of[i] is None]
    problems += [Problem("lossy_mask", str(masks_of[i]), (
        f"mask {masks_of[i]} is a JPEG: lossy compression changes class indices along edges; "
        "save masks as PNG")) for i in sorted({*train, *val})
        if masks_of[i] is not None and masks_of[i].suffix.lower() in (".jpg", ".jpeg")]
    report(problems)
    bad = {i for i, m in enumerate(masks_of) if m is None or m.suffix.lower() in (".jpg", ".jpeg")}
    return make_splits(image_files, masks_of, [i for i in train if i not in bad],
                       [i for i in val if i not in bad], classes=classes, ignore_index=ignore_index,
                       label_map=label_map, where=str(root))
