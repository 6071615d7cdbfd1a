"""Which transfer strategy to start from, given how many labelled images there are and how close
they are to the pretraining data: the size x similarity table of the transfer-learning literature.

Sources: Yosinski et al. 2014, "How transferable are features in deep neural networks?" (early
layers are general, later ones specific to the source task, and the gap grows with task distance;
fine-tuning transferred layers still beats random init) and the CS231n transfer-learning notes
(small+similar: linear classifier on top features; small+different: classifier on earlier features;
large: fine-tune, the more layers the more different the data). He et al. 2019, "Rethinking ImageNet
Pre-training", is the case for training from scratch: it matched ImageNet pretraining on COCO
(118k images) with longer schedules, so scratch is only offered for very large, different data.

The strategy comes from that literature. The settings in ``MEASURED`` come from this project's own
cross-validated tables (``benchmarks/RESULTS.md``, "Recipe defaults by cross-validation"), and the
snippet quotes their figures.

    print(advise(600, "low").snippet())   # paste into a config, then measure
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from .errors import ConfigError, unknown

SIMILARITIES = ("high", "low")
TASKS = ("segmentation", "classification", "detection")
# A segmentation image is labelled at every pixel: one mask supervises many (correlated) decisions,
# where a classification image gives one label. So fewer images count as "enough to fine-tune"
# than the classification rules of thumb suggest: Pascal VOC 2012 (1,464 train masks) and
# Cityscapes (2,975) are routinely fine-tuned end to end from ImageNet backbones.
SMALL_BELOW = 1_000
VERY_LARGE_FROM = 100_000  # COCO-sized: where He et al. 2019 found scratch catching up


@dataclass(frozen=True)
class Measured:
    """A setting chosen from this project's cross-validated tables, and the figures behind it (one line)."""

    key: str        # a config key path, e.g. train.class_weights
    value: Any
    evidence: str


# task -> the settings its tables decided (benchmarks/RESULTS.md, "Recipe defaults by cross-validation")
MEASURED: dict[str, tuple[Measured, ...]] = {
    "segmentation": (
        Measured("train.class_weights", None,
                 "CamVid, 3 leave-one-sequence-out folds x 2 seeds (stand-in weights, 8 epochs): median-frequency "
                 "weights cost 19.0 pixel-accuracy points (95% CI 7.7-30.4) and 2.7 mIoU against none; "
                 "inverse log alike; sqrt_frequency neutral"),
        Measured("train.precise_bn", 10,
                 "same folds: +6.7 mIoU (95% CI -0.4..+13.8) and +11.2 pixel accuracy, ahead in 6 of 6 "
                 "fold x seed pairs; most after few SGD steps, when BatchNorm averages trail the weights"),
    ),
    "classification": (),
    "detection": (),
}
# task -> what its table showed as a whole, quoted under the settings
MEASURED_SUMMARY: dict[str, str] = {
    "segmentation": "the changed CamVid recipe beat the plain torchvision-references loop on both means (mIoU 20.5 "
                    "vs 14.4, pixel accuracy 60.7 vs 48.8, ahead in 5 of 6 pairs); one held-out sequence alone "
                    "ranked the recipes almost arbitrarily",
    "classification": "ants/bees, 5 stratified folds: the shipped recipe and the PyTorch tutorial's loop tie "
                      "(-1.2 accuracy points, 95% CI -8.1..+5.6); no setting changed",
    "detection": "BCCD, 3 folds, a 36-step schedule from stand-in weights: both recipes stayed at the untrained "
                 "level (AP 0.5%), so the table decides nothing; no setting changed",
}


@dataclass(frozen=True)
class Advice:
    """A starting configuration (freeze + train settings) and why; ``measured`` holds benchmark
    results from this project, strategy -> (mIoU, seconds), when a benchmark has filled them in."""

    num_images: int
    size: str                   # "small", "large" or "very large"
    similarity: str
    strategy: str               # transfer.STRATEGIES: feature_extraction | partial | full
    unfreeze_from: Optional[str]
    bn: bool                    # keep BatchNorm of frozen stages in eval mode
    backbone_lr_mult: float
    lr: float                   # for SGD with momentum 0.9 and a poly schedule
    epochs: int
    cache: bool                 # train the head on stored backbone features (only if all of it is frozen)
    pretrained: bool
    rationale: str
    measured: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    task: str = "segmentation"
    findings: tuple[Measured, ...] = ()

    def config(self) -> dict[str, Any]:
        """The ``freeze:``/``train:`` (and, from scratch, ``model:``) blocks as plain dicts."""
        freeze: dict[str, Any] = {"strategy": self.strategy}
        if self.unfreeze_from is not None:  # apply_freeze refuses unfreeze_from for other strategies
            freeze["unfreeze_from"] = self.unfreeze_from
        freeze["bn"] = self.bn
        out: dict[str, Any] = {}
        if not self.pretrained:
            out["model"] = {"weights": None, "backbone_weights": None}
        out["freeze"] = freeze
        out["train"] = {"backbone_lr_mult": self.backbone_lr_mult, "lr": self.lr, "epochs": self.epochs}
        out["cache"] = {"enabled": self.cache}
        for finding in self.findings:
            block, key = finding.key.split(".", 1)
            out.setdefault(block, {})[key] = finding.value
        return out

    def snippet(self) -> str:
        """YAML for a config file, with the rationale (and any measured figures) as comments."""
        import yaml  # here, so importing the module stays as cheap as the config layer

        lines = [f"# {self.num_images} images ({self.size}), {self.similarity} similarity: {self.rationale}",
                 "# (the strategy: from the transfer-learning literature; this project has no real pretrained "
                 "weights offline to measure it with)"]
        for strategy, (miou, seconds) in self.measured.items():
            lines.append(f"# measured here: {strategy}: mIoU {miou:.4f} in {seconds:.0f} s")
        lines.append(f"# measured by this project for {self.task} (benchmarks/RESULTS.md, \"Recipe defaults by "
                     "cross-validation\"; stand-in weights):")
        lines += [f"#   {f.key}: {f.value if f.value is not None else 'null'} -- {f.evidence}" for f in self.findings]
        lines.append(f"#   {MEASURED_SUMMARY[self.task]}")
        return "\n".join(lines) + "\n" + yaml.safe_dump(self.config(), sort_keys=False, default_flow_style=False)


def size_class(num_images: int, small_below: int = SMALL_BELOW, very_large_from: int = VERY_LARGE_FROM) -> str:
    """``small`` below ``small_below`` labelled images, ``very large`` from ``very_large_from``, else ``large``."""
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
        raise ConfigError(f"advise: num_images must be a positive integer, got {num_images!r}")
    if not 1 <= small_below <= very_large_from:
        raise ConfigError(f"advise: need 1 <= small_below <= very_large_from, got {small_below}, {very_large_from}")
    if num_images < small_below:
        return "small"
    return "very large" if num_images >= very_large_from else "large"


def advise(num_images: int, similarity: str, small_below: int = SMALL_BELOW,
           very_large_from: int = VERY_LARGE_FROM,
           measured: Optional[Mapping[str, tuple[float, float]]] = None, task: str = "segmentation") -> Advice:
    """The table's starting point for ``num_images`` labelled images whose ``similarity`` to the
    pretraining data (ImageNet/COCO photos) is ``high`` or ``low``, with ``task``'s measured settings."""
    if similarity not in SIMILARITIES:
        raise unknown("similarity", similarity, SIMILARITIES, "advise")
    if task not in TASKS:
        raise unknown("task", task, TASKS, "advise")
    size = size_class(num_images, small_below, very_large_from)
    similar = similarity == "high"
    extra: dict[str, Any] = {"num_images": num_images, "size": size, "similarity": similarity,
                             "measured": dict(measured or {}), "task": task, "findings": MEASURED[task]}
    if size == "small" and similar:
        # backbone_lr_mult only matters if freeze.schedule unfreezes stages later; 0 would silently freeze them.
        return Advice(strategy="feature_extraction", unfreeze_from=None, bn=True, backbone_lr_mult=0.1, lr=0.01,
                      epochs=50, cache=True, pretrained=True, **extra,
                      rationale="the pretrained features already fit and too few images to move them without "
                                "overfitting: train the head only, on cached features (fast, many epochs)")
    if size == "small":
        return Advice(strategy="partial", unfreeze_from="layer3", bn=True, backbone_lr_mult=0.1, lr=0.01,
                      epochs=50, cache=False, pretrained=True, **extra,
                      rationale="early stages are general (edges, textures), late ones specific to the source: "
                                "keep stem..layer2 frozen, adapt layer3-4 at a low LR, frozen stages' BatchNorm statistics kept; "
                                "if it overfits, try unfreeze_from layer4 or a head on earlier features")
    if similar:
        return Advice(strategy="full", unfreeze_from=None, bn=True, backbone_lr_mult=0.1, lr=0.01, epochs=30,
                      cache=False, pretrained=True, **extra,
                      rationale="enough data to fine-tune everything; a 10x lower backbone LR keeps the good "
                                "pretrained features from being disrupted by the fresh head's early gradients")
    if size == "large":
        return Advice(strategy="full", unfreeze_from=None, bn=True, backbone_lr_mult=1.0, lr=0.01, epochs=50,
                      cache=False, pretrained=True, **extra,
                      rationale="the later features must change a lot for a different domain and there is data "
                                "to do it: fine-tune everything at one LR; pretrained init still converges faster")
    return Advice(strategy="full", unfreeze_from=None, bn=True, backbone_lr_mult=1.0, lr=0.01, epochs=100,
                  cache=False, pretrained=False, **extra,
                  rationale="very large and different: training from scratch can match pretraining given a long "
                            "schedule (He et al. 2019); pretrained init with full fine-tuning is the cheaper check")
