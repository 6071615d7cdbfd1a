#!/usr/bin/env python
"""Feature cache memory per model: ``engine.cache.estimate_bytes`` for CamVid's 367 train images at
360x480 (the features the head reads, plus a uint8 mask), at fp32 and fp16. ``cache.copies: K``
multiplies by K; a 480x480 train crop (360x480 padded) by 4/3. Models are built with random weights
(the sizes do not depend on the values), so it runs offline in seconds.

    .venv/bin/python benchmarks/cache_memory.py
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from seg_transfer.engine.cache import estimate_bytes  # noqa: E402
from seg_transfer.models.build import build_model  # noqa: E402
from seg_transfer.transfer.freeze import apply_freeze  # noqa: E402

ITEMS, SIZE = 367, (360, 480)
MODELS = [  # (label, model block)
    ("resnet18 + fcn", {"backbone": "resnet18", "neck": "none", "head": "fcn"}),
    ("resnet18 + fcn, aux", {"backbone": "resnet18", "neck": "none", "head": "fcn", "aux_loss": True}),
    ("resnet50 + fcn", {"backbone": "resnet50", "neck": "none", "head": "fcn"}),
    ("resnet50 + fpn neck + fpn head", {"backbone": "resnet50", "neck": "fpn", "head": "fpn"}),
    ("resnet50, output stride 8 + deeplabv3", {"backbone": "resnet50", "neck": "none", "head": "deeplabv3",
                                               "output_stride": 8}),
    ("mobilenet_v3_large + lraspp", {"backbone": "mobilenet_v3_large", "neck": "none", "head": "lraspp"}),
    ("lraspp_mobilenet_v3_large zoo", {"name": "lraspp_mobilenet_v3_large"}),
    ("deeplabv3_resnet50 zoo, no aux", {"name": "deeplabv3_resnet50", "aux_loss": False}),
    ("fcn_resnet50 zoo with aux", {"name": "fcn_resnet50", "aux_loss": True}),
]


def main() -> int:
    print(f"| model | per image | {ITEMS} fp32 | {ITEMS} fp16 |\n|---|---:|---:|---:|")
    for label, block in MODELS:
        model = build_model({"weights": None, "backbone_weights": None, "num_classes": 11, **block})
        apply_freeze(model, "feature_extraction", None, None, True)
        fp32, fp16 = (estimate_bytes(model, SIZE, ITEMS, 1, dtype) for dtype in ("float32", "float16"))
        print(f"| {label} | {fp32 / ITEMS / 2**20:.2f} MiB | {fp32 / 2**30:.2f} GiB | {fp16 / 2**30:.2f} GiB |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
