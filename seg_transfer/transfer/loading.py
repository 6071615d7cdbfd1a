"""Partial loading: every tensor whose name and shape match is loaded, the rest reported by part
(``TransferReport``: loaded, skipped with both shapes, missing, unexpected)."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional

import torch
from torch import nn

from ..errors import ConfigError
from .freeze import PART_NAMES, module_parts


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(s) for s in t.shape)


@dataclass
class TransferReport:
    """What ``load_matching`` did with each tensor name."""

    loaded: list[str] = field(default_factory=list)
    skipped: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)  # name, source, model
    missing: list[str] = field(default_factory=list)      # in the model only: keeps its fresh initialisation
    unexpected: list[str] = field(default_factory=list)   # in the source only: ignored
    parts: dict[str, str] = field(default_factory=dict)   # tensor name -> part (stem, layer1, ..., head, aux)
    source: str = ""                                      # where the weights came from
    class_aware: Optional[list[str]] = None               # classes whose classifier rows came from the source

    def _part(self, name: str) -> str:
        return self.parts.get(name) or name.split(".")[0]

    def by_part(self) -> OrderedDict[str, dict[str, int]]:
        table: OrderedDict[str, dict[str, int]] = OrderedDict()
        for kind, names in (("loaded", self.loaded), ("skipped", [s[0] for s in self.skipped]),
                            ("missing", self.missing), ("unexpected", self.unexpected)):
            for name in names:
                table.setdefault(self._part(name), dict.fromkeys(
                    ("loaded", "skipped", "missing", "unexpected"), 0))[kind] += 1
        order = {part: i for i, part in enumerate(dict.fromkeys(self.parts.values()))}  # the model's order
        return OrderedDict(sorted(table.items(), key=lambda kv: order.get(kv[0], len(order))))

    def format(self, max_names: int = 10) -> str:
        """Counts, a per-part table, then the names that were not loaded (at most ``max_names`` of each kind)."""
        total = len(self.loaded) + len(self.skipped) + len(self.missing)
        lines = [f"transfer from {self.source or 'source weights'}: "
                 f"loaded {len(self.loaded)} of the model's {total} tensors; {len(self.skipped)} skipped "
                 f"(shape mismatch), {len(self.missing)} missing from the source (re-initialised), "
                 f"{len(self.unexpected)} unexpected (ignored)"]
        table = self.by_part()
        header = ("part", "loaded", "skipped", "missing", "unexpected")
        rows = [(part, *(str(c[k]) if c[k] else "" for k in header[1:])) for part, c in table.items()]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
        for r in [header, *rows]:
            lines.append("  " + "  ".join([r[0].ljust(widths[0])] +
                                          [c.rjust(w) for c, w in zip(r[1:], widths[1:])]).rstrip())

        def names(title: str, items: list[str]) -> None:
            if items:
                lines.append(f"{title}:")
                lines.extend(f"  {item}" for item in items[:max_names])
                if len(items) > max_names:
                    lines.append(f"  ... and {len(items) - max_names} more")

        names("skipped (shape mismatch)", [f"{n}: source {list(s)} vs model {list(m)}" for n, s, m in self.skipped])
        names("missing (re-initialised)", self.missing)
        names("unexpected (ignored)", self.unexpected)
        if self.class_aware is not None:
            lines.append("class-aware init: " + (", ".join(self.class_aware) if self.class_aware else
                                                 "no class name matches the source's"))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every name, the shapes of the skipped ones and the per-part counts."""
        return {
            "source": self.source,
            "class_aware_init": self.class_aware,
            "counts": {"loaded": len(self.loaded), "skipped": len(self.skipped),
                       "missing": len(self.missing), "unexpected": len(self.unexpected)},
            "by_part": dict(self.by_part()),
            "loaded": list(self.loaded),
            "skipped": [{"name": n, "source_shape": list(s), "model_shape": list(m)} for n, s, m in self.skipped],
            "missing": list(self.missing),
            "unexpected": list(self.unexpected),
        }


def parts_of_names(model: nn.Module, names: Iterable[str]) -> dict[str, str]:
    try:
        owner = module_parts(model)
    except ConfigError:  # no recognisable backbone: group by top-level module
        owner = {}
    out = {}
    for name in names:
        path = name.rpartition(".")[0]
        while path and path not in owner:  # a source-only tensor: its nearest module that exists here
            path = path.rpartition(".")[0]
        top = name.split(".")[0]
        out[name] = owner[path] if path else PART_NAMES.get(top, top)
    return out


def load_matching(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> TransferReport:
    """Load every tensor of ``state_dict`` whose name and shape match the model's; report the rest."""
    own = model.state_dict()
    report = TransferReport()
    matching = {}
    for name, value in state_dict.items():
        if name not in own:
            report.unexpected.append(name)
        elif _shape(own[name]) != _shape(value):
            report.skipped.append((name, _shape(value), _shape(own[name])))
        else:
            matching[name] = value
            report.loaded.append(name)
    report.missing = [name for name in own if name not in state_dict]
    model.load_state_dict(matching, strict=False)
    report.parts = parts_of_names(model, [*own, *report.unexpected])
    return report


