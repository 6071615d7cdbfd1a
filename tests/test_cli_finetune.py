"""``seg-transfer finetune`` / ``evaluate`` / ``infer --checkpoint`` end to end on the synthetic dataset."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml
from engine.synthetic import CLASSES, config, make_dataset
from PIL import Image

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


def test_tools_wrappers_show_help():
    import subprocess
    import sys

    for tool in ("finetune", "evaluate"):
        done = subprocess.run([sys.executable, f"tools/{tool}.py", "--help"], capture_output=True, text=True)
        assert done.returncode == 0 and "usage" in done.stdout
