"""A pretraining run on generated images: its folder, exact resume, and its checkpoint's backbone loading
into every task's model with the transfer report naming the pretraining."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from synthetic.classification import make_classes

from seg_transfer.config import PretrainRunConfig, from_dict
from seg_transfer.engine.pretrain.run import KNN, Pretrainer
from seg_transfer.models.checkpoint import PRETRAIN_KEY, read_checkpoint
from seg_transfer.transfer.backbone import stage_layers
from seg_transfer.transfer.sources import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_classes(tmp_path_factory.mktemp("unlabelled"), n=6)  # 12 images in two folders


def config(images, out, **pretrain) -> PretrainRunConfig:
    block = {"method": "simclr", "epochs": 2, "batch_size": 4, "image_size": 32, "hidden_dim": 32,
             "projection_dim": 16, "monitor": {"format": "imagefolder", "root": str(images), "val_ratio": 0.5},
             **pretrain}
    return from_dict(PretrainRunConfig, {"model": {"backbone": "resnet18"}, "data": {"root": str(images)},
                                         "pretrain": block, "output": {"dir": str(out), "name": "run"}})


def pretrainer(cfg, **kwargs) -> Pretrainer:
    return Pretrainer(cfg, progress=False, log=lambda _m: None, **kwargs)


@pytest.fixture(scope="module")
def finished(images, tmp_path_factory):
    run = pretrainer(config(images, tmp_path_factory.mktemp("runs")))
    run.fit()
    return run


def test_run_folder_and_metrics(finished):
    folder = finished.folder
    for path in (folder.config, folder.run_json, folder.last, folder.metrics_csv, folder.curves):
        assert path.is_file(), path
    with open(folder.metrics_csv) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(0 <= float(r[KNN]) <= 1 and float(r["train_loss"]) > 0 for r in rows)
    assert folder.run()["kind"] == "pretrain" and folder.run()["images"] == {"unlabelled": 12}
    ckpt = read_checkpoint(folder.last)
    assert ckpt[PRETRAIN_KEY]["method"] == "simclr" and ckpt[PRETRAIN_KEY]["epochs"] == 2
    assert ckpt[PRETRAIN_KEY]["images"] == 12


def test_resume_continues_exactly(images, tmp_path, finished):
    """Stopped in epoch 2, then resumed: the same weights and history as the run that went straight through."""
    stopped = pretrainer(config(images, tmp_path))
    first = stopped.train_epoch

    def interrupted(epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return first(epoch)

    stopped.train_epoch = interrupted
    with pytest.raises(KeyboardInterrupt):
        stopped.fit()
    resumed = pretrainer(config(images, tmp_path), run_dir=tmp_path / "run", resume=True)
    assert resumed.start_epoch == 1
    history = resumed.fit()
    assert [r["train_loss"] for r in history] == pytest.approx([r["train_loss"] for r in finished.history])
    ours, theirs = resumed.model.state_dict(), finished.model.state_dict()
    assert all(torch.allclose(ours[k].float(), theirs[k].float(), atol=1e-6) for k in theirs)


# one assembled model per task over the pretrained backbone
TASK_MODELS = {
    "segmentation": {"backbone": "resnet18", "neck": "fpn", "head": "fcn", "num_classes": 3},
    "detection": {"backbone": "resnet18", "neck": "fpn", "head": "fasterrcnn", "num_classes": 3},
    "classification": {"backbone": "resnet18", "head": "classifier", "num_classes": 3},
}


@pytest.mark.parametrize("task", sorted(TASK_MODELS))
def test_pretrained_backbone_loads_into_each_task(finished, task):
    model = create_model({**TASK_MODELS[task], "weights": None, "backbone_weights": str(finished.folder.last)})
    assert model.info.task == task
    report = model.info.transfer
    assert len(report.loaded) == sum(len(layer.tensors) for layer in stage_layers(model)) > 50
    assert not report.skipped and not report.missing and not report.unexpected
    assert "self-supervised pretraining (simclr, 2 epochs, 12 images)" in report.source
    theirs = dict(finished.model.backbone.named_parameters())
    ours = dict(stage_layers(model)[0].module.named_parameters(recurse=False))
    first = dict(stage_layers(finished.model)[0].module.named_parameters(recurse=False))
    assert torch.equal(ours["weight"], first["weight"]) and theirs


@pytest.mark.slow
def test_pretraining_lowers_its_loss_on_real_photos(tmp_path):
    """40 ants/bees photos, ResNet-18 from random init, SimCLR at 64 px: the loss falls over 10 epochs."""
    root = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "hymenoptera" / "train"
    if not root.is_dir():
        pytest.skip(f"{root} not available (../shared missing)")
    images = tmp_path / "images"
    images.mkdir()
    for folder in ("ants", "bees"):
        for path in sorted((root / folder).glob("*.jpg"))[:20]:
            (images / path.name).write_bytes(path.read_bytes())
    cfg = from_dict(PretrainRunConfig, {"model": {"backbone": "resnet18"}, "data": {"root": str(images)},
                                        "pretrain": {"epochs": 10, "batch_size": 20, "image_size": 64, "lr": 0.002,
                                                     "warmup_epochs": 0},
                                        "output": {"dir": str(tmp_path), "name": "run"}})
    history = pretrainer(cfg).fit()
    assert history[-1]["train_loss"] < history[0]["train_loss"] - 0.5
