"""Binary segmentation in the engine (``BinarySegmentationTask``): ``num_classes: 1`` trains one sigmoid
channel on 0/255 person masks made from Penn-Fudan's instance mask, scores IoU/Dice/precision/recall at
``train.threshold``, and learns: a small random-init model goes from IoU < 0.3 to IoU > 0.6."""
from __future__ import annotations

import csv

import pytest
import torch
import yaml
from synthetic.person import CLASSES, make_person_dataset, person_masks
from synthetic.segmentation import config

from seg_transfer.cli import main
from seg_transfer.config import Config, from_dict
from seg_transfer.data.registry import build_dataset
from seg_transfer.data.segmentation import binary_splits
from seg_transfer.engine.evaluate import evaluate, evaluate_checkpoint
from seg_transfer.engine.losses import WeightedSum
from seg_transfer.engine.metrics import BinarySegmentationMeter
from seg_transfer.engine.tasks.segmentation import BinarySegmentationTask, segmentation_task
from seg_transfer.engine.trainer import Trainer
from seg_transfer.errors import ConfigError
from seg_transfer.models.checkpoint import read_checkpoint
from seg_transfer.predict import Predictor

from conftest import shared_image

pytestmark = pytest.mark.usefixtures("one_thread")
# The bar the acceptance test states: val IoU of the person class after 15 epochs from random weights
# (it reaches about 0.87 here; an untrained model scores below 0.1).
IOU_BAR = 0.6


@pytest.fixture(scope="module")
def photo():
    return shared_image("FudanPed00054.png"), shared_image("FudanPed00054_mask.png")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, photo):
    return make_person_dataset(tmp_path_factory.mktemp("person"), *photo, n=24)


def binary_config(root, out, **sections) -> dict:
    cfg = config(root, out, **sections)
    cfg["model"]["num_classes"] = 1
    cfg["data"].update(classes=CLASSES, val_ratio=0.25)
    return cfg


def test_num_classes_1_builds_a_binary_run(data_root, tmp_path):
    t = Trainer(from_dict(Config, binary_config(data_root, tmp_path)), progress=False, log=lambda _m: None)
    assert isinstance(t.task, BinarySegmentationTask) and t.classes == CLASSES
    assert t.task.fields == ("iou", "dice", "precision", "recall", "pixel_acc") and t.task.main_metric == "iou"
    assert t.model.info.binary and t.model.info.classes == CLASSES
    assert isinstance(t.task.criterion.loss, WeightedSum) and t.task.criterion.loss.names == ["bce", "dice"]
    image, mask = t.train_set[0]
    assert set(mask.unique().tolist()) <= {0, 1}  # the 0/255 files, read as 0/1
    with torch.no_grad():
        assert t.model(image[None])["out"].shape == (1, 1, 64, 64)
    assert isinstance(t.task.meter(), BinarySegmentationMeter) and t.task.meter().threshold == 0.5


def test_binary_task_options_and_errors(data_root, tmp_path):
    splits = binary_splits(build_dataset(binary_config(data_root, tmp_path)["data"]))

    def task(**train):
        return segmentation_task(from_dict(Config, binary_config(data_root, tmp_path, train=train)), splits)

    focal = task(loss={"name": "focal", "gamma": 1.0}, threshold=0.3)
    assert type(focal.criterion.loss).__name__ == "BinaryFocalLoss" and focal.meter().threshold == 0.3
    with pytest.raises(ConfigError, match="train.class_weights: a binary model weighs its foreground with the bce "
                                          "loss's pos_weight"):
        task(class_weights=[1.0, 3.0])
    with pytest.raises(ConfigError, match="train.threshold: expected a number between 0 and 1, got 1.5"):
        task(threshold=1.5)
    with pytest.raises(ConfigError, match="unknown loss 'ce'.*valid: bce, dice, focal"):
        task(loss="ce")
    # the same files without the binary reading: a two-class softmax model's task
    plain = build_dataset(binary_config(data_root, tmp_path)["data"])
    assert type(segmentation_task(from_dict(Config, config(data_root, tmp_path)), plain)).__name__ == "SegmentationTask"


def test_segmentation_reads_augment_crop_size(data_root, tmp_path):
    cfg = from_dict(Config, binary_config(data_root, tmp_path, augment={"crop_size": 48}))
    task = segmentation_task(cfg, binary_splits(build_dataset(cfg.data)))
    assert task.ignored_settings(cfg.augment) == []  # its crop: nothing to warn of


def test_check_data_accepts_0_255_masks_for_a_binary_model(data_root, tmp_path, capsys):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(binary_config(data_root, tmp_path)))
    assert main(["finetune", str(path), "--check-data", "-q"]) == 0
    assert main(["finetune", str(path), "model.num_classes=null", "--check-data", "-q"]) == 1
    assert "holds only 0 and 255" in capsys.readouterr().err


@pytest.mark.slow  # about 45 s on 2 cores
def test_binary_finetune_learns_person_vs_background(data_root, photo, tmp_path):
    cfg = from_dict(Config, binary_config(data_root, tmp_path, train={"epochs": 15}))
    t = Trainer(cfg, progress=False, log=lambda _m: None)
    _, untrained, _ = evaluate(t.model, t.val_set, t.task, t.device)
    result = t.fit()
    assert untrained["iou"] < 0.3
    assert result.best > IOU_BAR and result.best > untrained["iou"] + 0.3, result.history
    run = tmp_path / "run"
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert list(rows[0])[:8] == ["epoch", "train_loss", "val_loss", "iou", "dice", "precision", "recall", "pixel_acc"]
    assert float(rows[-1]["iou"]) > IOU_BAR and float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    ckpt = read_checkpoint(run / "best.pt")
    assert ckpt["model"]["binary"] is True and ckpt["classes"] == CLASSES

    # evaluate scores the checkpoint as the run did at its best epoch
    report = evaluate_checkpoint(cfg, run / "best.pt", out_dir=str(tmp_path / "eval"), progress=False)
    assert report["iou"] == pytest.approx(result.best, abs=1e-6) and report["metric"] == "iou"
    assert report["summary"][0].startswith("IoU ") and "(threshold 0.5, person vs background)" in report["summary"][0]
    assert set(report["per_class"]) == set(CLASSES)

    # the whole (half-scale) photo, never seen whole: the person mask is found there too
    rgb, person = person_masks(*photo)
    mask = Predictor.from_checkpoint(run / "best.pt").predict(rgb).mask.numpy().astype(bool)
    assert (mask & person).sum() / (mask | person).sum() > 0.5
