"""Dynamic batching: concurrent requests share model calls and each gets its own result; a full queue answers
503 and a slow answer 504; ``BatchingRunner`` itself (grouping by shape, failures reaching every caller)."""
from __future__ import annotations

import io
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from seg_transfer.predict import Predictor
from seg_transfer.predict.backends import Runner
from seg_transfer.serve.batching import BatchingRunner

from .helpers import SlowRunner, noise_image, predictor

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
from seg_transfer.serve.app import running  # noqa: E402
from seg_transfer.serve.client import predict, request  # noqa: E402
from seg_transfer.serve.options import ServeOptions  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def metric(url: str, name: str) -> float:
    text = request(url + "/metrics")[1].decode()
    return float(re.search(rf"^seg_transfer_{name} (\S+)$", text, re.M).group(1))


def test_16_concurrent_requests_each_get_their_own_result(standin):
    p = predictor(standin, "classification")
    images = [noise_image(seed) for seed in range(16)]
    expected = [p.predict(Image.open(io.BytesIO(data)), top_k=3) for data in images]
    assert len({e.label for e in expected}) > 1, "the images must be told apart by their predictions"
    with running(p, ServeOptions(max_batch=16, batch_wait_ms=200)) as url:
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda data: predict(url, data, [("top_k", 3)]), images))
        calls, images_run = metric(url, "model_calls_total"), metric(url, "model_images_total")
        largest = metric(url, "model_batch_largest")
    for (status, report), want in zip(answers, expected):
        assert status == 200, report
        assert [t["label"] for t in report["top_k"]] == want.labels
        assert np.allclose([t["prob"] for t in report["top_k"]], [v for _, v in want.top], atol=1e-4)
    assert images_run == 16 and calls < 16 and largest > 1, (calls, largest)


def test_a_full_queue_answers_503_and_the_admitted_finish(standin):
    p = predictor(standin, "classification")
    slow = Predictor(SlowRunner(p.runner, 0.4))
    with running(slow, ServeOptions(max_batch=1, max_queue=2)) as url:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda seed: predict(url, noise_image(seed)), range(8)))
        statuses = sorted(status for status, _ in answers)
        assert statuses.count(503) >= 1 and statuses.count(200) >= 2, statuses
        assert set(statuses) == {200, 503}
        busy = next(report for status, report in answers if status == 503)
        assert "busy" in busy["error"] and "--max-queue" in busy["error"]
        assert predict(url, noise_image(0))[0] == 200  # the queue drained


def test_a_slow_prediction_answers_504(standin):
    p = predictor(standin, "classification")
    with running(Predictor(SlowRunner(p.runner, 1.0)), ServeOptions(timeout_s=0.2)) as url:
        status, report = predict(url, noise_image(0))
        assert status == 504 and "--timeout" in report["error"]


class Echo(Runner):
    """Returns its batch (shape NxC...) and records each call's batch size."""

    def __init__(self, runner: Runner):
        self.meta, self.sizes = runner.meta, []

    def __call__(self, batch):
        self.sizes.append(len(batch))
        if isinstance(batch, torch.Tensor):
            if (batch < 0).any():
                raise ValueError("negative input")
            return batch * 2
        return [{"x": x} for x in batch]


@pytest.fixture(scope="module")
def meta_runner(standin):
    return predictor(standin, "classification").runner


def test_batching_runner_groups_same_shapes_and_splits_back(meta_runner):
    echo = Echo(meta_runner)
    batcher = BatchingRunner(echo, max_batch=8, wait_ms=300)
    inputs = [torch.full((1, 3, 4, 4), float(i)) for i in range(4)] + [torch.full((2, 3, 5, 5), 9.0)]
    barrier = threading.Barrier(len(inputs))

    def call(x):
        barrier.wait()
        return batcher(x)

    with ThreadPoolExecutor(len(inputs)) as pool:
        outs = list(pool.map(call, inputs))
    batcher.close()
    for x, out in zip(inputs, outs):
        assert torch.equal(out, x * 2)
    assert sorted(echo.sizes) == [2, 4]  # one call per shape
    assert batcher.stats.calls == 2 and batcher.stats.images == 6 and batcher.stats.largest == 4


def test_batching_runner_lists_and_failures(meta_runner):
    echo = Echo(meta_runner)
    batcher = BatchingRunner(echo, max_batch=1)
    items = [torch.zeros(3, 2, 2), torch.ones(3, 4, 4)]
    assert [o["x"] for o in batcher(items)] == items
    with pytest.raises(ValueError, match="negative input"):
        batcher(torch.full((1, 3, 2, 2), -1.0))
    assert torch.equal(batcher(torch.ones(1, 3, 2, 2)), torch.full((1, 3, 2, 2), 2.0))  # the worker lives on
    batcher.close()
    with pytest.raises(RuntimeError, match="stopped"):
        batcher(torch.ones(1, 3, 2, 2))
