"""Colour masks: RGB masks whose colours stand for classes (the VOC colormap, a ``colors:`` list, CVAT's
``labelmap.txt``) turned into class indices; the one place that maps a colour to an index.

Masks are big (a 550x850 photo is 470k pixels), so the lookup packs each pixel's RGB into one int32 and
finds it among the palette's sorted keys with ``np.searchsorted``: one vectorised pass per mask.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from ..errors import ConfigError
from ..viz import palette as voc_colormap
from .problems import Problem, fail, say_once

ColorsOption = Union[Sequence[Sequence[int]], Mapping[int, Sequence[int]], str, os.PathLike, "Palette", None]


def pack(rgb: np.ndarray) -> np.ndarray:
    """... x 3 uint8 colours -> ... int32 keys ``r << 16 | g << 8 | b``."""
    rgb = np.asarray(rgb)
    return (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2].astype(np.int32)


def unpack(keys: np.ndarray) -> np.ndarray:
    """int32 keys -> N x 3 uint8 colours (``pack``'s inverse)."""
    keys = np.asarray(keys, dtype=np.int64)
    return np.stack([(keys >> 16) & 255, (keys >> 8) & 255, keys & 255], axis=-1).astype(np.uint8)


def rgb_text(colour: Sequence[int]) -> str:
    """(r, g, b) as ``'(128, 0, 0)'``."""
    return "(" + ", ".join(str(int(v)) for v in colour) + ")"


class Palette:
    """Colours and the class index each stands for; ``names`` when the source names them (labelmap.txt)."""

    def __init__(self, colours: Any, indices: Any, source: str, names: Optional[Sequence[str]] = None):
        self.colours = np.asarray(colours, dtype=np.uint8).reshape(-1, 3)
        self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        self.source, self.names = source, list(names) if names is not None else None
        keys = pack(self.colours)
        order = np.argsort(keys, kind="stable")
        # uint8 indices when they fit: the mask checks then count values with a bincount, not np.unique
        compact = np.uint8 if len(self.indices) and 0 <= self.indices.min() and self.indices.max() <= 255 else np.int64
        self.keys, self.values = keys[order], self.indices[order].astype(compact)
        same = np.flatnonzero(self.keys[1:] == self.keys[:-1])
        if len(same):
            k = int(same[0])
            first, second = sorted((int(order[k]), int(order[k + 1])))
            raise ConfigError(f"{source}: entries {first} and {second} share the colour "
                              f"{rgb_text(self.colours[first])}; each colour must name one class")

    def __len__(self) -> int:
        return len(self.keys)

    def lookup(self, rgb: np.ndarray) -> tuple[Optional[np.ndarray], np.ndarray, np.ndarray]:
        """HxWx3 uint8 -> (HxW indices (uint8 when they fit) or None, unknown colours M x 3, their pixel counts),
        the unknown ones most frequent first."""
        packed = pack(rgb)
        pos = np.minimum(np.searchsorted(self.keys, packed), len(self.keys) - 1)
        hit = self.keys[pos] == packed
        if hit.all():
            return self.values[pos], np.zeros((0, 3), np.uint8), np.zeros(0, np.int64)
        keys, counts = np.unique(packed[~hit], return_counts=True)
        order = np.argsort(-counts, kind="stable")
        return None, unpack(keys[order]), counts[order]


def voc_palette() -> Palette:
    """The Pascal VOC colormap: colour of index i -> i (0 background, 1..20 the classes, 255 the void border)."""
    return Palette(voc_colormap(256), np.arange(256), "the VOC colormap")


VOC = voc_palette()


def read_labelmap(path: Union[str, os.PathLike]) -> Palette:
    """CVAT / Datumaro ``labelmap.txt`` (``name:r,g,b:parts:actions`` per line, ``#`` comments) -> Palette,
    line order giving the indices; a bad line is a DataError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise fail(Problem("missing_path", str(path), f"labelmap {path}: no such file"))
    names: list[str] = []
    colours: list[list[int]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, rest = line.partition(":")
        colour = rest.partition(":")[0].strip()
        try:
            values = [int(v) for v in colour.split(",")]
            if len(values) != 3 or not all(0 <= v <= 255 for v in values):
                raise ValueError
        except ValueError:
            raise fail(Problem("unreadable", str(path), (
                f"labelmap {path}, line {number}: '{line.strip()}' is not 'name:r,g,b::' with r, g, b "
                "from 0 to 255"))) from None
        names.append(name.strip())
        colours.append(values)
    if not names:
        raise fail(Problem("unreadable", str(path), f"labelmap {path}: no 'name:r,g,b::' lines"))
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise fail(Problem("unreadable", str(path), f"labelmap {path}: duplicate names {', '.join(dupes)}"))
    return Palette(colours, np.arange(len(names)), f"labelmap {path}", names)


def _triple(value: Any, where: str) -> list[int]:
    if (isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)):
        raise ConfigError(f"{where}: expected an RGB triple [r, g, b] of integers 0-255, got {value!r}")
    return list(value)


def parse_colors(colors: ColorsOption, root: Optional[Path] = None) -> Optional[Palette]:
    """The ``colors:`` option -> Palette: a list of RGB triples (index = position), a mapping
    {index: [r, g, b]} (e.g. ``255: [224, 224, 192]`` for a void colour), or a labelmap.txt path
    (relative to ``root``)."""
    if colors is None or isinstance(colors, Palette):
        return colors
    if isinstance(colors, (str, os.PathLike)):
        path = Path(colors)
        return read_labelmap(path if path.is_absolute() or root is None else root / path)
    if isinstance(colors, Mapping):
        items = list(colors.items())
        for index, _ in items:
            if not isinstance(index, int) or isinstance(index, bool) or index < 0:
                raise ConfigError(f"data.colors: keys are class indices (integers >= 0), got {index!r}")
        return Palette([_triple(c, f"data.colors[{i}]") for i, c in items], [i for i, _ in items], "data.colors")
    if isinstance(colors, Sequence) and len(colors):
        return Palette([_triple(c, f"data.colors[{i}]") for i, c in enumerate(colors)], np.arange(len(colors)),
                       "data.colors")
    raise ConfigError(f"data.colors: expected a list of [r, g, b] triples (index order), a mapping "
                      f"{{index: [r, g, b]}} or a labelmap.txt path, got {colors!r}")


def _listed(colours: np.ndarray, counts: np.ndarray, limit: int = 4) -> str:
    shown = ", ".join(f"{rgb_text(c)} ({int(n)} pixels)" for c, n in zip(colours[:limit], counts[:limit]))
    return shown + (f", ... ({len(colours)} colours)" if len(colours) > limit else "")


def colour_indices(rgb: np.ndarray, *, name: str, colors: Optional[Palette], num_classes: int,
                   channels: int = 3) -> tuple[Optional[np.ndarray], Optional[Problem]]:
    """An RGB mask -> (int64 class indices, None), or (None, the problem naming file, colour and pixel count).

    With ``colors`` every colour must be one of its colours. Without, a mask whose colours are all VOC
    colormap colours of the classes (indices below ``num_classes``, or 255, VOC's void) is read with it,
    said once per mask folder; any other RGB mask is the ``rgb_mask`` error. (Every colour with channels
    in steps of 64 is *some* VOC colour, CamVid's road is VOC's index 21: the class range tells them apart.)
    """
    palette = colors or VOC
    indices, unknown, counts = palette.lookup(rgb)
    outside: list[int] = []
    if indices is not None and colors is None:
        outside = [int(v) for v in np.flatnonzero(np.bincount(indices.ravel(), minlength=256)) if num_classes <= v < 255]
    if indices is not None and not outside:
        if colors is None:
            say_once(f"data: masks in {os.path.dirname(name) or '.'} are RGB colours of the VOC colormap; "
                     "read as class indices (data.colors names another palette)")
        return indices, None
    if colors is None:
        found, found_counts = np.unique(pack(rgb), return_counts=True)
        order = np.argsort(-found_counts, kind="stable")
        voc = (f"; they are VOC colormap colours, but of indices {', '.join(map(str, outside[:6]))} beyond the "
               f"{num_classes} classes" if outside else "")
        return None, Problem("rgb_mask", name, (
            f"mask {name} is RGB ({channels} channels): save class indices as a single-channel PNG (mode L "
            "or P), one index per pixel, not colours; or name the colours' classes with data.colors ([r, g, b] "
            "per class in index order, or a labelmap.txt); "
            f"colours found: {', '.join(rgb_text(c) for c in unpack(found[order][:6]))}"
            + (f", ... ({len(found)} colours)" if len(found) > 6 else "") + voc))
    first = unknown[0]
    return None, Problem("unknown_colour", name, (
        f"mask {name}: colour {rgb_text(first)} ({int(counts[0])} pixels) is not in {palette.source}"
        + (f"; also {_listed(unknown[1:], counts[1:])}" if len(unknown) > 1 else "")
        + "; add it there, or repaint those pixels (anti-aliased edges from a paint program?)"))
