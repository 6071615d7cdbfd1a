#!/usr/bin/env python
"""Same as ``seg-transfer finetune``: ``python tools/finetune.py CONFIG [key=value ...]``."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from seg_transfer.cli import main  # noqa: E402

sys.exit(main(["finetune", *sys.argv[1:]]))
