"""What the benchmark scripts share: CamVid's class list. The scripts run as
``python benchmarks/<name>.py``, so this folder is on ``sys.path`` and ``from common import ...`` works."""
from __future__ import annotations

# ../shared/data/CamVid/README.txt: mask value = index here; 11 is void (ignored).
CAMVID_CLASSES = ["sky", "building", "pole", "road", "pavement", "tree", "signsymbol", "fence", "car",
                  "pedestrian", "bicyclist"]
