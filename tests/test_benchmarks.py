"""The benchmark scripts that a device run depends on work, on the CPU, before a GPU is lent to run them."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


@pytest.mark.slow  # ~1.5 min on 2 quiet cores, most of it the detectors
@pytest.mark.skipif(not (DATA / "CamVid").is_dir(), reason="../shared/data is not beside the checkout")
def test_gpu_speed_small_runs_every_side_of_every_task(tmp_path, torch_home):
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_speed.py"), "--small", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_speed.json").read_text())["results"]
    assert set(results) == {"segmentation", "classification", "detection"}
    for task, rows in results.items():
        assert set(rows) == {"engine", "engine, device recipe", "engine, albumentations path", "plain loop"}, task
        for side, r in rows.items():
            assert r["images_per_s"] > 0 and 0 <= r["data_share"] <= 1 and r["wall"] >= r["first_epoch"], (task, side)
        assert rows["engine"]["path"] == "albumentations"  # auto on the CPU: the albumentations path
        assert rows["engine, device recipe"]["path"] == "device"
    assert "segmentation: side | path" in done.stdout
