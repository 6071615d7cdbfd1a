"""Cross-validation: the pool of a config's items, folds as list-file configs, runs that fail without
losing the others, the summary files, and real engine runs on tiny synthetic data."""
from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import replace
from pathlib import Path

import pytest
from synthetic.classification import make_classes
from synthetic.segmentation import CLASSES, config, make_dataset

from seg_transfer import cli
from seg_transfer.config import Config, from_dict
from seg_transfer.data.registry import build_dataset
from seg_transfer.engine import cv as CV
from seg_transfer.errors import ConfigError

GROUPS = r"^(seq\w)_"  # make_dataset names frames seqA_000.png .. seqD_015.png: four sequences


@pytest.fixture(scope="module")
def seg_root(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("cv_seg"), n=16, size=32)


@pytest.fixture(scope="module")
def cls_root(tmp_path_factory):
    return make_classes(tmp_path_factory.mktemp("cv_cls"), n=10, size=32)


def seg_config(root: Path, out: Path, **sections) -> Config:
    base = {"data": {"group_regex": GROUPS, "val_ratio": 0.25}, "augment": {"crop_size": 32},
            "train": {"epochs": 1}, "output": {"num_predictions": 0}}
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return from_dict(Config, config(root, out, **base))


def cls_config(root: Path, out: Path, **train) -> Config:
    return from_dict(Config, {
        "model": {"backbone": "resnet18", "head": "classifier", "backbone_weights": None, "resize": 0},
        "data": {"format": "imagefolder", "root": str(root), "val_ratio": 0.25, "seed": 0},
        "augment": {"train": [{"name": "HorizontalFlip", "p": 0.5}], "val": []},
        "train": {"epochs": 1, "batch_size": 8, "val_batch_size": 8, "optimizer": "adamw", "lr": 0.003,
                  "weight_decay": 0.0, "scheduler": "none", "amp": "off", "device": "cpu", **train},
        "output": {"dir": str(out), "name": "run", "num_predictions": 0},
    })


def fake_runner(fail_fold: int | None = None, offset: float = 0.0):
    """A Runner that trains nothing: segmentation-shaped metrics from the fold's list sizes (fold 1-based
    ``fail_fold`` raises), so the cv machinery is tested in milliseconds."""
    def run(cfg: Config, run_dir: Path) -> CV.Outcome:
        fold = int(run_dir.name.split("_")[0][4:])
        if fold == fail_fold:
            raise RuntimeError("CUDA out of memory (simulated)\nsecond line")
        val = len(Path(cfg.data["val_list"]).read_text().split())
        miou = 0.5 + 0.01 * fold + 0.001 * cfg.train.seed + offset
        return CV.Outcome({"miou": miou, "pixel_accuracy": 0.8, "mean_accuracy": 0.6 + val / 1000,
                           "iou": [miou, 0.4, math.nan, 0.1], "class_accuracy": [0.9, 0.5, math.nan, 0.2]},
                          "miou", "mIoU")
    return run


# ------------------------------------------------------------------------------------ pool and folds
def test_pool_is_train_and_val_together_with_group_keys(seg_root, tmp_path):
    pool = CV.pool_of(seg_config(seg_root, tmp_path))
    assert len(pool.names) == 16 and pool.names == sorted(pool.names)
    assert pool.groups == [n[:4] for n in pool.names] and pool.labels is None and pool.classes == CLASSES


def test_fold_configs_train_and_validate_on_exactly_the_fold(seg_root, tmp_path):
    cfg = seg_config(seg_root, tmp_path)
    plan = CV.plan_folds(CV.pool_of(cfg), 4, seed=0)  # four sequences: leave one sequence out
    seen = []
    for fold in range(plan.k):
        fold_cfg = CV.fold_config(cfg, plan, fold, 7, tmp_path / f"fold{fold + 1}_seed7")
        assert fold_cfg.train.seed == 7 and "group_regex" not in fold_cfg.data
        assert fold_cfg.train.val_interval == cfg.train.epochs  # only the last epoch's figures count
        assert fold_cfg.output.name == f"fold{fold + 1}_seed7" and Path(fold_cfg.output.dir) == tmp_path
        splits = build_dataset(fold_cfg.data)  # the format's own list reading
        train, val = set(splits.train.names), set(splits.val.names)
        assert val == {plan.pool.names[i] for i in plan.val[fold]} and not train & val
        assert len(train) + len(val) == 16
        assert len({n[:4] for n in val}) == 1 and not {n[:4] for n in val} & {n[:4] for n in train}
        seen += sorted(val)
    assert sorted(seen) == plan.pool.names  # every item validated exactly once


def test_classification_folds_are_stratified_and_limit_train_is_fixed(cls_root, tmp_path):
    cfg = cls_config(cls_root, tmp_path)
    pool = CV.pool_of(cfg)
    assert len(pool.names) == 20 and pool.labels == [0] * 10 + [1] * 10 and pool.groups is None
    plan = CV.plan_folds(pool, 4, limit_train=6, seed=0)
    for t, v in zip(plan.train, plan.val):
        assert [pool.labels[i] for i in v].count(0) in (2, 3) and len(v) == 5
        assert len(t) == 6 and not set(t) & set(v)
    again = CV.plan_folds(pool, 4, limit_train=6, seed=0)
    assert again.train == plan.train  # the same subset for every recipe and seed: runs stay paired
    fold_cfg = CV.fold_config(replace(cfg, train=replace(cfg.train, val_interval=2)), plan, 0, 0, tmp_path / "f")
    assert fold_cfg.train.val_interval == 2  # asked for: kept
    splits = build_dataset(fold_cfg.data)
    assert fold_cfg.data["split"] == "list" and len(splits.train) == 6 and len(splits.val) == 5


def test_pool_refuses_names_a_list_file_cannot_hold(tmp_path):
    root = make_dataset(tmp_path / "d", n=4, size=32)
    image = next((root / "images").iterdir())
    image.rename(root / "images" / "bad name.png")
    (root / "masks" / image.name).rename(root / "masks" / "bad name.png")
    with pytest.raises(ConfigError, match="cannot be written to a list file.*'bad name'"):
        CV.pool_of(from_dict(Config, config(root, tmp_path)))


# ------------------------------------------------------------------------------------------ running
def test_a_failed_fold_leaves_the_others_and_the_summary_intact(seg_root, tmp_path):
    cfg = seg_config(seg_root, tmp_path)
    out = tmp_path / "cv"
    lines: list[str] = []
    s = CV.run_cv(cfg, folds=4, seeds=2, out=out, runner=fake_runner(fail_fold=2), log=lines.append)
    assert s["completed"] == 6 and s["failed"] == 2 and s["metric"] == "miou"
    failed = [r for r in s["runs"] if r["error"]]
    assert [(r["fold"], r["seed"]) for r in failed] == [(2, 0), (2, 1)]
    assert failed[0]["error"] == "RuntimeError: CUDA out of memory (simulated)"
    assert "Traceback" in (out / "fold2_seed0" / "error.txt").read_text()
    # mean over the six completed runs: folds 1, 3, 4 x seeds 0, 1
    expected = [0.5 + 0.01 * f + 0.001 * s for f in (1, 3, 4) for s in (0, 1)]
    assert s["mean_std"]["miou"]["mean"] == pytest.approx(sum(expected) / 6)
    assert s["mean_std"]["miou"]["n"] == 6 and s["mean_std"]["miou"]["std"] > 0
    assert s["per_class"]["iou"]["disc"]["mean"] == pytest.approx(0.4)
    assert s["per_class"]["iou"]["square"]["n"] == 0  # NaN in every run: no mean
    assert any("fold 2/4" in line and "FAILED" in line for line in lines)
    assert any("run 8/8" in line and "left" in line for line in lines)  # progress with time remaining

    saved = json.loads((out / "cv_summary.json").read_text())
    assert saved["failed"] == 2 and saved["per_class"]["iou"]["square"]["mean"] is None  # NaN -> null
    rows = list(csv.DictReader(open(out / "cv_summary.csv")))
    assert [r["run"] for r in rows] == [f"fold{f}_seed{s}" for f in range(1, 5) for s in (0, 1)] + ["mean", "std"]
    assert rows[2]["error"].startswith("RuntimeError") and rows[2]["miou"] == ""
    assert float(rows[-2]["miou"]) == pytest.approx(sum(expected) / 6) and rows[0]["iou[disc]"] == "0.4"
    assert (out / "cv.png").stat().st_size > 5000 and (out / "folds.json").is_file()
    text = CV.format_summary(s)
    assert "FAILED: RuntimeError" in text and "mean +- std" in text and "disc" in text


def test_cli_cv_writes_the_summary_and_reports_failures(seg_root, tmp_path, monkeypatch, capsys):
    cfg = config(seg_root, tmp_path / "runs", data={"group_regex": GROUPS}, train={"epochs": 1})
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    seen: list[Config] = []

    def runner(progress, log):
        run = fake_runner(fail_fold=1)
        return lambda cfg, run_dir: (seen.append(cfg), run(cfg, run_dir))[1]

    monkeypatch.setattr(CV, "engine_runner", runner)
    assert cli.main(["cv", str(path), "train.epochs=2", "--folds", "2", "--out", str(tmp_path / "o"), "-q"]) == 1
    out = capsys.readouterr().out
    assert "fold1 seed0  FAILED" in out and "mean +- std" in out and "cv_summary.json" in out
    saved = json.loads((tmp_path / "o" / "cv_summary.json").read_text())
    assert saved["overrides"] == ["train.epochs=2"] and saved["completed"] == 1
    assert [c.train.epochs for c in seen] == [2, 2]  # the override reaches every run
    monkeypatch.setattr(CV, "engine_runner", lambda progress, log: fake_runner())
    assert cli.main(["cv", str(path), "--folds", "3", "--out", str(tmp_path / "p"), "-q"]) == 0
    assert cli.main(["cv", str(path), "--folds", "9", "--out", str(tmp_path / "q"), "-q"]) == 2
    assert "group_regex finds only 4 groups" in capsys.readouterr().err


def test_cli_cv_quiet_prints_one_line_per_finished_run(seg_root, tmp_path, monkeypatch, capsys):
    """-q: no progress or epoch lines, but each finished run (its fold, seed, main metric and time) at once,
    so minutes of training are not silent."""
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(config(seg_root, tmp_path / "runs", data={"group_regex": GROUPS})))
    monkeypatch.setattr(CV, "engine_runner", lambda progress, log: fake_runner(fail_fold=2))
    assert cli.main(["cv", str(path), "--folds", "2", "--out", str(tmp_path / "o"), "-q"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"fold 1/2 seed 0: mIoU 0\.5100 in \d+s", out[0]), out
    assert out[1] == f"fold 2/2 seed 0: FAILED (RuntimeError: CUDA out of memory (simulated)); details in " \
                     f"{tmp_path / 'o' / 'fold2_seed0' / 'error.txt'}"
    assert out[2] == "" and out[3].startswith("2 folds x 1 seed(s): 1 run(s) completed")  # then the summary


def test_engine_prints_the_transfer_table_for_the_first_fold_only(seg_root, tmp_path, one_thread):
    """The transfer report and freezing table are the same for every fold: printed once, and kept in each run
    folder (transfer_report.json, run.json)."""
    from seg_transfer import create_model
    from seg_transfer.models.checkpoint import save_checkpoint

    init = save_checkpoint(tmp_path / "init.pt", create_model(backbone="resnet18", head="lraspp", classes=CLASSES,
                                                              backbone_weights=None, resize=0))
    cfg = seg_config(seg_root, tmp_path, train={"batch_size": 4, "init_from": str(init)})
    lines: list[str] = []
    s = CV.run_cv(cfg, folds=2, out=tmp_path / "cv", limit_train=4, progress=False, log=lines.append)
    assert s["completed"] == 2
    starts = [i for i, line in enumerate(lines) if line.startswith("run folder: ")]
    first, second = lines[starts[0]:starts[1]], lines[starts[1]:]
    for table in (f"transfer from checkpoint {init}: loaded", "part "):  # freeze_table's header: part  trainable ..
        assert sum(line.startswith(table) for line in first) == 1, (table, first)
        assert not any(line.startswith(table) for line in second), (table, second)
    for r in s["runs"]:
        run = Path(r["run_dir"])
        assert json.loads((run / "transfer_report.json").read_text())["loaded"]
        assert json.loads((run / "run.json").read_text())["freeze"]["table"].startswith("part")


def test_engine_runs_every_fold_as_a_normal_run_folder(seg_root, tmp_path, one_thread):
    """Two real folds of the Trainer: 32 px frames, one epoch, a random-init ResNet-18 LR-ASPP."""
    cfg = seg_config(seg_root, tmp_path, train={"batch_size": 4})
    s = CV.run_cv(cfg, folds=2, out=tmp_path / "cv", limit_train=4, progress=False, log=lambda _m: None)
    assert s["completed"] == 2 and s["failed"] == 0
    for r in s["runs"]:
        run = Path(r["run_dir"])
        assert {"config.yaml", "metrics.csv", "last.pt", "val_metrics_last.json"} <= {p.name for p in run.iterdir()}
        assert r["train"] == 4 and r["val"] == 8 and 0.0 <= r["metrics"]["miou"] <= 1.0
        assert set(r["per_class"]["iou"]) == set(CLASSES)
        assert "train_list:" in (run / "config.yaml").read_text()  # the fold is a plain config: rerunnable
    assert set(s["mean_std"]) == {"miou", "pixel_accuracy", "mean_accuracy", "seconds"}
