"""``seg-transfer pretrain`` end to end on a tiny folder, and its config errors as one line."""
from __future__ import annotations

import pytest
import yaml
from synthetic.classification import make_classes

from seg_transfer.cli import main
from seg_transfer.run_folder import RunFolder

pytestmark = pytest.mark.usefixtures("one_thread")


def write(path, images, **pretrain):
    path.write_text(yaml.safe_dump({
        "model": {"backbone": "resnet18"}, "data": {"root": str(images)},
        "pretrain": {"epochs": 1, "batch_size": 4, "image_size": 32, "hidden_dim": 32, "projection_dim": 16, **pretrain},
        "output": {"dir": str(path.parent / "runs"), "name": "ssl"}}))
    return str(path)


def test_pretrain_then_finetune_from_its_backbone(tmp_path, capsys):
    images = make_classes(tmp_path / "images", n=4)
    cfg = write(tmp_path / "pre.yaml", images, method="pixcontrast")
    assert main(["pretrain", cfg, "pretrain.epochs=2", "-q"]) == 0
    run = RunFolder(tmp_path / "runs" / "ssl")
    assert len(run.metrics_rows()) == 2 and run.last.is_file()
    assert "pretrained backbone:" in capsys.readouterr().out
    assert main(["pretrain", "--resume", str(run.path), "pretrain.epochs=3", "-q"]) == 0
    assert [r["epoch"] for r in run.metrics_rows()] == [1, 2, 3]
    fine = tmp_path / "fine.yaml"
    fine.write_text(yaml.safe_dump({
        "model": {"backbone": "resnet18", "head": "classifier", "backbone_weights": str(run.last)},
        "data": {"format": "imagefolder", "root": str(images), "val_ratio": 0.5},
        "augment": {"crop_size": 32}, "train": {"epochs": 1, "batch_size": 4, "device": "cpu"},
        "output": {"dir": str(tmp_path / "runs"), "name": "fine"}}))
    assert main(["finetune", str(fine), "-q"]) == 0
    assert "self-supervised pretraining (pixcontrast, 3 epochs, 8 images)" in capsys.readouterr().out


@pytest.mark.parametrize("override, message", [
    ("pretrain.method=simclrr", "pretrain.method: unknown value 'simclrr' (did you mean 'simclr'?)"),
    ("pretrain.epoch=3", "unknown key 'pretrain.epoch' (did you mean 'pretrain.epochs'?)"),
    ("pretrain.batch_size=1", "pretrain.batch_size: expected at least 2"),
    ("model.backbone=resnet19", "model.backbone: unknown backbone 'resnet19'"),
    ("data.root=/nonexistent/folder", "data.root: /nonexistent/folder: no such folder"),
    ("pretrain.monitor={format: voc_boxes, root: .}", "pretrain.monitor"),
])
def test_config_errors_are_one_line(tmp_path, capsys, override, message):
    images = make_classes(tmp_path / "images", n=2)
    cfg = write(tmp_path / "pre.yaml", images)
    assert main(["pretrain", cfg, override, "-q"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
