"""Train/val split of a list of file names: by ratio with a seed, by list files, or by whole groups;
and the K folds of cross-validation (plain, stratified by class, or by whole groups)."""
from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from ..errors import ConfigError, unknown
from .common import PathLike, dataset_images, find_folder, pair_masks, stem
from .problems import Problem, fail, report, warn

SPLITS = ("ratio", "list", "group", "all")


def split_names(names: Sequence[str], *, split: Optional[str] = None, val_ratio: float = 0.2,
                seed: int = 0, val_groups: Optional[Sequence[str]] = None,
                group_regex: Optional[str] = None, train_list: Optional[PathLike] = None,
                val_list: Optional[PathLike] = None, root: Optional[PathLike] = None
                ) -> tuple[list[int], list[int]]:
    """Indices of ``names`` (file names) in train and in val; the keyword arguments are the YAML keys.

    ``split`` is ``ratio``, ``list``, ``group`` or ``all`` (every file in val, for evaluating a folder);
    left out, it follows from the options given (list files -> list, ``group_regex`` -> group, else
    ratio). Relative list paths are read from ``root``.
    """
    mode = _mode(split, val_groups=val_groups, group_regex=group_regex,
                 train_list=train_list, val_list=val_list)
    if mode == "list":
        return _by_list(names, train_list, val_list, root)
    if mode == "all":  # score a held-out folder: every file is in val (and in train, left unused)
        everything = list(range(len(names)))
        return everything, everything
    check_ratio(val_ratio)
    if mode == "group":
        assert group_regex is not None  # _mode requires it for split: group
        return _by_group(names, group_regex, val_groups, val_ratio, seed)
    order = sorted(range(len(names)), key=lambda i: names[i])  # listing order must not change the split
    random.Random(seed).shuffle(order)
    held_out = n_val(len(order), val_ratio)
    return sorted(order[held_out:]), sorted(order[:held_out])


def _mode(split: Optional[str], **options: object) -> str:
    used_by = {"val_groups": "group", "group_regex": "group", "train_list": "list", "val_list": "list"}
    given = [key for key, value in options.items() if value is not None]
    explicit = split is not None
    if split is None:
        split = next((used_by[k] for k in given), "ratio")
    if split not in SPLITS:
        raise unknown("split", split, SPLITS, where="split")
    wrong = [key for key in given if used_by[key] != split]
    if wrong:
        raise ConfigError(_mismatch(split, explicit, given, wrong, used_by))
    if split == "group" and options["group_regex"] is None:
        raise ConfigError(r"split: group needs group_regex, e.g. '^(\w+?)_' for CamVid's sequence prefixes")
    if split == "list" and options["train_list"] is None and options["val_list"] is None:
        raise ConfigError("split: list needs train_list, val_list or both")
    return split


def _mismatch(split: str, explicit: bool, given: Sequence[str], wrong: Sequence[str],
              used_by: Mapping[str, str]) -> str:
    """The error for keys of another split: which keys, what the split is and why, and the keys to set."""
    def keys(names: Sequence[str]) -> str:
        return ", ".join(f"data.{k}" for k in names)

    def nulls(names: Sequence[str]) -> str:
        return ", ".join(f"data.{k}: null" for k in names)

    modes = sorted({used_by[k] for k in wrong})
    head = (f"{keys(wrong)} {'is' if len(wrong) == 1 else 'are'} only used with "
            f"{' or '.join(f'data.split: {m}' for m in modes)}, but the split is {split}")
    if explicit:
        return f"{head} (data.split: {split}); set {nulls(wrong)}, or change data.split"
    # data.split left out: the first split-choosing key decided it (_mode), and the others disagree
    chosen = [k for k in given if used_by[k] == split]
    why = f"data.split is not set, so {keys(chosen)} chose it"
    if len(modes) > 1:
        return f"{head} ({why}); set data.split to the split you want and the other split's keys to null"
    return (f"{head} ({why}); to use {keys(wrong)} set data.split: {modes[0]}, {nulls(chosen)}; "
            f"or set {nulls(wrong)}")


def limit_items(indices: Sequence[int], n: Optional[int], seed: int = 0) -> list[int]:
    """A fixed random subset (``--limit-train``): ``n`` of ``indices`` drawn with ``seed``, in ascending
    order; all of them when ``n`` is None or not below their number."""
    if n is not None and n < 1:
        raise ConfigError(f"--limit-train: expected a positive number of items, got {n}")
    if n is None or n >= len(indices):
        return list(indices)
    return sorted(random.Random(seed).sample(list(indices), n))


def check_ratio(val_ratio: float) -> None:
    """ConfigError unless ``val_ratio`` lies strictly between 0 and 1."""
    if not 0.0 < val_ratio < 1.0:
        raise ConfigError(f"val_ratio: expected a fraction between 0 and 1 (exclusive), got {val_ratio!r}")


def n_val(n: int, val_ratio: float) -> int:
    """How many of ``n`` items go to val."""
    # At least one of each side whenever there are two items, so a small dataset still validates.
    return min(max(round(n * val_ratio), 1), n - 1) if n >= 2 else 0


def group_keys(names: Sequence[str], regex: str) -> list[str]:
    """The group key of each file name: ``regex``'s first capturing group, searched in the base name."""
    try:
        pattern = re.compile(regex)
    except re.error as err:
        raise ConfigError(f"group_regex {regex!r}: not a valid regular expression ({err})") from None
    if pattern.groups < 1:
        raise ConfigError(f"group_regex {regex!r}: needs a (capturing group) holding the group key")
    keys = []
    for name in names:
        match = pattern.search(os.path.basename(name))
        if match is None or match.group(1) is None:
            raise ConfigError(f"group_regex {regex!r} does not match file name '{name}'")
        keys.append(match.group(1))
    return keys


def _by_group(names: Sequence[str], regex: str, val_groups: Optional[Sequence[str]],
              val_ratio: float, seed: int) -> tuple[list[int], list[int]]:
    keys = group_keys(names, regex)
    groups = sorted(set(keys))
    if val_groups is not None:
        for group in val_groups:
            if group not in groups:
                raise unknown("group", group, groups, where="val_groups")
        chosen = set(val_groups)
    else:
        shuffled = groups[:]
        random.Random(seed).shuffle(shuffled)
        chosen = set(shuffled[:n_val(len(groups), val_ratio)])
    train = [i for i, key in enumerate(keys) if key not in chosen]
    val = [i for i, key in enumerate(keys) if key in chosen]
    return train, val


def read_list(path: PathLike) -> list[str]:
    """Stems named in a list file: one per line, first token (VOC's ``name``, CamVid's ``img mask`` pairs)."""
    path = Path(path)
    if not path.is_file():
        raise fail(Problem("bad_list", str(path), f"list file {path}: no such file"))
    lines = (line.split() for line in path.read_text().splitlines())
    return [stem(tokens[0]) for tokens in lines if tokens and not tokens[0].startswith("#")]


def _by_list(names: Sequence[str], train_list: Optional[PathLike], val_list: Optional[PathLike],
             root: Optional[PathLike]) -> tuple[list[int], list[int]]:
    index = {stem(name): i for i, name in enumerate(names)}
    chosen: dict[str, list[int]] = {}
    paths: dict[str, Path] = {}
    problems = []
    for side, listed in (("train", train_list), ("val", val_list)):
        if listed is None:
            continue
        path = paths[side] = Path(root, listed) if root is not None else Path(listed)
        entries = read_list(path)
        missing = [s for s in entries if s not in index]
        if missing:
            problems.append(Problem("bad_list", str(path), (
                f"list file {path}: {len(missing)} of {len(entries)} names have no image: "
                + ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else ""))))
        chosen[side] = sorted({index[s] for s in entries if s in index})
    if "train" in chosen and "val" in chosen:
        both = sorted(set(chosen["train"]) & set(chosen["val"]))
        if both and len(both) == len(chosen["val"]):
            # Published trees do this (a val.txt copied into train.txt): train on, but say what it costs.
            val_path, train_path = paths["val"], paths["train"]
            warn([Problem("overlap", str(val_path), (
                f"list file {val_path} lies inside {train_path} (all {len(both)} val images are also train "
                "images): the val score will be optimistic, as the model trains on them; for a fair score "
                f"give disjoint lists, e.g. grep -vxFf {val_path} {train_path} > train_only.txt and set "
                "data.train_list: train_only.txt"), "warning")])
        elif both:
            problems.append(Problem("bad_list", str(val_list), (
                f"list files {train_list} and {val_list} share {len(both)} names: "
                + ", ".join(stem(names[i]) for i in both[:5]))))
    report(problems)
    rest = set(range(len(names))) - set(chosen.get("train", [])) - set(chosen.get("val", []))
    return chosen.get("train", sorted(rest)), chosen.get("val", sorted(rest))


def report_empty(train: Sequence[int], val: Sequence[int], where: str,
                 options: str = "val_ratio, val_groups or the list files") -> None:
    """A problem for each empty split (raised, or recorded by ``collecting()``); ``options`` decide the split."""
    report([Problem("empty_split", where, (
        f"{where}: the {side} split is empty ({len(train)} train, {len(val)} val images); check {options}"))
        for side, idx in (("train", train), ("val", val)) if not idx])


def kfold(n: int, k: int, *, groups: Optional[Sequence[str]] = None, labels: Optional[Sequence[int]] = None,
          seed: int = 0) -> list[list[int]]:
    """The val indices of each of ``k`` folds over ``range(n)``: disjoint, together every index once.

    With ``groups`` (one key per item) whole groups go to one fold, the largest first into the fold
    holding fewest items; ``k`` equal to the number of groups is leave-one-group-out. Else with
    ``labels`` each class is dealt over the folds in turn (stratified: per-class counts differ by at
    most one between folds). Else items are shuffled and dealt. ``seed`` decides ties and order; the
    caller gives items in a fixed order (e.g. sorted by name), so the listing order never matters.
    """
    if k < 2:
        raise ConfigError(f"--folds: cross-validation needs at least 2 folds, got {k}")
    if k > n:
        raise ConfigError(f"--folds {k}: only {n} items to split")
    rng = random.Random(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    if groups is not None:
        if len(groups) != n:
            raise ValueError(f"{len(groups)} group keys for {n} items")
        members: dict[str, list[int]] = {}
        for i, key in enumerate(groups):
            members.setdefault(key, []).append(i)
        if k > len(members):
            raise ConfigError(f"--folds {k}: group_regex finds only {len(members)} groups "
                              f"({', '.join(sorted(members)[:8])}); whole groups stay in one fold, so use "
                              f"--folds {len(members)} (leave one group out) or fewer")
        keys = sorted(members)
        rng.shuffle(keys)  # ties in size: the seed decides
        keys.sort(key=lambda g: -len(members[g]))  # stable: largest first, ties in shuffled order
        for g in keys:
            smallest = min(range(k), key=lambda f: (len(folds[f]), f))
            folds[smallest] += members[g]
        return [sorted(f) for f in folds]
    if labels is not None:
        if len(labels) != n:
            raise ValueError(f"{len(labels)} labels for {n} items")
        start = 0
        for label in sorted(set(labels)):
            same = [i for i in range(n) if labels[i] == label]
            rng.shuffle(same)
            for j, i in enumerate(same):  # dealing goes on where the last class stopped: sizes stay even
                folds[(start + j) % k].append(i)
            start += len(same)
        return [sorted(f) for f in folds]
    order = list(range(n))
    rng.shuffle(order)
    for j, i in enumerate(order):
        folds[j % k].append(i)
    return [sorted(f) for f in folds]


def split_mask_folders(root: Path, images: PathLike, masks: PathLike, mask_suffix: str, **split: Any
                       ) -> tuple[list[Path], list[int], list[int], list[Optional[Path]], list[Problem]]:
    """An images folder and a masks folder under ``root``, paired by name (masks ``<stem><mask_suffix>``)
    and split (``split_names``' keywords): (image files, train indices, val indices, each image's mask or
    None, the pairing's problems). The folder layouts of semantic and instance masks share it."""
    image_dir, mask_dir = find_folder(root, images, "images"), find_folder(root, masks, "masks")
    files = dataset_images(image_dir)
    train, val = split_names([p.name for p in files], root=root, **split)
    masks_of, problems = pair_masks(files, mask_dir, mask_suffix, {*train, *val})
    return files, train, val, masks_of, problems
