"""Recipe comparison: the paired-t interval, the verdict, both recipes on the same folds and seeds, and
real engine runs where one recipe is clearly better (lr 0 against a working lr) or both are the same."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from scipy import stats
from synthetic.classification import make_classes
from synthetic.segmentation import make_dataset

from engine.test_cv import GROUPS, cls_config, seg_config
from seg_transfer import cli
from seg_transfer.config import Config
from seg_transfer.engine import compare
from seg_transfer.engine.compare import compare_summaries, paired_interval, run_compare, verdict
from seg_transfer.engine.cv import Outcome
from seg_transfer.errors import ConfigError


@pytest.fixture(scope="module")
def seg_root(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("cmp_seg"), n=16, size=32)


def lr_runner(calls: list | None = None):
    """A Runner standing in for training: mIoU 0.3 at lr 0 and 0.5 otherwise, plus a fold effect larger
    than the recipe effect (as real folds have), and a small seed effect."""
    def run(cfg: Config, run_dir: Path) -> Outcome:
        fold = int(run_dir.name.split("_")[0][4:])
        if calls is not None:
            calls.append((cfg.train.lr, fold, cfg.train.seed, Path(cfg.data["val_list"]).read_text()))
        miou = (0.3 if cfg.train.lr == 0 else 0.5) + 0.3 * (fold % 2) + 0.003 * cfg.train.seed * (cfg.train.lr > 0)
        return Outcome({"miou": miou, "pixel_accuracy": 0.9, "mean_accuracy": 0.5, "iou": [miou] * 4}, "miou", "mIoU")
    return run


# ------------------------------------------------------------------------------------------ statistics
def test_paired_interval_is_the_t_interval():
    lo, hi = paired_interval([1.0, 2.0, 3.0])
    half = stats.t.ppf(0.975, 2) * 1.0 / math.sqrt(3)  # mean 2, sd 1
    assert (lo, hi) == pytest.approx((2 - half, 2 + half)) and half == pytest.approx(2.4841, abs=1e-4)
    assert all(math.isnan(v) for v in paired_interval([0.5]))
    assert paired_interval([0.0, 0.0, 0.0]) == (0.0, 0.0)


def test_verdict_names_the_better_recipe_only_when_the_interval_excludes_zero():
    diffs = [0.020, 0.025, 0.018, 0.022, 0.021]
    assert verdict(diffs, "mIoU") == "B better by 2.1 +- 0.3 mIoU points (95% CI), 5/5 folds"
    assert verdict([-d for d in diffs], "AP").startswith("A better by 2.1 +- 0.3 AP points (95% CI), 5/5 folds")
    assert verdict([0.0] * 5, "mIoU") == ("no difference the folds can see: B - A = +0.0 +- 0.0 mIoU points "
                                          "(95% CI), B ahead in 0/5 folds")
    assert verdict([0.05, -0.04, 0.03, -0.05], "mIoU").startswith("no difference the folds can see: B - A = -0.3")
    # consistent but negligible (last digits of a GPU run): no finding
    assert verdict([1e-5, 2e-5, 1.5e-5], "mIoU").startswith("no difference the folds can see")
    assert "one pair only" in verdict([0.1], "accuracy") and verdict([], "mIoU").startswith("no completed pair")


def test_compare_summaries_pairs_runs_by_fold_and_seed_and_skips_failed_ones():
    def summary(values, failed=()):
        return {"metric": "miou", "metric_label": "mIoU", "seeds": 1, "mean_std": {"miou": {}, "seconds": {}},
                "runs": [{"fold": f, "seed": 0, "error": "x" if f in failed else None, "metrics": {"miou": v}}
                         for f, v in enumerate(values, start=1)]}
    result = compare_summaries(summary([0.5, 0.6, 0.7, 0.8]), summary([0.6, 0.7, 0.8, 0.0], failed=(4,)))
    assert [p["fold"] for p in result["pairs"]] == [1, 2, 3] and result["lost"] == 1
    assert result["mean_diff"] == pytest.approx(0.1) and result["b_ahead"] == 3
    assert result["verdict"].startswith("B better by 10.0 +- 0.0 mIoU points (95% CI), 3/3 folds")
    assert result["metrics"]["miou"]["n"] == 3


# ------------------------------------------------------------------------------- both recipes, paired
def test_identical_recipes_show_no_difference_and_share_folds_and_seeds(seg_root, tmp_path):
    cfg = seg_config(seg_root, tmp_path)
    calls: list = []
    result = run_compare(cfg, cfg, folds=4, seeds=2, out=tmp_path / "c", runner=lr_runner(calls),
                         log=lambda _m: None)
    assert result["verdict"].startswith("no difference the folds can see") and result["n"] == 8
    a_calls, b_calls = calls[0::2], calls[1::2]  # interleaved: A then B on each fold x seed
    assert [c[1:] for c in a_calls] == [c[1:] for c in b_calls]  # same folds, seeds and val items
    saved = json.loads((tmp_path / "c" / "compare.json").read_text())
    assert saved["verdict"] == result["verdict"] and len(saved["pairs"]) == 8 and "summaries" not in saved
    assert (tmp_path / "c" / "A" / "cv_summary.json").is_file() and (tmp_path / "c" / "B" / "cv.png").is_file()


def test_a_clearly_better_recipe_is_named(seg_root, tmp_path):
    a = seg_config(seg_root, tmp_path, train={"lr": 0.0})
    b = seg_config(seg_root, tmp_path, train={"lr": 0.003})
    result = run_compare(a, b, folds=4, out=tmp_path / "c", runner=lr_runner(), log=lambda _m: None)
    # the fold effect (0.3) is larger than the recipe effect (0.2): only pairing sees it this clearly
    assert result["verdict"] == "B better by 20.0 +- 0.0 mIoU points (95% CI), 4/4 folds"
    assert result["metrics"]["pixel_accuracy"]["mean_diff"] == 0.0
    flipped = run_compare(b, a, folds=4, seeds=2, out=tmp_path / "d", runner=lr_runner(), log=lambda _m: None)
    assert flipped["verdict"].startswith("A better by 20.") and flipped["verdict"].endswith("8/8 fold x seed pairs")


def test_compare_refuses_recipes_on_different_data(seg_root, tmp_path):
    other = make_dataset(tmp_path / "other", n=12, size=32)
    with pytest.raises(ConfigError, match="the two configs' data differ .16 vs 12 items"):
        run_compare(seg_config(seg_root, tmp_path), seg_config(other, tmp_path), folds=2, out=tmp_path / "c",
                    runner=lr_runner(), log=lambda _m: None)


def lr_config_files(seg_root, tmp_path) -> list[str]:
    """Two config files on the same grouped data, A at lr 0 (learns nothing), B at lr 0.01."""
    from synthetic.segmentation import config

    paths = []
    for name, lr in (("a", 0.0), ("b", 0.01)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(json.dumps(config(seg_root, tmp_path, data={"group_regex": GROUPS}, train={"lr": lr})))
        paths.append(str(path))
    return paths


def test_cli_compare_prints_the_verdict(seg_root, tmp_path, monkeypatch, capsys):
    paths = lr_config_files(seg_root, tmp_path)
    monkeypatch.setattr(compare, "engine_runner", lambda progress, log: lr_runner())
    assert cli.main(["compare", *paths, "train.epochs=1", "--folds", "2", "--out", str(tmp_path / "o"), "-q"]) == 0
    out = capsys.readouterr().out
    assert f"A = {paths[0]}, B = {paths[1]}: B better by 20.0" in out and "compare.json" in out
    assert out.count("\nmean +- std") == 2  # both cross-validation tables
    assert json.loads((tmp_path / "o" / "compare.json").read_text())["overrides"] == ["train.epochs=1"]


def test_cli_compare_quiet_prints_one_line_per_finished_run(seg_root, tmp_path, monkeypatch, capsys):
    """-q: each finished run as one line (recipe, fold, seed, main metric, time), then the tables and verdict."""
    paths = lr_config_files(seg_root, tmp_path)
    monkeypatch.setattr(compare, "engine_runner", lambda progress, log: lr_runner())
    assert cli.main(["compare", *paths, "--folds", "2", "--out", str(tmp_path / "o"), "-q"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert all(re.search(r" in \d+s$", line) for line in out[:4]) and out[4] == ""
    assert [line.rsplit(" in ", 1)[0] for line in out[:4]] == [
        "A (a.yaml): fold 1/2 seed 0: mIoU 0.6000", "B (b.yaml): fold 1/2 seed 0: mIoU 0.8000",
        "A (a.yaml): fold 2/2 seed 0: mIoU 0.3000", "B (b.yaml): fold 2/2 seed 0: mIoU 0.5000"]


# ---------------------------------------------------------------------------------- the real engine
@pytest.mark.slow
def test_engine_lr_zero_loses_to_a_working_lr(tmp_path, one_thread):
    """Random-init ResNet-18 on 32 px stripes (two classes), 3 stratified folds, 2 epochs: AdamW at
    lr 0.003 against lr 0 (the random init), each run about 4 s on a CPU."""
    root = make_classes(tmp_path / "data", n=12, size=32, seed=1)
    kw = {"epochs": 2, "precise_bn": 4, "scheduler": "cosine"}  # BN statistics fit for eval after two epochs
    result = run_compare(cls_config(root, tmp_path, lr=0.0, **kw), cls_config(root, tmp_path, lr=0.003, **kw),
                         folds=3, out=tmp_path / "c", progress=False, log=lambda _m: None)
    assert result["verdict"].startswith("B better by") and result["verdict"].endswith("3/3 folds"), result
    assert all(p["b"] >= 0.9 for p in result["pairs"]), result["pairs"]


@pytest.mark.slow
def test_engine_identical_recipes_show_no_difference(seg_root, tmp_path, one_thread):
    """The same recipe twice through the real Trainer: runs are deterministic, every paired difference is 0."""
    cfg = seg_config(seg_root, tmp_path, train={"batch_size": 4})
    result = run_compare(cfg, cfg, folds=2, limit_train=4, out=tmp_path / "c", progress=False, log=lambda _m: None)
    assert result["n"] == 2 and all(p["diff"] == 0.0 for p in result["pairs"])
    assert result["verdict"].startswith("no difference the folds can see: B - A = +0.0 +- 0.0 mIoU points")
