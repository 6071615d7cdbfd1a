"""Images without labels (``seg-transfer pretrain``'s ``data:``): every image file under a folder, or the
files a list names, decoded with the shorter side at one size so a batch of them fits one ``Canvas``."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from ..io import expand_inputs
from .common import PathLike, image_file_shape, read_rgb, scan
from .memory import start_size
from .problems import DataError


def unlabelled_files(root: PathLike, list_file: Optional[PathLike] = None, progress: bool = True) -> list[Path]:
    """The image files under ``root`` (recursively, sorted), or those ``list_file`` names (one path per line,
    relative to ``root``); files whose header cannot be read are left out with one note saying how many."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data.root {root}: no such folder")
    if list_file is None:
        files, errors = expand_inputs([root])
        if errors:
            raise DataError(errors[0])
    else:
        path = root / list_file if not Path(list_file).is_absolute() else Path(list_file)
        if not path.is_file():
            raise DataError(f"data.list {path}: no such file")
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        files = [root / name for name in names]
        absent = [str(f) for f in files if not f.is_file()]
        if absent:
            raise DataError(f"data.list {path}: {len(absent)} listed file(s) absent, e.g. {absent[0]}")
        if not files:
            raise DataError(f"data.list {path}: lists no files")

    def readable(file: Path) -> bool:
        try:
            image_file_shape(file, decode=False)
            return True
        except DataError:
            return False

    ok = scan(readable, files, "checking images", enabled=progress)
    kept = [f for f, good in zip(files, ok) if good]
    if len(kept) < len(files):
        print(f"seg-transfer: note: {len(files) - len(kept)} of {len(files)} files under {root} are not "
              f"readable images; left out", file=sys.stderr)
    if not kept:
        raise DataError(f"data.root {root}: no readable image")
    return kept


class UnlabelledImages(torch.utils.data.Dataset):
    """Item ``i``: (uint8 3 x H x W tensor, its shorter side ``shorter`` pixels; label 0), the item shape
    ``device_augment.canvas_collate`` batches. ``cache``: decode each file once and keep it."""

    def __init__(self, files: Sequence[Path], shorter: Optional[int], cache: bool = True) -> None:
        self.files, self.shorter = list(files), shorter
        self.cached: Optional[list[Optional[torch.Tensor]]] = [None] * len(self.files) if cache else None

    def __len__(self) -> int:
        return len(self.files)

    def image(self, i: int) -> torch.Tensor:
        if self.cached is not None and self.cached[i] is not None:
            return self.cached[i]  # type: ignore[return-value]  # checked just above
        rgb = read_rgb(self.files[i])
        h, w = start_size(rgb.shape[0], rgb.shape[1], self.shorter)
        if (h, w) != rgb.shape[:2]:
            rgb = np.array(Image.fromarray(rgb).resize((w, h), Image.Resampling.BILINEAR, reducing_gap=2.0))
        tensor = torch.from_numpy(np.array(rgb)).permute(2, 0, 1).contiguous()  # a writable copy
        if self.cached is not None:
            self.cached[i] = tensor
        return tensor

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.image(i), 0
