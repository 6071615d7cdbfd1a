"""Segmentation losses: name -> builder, weighted sums from config, and the criterion over ``{"out", "aux"}``.

Every loss maps ``(logits N×C×H×W, target N×H×W)`` to a scalar averaged over the pixels whose label is
not ``ignore_index``; a batch with no such pixel gives 0 (not NaN), and no loss synchronises with the GPU.

    loss:                               # a name, one {name: ..., weight: ..., <builder kwargs>} or a list
      - {name: ce, weight: 1.0, class_weights: median_frequency}
      - {name: dice, weight: 0.5}

A binary model (one sigmoid channel: logits N×1×H×W, targets 0/1) takes ``BINARY_LOSSES`` (bce, dice,
focal) the same way, BCE + Dice when ``loss`` is left out.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from ..errors import ConfigError, unknown

WEIGHT_METHODS = ("median_frequency", "sqrt_frequency", "inverse_log")
ClassWeights = Union[Sequence[float], str, None]
LossSpec = Union[str, Mapping[str, Any], Sequence[Union[str, Mapping[str, Any]]]]


def class_weights_from_counts(counts: Sequence[float] | torch.Tensor,
                              method: str = "median_frequency") -> list[float]:
    """Per-class loss weights from label pixel counts, for imbalanced data such as CamVid.

    ``median_frequency`` (Eigen & Fergus): ``median(freq) / freq_c``; ``sqrt_frequency``: its square root
    (a milder boost of rare classes); ``inverse_log`` (ENet): ``1 / ln(1.02 + freq_c)``. Classes with no
    pixels get weight 0: they cannot occur in the loss anyway.
    """
    if method not in WEIGHT_METHODS:
        raise unknown("class weight method", method, WEIGHT_METHODS, "class_weights")
    counts_t = torch.as_tensor(counts, dtype=torch.float64).flatten()
    if (counts_t < 0).any() or counts_t.sum() <= 0:
        raise ConfigError("class_weights: class pixel counts must be non-negative with a positive total")
    freq = counts_t / counts_t.sum()
    present = counts_t > 0
    weights = torch.zeros_like(freq)
    if method in ("median_frequency", "sqrt_frequency"):
        weights[present] = freq[present].median() / freq[present]
        if method == "sqrt_frequency":
            weights = weights.sqrt()
    else:
        weights[present] = 1.0 / torch.log(1.02 + freq[present])
    return weights.tolist()


def _resolve_class_weights(class_weights: ClassWeights, num_classes: int,
                           class_counts: Optional[Sequence[float]]) -> Optional[torch.Tensor]:
    if class_weights is None:
        return None
    if isinstance(class_weights, str):
        if class_weights not in WEIGHT_METHODS:
            raise unknown("class weight method", class_weights, WEIGHT_METHODS, "loss.class_weights")
        if class_counts is None:
            raise ConfigError(f"loss.class_weights: '{class_weights}' needs the training set's class pixel "
                              f"counts, and none were given")
        class_weights = class_weights_from_counts(class_counts, class_weights)
    weights = torch.as_tensor(class_weights, dtype=torch.float32).flatten()
    if weights.numel() != num_classes:
        raise ConfigError(f"loss.class_weights: {weights.numel()} weights given for {num_classes} classes")
    return weights


def _safe_div(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    # 0 instead of NaN when every pixel is ignored, without a host sync (no `if count > 0`).
    return total / torch.where(count > 0, count, torch.ones_like(count))


class CrossEntropyLoss(nn.Module):
    """Cross-entropy, optionally class-weighted; weighted mean like ``F.cross_entropy``, ignore-aware."""

    weight: Optional[torch.Tensor]  # a buffer (register_buffer below)

    def __init__(self, ignore_index: int = 255, weight: Optional[torch.Tensor] = None,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.ignore_index, self.label_smoothing = ignore_index, label_smoothing
        # A buffer, so that .to(device) moves it with the model and it shows in the repr.
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # reduction="sum" is the per-pixel losses' sum without materialising them (nor their gradient)
        total = F.cross_entropy(logits, target, weight=self.weight, ignore_index=self.ignore_index,
                                reduction="sum", label_smoothing=self.label_smoothing)
        valid = target != self.ignore_index
        if self.weight is None:
            denom = valid.sum().to(total.dtype)
        else:
            denom = (self.weight.to(total.dtype)[target.masked_fill(~valid, 0)] * valid).sum()
        return _safe_div(total, denom)


class DiceLoss(nn.Module):
    """Multi-class soft Dice on softmax probabilities: ``1 - mean_c dice_c`` over the classes present
    in the batch's labelled pixels (absent classes would only add a constant); ignored pixels count
    neither in the prediction nor in the target."""

    def __init__(self, num_classes: int, ignore_index: int = 255, smooth: float = 1.0) -> None:
        super().__init__()
        self.num_classes, self.ignore_index, self.smooth = num_classes, ignore_index, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = (target != self.ignore_index).unsqueeze(1).to(logits.dtype)          # N,1,H,W
        probs = logits.float().softmax(1) * valid
        onehot = F.one_hot(target.masked_fill(target == self.ignore_index, 0),
                           self.num_classes).permute(0, 3, 1, 2).to(probs.dtype) * valid
        dims = (0, 2, 3)
        inter = (probs * onehot).sum(dims)
        card = probs.sum(dims) + onehot.sum(dims)
        dice = (2 * inter + self.smooth) / (card + self.smooth)
        present = (onehot.sum(dims) > 0).to(dice.dtype)
        return _safe_div(((1 - dice) * present).sum(), present.sum())


class FocalLoss(nn.Module):
    """Focal loss ``-(1 - p_t)^gamma log p_t`` (Lin et al.), averaged over labelled pixels."""

    def __init__(self, ignore_index: int = 255, gamma: float = 2.0) -> None:
        super().__init__()
        self.ignore_index, self.gamma = ignore_index, gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = target != self.ignore_index
        logp = logits.float().log_softmax(1).gather(1, target.masked_fill(~valid, 0).unsqueeze(1)).squeeze(1)
        per_pixel = -((1 - logp.exp()).clamp_min(0) ** self.gamma) * logp * valid
        return _safe_div(per_pixel.sum(), valid.sum().to(per_pixel.dtype))


def _ce(num_classes: int, ignore_index: int = 255, class_weights: ClassWeights = None,
        label_smoothing: float = 0.0, class_counts: Optional[Sequence[float]] = None) -> nn.Module:
    """Cross-entropy; ``class_weights``: a list, 'median_frequency', 'sqrt_frequency' or 'inverse_log' (from class counts)."""
    return CrossEntropyLoss(ignore_index, _resolve_class_weights(class_weights, num_classes, class_counts),
                            label_smoothing)


def _dice(num_classes: int, ignore_index: int = 255, smooth: float = 1.0) -> nn.Module:
    """Multi-class soft Dice."""
    return DiceLoss(num_classes, ignore_index, smooth)


def _focal(num_classes: int, ignore_index: int = 255, gamma: float = 2.0) -> nn.Module:
    """Focal loss."""
    return FocalLoss(ignore_index, gamma)


LossBuilder = Callable[..., nn.Module]
LOSSES: dict[str, LossBuilder] = {"ce": _ce, "dice": _dice, "focal": _focal}


# ------------------------------------------------------------------------------------------ binary
def _foreground_logit(logits: torch.Tensor) -> torch.Tensor:
    """N×H×W float logits from a binary model's N×1×H×W output (or N×H×W as it is)."""
    if logits.dim() == 4:
        if logits.shape[1] != 1:
            raise ValueError(f"a binary loss takes one logit channel, got {logits.shape[1]}")
        logits = logits[:, 0]
    return logits.float()


def _binary_target(target: torch.Tensor, ignore_index: int,
                   dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(0/1 float foreground target with ignored pixels 0, the labelled-pixel mask)."""
    valid = target != ignore_index
    return (target == 1).to(dtype), valid


class BinaryCrossEntropyLoss(nn.Module):
    """Binary cross-entropy of one sigmoid channel against 0/1 labels, averaged over labelled pixels;
    ``pos_weight`` multiplies the foreground pixels' term (``F.binary_cross_entropy_with_logits``)."""

    def __init__(self, ignore_index: int = 255, pos_weight: Optional[float] = None) -> None:
        super().__init__()
        self.ignore_index, self.pos_weight = ignore_index, pos_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logit = _foreground_logit(logits)
        y, valid = _binary_target(target, self.ignore_index, logit.dtype)
        pos_weight = None if self.pos_weight is None else logit.new_tensor(self.pos_weight)
        per_pixel = F.binary_cross_entropy_with_logits(logit, y, pos_weight=pos_weight, reduction="none")
        return _safe_div(torch.where(valid, per_pixel, 0.0).sum(), valid.sum().to(logit.dtype))


class BinaryDiceLoss(nn.Module):
    """Soft Dice of the foreground over the batch's labelled pixels: ``1 - (2 sum(p g) + s) / (sum p + sum g + s)``
    with ``p`` the sigmoid probability and ``g`` the 0/1 label."""

    def __init__(self, ignore_index: int = 255, smooth: float = 1.0) -> None:
        super().__init__()
        self.ignore_index, self.smooth = ignore_index, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logit = _foreground_logit(logits)
        y, valid = _binary_target(target, self.ignore_index, logit.dtype)
        p = torch.where(valid, logit.sigmoid(), 0.0)
        inter, card = (p * y).sum(), p.sum() + y.sum()
        return 1 - (2 * inter + self.smooth) / (card + self.smooth)


class BinaryFocalLoss(nn.Module):
    """Sigmoid focal loss (torchvision's ``sigmoid_focal_loss``) averaged over labelled pixels; ``alpha``
    weighs the foreground (``1 - alpha`` the background), None for no weighting."""

    def __init__(self, ignore_index: int = 255, gamma: float = 2.0, alpha: Optional[float] = None) -> None:
        super().__init__()
        self.ignore_index, self.gamma, self.alpha = ignore_index, gamma, alpha

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logit = _foreground_logit(logits)
        y, valid = _binary_target(target, self.ignore_index, logit.dtype)
        per_pixel = sigmoid_focal_loss(logit, y, alpha=-1.0 if self.alpha is None else self.alpha,
                                       gamma=self.gamma, reduction="none")
        return _safe_div(torch.where(valid, per_pixel, 0.0).sum(), valid.sum().to(logit.dtype))


def _positive(value: Optional[float], where: str) -> Optional[float]:
    if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0):
        raise ConfigError(f"{where}: expected a positive number, got {value!r}")
    return None if value is None else float(value)


def _bce(ignore_index: int = 255, pos_weight: Optional[float] = None) -> nn.Module:
    """Binary cross-entropy; ``pos_weight`` > 1 weighs the foreground up (rare foreground)."""
    return BinaryCrossEntropyLoss(ignore_index, _positive(pos_weight, "loss.pos_weight"))


def _binary_dice(ignore_index: int = 255, smooth: float = 1.0) -> nn.Module:
    """Soft Dice of the foreground."""
    return BinaryDiceLoss(ignore_index, smooth)


def _binary_focal(ignore_index: int = 255, gamma: float = 2.0, alpha: Optional[float] = None) -> nn.Module:
    """Sigmoid focal loss."""
    if alpha is not None and not 0 < alpha < 1:
        raise ConfigError(f"loss.alpha: expected a number between 0 and 1 (or null), got {alpha!r}")
    return BinaryFocalLoss(ignore_index, gamma, alpha)


# A binary model (one sigmoid channel) trains with these; ``train.loss`` left out means BINARY_DEFAULT.
BINARY_LOSSES: dict[str, LossBuilder] = {"bce": _bce, "dice": _binary_dice, "focal": _binary_focal}
BINARY_DEFAULT: list[dict[str, Any]] = [{"name": "bce", "weight": 1.0}, {"name": "dice", "weight": 1.0}]


class WeightedSum(nn.Module):
    """``sum_i weight_i * loss_i``; ``last`` keeps the detached terms of the latest call for logging."""

    def __init__(self, terms: Sequence[tuple[str, float, nn.Module]]) -> None:
        super().__init__()
        self.names = [name for name, _, _ in terms]
        self.weights = [float(w) for _, w, _ in terms]
        self.losses = nn.ModuleList(loss for _, _, loss in terms)
        self.last: dict[str, torch.Tensor] = {}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total, self.last = None, {}
        for name, weight, loss in zip(self.names, self.weights, self.losses):
            value = loss(logits, target)
            self.last[name if name not in self.last else f"{name}_{len(self.last)}"] = value.detach()
            total = weight * value if total is None else total + weight * value
        assert total is not None  # build_loss gives at least one term
        return total


def _term(item: Union[str, Mapping[str, Any]], registry: Mapping[str, LossBuilder], context: Mapping[str, Any],
          where: str) -> tuple[str, float, nn.Module]:
    """One ``{name, weight, **kwargs}`` term; ``context`` holds what the task supplies (class count,
    ignore index, class counts), passed to the builders that take it."""
    kwargs: dict[str, Any] = {"name": item} if isinstance(item, str) else dict(item)
    if "name" not in kwargs:
        raise ConfigError(f"{where}: each loss needs a 'name' (one of {', '.join(sorted(registry))})")
    name = kwargs.pop("name")
    if name not in registry:
        raise unknown("loss", name, registry, f"{where}.name")
    weight = kwargs.pop("weight", 1.0)
    if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not math.isfinite(weight):
        raise ConfigError(f"{where}.weight: expected a number, got {weight!r}")
    builder = registry[name]
    params = set(inspect.signature(builder).parameters)
    accepted = params - set(context)
    for key in kwargs:
        if key not in accepted:
            raise unknown(f"{name} loss key", key, sorted(accepted | {"name", "weight"}), where)
    return name, float(weight), builder(**{k: v for k, v in context.items() if k in params}, **kwargs)


def _build(spec: LossSpec, registry: Mapping[str, LossBuilder], context: Mapping[str, Any]) -> nn.Module:
    items = [spec] if isinstance(spec, (str, Mapping)) else list(spec)
    if not items:
        raise ConfigError(f"loss: give at least one loss (one of {', '.join(sorted(registry))})")
    terms = [_term(item, registry, context, f"loss[{i}]" if len(items) > 1 else "loss")
             for i, item in enumerate(items)]
    if len(terms) == 1 and terms[0][1] == 1.0:
        return terms[0][2]
    return WeightedSum(terms)


def build_loss(spec: Optional[LossSpec], num_classes: int, ignore_index: int = 255,
               class_counts: Optional[Sequence[float]] = None) -> nn.Module:
    """A loss from a name, one ``{name, weight, **kwargs}`` dict or a list of them (summed with weights);
    None: cross-entropy.

    ``class_counts`` (label pixels per class) feeds ``class_weights: median_frequency | inverse_log``.
    Example: ``build_loss([{"name": "ce", "weight": 1.0}, {"name": "dice", "weight": 0.5}], 11, 255)``.
    """
    context = {"num_classes": num_classes, "ignore_index": ignore_index, "class_counts": class_counts}
    return _build("ce" if spec is None else spec, LOSSES, context)


def build_binary_loss(spec: Optional[LossSpec], ignore_index: int = 255) -> nn.Module:
    """A binary model's loss (its one sigmoid channel against 0/1 labels) from ``BINARY_LOSSES`` names, as
    ``build_loss`` reads them; None: ``BINARY_DEFAULT``, BCE + Dice.
    Example: ``build_binary_loss([{"name": "focal", "gamma": 2}, {"name": "dice", "weight": 0.5}])``."""
    return _build(BINARY_DEFAULT if spec is None else spec, BINARY_LOSSES, {"ignore_index": ignore_index})


class SegmentationCriterion(nn.Module):
    """``loss(out) + aux_weight * loss(aux)`` over a model's output dict; ``aux`` counts only when present.

    0.5 is the auxiliary weight of torchvision's segmentation training reference.
    """

    def __init__(self, loss: nn.Module, aux_weight: float = 0.5) -> None:
        super().__init__()
        self.loss, self.aux_weight = loss, float(aux_weight)

    def forward(self, outputs: Union[Mapping[str, torch.Tensor], torch.Tensor],
                target: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.loss(outputs, target)
        total = self.loss(outputs["out"], target)
        aux = outputs.get("aux")
        if aux is not None and self.aux_weight:
            total = total + self.aux_weight * self.loss(aux, target)
        return total
