"""Load on ``seg-transfer serve``: requests/s and p50/p95/p99 latency at concurrency 1, 4 and 16, dynamic
batching off (``--max-batch 1``) and on, interleaved (each round runs every cell, in shuffled order).

Loopback only: both servers run in this process (uvicorn in a thread each, ``serve.app.running``) and the
clients are threads posting the same photo with the standard library; bounded by ``--requests`` per cell
and ``--seconds`` per cell, whichever comes first. Stand-in weights in a temporary TORCH_HOME.

    .venv/bin/python benchmarks/serve_load.py                        # resnet18, 3 rounds
    .venv/bin/python benchmarks/serve_load.py --rounds 1 --requests 16   # smoke run
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PHOTO = REPO.parent / "shared" / "images" / "dog1.jpg"
CONCURRENCY = (1, 4, 16)


def load(url: str, image: bytes, concurrency: int, requests: int, seconds: float) -> dict[str, float]:
    """``requests`` posts from ``concurrency`` threads (or as many as fit in ``seconds``): rate, latencies, errors."""
    from seg_transfer.serve.client import predict

    latencies: list[float] = []
    errors = [0]
    left = [requests]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        while time.monotonic() < deadline:
            with lock:
                if left[0] <= 0:
                    return
                left[0] -= 1
            start = time.perf_counter()
            status, _ = predict(url, image, form=False)
            with lock:
                latencies.append(time.perf_counter() - start)
                errors[0] += status != 200

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return {"rps": len(latencies) / wall, "p50": q[49] * 1000, "p95": q[94] * 1000, "p99": q[98] * 1000,
            "n": len(latencies), "errors": errors[0]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=64, help="requests per cell and round (default 64)")
    ap.add_argument("--seconds", type=float, default=30.0, help="time limit per cell and round (default 30)")
    ap.add_argument("--max-batch", type=int, default=16, help="batching on: --max-batch (default 16)")
    ap.add_argument("--batch-wait-ms", type=float, default=10.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="serve_load_") as home:
        os.environ["TORCH_HOME"] = home
        from seg_transfer.predict import Predictor
        from seg_transfer.serve.app import running
        from seg_transfer.serve.options import ServeOptions
        from seg_transfer.testing import build_standin

        build_standin(args.model)
        predictor = Predictor(args.model)
        image = PHOTO.read_bytes()
        sides = {"off": ServeOptions(max_batch=1), "on": ServeOptions(max_batch=args.max_batch,
                                                                      batch_wait_ms=args.batch_wait_ms)}
        rows: dict[tuple[str, int], list[dict[str, float]]] = {}
        with running(predictor, sides["off"]) as off, running(predictor, sides["on"]) as on:
            urls = {"off": off, "on": on}
            for side in urls:  # warm-up
                load(urls[side], image, 2, 4, args.seconds)
            cells = [(side, c) for side in sides for c in CONCURRENCY]
            for r in range(args.rounds):
                random.Random(r).shuffle(cells)
                for side, c in cells:
                    rows.setdefault((side, c), []).append(load(urls[side], image, c, args.requests, args.seconds))
                print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    print(f"{args.model}, {os.cpu_count()} CPUs, {args.rounds} rounds x {args.requests} requests per cell "
          f"(medians over rounds); batching on: max batch {args.max_batch}, wait {args.batch_wait_ms:g} ms\n")
    print("| concurrency | batching | requests/s | p50 ms | p95 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|---|")
    for c in CONCURRENCY:
        for side in sides:
            runs = rows[(side, c)]
            med = {k: statistics.median(run[k] for run in runs) for k in ("rps", "p50", "p95", "p99")}
            print(f"| {c} | {side} | {med['rps']:.2f} | {med['p50']:.0f} | {med['p95']:.0f} | {med['p99']:.0f} | "
                  f"{sum(run['errors'] for run in runs)} |")
        if c == CONCURRENCY[-1]:
            ratio = statistics.median(r["rps"] for r in rows[("on", c)]) / statistics.median(r["rps"] for r in rows[("off", c)])
            print(f"\nbatching on / off at concurrency {c}: {ratio:.2f}x requests/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
