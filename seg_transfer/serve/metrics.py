"""Request and latency counters in the Prometheus text exposition format (``GET /metrics``).

A handful of counters and one histogram, written by hand: prometheus_client would add a dependency for
what is a dozen lines of text here."""
from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

from .batching import BatchStats

# Latency histogram buckets in seconds (Prometheus' ``le`` labels).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
PREFIX = "seg_transfer"


@dataclass
class Metrics:
    """Requests by path and status, ``/predict`` latencies, requests in flight, and the batcher's calls."""

    requests: Counter = field(default_factory=Counter)  # (path, status) -> count
    latency_buckets: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))
    latency_sum: float = 0.0
    latency_count: int = 0
    in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, path: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(path, status)] += 1
            if path == "/predict":
                self.latency_sum += seconds
                self.latency_count += 1
                for i, bound in enumerate(BUCKETS):
                    if seconds <= bound:
                        self.latency_buckets[i] += 1

    def text(self, batches: BatchStats) -> str:
        name = f"{PREFIX}_requests_total"
        lines = [f"# HELP {name} HTTP requests by path and status.", f"# TYPE {name} counter"]
        with self._lock:
            lines += [f'{name}{{path="{path}",status="{status}"}} {n}' for (path, status), n in sorted(self.requests.items())]
            name = f"{PREFIX}_predict_seconds"
            lines += [f"# HELP {name} POST /predict latency (reading the upload to the response).",
                      f"# TYPE {name} histogram"]
            lines += [f'{name}_bucket{{le="{bound}"}} {n}' for bound, n in zip(BUCKETS, self.latency_buckets)]
            lines += [f'{name}_bucket{{le="+Inf"}} {self.latency_count}', f"{name}_sum {self.latency_sum:.6f}",
                      f"{name}_count {self.latency_count}"]
            in_flight = self.in_flight
        for metric, kind, value, text in [
                ("requests_in_flight", "gauge", in_flight, "Prediction requests admitted and not yet answered."),
                ("model_calls_total", "counter", batches.calls, "Model calls (one per gathered batch)."),
                ("model_images_total", "counter", batches.images, "Inputs the model calls held (their sum)."),
                ("model_batch_largest", "gauge", batches.largest, "The most inputs one model call held.")]:
            lines += [f"# HELP {PREFIX}_{metric} {text}", f"# TYPE {PREFIX}_{metric} {kind}", f"{PREFIX}_{metric} {value}"]
        return "\n".join(lines) + "\n"
