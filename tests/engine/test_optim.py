"""Optimizers and LR schedules against closed-form formulas; state_dict round trips (also after a group
was added for gradual unfreezing); AMP settings."""
from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from seg_transfer.engine.optim import (
    FactorLR,
    add_param_group,
    autocast_settings,
    build_optimizer,
    build_scheduler,
    grad_scaler,
)
from seg_transfer.errors import ConfigError

LR = 0.1


def params(n: int = 1) -> list[nn.Parameter]:
    return [nn.Parameter(torch.zeros(2)) for _ in range(n)]


def run(opt: torch.optim.Optimizer, sched: FactorLR, steps: int) -> list[list[float]]:
    """The LRs used by each of ``steps`` iterations, per group (optimizer step, then scheduler step)."""
    seen = []
    for _ in range(steps):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return seen


def sgd(*mults: float) -> torch.optim.Optimizer:
    return build_optimizer([{"params": params(), "lr": LR * m, "name": f"g{i}"} for i, m in enumerate(mults)],
                           "sgd", lr=LR)


def warm(t: int, w: int, wf: float) -> float:
    return wf + (1 - wf) * t / w if t < w else 1.0


T, W, WF = 50, 5, 0.001
CLOSED_FORM = {
    "poly": lambda t: (1 - t / T) ** 0.9,
    "cosine": lambda t: 0.5 * (1 + math.cos(math.pi * t / T)),
    "step": lambda t: 0.1 ** (t // 20),
    "none": lambda t: 1.0,
}


@pytest.mark.parametrize("name", list(CLOSED_FORM))
@pytest.mark.parametrize("warmup", [0, W])
def test_schedule_matches_closed_form(name, warmup):
    opt = sgd(1.0, 0.1)
    sched = build_scheduler(opt, name, total_steps=T, warmup_steps=warmup, warmup_factor=WF, step_size=20)
    seen = run(opt, sched, T)
    for t, (head, backbone) in enumerate(seen):
        want = LR * CLOSED_FORM[name](t) * (warm(t, warmup, WF) if warmup else 1.0)
        assert head == pytest.approx(want, rel=1e-12, abs=1e-15), (t, head, want)
        assert backbone == pytest.approx(0.1 * want, rel=1e-12, abs=1e-15)
    if warmup:
        assert seen[0][0] == pytest.approx(LR * WF)
        # After warmup it is exactly the un-warmed formula of the global step (poly: base*(1-t/T)^0.9).
        assert seen[W][0] == pytest.approx(LR * CLOSED_FORM[name](W))


def test_poly_ends_at_zero_and_stays_finite_past_total():
    opt = sgd(1.0)
    sched = build_scheduler(opt, "poly", total_steps=10)
    run(opt, sched, 15)
    assert opt.param_groups[0]["lr"] == 0.0


@pytest.mark.parametrize("name", ["poly", "cosine"])
def test_min_lr_is_the_floor(name):
    opt = sgd(1.0, 0.1)
    sched = build_scheduler(opt, name, total_steps=10, min_lr=0.01)
    seen = run(opt, sched, 11)
    assert seen[-1] == pytest.approx([0.01, 0.001])  # the floor scales with the group's multiplier
    assert seen[5][0] == pytest.approx(0.01 + 0.09 * CLOSED_FORM[name](5 * T / 10))


def test_step_min_lr_floors_the_decay():
    opt = sgd(1.0)
    sched = build_scheduler(opt, "step", total_steps=100, step_size=10, gamma=0.1, min_lr=0.0005)
    assert [lr for (lr,) in run(opt, sched, 40)][::10] == pytest.approx([0.1, 0.01, 0.001, 0.0005])


def test_lr_mult_groups():
    backbone, head, extra = params(), params(), params()
    groups = [{"params": head, "lr": 0.05, "name": "head"}, {"params": backbone, "lr": 0.005, "name": "backbone"},
              {"params": extra, "lr_mult": 0.5}]
    opt = build_optimizer(groups, "sgd", lr=0.05, momentum=0.9, nesterov=True)
    assert [g["lr_mult"] for g in opt.param_groups] == pytest.approx([1.0, 0.1, 0.5])
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05, 0.005, 0.025])
    assert [g["name"] for g in opt.param_groups[:2]] == ["head", "backbone"]
    assert "initial_lr" not in groups[0] and groups[0]["lr"] == 0.05  # the caller's dicts are not touched
    sched = build_scheduler(opt, "poly", total_steps=4)
    run(opt, sched, 2)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05 * 0.5 ** 0.9 * m for m in (1, 0.1, 0.5)])


def test_transfer_param_groups_keep_their_multiplier():
    from seg_transfer.transfer import param_groups

    model = nn.Module()
    model.backbone, model.classifier = nn.Linear(2, 2), nn.Linear(2, 2)
    opt = build_optimizer(param_groups(model, 0.02, backbone_lr_mult=0.1), "adamw", lr=0.02, weight_decay=0.01)
    assert isinstance(opt, torch.optim.AdamW)
    assert {g["name"]: g["lr_mult"] for g in opt.param_groups} == pytest.approx({"head": 1.0, "backbone": 0.1})


def test_zero_lr_is_allowed():
    # A run that must not learn (the trainer's early-stopping test): every group at 0, schedule or not.
    opt = build_optimizer([{"params": params(), "lr": 0.0}, {"params": params(), "lr": 0.0}], "sgd", lr=0.0)
    sched = build_scheduler(opt, "poly", total_steps=5, warmup_steps=2)
    add_param_group(opt, sched, params(), lr_mult=0.1)
    assert run(opt, sched, 5) == [[0.0, 0.0, 0.0]] * 5


def test_plain_parameters_are_one_group():
    opt = build_optimizer(nn.Linear(2, 2).parameters(), "sgd", lr=0.01)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["lr_mult"] == 1.0


def roundtrip(obj_state: dict) -> dict:
    """Through torch.save / torch.load(weights_only=True), as a checkpoint goes."""
    buf = io.BytesIO()
    torch.save(obj_state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("name", list(CLOSED_FORM))
def test_state_dict_round_trip_continues_the_same_lrs(name):
    kwargs = dict(total_steps=40, warmup_steps=6, step_size=7, min_lr=0.001)
    ref_opt = sgd(1.0, 0.1)
    ref = build_scheduler(ref_opt, name, **kwargs)
    run(ref_opt, ref, 13)
    state = roundtrip({"opt": ref_opt.state_dict(), "sched": ref.state_dict()})
    expected = run(ref_opt, ref, 27)

    opt = sgd(1.0, 0.1)
    sched = build_scheduler(opt, name, **kwargs)
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    assert run(opt, sched, 27) == expected  # exactly, not approximately


def test_resume_keeps_the_checkpoint_schedule_even_if_the_config_changed():
    opt = sgd(1.0)
    sched = build_scheduler(opt, "poly", total_steps=20)
    run(opt, sched, 5)
    state = roundtrip({"opt": opt.state_dict(), "sched": sched.state_dict()})
    expected = run(opt, sched, 15)
    opt2 = sgd(1.0)
    sched2 = build_scheduler(opt2, "cosine", total_steps=99)
    opt2.load_state_dict(state["opt"])
    sched2.load_state_dict(state["sched"])
    assert run(opt2, sched2, 15) == expected


def test_add_param_group_joins_the_schedule_at_the_current_factor():
    opt = sgd(1.0, 0.1)
    sched = build_scheduler(opt, "poly", total_steps=30, warmup_steps=4)
    run(opt, sched, 10)
    group = add_param_group(opt, sched, params(2), lr_mult=0.1, name="layer2")
    assert group is opt.param_groups[-1] and group["name"] == "layer2" and group["lr_mult"] == 0.1
    factor = (1 - 10 / 30) ** 0.9
    assert group["lr"] == pytest.approx(LR * 0.1 * factor)  # at once, not at the next step
    assert sched.get_last_lr() == [g["lr"] for g in opt.param_groups]
    for t, (head, backbone, new) in enumerate(run(opt, sched, 20), start=10):
        assert head == pytest.approx(LR * (1 - t / 30) ** 0.9, abs=1e-15)
        assert new == backbone  # same multiplier, same schedule
    assert add_param_group(opt, sched, [], lr_mult=0.1) is None
    assert len(opt.param_groups) == 3


def test_add_param_group_without_scheduler():
    opt = sgd(1.0)
    group = add_param_group(opt, None, params(), lr_mult=0.5)
    assert group["lr"] == pytest.approx(0.05) and group["initial_lr"] == pytest.approx(0.05)


def _unfreezing_run(resume_at: int | None):
    """40 steps with a group added at step 8 (and one at 20); optionally saved and resumed at ``resume_at``."""
    torch.manual_seed(0)
    a, b, c = params(), params(), params()

    def fresh():
        opt = build_optimizer([{"params": a, "lr_mult": 1.0}], "sgd", lr=LR)
        return opt, build_scheduler(opt, "cosine", total_steps=40, warmup_steps=3)

    opt, sched = fresh()
    added, lrs = [], []
    for t in range(40):
        if t == resume_at:  # as the trainer does: fresh objects, replay the additions, then load
            state = roundtrip({"opt": opt.state_dict(), "sched": sched.state_dict()})
            opt, sched = fresh()
            for p, mult in added:
                add_param_group(opt, sched, p, mult)
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
        if t in (8, 20):
            p, mult = (b, 0.1) if t == 8 else (c, 0.01)
            add_param_group(opt, sched, p, mult)
            added.append((p, mult))
        lrs.append([g["lr"] for g in opt.param_groups])
        for p in (*a, *b, *c):
            p.grad = torch.ones_like(p)
        opt.step()
        sched.step()
    return lrs, [p.detach().clone() for p in (*a, *b, *c)]


@pytest.mark.parametrize("resume_at", [5, 8, 15, 33])
def test_save_load_round_trip_after_a_group_was_added(resume_at):
    lrs, weights = _unfreezing_run(None)
    assert len(lrs[7]) == 1 and len(lrs[8]) == 2 and len(lrs[20]) == 3
    lrs2, weights2 = _unfreezing_run(resume_at)
    assert lrs2 == lrs
    for w, w2 in zip(weights, weights2):
        torch.testing.assert_close(w2, w, rtol=0, atol=0)  # momentum buffers came back too


def test_loading_without_replaying_the_added_group_says_what_to_do():
    opt = sgd(1.0)
    sched = build_scheduler(opt, "poly", total_steps=10)
    add_param_group(opt, sched, params(), 0.1)
    state = sched.state_dict()
    sched2 = build_scheduler(sgd(1.0), "poly", total_steps=10)
    with pytest.raises(ValueError, match="add_param_group"):
        sched2.load_state_dict(state)


def test_add_param_group_refuses_other_schedulers():
    opt = sgd(1.0)
    other = torch.optim.lr_scheduler.StepLR(opt, 3)
    with pytest.raises(TypeError, match="build_scheduler"):
        add_param_group(opt, other, params(), 0.1)


@pytest.mark.parametrize("call, match", [
    (lambda: build_optimizer(params(), "adam", lr=0.1), "did you mean 'adamw'"),
    (lambda: build_optimizer(params(), "sdg", lr=0.1), "did you mean 'sgd'"),
    (lambda: build_scheduler(sgd(1.0), "poli", total_steps=3), "did you mean 'poly'"),
    (lambda: build_scheduler(sgd(1.0), "cosin", total_steps=3), "did you mean 'cosine'"),
    (lambda: autocast_settings("cpu", "bf32"), "unknown amp mode 'bf32'.*valid: auto, bf16, fp16, off"),
])
def test_unknown_names(call, match):
    with pytest.raises(ConfigError, match=match):
        call()


@pytest.mark.parametrize("call", [
    lambda: build_optimizer(params(), "sgd", lr=-0.1),
    lambda: build_optimizer(params(), "sgd", lr=math.nan),
    lambda: build_optimizer(params(), "sgd", lr=0.1, momentum=0, nesterov=True),
    lambda: build_optimizer([], "sgd", lr=0.1),
    lambda: build_scheduler(sgd(1.0), "poly", total_steps=0),
    lambda: build_scheduler(sgd(1.0), "poly", total_steps=5, warmup_steps=6),
    lambda: build_scheduler(sgd(1.0), "step", total_steps=5),
    lambda: build_scheduler(sgd(1.0), "poly", total_steps=5, min_lr=LR),
])
def test_bad_values(call):
    with pytest.raises(ConfigError):
        call()


@pytest.mark.parametrize("device, amp, expected", [
    ("cpu", "auto", (False, None)),
    ("cpu", "off", (False, None)),
    ("cpu", "bf16", (True, torch.bfloat16)),
    ("cuda", "auto", (True, torch.float16)),
    ("cuda:0", "fp16", (True, torch.float16)),
    ("cuda", "bf16", (True, torch.bfloat16)),
    ("cuda", "off", (False, None)),
])
def test_autocast_settings(device, amp, expected):
    assert autocast_settings(device, amp) == expected


def test_fp16_on_cpu_is_refused():
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        autocast_settings(torch.device("cpu"), "fp16")


def test_grad_scaler_only_for_fp16_on_cuda():
    assert not grad_scaler("cpu", "auto").is_enabled()
    assert not grad_scaler("cpu", "bf16").is_enabled()
    if torch.cuda.is_available():
        assert grad_scaler("cuda", "auto").is_enabled()
        assert not grad_scaler("cuda", "bf16").is_enabled()


def test_autocast_settings_work_with_torch_autocast():
    enabled, dtype = autocast_settings("cpu", "auto")
    with torch.autocast("cpu", dtype=dtype, enabled=enabled):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
