"""``run_folder``: the run folder's file names are spelled there only, and its reader reads back what the
trainer writes."""
from __future__ import annotations

import ast
import csv
import json
import re
from pathlib import Path

import pytest
from synthetic.segmentation import config, make_dataset

from seg_transfer import run_folder as R
from seg_transfer.config import Config, from_dict
from seg_transfer.engine.trainer import Trainer

PACKAGE = Path(__file__).resolve().parents[1] / "seg_transfer"
# Every file name of the layout. Not "eval" (evaluate's default folder: a word too common to grep for) and
# not the list files train.txt / val.txt (data/convert.py names a dataset's list files the same).
NAMES = [R.RUN_JSON, R.CONFIG, R.BEST, R.LAST, R.METRICS_CSV, R.CURVES, R.PREDICTIONS, R.BEST_WORST, R.CONFUSION,
         R.PR_CURVES, R.VAL_METRICS_LAST, R.VAL_METRICS_BEST, R.TRANSFER_REPORT, R.REPORT, R.EVAL_METRICS, R.ERROR,
         R.FOLDS, R.CV_SUMMARY_JSON, R.CV_SUMMARY_CSV, R.CV_PLOT, R.COMPARE, R.SUGGESTIONS_CSV, R.SUGGESTIONS_TXT,
         R.SUGGESTIONS_PNG]
SPELLED = re.compile("|".join(rf"(?<![\w.]){re.escape(n)}(?!\w)" for n in NAMES))


def docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes (prose may name the files)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def spelled_out(source: str, where: str) -> list[str]:
    """'where:line: name' for each string literal (f-strings' text included, docstrings not) in ``source``
    that names a file of the run folder."""
    tree = ast.parse(source, where)
    skip = docstrings(tree)
    return sorted(f"{where}:{node.lineno}: {match.group(0)}" for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
                  for match in SPELLED.finditer(node.value))


def test_the_checker_finds_a_spelled_out_name():
    source = ('"""Writes best.pt."""\nA = run_dir / "best.pt"\nB = f"{run_dir}/metrics.csv"\nC = "my_best.pt"\n'
              'D = "run.json.tmp"\nE = "best.pth"\n')
    assert spelled_out(source, "x.py") == ["x.py:2: best.pt", "x.py:3: metrics.csv", "x.py:5: run.json"]


def test_no_module_spells_out_a_run_folder_file_name():
    hits = [hit for path in sorted(PACKAGE.rglob("*.py")) if path.name != "run_folder.py"
            for hit in spelled_out(path.read_text(), str(path.relative_to(PACKAGE.parent)))]
    assert not hits, "name these files through seg_transfer.run_folder:\n" + "\n".join(hits)


def test_names_and_paths():
    folder = R.RunFolder("runs/x")
    assert folder.path == Path("runs/x")
    assert folder.best == Path("runs/x/best.pt") and folder.last == Path("runs/x/last.pt")
    assert folder.run_json == Path("runs/x/run.json") and folder.config == Path("runs/x/config.yaml")
    assert folder.metrics_csv.name == "metrics.csv" and folder.report.name == "report.html"
    assert folder.list_file("train") == Path("runs/x/train.txt")
    cv = R.CvFolder("runs/cv")
    assert cv.run(2, 0) == R.RunFolder("runs/cv/fold2_seed0")
    assert cv.folds.name == "folds.json" and cv.summary_json.name == "cv_summary.json"
    with pytest.raises(AttributeError):
        folder.path = Path("elsewhere")  # type: ignore[misc]


def test_reader_of_a_hand_written_folder(tmp_path):
    folder = R.RunFolder(tmp_path)
    assert not folder.is_run_folder()
    assert folder.run() is None and folder.saved_config() is None and folder.metrics_rows() == []
    assert folder.val_metrics("last") is None and folder.val_metrics("best") is None
    run = {"kind": "finetune", "cwd": "/somewhere", "history": [{"epoch": 1}]}
    folder.run_json.write_text(json.dumps(run))
    folder.metrics_csv.write_text("epoch,train_loss,val_loss,miou,lr\n1,0.5,0.4,0.25,0.01\n2,0.3,,nan,0.005\n")
    folder.val_metrics_best.write_text(json.dumps({"miou": 0.25, "classes": ["a", "b"]}))
    folder.config.write_text("data: {}\n")
    assert folder.is_run_folder()
    assert folder.run() == run
    assert folder.saved_config() == tmp_path / "config.yaml"
    rows = folder.metrics_rows()
    assert rows[0] == {"epoch": 1.0, "train_loss": 0.5, "val_loss": 0.4, "miou": 0.25, "lr": 0.01}
    assert rows[1]["val_loss"] == "" and rows[1]["miou"] != rows[1]["miou"]  # empty stays text; nan a float
    assert folder.val_metrics("best") == {"miou": 0.25, "classes": ["a", "b"]}
    # the tolerant reader (the report page) and the strict one (what a run relies on)
    folder.val_metrics_last.write_text("{not json")
    assert R.read_json(folder.val_metrics_last) is None and R.read_json(tmp_path / "absent.json") is None
    assert R.read_json(folder.metrics_csv) is None  # not JSON
    with pytest.raises(ValueError):
        folder.val_metrics("last")


def test_reader_of_a_cross_validation_folder(tmp_path):
    cv = R.CvFolder(tmp_path)
    with pytest.raises(FileNotFoundError):
        cv.summary()  # plain_loop.py --against a folder that is not one: it says so
    cv.folds.write_text(json.dumps({"folds": [{"val": ["a"]}]}))
    cv.summary_json.write_text(json.dumps({"runs": [], "metric": "miou"}))
    assert cv.fold_plan() == {"folds": [{"val": ["a"]}]} and cv.summary() == {"runs": [], "metric": "miou"}
    assert cv.run(1, 0).path == tmp_path / "fold1_seed0"


@pytest.mark.usefixtures("one_thread")
def test_reader_round_trips_what_the_trainer_writes(tmp_path):
    root = make_dataset(tmp_path / "data", n=6)
    cfg = config(root, tmp_path / "runs", model={"backbone": "mobilenet_v2"},
                 train={"epochs": 2, "batch_size": 2}, data={"val_ratio": 0.34}, output={"num_predictions": 2})
    trainer = Trainer(from_dict(Config, cfg), progress=False, log=lambda _m: None)
    result = trainer.fit()
    folder = R.RunFolder(result.run_dir)
    assert trainer.folder == folder and folder.is_run_folder()
    for path in (folder.config, folder.best, folder.last, folder.metrics_csv, folder.curves, folder.predictions,
                 folder.best_worst, folder.confusion, folder.val_metrics_last, folder.val_metrics_best,
                 folder.report):
        assert path.is_file(), path.name
    run = folder.run()
    assert run is not None and run["kind"] == "finetune" and run["best_epoch"] == result.best_epoch
    assert [r["epoch"] for r in run["history"]] == [1, 2]
    rows = folder.metrics_rows()
    with open(folder.metrics_csv, newline="") as f:
        assert len(rows) == len(list(csv.DictReader(f))) == 2
    assert [r["epoch"] for r in rows] == [1.0, 2.0]
    assert [round(r["miou"], 4) for r in rows] == [round(h["miou"], 4) for h in result.history]
    last, best = folder.val_metrics("last"), folder.val_metrics("best")
    assert last is not None and best is not None
    assert last["classes"] == best["classes"] == trainer.classes
    assert best["epoch"] == result.best_epoch and best["miou"] == pytest.approx(result.best)
    assert folder.saved_config() == folder.config
