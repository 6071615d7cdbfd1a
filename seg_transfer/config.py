"""Typed config dataclasses and their validation; imports no torch so ``--help`` stays instant."""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence, TypeVar, Union

from .errors import ConfigError, unknown

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


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
    # segmentation: one sigmoid channel, foreground vs background (num_classes: 1 says the same)
    binary: Optional[bool] = None
    weights: Optional[str] = "DEFAULT"
    backbone_weights: Optional[str] = "DEFAULT"
    output_stride: Optional[int] = None
    aux_loss: Optional[bool] = None
    neck_channels: int = 256
    resize: Optional[int] = None
    # head: classifier only: global pooling (avg, max, avgmax), dropout, an optional hidden layer's width
    pool: Optional[str] = None
    dropout: Optional[float] = None
    hidden: Optional[int] = None


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


def from_dict(cls: type[T], data: Union[T, Mapping[str, Any], None], where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types fail naming the key path."""
    if data is None:
        data = {}
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = list(fields)
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in hints:
            raise unknown("key", path, [f"{where}.{n}" if where else n for n in names])
        aliases = fields[key].metadata.get("aliases") or {}
        spelling = value.lower() if isinstance(value, str) else value
        if isinstance(value, (str, bool)) and spelling in aliases:
            value = aliases[spelling]
        kwargs[key] = _check(value, hints[key], path)
        low = fields[key].metadata.get("min")
        if low is not None and kwargs[key] is not None and kwargs[key] < low:
            raise ConfigError(f"{path}: expected at least {low}, got {kwargs[key]!r}")
        choices = fields[key].metadata.get("choices")
        if choices and kwargs[key] is not None:
            for i, item in enumerate(kwargs[key] if isinstance(kwargs[key], list) else [kwargs[key]]):
                if item not in choices:
                    raise unknown("value", f"{item}", choices, f"{path}[{i}]" if isinstance(kwargs[key], list) else path)
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


# ----------------------------------------------------------------------------------- training config
# Each value set once, here in the torch-free layer; the code that acts on a value imports its set.
OPTIMIZERS = ("sgd", "adamw")
SCHEDULERS = ("poly", "cosine", "step", "none")
# auto: bf16 on CUDA devices that support it, else fp16 with a grad scaler; off on the CPU (measured slower)
AMP_MODES = ("auto", "off", "bf16", "fp16")
# What YAML and overrides may also write for amp: YAML reads off/no/false as False, and fp32 means no AMP.
AMP_ALIASES = {False: "off", "false": "off", "fp32": "off", "none": "off", "no": "off", True: "auto"}
FREEZE_STRATEGIES = ("feature_extraction", "partial", "full")
LR_SCALINGS = ("none", "linear", "sqrt")
LOGGER_NAMES = ("csv", "tensorboard")
# augment.backend: cpu = albumentations per image in the loader; device = the built-in recipe on whole
# batches on the training device (data.device_augment); auto = device on CUDA for the built-in recipes
AUGMENT_BACKENDS = ("auto", "cpu", "device")
# cache.images: decode every image once and keep it as uint8 in RAM, or on the training device; auto = ram
# when the decoded split fits (cache.max_gb, half the free memory; data.memory.auto_images)
IMAGE_CACHES = ("auto", "none", "ram", "device")


def _choice(default: Any, *choices: Any, aliases: Optional[Mapping[Any, Any]] = None) -> Any:
    return field(default=default, metadata={"choices": choices, "aliases": aliases or {}})


def _at_least(default: int, low: int) -> Any:
    return field(default=default, metadata={"min": low})


@dataclass
class AugmentConfig:
    """``augment:``: albumentations steps as ``[{name: HorizontalFlip, p: 0.5}, ...]``; None = defaults."""

    crop_size: int = 480
    train: Optional[list[dict[str, Any]]] = None
    val: Optional[list[dict[str, Any]]] = None
    backend: str = _choice("auto", *AUGMENT_BACKENDS)


@dataclass
class FreezeConfig:
    """``freeze:``: which backbone stages train (stage names: stem, layer1..layer4)."""

    strategy: str = _choice("full", *FREEZE_STRATEGIES)
    stages: Optional[int] = None
    unfreeze_from: Optional[str] = None
    bn: bool = True
    schedule: dict[int, str] = field(default_factory=dict)
    class_aware_init: bool = True


@dataclass
class TrainConfig:
    """``train:``: optimisation, loss and run control."""

    epochs: int = 30
    batch_size: int = _at_least(8, 1)
    val_batch_size: int = 1
    optimizer: str = _choice("sgd", *OPTIMIZERS)
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    backbone_lr_mult: float = 1.0
    scheduler: str = _choice("poly", *SCHEDULERS)
    warmup_epochs: float = 0.0
    step_epochs: int = 10
    gamma: float = 0.1
    loss: Any = None  # None: the task's default (ce; binary segmentation: bce + dice)
    class_weights: Any = None
    aux_weight: float = 0.5
    label_smoothing: float = 0.0  # classification cross-entropy
    threshold: float = 0.5  # binary segmentation: foreground where the sigmoid is >= this (val metrics, plots)
    amp: str = _choice("auto", *AMP_MODES, aliases=AMP_ALIASES)
    grad_clip: Optional[float] = None
    accumulate: int = _at_least(1, 1)
    seed: int = 0
    deterministic: bool = False
    patience: Optional[int] = None
    # DataLoader worker processes; None (auto): 0 on the CPU (the decoding shares its cores with the step),
    # min(8, cores - 1) on CUDA
    workers: Optional[int] = field(default=None, metadata={"min": 0})
    compile: bool = False  # torch.compile the module each step runs (no default gain measured: RESULTS.md)
    device: str = "auto"
    init_from: Optional[str] = None
    # a quick trial (--limit-train N): train on N items of the train split, a fixed random subset (the same
    # for every train.seed, as cv's); val is untouched
    limit_train: Optional[int] = field(default=None, metadata={"min": 1})
    precise_bn: int = _at_least(0, 0)  # before each evaluation, recompute BatchNorm statistics over this many train batches
    # NHWC convolutions; None: on for segmentation/classification on the CPU (measured faster), else off
    channels_last: Optional[bool] = None
    val_interval: int = _at_least(1, 1)  # evaluate every N epochs (and always after the last): screening runs skip the rest
    # torchrun: the learning rate for N processes is lr x N (linear), lr x sqrt(N) (sqrt) or lr (none)
    lr_scaling: str = _choice("none", *LR_SCALINGS)
    sync_bn: bool = False  # torchrun on CUDA: BatchNorm statistics over the global batch (SyncBatchNorm)
    # where per-step/per-epoch figures go: csv (metrics.csv), tensorboard (event files; extra [tensorboard])
    loggers: list[str] = field(default_factory=lambda: ["csv"], metadata={"choices": LOGGER_NAMES})


@dataclass
class CacheConfig:
    """``cache:``: decoded images kept in memory (``images``); neck+head trained on stored backbone features
    when the backbone is wholly frozen (``enabled``); ``max_gb`` caps either."""

    images: str = _choice("auto", *IMAGE_CACHES)
    enabled: Optional[bool] = None
    copies: int = 1
    dtype: str = _choice("float32", "float32", "float16")
    max_gb: float = 8.0


@dataclass
class SelfTrainConfig:
    """``selftrain:``: pseudo-labelled images from ``unlabelled`` (a folder, searched recursively) join
    segmentation and classification fine-tuning, FixMatch's way: the model's own prediction on a weak view
    (the train recipe) is the target of a strong view (+ colour jitter, grey, blur, cutout) wherever its
    confidence reaches ``threshold``; the rest is ignored. ``weight``: the unlabelled loss's weight;
    ``ratio``: unlabelled images per labelled image in a step; ``start_epoch``: epochs of labelled-only
    training before pseudo-labels start (a random-init model's first guesses are noise)."""

    unlabelled: Optional[str] = None
    threshold: float = 0.9
    weight: float = 1.0
    ratio: int = _at_least(1, 1)
    start_epoch: int = _at_least(0, 0)

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"selftrain.threshold: expected a confidence in (0, 1], got {self.threshold!r}")
        if self.weight < 0:
            raise ConfigError(f"selftrain.weight: expected a weight >= 0, got {self.weight!r}")


@dataclass
class OutputConfig:
    """``output:``: where the run folder goes."""

    dir: str = "runs"
    name: Optional[str] = None
    num_predictions: int = 4


@dataclass
class Config:
    """A whole fine-tuning run; ``data`` is the dataset builder's keyword arguments (``format`` picks it)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: dict[str, Any] = field(default_factory=dict)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    selftrain: SelfTrainConfig = field(default_factory=SelfTrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


# ----------------------------------------------------------------------------------- pretrain config
# pretrain.method: simclr (image-level contrastive), vicreg (image-level, no negatives), pixcontrast (dense:
# contrast of feature-map cells at the same image point in two views, plus simclr's image-level term)
SSL_METHODS = ("simclr", "vicreg", "pixcontrast")


@dataclass
class PretrainModelConfig:
    """``model:`` of ``seg-transfer pretrain``: the backbone (``models --backbones``) and its starting
    weights (None: random init; DEFAULT or a torchvision entry: continue from ImageNet on your images)."""

    backbone: str = "resnet18"
    weights: Optional[str] = None


@dataclass
class UnlabelledData:
    """``data:`` of ``seg-transfer pretrain``: every image under ``root`` (recursively), or the files
    ``list`` names (a text file, one path per line, relative to ``root``)."""

    root: str = ""
    list: Optional[str] = None


@dataclass
class PretrainConfig:
    """``pretrain:``: the method, its views (``image_size`` crops of at least ``min_scale`` of the image
    decoded at ``load_size``), optimisation (AdamW, cosine after a linear warmup) and the k-NN monitor
    (``monitor``: a labelled ``data:`` block, classification or segmentation)."""

    method: str = _choice("simclr", *SSL_METHODS)
    epochs: int = _at_least(100, 1)
    batch_size: int = _at_least(64, 2)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    image_size: int = _at_least(96, 32)
    load_size: Optional[int] = field(default=None, metadata={"min": 32})  # None: 1.5 x image_size
    min_scale: float = 0.2
    color: float = 0.4  # brightness/contrast/saturation jitter strength
    grayscale: float = 0.2  # probability
    temperature: float = 0.1  # simclr, pixcontrast
    projection_dim: int = _at_least(128, 1)
    hidden_dim: int = _at_least(512, 1)
    dense_weight: float = 0.5  # pixcontrast: dense term's share (the image-level term has the rest)
    monitor: Optional[dict[str, Any]] = None
    knn_k: int = _at_least(20, 1)
    monitor_every: int = _at_least(1, 1)  # epochs between k-NN evaluations (and always the last)
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    amp: str = _choice("auto", *AMP_MODES, aliases=AMP_ALIASES)
    workers: Optional[int] = field(default=None, metadata={"min": 0})
    loggers: list[str] = field(default_factory=lambda: ["csv"], metadata={"choices": LOGGER_NAMES})


@dataclass
class PretrainRunConfig:
    """A whole ``seg-transfer pretrain`` run."""

    model: PretrainModelConfig = field(default_factory=PretrainModelConfig)
    data: UnlabelledData = field(default_factory=UnlabelledData)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, anything else in ``over`` replaces."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(out.get(key), dict) and isinstance(value, Mapping) \
            else value
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'train.epochs=3'`` -> (['train', 'epochs'], 3); values are read as YAML (``null``, lists...)."""
    import yaml

    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{text}': expected key.path=value, e.g. train.epochs=3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise ConfigError(f"override '{text}': {part} is not a mapping")
            node = node[part]
        node[path[-1]] = value
    return data


def _load_data(path: str, overrides: Sequence[str]) -> dict[str, Any]:
    data = load_yaml(path)
    base = data.pop("_base_", None)
    if base is not None:
        base_path = os.path.join(os.path.dirname(os.path.abspath(path)), str(base))
        base_data = load_yaml(base_path)
        if "_base_" in base_data:
            raise ConfigError(f"{base_path}: _base_ inside a base config: one level of inheritance only")
        data = _merge(base_data, data)
    return apply_overrides(data, overrides)


def load_config(path: str, overrides: Sequence[str] = ()) -> Config:
    """YAML (with one level of ``_base_: other.yaml``) + ``key.path=value`` overrides -> Config."""
    return from_dict(Config, _load_data(path, overrides))


def load_pretrain_config(path: str, overrides: Sequence[str] = ()) -> PretrainRunConfig:
    """``seg-transfer pretrain``'s config, read as ``load_config`` reads finetune's; ``data.root`` is required."""
    cfg = from_dict(PretrainRunConfig, _load_data(path, overrides))
    if not cfg.data.root:
        raise ConfigError(f"{path}: data.root: the folder of unlabelled images is required")
    if not 0 < cfg.pretrain.min_scale <= 1:
        raise ConfigError(f"pretrain.min_scale: expected a share of the image in (0, 1], got {cfg.pretrain.min_scale}")
    return cfg


def is_local_spec(spec: Any) -> bool:
    """A weights spec that names a file (``*.pth``, ``*.pt`` or a path with a separator), not a torchvision entry."""
    return spec is not None and (isinstance(spec, os.PathLike)
                                 or str(spec).endswith((".pth", ".pt")) or os.sep in str(spec))


def absolute_paths(cfg: Config) -> Config:
    """``cfg`` with every path it reads made absolute (from the working directory), so that it reruns from
    any folder: ``data.root``, ``train.init_from``, ``selftrain.unlabelled``, and ``model.weights`` /
    ``model.backbone_weights`` when they name files. Every data format reads its other paths (images,
    masks, list files, labelmap...) relative to ``data.root``, so they follow it. ``output.dir`` stays as
    given: where a rerun writes is the rerun's choice."""
    init, pool = cfg.train.init_from, cfg.selftrain.unlabelled
    return dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, weights=_absolute_weights(cfg.model.weights),
                                       backbone_weights=_absolute_weights(cfg.model.backbone_weights)),
        data=_absolute_root(cfg.data),
        train=dataclasses.replace(cfg.train, init_from=os.path.abspath(init) if init else init),
        selftrain=dataclasses.replace(cfg.selftrain, unlabelled=os.path.abspath(pool) if pool else pool))


def _absolute_weights(spec: Optional[str]) -> Optional[str]:
    if spec is None or not is_local_spec(spec):
        return spec
    return os.path.abspath(os.path.expanduser(spec))  # ~ expanded, as weights.resolve reads it


def _absolute_root(data: dict[str, Any]) -> dict[str, Any]:
    root = data.get("root")
    return {**data, "root": os.path.abspath(root)} if isinstance(root, (str, os.PathLike)) else data


def pretrain_absolute_paths(cfg: PretrainRunConfig) -> PretrainRunConfig:
    """``absolute_paths`` for a pretrain config: ``data.root``, ``pretrain.monitor``'s root, local weights."""
    monitor = cfg.pretrain.monitor
    return dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, weights=_absolute_weights(cfg.model.weights)),
        data=dataclasses.replace(cfg.data, root=os.path.abspath(cfg.data.root)),
        pretrain=dataclasses.replace(cfg.pretrain, monitor=_absolute_root(monitor) if monitor else monitor))


def dump_config(cfg: Union[Config, PretrainRunConfig]) -> str:
    """The resolved config as YAML, its paths absolute (``absolute_paths``): what every run folder saves."""
    import yaml

    resolved = pretrain_absolute_paths(cfg) if isinstance(cfg, PretrainRunConfig) else absolute_paths(cfg)
    return yaml.safe_dump(to_dict(resolved), sort_keys=False)
