"""The fine-tuning engine on a synthetic dataset the tests generate (random-init models: no checkpoint)."""
from __future__ import annotations

import copy
import csv
import hashlib
import json

import pytest
import torch
import yaml
from synthetic.segmentation import CLASSES, config, make_dataset

from seg_transfer.config import Config, from_dict
from seg_transfer.engine.trainer import Trainer, TrainingDiverged
from seg_transfer.models.checkpoint import load_checkpoint, read_checkpoint
from seg_transfer.models.stages import stage_modules
from seg_transfer.predict import Predictor


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("synthetic"))


def trainer(data_root, out, **sections) -> Trainer:
    return Trainer(from_dict(Config, config(data_root, out, **sections)), progress=False, log=lambda _m: None)


def _frozen_snapshot(model, stages):
    mods = stage_modules(model)
    return {f"{s}.{k}": v.detach().clone() for s in stages for k, v in mods[s].state_dict().items()}


@pytest.mark.slow
def test_finetune_learns_synthetic_shapes(data_root, tmp_path):
    """A small random-init model reaches a high val mIoU in a few CPU minutes; outputs are written."""
    t = trainer(data_root, tmp_path, model={"neck": "fpn", "head": "fpn"}, train={"epochs": 25})
    result = t.fit()
    assert result.best > 0.75, result.history
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.csv", "curves.png", "predictions.png", "last.pt", "best.pt"):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) == 25 and float(rows[-1]["miou"]) > 0.5
    # The checkpoint alone rebuilds the model: class names and preprocessing included.
    predictor = Predictor.from_checkpoint(run / "best.pt")
    assert predictor.classes == CLASSES
    image = next((data_root / "images").iterdir())
    assert predictor.predict(image).mask.shape == (64, 64)


def test_frozen_params_and_bn_stats_unchanged(data_root, tmp_path):
    t = trainer(data_root, tmp_path, freeze={"strategy": "partial", "unfreeze_from": "layer3", "bn": True},
                train={"epochs": 1})
    frozen = ["stem", "layer1", "layer2"]
    before = _frozen_snapshot(t.model, frozen)
    trainable_before = {k: v.detach().clone() for k, v in stage_modules(t.model)["layer4"].state_dict().items()}
    t.fit()
    after = _frozen_snapshot(t.model, frozen)
    assert any("running_mean" in k for k in before)
    assert all(torch.equal(before[k], after[k]) for k in before), [k for k in before if not torch.equal(before[k], after[k])]
    changed = [k for k, v in stage_modules(t.model)["layer4"].state_dict().items()
               if v.is_floating_point() and not torch.equal(v, trainable_before[k])]
    assert changed


def interrupted_and_resumed(data_root, out, sections, monkeypatch) -> Trainer:
    """A run stopped by Ctrl-C during its second epoch, then a Trainer resuming it (not yet fitted)."""
    original = Trainer.train_epoch

    def interrupt(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", interrupt)
    with pytest.raises(KeyboardInterrupt):
        trainer(data_root, out, **sections).fit()
    monkeypatch.setattr(Trainer, "train_epoch", original)
    return Trainer(from_dict(Config, config(data_root, out, **sections)), run_dir=out / "run", resume=True,
                   progress=False, log=lambda _m: None)


def test_resume_matches_uninterrupted_run(data_root, tmp_path, monkeypatch):
    sections = {"train": {"epochs": 2}, "freeze": {"strategy": "partial", "stages": 2, "schedule": {1: "layer1"}}}
    full = trainer(data_root, tmp_path / "a", **sections)
    full.fit()

    resumed = interrupted_and_resumed(data_root, tmp_path / "b", sections, monkeypatch)
    assert resumed.start_epoch == 1
    resumed.fit()
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    assert [r["epoch"] for r in resumed.history] == [1, 2]


def test_nan_loss_stops_and_keeps_best(data_root, tmp_path, monkeypatch):
    t = trainer(data_root, tmp_path, train={"epochs": 3})
    calls = {"n": 0}
    criterion = t.task.criterion.forward

    def poisoned(outputs, target):
        calls["n"] += 1
        loss = criterion(outputs, target)
        return loss * float("nan") if t.model.training and calls["n"] > 8 else loss

    monkeypatch.setattr(t.task.criterion, "forward", poisoned)
    best = tmp_path / "run" / "best.pt"
    with pytest.raises(TrainingDiverged, match="best.pt is intact"):
        t.fit()
    assert best.is_file()
    digest = hashlib.sha256(best.read_bytes()).hexdigest()
    assert read_checkpoint(best)["epoch"] == 1 and hashlib.sha256(best.read_bytes()).hexdigest() == digest


def test_checkpoint_is_self_describing(data_root, tmp_path):
    t = trainer(data_root, tmp_path, train={"epochs": 1})
    t.fit()
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ckpt["classes"] == CLASSES and ckpt["epoch"] == 1
    assert {"optimizer", "scheduler", "scaler", "config", "preprocess", "versions"} <= set(ckpt)
    model = load_checkpoint(tmp_path / "run" / "last.pt")
    x = torch.rand(1, 3, 64, 64)
    t.model.eval()
    assert t.channels_last  # the CPU default: the trained model's convolutions run NHWC, the loaded one's NCHW
    with torch.no_grad():
        torch.testing.assert_close(model(x)["out"], t.model.to("cpu")(x)["out"], rtol=1e-5, atol=1e-5)
        model.to(memory_format=torch.channels_last)
        assert torch.equal(model(x)["out"], t.model(x)["out"])  # same weights, same kernels: bit for bit


def test_limit_train_keeps_a_fixed_subset_of_the_train_split_and_all_of_val(data_root, tmp_path):
    """train.limit_train (--limit-train): that many train items, the same whatever train.seed, val whole; the
    run folder records it (config.yaml, which reruns and --resume read, and run.json)."""
    full = trainer(data_root, tmp_path / "full")
    lines: list[str] = []
    t = Trainer(from_dict(Config, config(data_root, tmp_path, train={"epochs": 1, "limit_train": 5})),
                progress=False, log=lines.append)
    names = t.train_set.dataset.names
    assert len(names) == 5 and set(names) < set(full.train_set.dataset.names)
    assert t.val_images.names == full.val_images.names
    reseeded = trainer(data_root, tmp_path / "other", train={"limit_train": 5, "seed": 3})
    assert reseeded.train_set.dataset.names == names
    t.fit()
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["limit_train"] == 5
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["images"] == {"train": 5, "val": 8} and run["limit_train"] == {"kept": 5, "of": 32}
    assert "data: 5 train (train.limit_train: a fixed subset of 32) / 8 val images" in "\n".join(lines)


def test_early_stopping(data_root, tmp_path, monkeypatch):
    t = trainer(data_root, tmp_path, train={"epochs": 6, "patience": 1, "lr": 0.0})
    result = t.fit()
    assert result.stopped_early and len(result.history) == 2


def test_feature_extraction_trains_on_the_cache(data_root, tmp_path):
    """Backbone wholly frozen -> the cache is on by default, and it matches training without it."""
    sections = {"freeze": {"strategy": "feature_extraction"}, "train": {"epochs": 2},
                "augment": {"crop_size": 64, "train": [], "val": []}}
    cached = trainer(data_root, tmp_path / "a", **sections)
    plain = trainer(data_root, tmp_path / "b", cache={"enabled": False}, **sections)
    assert cached.cached and not plain.cached
    a, b = cached.fit(), plain.fit()
    for ra, rb in zip(a.history, b.history):
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-4)
        assert ra["miou"] == pytest.approx(rb["miou"], abs=1e-3)


def test_cache_refused_when_backbone_trains(data_root, tmp_path):
    from seg_transfer.errors import SegTransferError
    with pytest.raises(SegTransferError, match="feature_extraction"):
        trainer(data_root, tmp_path, cache={"enabled": True}, freeze={"strategy": "partial", "stages": 2})


def test_val_interval_evaluates_every_nth_and_the_last_epoch(data_root, tmp_path, monkeypatch):
    t = trainer(data_root, tmp_path, train={"epochs": 5, "val_interval": 2, "precise_bn": 1})
    calls = {"evaluate": 0, "precise_bn": 0}
    evaluate, precise_bn = t.evaluate, t.precise_bn

    def counted(name, fn):
        def wrapper(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return wrapper

    monkeypatch.setattr(t, "evaluate", counted("evaluate", evaluate))
    monkeypatch.setattr(t, "precise_bn", counted("precise_bn", precise_bn))
    result = t.fit()
    assert calls == {"evaluate": 3, "precise_bn": 3}  # epochs 2, 4 and the last, 5
    assert [("miou" in r) for r in result.history] == [False, True, False, True, True]
    assert all(r["train_loss"] > 0 for r in result.history)
    assert read_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 5  # saved after every epoch
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4", "5"] and rows[0]["miou"] == ""
    assert (tmp_path / "run" / "curves.png").is_file() and result.best_epoch in (2, 4, 5)


def test_channels_last_trains_as_nchw_does(data_root, tmp_path):
    """``train.channels_last`` changes the memory format only: one step's loss and gradients agree with NCHW
    within float error, and so does an epoch's loss (the weights then drift apart as float noise compounds)."""
    t = trainer(data_root, tmp_path / "nhwc", train={"epochs": 1, "channels_last": True, "seed": 3})
    conv = next(m for m in t.model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1))
    assert t.channels_last and conv.weight.is_contiguous(memory_format=torch.channels_last)
    inputs, targets = next(iter(torch.utils.data.DataLoader(t.train_set, batch_size=4, collate_fn=t.collate)))
    nchw = copy.deepcopy(t.model).to(memory_format=torch.contiguous_format)
    assert not next(m for m in nchw.modules() if isinstance(m, torch.nn.Conv2d)).weight.is_contiguous(
        memory_format=torch.channels_last)
    grads = []
    for model, x in ((t.model, inputs.contiguous(memory_format=torch.channels_last)), (nchw, inputs.contiguous())):
        model.train()
        model.zero_grad()
        loss = t.task.train_loss(model, x, targets, False)
        loss.backward()
        grads.append((loss.item(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}))
    (loss_a, grad_a), (loss_b, grad_b) = grads
    assert loss_a == pytest.approx(loss_b, rel=1e-5) and grad_a.keys() == grad_b.keys()
    for key, g in grad_a.items():
        torch.testing.assert_close(g, grad_b[key], rtol=1e-3, atol=1e-5, msg=key)
    plain = trainer(data_root, tmp_path / "nchw", train={"epochs": 1, "channels_last": False, "seed": 3})
    assert not plain.channels_last
    t.model.zero_grad()
    assert t.fit().history[-1]["train_loss"] == pytest.approx(plain.fit().history[-1]["train_loss"], rel=1e-3)


def test_channels_last_auto_is_on_for_batched_images_on_the_cpu():
    from seg_transfer.engine.trainer import use_channels_last

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_channels_last(None, "segmentation", cpu) and use_channels_last(None, "classification", cpu)
    assert not use_channels_last(None, "detection", cpu)  # detectors batch a list of images themselves
    assert not use_channels_last(None, "segmentation", cuda) and use_channels_last(True, "segmentation", cuda)
    assert not use_channels_last(False, "segmentation", cpu)


def test_poly_schedule_ends_at_zero_when_the_last_partial_batch_is_dropped(data_root, tmp_path):
    probe = trainer(data_root, tmp_path / "probe", train={"epochs": 1})
    n = len(probe.train_set)
    bs = next(b for b in (3, 5, 7, 9) if n % b and n > b)
    t = trainer(data_root, tmp_path, train={"epochs": 2, "batch_size": bs, "scheduler": "poly", "val_interval": 2})
    assert t.steps_per_epoch == n // bs  # the loader drops the partial batch: the schedule counts what runs
    t.fit()
    assert t.scheduler.last_epoch == 2 * (n // bs) and t.optimizer.param_groups[0]["lr"] == 0.0


def test_epoch_line_and_metrics_csv_show_the_lr_the_epoch_trained_with(data_root, tmp_path):
    """The scheduler steps after each optimizer step: its value at the end of a poly run is 0, an LR no step
    used. The epoch line and metrics.csv show the LR of the epoch's last step instead."""
    lines: list[str] = []
    t = Trainer(from_dict(Config, config(data_root, tmp_path, train={"epochs": 2, "scheduler": "poly"})),
                progress=False, log=lines.append)
    used: list[float] = []  # the LR of every optimizer step, as the step reads it
    t.optimizer.register_step_pre_hook(lambda opt, args, kwargs: used.append(opt.param_groups[0]["lr"]))
    t.fit()
    per_epoch = t.steps_per_epoch
    expected = [used[per_epoch - 1], used[2 * per_epoch - 1]]
    assert len(used) == 2 * per_epoch and expected[1] > 0 and t.optimizer.param_groups[0]["lr"] == 0.0
    with open(tmp_path / "run" / "metrics.csv") as f:
        assert [float(r["lr"]) for r in csv.DictReader(f)] == pytest.approx(expected, rel=1e-5)
    epoch_lines = [s for s in lines if s.startswith("epoch ") and "train_loss" in s]
    assert [s.split("  lr ")[1].split()[0] for s in epoch_lines] == [f"{lr:.2e}" for lr in expected]


# ------------------------------------------------------------------ the batches seam: device recipe, loader
DEVICE_RECIPE = {"augment": {"train": None, "backend": "device"}, "cache": {"images": "ram"}}


def test_device_recipe_trains_resumes_exactly_and_measures_its_data_time(data_root, tmp_path, monkeypatch):
    sections = {**DEVICE_RECIPE, "train": {"epochs": 2}}
    full = trainer(data_root, tmp_path / "a", **sections)
    assert full.recipe is not None and full.images is not None
    inputs, targets = next(full.batches(0))
    assert inputs.shape == (8, 3, 64, 64) and targets.shape == (8, 64, 64) and targets.dtype == torch.int64
    full.fit()
    rows = list(csv.DictReader(open(tmp_path / "a" / "run" / "metrics.csv")))
    assert all(0 <= float(r["data_seconds"]) <= float(r["seconds"]) for r in rows)
    assert float(rows[1]["train_loss"]) < float(rows[0]["train_loss"])

    resumed = interrupted_and_resumed(data_root, tmp_path / "b", sections, monkeypatch)
    resumed.fit()
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_device_recipe_refuses_custom_steps_in_one_line(data_root, tmp_path):
    from seg_transfer.errors import SegTransferError

    with pytest.raises(SegTransferError, match="augment.backend: device runs the built-in train recipes only"):
        trainer(data_root, tmp_path, augment={"backend": "device"})
    assert trainer(data_root, tmp_path, augment={"backend": "auto"}).recipe is None  # the CPU: albumentations


def test_persistent_workers_train_exactly_as_no_workers_do(data_root, tmp_path):
    """Workers kept across epochs still seed each item from (seed, epoch, index): the same weights as a
    run that loads in the main process from the files; the image cache (cache.images: auto, here in shared
    memory read by the workers) gives the same pixels as the files."""
    runs = {}
    for name, sections in {"inline": {"train": {"epochs": 2, "workers": 0}, "cache": {"images": "none"}},
                           "workers": {"train": {"epochs": 2, "workers": 2}, "cache": {"images": "none"}},
                           "cached": {"train": {"epochs": 2, "workers": 2}}}.items():
        t = trainer(data_root, tmp_path / name, **sections)
        assert (t.images is not None) == (name == "cached"), name
        t.fit()
        runs[name] = t.model.state_dict()
    for name in ("workers", "cached"):
        assert all(torch.equal(runs["inline"][k], runs[name][k]) for k in runs["inline"]), name


# ------------------------------------------------------------------ CUDA-only paths (skipped without a GPU)
@pytest.mark.cuda
@pytest.mark.parametrize("images", ["ram", "device"])
def test_cuda_device_recipe_pins_moves_and_trains(data_root, tmp_path, images):
    """augment.backend auto on CUDA: the built-in recipe on the GPU, from pinned RAM (non-blocking copies)
    or from the decoded set on the GPU; batches arrive on the device; a run trains with amp auto."""
    t = trainer(data_root, tmp_path, train={"epochs": 2, "device": "cuda", "amp": "auto"},
                augment={"train": None, "backend": "auto"}, cache={"images": images})
    assert t.recipe is not None and t.images is not None
    assert t.images.pixels.device.type == ("cuda" if images == "device" else "cpu")
    inputs, targets = next(t.batches(0))
    assert inputs.device.type == targets.device.type == "cuda" and targets.dtype == torch.int64
    history = t.fit().history
    assert float(history[-1]["train_loss"]) < float(history[0]["train_loss"])


@pytest.mark.cuda
def test_cuda_albumentations_path_uses_pinned_persistent_workers(data_root, tmp_path):
    t = trainer(data_root, tmp_path, train={"epochs": 1, "device": "cuda", "workers": 2},
                augment={"backend": "cpu"}, cache={"images": "none"})
    loader = t.train_loader(0)
    assert loader.pin_memory and loader.persistent_workers and t.train_loader(1) is loader
    inputs, _ = next(t.batches(0))
    assert inputs.device.type == "cuda"


def test_train_compile_wraps_the_step_and_keeps_the_weights_names(data_root, tmp_path):
    """train.compile: the step runs through torch.compile (compiling itself is left to the first step, which
    takes minutes on 2 cores); the model, and so checkpoints, keep their parameter names."""
    t = trainer(data_root, tmp_path, train={"compile": True})
    assert isinstance(t.net, torch._dynamo.eval_frame.OptimizedModule)
    assert not any("_orig_mod" in k for k in t.model.state_dict())
    assert not isinstance(trainer(data_root, tmp_path / "eager", train={"compile": False}).net,
                          torch._dynamo.eval_frame.OptimizedModule)


def test_predictions_png_is_drawn_at_best_and_last_epochs_only(data_root, tmp_path, monkeypatch):
    """The per-epoch drawing that cost more than a short run's steps: skipped on an epoch that neither
    improves nor ends the run. The val score is held fixed, so only epoch 1 improves."""
    t = trainer(data_root, tmp_path, train={"epochs": 3})
    first = t.evaluate()
    monkeypatch.setattr(t, "evaluate", lambda: first)  # every epoch scores the same: no later best
    drawn: list[int] = []
    plot = t.task.plot_predictions
    def spy(model, dataset, n, device, path, **kw):
        if path == t.folder.predictions:  # plot_best_worst draws through it too, into its own file
            drawn.append(len(t.history))
        return plot(model, dataset, n, device, path, **kw)

    monkeypatch.setattr(t.task, "plot_predictions", spy)
    t.fit()
    assert drawn == [1, 3] and t.folder.predictions.is_file()
    assert len(list(csv.DictReader(open(t.folder.metrics_csv)))) == 3
