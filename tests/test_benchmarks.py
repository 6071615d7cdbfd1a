"""The benchmark scripts that a device run depends on work, on the CPU, before a GPU is lent to run them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "CamVid").is_dir(), reason="../shared/data is not beside the checkout")
def test_gpu_speed_small_runs_every_side(tmp_path, torch_home):
    """Segmentation and classification: ~40 s. Detection's four sides take ~4 min on 2 cores (each scores
    BCCD's whole val list), too long for CI; its device recipe is tested in tests/engine/test_detection_task.py
    and `python benchmarks/gpu_speed.py --small` runs it by hand."""
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_speed.py"), "--small", "--out", str(tmp_path),
                           "--tasks", "segmentation,classification"], capture_output=True, text=True, timeout=600,
                          # an empty TORCH_HOME of its own: the script makes the stand-ins it needs (the session's
                          # may hold other tests' stand-ins already, and then the script would use what is there)
                          env={**os.environ, "TORCH_HOME": str(tmp_path / "torch_home")})
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_speed.json").read_text())["results"]
    assert set(results) == {"segmentation", "classification"}
    for task, rows in results.items():
        assert set(rows) == {"engine", "engine, device recipe", "engine, albumentations path", "plain loop"}, task
        for side, r in rows.items():
            assert r["images_per_s"] > 0 and 0 <= r["data_share"] <= 1 and r["wall"] >= r["first_epoch"], (task, side)
        assert rows["engine"]["path"] == "albumentations"  # auto on the CPU: the albumentations path
        assert rows["engine, device recipe"]["path"] == "device"
    assert "segmentation: side | path" in done.stdout
