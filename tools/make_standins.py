#!/usr/bin/env python
"""Write stand-in checkpoints (random values, official file names) into $TORCH_HOME for offline demos:
``TORCH_HOME=/tmp/standin python tools/make_standins.py fcn_resnet50 resnet50``; ``timm/<name>`` writes timm's
default weights file into the Hugging Face cache ($HF_HUB_CACHE or $HF_HOME/hub). Never use them for accuracy."""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from seg_transfer.testing import build_standin, build_timm_standin  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("models", nargs="+", help="torchvision builder names, or timm/<name> (DEFAULT weights)")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()
for name in args.models:
    timm_name = name.partition("timm/")[2]
    path = build_timm_standin(timm_name, seed=args.seed) if timm_name else build_standin(name, seed=args.seed)
    print(f"stand-in {name}: {path}")
