"""The ``imagefolder`` format: one folder per class (torchvision's ``ImageFolder`` layout) -> labelled images.

Real folders are messy, so every file is looked at before training: a file that is not a photo (a GIF
placeholder, a 0-byte or text file, a truncated JPEG) is an error naming the file; a CMYK or 16-bit image
(converted to 8-bit RGB when read) and a name with spaces are warnings. ``--check-data`` lists them all;
training stops before it starts, or with ``skip_bad: true`` leaves the bad files out and says how many.
"""
from __future__ import annotations

import copy
import os
import random
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch.utils.data
from PIL import Image, UnidentifiedImageError

from ..errors import ConfigError, suggest
from .checks import Problem, fail, report
from .folder import DataSplits, read_rgb
from .split import PathLike, SPLITS, _check_ratio, _n_val, read_list

IGNORE_INDEX = -100  # never a class index: image labels have no ignore value (CrossEntropyLoss' default)
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")

LabelTransform = Callable[[np.ndarray, int], Any]


class ImageFolderDataset(torch.utils.data.Dataset):
    """(uint8 HxWx3 image, int label) per file; ``transform(image, label)`` is applied last."""

    def __init__(self, files: Sequence[Path], labels: Sequence[int], classes: Sequence[str],
                 root: Optional[Path] = None, transform: Optional[LabelTransform] = None) -> None:
        self.files, self.labels, self.classes = list(files), [int(v) for v in labels], list(classes)
        self.root, self.transform = root, transform
        self.ignore_index = IGNORE_INDEX

    def __len__(self) -> int:
        return len(self.files)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> list[str]:
        """Paths relative to the root (``ants/0013035.jpg``), in dataset order."""
        return [_relative(p, self.root) for p in self.files]

    def read(self, i: int) -> tuple[np.ndarray, int]:
        """Raw item ``i``: (RGB uint8 HxWx3, label); a DataError names the file."""
        return read_rgb(self.files[i]), self.labels[i]

    def __getitem__(self, i: int) -> Any:
        image, label = self.read(i)
        return self.transform(image, label) if self.transform is not None else (image, label)

    def inspect(self, i: int) -> tuple[Optional[np.ndarray], list[Problem]]:
        """(label as a 0-d array, or None when unusable; every problem of file ``i``) after a full decode;
        never raises for bad data (``checks.check_dataset`` calls it for every file)."""
        problems = check_image(self.files[i], decode=True)
        ok = not any(p.severity == "error" for p in problems)
        return (np.array(self.labels[i]) if ok else None), problems

    def with_transform(self, transform: Optional[LabelTransform]) -> "ImageFolderDataset":
        clone = copy.copy(self)
        clone.transform = transform
        return clone


_SKIP_REPORTED: set[tuple[str, int]] = set()  # said once per process

def _relative(path: Path, root: Optional[Path]) -> str:
    try:
        return path.relative_to(root).as_posix() if root is not None else path.name
    except ValueError:
        return str(path)


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


def _scan(files: Sequence[Path], decode: bool) -> list[list[Problem]]:
    # Threads suffice: decoding releases the GIL.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda p: check_image(p, decode), files))


def _class_folders(root: Path, classes: Union[Sequence[str], Mapping[str, str], None]
                   ) -> tuple[list[str], list[str]]:
    """(folder names, class names) in label order: all sub-folders sorted (torchvision's order), or those
    ``classes`` lists (its order), or ``classes`` as {folder: class name}."""
    if not root.is_dir():
        raise fail(Problem("missing_path", str(root), f"data root {root}: no such folder"))
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is None:
        folders, names = found, found
    elif isinstance(classes, Mapping):
        folders, names = [str(k) for k in classes], [str(v) for v in classes.values()]
    elif isinstance(classes, str) or not all(isinstance(c, str) for c in classes):
        raise ConfigError(f"data.classes: expected a list of class folder names or a mapping "
                          f"{{folder: class name}}, got {classes!r}")
    else:
        folders, names = list(classes), list(classes)
    for folder in folders:
        if folder not in found:
            raise fail(Problem("missing_path", str(root / folder), (
                f"class folder {root / folder}: no such folder{suggest(folder, found)}; "
                f"folders in {root}: {', '.join(found) or 'none'}")))
    if len(set(names)) != len(names) or len(set(folders)) != len(folders):
        raise ConfigError(f"data.classes: duplicate names in {classes!r}")
    if len(folders) < 2:
        raise ConfigError(f"data: {root} needs at least two class folders, found {', '.join(found) or 'none'}")
    return folders, names


def _list_files(folder: Path) -> list[Path]:
    """Every file in a class folder (recursively, as ImageFolder), hidden ones skipped; files with other
    extensions are kept so that the checks can name them."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(folder).parts))


def _split(names: Sequence[str], labels: Sequence[int], split: Optional[str], val_ratio: float, seed: int,
           train_list: Optional[PathLike], val_list: Optional[PathLike], root: Path
           ) -> tuple[list[int], list[int]]:
    """Indices in train and val: per class by ``val_ratio`` + ``seed`` (stratified), by list files of
    relative paths, or ``all`` (every file in val, to score a folder)."""
    mode = split or ("list" if train_list is not None or val_list is not None else "ratio")
    if mode not in ("ratio", "list", "all"):
        raise ConfigError(f"data.split: imagefolder splits by 'ratio', 'list' or 'all', got {mode!r} "
                          f"(of {', '.join(SPLITS)})")
    everything = list(range(len(names)))
    if mode == "all":
        return everything, everything
    if mode == "list":
        if train_list is None and val_list is None:
            raise ConfigError("data.split: list needs train_list, val_list or both")
        index = {}
        for i, name in enumerate(names):
            index[name] = index[os.path.splitext(name)[0]] = i
        chosen: dict[str, set[int]] = {}
        problems = []
        for side, listed in (("train", train_list), ("val", val_list)):
            if listed is None:
                continue
            path = Path(root, listed)
            if not path.is_file():
                raise fail(Problem("bad_list", str(path), f"list file {path}: no such file"))
            # Whole lines (not first tokens): class folders and file names may hold spaces.
            entries = [line.strip() for line in path.read_text().splitlines()
                       if line.strip() and not line.strip().startswith("#")]
            missing = [e for e in entries if e not in index]
            if missing:
                problems.append(Problem("bad_list", str(path), (
                    f"list file {path}: {len(missing)} of {len(entries)} entries name no image (write "
                    f"paths relative to the root, e.g. {names[0]}): " + ", ".join(missing[:5]))))
            chosen[side] = {index[e] for e in entries if e in index}
        report(problems)
        rest = set(everything) - chosen.get("train", set()) - chosen.get("val", set())
        return sorted(chosen.get("train", rest)), sorted(chosen.get("val", rest))
    _check_ratio(val_ratio)
    train, val = [], []
    for label in sorted(set(labels)):
        # Sorted by name first: the listing order must not change the split.
        members = sorted((i for i in everything if labels[i] == label), key=lambda i: names[i])
        random.Random(seed).shuffle(members)
        n_val = _n_val(len(members), val_ratio)
        val += members[:n_val]
        train += members[n_val:]
    return sorted(train), sorted(val)


def build_imagefolder(root: PathLike, *, classes: Union[Sequence[str], Mapping[str, str], None] = None,
                      split: Optional[str] = None, val_ratio: float = 0.2, seed: int = 0,
                      train_list: Optional[PathLike] = None, val_list: Optional[PathLike] = None,
                      skip_bad: bool = False) -> DataSplits:
    """``root/<class>/<image>`` -> DataSplits of labelled images (a stratified val split by default).

    ``classes``: the class folders to use, in label order (default: every sub-folder, sorted), or
    ``{folder: class name}`` (e.g. ``{ants: ant, bees: bee}`` to match ImageNet's names for class-aware
    init). Example (PyTorch's ants-and-bees tutorial data, 20% of train held out)::

        build_imagefolder("hymenoptera/train", val_ratio=0.2, seed=0, skip_bad=True)
    """
    root = Path(root)
    folders, names = _class_folders(root, classes)
    files: list[Path] = []
    labels: list[int] = []
    for label, folder in enumerate(folders):
        found = _list_files(root / folder)
        files += found
        labels += [label] * len(found)
    # Header checks always (fast); full decodes when bad files are to be skipped, so that none is left.
    found_problems = _scan(files, decode=skip_bad)
    bad = {i for i, ps in enumerate(found_problems) if any(p.severity == "error" for p in ps)}
    errors = [p for i in sorted(bad) for p in found_problems[i] if p.severity == "error"]
    if skip_bad:
        if bad and (str(root), len(bad)) not in _SKIP_REPORTED:
            _SKIP_REPORTED.add((str(root), len(bad)))  # the data check and the Trainer each build the dataset
            print(f"data: skipped {len(bad)} bad file(s) of {len(files)} (data.skip_bad: true): "
                  + "; ".join(str(p) for p in errors[:3]) + ("; ..." if len(errors) > 3 else ""),
                  file=sys.stderr, flush=True)
    elif errors:
        report(errors)  # raises the first (naming the rest), or records them all for --check-data
    keep = [i for i in range(len(files)) if i not in bad]
    files, labels = [files[i] for i in keep], [labels[i] for i in keep]
    rel = [_relative(p, root) for p in files]
    train, val = _split(rel, labels, split, val_ratio, seed, train_list, val_list, root)
    report([Problem("empty_split", str(root), (
        f"{root}: the {side} split is empty ({len(train)} train, {len(val)} val images); check val_ratio "
        "or the list files")) for side, idx in (("train", train), ("val", val)) if not idx])

    def subset(idx: Sequence[int]) -> ImageFolderDataset:
        return ImageFolderDataset([files[i] for i in idx], [labels[i] for i in idx], names, root)

    return DataSplits(subset(train), subset(val), names, IGNORE_INDEX)
