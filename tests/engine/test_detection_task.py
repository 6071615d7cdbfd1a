"""The detection task: box augmentation, collate, the COCOeval meter, the detector's loss, and the one
Trainer fine-tuning an assembled Faster R-CNN on a synthetic box dataset (random-init: no checkpoint)."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from synthetic.detection import CLASSES, config, make_voc_boxes

from seg_transfer.config import AugmentConfig, Config, from_dict
from seg_transfer.data.detection import BoxTransform, build_box_pipeline, build_box_transforms, detection_collate
from seg_transfer.engine.metrics import CocoMeter
from seg_transfer.engine.trainer import Trainer

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

H, W = 40, 60
SMALL_DETECTOR = {"backbone": "resnet18", "neck": "fpn", "head": "fasterrcnn", "backbone_weights": None,
                  "weights": None, "resize": 96}


def sample(masks: bool = False):
    image = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    target = {"boxes": np.array([[2, 3, 12, 13], [30, 10, 58, 38]], np.float32), "labels": np.array([1, 2]),
              "iscrowd": np.array([0, 1])}
    if masks:
        target["masks"] = np.zeros((2, H, W), np.uint8)
        target["masks"][0, 3:13, 2:12] = 1
        target["masks"][1, 10:38, 30:58] = 1
    return image, target


# -------------------------------------------------------------------------------------- transforms
@pytest.mark.parametrize("flip", ["HorizontalFlip", "VerticalFlip"])
def test_boxes_follow_a_flip_exactly(flip):
    image, target = sample(masks=True)
    img, out = BoxTransform(build_box_pipeline([{"name": flip, "p": 1.0}]))(image, target)
    boxes = target["boxes"].copy()
    if flip == "HorizontalFlip":
        boxes[:, [0, 2]] = W - boxes[:, [2, 0]]
        expected_image = image[:, ::-1]
    else:
        boxes[:, [1, 3]] = H - boxes[:, [3, 1]]
        expected_image = image[::-1]
    torch.testing.assert_close(out["boxes"], torch.from_numpy(boxes))
    assert img.dtype == torch.float32 and 0 <= float(img.min()) and float(img.max()) <= 1  # no normalisation
    torch.testing.assert_close(img, torch.from_numpy(expected_image.copy()).permute(2, 0, 1).float() / 255)
    assert out["labels"].tolist() == [1, 2] and out["iscrowd"].tolist() == [0, 1]
    for box, mask in zip(out["boxes"], out["masks"]):  # masks move with their boxes
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1] == box.int().tolist()


def test_crop_and_resize_move_boxes_and_drop_the_ones_left_outside():
    image, target = sample(masks=True)
    crop = [{"name": "Crop", "x_min": 0, "y_min": 0, "x_max": 20, "y_max": 20},
            {"name": "Resize", "height": 40, "width": 40}]
    img, out = BoxTransform(build_box_pipeline(crop))(image, target)
    assert img.shape == (3, 40, 40)
    torch.testing.assert_close(out["boxes"], torch.tensor([[4.0, 6.0, 24.0, 26.0]]))  # x2 scale
    assert out["labels"].tolist() == [1] and out["iscrowd"].tolist() == [0] and out["masks"].shape == (1, 40, 40)


def test_degenerate_boxes_are_dropped_and_empty_targets_pass():
    image, target = sample()
    # a 1-pixel sliver left at the crop's edge is degenerate after clipping: dropped
    crop = [{"name": "Crop", "x_min": 11, "y_min": 0, "x_max": 31, "y_max": 20}]
    _, out = BoxTransform(build_box_pipeline(crop))(image, target)
    assert out["boxes"].shape == (0, 4) or (out["boxes"][:, 2] - out["boxes"][:, 0] >= 1).all()
    empty = {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64),
             "masks": np.zeros((0, H, W), np.uint8)}
    train, val = build_box_transforms()
    for t in (train, val):
        img, out = t(image, empty)
        assert out["boxes"].shape == (0, 4) and out["labels"].shape == (0,) and out["masks"].shape == (0, H, W)


def test_collate_keeps_a_list_of_images_of_different_sizes():
    a = (torch.zeros(3, 10, 20), {"boxes": torch.zeros(0, 4)})
    b = (torch.zeros(3, 30, 15), {"boxes": torch.ones(1, 4)})
    images, targets = detection_collate([a, b])
    assert [tuple(i.shape) for i in images] == [(3, 10, 20), (3, 30, 15)]
    assert [len(t["boxes"]) for t in targets] == [0, 1]


# ------------------------------------------------------------------------------------------- meter
def gt(boxes, labels, crowd=None):
    t = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels)}
    if crowd is not None:
        t["iscrowd"] = torch.tensor(crowd)
    return t


def det(boxes, labels, scores):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels),
            "scores": torch.tensor(scores)}


def test_meter_perfect_missing_and_shifted_detections():
    targets = [gt([[10, 10, 50, 50], [60, 60, 90, 95]], [1, 2]), gt([[5, 5, 40, 30]], [1])]
    perfect = CocoMeter(3)
    perfect.update([det(t["boxes"].tolist(), t["labels"].tolist(), [0.9] * len(t["labels"])) for t in targets],
                   targets, [(100, 100)] * 2)
    m = perfect.compute()
    assert m["ap"] == pytest.approx(1.0) and m["ap50"] == pytest.approx(1.0)
    assert m["ap_per_class"] == pytest.approx([1.0, 1.0]) and m["ap50_per_class"] == pytest.approx([1.0, 1.0])

    nothing = CocoMeter(3)
    nothing.update([det([], [], []), det([], [], [])], targets)
    assert nothing.compute()["ap"] == 0.0

    # every box shifted by a quarter of its side: IoU 0.6 -> found at IoU 0.5, missed at 0.75
    shifted = CocoMeter(3)
    outs = []
    for t in targets:
        b = t["boxes"].clone()
        b[:, [0, 2]] += (b[:, 2] - b[:, 0])[:, None] / 4
        outs.append(det(b.tolist(), t["labels"].tolist(), [0.8] * len(b)))
    shifted.update(outs, targets)
    m = shifted.compute()
    assert m["ap50"] == pytest.approx(1.0) and m["ap75"] == 0.0 and 0 < m["ap"] < 1


def test_meter_wrong_class_scores_zero_for_that_class_and_crowd_is_ignored():
    targets = [gt([[10, 10, 50, 50], [60, 60, 90, 90]], [1, 2], crowd=[0, 1])]
    meter = CocoMeter(3)
    meter.update([det([[10, 10, 50, 50], [60, 60, 90, 90]], [1, 1], [0.9, 0.8])], targets)
    m = meter.compute()
    # class 1: one hit; the second class-1 box falls on nothing (a false positive ranked below the hit)
    assert m["ap50_per_class"][0] == pytest.approx(1.0)
    assert np.isnan(m["ap50_per_class"][1])  # class 2's only box is a crowd region: nothing to find


def test_meter_mask_ap():
    targets = [gt([[2, 2, 12, 12]], [1])]
    targets[0]["masks"] = torch.zeros(1, 20, 20, dtype=torch.uint8)
    targets[0]["masks"][0, 2:12, 2:12] = 1
    out = det([[2, 2, 12, 12]], [1], [0.9])
    out["masks"] = targets[0]["masks"][:, None].float()  # Mask R-CNN: N x 1 x H x W probabilities
    meter = CocoMeter(2, masks=True)
    meter.update([out], targets, [(20, 20)])
    m = meter.compute()
    assert m["mask_ap"] == pytest.approx(1.0) and m["ap"] == pytest.approx(1.0)


# --------------------------------------------------------------------------------- task + trainer
def small_trainer(root, out, **sections) -> Trainer:
    cfg = from_dict(Config, config(root, out, SMALL_DETECTOR, **sections))
    trainer = Trainer(cfg, progress=False, log=lambda _msg: None)
    # CPU-sized R-CNN sampling (torchvision samples 512 RoIs from 2000 proposals per image): the box
    # head's fully connected layers would otherwise dominate every step on tiny images
    model = trainer.model
    model.roi_heads.fg_bg_sampler.batch_size_per_image = 64
    model.rpn._pre_nms_top_n.update(training=600, testing=300)
    model.rpn._post_nms_top_n.update(training=300, testing=100)
    return trainer


def test_trainer_runs_a_detection_epoch_and_writes_reports(tmp_path, one_thread):
    root = make_voc_boxes(tmp_path / "data", n=6, size=64, val=2)
    trainer = small_trainer(root, tmp_path / "runs", train={"epochs": 1, "batch_size": 2})
    assert trainer.task.name == "detection" and trainer.classes == ["__background__", *CLASSES]
    result = trainer.fit()
    assert result.metric == "ap" and result.best_epoch == 1
    run = result.run_dir
    for name in ("metrics.csv", "curves.png", "predictions.png", "best.pt", "last.pt", "val_metrics_last.json"):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert list(rows[0])[:9] == ["epoch", "train_loss", "val_loss", "ap", "ap50", "ap75", "ap_small", "ap_medium",
                                 "ap_large"]
    assert np.isfinite(float(rows[0]["train_loss"])) and np.isfinite(float(rows[0]["val_loss"]))  # train-mode loss
    for name in ("confusion.png", "pr_curves.png", "predictions_best_worst.png", "run.json", "report.html"):
        assert (run / name).is_file(), name


@pytest.mark.slow
def test_finetune_lifts_ap50_on_synthetic_boxes(tmp_path, one_thread):
    """A random-init ResNet-18 FPN Faster R-CNN learns discs vs squares in a few CPU-minutes."""
    root = make_voc_boxes(tmp_path / "data", n=40, size=96, val=10)
    trainer = small_trainer(root, tmp_path / "runs", train={"epochs": 4, "lr": 0.01, "grad_clip": 10.0,
                                                            "warmup_epochs": 0.5, "scheduler": "cosine"},
                            output={"num_predictions": 0})
    _, before, _ = trainer.evaluate()
    result = trainer.fit()
    after = result.history[-1]
    assert before["ap50"] < 0.15
    assert max(r["ap50"] for r in result.history) > 0.5, result.history
    assert after["ap50"] > before["ap50"] + 0.35



def test_device_recipe_batches_carry_boxes_and_train(tmp_path, one_thread):
    """``augment.backend: device``: the decoded images flipped on the device with their boxes; a run trains."""
    root = make_voc_boxes(tmp_path / "data", n=6, size=64, val=2)
    trainer = small_trainer(root, tmp_path / "runs", train={"epochs": 1, "batch_size": 2},
                            augment={"backend": "device"}, cache={"images": "ram"})
    assert trainer.recipe is not None
    images, targets = next(trainer.batches(0))
    assert len(images) == len(targets) == 2
    for image, target in zip(images, targets):
        h, w = image.shape[-2:]
        boxes = target["boxes"]
        assert image.dtype == torch.float32 and len(boxes) == len(target["labels"]) > 0
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
    assert np.isfinite(trainer.fit().history[-1]["train_loss"])

# ------------------------------------------------------------------- confusion matrix, per-image F1, PR
def confusion_meter() -> CocoMeter:
    """Hand-made images whose every box's fate is known (classes: 0 background, 1, 2)."""
    meter = CocoMeter(3)
    meter.update(
        [det([[10, 10, 50, 50], [62, 60, 92, 90], [200, 200, 240, 240], [10, 10, 50, 50]], [1, 1, 2, 2],
             [0.9, 0.8, 0.9, 0.3]),                     # hit; a 2 called 1 (IoU 0.88); a false alarm; below 0.5
         det([[0, 0, 20, 20]], [1], [0.95]),            # on a crowd region: counts nowhere
         det([], [], []),                               # nothing labelled, nothing found
         det([[4, 0, 14, 10]], [1], [0.7])],            # overlaps both boxes: matched to the closer one (b)
        [gt([[10, 10, 50, 50], [60, 60, 90, 90]], [1, 2]),
         gt([[100, 100, 130, 130], [0, 0, 20, 20]], [1, 1], crowd=[0, 1]),  # one box missed, one crowd
         gt([], []),
         gt([[0, 0, 10, 10], [5, 0, 15, 10]], [1, 1])],  # a: IoU 0.43 with the detection, b: IoU 0.82
        [(256, 256)] * 4)
    return meter


def test_detection_confusion_counts_matches_misses_and_false_alarms():
    mat = confusion_meter().confusion(iou_threshold=0.5, score_threshold=0.5)
    # rows: true (background first), columns: predicted
    assert mat.tolist() == [[0, 0, 1],   # the false alarm of class 2
                            [2, 2, 0],   # image 2's missed box and box a missed; two hits
                            [0, 1, 0]]   # the 2 detected as a 1


def test_detection_per_image_f1_and_per_class_precision_recall():
    meter = confusion_meter()
    # image 1: 1 hit, a wrong class (a miss and a false alarm), 1 false alarm -> 2 / (2 + 3)
    assert meter.image_scores() == pytest.approx([0.4, 0.0, 1.0, 2 / 3])
    m = meter.compute()
    assert m["precision_per_class"] == pytest.approx([2 / 3, 0.0])  # class 1: 2 hits of 3 called 1
    assert m["recall_per_class"] == pytest.approx([0.5, 0.0]) and m["boxes_per_class"] == [4, 1]


def test_pr_curves_reuse_cocoeval_precision(tmp_path):
    targets = [gt([[10, 10, 50, 50], [60, 60, 90, 95]], [1, 2])]
    meter = CocoMeter(3)
    meter.update([det(t["boxes"].tolist(), t["labels"].tolist(), [0.9, 0.8]) for t in targets], targets, [(100, 100)])
    m = meter.compute()
    assert meter.pr_precision.shape == (2, 101) and meter.pr_recall.shape == (101,)
    assert np.allclose(meter.pr_precision, 1.0)  # every box found, nothing else: precision 1 at every recall
    assert meter.pr_precision.mean(1) == pytest.approx(m["ap50_per_class"])
    from seg_transfer.engine.plots import plot_pr_curves
    assert plot_pr_curves(meter.pr_recall, meter.pr_precision, CLASSES, tmp_path / "pr.png").stat().st_size > 5000


def test_crop_size_set_for_detection_is_named_as_unused(tmp_path):
    from seg_transfer.data.registry import build_dataset
    from seg_transfer.engine.tasks.detection import DetectionTask

    cfg = from_dict(Config, config(make_voc_boxes(tmp_path / "data", n=2, size=64, val=1), tmp_path / "runs",
                                   SMALL_DETECTOR, augment={"crop_size": 512}))
    task = DetectionTask(cfg, build_dataset(cfg.data))
    assert task.ignored_settings(cfg.augment) == [
        "warning: augment.crop_size: 512 is not used by detection: the detector resizes inside (model.resize); "
        "name a crop step in augment.train, e.g. RandomSizedBBoxSafeCrop"]
    assert task.ignored_settings(AugmentConfig()) == []


# ------------------------------------------------------------------------------------------ val loss
def test_val_loss_updates_nothing_and_restores_modes(tmp_path, one_thread):
    from seg_transfer.engine.tasks.detection import DetectionTask
    from seg_transfer.models.build import build_model

    model = build_model({**SMALL_DETECTOR, "num_classes": 3})
    model.rpn._pre_nms_top_n.update(training=200, testing=100)
    model.rpn._post_nms_top_n.update(training=100, testing=50)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    model.eval()
    model.backbone.body.layer1.train()  # a mixed state must come back as it was
    modes = {name: m.training for name, m in model.named_modules()}
    before = {k: v.clone() for k, v in model.state_dict().items()}  # parameters and BN buffers
    rng = torch.get_rng_state()
    root = make_voc_boxes(tmp_path / "data", n=2, size=64, val=1)
    cfg = from_dict(Config, config(root, tmp_path / "runs", SMALL_DETECTOR))
    from seg_transfer.data.registry import build_dataset
    splits = build_dataset(cfg.data)
    task = DetectionTask(cfg, splits)
    _, val_t = task.transforms(cfg.augment, None)
    images, targets = task.collate([splits.val.with_transform(val_t)[0], splits.train.with_transform(val_t)[0]])
    with torch.inference_mode():
        first = task.val_loss(model, images, targets)
        second = task.val_loss(model, images, targets)
    assert torch.isfinite(first) and float(first) > 0 and float(first) == float(second)  # RoI sampling seeded
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), [k for k in before if not torch.equal(before[k], after[k])]
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert torch.equal(torch.get_rng_state(), rng)  # training's random stream is not advanced
