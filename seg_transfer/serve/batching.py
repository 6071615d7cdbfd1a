"""Dynamic batching: a ``Runner`` that gathers the model calls of concurrent requests into one call.

Each request thread runs the unchanged ``Predictor.predict`` (preprocessing, tiling, TTA, the task's
result); only its model call goes through ``BatchingRunner``, which queues the preprocessed batch and
waits. One worker thread takes the first waiting call, gathers more for up to ``wait_ms`` or until
``max_batch`` images, runs the wrapped runner once per group of same-shaped inputs, and hands each caller
exactly its own slice of the outputs. ``max_batch=1`` is batching off: the same worker, one call at a time.
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from ..predict.backends import Batch, Runner


@dataclass
class _Call:
    batch: Batch
    future: Future = field(default_factory=Future)

    @property
    def size(self) -> int:
        return len(self.batch)

    @property
    def key(self) -> Any:
        """Calls that can share one model call: image lists always (detectors take any sizes), tensors of one shape."""
        if isinstance(self.batch, torch.Tensor):
            return tuple(self.batch.shape[1:]), self.batch.dtype
        return "list"


@dataclass
class BatchStats:
    """What the worker has done: model calls and the images they held (for ``/metrics``)."""

    calls: int = 0
    images: int = 0
    largest: int = 0


class BatchingRunner(Runner):
    """``runner`` behind a queue and one worker thread; call ``close()`` to stop the worker."""

    def __init__(self, runner: Runner, max_batch: int = 8, wait_ms: float = 5.0):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.runner, self.meta, self.device = runner, runner.meta, runner.device
        self.backend = runner.backend
        self.max_batch, self.wait = max_batch, wait_ms / 1000.0
        self.stats = BatchStats()
        self._queue: queue.Queue[Optional[_Call]] = queue.Queue()
        self._worker = threading.Thread(target=self._loop, name="seg-transfer-batcher", daemon=True)
        self._worker.start()

    def __call__(self, batch: Batch) -> Any:
        if not self._worker.is_alive():
            raise RuntimeError("the batching worker has stopped")
        call = _Call(batch)
        self._queue.put(call)
        return call.future.result()

    def close(self) -> None:
        """Finish the calls already queued, then stop the worker."""
        self._queue.put(None)
        self._worker.join()

    def _gather(self, first: _Call) -> tuple[list[_Call], bool]:
        """``first`` and the calls arriving within the wait, up to ``max_batch`` images; whether to stop after."""
        calls, images = [first], first.size
        deadline = time.monotonic() + self.wait
        while images < self.max_batch:
            try:
                call = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if call is None:
                return calls, True
            calls.append(call)
            images += call.size
        return calls, False

    def _loop(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                return
            calls, stop = self._gather(first)
            groups: dict[Any, list[_Call]] = {}
            for call in calls:
                groups.setdefault(call.key, []).append(call)
            for group in groups.values():
                self._run(group)

    def _run(self, calls: list[_Call]) -> None:
        sizes = [c.size for c in calls]
        try:
            with torch.inference_mode():
                tensors = [c.batch for c in calls if isinstance(c.batch, torch.Tensor)]
                if tensors:  # a group is all tensors or all lists (its key)
                    joined: Batch = torch.cat(tensors) if len(tensors) > 1 else tensors[0]
                else:
                    joined = [x for c in calls for x in c.batch]
                out = self.runner(joined)
                parts = out.split(sizes) if isinstance(out, torch.Tensor) else _slices(out, sizes)
        except Exception as err:  # every caller of the group gets the failure, and the worker lives on
            for call in calls:
                call.future.set_exception(err)
            return
        self.stats.calls += 1
        self.stats.images += sum(sizes)
        self.stats.largest = max(self.stats.largest, sum(sizes))
        for call, part in zip(calls, parts):
            call.future.set_result(part)


def _slices(outputs: list[Any], sizes: list[int]) -> list[list[Any]]:
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [list(outputs[s:s + n]) for s, n in zip(starts, sizes)]
