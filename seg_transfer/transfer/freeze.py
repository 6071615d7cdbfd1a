"""Where freezing is decided: which stages of the stage map (``models/stages.py``) train, BatchNorm
held in eval mode in frozen stages, gradual unfreezing, optimizer param groups, and the per-part
trainable/frozen table.

Every model is seen as the backbone's stages ``stem, layer1..layer4`` plus everything outside them
(neck, head, aux), whether it was assembled here or is one of torchvision's zoo models.
"""
from __future__ import annotations

from collections import OrderedDict, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Optional, Union, cast

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..config import FREEZE_STRATEGIES
from ..errors import ConfigError, unknown
from ..models.detection import is_detector
from ..models.stages import check_stages, stage_modules

STRATEGIES = FREEZE_STRATEGIES  # declared with the config field
# Names of the parts outside the backbone, as freeze_table and the transfer report show them.
PART_NAMES = {"classifier": "head", "aux_classifier": "aux",
              # torchvision classifiers (ResNet, Inception v3): their classifier layers
              "fc": "head", "dropout": "head"}


# ------------------------------------------------------------------------------------------ parts
def model_parts(model: nn.Module) -> OrderedDict[str, list[nn.Module]]:
    """Every part of the model by display name: the stages, ``backbone`` (backbone modules outside any
    stage, usually none), then each top-level module outside the backbone (``neck``, ``head``, ``aux``)."""
    stages = stage_modules(model)
    parts: OrderedDict[str, list[nn.Module]] = OrderedDict((k, [m]) for k, m in stages.items())
    in_stages = {id(m) for stage in stages.values() for m in stage.modules()}
    # Containers (the backbone itself, an assembled backbone's ``body``) hold nothing of their own.
    backbone = cast(nn.Module, model.backbone)  # stage_modules checked it
    rest = [m for m in backbone.modules() if id(m) not in in_stages
            and (next(m.parameters(recurse=False), None) is not None or next(m.buffers(recurse=False), None) is not None)]
    if rest:
        # A detector's FPN or SSD extra layers sit inside `backbone`: they are its neck, trained as one.
        parts["neck" if is_detector(model) else "backbone"] = rest
    for name, child in model.named_children():
        # A zoo classifier's backbone is a view over its own children: those belong to the stages.
        if child is not model.backbone and id(child) not in in_stages:
            parts.setdefault(PART_NAMES.get(name, name), []).append(child)
    return parts


def module_parts(model: nn.Module) -> dict[str, str]:
    """Module path (as in parameter names) -> part name."""
    owner: dict[int, str] = {}
    for part, modules in model_parts(model).items():
        for module in modules:
            for sub in module.modules():
                owner.setdefault(id(sub), part)
    return {path: owner.get(id(m), "other") for path, m in model.named_modules(remove_duplicate=False)}


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
    setattr(bn, "train", _StayInEval(bn))  # an instance attribute over the method (mypy forbids assigning to one)
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
        check_stages(model, [unfreeze_from], "freeze.unfreeze_from")
    frozen = _frozen_stage_names(list(all_stages), strategy, stages, unfreeze_from)
    for module in model.modules():
        if bn_held_in_eval(module):
            _release_bn(module, model.training)
    for p in model.parameters():
        p.requires_grad_(True)
    # feature_extraction freezes the whole backbone, including anything outside its stages.
    roots = [cast(nn.Module, model.backbone)] if strategy == "feature_extraction" else [all_stages[name] for name in frozen]
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
    names = check_stages(model, stage_names, "freeze.schedule")
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
    groups: dict[str, list[nn.Parameter]] = {"head": [], "backbone": []}
    for p in model.parameters():
        if p.requires_grad:
            groups["backbone" if id(p) in backbone_ids else "head"].append(p)
    if not groups["head"] and not groups["backbone"]:
        raise ConfigError("freeze: every parameter is frozen; nothing would train")
    lrs = {"head": lr, "backbone": lr * backbone_lr_mult}
    return [{"params": ps, "lr": lrs[name], "name": name} for name, ps in groups.items() if ps]


def freeze_counts(model: nn.Module) -> OrderedDict[str, tuple[int, int]]:
    """Per part, (trainable, frozen) parameter counts; each parameter counted once."""
    counts: OrderedDict[str, list[int]] = OrderedDict((part, [0, 0]) for part in model_parts(model))
    owner = module_parts(model)
    for name, p in model.named_parameters():
        part = owner.get(name.rpartition(".")[0], "other")
        counts.setdefault(part, [0, 0])[0 if p.requires_grad else 1] += p.numel()
    return OrderedDict((k, (v[0], v[1])) for k, v in counts.items())


def freeze_table(model: nn.Module) -> str:
    """A table of trainable vs frozen parameters per part (stem, layer1..4, neck, head, aux) and in total."""
    counts = freeze_counts(model)
    held: defaultdict[str, int] = defaultdict(int)
    owner = module_parts(model)
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


