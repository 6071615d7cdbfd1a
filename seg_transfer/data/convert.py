"""Any readable dataset written in the toolkit's own layouts (``seg-transfer convert``), so that what training
sees can be looked at and versioned: segmentation as the ``folder`` format (images, palette-PNG masks of
the final class indices, train.txt / val.txt), detection as COCO JSON (``images/`` + ``annotations/
train.json``, ``val.json``, read by ``coco_boxes``), classification as ``imagefolder`` (one folder per
class, train.txt / val.txt). ``dataset.yaml`` beside them holds the ``data:`` block that reads them back.

Labels are written as the dataset gives them to training (label maps, colour palettes, LabelMe shapes,
YOLO lines already applied); image files are copied byte for byte (LabelMe's embedded images as PNG).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np
import yaml
from PIL import Image
from pycocotools import mask as mask_utils

from ..config import load_config, parse_override
from ..errors import ConfigError, unknown
from ..io import atomic_path, save_image, save_text
from ..viz import palette
from .classification import ImageFolderDataset
from .common import AnnotatedImages, DataSplits, InlineImage, PathLike, ref_name, scan
from .detection import BoxDataset
from .registry import DATASETS, build_dataset
from .segmentation import SegDataset

VOID = 255  # the ignore value of the written masks (VOC's void: its palette colour differs from every class's)


@dataclass
class Converted:
    """What ``convert`` wrote: the layout, the ``data:`` block that reads it back, the counts."""

    out: Path
    layout: str
    data: dict[str, Any]
    images: int
    train: int
    val: int


def source_block(source: str, words: Sequence[str] = ()) -> dict[str, Any]:
    """``CONFIG_OR_FORMAT KEY=VALUE ...`` -> a ``data:`` block: a config file's (the words are its overrides,
    ``data.root=...``), or ``{format: source}`` with the words as its options (``root=DIR``, or DIR alone)."""
    if Path(source).is_file() or Path(source).suffix.lower() in (".yaml", ".yml"):
        data = load_config(source, words).data
        if not data:
            raise ConfigError(f"{source}: no data: block to convert")
        return dict(data)
    if source not in DATASETS:
        raise unknown("format", source, DATASETS, where="convert: not a config file, and")
    block: dict[str, Any] = {"format": source}
    for word in words:
        if "=" not in word:
            if "root" in block:
                raise ConfigError(f"'{word}': the root is given already; give the format's options as key=value, "
                                  "e.g. val_ratio=0.2")
            block["root"] = word
            continue
        keys, value = parse_override(word)
        keys = keys[1:] if keys[0] == "data" and len(keys) > 1 else keys
        if len(keys) != 1:
            raise ConfigError(f"'{word}': give the format's options as key=value, e.g. root=/data/x val_ratio=0.2")
        block[keys[0]] = value
    return block


@dataclass
class _Names:
    """A file name per source item: its stem, numbered when another item already has it."""

    given: dict[tuple[str, ...], str] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)

    def get(self, key: tuple[str, ...], name: str) -> tuple[str, bool]:
        """(the name of ``key``, whether it is new)."""
        if key in self.given:
            return self.given[key], False
        base, k = name, 1
        while name.lower() in self.used:  # lower: two names must not meet on a case-insensitive disk
            k += 1
            name = f"{base}_{k}"
        self.used.add(name.lower())
        self.given[key] = name
        return name, True


Job = tuple[Any, int, str]  # (dataset, index, output name)


def _plan(splits: DataSplits, key: Callable[[Any, int], tuple[str, ...]], name: Callable[[Any, int], str]
          ) -> tuple[list[Job], dict[str, list[str]]]:
    """One job per distinct item (an item in both splits is written once) and each split's list of names."""
    names, jobs = _Names(), []
    lists: dict[str, list[str]] = {"train": [], "val": []}
    for side, split in (("train", splits.train), ("val", splits.val)):
        for i in range(len(split)):
            out_name, new = names.get(key(split, i), name(split, i))
            lists[side].append(out_name)
            if new:
                jobs.append((split, i, out_name))
    return jobs, lists


def copy_image(ref: Union[Path, InlineImage], folder: Path, name: str) -> str:
    """``ref`` into ``folder`` as ``name`` + its suffix (bytes as they are; an inline image as PNG) -> file name."""
    if isinstance(ref, InlineImage):
        file_name = f"{name}.png"
        save_image(Image.fromarray(ref.read()), folder / file_name)
        return file_name
    file_name = f"{name}{Path(ref).suffix}"
    with atomic_path(folder / file_name) as tmp:
        shutil.copyfile(ref, tmp)
    return file_name


def _key(split: AnnotatedImages, i: int) -> tuple[str, ...]:
    annotations = split.masks if isinstance(split, SegDataset) else getattr(split, "annotations")
    return str(split.images[i]), str(annotations[i])


def _split_keys(lists: dict[str, list[str]], train: str, val: str) -> dict[str, Any]:
    """The split options that read the lists back: ``split: all`` when train and val are the same items."""
    if set(lists["train"]) == set(lists["val"]):
        return {"split": "all"}
    return {train: "train.txt", val: "val.txt"}


def write_folder(splits: DataSplits, out: Path, progress: bool = True) -> dict[str, Any]:
    """Segmentation -> ``out/images``, ``out/masks`` (palette PNGs, ignored pixels 255), train.txt, val.txt."""
    classes = list(splits.classes)
    if len(classes) > VOID:
        raise ConfigError(f"convert: {len(classes)} classes do not fit 8-bit mask PNGs with 255 as the ignore value")
    jobs, lists = _plan(splits, _key, lambda split, i: ref_name(split.images[i]))
    colours = palette(256).tobytes()

    def write(job: Job) -> None:
        split, i, name = job
        mask = split.read_mask(i)  # label map, palette, shapes applied; labels checked
        img = Image.fromarray(np.where(mask == split.ignore_index, VOID, mask).astype(np.uint8))
        img.putpalette(colours)  # "P": opens in any viewer in VOC's colours, and reads back as indices
        save_image(img, out / "masks" / f"{name}.png")
        copy_image(split.images[i], out / "images", name)

    scan(write, jobs, "converting", progress)
    _write_lists(out, lists)
    return {"format": "folder", "root": str(out.resolve()), "classes": classes, "ignore_index": VOID,
            **_split_keys(lists, "train_list", "val_list")}


def write_coco(splits: DataSplits, out: Path, progress: bool = True) -> dict[str, Any]:
    """Detection -> ``out/images`` and ``out/annotations/{train,val}.json`` (COCO instances: boxes, crowd
    flags, RLE masks when the dataset has instance masks); categories 1..K are the classes after background."""
    jobs, lists = _plan(splits, _key, lambda split, i: ref_name(split.images[i]))
    has_masks = bool(getattr(splits.train, "has_masks", False) or getattr(splits.val, "has_masks", False))

    def write(job: Job) -> tuple[str, dict[str, Any]]:
        split, i, name = job
        height, width = split.image_shape(i, decode=False)
        target = split.read_target(i)
        return copy_image(split.images[i], out / "images", name), {"height": height, "width": width, **target}

    written = dict(zip((name for _, _, name in jobs), scan(write, jobs, "converting", progress)))
    ids = {name: k for k, name in enumerate(written, start=1)}
    categories = [{"id": k, "name": name, "supercategory": ""} for k, name in enumerate(splits.classes) if k > 0]
    next_id = 1
    for side in ("train", "val"):
        images, annotations = [], []
        for name in lists[side]:
            file_name, item = written[name]
            images.append({"id": ids[name], "file_name": file_name, "height": item["height"], "width": item["width"]})
            for j, (box, label) in enumerate(zip(item["boxes"], item["labels"])):
                x0, y0, x1, y1 = (float(v) for v in box)
                ann = {"id": next_id, "image_id": ids[name], "category_id": int(label), "bbox": [x0, y0, x1 - x0, y1 - y0],
                       "area": (x1 - x0) * (y1 - y0), "iscrowd": int(item["iscrowd"][j]), "segmentation": []}
                if "masks" in item:
                    rle = mask_utils.encode(np.asfortranarray(item["masks"][j].astype(np.uint8)))
                    ann["segmentation"] = {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
                    ann["area"] = float(mask_utils.area(rle))
                annotations.append(ann)
                next_id += 1
        save_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}),
                  out / "annotations" / f"{side}.json")
    return {"format": "coco_boxes", "root": str(out.resolve()), "images": "images",
            "annotations": "annotations/train.json", "val_images": "images", "val_annotations": "annotations/val.json",
            "masks": has_masks}


def write_imagefolder(splits: DataSplits, out: Path, progress: bool = True) -> dict[str, Any]:
    """Classification -> ``out/<class>/<file>`` (files copied), train.txt, val.txt of paths relative to ``out``."""
    def key(split: ImageFolderDataset, i: int) -> tuple[str, ...]:
        return (str(split.files[i]),)

    def name(split: ImageFolderDataset, i: int) -> str:
        inside = Path(split.names[i]).parts[1:] or (split.files[i].name,)  # the path within its class folder
        return str(Path(split.classes[split.labels[i]], *inside).with_suffix(""))

    jobs, lists = _plan(splits, key, name)
    files: dict[str, str] = {}

    def write(job: Job) -> tuple[str, str]:
        split, i, out_name = job
        target = out / out_name
        return out_name, str(Path(out_name).parent / copy_image(split.files[i], target.parent, target.name))

    files.update(scan(write, jobs, "converting", progress))
    lists = {side: [Path(files[n]).as_posix() for n in names] for side, names in lists.items()}
    _write_lists(out, lists)
    return {"format": "imagefolder", "root": str(out.resolve()), "classes": list(splits.classes),
            **_split_keys(lists, "train_list", "val_list")}


def _write_lists(out: Path, lists: Mapping[str, Sequence[str]]) -> None:
    for side, names in lists.items():
        save_text("".join(f"{n}\n" for n in names), out / f"{side}.txt")


def convert(data: Union[Mapping[str, Any], DataSplits], out: PathLike, *, progress: bool = True,
            overwrite: bool = False) -> Converted:
    """Build ``data`` (a ``data:`` block or DataSplits) and write it to ``out`` in the toolkit's layout for its
    task, with ``out/dataset.yaml`` holding the ``data:`` block that reads it back."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ConfigError(f"--out {out}: exists and is not empty; give a new folder (or --overwrite to write into it)")
    splits = build_dataset(data) if isinstance(data, Mapping) else data
    if isinstance(splits.train, SegDataset):
        layout, block = "folder", write_folder(splits, out, progress)
    elif isinstance(splits.train, BoxDataset):
        layout, block = "coco_boxes", write_coco(splits, out, progress)
    elif isinstance(splits.train, ImageFolderDataset):
        layout, block = "imagefolder", write_imagefolder(splits, out, progress)
    else:
        raise ConfigError(f"convert: no layout for {type(splits.train).__name__} datasets")
    save_text(yaml.safe_dump({"data": block}, sort_keys=False), out / "dataset.yaml")
    items = {str(p) for split in splits for p in getattr(split, "images", getattr(split, "files", []))}
    return Converted(out, layout, block, len(items), len(splits.train), len(splits.val))
