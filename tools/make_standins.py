#!/usr/bin/env python
"""Write stand-in checkpoints (random values, official file names) into $TORCH_HOME for offline demos:
``TORCH_HOME=/tmp/standin python tools/make_standins.py fcn_resnet50 resnet50``. Never use them for accuracy."""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from seg_transfer.testing import build_standin  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("models", nargs="+", help="torchvision builder names (DEFAULT weights)")
parser.add_argument("--seed", type=int, default=0)
for name in parser.parse_args().models:
    print(f"stand-in {name}: {build_standin(name, seed=parser.parse_args().seed)}")
