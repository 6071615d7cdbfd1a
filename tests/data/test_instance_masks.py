"""The instance_masks format: boxes and binary masks derived from instance-id mask PNGs (Penn-Fudan)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from synthetic.detection import H, W, image
from synthetic.folders import save

from seg_transfer.data import build_dataset
from seg_transfer.data.detection import BACKGROUND
from seg_transfer.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def instance_tree(root: Path) -> Path:
    ids = np.zeros((H, W), np.uint8)
    ids[5:15, 10:20] = 1
    ids[20:35, 30:50] = 2
    for name, mask in (("p1", ids), ("p2", np.zeros((H, W), np.uint8))):
        save(root / "PNGImages" / f"{name}.png", image())
        save(root / "PedMasks" / f"{name}_mask.png", mask)
    return root


def test_instance_masks_boxes_derived_from_masks(tmp_path):
    root = instance_tree(tmp_path)
    splits = build_dataset({"format": "instance_masks", "root": str(root), "classes": ["pedestrian"],
                            "split": "all"})
    assert splits.classes == [BACKGROUND, "pedestrian"] and splits.train.has_masks
    _, target = splits.val[0]
    np.testing.assert_array_equal(target["boxes"], [[10, 5, 20, 15], [30, 20, 50, 35]])
    assert target["labels"].tolist() == [1, 1]
    assert target["masks"].shape == (2, H, W) and target["masks"].sum((1, 2)).tolist() == [100, 300]
    _, empty = splits.val[1]
    assert empty["boxes"].shape == (0, 4)
    with pytest.raises(ConfigError, match="one object class"):
        build_dataset({"format": "instance_masks", "root": str(root), "classes": ["a", "b"]})


def test_instance_masks_penn_fudan_pair(tmp_path):
    shared = Path(__file__).resolve().parents[2].parent / "shared" / "images"
    if not (shared / "FudanPed00054_mask.png").exists():
        pytest.skip("../shared/images missing")
    (tmp_path / "PNGImages").mkdir()
    (tmp_path / "PedMasks").mkdir()
    (tmp_path / "PNGImages" / "FudanPed00054.png").symlink_to(shared / "FudanPed00054.png")
    (tmp_path / "PedMasks" / "FudanPed00054_mask.png").symlink_to(shared / "FudanPed00054_mask.png")
    splits = build_dataset({"format": "instance_masks", "root": str(tmp_path), "classes": ["pedestrian"],
                            "split": "all"})
    img, target = splits.val[0]
    assert len(target["boxes"]) == 3 and target["masks"].shape[1:] == img.shape[:2]
    for box, mask in zip(target["boxes"], target["masks"]):  # each box is its mask's tight bounds
        ys, xs = np.nonzero(mask)
        assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
