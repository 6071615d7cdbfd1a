"""The ``cvat_masks`` format: CVAT's "Segmentation mask 1.1" export (Datumaro's VOC segmentation layout), read
as a ``folder`` whose RGB masks are decoded through the export's ``labelmap.txt``.

    labelmap.txt                      # label:color_rgb:parts:actions, one line per label, background first
    ImageSets/Segmentation/default.txt  (or train.txt, val.txt: one per CVAT subset)
    SegmentationClass/<name>.png      # RGB, each label's colour
    JPEGImages/<name>.jpg             # written when 'Save images' is ticked in the export dialog
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from ..errors import ConfigError
from .colors import Palette, read_labelmap, voc_palette
from .common import DataSplits, PathLike
from .folder import build_folder
from .problems import Problem, fail
from .voc import VOC_CLASSES

LISTS = "ImageSets/Segmentation"
VAL_SUBSETS = ("val", "validation", "valid")  # CVAT subset names are free text; these are the usual ones


def cvat_palette(root: Path, labelmap: str, classes: Optional[Sequence[str]]) -> Palette:
    """The export's labelmap (VOC's classes and colours when it has none, as CVAT writes for VOC labels),
    with indices in ``classes`` order when given (every labelmap name must be in it)."""
    path = root / labelmap
    if path.is_file():
        palette = read_labelmap(path)
    else:
        palette = voc_palette()
        palette = Palette(palette.colours[:len(VOC_CLASSES)], range(len(VOC_CLASSES)),
                          f"the VOC colormap (no {path})", VOC_CLASSES)
    names = palette.names or []
    if classes is None:
        return palette
    if isinstance(classes, str) or not all(isinstance(c, str) for c in classes):
        raise ConfigError(f"classes: expected a list of class names, got {classes!r}")
    missing = [n for n in names if n not in classes]
    if missing:
        raise ConfigError(f"data.classes: {palette.source} names {', '.join(missing)}, which classes does not "
                          f"list ({', '.join(classes)}); list every label (background first), or leave classes out")
    return Palette(palette.colours, [list(classes).index(n) for n in names], palette.source, list(classes))


def default_lists(root: Path) -> tuple[Optional[str], Optional[str]]:
    """(train list, val list) of the export's subsets: ``train.txt`` and ``val.txt`` (or ``validation.txt``)
    when both exist, else (None, None): one ``default.txt`` subset, split by ratio."""
    folder = root / LISTS
    found = {p.stem.lower(): p for p in folder.glob("*.txt")} if folder.is_dir() else {}
    val = next((found[s] for s in VAL_SUBSETS if s in found), None)
    if "train" in found and val is not None:
        return str(found["train"].relative_to(root)), str(val.relative_to(root))
    return None, None


def build_cvat_masks(root: PathLike, *, classes: Optional[Sequence[str]] = None, images: str = "JPEGImages",
                     masks: str = "SegmentationClass", labelmap: str = "labelmap.txt", ignore_index: int = 255,
                     split: Optional[str] = None, val_ratio: float = 0.2, seed: int = 0,
                     val_groups: Optional[Sequence[str]] = None, group_regex: Optional[str] = None,
                     train_list: Optional[PathLike] = None, val_list: Optional[PathLike] = None) -> DataSplits:
    """An unzipped CVAT "Segmentation mask 1.1" export -> DataSplits; class names and order come from
    labelmap.txt (``classes`` may reorder them). Split: the export's train/val subsets when it has both,
    else ``val_ratio`` + ``seed`` (or the folder format's list and group options). A mask colour the
    labelmap does not list is an error naming the file, the colour and its pixel count. Example::

        build_cvat_masks("task_roads-2024_08_01", val_ratio=0.2)
    """
    root = Path(root)
    if root.is_dir() and not (root / images).is_dir():
        raise fail(Problem("missing_path", str(root / images), (
            f"images folder {root / images}: no such folder; CVAT exports images only with 'Save images' "
            "ticked in the export dialog (or point data.images at them)")))
    palette = cvat_palette(root, labelmap, classes)
    if split is None and train_list is None and val_list is None and group_regex is None:
        train_list, val_list = default_lists(root)
    return build_folder(root, classes=palette.names, images=images, masks=masks, ignore_index=ignore_index,
                        split=split, val_ratio=val_ratio, seed=seed, val_groups=val_groups,
                        group_regex=group_regex, train_list=train_list, val_list=val_list, colors=palette)
