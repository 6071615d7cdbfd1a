"""The voc_boxes format: VOC XML boxes and ImageSets lists, images without objects, config errors, BCCD."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from synthetic.detection import H, W, voc, voc_tree, voc_xml

from seg_transfer.data import build_dataset, check_dataset
from seg_transfer.data.detection import BACKGROUND
from seg_transfer.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def test_voc_boxes_reads_boxes_labels_and_lists(tmp_path):
    root = voc_tree(tmp_path, {"a": voc_xml([("dog", (1, 2, 30, 20)), ("cat", (10, 5, 59, 39))]),
                               "b": voc_xml([("cat", (0, 0, 60, 40))])})
    splits = voc(root)
    assert splits.classes == [BACKGROUND, "cat", "dog"]
    assert (len(splits.train), len(splits.val)) == (1, 1)
    img, target = splits.train[0]
    assert img.shape == (H, W, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(target["boxes"], [[1, 2, 30, 20], [10, 5, 59, 39]])
    assert target["boxes"].dtype == np.float32
    assert target["labels"].tolist() == [2, 1] and target["iscrowd"].tolist() == [0, 0]
    assert "masks" not in target and not splits.train.has_masks


def test_voc_boxes_images_without_objects_are_allowed(tmp_path):
    root = voc_tree(tmp_path, {"a": voc_xml([]), "b": None, "c": voc_xml([("dog", (1, 1, 9, 9)), ("cat", (2, 2, 8, 8))]),
                               "d": voc_xml([("cat", (1, 1, 5, 5))])}, train=["a", "b", "d"], val=["c"])
    splits = voc(root)
    for i in range(2):
        _, target = splits.train[i]
        assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert check_dataset(splits) == []


def test_voc_boxes_ratio_split_ignores_lists(tmp_path):
    root = voc_tree(tmp_path, {f"n{i}": voc_xml([("cat", (1, 1, 9, 9))]) for i in range(10)})
    splits = voc(root, split="ratio", val_ratio=0.3, seed=1)
    assert (len(splits.train), len(splits.val)) == (7, 3)


def test_voc_boxes_config_errors(tmp_path):
    root = voc_tree(tmp_path, {"a": voc_xml([]), "b": voc_xml([])})
    with pytest.raises(ConfigError, match="bad_boxes"):
        voc(root, bad_boxes="skip")
    with pytest.raises(ConfigError, match="duplicate"):
        build_dataset({"format": "voc_boxes", "root": str(root), "classes": ["cat", "cat"]})
    with pytest.raises(ConfigError, match="classes"):
        build_dataset({"format": "voc_boxes", "root": str(root), "classes": "cat"})


def test_bccd_reads_and_its_two_degenerate_boxes_are_reported():
    root = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "BCCD_Dataset" / "BCCD"
    if not root.is_dir():
        pytest.skip(f"{root} not available (../shared missing)")
    cfg = {"format": "voc_boxes", "root": str(root), "classes": ["RBC", "WBC", "Platelets"]}
    splits = build_dataset({**cfg, "bad_boxes": "drop"})
    assert (len(splits.train), len(splits.val)) == (205, 87)
    problems = check_dataset(cfg)
    assert sorted(Path(p.path).name for p in problems) == ["BloodImage_00338.xml", "BloodImage_00343.xml"]
    assert all(p.kind == "bad_box" and "zero width" in p.message for p in problems)
