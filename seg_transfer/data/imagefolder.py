"""The ``imagefolder`` format: one folder per class (torchvision's ``ImageFolder`` layout) -> labelled images.

Every file is checked before training (``classification.check_image``); ``--check-data`` lists every
problem; training stops before it starts, or with ``skip_bad: true`` leaves the bad files out and says how many.
"""
from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

from ..errors import ConfigError, suggest
from .classification import IGNORE_INDEX, ImageFolderDataset, check_image, relative_name
from .common import DataSplits, PathLike, scan
from .problems import Problem, fail, report
from .split import SPLITS, check_ratio, n_val, report_empty

_SKIP_REPORTED: set[tuple[str, int]] = set()  # said once per process


def _scan(files: Sequence[Path], decode: bool) -> list[list[Problem]]:
    return scan(lambda p: check_image(p, decode), files, "checking images")


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
    check_ratio(val_ratio)
    train, val = [], []
    for label in sorted(set(labels)):
        # Sorted by name first: the listing order must not change the split.
        members = sorted((i for i in everything if labels[i] == label), key=lambda i: names[i])
        random.Random(seed).shuffle(members)
        held_out = n_val(len(members), val_ratio)
        val += members[:held_out]
        train += members[held_out:]
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
    rel = [relative_name(p, root) for p in files]
    train, val = _split(rel, labels, split, val_ratio, seed, train_list, val_list, root)
    report_empty(train, val, str(root), "val_ratio or the list files")

    def subset(idx: Sequence[int]) -> ImageFolderDataset:
        split = ImageFolderDataset([files[i] for i in idx], [labels[i] for i in idx], names, root)
        split.decoded = skip_bad  # every file was decoded above: the data check need not decode it again
        return split

    return DataSplits(subset(train), subset(val), names, IGNORE_INDEX)
