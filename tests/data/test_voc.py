"""The voc format: a generated VOCdevkit tree with palette masks, 255 borders and ImageSets lists."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from seg_transfer.data import VOC_CLASSES, DataError, build_dataset, build_voc

from . import pair, save

TRAIN = ["2007_000032", "2007_000039", "2008_000002"]
VAL = ["2007_000033", "2009_000010"]


def voc_palette() -> list[int]:
    """VOC's colour map: class k's colour from the bits of k (only the look differs, never the indices)."""
    palette = []
    for k in range(256):
        r = g = b = 0
        c = k
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


@pytest.fixture
def voc(tmp_path):
    """VOCdevkit/VOC2012 with JPEG images (plus one without a mask, as in VOC) and palette PNG masks."""
    base = tmp_path / "VOCdevkit" / "VOC2012"
    (base / "SegmentationClass").mkdir(parents=True)
    masks = {}
    for k, name in enumerate(TRAIN + VAL):
        image, mask = pair(k, num_classes=len(VOC_CLASSES))
        mask[::8, :] = 255  # VOC draws a 255 (ignore) outline around objects
        save(base / "JPEGImages" / f"{name}.jpg", image)
        png = Image.fromarray(mask, "L").convert("P")
        png.putpalette(voc_palette())
        png.save(base / "SegmentationClass" / f"{name}.png")
        masks[name] = mask
    save(base / "JPEGImages" / "2012_999999.jpg", pair(99)[0])  # detection-only image: no mask, in no list
    lists = base / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("\n".join(TRAIN) + "\n")
    (lists / "val.txt").write_text("\n".join(VAL) + "\n")
    return tmp_path, masks


def test_voc_loads_palette_indices_and_follows_the_lists(voc):
    root, masks = voc
    data = build_voc(root / "VOCdevkit")  # finds VOC2012 inside VOCdevkit
    assert data.classes == list(VOC_CLASSES) and data.ignore_index == 255
    assert data.train.names == TRAIN and data.val.names == VAL
    for ds in (data.train, data.val):
        for i, name in enumerate(ds.names):
            image, mask = ds[i]
            assert image.shape == (32, 48, 3) and image.dtype == np.uint8
            np.testing.assert_array_equal(mask, masks[name])  # indices, not palette colours
    assert 255 in data.train[0][1]


def test_voc_through_the_registry_and_root_errors(voc):
    root, _ = voc
    data = build_dataset({"format": "voc", "root": str(root / "VOCdevkit" / "VOC2012")})
    assert len(data.train) == 3 and len(data.val) == 2
    with pytest.raises(DataError, match="no JPEGImages folder"):
        build_voc(root / "VOCdevkit" / "VOC2012" / "ImageSets")


def test_voc_names_a_listed_image_without_mask(voc):
    root, _ = voc
    (root / "VOCdevkit" / "VOC2012" / "SegmentationClass" / f"{VAL[1]}.png").unlink()
    with pytest.raises(DataError, match=f"image .*{VAL[1]}.jpg: missing mask .*SegmentationClass/{VAL[1]}.png"):
        build_voc(root)
