"""report.html for a tiny run of each task (written at the end of finetune, by evaluate, and by
``seg-transfer report``): every section present, every picture inlined, nothing fetched from anywhere."""
from __future__ import annotations

import base64
import io
import json
import re
import shutil

import pytest
import yaml
from PIL import Image
from synthetic import classification as synthetic_classes
from synthetic import detection as synthetic_boxes
from synthetic import segmentation as synthetic

from seg_transfer.cli import main
from seg_transfer.config import Config, from_dict
from seg_transfer.engine.report import SECTIONS, render, write_report
from seg_transfer.engine.trainer import Trainer
from seg_transfer.models.build import build_model
from seg_transfer.transfer.loading import load_matching

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]

SMALL_DETECTOR = {"backbone": "resnet18", "neck": "fpn", "head": "fasterrcnn", "backbone_weights": None,
                  "weights": None, "resize": 96}


def check_page(page: str, sections=SECTIONS) -> list[Image.Image]:
    """Every section there; every <img> a decodable inlined PNG; no script and no address outside the page."""
    for section in sections:
        assert f'<section id="{section}">' in page, section
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert not re.search(r"(src|href)\s*=\s*[\"'](?!data:|#)", page), "a reference outside the page"
    assert "http://" not in page and "https://" not in page and "url(" not in page
    sources = re.findall(r"<img [^>]*src=\"([^\"]*)\"", page)
    assert sources and len(sources) == page.count("<img ")
    images = []
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        images.append(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))))
        assert images[-1].format == "PNG" and min(images[-1].size) > 100
    return images


def section(page: str, name: str) -> str:
    return page.split(f'<section id="{name}">', 1)[1].split("</section>", 1)[0]


# ----------------------------------------------------------------------------------- segmentation
@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    """``seg-transfer finetune`` of one epoch, through the CLI: the command is recorded as typed."""
    tmp = tmp_path_factory.mktemp("seg")
    root = synthetic.make_dataset(tmp / "data", n=10)
    cfg = synthetic.config(root, tmp / "runs", model={"backbone": "mobilenet_v2"}, data={"val_ratio": 0.3})
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    argv = ["finetune", str(tmp / "cfg.yaml"), "train.epochs=1", "-q"]
    assert main(argv) == 0
    return tmp / "runs" / "run", tmp / "cfg.yaml", argv


def test_finetune_writes_the_report_with_every_section(seg_run):
    run, _, argv = seg_run
    page = (run / "report.html").read_text()
    images = check_page(page, [s for s in SECTIONS if s != "pr-curves"])
    assert len(images) == 4  # curves, confusion, best/worst, the spread grid; and nothing missing:
    assert 'class="missing"' not in page.replace(section(page, "transfer"), "")
    assert 'id="pr-curves"' not in page  # detection only
    # the exact command, in its folder
    assert json.loads((run / "run.json").read_text())["command"] == ["seg-transfer", *argv]
    assert f"seg-transfer finetune {argv[1]} train.epochs=1 -q" in section(page, "command")
    per_class = section(page, "per-class")
    assert all(f"<td>{c}</td>" in per_class for c in synthetic.CLASSES) and "<th>IoU</th>" in per_class
    assert "At the best epoch, <b>1</b> of 1" in per_class
    assert "random init" in section(page, "transfer") and "<td>layer4</td>" in section(page, "transfer")
    assert "epochs: 1" in section(page, "config") and "<td>1</td>" in section(page, "timings")
    assert "image mIoU" in section(page, "predictions")


def test_report_command_rewrites_it(seg_run, tmp_path, capsys):
    run, _, _ = seg_run
    assert main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 0
    assert capsys.readouterr().out.strip() == f"report: {tmp_path / 'r.html'}"
    check_page((tmp_path / "r.html").read_text(), [s for s in SECTIONS if s != "pr-curves"])
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_evaluate_writes_its_own_report(seg_run, tmp_path):
    run, cfg, _ = seg_run
    out = tmp_path / "eval"
    assert main(["evaluate", str(cfg), "--checkpoint", str(run / "best.pt"), "--out", str(out), "-q"]) == 0
    page = (out / "report.html").read_text()
    check_page(page, [s for s in SECTIONS if s != "pr-curves"])
    assert "seg-transfer evaluate" in section(page, "command")
    assert f"From the training run {run.resolve()}" in section(page, "curves")  # curves of the training run
    assert "<td>layer4</td>" in section(page, "transfer")  # its freezing table too
    assert "The checkpoint on this val split" in section(page, "per-class")
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["kind"] == "evaluate" and run_info["train_run"] == str(run.resolve())


def test_transfer_section_lists_loaded_and_reinitialised(seg_run, tmp_path):
    run, _, _ = seg_run
    folder = shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns("*.pt"))
    model = build_model({"backbone": "mobilenet_v2", "head": "lraspp", "num_classes": 4, "backbone_weights": None})
    own = model.state_dict()
    state = {k: v for k, v in own.items() if k.startswith("backbone.")}
    head = next(k for k in own if k.startswith("head.") and k.endswith("weight"))
    state[head] = own[head][:1].clone()  # a classifier of another class count: wrong shape
    report = load_matching(model, state)
    report.source = "a test checkpoint"
    (folder / "transfer_report.json").write_text(json.dumps(report.to_dict()))
    text = section(write_report(folder).read_text(), "transfer")
    assert "Weights from <b>a test checkpoint</b>: loaded" in text
    assert "re-initialised: shape mismatch (1)" in text and "re-initialised: missing from the source" in text
    assert f"{head}: source [1," in text


def test_an_older_run_folder_still_renders(seg_run, tmp_path):
    """Only what earlier versions wrote (metrics.csv, curves.png, config.yaml): each absent part says so."""
    run, _, _ = seg_run
    folder = tmp_path / "old"
    folder.mkdir()
    for name in ("metrics.csv", "curves.png", "config.yaml", "predictions.png"):
        shutil.copy(run / name, folder / name)
    page = render(folder)
    check_page(page, [s for s in SECTIONS if s != "pr-curves"])
    assert "not available: the command" in section(page, "command")
    assert "not available: per-class figures" in section(page, "per-class")
    assert "<td>1</td>" in section(page, "timings")  # epochs from metrics.csv


# -------------------------------------------------------------------------------------- detection
@pytest.fixture(scope="module")
def det_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("det")
    root = synthetic_boxes.make_voc_boxes(tmp / "data", n=5, size=64, val=2)
    cfg = from_dict(Config, synthetic_boxes.config(root, tmp / "runs", SMALL_DETECTOR,
                                                   train={"epochs": 1, "batch_size": 3}))
    trainer = Trainer(cfg, progress=False, log=lambda _m: None, command=["seg-transfer", "finetune", "boxes.yaml"])
    model = trainer.model  # CPU-sized R-CNN sampling, as in test_detection_task
    model.roi_heads.fg_bg_sampler.batch_size_per_image = 64
    model.rpn._pre_nms_top_n.update(training=300, testing=150)
    model.rpn._post_nms_top_n.update(training=150, testing=50)
    trainer.fit()
    return trainer.run_dir


def test_detection_report_has_confusion_pr_curves_and_val_loss(det_run):
    page = (det_run / "report.html").read_text()
    check_page(page)  # pr-curves included
    assert 'class="missing"' not in page.replace(section(page, "transfer"), "")
    assert "<th>AP50</th>" in section(page, "per-class") and "<td>disc</td>" in section(page, "per-class")
    assert "first row counts false alarms" in section(page, "confusion")
    best = json.loads((det_run / "val_metrics_best.json").read_text())
    assert len(best["confusion"]) == 3 and best["confusion_classes"] == ["background", "disc", "square"]
    history = json.loads((det_run / "run.json").read_text())["history"]
    assert history[0]["val_loss"] > 0  # a real val loss now


# --------------------------------------------------------------------------------- classification
@pytest.fixture(scope="module")
def cls_run(tmp_path_factory):
    pytest.importorskip("tensorboard", reason="the [tensorboard] extra is not installed")
    tmp = tmp_path_factory.mktemp("cls")
    root = synthetic_classes.make_classes(tmp / "data", n=8, size=40)
    cfg = from_dict(Config, {
        "model": {"backbone": "mobilenet_v2", "head": "classifier", "backbone_weights": None, "resize": 0},
        "data": {"format": "imagefolder", "root": str(root), "val_ratio": 0.25, "seed": 0},
        "augment": {"train": [], "val": []},
        "train": {"epochs": 1, "batch_size": 6, "optimizer": "adamw", "lr": 0.002, "scheduler": "none", "amp": "off",
                  "device": "cpu", "loggers": ["tensorboard"]},
        "output": {"dir": str(tmp / "runs"), "name": "run", "num_predictions": 4}})
    Trainer(cfg, progress=False, log=lambda _m: None).fit()
    return tmp / "runs" / "run"


def test_classification_report_without_metrics_csv(cls_run):
    """loggers: [tensorboard] only: no metrics.csv, the report reads the epochs from run.json."""
    assert not (cls_run / "metrics.csv").exists()
    page = (cls_run / "report.html").read_text()
    check_page(page, [s for s in SECTIONS if s != "pr-curves"])
    per_class = section(page, "per-class")
    assert all(f"<td>{c}</td>" in per_class for c in synthetic_classes.CLASSES) and "<th>support</th>" in per_class
    assert "p(true class)" in section(page, "predictions") and "<td>1</td>" in section(page, "timings")
    assert "not available: the command (the run was started from Python" in section(page, "command")
    assert "seg-transfer finetune" in section(page, "command")  # the saved config reruns it
