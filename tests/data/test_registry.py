"""The registry: every task's formats by name, a data block mapped to its builder (typos refused), and
one contract every format's builder keeps (over ``synthetic.formats.FAKES``)."""
from __future__ import annotations

import numpy as np
import pytest
from synthetic.folders import CLASSES, make_folder, sequence_names
from synthetic.formats import FAKES

from seg_transfer.data import DATASETS, DataSplits, build_dataset
from seg_transfer.errors import ConfigError

# pycocotools' own decode trips numpy 2's __array__ deprecation (the coco fakes); nothing to change here.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

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


# ------------------------------------------------------------------------- the contract, format by format
def test_every_registered_format_has_a_fake():
    assert set(FAKES) == set(DATASETS), "a new format needs a fake in tests/synthetic/formats.py"


@pytest.mark.parametrize("fmt", sorted(DATASETS))
def test_every_format_keeps_the_dataset_contract(fmt, tmp_path):
    """What the engine relies on from any builder: DataSplits with class names, both splits non-empty,
    ``read``/``__getitem__`` giving (uint8 HxWx3 image, the task's target) with labels inside the class
    list, ``names`` (where a format has them) one per item, ``with_transform`` and ``take`` returning
    datasets over the same files, and ``inspect`` finding no problem in valid data."""
    block, task = FAKES[fmt](tmp_path)
    splits = build_dataset(block)
    assert isinstance(splits, DataSplits) and splits.classes and all(isinstance(c, str) for c in splits.classes)
    assert len(splits.train) > 0 and len(splits.val) > 0
    for split in splits:
        assert split.classes == splits.classes and split.ignore_index == splits.ignore_index
        names = getattr(split, "names", None)
        if names is not None:
            assert len(names) == len(split) and len(set(names)) == len(names)
        for i in range(len(split)):
            image, target = split.read(i)
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
            _check_target(task, image, target, splits)
            labels, problems = split.inspect(i)
            assert labels is not None and not problems, (fmt, i, problems)
        tagged = split.with_transform(lambda img, tgt: ("seen", img.shape))
        assert tagged[0] == ("seen", split.read(0)[0].shape) and split.transform is None
        first = split.take([len(split) - 1])
        assert len(first) == 1 and np.array_equal(first.read(0)[0], split.read(len(split) - 1)[0])


def _check_target(task: str, image, target, splits) -> None:
    h, w = image.shape[:2]
    if task == "segmentation":
        assert target.shape == (h, w) and np.issubdtype(target.dtype, np.integer)
        values = set(np.unique(target).tolist()) - {splits.ignore_index}
        assert values <= set(range(len(splits.classes)))
    elif task == "classification":
        assert int(target) in range(len(splits.classes))
    else:
        boxes, labels = np.asarray(target["boxes"]), np.asarray(target["labels"])
        assert boxes.shape == (len(labels), 4) and len(labels) > 0
        assert (boxes[:, 0] < boxes[:, 2]).all() and (boxes[:, 1] < boxes[:, 3]).all()
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert set(labels.tolist()) <= set(range(1, len(splits.classes)))  # 0 is the background
