"""What the benchmark scripts share: CamVid's class list and a call timer. The scripts run as
``python benchmarks/<name>.py``, so this folder is on ``sys.path`` and ``from common import ...`` works."""
from __future__ import annotations

import time
from typing import Any, Callable

# ../shared/data/CamVid/README.txt: mask value = index here; 11 is void (ignored).
CAMVID_CLASSES = ["sky", "building", "pole", "road", "pavement", "tree", "signsymbol", "fence", "car",
                  "pedestrian", "bicyclist"]


def timed(fn: Callable, box: dict[str, float], key: str) -> Callable:
    """``fn``, adding its wall time in seconds to ``box[key]`` on every call."""
    def wrapper(*a: Any, **kw: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            box[key] += time.perf_counter() - start
    return wrapper
