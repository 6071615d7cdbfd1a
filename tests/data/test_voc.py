"""The voc format: a generated VOCdevkit tree with palette masks, 255 borders and ImageSets lists."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from synthetic.folders import pair, save

from seg_transfer.data import VOC_CLASSES, DataError, build_dataset, build_voc

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


# ----------------------------------------------------------------- published trees: colours, overlapping lists
def test_voc_masks_saved_as_rgb_colours_read_as_indices(voc, capsys):
    root, masks = voc
    base = root / "VOCdevkit" / "VOC2012"
    colours = np.array(voc_palette(), np.uint8).reshape(256, 3)
    for name, mask in masks.items():  # as many mirrors publish them: RGB in VOC's colours, void cream
        save(base / "SegmentationClass" / f"{name}.png", colours[mask])
    data = build_voc(root)
    for ds in (data.train, data.val):
        for i, name in enumerate(ds.names):
            np.testing.assert_array_equal(ds.read_mask(i), masks[name])
    err = capsys.readouterr().err
    assert err.count("are RGB colours of the VOC colormap; read as class indices") == 1


def test_val_list_inside_train_list_trains_with_one_loud_warning(voc, capsys):
    root, _ = voc
    lists = root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation"
    (lists / "train.txt").write_text("\n".join(TRAIN + VAL) + "\n")  # val.txt lies inside train.txt
    data = build_voc(root)
    assert data.train.names == sorted(TRAIN + VAL) and data.val.names == VAL
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: list file ") and "val.txt lies inside" in err
    assert "val score will be optimistic" in err and "grep -vxFf" in err
    build_voc(root)  # the Trainer builds again after the data check: said once
    assert capsys.readouterr().err == ""
    from seg_transfer.data import check_dataset
    problems = check_dataset({"format": "voc", "root": str(root)})
    assert [(p.kind, p.severity) for p in problems] == [("overlap", "warning")]
    (lists / "train.txt").write_text("\n".join(TRAIN + VAL[:1]) + "\n")  # a partial overlap stays an error
    with pytest.raises(DataError, match="share 1 names"):
        build_voc(root)
