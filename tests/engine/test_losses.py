"""Losses: values against manual computations, ignored pixels, gradients, config errors, the criterion."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from seg_transfer.engine.losses import (
    BINARY_LOSSES,
    LOSSES,
    SegmentationCriterion,
    WeightedSum,
    build_binary_loss,
    build_loss,
    class_weights_from_counts,
)
from seg_transfer.errors import ConfigError

C, IGNORE = 4, 255


def batch(seed: int = 0, ignore_frac: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, C, 6, 7, generator=g)
    target = torch.randint(0, C, (2, 6, 7), generator=g)
    target[torch.rand(target.shape, generator=g) < ignore_frac] = IGNORE
    return logits, target


def manual_ce(logits, target, weight=None):
    """Weighted mean of -log p_t over labelled pixels, pixel by pixel."""
    logp = logits.log_softmax(1)
    num = den = 0.0
    for n, y, x in torch.nonzero(target != IGNORE).tolist():
        t = int(target[n, y, x])
        w = 1.0 if weight is None else weight[t]
        num += -w * float(logp[n, t, y, x])
        den += w
    return num / den


def manual_focal(logits, target, gamma):
    logp = logits.log_softmax(1)
    vals = [-(1 - math.exp(float(logp[n, target[n, y, x], y, x]))) ** gamma * float(logp[n, target[n, y, x], y, x])
            for n, y, x in torch.nonzero(target != IGNORE).tolist()]
    return sum(vals) / len(vals)


def manual_dice(logits, target, smooth=1.0):
    probs = logits.softmax(1)
    valid = target != IGNORE
    losses = []
    for c in range(C):
        p = probs[:, c][valid]
        g = (target[valid] == c).float()
        if g.sum() == 0:
            continue  # classes absent from the labelled pixels do not count
        losses.append(1 - (2 * float((p * g).sum()) + smooth) / (float(p.sum() + g.sum()) + smooth))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_is_finite_and_gradients_flow(name):
    logits, target = batch()
    logits.requires_grad_(True)
    loss = build_loss(name, C, IGNORE)
    value = loss(logits, target)
    assert value.dim() == 0 and torch.isfinite(value) and value > 0
    value.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_ignored_pixels_contribute_nothing(name):
    """Changing logits at ignored pixels changes neither the value nor gives them any gradient."""
    logits, target = batch(1, ignore_frac=0.4)
    loss = build_loss(name, C, IGNORE)
    other = logits.clone()
    mask = (target == IGNORE).unsqueeze(1).expand_as(logits)
    other[mask] = torch.randn(int(mask.sum())) * 10
    assert torch.equal(loss(logits, target), loss(other, target))
    other.requires_grad_(True)
    loss(other, target).backward()
    assert (other.grad[mask] == 0).all()


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_all_ignored_gives_zero_not_nan(name):
    logits, target = batch()
    logits.requires_grad_(True)
    value = build_loss(name, C, IGNORE)(logits, torch.full_like(target, IGNORE))
    assert value == 0
    value.backward()
    assert (logits.grad == 0).all()


def test_ce_matches_manual_and_torch():
    logits, target = batch()
    value = build_loss("ce", C, IGNORE)(logits, target)
    assert value.item() == pytest.approx(manual_ce(logits, target), rel=1e-5)
    assert torch.allclose(value, F.cross_entropy(logits, target, ignore_index=IGNORE))


def test_ce_class_weights_list_and_label_smoothing():
    logits, target = batch(2)
    weights = [0.5, 2.0, 1.0, 3.0]
    value = build_loss({"name": "ce", "class_weights": weights}, C, IGNORE)(logits, target)
    assert value.item() == pytest.approx(manual_ce(logits, target, weights), rel=1e-5)
    smoothed = build_loss({"name": "ce", "class_weights": weights, "label_smoothing": 0.1}, C, IGNORE)
    assert torch.allclose(smoothed(logits, target),
                          F.cross_entropy(logits, target, weight=torch.tensor(weights), ignore_index=IGNORE,
                                          label_smoothing=0.1))


def test_class_weights_from_counts():
    counts = [1000, 100, 10, 0]
    freq = [c / 1110 for c in counts[:3]]
    mf = class_weights_from_counts(counts, "median_frequency")
    assert mf[:3] == pytest.approx([freq[1] / f for f in freq]) and mf[3] == 0.0
    assert mf[1] == pytest.approx(1.0)  # the median class gets weight 1
    il = class_weights_from_counts(torch.tensor(counts), "inverse_log")
    assert il[:3] == pytest.approx([1 / math.log(1.02 + f) for f in freq]) and il[3] == 0.0
    assert il[0] < il[1] < il[2]  # rarer classes weigh more
    sq = class_weights_from_counts(counts, "sqrt_frequency")
    assert sq[:3] == pytest.approx([math.sqrt(w) for w in mf[:3]]) and sq[3] == 0.0
    assert mf[2] > sq[2] > 1 > sq[0] > mf[0]  # the same order, milder
    with pytest.raises(ConfigError, match="did you mean 'median_frequency'"):
        class_weights_from_counts(counts, "median_freq")


def test_ce_class_weights_from_counts_by_name():
    logits, target = batch(3)
    counts = [500, 50, 20, 5]
    loss = build_loss({"name": "ce", "class_weights": "inverse_log"}, C, IGNORE, class_counts=counts)
    expected = manual_ce(logits, target, class_weights_from_counts(counts, "inverse_log"))
    assert loss(logits, target).item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ConfigError, match="class pixel counts"):
        build_loss({"name": "ce", "class_weights": "median_frequency"}, C, IGNORE)
    with pytest.raises(ConfigError, match="3 weights given for 4 classes"):
        build_loss({"name": "ce", "class_weights": [1, 2, 3]}, C, IGNORE)


def test_dice_matches_manual():
    logits, target = batch(4)
    target[target == 3] = 2  # class 3 absent: it must not count
    value = build_loss({"name": "dice", "smooth": 0.5}, C, IGNORE)(logits, target)
    assert value.item() == pytest.approx(manual_dice(logits, target, 0.5), rel=1e-5)


def test_dice_perfect_prediction_is_near_zero():
    _, target = batch(5)
    logits = F.one_hot(target.clamp_max(C - 1), C).permute(0, 3, 1, 2).float() * 50
    assert build_loss("dice", C, IGNORE)(logits, target).item() < 1e-4


@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_focal_matches_manual(gamma):
    logits, target = batch(6)
    value = build_loss({"name": "focal", "gamma": gamma}, C, IGNORE)(logits, target)
    assert value.item() == pytest.approx(manual_focal(logits, target, gamma), rel=1e-5)
    if gamma == 0:  # focal with gamma 0 is cross-entropy
        assert torch.allclose(value, F.cross_entropy(logits, target, ignore_index=IGNORE))


def test_weighted_sum_from_config_list():
    logits, target = batch(7)
    loss = build_loss([{"name": "ce", "weight": 1.0}, {"name": "dice", "weight": 0.5}], C, IGNORE)
    assert isinstance(loss, WeightedSum)
    expected = manual_ce(logits, target) + 0.5 * manual_dice(logits, target)
    assert loss(logits, target).item() == pytest.approx(expected, rel=1e-5)
    assert set(loss.last) == {"ce", "dice"}
    assert not isinstance(build_loss([{"name": "ce"}], C, IGNORE), WeightedSum)  # one plain term stays plain


def test_config_errors_name_the_problem():
    with pytest.raises(ConfigError, match="unknown loss 'dic' \\(did you mean 'dice'\\?\\); valid: ce, dice, focal"):
        build_loss([{"name": "ce"}, {"name": "dic"}], C, IGNORE)
    with pytest.raises(ConfigError, match="did you mean 'gamma'"):
        build_loss({"name": "focal", "gama": 2}, C, IGNORE)
    with pytest.raises(ConfigError, match="needs a 'name'"):
        build_loss([{"weight": 1.0}], C, IGNORE)
    with pytest.raises(ConfigError, match="weight"):
        build_loss({"name": "ce", "weight": "high"}, C, IGNORE)


def test_criterion_adds_weighted_aux():
    logits, target = batch(8)
    aux = torch.randn_like(logits)
    ce = build_loss("ce", C, IGNORE)
    expected = ce(logits, target) + 0.5 * ce(aux, target)
    assert torch.allclose(SegmentationCriterion(ce)({"out": logits, "aux": aux}, target), expected)
    assert torch.allclose(SegmentationCriterion(ce, aux_weight=0.2)({"out": logits, "aux": aux}, target),
                          ce(logits, target) + 0.2 * ce(aux, target))
    # No aux head (or aux None): the main loss alone.
    assert torch.equal(SegmentationCriterion(ce)({"out": logits}, target), ce(logits, target))
    assert torch.equal(SegmentationCriterion(ce)({"out": logits, "aux": None}, target), ce(logits, target))
    assert torch.equal(SegmentationCriterion(ce)(logits, target), ce(logits, target))


# ------------------------------------------------------------------------------------ binary losses
def binary_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Four pixels of one image: logits 0, 2, -1, 3 against labels 0, 1, 1, ignore."""
    logits = torch.tensor([0.0, 2.0, -1.0, 3.0]).view(1, 1, 2, 2)
    target = torch.tensor([0, 1, 1, IGNORE]).view(1, 2, 2)
    return logits, target


def s(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_binary_bce_matches_hand_computation():
    logits, target = binary_batch()
    # -log(1 - s(0)), -log(s(2)), -log(s(-1)); the ignored pixel counts nowhere
    expected = (-math.log(1 - s(0)) - math.log(s(2)) - math.log(s(-1))) / 3
    assert build_binary_loss("bce")(logits, target).item() == pytest.approx(expected, rel=1e-6)
    # pos_weight multiplies the foreground pixels' terms
    weighted = (-math.log(1 - s(0)) - 3 * math.log(s(2)) - 3 * math.log(s(-1))) / 3
    assert build_binary_loss({"name": "bce", "pos_weight": 3})(logits, target).item() == pytest.approx(weighted, rel=1e-6)


def test_binary_dice_and_default_bce_plus_dice():
    logits, target = binary_batch()
    p = [s(0), s(2), s(-1)]
    g = [0, 1, 1]
    dice = 1 - (2 * (p[1] + p[2]) + 1) / (sum(p) + sum(g) + 1)
    assert build_binary_loss("dice")(logits, target).item() == pytest.approx(dice, rel=1e-6)
    bce = (-math.log(1 - s(0)) - math.log(s(2)) - math.log(s(-1))) / 3
    default = build_binary_loss(None)  # train.loss left out: BCE + Dice, weight 1 each
    assert isinstance(default, WeightedSum) and set(default.last) == set()
    assert default(logits, target).item() == pytest.approx(bce + dice, rel=1e-6)
    assert set(default.last) == {"bce", "dice"}
    # the criterion reads a binary model's {"out", "aux"} as for any other
    crit = SegmentationCriterion(build_binary_loss("bce"), aux_weight=0.5)
    assert crit({"out": logits, "aux": torch.zeros_like(logits)}, target).item() == pytest.approx(
        bce + 0.5 * math.log(2), rel=1e-6)


def test_binary_focal_matches_hand_computation():
    logits, target = binary_batch()
    p_t = [1 - s(0), s(2), s(-1)]  # the probability of each pixel's own label
    expected = sum(-((1 - q) ** 2) * math.log(q) for q in p_t) / 3
    assert build_binary_loss("focal")(logits, target).item() == pytest.approx(expected, rel=1e-5)
    alpha = [0.75, 0.25, 0.25]  # alpha = 0.25 weighs the foreground, 1 - alpha the background
    expected = sum(-a * ((1 - q) ** 2) * math.log(q) for a, q in zip(alpha, p_t)) / 3
    assert build_binary_loss({"name": "focal", "alpha": 0.25})(logits, target).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", sorted(BINARY_LOSSES))
def test_binary_losses_ignore_pixels_and_give_zero_when_all_ignored(name):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 1, 5, 6, generator=g)
    target = torch.randint(0, 2, (2, 5, 6), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.3] = IGNORE
    loss = build_binary_loss(name)
    other = logits.clone()
    ignored = (target == IGNORE).unsqueeze(1)
    other[ignored] = torch.randn(int(ignored.sum()), generator=g) * 10
    assert torch.equal(loss(logits, target), loss(other, target))
    other.requires_grad_(True)
    loss(other, target).backward()
    assert (other.grad[ignored] == 0).all() and other.grad.abs().sum() > 0
    assert loss(logits, torch.full_like(target, IGNORE)).item() == 0.0


def test_binary_loss_errors_name_the_problem():
    with pytest.raises(ConfigError, match="unknown loss 'ce' \\(did you mean 'bce'\\?\\); valid: bce, dice, focal"):
        build_binary_loss("ce")
    with pytest.raises(ConfigError, match="loss.pos_weight: expected a positive number"):
        build_binary_loss({"name": "bce", "pos_weight": -1})
    with pytest.raises(ConfigError, match="did you mean 'pos_weight'"):
        build_binary_loss({"name": "bce", "pos_wieght": 2})
    with pytest.raises(ValueError, match="one logit channel"):
        build_binary_loss("bce")(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
