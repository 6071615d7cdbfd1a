"""The cvat_masks format: CVAT's "Segmentation mask 1.1" export read through its labelmap.txt colours."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from synthetic.tool_files import CVAT_LABELS, H, W, cvat_export, finetune

from seg_transfer.data import DataError, build_dataset, check_dataset
from seg_transfer.errors import ConfigError
from seg_transfer.models.checkpoint import read_checkpoint


def masks(n: int = 5) -> dict[str, np.ndarray]:
    out = {}
    for k in range(n):
        mask = np.zeros((H, W), np.uint8)
        mask[:, 5 * k:5 * k + 10] = 1
        mask[20:, :8] = 2
        out[f"frame_{k:06d}"] = mask
    return out


def cvat(root, **options):
    return build_dataset({"format": "cvat_masks", "root": str(root), **options})


def test_colour_masks_read_as_the_labelmap_indices(tmp_path):
    written = masks()
    root = cvat_export(tmp_path / "task_1-export", written)
    data = cvat(root, val_ratio=0.4)
    assert data.classes == list(CVAT_LABELS)  # labelmap order: background, car, person
    assert (len(data.train), len(data.val)) == (3, 2)  # one default.txt subset: split by ratio
    for ds in data:
        for i, name in enumerate(ds.names):
            image, mask = ds[i]
            assert image.shape == (H, W, 3)
            np.testing.assert_array_equal(mask, written[name])
    assert check_dataset(data) == []


def test_train_and_val_subsets_and_reordered_classes(tmp_path):
    written = masks()
    names = list(written)
    root = cvat_export(tmp_path, written, subsets={"Train": names[:3], "Validation": names[3:]})
    data = cvat(root, classes=["background", "person", "car"])
    assert data.train.names == names[:3] and data.val.names == names[3:]
    assert data.classes == ["background", "person", "car"]
    np.testing.assert_array_equal(data.train.read_mask(0), np.choose(written[names[0]], [0, 2, 1]))
    with pytest.raises(ConfigError, match="names person, which classes does not list"):
        cvat(root, classes=["background", "car"])


def test_a_colour_outside_the_labelmap_is_named_with_its_pixel_count(tmp_path):
    root = cvat_export(tmp_path, masks())
    path = root / "SegmentationClass" / "frame_000001.png"
    rgb = np.asarray(Image.open(path)).copy()
    rgb[0, :4] = (128, 0, 0)
    Image.fromarray(rgb).save(path)
    problems = check_dataset({"format": "cvat_masks", "root": str(root)})
    assert [(p.kind, p.path) for p in problems] == [("unknown_colour", str(path))]
    assert f"colour (128, 0, 0) (4 pixels) is not in labelmap {root / 'labelmap.txt'}" in problems[0].message


def test_export_without_images_or_labelmap(tmp_path):
    written = masks(3)
    root = cvat_export(tmp_path, written, labels={"background": (0, 0, 0), "aeroplane": (128, 0, 0),
                                                  "bicycle": (0, 128, 0)})
    (root / "labelmap.txt").unlink()  # CVAT leaves it out for VOC's own labels and colours
    data = cvat(root, split="all")
    assert data.classes[:3] == ["background", "aeroplane", "bicycle"] and len(data.classes) == 21
    np.testing.assert_array_equal(data.val.read_mask(0), written["frame_000000"])
    for p in (root / "JPEGImages").iterdir():
        p.unlink()
    (root / "JPEGImages").rmdir()
    with pytest.raises(DataError, match="'Save images' ticked in the export dialog"):
        cvat(root)


def test_finetune_from_a_cvat_export(tmp_path, one_thread):
    root = cvat_export(tmp_path / "export", masks(6))
    run = finetune(tmp_path, {"format": "cvat_masks", "root": str(root), "val_ratio": 0.34})
    assert read_checkpoint(run / "best.pt")["classes"] == list(CVAT_LABELS)
