"""The fine-tuning engine on a synthetic dataset the tests generate (random-init models: no checkpoint)."""
from __future__ import annotations

import csv
import hashlib

import pytest
import torch

from seg_transfer.config import Config, from_dict
from seg_transfer.engine.trainer import Trainer, TrainingDiverged
from seg_transfer.models.checkpoint import load_checkpoint, read_checkpoint
from seg_transfer.models.stages import stage_modules
from seg_transfer.predict import Predictor

from .synthetic import CLASSES, config, make_dataset


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


def test_resume_matches_uninterrupted_run(data_root, tmp_path, monkeypatch):
    sections = {"train": {"epochs": 2}, "freeze": {"strategy": "partial", "stages": 2, "schedule": {1: "layer1"}}}
    full = trainer(data_root, tmp_path / "a", **sections)
    full.fit()

    original = Trainer.train_epoch

    def interrupt(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", interrupt)
    with pytest.raises(KeyboardInterrupt):
        trainer(data_root, tmp_path / "b", **sections).fit()
    monkeypatch.setattr(Trainer, "train_epoch", original)
    resumed = Trainer(from_dict(Config, config(data_root, tmp_path / "b", **sections)), run_dir=tmp_path / "b" / "run",
                      resume=True, progress=False, log=lambda _m: None)
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
    with torch.no_grad():
        assert torch.equal(model(x)["out"], t.model.to("cpu")(x)["out"])


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
