"""ConfusionMatrix against a brute-force numpy computation; ignored pixels, absent classes, reduce()."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist

from seg_transfer.engine.metrics import (
    BinarySegmentationMeter,
    ClassificationMeter,
    ConfusionMatrix,
    SegmentationMeter,
    binary_image_iou,
    binary_prediction,
    binary_scores,
    image_iou,
)

IGNORE = 255


def brute_force(preds: list[np.ndarray], targets: list[np.ndarray], n: int) -> dict:
    """IoU and accuracies straight from the definition, class by class over labelled pixels."""
    p = np.concatenate([x.ravel() for x in preds])
    t = np.concatenate([x.ravel() for x in targets])
    keep = t != IGNORE
    p, t = p[keep], t[keep]
    iou, acc = [], []
    for c in range(n):
        inter = np.sum((p == c) & (t == c))
        union = np.sum((p == c) | (t == c))
        iou.append(inter / union if union else math.nan)
        acc.append(inter / np.sum(t == c) if np.sum(t == c) else math.nan)
    return {"iou": iou, "miou": np.nanmean(iou), "pixel_accuracy": np.mean(p == t),
            "mean_accuracy": np.nanmean(acc)}


def random_batch(g: torch.Generator, n: int, absent: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    target = torch.randint(0, n, (2, 9, 11), generator=g)
    pred = torch.where(torch.rand(target.shape, generator=g) < 0.6, target,
                       torch.randint(0, n, target.shape, generator=g))
    for c in absent:  # make class c absent from both prediction and labels
        target[target == c] = (c + 1) % n
        pred[pred == c] = (c + 1) % n
    target[torch.rand(target.shape, generator=g) < 0.15] = IGNORE
    return pred, target


def assert_matches(result: dict, expected: dict) -> None:
    np.testing.assert_allclose(result["iou"], expected["iou"], rtol=1e-12)  # NaN == NaN here
    for key in ("miou", "pixel_accuracy", "mean_accuracy"):
        assert result[key] == pytest.approx(expected[key], rel=1e-12), key


@pytest.mark.parametrize("seed", range(3))
def test_streaming_matches_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    n = 5
    metric = ConfusionMatrix(n, IGNORE)
    preds, targets = [], []
    for _ in range(4):
        pred, target = random_batch(g, n, absent=(3,))
        metric.update(pred, target)
        preds.append(pred.numpy())
        targets.append(target.numpy())
    result = metric.compute()
    assert_matches(result, brute_force(preds, targets, n))
    assert math.isnan(result["iou"][3]) and not math.isnan(result["miou"])  # absent class left out of the mean
    assert int(metric.mat.sum()) == sum(int((t != IGNORE).sum()) for t in targets)


def test_logits_are_argmaxed():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, generator=g)
    target = torch.randint(0, 4, (2, 5, 6), generator=g)
    a, b = ConfusionMatrix(4), ConfusionMatrix(4)
    a.update(logits, target)
    b.update(logits.argmax(1), target)
    assert torch.equal(a.mat, b.mat)


def test_ignored_pixels_are_excluded():
    """Whatever is predicted where the label is ignore_index changes nothing."""
    g = torch.Generator().manual_seed(1)
    pred, target = random_batch(g, 4)
    other = pred.clone()
    other[target == IGNORE] = (other[target == IGNORE] + 1) % 4
    a, b = ConfusionMatrix(4, IGNORE), ConfusionMatrix(4, IGNORE)
    a.update(pred, target)
    b.update(other, target)
    assert torch.equal(a.mat, b.mat)


def test_perfect_prediction_gives_one():
    g = torch.Generator().manual_seed(2)
    _, target = random_batch(g, 3)
    metric = ConfusionMatrix(3, IGNORE)
    metric.update(target.clamp_max(2), target)
    result = metric.compute()
    assert result["miou"] == result["pixel_accuracy"] == result["mean_accuracy"] == 1.0
    assert result["iou"] == [1.0, 1.0, 1.0]


def test_class_only_predicted_has_iou_zero_and_reset():
    metric = ConfusionMatrix(3, IGNORE)
    metric.update(torch.tensor([[0, 1, 1]]), torch.tensor([[0, 0, IGNORE]]))
    result = metric.compute()
    assert result["iou"][0] == 0.5 and result["iou"][1] == 0.0 and math.isnan(result["iou"][2])
    assert result["miou"] == pytest.approx(0.25)
    assert math.isnan(result["class_accuracy"][1])  # never labelled: no accuracy, IoU 0 (a false positive)
    metric.reset()
    assert metric.mat.sum() == 0 and math.isnan(metric.compute()["miou"])


def test_reduce_is_noop_without_distributed():
    metric = ConfusionMatrix(3)
    metric.update(torch.tensor([[0, 1, 2]]), torch.tensor([[0, 1, 1]]))
    before = metric.mat.clone()
    assert metric.reduce() is metric and torch.equal(metric.mat, before)


def test_reduce_all_reduces_when_initialised(tmp_path):
    """A one-process gloo group: the all-reduce runs (and, with one rank, keeps the counts)."""
    try:
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    except Exception as err:  # gloo unavailable in this build/sandbox
        pytest.skip(f"cannot start a gloo process group: {err}")
    try:
        metric = ConfusionMatrix(3)
        metric.update(torch.tensor([[0, 1, 2]]), torch.tensor([[0, 1, 1]]))
        before = metric.mat.clone()
        metric.reduce()
        assert torch.equal(metric.mat, before)
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------- per-image scores
def test_image_iou_scores_each_image_over_its_own_classes():
    target = torch.tensor([[[0, 0, 1, 1]], [[2, 2, 2, IGNORE]], [[IGNORE, IGNORE, IGNORE, IGNORE]]])
    pred = torch.tensor([[[0, 0, 1, 0]], [[2, 2, 2, 1]], [[0, 1, 2, 3]]])
    # image 1: class 0 IoU 2/3, class 1 IoU 1/2; image 2: class 2 perfect (the ignored pixel's 1 is not
    # counted); image 3: nothing labelled -> 1.0
    expected = [(2 / 3 + 1 / 2) / 2, 1.0, 1.0]
    assert image_iou(pred, target, 3, IGNORE).tolist() == pytest.approx(expected)
    meter = SegmentationMeter(3, IGNORE)
    logits = torch.nn.functional.one_hot(pred.clamp(max=2), 3).permute(0, 3, 1, 2).float()
    meter.update({"out": logits[:2]}, target[:2])
    meter.update({"out": logits[2:]}, target[2:])
    assert meter.reduce().image_scores() == pytest.approx(expected)  # in dataset order, over batches


def test_classification_image_score_is_the_true_class_probability():
    meter = ClassificationMeter(3, k=2)
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    meter.update(logits, torch.tensor([0, 1]))
    probs = logits.softmax(1)
    assert meter.reduce().image_scores() == pytest.approx([float(probs[0, 0]), float(probs[1, 1])])


# ------------------------------------------------------------------------------- binary segmentation
def test_binary_scores_exact_on_hand_made_masks():
    """Labels and prediction of 8 pixels: tp 3, fp 1, fn 2, tn 1, one ignored."""
    target = torch.tensor([[[1, 1, 1, 1, 1, 0, 0, IGNORE]]])  # N x H x W
    pred = torch.tensor([[[1, 1, 1, 0, 0, 1, 0, 1]]])
    meter = BinarySegmentationMeter(ignore_index=IGNORE)
    meter.update(torch.where(pred == 1, 4.0, -4.0)[:, None], target)  # N x 1 x H x W logits: sigmoid 0.98 / 0.02
    m = meter.reduce().compute()
    assert m["iou"] == pytest.approx(3 / 6)
    assert m["dice"] == pytest.approx(6 / 9)
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["recall"] == pytest.approx(3 / 5)
    assert m["pixel_accuracy"] == pytest.approx(4 / 7)
    assert m["class_iou"] == pytest.approx([1 / 4, 3 / 6])  # background: tn 1 over tn + fp + fn = 4
    assert m["miou"] == pytest.approx((1 / 4 + 3 / 6) / 2) and m["threshold"] == 0.5
    assert meter.image_scores() == pytest.approx([0.5])


def test_binary_meter_thresholds_the_sigmoid():
    """Foreground where sigmoid(logit) >= threshold: the same logits score differently at 0.3 and 0.7."""
    probs = torch.tensor([0.2, 0.4, 0.6, 0.8])
    logits = torch.logit(probs).view(1, 1, 1, 4)
    target = torch.tensor([[[0, 1, 1, 1]]])
    np.testing.assert_array_equal(binary_prediction(logits, 0.5).numpy(), [[[0, 0, 1, 1]]])
    low, high = BinarySegmentationMeter(0.3, IGNORE), BinarySegmentationMeter(0.7, IGNORE)
    for meter in (low, high):
        meter.update({"out": logits}, target)
    assert low.compute()["recall"] == 1.0 and low.compute()["precision"] == 1.0 and low.compute()["iou"] == 1.0
    assert high.compute()["recall"] == pytest.approx(1 / 3) and high.compute()["iou"] == pytest.approx(1 / 3)


def test_binary_scores_are_nan_where_nothing_was_measured():
    nothing = binary_scores(torch.tensor([[5, 0], [0, 0]]))  # all background, predicted so
    assert math.isnan(nothing["iou"]) and math.isnan(nothing["dice"]) and math.isnan(nothing["precision"])
    assert math.isnan(nothing["recall"]) and nothing["pixel_accuracy"] == 1.0
    missed = binary_scores(torch.tensor([[2, 0], [3, 0]]))  # foreground never predicted
    assert missed["iou"] == 0.0 and missed["recall"] == 0.0 and math.isnan(missed["precision"])


def test_binary_image_iou_per_image():
    target = torch.tensor([[[1, 1, 0, 0]], [[0, 0, 0, 0]], [[0, 0, 0, IGNORE]], [[1, 0, 0, 0]]])
    pred = torch.tensor([[[1, 0, 0, 0]], [[0, 0, 0, 0]], [[0, 0, 1, 1]], [[0, 0, 0, 0]]])
    # half found; nothing to find and nothing found; a false positive (the ignored pixel does not count); missed
    assert binary_image_iou(pred, target, IGNORE).tolist() == [0.5, 1.0, 0.0, 0.0]
