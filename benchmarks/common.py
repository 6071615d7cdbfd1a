"""What the benchmark scripts share: CamVid's class list, the output folder and stand-ins' TORCH_HOME. The scripts run as
``python benchmarks/<name>.py``, so this folder is on ``sys.path`` and ``from common import ...`` works."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional

# ../shared/data/CamVid/README.txt: mask value = index here; 11 is void (ignored).
CAMVID_CLASSES = ["sky", "building", "pole", "road", "pavement", "tree", "signsymbol", "fence", "car",
                  "pedestrian", "bicyclist"]


def out_and_torch_home(out: Optional[str], torch_home: Optional[str], prefix: str) -> Path:
    """The benchmark's output folder (``out``, else a new temporary one), created; TORCH_HOME set to
    ``torch_home`` (else a new temporary folder) for the stand-in weights, before torch.hub reads it."""
    folder = Path(out) if out else Path(tempfile.mkdtemp(prefix=f"{prefix}_"))
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TORCH_HOME"] = torch_home or tempfile.mkdtemp(prefix="standin_torch_home_")
    return folder
