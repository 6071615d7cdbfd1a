"""The built-in recipes on whole batches (``data.device_augment``) against the albumentations path they replace:
the same distributions of scale, crop position and flips (two-sample KS tests over the outputs of an image
that encodes its own coordinates), and image, mask and boxes aligned exactly."""
from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp

from seg_transfer.data import classification, segmentation
from seg_transfer.data.detection import BoxTransform, build_box_pipeline
from seg_transfer.data.device_augment import (
    ClassificationBatchAugment,
    DetectionBatchAugment,
    ScaleCrop,
    SegmentationBatchAugment,
    box_target,
    canvas_collate,
    detection_flips,
    draw_scale_crop,
)
from seg_transfer.data.transforms import build_pipeline, build_step, reseed
from seg_transfer.models.preprocess import Preprocess

IDENTITY = Preprocess(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
DRAWS = 1000


def ramp(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """An image whose red channel is its column and green its row (so each output pixel says where it came
    from), and a mask holding the column too."""
    y, x = np.mgrid[:h, :w]
    image = np.stack([x, y, np.full_like(x, 200)], -1).astype(np.uint8)
    return image, x.astype(np.uint8)


def stats(image: np.ndarray, valid: np.ndarray) -> tuple[float, float, float, float]:
    """(share of padding, mean source column, source columns spanned, left-right orientation) of an output
    (H x W x 3 in [0, 255]): what scale, crop position and flip leave in it."""
    image = np.round(image)  # the albumentations path resizes in uint8: compare at its precision
    cols = image[..., 0][valid]
    if not len(cols):
        return 1.0, 0.0, 0.0, 0.0
    row = image[image.shape[0] // 2, :, 0]
    return 1 - valid.mean(), float(cols.mean()), float(cols.max() - cols.min()), float(np.sign(row[-1] - row[0]))


def _replayed(h: int, w: int, crop: int, draws: int) -> list[dict]:
    """The parameters albumentations draws for the built-in segmentation recipe, from its ReplayCompose."""
    steps = [build_step(e) for e in segmentation.default_train_spec(crop)]
    replay = A.ReplayCompose(steps)
    image, mask = ramp(h, w)
    out = []
    for k in range(draws):
        reseed(replay, k)  # each step its own seed, as the training path seeds them
        record = {t["__class_fullname__"]: t for t in replay(image=image, mask=mask)["replay"]["transforms"]}
        x0, y0, _, _ = record["RandomCrop"]["params"]["crop_coords"]
        out.append({"scale": record["RandomScale"]["params"]["scale"], "top": y0, "left": x0,
                    "flip": record["HorizontalFlip"]["applied"]})
    return out


@pytest.mark.parametrize("h,w,crop", [(60, 90, 64), (120, 160, 48), (30, 200, 40)])
def test_segmentation_recipe_draws_the_albumentations_parameters(h, w, crop):
    """Scale, crop corner and flip: each drawn from the distribution albumentations draws it from."""
    cpu = _replayed(h, w, crop, DRAWS)
    drawn = draw_scale_crop(torch.tensor([[h, w]] * DRAWS), crop, torch.Generator().manual_seed(0))
    device = {"scale": drawn.scale.numpy(), "top": drawn.top.numpy(), "left": drawn.left.numpy(),
              "flip": drawn.flip.numpy()}
    for key in ("scale", "top", "left"):
        p = ks_2samp([c[key] for c in cpu], device[key]).pvalue
        assert p > 1e-3, (key, p)
    assert abs(np.mean([c["flip"] for c in cpu]) - device["flip"].mean()) < 0.06


@pytest.mark.parametrize("seed", range(6))
def test_segmentation_recipe_at_the_same_parameters_gives_the_same_pixels(seed):
    """Given the parameters albumentations drew, the batched path reproduces its image (to the rounding of
    OpenCV's fixed-point bilinear) and its mask (padding and classes, to one source pixel)."""
    h, w, crop = 60, 90, 64
    (p,) = _replayed(h, w, crop, 1) if seed == 0 else [_replayed(h, w, crop, seed + 1)[-1]]
    steps = [build_step(e) for e in segmentation.default_train_spec(crop)]
    replay = A.ReplayCompose(steps)
    reseed(replay, seed)
    image, mask = ramp(h, w)
    want = replay(image=image, mask=mask)
    params = ScaleCrop(torch.tensor([p["scale"]], dtype=torch.float64), torch.tensor([float(p["top"])], dtype=torch.float64),
                       torch.tensor([float(p["left"])], dtype=torch.float64), torch.tensor([p["flip"]]))
    item = (torch.from_numpy(image).permute(2, 0, 1).contiguous(), torch.from_numpy(mask))
    x, m = SegmentationBatchAugment(crop, IDENTITY)(canvas_collate([item]), torch.Generator(), params=params)
    got_image, got_mask = x[0].permute(1, 2, 0).numpy() * 255, m[0].numpy()
    assert ((got_mask == 255) == (want["mask"] == 255)).all()  # the same padding
    inside = want["mask"] != 255
    assert np.abs(got_image - want["image"]).max() <= 1.01
    assert np.abs(got_mask[inside].astype(int) - want["mask"][inside].astype(int)).max() <= 1


def test_classification_recipe_draws_the_albumentations_distributions():
    h, w, size = 90, 120, 32
    image, _ = ramp(h, w)
    train = classification.ClassTransform(build_pipeline(classification.default_train_spec(size)),
                                          IDENTITY)
    cpu = []
    for k in range(DRAWS):
        train.reseed(k)
        x, _ = train(image, 0)
        cpu.append(stats(x.permute(1, 2, 0).numpy() * 255, np.ones((size, size), bool)))
    aug = ClassificationBatchAugment(size, IDENTITY)
    g = torch.Generator().manual_seed(0)
    item = (torch.from_numpy(image).permute(2, 0, 1).contiguous(), 0)
    device = []
    for _ in range(DRAWS // 10):
        x, labels = aug(canvas_collate([item] * 10), g)
        assert labels.tolist() == [0] * 10
        device += [stats(xi.permute(1, 2, 0).numpy() * 255, np.ones((size, size), bool)) for xi in x]
    cpu_a, dev_a = np.array(cpu), np.array(device)
    for k, name in [(1, "mean column"), (2, "columns spanned"), (3, "orientation")]:
        p = ks_2samp(cpu_a[:, k], dev_a[:, k]).pvalue
        assert p > 1e-3, (name, p, cpu_a[:, k].mean(), dev_a[:, k].mean())


def test_segmentation_image_and_mask_stay_aligned_across_a_batch_of_sizes():
    """Inside the image, the mask (nearest) holds the column the image (bilinear) was sampled at, to half a
    pixel; the padding is 0 in the image and the ignore index in the mask; images of three sizes share a batch."""
    items = []
    for h, w in [(60, 90), (40, 50), (120, 100)]:
        image, mask = ramp(h, w)
        items.append((torch.from_numpy(image).permute(2, 0, 1).contiguous(), torch.from_numpy(mask)))
    aug = SegmentationBatchAugment(48, IDENTITY, ignore_index=255)
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        x, m = aug(canvas_collate(items), g)
        assert x.shape == (3, 3, 48, 48) and m.shape == (3, 48, 48) and m.dtype == torch.int64
        inside = m != 255
        assert inside.any()
        assert ((x[:, 0] * 255 - m.float()).abs()[inside] <= 0.5 + 1e-3).all()
        assert (x[~inside[:, None].expand_as(x)] == 0).all()


def test_detection_flips_move_boxes_with_the_image():
    h, w = 40, 60
    image = torch.zeros(3, h, w, dtype=torch.uint8)
    image[:, 5:15, 10:30] = 255  # one bright box
    target = {"boxes": torch.tensor([[10.0, 5.0, 30.0, 15.0]]), "labels": torch.tensor([1])}
    aug = DetectionBatchAugment(horizontal=0.5, vertical=0.5)
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(30):
        images, targets = aug.flip([image], [target], g)
        x0, y0, x1, y1 = targets[0]["boxes"][0].round().int().tolist()
        bright = images[0][0] > 0.5
        ys, xs = torch.nonzero(bright, as_tuple=True)
        assert (xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1) == (x0, y0, x1, y1)
        seen.add((x0, y0))
    assert len(seen) == 4  # no flip, each flip, both


def test_detection_flip_distribution_matches_albumentations():
    """The share of horizontally and vertically flipped draws, as BCCD's config sets them (p 0.5 each)."""
    spec = [{"name": "HorizontalFlip", "p": 0.5}, {"name": "VerticalFlip", "p": 0.5}]
    transform = BoxTransform(build_box_pipeline(spec))
    image = np.zeros((20, 30, 3), np.uint8)
    target = {"boxes": np.array([[2.0, 2.0, 8.0, 6.0]], np.float32), "labels": np.array([1])}
    cpu = []
    for k in range(DRAWS):
        transform.reseed(k)
        _, out = transform(image, target)
        cpu.append(out["boxes"][0, :2].tolist())
    aug = DetectionBatchAugment(0.5, 0.5)
    g = torch.Generator().manual_seed(0)
    device = [aug.flip([torch.from_numpy(image).permute(2, 0, 1)], [{k: torch.as_tensor(v) for k, v in target.items()}], g)[1][0]
              ["boxes"][0, :2].tolist() for _ in range(DRAWS)]
    for axis in (0, 1):
        a = np.mean([c[axis] > 5 for c in cpu])
        b = np.mean([d[axis] > 5 for d in device])
        assert abs(a - b) < 0.12 and 0.35 < b < 0.65


def test_device_targets_follow_the_cpu_box_rules():
    """As BoxTransform with no geometric step: boxes clipped to the image, those under 1 pixel dropped
    with their labels (a degenerate box stops a torchvision detector)."""
    target = {"boxes": np.array([[2, 3, 12, 13], [5, 5, 5.5, 20], [50, 10, 70, 30]], np.float32),
              "labels": np.array([1, 2, 1]), "iscrowd": np.array([0, 0, 1])}
    image = np.zeros((40, 60, 3), np.uint8)
    _, cpu = BoxTransform(build_box_pipeline([]))(image, target)
    device = box_target(target, (40, 60), torch.device("cpu"))
    assert device["boxes"].tolist() == cpu["boxes"].tolist() == [[2, 3, 12, 13], [50, 10, 60, 30]]
    for key in ("labels", "iscrowd"):
        assert device[key].tolist() == cpu[key].tolist()


def test_detection_flips_read_the_config_or_the_default_spec():
    assert detection_flips(None) == (0.5, 0.0)  # detection.default_train_spec: a horizontal flip at 0.5
    assert detection_flips([{"name": "VerticalFlip", "p": 0.3}]) == (0.0, 0.3)
    assert detection_flips([{"name": "HorizontalFlip"}, {"name": "RandomSizedBBoxSafeCrop", "height": 8}]) is None
