"""Segmentation data (``data.segmentation``): each common mask mistake gets its own message naming the file;
image and mask transforms stay aligned, padding is ignore; the collate pads to the batch's largest."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from synthetic.folders import CLASSES, FLAT, H, W, folder, make_folder, pair, save

from seg_transfer.data import DataError, SegCollate, build_folder, build_pipeline, build_transforms
from seg_transfer.data.checks import check_dataset
from seg_transfer.data.segmentation import SegTransform, apply_label_map, binary_splits, check_mask, default_train_spec
from seg_transfer.errors import ConfigError
from seg_transfer.models.preprocess import Preprocess

IDENTITY = Preprocess(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # output * 255 gives back the uint8 pixels
IMAGENET = Preprocess(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), resize_size=40)


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
    make_folder(tmp_path, FLAT)
    return tmp_path


def run(spec, image, mask, ignore_index=255):
    transform = SegTransform(build_pipeline(spec, ignore_index), IDENTITY, ignore_index)
    out_image, out_mask = transform(image, mask)
    assert out_image.dtype == torch.float32 and out_mask.dtype == torch.int64
    return (out_image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy(), out_mask.numpy()


def assert_aligned(image, mask, ignore_index=255):
    """The invariant of ``pair``: R = 40 * (class + 1) where labelled, R = 0 exactly where padded (ignore)."""
    red = image[..., 0].astype(np.int64)
    np.testing.assert_array_equal(red == 0, mask == ignore_index)
    labelled = mask != ignore_index
    np.testing.assert_array_equal(mask[labelled], red[labelled] // 40 - 1)


# ------------------------------------------------------------------------------------- mask rules
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
    make_folder(tmp_path, FLAT)
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


def test_check_mask_maps_labels_and_returns_problems_without_raising():
    raw = np.array([[0, 1], [11, 2]], np.uint8)
    mask, problems = check_mask(raw, name="m.png", num_classes=3, ignore_index=255, label_map={11: 255})
    assert mask.dtype == np.int64 and mask.tolist() == [[0, 1], [255, 2]] and problems == []
    mask, problems = check_mask(raw, name="m.png", num_classes=3, ignore_index=255, image_shape=(2, 3))
    assert [p.kind for p in problems] == ["size_mismatch", "label_range"]
    assert apply_label_map(raw.astype(np.int16), {11: 255}).tolist() == [[0, 1], [255, 2]]


# ------------------------------------------------------------------------------------- transforms
def test_flip_moves_image_and_mask_together():
    image, mask = pair(0)
    out_image, out_mask = run([{"name": "HorizontalFlip", "p": 1.0}], image, mask)
    np.testing.assert_array_equal(out_image, image[:, ::-1])
    np.testing.assert_array_equal(out_mask, mask[:, ::-1])


def test_scale_pad_crop_flip_rotate_keep_alignment():
    spec = [{"name": "RandomScale", "scale_limit": [-0.5, 1.0], "p": 1.0, "interpolation": "nearest"},
            {"name": "PadIfNeeded", "min_height": 56, "min_width": 56, "border_mode": "constant"},
            {"name": "RandomCrop", "height": 56, "width": 56},
            {"name": "HorizontalFlip", "p": 0.5},
            {"name": "Rotate", "limit": 30, "p": 1.0, "interpolation": "nearest", "border_mode": "constant"}]
    for seed in range(12):
        image, mask = pair(seed)
        out_image, out_mask = run(spec, image, mask)
        assert out_image.shape == (56, 56, 3) and out_mask.shape == (56, 56)
        assert_aligned(out_image, out_mask)


def test_padding_fills_the_mask_with_the_ignore_index():
    image, mask = pair(1)
    for ignore in (255, -100):
        out_image, out_mask = run([{"name": "PadIfNeeded", "min_height": 64, "min_width": 64,
                                    "border_mode": "constant"}], image, mask, ignore)
        assert out_mask.shape == (64, 64)
        assert (out_mask[:16] == ignore).all() and (out_mask[:, :8] == ignore).all()
        assert_aligned(out_image, out_mask, ignore)


def test_default_pipelines_crop_train_and_resize_val():
    train, val = build_transforms(crop_size=40, preprocess=IMAGENET)
    assert [s["name"] for s in default_train_spec(40, 40)] == [
        "SmallestMaxSize", "RandomScale", "PadIfNeeded", "RandomCrop", "HorizontalFlip"]
    for seed in range(5):
        image, mask = pair(seed)
        x, y = train(image, mask)
        assert x.shape == (3, 40, 40) and y.shape == (40, 40)
        # Bilinear images, but nearest masks: no label is invented between two classes.
        assert set(y.unique().tolist()) <= {*range(len(CLASSES)), 255}
    x, y = val(*pair(0))
    assert x.shape == (3, 40, 60) and y.shape == (40, 60)  # shorter side 32 -> 40
    # Normalised with the weights' mean/std: a pixel of value v becomes (v/255 - mean) / std.
    assert x.mean().abs() < 3 and x[0].min() == pytest.approx((40 / 255 - 0.485) / 0.229, abs=0.05)


def test_no_resize_keeps_val_size():
    _, val = build_transforms(preprocess=IDENTITY)
    x, y = val(*pair(0))
    assert x.shape == (3, H, W) and y.shape == (H, W)


def test_collate_stacks_equal_sizes_and_pads_others_with_ignore():
    a = (torch.ones(3, 4, 5), torch.zeros(4, 5, dtype=torch.int64))
    b = (torch.ones(3, 6, 3), torch.ones(6, 3, dtype=torch.int64))
    images, masks = SegCollate(255)([a, a])
    assert images.shape == (2, 3, 4, 5) and masks.shape == (2, 4, 5)
    images, masks = SegCollate(255)([a, b])
    assert images.shape == (2, 3, 6, 5) and masks.shape == (2, 6, 5)
    assert (masks[0, 4:] == 255).all() and (masks[1, :, 3:] == 255).all() and (masks[1, :, :3] == 1).all()
    assert (images[0, :, 4:] == 0).all() and (images[0, :, :4] == 1).all()


# --------------------------------------------------------------------------- a binary model's masks
def binary_folder(root, masks: dict) -> None:
    """Images of ``pair`` with the given masks (name -> HxW uint8 array)."""
    for k, (name, mask) in enumerate(masks.items()):
        save(root / "images" / f"{name}.png", pair(k)[0])
        save(root / "masks" / f"{name}.png", mask)


def items(splits) -> dict:
    return {name: ds.read_mask(i) for ds in splits for i, name in enumerate(ds.names)}


def test_binary_splits_read_0_255_masks_as_0_1(tmp_path):
    fg = [pair(k)[1] > 0 for k in range(4)]
    binary_folder(tmp_path, {"a": np.where(fg[0], 255, 0).astype(np.uint8),   # as image editors save them
                             "b": np.where(fg[1], 255, 0).astype(np.uint8),
                             "c": fg[2].astype(np.uint8),                      # 0/1 masks read as they are
                             "d": np.zeros((H, W), np.uint8)})                 # background only
    plain = build_folder(tmp_path, classes=["background", "person"], val_ratio=0.5)
    with pytest.raises(DataError, match="holds only 0 and 255.*a binary model \\(model.binary: true\\) reads"):
        items(plain)  # a two-class softmax model would ignore every 255 pixel: still an error there
    splits = binary_splits(plain)
    assert splits.classes == ["background", "person"] and splits.train.binary and splits.val.binary
    masks = items(splits)
    for name, expected in zip("abcd", [*fg[:3], np.zeros((H, W), bool)]):
        np.testing.assert_array_equal(masks[name], expected.astype(np.int64), err_msg=name)
    image, mask = splits.train[0]
    assert set(np.unique(mask)) <= {0, 1}
    # One name is the foreground; the background is named for it.
    assert binary_splits(build_folder(tmp_path, classes=["person"], val_ratio=0.5)).classes == ["background", "person"]


def test_binary_255_is_ignored_only_when_said(tmp_path):
    """A mask with 1 and 255 (VOC's void border habit) is ambiguous: a problem naming the fix; label_map
    {255: 255} makes 255 the ignore value again."""
    mask = (pair(0)[1] > 0).astype(np.uint8)
    mask[0, :] = 255
    binary_folder(tmp_path, {"a": mask, "b": mask})
    splits = binary_splits(build_folder(tmp_path, classes=["background", "person"], val_ratio=0.5))
    with pytest.raises(DataError) as info:
        items(splits)
    assert info.value.problem.kind == "binary_mask"
    assert "holds 0, 1 and 255" in str(info.value) and "set label_map {255: 255}" in str(info.value)
    said = binary_splits(build_folder(tmp_path, classes=["background", "person"], val_ratio=0.5,
                                      label_map={255: 255}))
    read = items(said)["a"]
    assert (read[0] == 255).all() and set(np.unique(read[1:])) <= {0, 1}


def test_binary_other_values_name_the_rule(tmp_path):
    """An instance-id mask (Penn-Fudan: 0 background, k = person k) has values a binary model cannot read."""
    inst = np.zeros((H, W), np.uint8)
    inst[4:12, 4:10], inst[4:20, 20:30] = 1, 2
    binary_folder(tmp_path, {"a": inst, "b": inst})
    splits = binary_splits(build_folder(tmp_path, classes=["person"], val_ratio=0.5))
    with pytest.raises(DataError, match="outside \\[0, 2\\) other than the ignore value 255: 2; a binary model reads "
                                        "0 as background and 1 or 255 as foreground: map the others with label_map "
                                        "\\(e.g. \\{2: 1\\}\\)"):
        items(splits)
    mapped = binary_splits(build_folder(tmp_path, classes=["person"], val_ratio=0.5, label_map={2: 1}))
    np.testing.assert_array_equal(items(mapped)["a"], (inst > 0).astype(np.int64))


def test_binary_splits_need_two_classes(tmp_path):
    make_folder(tmp_path, FLAT)
    with pytest.raises(ConfigError, match="data.classes: a binary model needs 2 classes .* got 3: background, road, car"):
        binary_splits(folder(tmp_path))


def test_data_check_in_binary_mode(tmp_path):
    binary_folder(tmp_path, {f"m{k}": np.where(pair(k)[1] > 0, 255, 0).astype(np.uint8) for k in range(4)})
    data = {"format": "folder", "root": str(tmp_path), "classes": ["background", "person"], "val_ratio": 0.5}
    assert {p.kind for p in check_dataset(data, progress=False)} == {"binary_mask"}
    assert check_dataset(data, progress=False, binary=True) == []
