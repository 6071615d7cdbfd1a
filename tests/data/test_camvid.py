"""Real data: CamVid from ../shared (skipped when absent), split by sequence with void mapped to ignore."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from seg_transfer.data import build_dataset

CAMVID = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "CamVid"
CLASSES = ["sky", "building", "pole", "road", "pavement", "tree", "signsymbol", "fence", "car",
           "pedestrian", "bicyclist"]


@pytest.fixture(scope="module")
def camvid():
    if not (CAMVID / "train").is_dir():
        pytest.skip(f"{CAMVID} not available (../shared missing)")
    return build_dataset({"format": "folder", "root": str(CAMVID), "images": "train", "masks": "trainannot",
                          "classes": CLASSES, "label_map": {11: 255}, "group_regex": r"^(\w+?)_",
                          "val_groups": ["0016E5"]})


def test_sequence_split_holds_out_0016E5_whole(camvid):
    assert len(camvid.val) == 204 and len(camvid.train) == 62 + 101  # counts from CamVid/README.txt
    assert all(name.startswith("0016E5_") for name in camvid.val.names)
    assert not any(name.startswith("0016E5_") for name in camvid.train.names)


def test_void_maps_to_ignore_and_labels_stay_in_range(camvid):
    seen = set()
    for ds in (camvid.train, camvid.val):
        for i in (0, len(ds) // 2, len(ds) - 1):
            image, mask = ds[i]
            assert image.shape == (360, 480, 3) and mask.shape == (360, 480)
            seen |= set(np.unique(mask).tolist())
    assert seen <= {*range(11), 255} and 255 in seen  # void (11) is 4% of CamVid's pixels
