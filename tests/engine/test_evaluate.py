"""``engine.evaluate``: which data a run's checkpoint is scored on (``run_data``)."""
from __future__ import annotations

import pytest
import yaml

from seg_transfer.engine.evaluate import run_data
from seg_transfer.errors import ConfigError


def test_run_data_is_the_data_block_saved_beside_a_run_checkpoint(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert run_data(run / "best.pt") is None  # a checkpoint on its own: the config's data is scored
    data = {"format": "folder", "root": "/data/CamVid", "split": "list", "val_list": "/runs/cv/fold1/val.txt"}
    (run / "config.yaml").write_text(yaml.safe_dump({"data": data, "train": {"epochs": 1}}))
    assert run_data(run / "best.pt") == (data, run / "config.yaml")
    (run / "config.yaml").write_text("train: {epochs: 1}\n")
    with pytest.raises(ConfigError, match=r"run/config.yaml: no 'data:' block to score the run's val split with"):
        run_data(run / "best.pt")


def test_run_data_of_an_older_run_resolves_its_relative_root_where_the_run_started(tmp_path):
    """Runs saved before roots were made absolute: run.json's cwd says where the relative root was."""
    import json

    run = tmp_path / "runs" / "old"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("data: {format: folder, root: data/x, classes: [a, b]}\n")
    (run / "run.json").write_text(json.dumps({"cwd": str(tmp_path / "project")}))
    data, _ = run_data(run / "best.pt")
    assert data["root"] == str(tmp_path / "project" / "data" / "x")
