"""The coco_boxes format: COCO boxes, instance masks and crowd flags; unknown categories and bad boxes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from synthetic.detection import H, W, image
from synthetic.folders import save

from seg_transfer.data import build_dataset, check_dataset
from seg_transfer.data.detection import BACKGROUND

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def coco_tree(root: Path, annotations, categories=({"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}),
              images=("a.png", "b.png")) -> Path:
    for k, name in enumerate(images):
        save(root / "images" / name, image(k))
    data = {"images": [{"id": k + 1, "file_name": n, "height": H, "width": W} for k, n in enumerate(images)],
            "annotations": annotations, "categories": list(categories)}
    (root / "annotations.json").write_text(json.dumps(data))
    return root


def test_coco_boxes_reads_boxes_masks_and_crowd(tmp_path):
    square = [[10, 10, 30, 10, 30, 20, 10, 20]]  # polygon: x 10..30, y 10..20
    root = coco_tree(tmp_path, [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 10, 20, 10], "segmentation": square, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [0, 0, 5, 5], "segmentation": [[0, 0, 5, 0, 5, 5, 0, 5]],
         "iscrowd": 1}])
    splits = build_dataset({"format": "coco_boxes", "root": str(root), "masks": True, "split": "all"})
    assert splits.classes == [BACKGROUND, "cat", "dog"]  # category id order: 3 (cat) then 7 (dog)
    assert splits.train.has_masks
    img, target = splits.val[0]
    np.testing.assert_array_equal(target["boxes"], [[10, 10, 30, 20], [0, 0, 5, 5]])
    assert target["labels"].tolist() == [2, 1] and target["iscrowd"].tolist() == [0, 1]
    assert target["masks"].shape == (2, H, W) and target["masks"].dtype == np.uint8
    ys, xs = np.nonzero(target["masks"][0])
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (10, 29, 10, 19)
    _, empty = splits.val[1]
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape[0] == 0


def test_coco_boxes_reports_unknown_category_and_bad_box(tmp_path):
    root = coco_tree(tmp_path, [
        {"id": 1, "image_id": 1, "category_id": 99, "bbox": [1, 1, 5, 5]},
        {"id": 2, "image_id": 2, "category_id": 3, "bbox": [50, 30, 20, 20]}])
    problems = check_dataset({"format": "coco_boxes", "root": str(root), "split": "all"})
    by_kind = {p.kind: p.message for p in problems}
    assert set(by_kind) == {"unknown_class", "bad_box"}
    assert "a.png (image id 1" in by_kind["unknown_class"] and "object 0 (category id 99)" in by_kind["unknown_class"]
    assert "b.png (image id 2" in by_kind["bad_box"] and "outside" in by_kind["bad_box"]
