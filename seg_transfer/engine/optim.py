"""Optimizers, per-iteration LR schedules (with gradual unfreezing) and mixed-precision settings.

Every param group keeps its learning-rate multiplier in ``group["lr_mult"]``; the schedule is one
factor per iteration applied to every group's ``initial_lr = lr * lr_mult``, so a group added later
(``add_param_group``) follows the same schedule. Resuming replays the additions before loading::

    opt = build_optimizer(param_groups(model, lr, 0.1), "sgd", lr=lr)
    sched = build_scheduler(opt, "poly", total_steps=epochs * steps_per_epoch, warmup_steps=500)
    add_param_group(opt, sched, unfreeze(model, "layer2"), lr_mult=0.1)    # same order as before
    opt.load_state_dict(ckpt["optimizer"]); sched.load_state_dict(ckpt["scheduler"])
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import torch
from torch.optim import SGD, AdamW, Optimizer
from torch.optim.lr_scheduler import LambdaLR

from ..config import AMP_MODES, OPTIMIZERS, SCHEDULERS
from ..errors import ConfigError, unknown

ParamGroups = Union[Iterable[Mapping[str, Any]], Iterable[torch.Tensor]]


# ------------------------------------------------------------------------------------ optimizer
def _groups(param_groups: ParamGroups, lr: float) -> list[dict[str, Any]]:
    """Copies of the groups with ``lr_mult`` set: the group's own ``lr_mult``, else ``group["lr"] / lr``
    (what transfer.param_groups gives), else 1. A plain iterable of tensors is one group."""
    items = list(param_groups)
    if not items:
        raise ConfigError("optimizer: no parameters to train")
    if isinstance(items[0], torch.Tensor):
        items = [{"params": items}]
    out: list[dict[str, Any]] = []
    for g in items:
        g = dict(g)
        # lr == 0 (a run that must not learn, e.g. in tests) leaves no ratio to read: multiplier 1.
        mult = float(g["lr_mult"]) if "lr_mult" in g else float(g["lr"]) / lr if "lr" in g and lr > 0 else 1.0
        if not mult >= 0 or math.isinf(mult):
            raise ConfigError(f"optimizer: param group '{g.get('name', len(out))}' has lr multiplier {mult}")
        g.update(lr=lr * mult, lr_mult=mult)
        g.pop("initial_lr", None)  # set by the scheduler from lr; a stale one would override the multiplier
        out.append(g)
    return out


def build_optimizer(param_groups: ParamGroups, name: str = "sgd", lr: float = 0.01, momentum: float = 0.9,
                    weight_decay: float = 1e-4, nesterov: bool = False,
                    betas: tuple[float, float] = (0.9, 0.999)) -> Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW over param groups that carry an lr multiplier."""
    if name not in OPTIMIZERS:
        raise unknown("optimizer", name, OPTIMIZERS, "train.optimizer")
    if not (lr >= 0 and math.isfinite(lr)):
        raise ConfigError(f"train.lr: expected a learning rate >= 0, got {lr}")
    if weight_decay < 0:
        raise ConfigError(f"train.weight_decay: expected >= 0, got {weight_decay}")
    groups = _groups(param_groups, lr)
    if name == "sgd":
        if not 0 <= momentum < 1:
            raise ConfigError(f"train.momentum: expected 0 <= momentum < 1, got {momentum}")
        if nesterov and momentum == 0:
            raise ConfigError("train.nesterov: Nesterov momentum needs momentum > 0")
        return SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    if not all(0 <= b < 1 for b in betas) or len(betas) != 2:
        raise ConfigError(f"train.betas: expected two values in [0, 1), got {tuple(betas)}")
    return AdamW(groups, lr=lr, betas=(betas[0], betas[1]), weight_decay=weight_decay)  # a tuple, whatever sequence came


# ------------------------------------------------------------------------------------ scheduler
@dataclass
class LRFactor:
    """The LR multiplier at iteration ``t``: decay (poly/cosine/step/none) times a linear warmup.

    A callable object, not a closure, so that LambdaLR's state_dict saves its fields: a resumed run
    continues the checkpoint's LR sequence exactly, whatever the new config says.
    """

    name: str
    total_steps: int
    warmup_steps: int = 0
    warmup_factor: float = 0.001
    power: float = 0.9
    step_size: int = 1
    gamma: float = 0.1
    min_ratio: float = 0.0  # min_lr / lr: the floor of the decay, the same for every group's multiplier

    def __call__(self, t: int) -> float:
        r, frac = self.min_ratio, min(max(t, 0), self.total_steps) / self.total_steps
        if self.name == "poly":  # clamped: (negative)**0.9 would be complex past total_steps
            f = r + (1 - r) * (1 - frac) ** self.power
        elif self.name == "cosine":
            f = r + (1 - r) * 0.5 * (1 + math.cos(math.pi * frac))
        elif self.name == "step":
            f = max(r, self.gamma ** (max(t, 0) // self.step_size))
        else:
            f = 1.0
        if t < self.warmup_steps:  # multiplies the decay, so the LR is continuous where warmup ends
            f *= self.warmup_factor + (1 - self.warmup_factor) * t / self.warmup_steps
        return f


class FactorLR(LambdaLR):
    """LambdaLR with one ``LRFactor`` shared by every param group, groups added later included."""

    @property
    def factor(self) -> LRFactor:
        return self.lr_lambdas[0]  # type: ignore[return-value]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As LambdaLR's, but a group-count mismatch fails here with the fix instead of at the next step."""
        saved, now = len(state_dict.get("base_lrs", ())), len(self.optimizer.param_groups)
        if saved != now:
            raise ValueError(f"scheduler state has {saved} param groups, the optimizer {now}: call add_param_group "
                             "for the groups added before the checkpoint, in order, before loading")
        super().load_state_dict(state_dict)


def build_scheduler(optimizer: Optimizer, name: str = "poly", total_steps: int = 1, warmup_steps: int = 0,
                    warmup_factor: float = 0.001, power: float = 0.9, step_size: Optional[int] = None,
                    gamma: float = 0.1, min_lr: float = 0.0) -> FactorLR:
    """A per-iteration schedule over ``total_steps`` (call ``step()`` after each optimizer step).

    ``poly``: ``lr * (1 - t/T)**power``; ``cosine``: ``lr * (1 + cos(pi t/T)) / 2``; ``step``:
    ``lr * gamma**(t // step_size)``; ``none``: constant. ``min_lr`` lifts poly/cosine to
    ``min_lr + (lr - min_lr) * decay`` and floors step. During the first ``warmup_steps`` the factor is
    also multiplied by a ramp from ``warmup_factor`` to 1. Each group gets ``factor * lr * lr_mult``.
    """
    if name not in SCHEDULERS:
        raise unknown("scheduler", name, SCHEDULERS, "train.scheduler")
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ConfigError(f"scheduler: total_steps must be a positive integer, got {total_steps!r}")
    if not 0 <= warmup_steps <= total_steps:
        raise ConfigError(f"scheduler: warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
    if not 0 < warmup_factor <= 1:
        raise ConfigError(f"scheduler: warmup_factor must be in (0, 1], got {warmup_factor}")
    if name == "poly" and not power > 0:
        raise ConfigError(f"scheduler: poly power must be positive, got {power}")
    if name == "step" and (step_size is None or step_size < 1 or not 0 < gamma <= 1):
        raise ConfigError(f"scheduler 'step' needs step_size >= 1 (iterations) and 0 < gamma <= 1, "
                          f"got step_size={step_size}, gamma={gamma}")
    base = float(optimizer.defaults["lr"])
    if min_lr != 0 and not 0 < min_lr < base:
        raise ConfigError(f"scheduler: min_lr must be in [0, lr={base}), got {min_lr}")
    factor = LRFactor(name, total_steps, int(warmup_steps), float(warmup_factor), float(power),
                      int(step_size or 1), float(gamma), min_lr / base if min_lr else 0.0)
    return FactorLR(optimizer, factor)


def add_param_group(optimizer: Optimizer, scheduler: Optional[FactorLR], params: Sequence[torch.nn.Parameter],
                    lr_mult: float = 1.0, name: Optional[str] = None) -> Optional[dict[str, Any]]:
    """Add newly unfrozen ``params`` at ``lr * lr_mult`` times the current schedule factor; the group
    follows the schedule afterwards and the scheduler's state_dict grows with it. None if ``params`` is empty."""
    params = list(params)
    if not params:
        return None
    if scheduler is not None and not isinstance(scheduler, FactorLR):
        raise TypeError(f"add_param_group needs the scheduler from build_scheduler, got {type(scheduler).__name__}")
    initial = float(optimizer.defaults["lr"]) * lr_mult
    now = scheduler.factor(scheduler.last_epoch) if scheduler is not None else 1.0
    group = {"params": params, "lr": initial * now, "initial_lr": initial, "lr_mult": float(lr_mult)}
    if name is not None:
        group["name"] = name
    optimizer.add_param_group(group)
    if scheduler is not None:
        # LambdaLR zips base_lrs and lr_lambdas with the groups (strict): all three grow together,
        # so step() covers the new group and state_dict() saves it.
        scheduler.base_lrs.append(initial)
        scheduler.lr_lambdas.append(scheduler.factor)
        scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]  # what get_last_lr() reports
    return optimizer.param_groups[-1]


# -------------------------------------------------------------------------------------------- AMP
def autocast_settings(device: Union[str, torch.device], amp: str = "auto") -> tuple[bool, Optional[torch.dtype]]:
    """``(enabled, dtype)`` for ``torch.autocast(device.type, dtype=dtype, enabled=enabled)``.

    ``auto``: off on the CPU; on CUDA bf16 where the device supports it (fp32's range: no grad scaler, no
    underflow), else fp16 with a grad scaler. The CPU is left in fp32 because a CPU without native bf16
    matmul (no AVX512-BF16 or AMX) emulates it about a hundred times slower, and one that has it did not
    train this project's small models faster (benchmarks/RESULTS.md, "Mixed precision"); ``bf16`` can
    still be asked for explicitly. ``off`` is also spelt false, fp32 or none (``config.AMP_ALIASES``).
    """
    if amp not in AMP_MODES:
        raise unknown("amp mode", amp, AMP_MODES, "train.amp")
    kind = torch.device(device).type
    if amp == "off" or (amp == "auto" and kind != "cuda"):
        return False, None
    if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
        return True, torch.bfloat16
    if kind != "cuda":  # fp16 needs a GradScaler against underflowing gradients, and only CUDA has one here
        raise ConfigError(f"train.amp: fp16 needs a CUDA device (got {kind}); use bf16 or off")
    return True, torch.float16


def grad_scaler(device: Union[str, torch.device], amp: str = "auto") -> torch.amp.GradScaler:
    """A GradScaler that is enabled only for fp16 on CUDA (bf16 has fp32's range and needs none);
    disabled, its scale/step/update calls pass straight through, so the training loop has one shape."""
    enabled, dtype = autocast_settings(device, amp)
    kind = torch.device(device).type
    return torch.amp.GradScaler(kind, enabled=enabled and dtype == torch.float16 and kind == "cuda")
