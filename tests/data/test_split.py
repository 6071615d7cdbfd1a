"""Train/val splits: by ratio (deterministic, disjoint), by list files, by whole groups; K folds."""
from __future__ import annotations

import pytest
from synthetic.folders import sequence_names

from seg_transfer.data.problems import DataError
from seg_transfer.data.split import group_keys, kfold, split_names
from seg_transfer.errors import ConfigError

NAMES = [f"{n}.png" for n in sequence_names({"0001TP": 6, "0006R0": 10, "0016E5": 20})]
REGEX = r"^(\w+?)_"


def picked(indices):
    return {NAMES[i] for i in indices}


def test_ratio_split_is_deterministic_disjoint_and_complete():
    train, val = split_names(NAMES, val_ratio=0.25, seed=3)
    assert len(val) == 9 and len(train) == 27
    assert not set(train) & set(val) and set(train) | set(val) == set(range(len(NAMES)))
    assert split_names(NAMES, val_ratio=0.25, seed=3) == (train, val)
    # The listing order must not matter: the same names in reverse give the same val files.
    reversed_names = NAMES[::-1]
    _, val_rev = split_names(reversed_names, val_ratio=0.25, seed=3)
    assert {reversed_names[i] for i in val_rev} == picked(val)
    assert picked(split_names(NAMES, val_ratio=0.25, seed=4)[1]) != picked(val)


def test_ratio_split_keeps_one_item_each_side_and_checks_the_ratio():
    train, val = split_names(["a.png", "b.png"], val_ratio=0.01)
    assert len(train) == len(val) == 1
    with pytest.raises(ConfigError, match="val_ratio"):
        split_names(NAMES, val_ratio=1.5)


def test_group_split_with_named_val_groups():
    train, val = split_names(NAMES, group_regex=REGEX, val_groups=["0016E5"])
    assert all(n.startswith("0016E5") for n in picked(val)) and len(val) == 20
    assert not any(n.startswith("0016E5") for n in picked(train)) and len(train) == 16


def test_group_split_by_ratio_moves_whole_groups():
    for seed in range(5):
        train, val = split_names(NAMES, group_regex=REGEX, val_ratio=0.3, seed=seed)
        val_groups = {n.split("_")[0] for n in picked(val)}
        train_groups = {n.split("_")[0] for n in picked(train)}
        assert len(val_groups) == 1 and not val_groups & train_groups
        assert split_names(NAMES, group_regex=REGEX, val_ratio=0.3, seed=seed) == (train, val)


def test_group_split_errors_name_the_problem():
    with pytest.raises(ConfigError, match=r"unknown group '0016E6' \(did you mean '0016E5'\?\)"):
        split_names(NAMES, group_regex=REGEX, val_groups=["0016E6"])
    with pytest.raises(ConfigError, match="does not match file name 'other.png'"):
        split_names([*NAMES, "other.png"], group_regex=REGEX)
    with pytest.raises(ConfigError, match="capturing group"):
        split_names(NAMES, group_regex=r"^\w+_")
    with pytest.raises(ConfigError, match=r"data.val_groups is only used with data.split: group, but the split "
                                          r"is ratio \(data.split: ratio\); set data.val_groups: null"):
        split_names(NAMES, split="ratio", val_groups=["0016E5"])
    with pytest.raises(ConfigError, match="needs group_regex"):
        split_names(NAMES, split="group")
    with pytest.raises(ConfigError, match=r"unknown split 'groups' \(did you mean 'group'\?\)"):
        split_names(NAMES, split="groups")


def test_list_split_reads_names_and_pair_lines(tmp_path):
    (tmp_path / "val.txt").write_text("# held out\n0006R0_000000\n\n0006R0_000030\n")
    # CamVid's train.txt style: "image mask" path pairs; the first token's stem is the name.
    (tmp_path / "train.txt").write_text("/x/train/0001TP_000000.png /x/trainannot/0001TP_000000.png\n")
    train, val = split_names(NAMES, val_list="val.txt", root=tmp_path)
    assert picked(val) == {"0006R0_000000.png", "0006R0_000030.png"}
    assert len(train) == len(NAMES) - 2 and not set(train) & set(val)
    train, val = split_names(NAMES, train_list="train.txt", val_list="val.txt", root=tmp_path)
    assert picked(train) == {"0001TP_000000.png"} and len(val) == 2


def test_list_files_under_a_group_config_name_the_keys_to_set_and_why(tmp_path):
    """CamVid's config picks the group split with group_regex + val_groups; adding list files names every
    key (dotted, as in the YAML) and says the split was chosen by those keys, not by a data.split."""
    (tmp_path / "train.txt").write_text("0001TP_000000\n")
    (tmp_path / "val.txt").write_text("0006R0_000000\n")
    group = {"group_regex": REGEX, "val_groups": ["0016E5"]}
    with pytest.raises(ConfigError) as err:
        split_names(NAMES, train_list="train.txt", root=tmp_path, **group)
    assert str(err.value) == (
        "data.train_list is only used with data.split: list, but the split is group (data.split is not set, "
        "so data.val_groups, data.group_regex chose it); to use data.train_list set data.split: list, "
        "data.val_groups: null, data.group_regex: null; or set data.train_list: null")
    # data.split: list alone: the group keys are named in turn
    with pytest.raises(ConfigError, match=r"^data.val_groups, data.group_regex are only used with data.split: "
                                          r"group, but the split is list \(data.split: list\); set "
                                          r"data.val_groups: null, data.group_regex: null, or change data.split$"):
        split_names(NAMES, split="list", train_list="train.txt", root=tmp_path, **group)
    # what the message says to set works
    train, val = split_names(NAMES, split="list", train_list="train.txt", val_list="val.txt", root=tmp_path,
                             group_regex=None, val_groups=None)
    assert picked(train) == {"0001TP_000000.png"} and picked(val) == {"0006R0_000000.png"}


def test_limit_items_is_a_fixed_seeded_subset():
    from seg_transfer.data.split import limit_items

    items = list(range(10, 40))
    kept = limit_items(items, 7)
    assert len(kept) == 7 and kept == sorted(kept) and set(kept) <= set(items)
    assert limit_items(items, 7) == kept and limit_items(items, 7, seed=1) != kept  # the seed decides, nothing else
    assert limit_items(items, None) == items == limit_items(items, 30) == limit_items(items, 99)
    with pytest.raises(ConfigError, match="--limit-train: expected a positive number of items, got 0"):
        limit_items(items, 0)


def test_list_split_reports_unknown_names_and_missing_files(tmp_path):
    (tmp_path / "val.txt").write_text("0006R0_000000\nnot_there\n")
    with pytest.raises(DataError, match=r"val.txt: 1 of 2 names have no image: not_there"):
        split_names(NAMES, val_list="val.txt", root=tmp_path)
    with pytest.raises(DataError, match=r"list file .*nope.txt: no such file"):
        split_names(NAMES, val_list="nope.txt", root=tmp_path)


# ---------------------------------------------------------------------------------------------- K folds
def test_kfold_is_disjoint_covers_every_item_once_and_is_even():
    for n, k in ((36, 5), (7, 7), (10, 3)):
        folds = kfold(n, k, seed=1)
        flat = [i for f in folds for i in f]
        assert sorted(flat) == list(range(n))  # every item in exactly one fold
        assert max(map(len, folds)) - min(map(len, folds)) <= 1
    assert kfold(36, 5, seed=1) == kfold(36, 5, seed=1) != kfold(36, 5, seed=2)


def test_kfold_keeps_groups_whole_and_leaves_one_group_out():
    groups = group_keys(NAMES, REGEX)  # 6 + 10 + 20 frames of three sequences
    for k in (2, 3):
        folds = kfold(len(NAMES), k, groups=groups, seed=0)
        assert sorted(i for f in folds for i in f) == list(range(len(NAMES)))
        owner = {groups[i]: f for f, fold in enumerate(folds) for i in fold}
        assert all(owner[groups[i]] == f for f, fold in enumerate(folds) for i in fold)  # no group straddles
    # K = the number of groups: each fold is exactly one sequence
    assert sorted({groups[i] for i in f}.pop() for f in kfold(len(NAMES), 3, groups=groups)) == \
        ["0001TP", "0006R0", "0016E5"]
    assert all(len({groups[i] for i in f}) == 1 for f in kfold(len(NAMES), 3, groups=groups))
    with pytest.raises(ConfigError, match=r"--folds 4: group_regex finds only 3 groups .*--folds 3"):
        kfold(len(NAMES), 4, groups=groups)


def test_kfold_stratifies_by_label():
    labels = [0] * 30 + [1] * 12 + [2] * 4  # imbalanced
    folds = kfold(len(labels), 4, labels=labels, seed=0)
    assert sorted(i for f in folds for i in f) == list(range(len(labels)))
    for c in (0, 1, 2):
        per_fold = [sum(labels[i] == c for i in f) for f in folds]
        assert max(per_fold) - min(per_fold) <= 1, (c, per_fold)
    assert max(map(len, folds)) - min(map(len, folds)) <= 1


def test_kfold_refuses_too_few_folds_or_items():
    with pytest.raises(ConfigError, match="at least 2 folds"):
        kfold(10, 1)
    with pytest.raises(ConfigError, match="--folds 5: only 3 items"):
        kfold(3, 5)
