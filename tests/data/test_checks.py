"""Bad data: each common mistake gets its own message naming the file; check_dataset lists them all."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from seg_transfer.data import DataError, build_folder, check_dataset, label_frequencies

from . import CLASSES, H, W, make_folder, pair, save

NAMES = [f"f{k}" for k in range(6)]


def folder(root, **options):
    return build_folder(root, classes=CLASSES, val_ratio=0.5, **options)


def first_problem(root, name, **options):
    """The DataError that reading sample ``name`` raises, whichever split it landed in."""
    data = folder(root, **options)
    for ds in (data.train, data.val):
        if name in ds.names:
            with pytest.raises(DataError) as info:
                ds[ds.names.index(name)]
            return info.value
    raise AssertionError(f"{name} in no split")


@pytest.fixture
def root(tmp_path):
    make_folder(tmp_path, NAMES)
    return tmp_path


def test_rgb_mask_is_explained_with_its_colours(root):
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:, :24] = (128, 64, 128)
    save(root / "masks" / "f1.png", rgb)
    err = first_problem(root, "f1")
    assert err.problem.kind == "rgb_mask"
    assert str(err).startswith(f"mask {root / 'masks' / 'f1.png'} is RGB (3 channels): save class indices "
                               "as a single-channel PNG")
    assert "colours found: (0, 0, 0), (128, 64, 128)" in str(err)


def test_grey_mask_stored_as_rgb_is_accepted(root):
    _, mask = pair(2)
    save(root / "masks" / "f2.png", np.repeat(mask[..., None], 3, axis=2))
    data = folder(root)
    ds = data.train if "f2" in data.train.names else data.val
    np.testing.assert_array_equal(ds[ds.names.index("f2")][1], mask)


@pytest.mark.parametrize("classes, ignore", [(CLASSES, 255), (CLASSES[:2], 255), (CLASSES, -100)])
def test_binary_0_255_mask_is_explained(tmp_path, classes, ignore):
    make_folder(tmp_path, NAMES)
    binary = np.where(pair(3)[1] > 0, 255, 0).astype(np.uint8)
    save(tmp_path / "masks" / "f3.png", binary)
    data = build_folder(tmp_path, classes=classes, ignore_index=ignore, val_ratio=0.5)
    ds = data.train if "f3" in data.train.names else data.val
    if (len(classes), ignore) == (3, 255):
        ds[ds.names.index("f3")]  # 255 is a legal ignore value here, and a third class exists: no evidence
        return
    with pytest.raises(DataError) as info:
        ds[ds.names.index("f3")]
    assert info.value.problem.kind == "binary_mask"
    assert str(info.value).startswith(f"mask {tmp_path / 'masks' / 'f3.png'} holds only 0 and 255: a binary "
                                      "mask saved as 0/255; divide it by 255 or set label_map {255: 1}")
    # The suggested fix works.
    fixed = build_folder(tmp_path, classes=classes, ignore_index=ignore, val_ratio=0.5, label_map={255: 1})
    ds = fixed.train if "f3" in fixed.train.names else fixed.val
    assert set(np.unique(ds[ds.names.index("f3")][1])) <= {0, 1}


def test_labels_out_of_range_name_the_values_and_the_fix(root):
    _, mask = pair(4)
    mask[0, :5] = 3
    mask[1, :5] = 7
    save(root / "masks" / "f4.png", mask)
    err = first_problem(root, "f4")
    assert err.problem.kind == "label_range"
    assert str(err).startswith(f"mask {root / 'masks' / 'f4.png'} holds labels outside [0, 3) other than "
                               "the ignore value 255: 3, 7; fix the masks or map these values with label_map")
    mask[1, :5] = 3  # only the value just past the last class: CamVid's void
    save(root / "masks" / "f4.png", mask)
    assert "is 3 a void label? map it to the ignore index with label_map {3: 255}" in str(first_problem(root, "f4"))


def test_size_mismatch_names_both_files(root):
    save(root / "masks" / "f5.png", pair(5, w=40)[1])
    err = first_problem(root, "f5")
    assert err.problem.kind == "size_mismatch"
    assert str(err) == (f"mask {root / 'masks' / 'f5.png'} is 32x40 but image {root / 'images' / 'f5.png'} "
                        "is 32x48 (HxW)")


def test_unreadable_image_and_mask_name_the_file(root):
    (root / "images" / "f0.png").write_bytes(b"not a png at all")
    err = first_problem(root, "f0")
    assert err.problem.kind == "unreadable" and str(err).startswith(f"image {root / 'images' / 'f0.png'}: ")
    (root / "images" / "f0.png").unlink()
    save(root / "images" / "f0.png", pair(0)[0])
    data = (root / "masks" / "f1.png").read_bytes()
    (root / "masks" / "f1.png").write_bytes(data[: len(data) // 2])  # truncated
    err = first_problem(root, "f1")
    assert err.problem.kind == "unreadable" and str(err).startswith(f"mask {root / 'masks' / 'f1.png'}: ")


def test_missing_mask_fails_at_construction_naming_the_image(root):
    (root / "masks" / "f2.png").unlink()
    (root / "masks" / "f3.png").unlink()
    with pytest.raises(DataError, match=(rf"^image {root / 'images' / 'f2.png'}: missing mask "
                                         rf"{root / 'masks' / 'f2.png'} .* \(and 1 more; the data check")):
        folder(root)


def test_jpeg_mask_fails_at_construction(root):
    (root / "masks" / "f2.png").unlink()
    save(root / "masks" / "f2.jpg", pair(2)[1])
    with pytest.raises(DataError, match=r"mask .*f2.jpg is a JPEG: lossy compression"):
        folder(root)


def test_empty_split_fails_at_construction(root):
    with pytest.raises(DataError, match=r"the val split is empty \(6 train, 0 val images\)"):
        folder(root, group_regex=r"^(f)")  # one group only: nothing left for val


def test_check_dataset_reports_every_problem_at_once(root):
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 0] = 200
    save(root / "masks" / "f0.png", rgb)
    (root / "masks" / "f1.png").unlink()
    save(root / "masks" / "f2.png", np.where(pair(2)[1] > 0, 255, 0).astype(np.uint8))
    _, mask = pair(3)
    mask[0, 0] = 9
    save(root / "masks" / "f3.png", mask)
    save(root / "masks" / "f4.png", pair(4, h=24)[1])
    (root / "images" / "f5.png").write_bytes(b"")
    block = {"format": "folder", "root": str(root), "classes": CLASSES[:2], "val_ratio": 0.5}
    problems = check_dataset(block)
    found = {(p.kind, p.path.rsplit("/", 1)[-1]) for p in problems}
    assert found >= {("rgb_mask", "f0.png"), ("missing_mask", "f1.png"), ("binary_mask", "f2.png"),
                     ("label_range", "f3.png"), ("size_mismatch", "f4.png"), ("unreadable", "f5.png")}
    assert all(p.path in p.message for p in problems if p.kind != "absent_class")
    with pytest.raises(DataError, match="missing mask"):  # the builder itself stops at the first
        folder(root)


def test_check_dataset_on_clean_data_finds_nothing_but_can_warn(root):
    assert check_dataset(folder(root)) == []
    problems = check_dataset(build_folder(root, classes=[*CLASSES, "bus"], val_ratio=0.5))
    assert [(p.kind, p.severity, p.message) for p in problems] == [
        ("absent_class", "warning", "class 3 'bus' appears in no mask of train or val")]


def test_check_dataset_reports_a_missing_path_as_a_problem(root):
    problems = check_dataset({"format": "folder", "root": str(root), "masks": "labels", "classes": CLASSES})
    assert [p.kind for p in problems] == ["missing_path"]


def test_label_frequencies_count_pixels_per_class_without_ignore(root):
    _, mask = pair(0)
    mask[:4] = 255
    save(root / "masks" / "f0.png", mask)
    data = folder(root)
    expected = np.zeros(len(CLASSES), np.int64)
    for name in data.train.names:
        raw = np.asarray(Image.open(root / "masks" / f"{name}.png"))
        expected += np.bincount(raw[raw != 255].ravel(), minlength=len(CLASSES))[:len(CLASSES)]
    counts = label_frequencies(data.train)
    assert counts.dtype == np.int64 and counts.tolist() == expected.tolist()
    assert counts.sum() == len(data.train) * H * W - (4 * W if "f0" in data.train.names else 0)


def test_a_bad_mask_in_a_dataloader_worker_surfaces_as_a_one_line_data_error(root):
    save(root / "masks" / "f0.png", np.full((H, W, 3), (1, 2, 3), np.uint8))
    data = folder(root)
    ds = data.train if "f0" in data.train.names else data.val
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=1, collate_fn=lambda b: b)
    with pytest.raises(DataError) as info:
        list(loader)
    assert str(info.value).startswith(f"mask {root / 'masks' / 'f0.png'} is RGB (3 channels)")
    assert "\n" not in str(info.value)
