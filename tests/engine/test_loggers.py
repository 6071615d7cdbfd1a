"""train.loggers: metrics.csv, TensorBoard event files read back with TensorBoard's own reader (tags, values,
the prediction image, the config text), the one-line error without the extra, rank-0-only writing."""
from __future__ import annotations

import csv
import sys
from typing import Any

import pytest
from synthetic.segmentation import CLASSES, config, make_dataset

from seg_transfer.config import Config, from_dict
from seg_transfer.engine import distributed as D
from seg_transfer.engine.loggers import CsvLogger, Loggers, TensorBoardLogger, build_loggers
from seg_transfer.engine.trainer import Trainer
from seg_transfer.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


def needs_tensorboard() -> None:
    pytest.importorskip("tensorboard", reason="the [tensorboard] extra is not installed")


def read_events(folder) -> Any:
    """TensorBoard's own reader over a run folder's event files."""
    reader = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = reader.EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


def scalars(events: Any, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in events.Scalars(tag)]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("synthetic"), n=12)


@pytest.fixture(scope="module")
def tb_run(data_root, tmp_path_factory):
    """One 2-epoch run logging to csv and tensorboard (4 optimizer steps an epoch)."""
    needs_tensorboard()
    out = tmp_path_factory.mktemp("runs")
    cfg = from_dict(Config, config(data_root, out, model={"backbone": "mobilenet_v2"},  # small checkpoints
                                   train={"epochs": 2, "batch_size": 2, "backbone_lr_mult": 0.1,
                                          "loggers": ["csv", "tensorboard"]}, data={"val_ratio": 0.25}))
    trainer = Trainer(cfg, progress=False, log=lambda _m: None)
    trainer.fit()
    return trainer


def test_tensorboard_scalars_per_step_and_epoch(tb_run):
    events = read_events(tb_run.run_dir)
    tags = set(events.Tags()["scalars"])
    per_class = {f"per_class/{m}/{c}" for m in ("iou", "accuracy") for c in CLASSES}
    assert {"train/loss", "lr/head", "lr/backbone", "loss/train", "loss/val", "val/miou", "val/pixel_acc",
            "val/mean_acc", "time/epoch_seconds"} | per_class <= tags, sorted(tags)
    steps = 2 * (9 // 2)  # 9 train images, batches of 2, the last incomplete one dropped: 4 optimizer steps an epoch
    assert [s for s, _ in scalars(events, "train/loss")] == list(range(1, steps + 1))
    # the LR of each param group as it was used at each step: backbone at 0.1 x head, head from train.lr down
    head, backbone = scalars(events, "lr/head"), scalars(events, "lr/backbone")
    assert head[0][1] == pytest.approx(0.003) and all(b == pytest.approx(0.1 * h) for (_, h), (_, b) in zip(head, backbone))
    assert head[-1][1] < head[0][1]
    # per epoch: the same figures as the history
    for key, tag in (("train_loss", "loss/train"), ("val_loss", "loss/val"), ("miou", "val/miou")):
        assert scalars(events, tag) == [(r["epoch"], pytest.approx(r[key], rel=1e-5)) for r in tb_run.history]


def test_tensorboard_image_and_config_text(tb_run):
    events = read_events(tb_run.run_dir)
    images = events.Images("predictions")
    assert [i.step for i in images] == [1, 2] and images[0].width > 300 and images[0].encoded_image_string[:4] == b"\x89PNG"
    assert "best_worst" in events.Tags()["images"]
    texts = {tag: events.Tensors(tag)[0].tensor_proto.string_val[0].decode() for tag in events.Tags()["tensors"]
             if tag.endswith("text_summary")}
    config_text = next(v for k, v in texts.items() if k.startswith("config"))
    assert "    train:" in config_text and "    - tensorboard" in config_text  # the resolved YAML, as code
    assert any(k.startswith("freeze") for k in texts)


def test_csv_logger_still_writes_metrics_csv(tb_run):
    with open(tb_run.run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert list(rows[0]) == ["epoch", "train_loss", "val_loss", "miou", "pixel_acc", "mean_acc", "lr", "seconds", "data_seconds"]


def test_logger_hooks_direct(tmp_path):
    """The loggers alone: a step, an epoch with per-class figures; NaN figures are left out of TensorBoard."""
    needs_tensorboard()
    loggers = build_loggers(["csv", "tensorboard", "csv"], ("acc",))
    assert [type(lg) for lg in loggers.loggers] == [CsvLogger, TensorBoardLogger]  # duplicates once
    loggers.start(tmp_path, {"config": "a: 1"})
    loggers.step(1, {"train/loss": 0.5, "lr/head": 0.01})
    loggers.epoch([{"epoch": 1, "train_loss": 0.5, "val_loss": float("nan"), "acc": 0.75, "lr": 0.01, "seconds": 2.0}],
                  {"cat": {"f1": 0.5}}, {})
    loggers.close()
    events = read_events(tmp_path)
    assert scalars(events, "val/acc") == [(1, 0.75)] and scalars(events, "per_class/f1/cat") == [(1, 0.5)]
    assert "loss/val" not in events.Tags()["scalars"]
    assert (tmp_path / "metrics.csv").read_text().splitlines()[1].startswith("1,0.5,nan,0.75")


def test_missing_tensorboard_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as without the package
    with pytest.raises(ConfigError, match=r'train\.loggers: .*pip install -e "\.\[tensorboard\]"') as err:
        build_loggers(["tensorboard"], ())
    assert "\n" not in str(err.value)
    assert isinstance(build_loggers(["csv"], ()), Loggers)  # csv needs nothing


def test_unknown_logger_is_a_config_error():
    with pytest.raises(ConfigError, match=r"train\.loggers\[1\]: unknown value 'tensorbord' \(did you mean 'tensorboard'"):
        from_dict(Config, {"train": {"loggers": ["csv", "tensorbord"]}})
    assert from_dict(Config, {}).train.loggers == ["csv"]


def test_only_rank_0_writes(data_root, tmp_path, monkeypatch):
    """Another rank builds the loggers (a missing extra fails everywhere alike) but writes nothing."""
    needs_tensorboard()
    monkeypatch.setattr(D, "is_main", lambda: False)
    cfg = from_dict(Config, config(data_root, tmp_path, model={"backbone": "mobilenet_v2"},
                                   train={"epochs": 1, "batch_size": 4, "loggers": ["tensorboard"]},
                                   data={"val_ratio": 0.25}, output={"num_predictions": 0}))
    trainer = Trainer(cfg, progress=False, log=lambda _m: None)
    assert trainer.loggers.loggers == []
    trainer.fit()
    assert not (tmp_path / "run").exists()
