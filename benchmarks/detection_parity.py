"""Detection inference parity: seg_transfer's ``Predictor`` vs torchvision's recipe
(``model([weights.transforms()(img)])[0]``) on the photos in ../shared/images, through stand-in checkpoints.

Stand-ins have random values (their class scores are near-uniform): this proves the two pipelines agree,
never that a detector is accurate. Both sides drop the detector's internal score floor to 0 so that the
comparison covers every box the model returns.

    python benchmarks/detection_parity.py            # a scratch TORCH_HOME; prints one line per model x photo
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ["TORCH_HOME"] = tempfile.mkdtemp(prefix="standin_")  # never the user's cache

import torch  # noqa: E402
import torchvision  # noqa: E402
from torchvision.io import ImageReadMode, read_image  # noqa: E402

from seg_transfer import Predictor  # noqa: E402
from seg_transfer.testing import build_standin  # noqa: E402

IMAGES = Path(__file__).resolve().parents[2] / "shared" / "images"
PHOTOS = ["dog1.jpg", "dog2.jpg", "person1.jpg", "astronaut.jpg", "FudanPed00054.png"]
# torchvision's keyword for the score floor below which a detector drops boxes, per model.
FLOOR = {"fasterrcnn_mobilenet_v3_large_320_fpn": "box_score_thresh", "ssdlite320_mobilenet_v3_large": "score_thresh"}


def main() -> int:
    torch.set_num_threads(1)
    worst = 0.0
    for name, keyword in FLOOR.items():
        build_standin(name)
        weights = torchvision.models.get_model_weights(name).DEFAULT
        reference = torchvision.models.get_model(name, weights=weights, **{keyword: 0.0}).eval()
        predictor = Predictor(name)
        model = predictor.model
        if hasattr(model, "roi_heads"):
            model.roi_heads.score_thresh = 0.0
        else:
            model.score_thresh = 0.0
        for photo in PHOTOS:
            path = IMAGES / photo
            if not path.exists():
                print(f"{path}: missing, skipped", file=sys.stderr)
                continue
            start = time.perf_counter()
            with torch.inference_mode():
                expected = reference([weights.transforms()(read_image(str(path), mode=ImageReadMode.RGB))])[0]
            t_ref, start = time.perf_counter() - start, time.perf_counter()
            result = predictor.predict(path, score_threshold=0.0)
            t_ours = time.perf_counter() - start
            n = len(expected["boxes"])
            if len(result) != n or not torch.equal(result.labels, expected["labels"]):
                print(f"{name} {photo}: MISMATCH ({len(result)} vs {n} boxes)")
                return 1
            dbox = float((result.boxes - expected["boxes"]).abs().max()) if n else 0.0
            dscore = float((result.scores - expected["scores"]).abs().max()) if n else 0.0
            worst = max(worst, dbox, dscore)
            print(f"{name:38s} {photo:18s} boxes {n:4d}  max|dbox| {dbox:.1e}  max|dscore| {dscore:.1e}  "
                  f"labels equal  recipe {t_ref:.2f}s  ours {t_ours:.2f}s")
    print(f"worst difference: {worst:.1e} (bar: 1e-4)")
    return 0 if worst <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
