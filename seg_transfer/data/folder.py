"""The ``folder`` format: an images folder and a masks folder, paired by file name -> segmentation data."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

from ..errors import ConfigError
from .colors import ColorsOption, parse_colors
from .common import DataSplits, PathLike
from .problems import Problem, report
from .segmentation import check_classes, check_label_map, make_splits
from .split import split_mask_folders


def build_folder(root: PathLike, *, classes: Optional[Sequence[str]] = None, images: str = "images",
                 masks: str = "masks", mask_suffix: str = "", ignore_index: int = 255,
                 label_map: Optional[Mapping[int, int]] = None, split: Optional[str] = None,
                 val_ratio: float = 0.2, seed: int = 0, val_groups: Optional[Sequence[str]] = None,
                 group_regex: Optional[str] = None, train_list: Optional[PathLike] = None,
                 val_list: Optional[PathLike] = None, colors: ColorsOption = None) -> DataSplits:
    """An images folder and a masks folder under ``root``, paired by file name -> DataSplits.

    Masks are single-channel PNGs of class indices named like their image (plus ``mask_suffix``).
    ``classes`` names the classes in index order; ``label_map`` ({src: dst}) rewrites mask values
    first, e.g. ``{11: 255}`` turns CamVid's void into the ignore index. The split: ``val_ratio`` +
    ``seed``; ``train_list`` / ``val_list`` files of names; or ``group_regex`` (its first group is the
    key, e.g. ``'^(\\w+?)_'``) with ``val_groups`` or ``val_ratio`` over groups. RGB colour masks are read
    through ``colors`` (``[[r, g, b], ...]`` in class order, ``{index: [r, g, b]}``, or a labelmap.txt,
    whose names then are the classes), or through the VOC colormap when their colours are its. Example
    (CamVid)::

        build_folder("CamVid", images="train", masks="trainannot", classes=[...11 names...],
                     label_map={11: 255}, group_regex=r"^(\\w+?)_", val_groups=["0016E5"])
    """
    root = Path(root)
    palette = parse_colors(colors, root)
    if classes is None and palette is not None and palette.names is not None:
        classes = palette.names
    elif classes is None:
        raise ConfigError("data: format folder needs classes (the class names in index order), or a "
                          "labelmap.txt in colors that names them")
    classes = check_classes(classes, ignore_index)
    if palette is not None and palette.names is not None and len(palette.names) != len(classes):
        raise ConfigError(f"data.classes has {len(classes)} names but {palette.source} has {len(palette.names)} "
                          f"({', '.join(palette.names)}); leave classes out to use the labelmap's")
    label_map = check_label_map(label_map)
    image_files, train, val, masks_of, problems = split_mask_folders(
        root, images, masks, mask_suffix, split=split, val_ratio=val_ratio, seed=seed, val_groups=val_groups,
        group_regex=group_regex, train_list=train_list, val_list=val_list)
    used = [m for m in (masks_of[i] for i in sorted({*train, *val})) if m is not None]
    problems += [Problem("lossy_mask", str(m), (
        f"mask {m} is a JPEG: lossy compression changes class indices along edges; "
        "save masks as PNG")) for m in used if m.suffix.lower() in (".jpg", ".jpeg")]
    report(problems)
    bad = {i for i, m in enumerate(masks_of) if m is None or m.suffix.lower() in (".jpg", ".jpeg")}
    return make_splits(image_files, masks_of, [i for i in train if i not in bad],
                       [i for i in val if i not in bad], classes=classes, ignore_index=ignore_index,
                       label_map=label_map, where=str(root), colors=palette)
