"""The registry: every task's formats by name, and a data block mapped to its builder (typos refused)."""
from __future__ import annotations

import pytest

from seg_transfer.data import DATASETS, build_dataset
from seg_transfer.errors import ConfigError

from . import CLASSES, make_folder, sequence_names

NAMES = sequence_names({"seqA": 3, "seqB": 3, "seqC": 4})


@pytest.fixture
def root(tmp_path):
    make_folder(tmp_path, NAMES, images="train", masks="trainannot")
    return tmp_path


def test_registry_has_every_task_s_formats():
    assert {"folder", "voc", "coco"} <= set(DATASETS)  # segmentation
    assert {"voc_boxes", "coco_boxes", "instance_masks"} <= set(DATASETS)  # detection
    assert "imagefolder" in DATASETS  # classification


def test_build_dataset_maps_a_data_block_and_refuses_typos(root):
    block = {"format": "folder", "root": str(root), "images": "train", "masks": "trainannot",
             "classes": CLASSES, "group_regex": r"^(\w+?)_", "val_groups": ["seqA"]}
    assert len(build_dataset(block).val) == 3
    with pytest.raises(ConfigError, match=r"unknown key 'data.val_group' \(did you mean 'data.val_groups'\?\)"):
        build_dataset({**block, "val_group": ["seqA"]})
    with pytest.raises(ConfigError, match=r"unknown format 'folders' \(did you mean 'folder'\?\)"):
        build_dataset({**block, "format": "folders"})
    with pytest.raises(ConfigError, match="format folder needs classes"):
        build_dataset({k: v for k, v in block.items() if k != "classes"})
