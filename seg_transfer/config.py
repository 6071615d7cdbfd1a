"""Typed config dataclasses and their validation; imports no torch so ``--help`` stays instant."""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass
from typing import Any, Mapping, Optional, TypeVar, Union

from .errors import ConfigError, unknown

T = TypeVar("T")


@dataclass
class ModelConfig:
    """The ``model:`` block; its fields are exactly ``create_model``'s keyword arguments.

    Either ``name`` (a torchvision zoo model) or ``backbone`` + ``neck`` + ``head`` (an assembled one).
    Weights specs: ``"DEFAULT"``, a torchvision enum member name, ``None`` (random init) or a ``.pth`` path.
    """

    name: Optional[str] = None
    backbone: Optional[str] = None
    neck: str = "none"
    head: Optional[str] = None
    num_classes: Optional[int] = None
    classes: Optional[list[str]] = None
    weights: Optional[str] = "DEFAULT"
    backbone_weights: Optional[str] = "DEFAULT"
    output_stride: Optional[int] = None
    aux_loss: Optional[bool] = None
    neck_channels: int = 256
    resize: Optional[int] = None


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp``; return it (ints accepted where floats are)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else
                          f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return [_check(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        key_tp, val_tp = typing.get_args(tp) or (Any, Any)
        return {_check(k, key_tp, f"{where}.{k}"): _check(v, val_tp, f"{where}.{k}")
                for k, v in value.items()}
    if tp is Any:
        return value
    if tp is str and isinstance(value, os.PathLike):
        return os.fspath(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected int, got {value!r}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return value


def from_dict(cls: type[T], data: Optional[Mapping[str, Any]], where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types fail naming the key path."""
    if data is None:
        data = {}
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in hints:
            raise unknown("key", path, [f"{where}.{n}" if where else n for n in names])
        kwargs[key] = _check(value, hints[key], path)
    return cls(**kwargs)


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain-dict form of a config dataclass (for YAML and checkpoints)."""
    return dataclasses.asdict(obj)


def load_yaml(path: str) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a syntax error is one ConfigError naming file and line."""
    import yaml

    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such config file")
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} invalid YAML ({getattr(err, 'problem', err)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_model_config(path: str) -> ModelConfig:
    """The ``model:`` block of a YAML config file."""
    data = load_yaml(path)
    if "model" not in data:
        raise ConfigError(f"{path}: no 'model:' block (keys found: {', '.join(map(str, data)) or 'none'})")
    return from_dict(ModelConfig, data["model"], "model")
