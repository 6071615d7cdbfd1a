"""Train/val split of a list of file names: by ratio with a seed, by list files, or by whole groups."""
from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Optional, Sequence

from ..errors import ConfigError, unknown
from .common import PathLike, stem
from .problems import Problem, fail, report

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
    if split is None:
        split = next((used_by[k] for k in given), "ratio")
    if split not in SPLITS:
        raise unknown("split", split, SPLITS, where="split")
    for key in given:
        if used_by[key] != split:
            raise ConfigError(f"{key} is only used with split: {used_by[key]} (split is {split})")
    if split == "group" and options["group_regex"] is None:
        raise ConfigError(r"split: group needs group_regex, e.g. '^(\w+?)_' for CamVid's sequence prefixes")
    if split == "list" and options["train_list"] is None and options["val_list"] is None:
        raise ConfigError("split: list needs train_list, val_list or both")
    return split


def check_ratio(val_ratio: float) -> None:
    """ConfigError unless ``val_ratio`` lies strictly between 0 and 1."""
    if not 0.0 < val_ratio < 1.0:
        raise ConfigError(f"val_ratio: expected a fraction between 0 and 1 (exclusive), got {val_ratio!r}")


def n_val(n: int, val_ratio: float) -> int:
    """How many of ``n`` items go to val."""
    # At least one of each side whenever there are two items, so a small dataset still validates.
    return min(max(round(n * val_ratio), 1), n - 1) if n >= 2 else 0


def _by_group(names: Sequence[str], regex: str, val_groups: Optional[Sequence[str]],
              val_ratio: float, seed: int) -> tuple[list[int], list[int]]:
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
    problems = []
    for side, listed in (("train", train_list), ("val", val_list)):
        if listed is None:
            continue
        path = Path(root, listed) if root is not None else Path(listed)
        entries = read_list(path)
        missing = [s for s in entries if s not in index]
        if missing:
            problems.append(Problem("bad_list", str(path), (
                f"list file {path}: {len(missing)} of {len(entries)} names have no image: "
                + ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else ""))))
        chosen[side] = sorted({index[s] for s in entries if s in index})
    if "train" in chosen and "val" in chosen:
        both = sorted(set(chosen["train"]) & set(chosen["val"]))
        if both:
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
