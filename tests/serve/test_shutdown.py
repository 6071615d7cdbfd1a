"""``seg-transfer serve`` as a process: SIGTERM while requests are in flight finishes every one of them."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .helpers import TASK_MODELS, noise_image

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
from seg_transfer.serve.client import predict, request  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def counts(url: str) -> tuple[int, int]:
    """(/predict requests in flight, /predict requests answered) from /metrics."""
    text = request(url + "/metrics")[1].decode()
    flying = int(re.search(r"^seg_transfer_requests_in_flight (\d+)$", text, re.M).group(1))
    answered = sum(int(n) for n in re.findall(r'^seg_transfer_requests_total\{path="/predict",status="\d+"\} (\d+)$',
                                               text, re.M))
    return flying, answered


def test_sigterm_finishes_requests_in_flight(standin, torch_home):
    standin(TASK_MODELS["classification"])
    # one request at a time, each slowed by test-time augmentation, so several are queued at the signal
    cmd = [sys.executable, "-m", "seg_transfer.cli", "serve", "--model", TASK_MODELS["classification"], "--port", "0",
           "--max-batch", "1", "--tta", "flip,scales=1,1.5,2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TORCH_HOME": str(torch_home), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        url = re.search(r"(http://\S+)/", line).group(1)
        with ThreadPoolExecutor(6) as pool:
            answers = [pool.submit(predict, url, noise_image(seed, 256)) for seed in range(6)]
            # the signal once all 6 are admitted (a connection not yet accepted at SIGTERM is refused, as it
            # should be) and most still run; on a loaded machine admitting them can take seconds
            deadline = time.monotonic() + 60
            while sum(counts(url)) < 6 and time.monotonic() < deadline:
                time.sleep(0.02)
            flying, answered = counts(url)
            assert flying + answered == 6 and flying >= 3, ("the requests finished before the signal: slow them more",
                                                           flying, answered)
            proc.send_signal(signal.SIGTERM)
            results = [a.result(timeout=60) for a in answers]
        # uvicorn re-raises the signal once it has shut down, so the exit status says what stopped it
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        proc.kill()
        proc.wait()
    assert [status for status, _ in results] == [200] * 6, results
    assert all(report["top_k"] for _, report in results)
