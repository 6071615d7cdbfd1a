"""Augmentation from YAML lists: image and mask stay aligned, padding is ignore, errors name the step."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from seg_transfer.data import SegCollate, build_pipeline, build_transforms
from seg_transfer.data.transforms import SegTransform, default_train_spec
from seg_transfer.errors import ConfigError
from seg_transfer.models.preprocess import Preprocess

from . import CLASSES, H, W, pair

IDENTITY = Preprocess(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # output * 255 gives back the uint8 pixels
IMAGENET = Preprocess(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), resize_size=40)


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


@pytest.mark.parametrize("spec, message", [
    ([{"name": "HorizontalFilp"}], r"transforms\[0\]: unknown albumentations transform 'HorizontalFilp' "
                                   r"\(did you mean 'HorizontalFlip'\?\)"),
    ([{"name": "HorizontalFlip"}, {"name": "RandomScale", "scale_limt": 0.1}],
     r"transforms\[1\] \(RandomScale\): unknown argument 'scale_limt' \(did you mean 'scale_limit'\?\)"),
    ([{"name": "RandomCrop", "height": -1, "width": 8}], r"\(RandomCrop\): height: .*greater than or equal to 1"),
    ([{"name": "RandomCrop"}], r"\(RandomCrop\): height: required; width: required"),
    ([{"name": "Normalize"}], "Normalize does not belong in the pipeline"),
    (["HorizontalFlip"], "expected a mapping with a 'name'"),
    ({"name": "HorizontalFlip"}, "expected a list of transforms"),
    ([{"name": "OneOf", "transforms": [{"name": "Rotate", "border_mode": "constnt"}]}],
     r"transforms\[0\].transforms\[0\] \(Rotate\): border_mode 'constnt' \(did you mean 'constant'\?\)"),
])
def test_bad_pipelines_are_config_errors_naming_the_step(spec, message):
    with pytest.raises(ConfigError, match=message):
        build_pipeline(spec)


def test_nested_compositions_get_the_mask_fill_too():
    pipeline = build_pipeline([{"name": "OneOf", "transforms": [{"name": "Rotate", "limit": 10}]}], 7)
    assert pipeline.transforms[0].transforms[0].fill_mask == 7


def test_collate_stacks_equal_sizes_and_pads_others_with_ignore():
    a = (torch.ones(3, 4, 5), torch.zeros(4, 5, dtype=torch.int64))
    b = (torch.ones(3, 6, 3), torch.ones(6, 3, dtype=torch.int64))
    images, masks = SegCollate(255)([a, a])
    assert images.shape == (2, 3, 4, 5) and masks.shape == (2, 4, 5)
    images, masks = SegCollate(255)([a, b])
    assert images.shape == (2, 3, 6, 5) and masks.shape == (2, 6, 5)
    assert (masks[0, 4:] == 255).all() and (masks[1, :, 3:] == 255).all() and (masks[1, :, :3] == 1).all()
    assert (images[0, :, 4:] == 0).all() and (images[0, :, :4] == 1).all()
