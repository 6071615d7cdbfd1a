"""``seg-transfer finetune`` / ``evaluate`` / ``infer --checkpoint`` end to end on the synthetic dataset."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import yaml
from PIL import Image
from synthetic.segmentation import CLASSES, config, make_dataset

from seg_transfer.cli import main
from seg_transfer.models.checkpoint import read_checkpoint


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("synthetic"), n=20)


pytestmark = pytest.mark.usefixtures("one_thread")


def write_config(path, data_root, out, **sections):
    cfg = config(data_root, out, **sections)
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture(scope="module")
def finished_run(data_root, tmp_path_factory):
    """One CLI fine-tune of 1 epoch; shared by the tests that read its outputs."""
    tmp = tmp_path_factory.mktemp("run")
    cfg = write_config(tmp / "cfg.yaml", data_root, tmp / "runs")
    assert main(["finetune", cfg, "train.epochs=1", "-q"]) == 0
    return tmp / "runs" / "run", cfg


def test_finetune_writes_run_folder(finished_run, capsys):
    run, _ = finished_run
    for name in ("config.yaml", "metrics.csv", "curves.png", "predictions.png", "last.pt", "best.pt"):
        assert (run / name).is_file(), name
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 1  # the override, resolved into the saved config
    assert read_checkpoint(run / "best.pt")["classes"] == CLASSES


def test_evaluate_prints_per_class_and_writes_report(finished_run, tmp_path, capsys):
    run, cfg = finished_run
    assert main(["evaluate", cfg, "--checkpoint", str(run / "best.pt"), "--out", str(tmp_path / "ev"), "-q"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("mIoU ") and all(f"  {c}" in out for c in CLASSES)
    report = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert report["classes"] == CLASSES and len(report["iou"]) == len(CLASSES) and 0 <= report["miou"] <= 1
    assert (tmp_path / "ev" / "confusion.png").is_file()
    assert np.asarray(report["confusion"]).shape == (len(CLASSES), len(CLASSES))


def test_evaluate_with_tta_scores_the_augmented_model(finished_run, tmp_path, capsys):
    """--tta flip scores the flip-averaged model (a one-epoch model predicts the majority class either
    way, so its val loss shows the difference), recorded in metrics.json; a bad spec fails before anything
    is written."""
    run, cfg = finished_run
    plain, flipped = tmp_path / "plain", tmp_path / "flip"
    assert main(["evaluate", cfg, "--checkpoint", str(run / "best.pt"), "--out", str(plain), "-q"]) == 0
    assert main(["evaluate", cfg, "--checkpoint", str(run / "best.pt"), "--out", str(flipped), "-q",
                 "--tta", "flip"]) == 0
    assert ", TTA flip,scales=1)" in capsys.readouterr().out
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (plain, flipped))
    assert (a["tta"], b["tta"]) == (None, "flip,scales=1")
    assert 0 <= b["miou"] <= 1 and abs(a["val_loss"] - b["val_loss"]) > 1e-6
    assert main(["evaluate", cfg, "--checkpoint", str(run / "best.pt"), "--out", str(tmp_path / "bad"),
                 "--tta", "flop"]) == 2
    assert "unknown part 'flop'" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_evaluate_other_folder_by_override(finished_run, data_root, tmp_path, capsys):
    """Score on any folder of images + masks without editing files (data.split=all: every image)."""
    run, cfg = finished_run
    other = tmp_path / "test"
    shutil.copytree(data_root / "images", other / "testimg")
    shutil.copytree(data_root / "masks", other / "testannot")
    code = main(["evaluate", cfg, f"data.root={other}", "data.images=testimg", "data.masks=testannot",
                 "data.split=all", "data.val_ratio=null", "--checkpoint", str(run / "best.pt"),
                 "--out", str(tmp_path / "ev"), "-q"])
    assert code == 0, capsys.readouterr().err
    assert "(20 images)" in capsys.readouterr().out


def test_limit_train_run_reruns_from_anywhere_and_evaluate_scores_its_val_split(data_root, tmp_path, monkeypatch,
                                                                                capsys):
    """A quick trial (--limit-train) started with a relative data.root and its own val split: the saved
    config.yaml reruns it from another folder, and evaluate scores the run's val split unless told otherwise."""
    start, elsewhere = tmp_path / "start", tmp_path / "elsewhere"
    start.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(start)
    write_config(start / "cfg.yaml", os.path.relpath(data_root, start), "runs")  # val_ratio 0.2: 4 of 20 in val
    assert main(["finetune", "cfg.yaml", "train.epochs=1", "data.val_ratio=0.5", "--limit-train", "4", "-q"]) == 0
    run = start / "runs" / "run"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["root"] == str(data_root) and saved["train"]["limit_train"] == 4
    assert json.loads((run / "run.json").read_text())["images"] == {"train": 4, "val": 10}
    capsys.readouterr()
    for extra, line in (([], "scored the run's val split (10 images, from runs/run/config.yaml)"),
                        (["--config-split"], "scored the config's val split (4 images, from cfg.yaml)"),
                        (["data.val_ratio=0.25"], "scored the config's val split (5 images, from cfg.yaml, "
                                                  "with data overrides)")):
        assert main(["evaluate", "cfg.yaml", *extra, "--checkpoint", "runs/run/best.pt", "--out", "ev", "-q"]) == 0
        assert line in capsys.readouterr().out.splitlines()
    monkeypatch.chdir(elsewhere)  # data.root relative to start/ would name nothing from here
    assert main(["finetune", str(run / "config.yaml"), "-q"]) == 0
    assert json.loads((elsewhere / "runs" / "run" / "run.json").read_text())["images"] == {"train": 4, "val": 10}


def test_infer_with_finetuned_checkpoint_alone(finished_run, data_root, tmp_path, capsys):
    """The checkpoint carries classes and preprocessing: no config file beside it."""
    run, _ = finished_run
    ckpt = tmp_path / "alone.pt"
    shutil.copy(run / "best.pt", ckpt)
    image = sorted((data_root / "images").iterdir())[0]
    assert main(["infer", "--checkpoint", str(ckpt), str(image), "--class", "disc", "--out",
                 str(tmp_path / "o"), "-q"]) == 0
    mask = np.asarray(Image.open(tmp_path / "o" / f"{image.stem}_mask.png"))
    assert mask.shape == (64, 64) and mask.max() < len(CLASSES)
    assert (tmp_path / "o" / f"{image.stem}_disc.png").is_file()


def test_resume_from_cli_continues_to_more_epochs(finished_run, tmp_path, capsys):
    run, _ = finished_run
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    assert main(["finetune", "--resume", str(copy), "train.epochs=2", "-q"]) == 0
    assert read_checkpoint(copy / "last.pt")["epoch"] == 2
    assert len((copy / "metrics.csv").read_text().strip().splitlines()) == 3  # header + 2 epochs


def test_bad_config_key_exits_2_naming_it(data_root, tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", data_root, tmp_path / "runs")
    assert main(["finetune", cfg, "train.epoch=3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.epoch" in err and "train.epochs" in err
    assert not (tmp_path / "runs").exists()


def test_bad_choice_lists_valid_values(data_root, tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", data_root, tmp_path / "runs")
    assert main(["finetune", cfg, "freeze.strategy=frozen"]) == 2
    err = capsys.readouterr().err
    assert "freeze.strategy" in err and "feature_extraction" in err and "partial" in err


def test_check_data_reports_every_problem_and_training_refuses(data_root, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(data_root, bad)
    masks = sorted((bad / "masks").iterdir())
    # a colour mask in no known palette: the classic mistake ((0, 128, 0), VOC's class 2, would be read as 2)
    Image.new("RGB", (64, 64), (0, 120, 0)).save(masks[0])
    masks[1].unlink()  # a missing mask
    cfg = write_config(tmp_path / "c.yaml", bad, tmp_path / "runs")
    assert main(["finetune", cfg, "--check-data"]) == 1
    err = capsys.readouterr().err
    assert masks[0].name in err and masks[1].stem in err and "2 error(s)" in err
    assert main(["finetune", cfg, "-q"]) == 2
    assert "dataset has problems" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_check_data_resolves_the_whole_config_and_says_what_it_scanned(data_root, tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", data_root, tmp_path / "runs")
    assert main(["finetune", cfg, "--check-data", "-q"]) == 0
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("data check: 0 error(s), 0 warning(s); scanned train: 16 images, ")
    assert "labelled pixels of 4 classes; val: 4 images," in last and "without loading weights" in last
    # a bad stage, a bad device and a bad optimizer passed the data check and failed at the real run
    assert main(["finetune", cfg, "freeze.strategy=partial", "freeze.unfreeze_from=layer5", "train.device=cuda:7",
                 "--check-data", "-q"]) == 1
    err = capsys.readouterr().err
    assert "error: freeze.unfreeze_from: unknown stage 'layer5' (did you mean 'layer4'?)" in err
    assert "error: train.device: cuda:7:" in err and "2 error(s)" in err and "Traceback" not in err
    assert main(["finetune", cfg, "model.backbone=resnet5", "--check-data", "-q"]) == 1
    err = capsys.readouterr().err
    assert "error: model.backbone: unknown backbone 'resnet5' (did you mean 'resnet50'?)" in err
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_check_data_refuses_0_255_masks_under_a_many_class_config(data_root, tmp_path, capsys):
    binary = tmp_path / "binary"
    shutil.copytree(data_root, binary)
    for mask in (binary / "masks").iterdir():
        Image.fromarray(np.where(np.asarray(Image.open(mask)) > 0, 255, 0).astype(np.uint8)).save(mask)
    cfg = write_config(tmp_path / "c.yaml", binary, tmp_path / "runs")
    assert main(["finetune", cfg, "--check-data", "-q"]) == 1
    err = capsys.readouterr().err
    assert "error: train: 16 images with only class 0 'background' labelled" in err
    assert "model.binary: true" in err and "2 error(s)" in err  # train and val
    assert main(["finetune", cfg, "model.binary=true", "data.classes=[background,thing]", "--check-data", "-q"]) == 0


def test_tools_wrappers_show_help():
    import subprocess
    import sys

    for tool in ("finetune", "evaluate"):
        done = subprocess.run([sys.executable, f"tools/{tool}.py", "--help"], capture_output=True, text=True)
        assert done.returncode == 0 and "usage" in done.stdout
