#!/usr/bin/env python
"""Same as ``seg-transfer evaluate``: ``python tools/evaluate.py CONFIG [key=value ...]``."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from seg_transfer.cli import main  # noqa: E402

sys.exit(main(["evaluate", *sys.argv[1:]]))
