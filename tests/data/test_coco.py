"""The coco format: instances JSON -> semantic masks (order, crowd, RLE kinds, contiguous ids)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from synthetic.folders import H, W, pair, save

from seg_transfer.data import DataError, build_coco, build_dataset
from seg_transfer.errors import ConfigError

# pycocotools' own decode trips numpy 2's __array__ deprecation; nothing this package can change.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

# Non-contiguous category ids, listed out of order: labels follow the id order (cat=1, zebra=2).
CATEGORIES = [{"id": 90, "name": "zebra"}, {"id": 5, "name": "cat"}]


def box(y0, y1, x0, x1):
    region = np.zeros((H, W), bool)
    region[y0:y1, x0:x1] = True
    return region


def compressed_rle(region):
    rle = mask_utils.encode(np.asfortranarray(region.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def uncompressed_rle(region):
    """COCO's crowd format: run lengths over the column-major pixels, starting with a run of zeros."""
    flat = region.flatten(order="F").astype(np.uint8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]]))
    counts = ([0] if flat[0] else []) + runs.tolist()
    return {"size": [H, W], "counts": counts}


def write_coco(root, name, file_names, first_id=1):
    """Three kinds of image: overlapping instances + a crowd, a compressed RLE, none at all."""
    images, annotations, expected = [], [], {}
    for k, file_name in enumerate(file_names):
        image_id = first_id + k
        save(root / "images" / file_name, pair(image_id)[0])
        images.append({"id": image_id, "file_name": file_name, "height": H, "width": W})
        mask = np.zeros((H, W), np.uint8)
        anns = []
        if k % 3 == 0:
            cat_region, zebra_region, crowd_region = box(0, 16, 0, 24), box(8, 24, 16, 40), box(20, 32, 0, 8)
            anns = [  # painted in file order: the zebra covers part of the cat
                {"category_id": 5, "segmentation": compressed_rle(cat_region), "iscrowd": 0},
                {"category_id": 90, "segmentation": compressed_rle(zebra_region), "iscrowd": 0},
                {"category_id": 5, "segmentation": uncompressed_rle(crowd_region), "iscrowd": 1},
            ]
            mask[cat_region], mask[zebra_region], mask[crowd_region] = 1, 2, 255
        elif k % 3 == 1:
            region = box(4, 28, 30, 46)
            anns = [{"category_id": 90, "segmentation": compressed_rle(region), "iscrowd": 0}]
            mask[region] = 2
        for ann in anns:
            annotations.append({**ann, "id": len(annotations) + 1000 * first_id, "image_id": image_id})
        expected[file_name] = mask
    (root / name).write_text(json.dumps({"images": images, "annotations": annotations,
                                         "categories": CATEGORIES}))
    return expected


def test_coco_masks_painted_in_order_with_crowd_ignored(tmp_path):
    expected = write_coco(tmp_path, "instances.json", [f"img_{k:03d}.png" for k in range(6)])
    data = build_coco(tmp_path, annotations="instances.json", val_ratio=0.5, seed=1)
    assert data.classes == ["background", "cat", "zebra"]
    assert len(data.train) == len(data.val) == 3
    for ds in (data.train, data.val):
        for i in range(len(ds)):
            image, mask = ds[i]
            assert image.shape == (H, W, 3) and mask.dtype == np.int64
            np.testing.assert_array_equal(mask, expected[ds.masks[i].file_name])


def test_coco_polygons_are_rasterised(tmp_path):
    save(tmp_path / "images" / "a.png", pair(0)[0])
    save(tmp_path / "images" / "b.png", pair(1)[0])
    polygon = [4.0, 4.0, 40.0, 4.0, 40.0, 28.0, 4.0, 28.0]  # a rectangle, x/y pairs
    (tmp_path / "annotations.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "height": H, "width": W},
                   {"id": 2, "file_name": "b.png", "height": H, "width": W}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "segmentation": [polygon], "iscrowd": 0}],
        "categories": CATEGORIES}))
    data = build_dataset({"format": "coco", "root": str(tmp_path), "val_ratio": 0.5})
    ds = data.train if data.train.masks[0].file_name == "a.png" else data.val
    mask = ds.read_mask(0)
    assert mask[16, 20] == 1 and mask[0, 0] == 0 and mask[31, 47] == 0
    assert abs(int((mask == 1).sum()) - 36 * 24) < 80  # edges may go either way


def test_coco_val_from_its_own_file(tmp_path):
    write_coco(tmp_path, "train.json", ["t0.png", "t1.png"])
    expected = write_coco(tmp_path, "val.json", ["v0.png"], first_id=50)
    data = build_coco(tmp_path, annotations="train.json", val_annotations="val.json")
    assert [r.file_name for r in data.train.masks] == ["t0.png", "t1.png"]
    np.testing.assert_array_equal(data.val[0][1], expected["v0.png"])
    with pytest.raises(ConfigError, match="split: not used when val_annotations gives the val split"):
        build_coco(tmp_path, annotations="train.json", val_annotations="val.json", split="ratio")


def test_coco_names_missing_images_and_bad_files(tmp_path):
    write_coco(tmp_path, "instances.json", ["a.png", "b.png", "c.png"])
    (tmp_path / "images" / "b.png").unlink()
    with pytest.raises(DataError, match=r"image .*b.png: no such file \(listed in .*instances.json as image id 2\)"):
        build_coco(tmp_path, annotations="instances.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DataError, match="broken.json: not valid JSON"):
        build_coco(tmp_path, annotations="broken.json")
    (tmp_path / "other.json").write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="no 'annotations' list"):
        build_coco(tmp_path, annotations="other.json")
