"""Classification through the one Trainer: learning, frozen parameters, the pooled-feature cache, class-aware
init, metrics, outputs, evaluation and resume."""
from __future__ import annotations

import csv
import math

import pytest
import torch
import torch.nn.functional as F
from synthetic.classification import make_classes

from seg_transfer.config import AugmentConfig, Config, from_dict
from seg_transfer.engine.evaluate import evaluate_checkpoint
from seg_transfer.engine.metrics import ClassificationMeter, classification_metrics
from seg_transfer.engine.trainer import Trainer

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_classes(tmp_path_factory.mktemp("synthetic_classes"), n=24, size=40)


def _config(root, out, **sections) -> Config:
    cfg = {
        "model": {"backbone": "resnet18", "head": "classifier", "backbone_weights": None, "resize": 0},
        "data": {"format": "imagefolder", "root": str(root), "val_ratio": 0.25, "seed": 0},
        "augment": {"train": [{"name": "HorizontalFlip", "p": 0.5}], "val": []},
        "train": {"epochs": 1, "batch_size": 12, "val_batch_size": 12, "optimizer": "adamw", "lr": 0.002,
                  "weight_decay": 0.0, "scheduler": "none", "amp": "off", "device": "cpu"},
        "output": {"dir": str(out), "name": "run", "num_predictions": 4},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return from_dict(Config, cfg)


def test_metrics_from_confusion():
    mat = torch.tensor([[3, 1, 0], [0, 2, 0], [1, 0, 0]])  # rows: label; columns: predicted
    m = classification_metrics(mat, torch.tensor([6, 7]), 2)
    assert m["accuracy"] == pytest.approx(5 / 7) and m["top2"] == pytest.approx(6 / 7)
    assert m["precision"][:2] == pytest.approx([3 / 4, 2 / 3]) and math.isnan(m["precision"][2])
    assert m["recall"] == pytest.approx([3 / 4, 1.0, 0.0])
    assert m["f1"] == pytest.approx([0.75, 0.8, 0.0]) and m["support"] == [4, 2, 1]
    assert m["macro_f1"] == pytest.approx((0.75 + 0.8) / 3)


def test_meter_counts_top_k():
    meter = ClassificationMeter(3, 2)
    logits = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5]])
    meter.update(logits, torch.tensor([2, 0, 0]))
    m = meter.reduce().compute()
    assert m["accuracy"] == pytest.approx(1 / 3) and m["top2"] == pytest.approx(2 / 3)


def test_top_k_left_out_when_k_covers_every_class():
    """With k >= the number of classes every label is in the top k: a column of 1.0 that says nothing."""
    logits = torch.tensor([[0.2, 0.8], [0.9, 0.1]])
    meter = ClassificationMeter(2, 5)
    meter.update(logits, torch.tensor([0, 0]))
    m = meter.reduce().compute()
    assert m["accuracy"] == 0.5 and not [k for k in m if k.startswith("top")]
    assert "top2" not in classification_metrics(torch.eye(2, dtype=torch.int64), torch.tensor([2, 2]), 2)
    assert "top5" in ClassificationMeter(6, 5).compute()


@pytest.mark.slow
def test_learns_synthetic_two_classes(data_root, tmp_path, one_thread):
    """Random-init ResNet-18, 32x32 images: horizontal vs vertical stripes learned to >= 90% val accuracy."""
    root = make_classes(tmp_path / "data", n=32, size=32, seed=1)
    cfg = _config(root, tmp_path, train={"epochs": 4, "lr": 0.002, "batch_size": 8, "scheduler": "cosine"})
    result = Trainer(cfg, progress=False, log=lambda _: None).fit()
    assert result.metric == "accuracy" and result.best >= 0.9, result.history
    assert result.history[-1]["accuracy"] >= 0.9 and result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_loss_label_smoothing_and_class_weights(data_root, tmp_path, one_thread):
    cfg = _config(data_root, tmp_path, train={"label_smoothing": 0.1, "class_weights": [1.0, 3.0]})
    trainer = Trainer(cfg, progress=False, log=lambda _: None)
    logits, target = torch.randn(5, 2), torch.tensor([0, 1, 1, 0, 1])
    expected = F.cross_entropy(logits, target, weight=torch.tensor([1.0, 3.0]), label_smoothing=0.1)
    assert torch.allclose(trainer.task.loss(logits, target), expected)


def test_crop_size_set_for_classification_is_said_at_start(data_root, tmp_path):
    """augment.crop_size is not what crops a classification run: the run says so in one line when it is set."""
    lines: list[str] = []
    trainer = Trainer(_config(data_root, tmp_path, augment={"crop_size": 224}), progress=False, log=lines.append)
    assert [s for s in lines if "crop_size" in s] == [
        "warning: augment.crop_size: 224 is not used by classification: the crop is the weights' crop size; "
        "set model.resize: N to scale it, or name a crop step in augment.train"]
    assert trainer.task.ignored_settings(AugmentConfig()) == []  # the default every config carries says nothing


def test_check_data_notes_the_ignored_crop_size(data_root, tmp_path):
    from seg_transfer.engine.preflight import preflight
    from seg_transfer.engine.trainer import run_splits

    cfg = _config(data_root, tmp_path, augment={"crop_size": 224})
    notes: list[str] = []
    assert preflight(cfg, run_splits(cfg), note=notes.append) == []
    assert any(n.startswith("augment.crop_size: 224 is not used by classification") for n in notes), notes


def test_frozen_parameters_bitwise_unchanged(data_root, tmp_path, one_thread):
    cfg = _config(data_root, tmp_path, freeze={"strategy": "partial", "unfreeze_from": "layer4"},
                  output={"num_predictions": 0})
    trainer = Trainer(cfg, progress=False, log=lambda _: None)
    frozen = {k: v.clone() for k, v in trainer.model.state_dict().items() if not k.startswith(("backbone.body.layer4", "head"))}
    head = trainer.model.head.classifier[-1].weight.clone()
    trainer.train_epoch(0)
    after = trainer.model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in frozen.items())  # incl. BatchNorm running statistics
    assert not torch.equal(head, trainer.model.head.classifier[-1].weight)


def test_cached_linear_probe_equals_uncached(data_root, tmp_path, one_thread):
    """With the backbone frozen the pooled features are cached; training on them gives the same head."""
    heads = {}
    for enabled in (False, True):
        cfg = _config(data_root, tmp_path / str(enabled), freeze={"strategy": "feature_extraction"},
                      cache={"enabled": enabled}, augment={"train": [], "val": []},
                      train={"epochs": 2}, output={"num_predictions": 0})
        trainer = Trainer(cfg, progress=False, log=lambda _: None)
        assert trainer.cached is enabled
        result = trainer.fit()
        heads[enabled] = (trainer.model.head.classifier[-1].weight.detach().clone(), result.history[-1])
    assert torch.allclose(heads[True][0], heads[False][0], atol=1e-5)
    assert heads[True][1]["accuracy"] == heads[False][1]["accuracy"]


def test_run_outputs_evaluate_and_resume(data_root, tmp_path, one_thread):
    lines: list[str] = []
    trainer = Trainer(_config(data_root, tmp_path, train={"epochs": 1}), progress=False, log=lines.append)
    assert trainer.task.fields == ("accuracy", "macro_f1")  # two classes: no top-k column
    trainer.fit()
    epoch = next(s for s in lines if s.startswith("epoch 1/1"))
    assert "  acc " in epoch and "  macro_f1 " in epoch and "top" not in epoch
    cfg = _config(data_root, tmp_path, train={"epochs": 2})
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.csv", "curves.png", "predictions.png", "last.pt", "best.pt",
                 "val_metrics_last.json"):
        assert (run / name).is_file(), name
    with open(run / "metrics.csv") as f:
        assert list(csv.DictReader(f).fieldnames) == ["epoch", "train_loss", "val_loss", "accuracy", "macro_f1",
                                                       "lr", "seconds", "data_seconds"]
    report = evaluate_checkpoint(cfg, run / "best.pt", out_dir=str(tmp_path / "eval"), progress=False)
    assert report["files"] == ["metrics.json", "config.yaml", "confusion.png", "predictions_best_worst.png",
                               "report.html", "run.json"]
    assert all((tmp_path / "eval" / name).is_file() for name in report["files"])
    assert report["images"] == 12 and sum(map(sum, report["confusion"])) == 12
    assert report["summary"][0].startswith("acc ") and "precision" in report["summary"][1]
    assert "top" not in report["summary"][0] and "top2" not in report
    resumed = Trainer(cfg, run_dir=run, resume=True, progress=False, log=lambda _: None)
    assert resumed.start_epoch == 1
    result = resumed.fit()
    assert [r["epoch"] for r in result.history] == [1, 2]


def test_class_aware_init_from_imagenet_names(tmp_path, standin, one_thread):
    """Folders renamed to ImageNet's 'tabby' and 'goldfish' start from those rows of the source classifier."""
    import torchvision

    root = make_classes(tmp_path / "data", n=4, size=40)
    standin("resnet18")
    categories = torchvision.models.ResNet18_Weights.DEFAULT.meta["categories"]
    cfg = _config(root, tmp_path, model={"name": "resnet18", "backbone": None, "head": None, "resize": 64},
                  data={"classes": {"horizontal": "tabby", "vertical": "goldfish"}})
    trainer = Trainer(cfg, progress=False, log=lambda _: None)
    source = torch.load(standin("resnet18"), weights_only=True)
    assert trainer.report.class_aware == ["tabby", "goldfish"]
    rows = [categories.index("tabby"), categories.index("goldfish")]
    assert torch.equal(trainer.model.fc.weight, source["fc.weight"][rows])
    assert torch.equal(trainer.model.fc.bias, source["fc.bias"][rows])
    assert [s[0] for s in trainer.report.skipped] == ["fc.weight", "fc.bias"]
    assert len(trainer.report.loaded) == len(source) - 2 and not trainer.report.unexpected


@pytest.mark.parametrize("config", ["hymenoptera_resnet18", "hymenoptera_inception_v3"])
def test_shipped_hymenoptera_configs_set_up(config, standin, tmp_path, monkeypatch, one_thread):
    """The shipped configs on the real folder (stand-in weights): GIF skipped, 20% of each class held
    out, the freeze and class-aware init they promise. Training itself is left to the benchmark."""
    from seg_transfer.config import load_config

    from conftest import SHARED

    repo = __import__("pathlib").Path(__file__).resolve().parents[2]
    if not (SHARED / "data/hymenoptera/train").is_dir():
        pytest.skip("../shared/data/hymenoptera not available")
    cfg = load_config(str(repo / "configs" / f"{config}.yaml"), [f"output.dir={tmp_path}"])
    standin(cfg.model.name)
    monkeypatch.chdir(repo)  # data.root is relative to the repository root
    trainer = Trainer(cfg, progress=False, log=lambda _: None)
    assert (len(trainer.train_set), len(trainer.val_set)) == (195, 49)
    if config.endswith("resnet18"):
        assert trainer.classes == ["ant", "bee"] and trainer.report.class_aware == ["ant", "bee"]
        assert trainer.freeze_state.frozen_stages == []
    else:
        assert trainer.classes == ["ants", "bees"]
        assert trainer.freeze_state.frozen_stages[-1] == "Mixed_5d"
        assert not trainer.model.Mixed_5d.branch1x1.conv.weight.requires_grad
        assert trainer.model.Mixed_6a.branch3x3.conv.weight.requires_grad


def test_gradual_unfreezing(tmp_path, one_thread):
    cfg = _config(make_classes(tmp_path / "data", n=8, size=32), tmp_path,
                  freeze={"strategy": "feature_extraction", "schedule": {1: "layer4"}},
                  train={"epochs": 2, "backbone_lr_mult": 0.1}, output={"num_predictions": 0})
    trainer = Trainer(cfg, progress=False, log=lambda _: None)
    assert not trainer.cached  # the schedule unfreezes: no cache
    layer3 = {k: v.clone() for k, v in trainer.model.backbone.stage("layer3").state_dict().items()}
    layer4 = {k: v.clone() for k, v in trainer.model.backbone.stage("layer4").state_dict().items()}
    trainer.fit()
    assert trainer.unfrozen == ["layer4"] and len(trainer.optimizer.param_groups) == 2
    assert trainer.optimizer.param_groups[1]["lr"] == pytest.approx(trainer.optimizer.param_groups[0]["lr"] * 0.1)
    assert all(torch.equal(v, trainer.model.backbone.stage("layer3").state_dict()[k]) for k, v in layer3.items())
    assert not torch.equal(layer4["0.conv1.weight"], trainer.model.backbone.stage("layer4")[0].conv1.weight)
