"""Where freezing is decided: backbone stages, freeze strategies, gradual unfreezing, optimizer param
groups, partial loading of checkpoints with its report, and class-aware classifier initialisation.

Every model is seen as the backbone's stages ``stem, layer1..layer4`` plus everything outside the
backbone (neck, head, aux), whether it was assembled here or is one of torchvision's zoo models.
"""
from __future__ import annotations

from collections import OrderedDict, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .errors import ConfigError, suggest, unknown
from .models.backbones import MOBILENET_V3_BOUNDS, STAGES
from .transfer_detection import classifier_children, detection_class_aware_init, is_detector, ssd_stages

STRATEGIES = ("feature_extraction", "partial", "full")
# torchvision's MobileNetV3 zoo models (IntermediateLayerGetter children '0'..'16') are cut at
# backbones.MOBILENET_V3_BOUNDS, so a stage name means the same layers in assembled and zoo models.
RESNET_STEM = ("conv1", "bn1", "relu", "maxpool")
# Names of the parts outside the backbone, as freeze_table and the transfer report show them.
PART_NAMES = {"classifier": "head", "aux_classifier": "aux",
              # torchvision classifiers (ResNet, Inception v3): their classifier layers
              "fc": "head", "dropout": "head"}


# ----------------------------------------------------------------------------------------- stages
def stage_modules(model: nn.Module) -> "OrderedDict[str, nn.Module]":
    """The backbone's stages in order, ``stem, layer1..layer4``, for assembled and zoo models.

    For zoo models the stages are views (``nn.Sequential`` containers over the model's own modules):
    they share the parameters but are not registered in the model.
    """
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module):
        raise ConfigError(f"freeze: {type(model).__name__} has no 'backbone' module to split into stages")
    if hasattr(backbone, "stage_names") and hasattr(backbone, "stage"):
        return OrderedDict((name, backbone.stage(name)) for name in backbone.stage_names)
    ssd = ssd_stages(backbone)
    if ssd is not None:
        return ssd
    inner = classifier_children(backbone)  # torchvision's FPN detectors: the classifier network is `body`
    children = OrderedDict((backbone if inner is None else inner).named_children())
    if all(k in children for k in ("conv1", "layer1", "layer2", "layer3", "layer4")):  # ResNet
        stem = nn.Sequential(OrderedDict((k, children[k]) for k in RESNET_STEM if k in children))
        return OrderedDict(stem=stem, **{k: children[k] for k in STAGES[1:]})
    if children and all(k.isdigit() for k in children) and len(children) > MOBILENET_V3_BOUNDS[-1]:
        layers = [children[k] for k in sorted(children, key=int)]
        cuts = (0, *MOBILENET_V3_BOUNDS, len(layers))
        return OrderedDict((name, nn.Sequential(*layers[a:b])) for name, a, b in zip(STAGES, cuts, cuts[1:]))
    raise ConfigError(f"freeze: cannot split the backbone of {type(model).__name__} into stages "
                      f"(children: {', '.join(children) or 'none'})")


def model_parts(model: nn.Module) -> "OrderedDict[str, list[nn.Module]]":
    """Every part of the model by display name: the stages, ``backbone`` (backbone modules outside any
    stage, usually none), then each top-level module outside the backbone (``neck``, ``head``, ``aux``)."""
    stages = stage_modules(model)
    parts: "OrderedDict[str, list[nn.Module]]" = OrderedDict((k, [m]) for k, m in stages.items())
    in_stages = {id(m) for stage in stages.values() for m in stage.modules()}
    # Containers (the backbone itself, an assembled backbone's ``body``) hold nothing of their own.
    rest = [m for m in model.backbone.modules() if id(m) not in in_stages
            and (next(m.parameters(recurse=False), None) is not None or next(m.buffers(recurse=False), None) is not None)]
    if rest:
        # A detector's FPN or SSD extra layers sit inside `backbone`: they are its neck, trained as one.
        parts["neck" if is_detector(model) else "backbone"] = rest
    for name, child in model.named_children():
        # A zoo classifier's backbone is a view over its own children: those belong to the stages.
        if child is not model.backbone and id(child) not in in_stages:
            parts.setdefault(PART_NAMES.get(name, name), []).append(child)
    return parts


def _module_parts(model: nn.Module) -> dict[str, str]:
    """Module path (as in parameter names) -> part name."""
    owner: dict[int, str] = {}
    for part, modules in model_parts(model).items():
        for module in modules:
            for sub in module.modules():
                owner.setdefault(id(sub), part)
    return {path: owner.get(id(m), "other") for path, m in model.named_modules(remove_duplicate=False)}


def _check_stages(model: nn.Module, names: Iterable[str], where: str) -> list[str]:
    valid = list(stage_modules(model))
    names = [names] if isinstance(names, str) else list(names)
    for name in names:
        if name not in valid:
            raise ConfigError(f"{where}: unknown stage '{name}'{suggest(name, valid)}; "
                              f"valid stages, first to last: {', '.join(valid)}")
    return names


# ------------------------------------------------------------------------------ BatchNorm in eval
# Frozen stages keep their BatchNorm layers in eval mode (running statistics untouched) by replacing
# ``train`` on each such layer *instance*. ``nn.Module.train`` switches modes by calling
# ``child.train(mode)`` on every child, so the override is honoured by every caller (the trainer's
# model.train(), DDP, user code) with nothing to remember after it. Unlike converting to
# torchvision's FrozenBatchNorm2d it changes nothing else: the affine weights stay Parameters (so
# parameter counts, optimizer groups and the checkpoint layout are those of the unfrozen model),
# forward arithmetic is BatchNorm's own, and gradual unfreezing just removes the attribute instead
# of swapping modules and creating new Parameters. Unlike a forward pre-hook, ``bn.training`` is
# right as soon as train() returns. The override is a small picklable object, so deepcopy and
# torch.save of the whole module keep it.
class _StayInEval:
    """Stands in for ``bn.train``: whatever mode is asked for, the layer stays in eval mode."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, mode: bool = True) -> nn.Module:
        return nn.Module.train(self.module, False)


def _hold_bn_eval(bn: nn.Module) -> None:
    bn.train = _StayInEval(bn)
    bn.train(False)
    for p in bn.parameters(recurse=False):
        p.requires_grad_(False)


def bn_held_in_eval(module: nn.Module) -> bool:
    """Whether ``module`` is a BatchNorm layer that ``apply_freeze`` keeps in eval mode."""
    return isinstance(module.__dict__.get("train"), _StayInEval)


def _release_bn(bn: nn.Module, training: bool) -> None:
    if bn_held_in_eval(bn):
        del bn.__dict__["train"]
    bn.train(training)


# ------------------------------------------------------------------------------------- freezing
@dataclass
class FreezeState:
    """What ``apply_freeze`` did: the strategy and the stages now frozen (saved with checkpoints)."""

    strategy: str
    frozen_stages: list[str] = field(default_factory=list)
    bn_eval: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _frozen_stage_names(stages: list[str], strategy: str, n: Optional[int],
                        unfreeze_from: Optional[str]) -> list[str]:
    if strategy not in STRATEGIES:
        raise unknown("freeze strategy", strategy, STRATEGIES, "freeze.strategy")
    if strategy != "partial":
        if n is not None or unfreeze_from is not None:
            raise ConfigError(f"freeze: 'stages'/'unfreeze_from' only apply to strategy 'partial', "
                              f"not '{strategy}'")
        return list(stages) if strategy == "feature_extraction" else []
    if (n is None) == (unfreeze_from is None):
        raise ConfigError("freeze: strategy 'partial' needs exactly one of 'stages' (how many stages to "
                          f"freeze, 0..{len(stages)}) or 'unfreeze_from' (the first trainable stage)")
    if unfreeze_from is not None:
        return stages[:stages.index(unfreeze_from)]
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= len(stages):
        raise ConfigError(f"freeze.stages: expected a number of stages from 0 to {len(stages)} "
                          f"({', '.join(stages)}), got {n!r}")
    return stages[:n]


def apply_freeze(model: nn.Module, strategy: str, stages: Optional[int] = None,
                 unfreeze_from: Optional[str] = None, bn: bool = True) -> FreezeState:
    """Freeze backbone stages: ``feature_extraction`` (all of them), ``partial`` (the first ``stages``
    stages, or those before ``unfreeze_from``) or ``full`` (none). Replaces any earlier freeze.

    ``bn=True``: BatchNorm layers in frozen stages stay in eval mode (running statistics frozen, also
    across ``model.train()``) with frozen affine weights. ``bn=False``: they keep training (statistics
    and affine weights adapt to the new data) while the rest of the stage is frozen.
    """
    all_stages = stage_modules(model)
    if unfreeze_from is not None:
        _check_stages(model, [unfreeze_from], "freeze.unfreeze_from")
    frozen = _frozen_stage_names(list(all_stages), strategy, stages, unfreeze_from)
    for module in model.modules():
        if bn_held_in_eval(module):
            _release_bn(module, model.training)
    for p in model.parameters():
        p.requires_grad_(True)
    # feature_extraction freezes the whole backbone, including anything outside its stages.
    roots = [model.backbone] if strategy == "feature_extraction" else [all_stages[name] for name in frozen]
    if is_detector(model) and strategy == "feature_extraction":
        roots = list(all_stages.values())  # the neck inside a detector's backbone keeps training
    for root in roots:
        for module in root.modules():
            if isinstance(module, _BatchNorm):
                if bn:
                    _hold_bn_eval(module)
                continue
            for p in module.parameters(recurse=False):
                p.requires_grad_(False)
    return FreezeState(strategy=strategy, frozen_stages=frozen, bn_eval=bn)


def unfreeze(model: nn.Module, stage_names: Union[str, Iterable[str]],
             state: Optional[FreezeState] = None) -> list[nn.Parameter]:
    """Make the named stages trainable (gradual unfreezing); their BatchNorm layers follow
    ``model.training`` again. Returns the parameters newly made trainable, for a new optimizer
    param group (``{"params": new, "lr": lr * backbone_lr_mult}``); ``state`` is updated if given."""
    names = _check_stages(model, stage_names, "freeze.schedule")
    stages = stage_modules(model)
    new: list[nn.Parameter] = []
    seen: set[int] = set()
    for name in names:
        for module in stages[name].modules():
            if bn_held_in_eval(module):
                _release_bn(module, model.training)
        for p in stages[name].parameters():
            if not p.requires_grad and id(p) not in seen:
                p.requires_grad_(True)
                new.append(p)
                seen.add(id(p))
    if state is not None:
        state.frozen_stages = [s for s in state.frozen_stages if s not in names]
    return new


def param_groups(model: nn.Module, lr: float, backbone_lr_mult: float = 1.0) -> list[dict[str, Any]]:
    """Optimizer param groups: ``head`` (everything outside the backbone) at ``lr``, ``backbone`` at
    ``lr * backbone_lr_mult``; frozen parameters are left out, and so are empty groups."""
    backbone = getattr(model, "backbone", None)
    backbone_ids = {id(p) for p in backbone.parameters()} if isinstance(backbone, nn.Module) else set()
    if is_detector(model):  # the neck inside a detector's backbone learns at the head's rate
        backbone_ids = {id(p) for stage in stage_modules(model).values() for p in stage.parameters()}
    groups = {"head": [], "backbone": []}
    for p in model.parameters():
        if p.requires_grad:
            groups["backbone" if id(p) in backbone_ids else "head"].append(p)
    if not groups["head"] and not groups["backbone"]:
        raise ConfigError("freeze: every parameter is frozen; nothing would train")
    lrs = {"head": lr, "backbone": lr * backbone_lr_mult}
    return [{"params": ps, "lr": lrs[name], "name": name} for name, ps in groups.items() if ps]


def freeze_counts(model: nn.Module) -> "OrderedDict[str, tuple[int, int]]":
    """Per part, (trainable, frozen) parameter counts; each parameter counted once."""
    counts: "OrderedDict[str, list[int]]" = OrderedDict((part, [0, 0]) for part in model_parts(model))
    owner = _module_parts(model)
    for name, p in model.named_parameters():
        part = owner.get(name.rpartition(".")[0], "other")
        counts.setdefault(part, [0, 0])[0 if p.requires_grad else 1] += p.numel()
    return OrderedDict((k, (v[0], v[1])) for k, v in counts.items())


def freeze_table(model: nn.Module) -> str:
    """A table of trainable vs frozen parameters per part (stem, layer1..4, neck, head, aux) and in total."""
    counts = freeze_counts(model)
    held = defaultdict(int)
    owner = _module_parts(model)
    for name, m in model.named_modules():
        if bn_held_in_eval(m):
            held[owner.get(name, "other")] += 1
    rows = [(part, f"{t:,}", f"{f:,}", str(held[part]) if held[part] else "") for part, (t, f) in counts.items()]
    total_t, total_f = sum(t for t, _ in counts.values()), sum(f for _, f in counts.values())
    rows.append(("total", f"{total_t:,}", f"{total_f:,}", str(sum(held.values())) if held else ""))
    header = ("part", "trainable", "frozen", "BN held in eval")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]

    def line(r: tuple[str, ...]) -> str:
        return "  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]).rstrip()
    return "\n".join([line(header), *(line(r) for r in rows)])


# ------------------------------------------------------------------------------ partial loading
def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(s) for s in t.shape)


@dataclass
class TransferReport:
    """What ``load_matching`` did with each tensor name."""

    loaded: list[str] = field(default_factory=list)
    skipped: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)  # name, source, model
    missing: list[str] = field(default_factory=list)      # in the model only: keeps its fresh initialisation
    unexpected: list[str] = field(default_factory=list)   # in the source only: ignored
    parts: dict[str, str] = field(default_factory=dict)   # tensor name -> part (stem, layer1, ..., head, aux)
    source: str = ""                                      # where the weights came from
    class_aware: Optional[list[str]] = None               # classes whose classifier rows came from the source

    def _part(self, name: str) -> str:
        return self.parts.get(name) or name.split(".")[0]

    def by_part(self) -> "OrderedDict[str, dict[str, int]]":
        table: "OrderedDict[str, dict[str, int]]" = OrderedDict()
        for kind, names in (("loaded", self.loaded), ("skipped", [s[0] for s in self.skipped]),
                            ("missing", self.missing), ("unexpected", self.unexpected)):
            for name in names:
                table.setdefault(self._part(name), dict.fromkeys(
                    ("loaded", "skipped", "missing", "unexpected"), 0))[kind] += 1
        order = {part: i for i, part in enumerate(dict.fromkeys(self.parts.values()))}  # the model's order
        return OrderedDict(sorted(table.items(), key=lambda kv: order.get(kv[0], len(order))))

    def format(self, max_names: int = 10) -> str:
        """Counts, a per-part table, then the names that were not loaded (at most ``max_names`` of each kind)."""
        total = len(self.loaded) + len(self.skipped) + len(self.missing)
        lines = [f"transfer from {self.source or 'source weights'}: "
                 f"loaded {len(self.loaded)} of the model's {total} tensors; {len(self.skipped)} skipped "
                 f"(shape mismatch), {len(self.missing)} missing from the source (re-initialised), "
                 f"{len(self.unexpected)} unexpected (ignored)"]
        table = self.by_part()
        header = ("part", "loaded", "skipped", "missing", "unexpected")
        rows = [(part, *(str(c[k]) if c[k] else "" for k in header[1:])) for part, c in table.items()]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
        for r in [header, *rows]:
            lines.append("  " + "  ".join([r[0].ljust(widths[0])] +
                                          [c.rjust(w) for c, w in zip(r[1:], widths[1:])]).rstrip())

        def names(title: str, items: list[str]) -> None:
            if items:
                lines.append(f"{title}:")
                lines.extend(f"  {item}" for item in items[:max_names])
                if len(items) > max_names:
                    lines.append(f"  ... and {len(items) - max_names} more")

        names("skipped (shape mismatch)", [f"{n}: source {list(s)} vs model {list(m)}" for n, s, m in self.skipped])
        names("missing (re-initialised)", self.missing)
        names("unexpected (ignored)", self.unexpected)
        if self.class_aware is not None:
            lines.append("class-aware init: " + (", ".join(self.class_aware) if self.class_aware else
                                                 "no class name matches the source's") )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every name, the shapes of the skipped ones and the per-part counts."""
        return {
            "source": self.source,
            "class_aware_init": self.class_aware,
            "counts": {"loaded": len(self.loaded), "skipped": len(self.skipped),
                       "missing": len(self.missing), "unexpected": len(self.unexpected)},
            "by_part": dict(self.by_part()),
            "loaded": list(self.loaded),
            "skipped": [{"name": n, "source_shape": list(s), "model_shape": list(m)} for n, s, m in self.skipped],
            "missing": list(self.missing),
            "unexpected": list(self.unexpected),
        }


def _parts_of_names(model: nn.Module, names: Iterable[str]) -> dict[str, str]:
    try:
        owner = _module_parts(model)
    except ConfigError:  # no recognisable backbone: group by top-level module
        owner = {}
    out = {}
    for name in names:
        path = name.rpartition(".")[0]
        while path and path not in owner:  # a source-only tensor: its nearest module that exists here
            path = path.rpartition(".")[0]
        top = name.split(".")[0]
        out[name] = owner[path] if path else PART_NAMES.get(top, top)
    return out


def load_matching(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> TransferReport:
    """Load every tensor of ``state_dict`` whose name and shape match the model's; report the rest."""
    own = model.state_dict()
    report = TransferReport()
    matching = {}
    for name, value in state_dict.items():
        if name not in own:
            report.unexpected.append(name)
        elif _shape(own[name]) != _shape(value):
            report.skipped.append((name, _shape(value), _shape(own[name])))
        else:
            matching[name] = value
            report.loaded.append(name)
    report.missing = [name for name in own if name not in state_dict]
    model.load_state_dict(matching, strict=False)
    report.parts = _parts_of_names(model, [*own, *report.unexpected])
    return report


# ------------------------------------------------------------------------------ class-aware init
def _class_key(name: str) -> str:
    key = str(name).strip().lower()
    return "background" if key in ("__background__", "background") else key


def classifier_convs(model: nn.Module, num_classes: int) -> list[tuple[str, nn.Conv2d]]:
    """The final 1x1 convs with ``num_classes`` outputs outside the backbone (the rule of
    ``zoo.replace_classifiers``): zoo ``classifier``/``aux_classifier``, an assembled model's head/aux;
    for image classifiers, the linear layers with ``num_classes`` outputs."""
    backbone = getattr(model, "backbone", None)
    inside = {id(m) for m in backbone.modules()} if isinstance(backbone, nn.Module) else set()
    found = []
    for top, child in model.named_children():
        if child is backbone or id(child) in inside:
            continue
        for name, m in child.named_modules(prefix=top):
            if (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.out_channels == num_classes) or \
                    (isinstance(m, nn.Linear) and m.out_features == num_classes):
                found.append((name, m))
    return found


@torch.no_grad()
def class_aware_init(model: nn.Module, source_classes: Sequence[str], target_classes: Sequence[str],
                     source_state: Mapping[str, torch.Tensor]) -> list[str]:
    """Copy the source classifier's rows (weight, bias) into the model's re-created classifier for
    classes present in both (case-insensitive; '__background__' == 'background'), so a matched class
    starts out predicting as before. Returns the matched target class names in target order."""
    if is_detector(model):
        return detection_class_aware_init(model, source_classes, target_classes, source_state)
    source_index: dict[str, int] = {}
    for i, name in enumerate(source_classes):
        source_index.setdefault(_class_key(name), i)
    pairs = [(j, source_index[_class_key(name)]) for j, name in enumerate(target_classes)
             if _class_key(name) in source_index]
    convs = []
    for name, conv in classifier_convs(model, len(target_classes)):
        weight = source_state.get(f"{name}.weight")
        # The source's same-named conv must be its classifier: one row per source class, same inputs.
        if weight is not None and weight.shape[0] == len(source_classes) and weight.shape[1:] == conv.weight.shape[1:]:
            convs.append((name, conv, weight, source_state.get(f"{name}.bias")))
    if not convs:
        raise ConfigError(f"class_aware_init: no classifier conv with {len(target_classes)} outputs in the model "
                          f"matches one with {len(source_classes)} outputs in the source weights")
    for _, conv, weight, bias in convs:
        for j, i in pairs:
            conv.weight[j].copy_(weight[i])
            if conv.bias is not None and bias is not None:
                conv.bias[j].copy_(bias[i])
    return [target_classes[j] for j, _ in pairs]
