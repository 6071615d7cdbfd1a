"""The folder format: pairing by name, raw items, label_map, splits, and what stops construction."""
from __future__ import annotations

import numpy as np
import pytest
from synthetic.folders import CLASSES, FLAT, H, W, folder, make_folder, pair, save, sequence_names

from seg_transfer.data import DataError, SegDataset, build_folder
from seg_transfer.errors import ConfigError

NAMES = sequence_names({"seqA": 3, "seqB": 3, "seqC": 4})


@pytest.fixture
def root(tmp_path):
    make_folder(tmp_path, NAMES, images="train", masks="trainannot")
    return tmp_path


def test_items_are_raw_uint8_images_and_int64_masks_matching_the_files(root):
    data = build_folder(root, images="train", masks="trainannot", classes=CLASSES, val_ratio=0.3)
    assert isinstance(data.train, SegDataset) and data.classes == CLASSES and data.ignore_index == 255
    assert len(data.train) + len(data.val) == len(NAMES)
    train, val = data
    assert train is data.train and val is data.val
    for ds in (data.train, data.val):
        for i, name in enumerate(ds.names):
            image, mask = ds[i]
            expected_image, expected_mask = pair(NAMES.index(name))
            assert image.dtype == np.uint8 and image.shape == (H, W, 3)
            assert mask.dtype == np.int64 and mask.shape == (H, W)
            np.testing.assert_array_equal(image, expected_image)
            np.testing.assert_array_equal(mask, expected_mask)


def test_label_map_rewrites_mask_values(root):
    data = build_folder(root, images="train", masks="trainannot", classes=CLASSES[:2],
                        label_map={2: 255}, val_ratio=0.3)
    for i in range(len(data.train)):
        _, raw = pair(NAMES.index(data.train.names[i]))
        mask = data.train.read_mask(i)
        np.testing.assert_array_equal(mask, np.where(raw == 2, 255, raw))


def test_with_transform_applies_to_the_copy_only(root):
    data = build_folder(root, images="train", masks="trainannot", classes=CLASSES, val_ratio=0.3)
    shifted = data.with_transforms(lambda im, m: (im, m + 1), None)
    np.testing.assert_array_equal(shifted.train[0][1], data.train[0][1] + 1)
    assert data.train.transform is None and shifted.val.transform is None


def test_group_split_and_mask_suffix(tmp_path):
    for k, name in enumerate(NAMES):
        image, mask = pair(k)
        save(tmp_path / "img" / f"{name}.jpg", image)
        save(tmp_path / "lbl" / f"{name}_L.png", mask)
    data = build_folder(tmp_path, images="img", masks="lbl", mask_suffix="_L", classes=CLASSES,
                        group_regex=r"^(\w+?)_", val_groups=["seqC"])
    assert all(n.startswith("seqC") for n in data.val.names) and len(data.val) == 4
    assert str(data.val.masks[0]).endswith("_L.png")


def test_missing_paths_suggest_the_close_name(root):
    with pytest.raises(DataError, match=r"trainanot: no such folder \(did you mean 'trainannot'\?\)"):
        build_folder(root, images="train", masks="trainanot", classes=CLASSES)
    with pytest.raises(DataError, match="data root .*nowhere: no such folder"):
        build_folder(root / "nowhere", classes=CLASSES)


def test_bad_class_options_are_config_errors(root):
    with pytest.raises(ConfigError, match="classes: expected a list"):
        build_folder(root, images="train", masks="trainannot", classes="road")
    with pytest.raises(ConfigError, match="ignore_index 1 is also the index of class 'road'"):
        build_folder(root, images="train", masks="trainannot", classes=CLASSES, ignore_index=1)
    with pytest.raises(ConfigError, match="label_map: expected integers"):
        build_folder(root, images="train", masks="trainannot", classes=CLASSES, label_map={"a": 1})


# ------------------------------------------------------------------------- what stops construction
@pytest.fixture
def flat(tmp_path):
    make_folder(tmp_path, FLAT)
    return tmp_path


def test_missing_mask_fails_at_construction_naming_the_image(flat):
    (flat / "masks" / "f2.png").unlink()
    (flat / "masks" / "f3.png").unlink()
    with pytest.raises(DataError, match=(rf"^image {flat / 'images' / 'f2.png'}: missing mask "
                                         rf"{flat / 'masks' / 'f2.png'} .* \(and 1 more; the data check")):
        folder(flat)


def test_jpeg_mask_fails_at_construction(flat):
    (flat / "masks" / "f2.png").unlink()
    save(flat / "masks" / "f2.jpg", pair(2)[1])
    with pytest.raises(DataError, match=r"mask .*f2.jpg is a JPEG: lossy compression"):
        folder(flat)


def test_empty_split_fails_at_construction(flat):
    with pytest.raises(DataError, match=r"the val split is empty \(6 train, 0 val images\)"):
        folder(flat, group_regex=r"^(f)")  # one group only: nothing left for val
