"""timm models as backbones: ``model.backbone: timm/<name>`` resolves to a ``BackboneSpec`` when first named.

The network is ``timm.create_model(name, features_only=True, out_indices=...)``, its weights loaded by
timm's own pretrained path from a file in the local Hugging Face cache (``timm_weights``), its
preprocessing timm's data config for those weights. ``feature_info`` says which module ends each level:

- a hierarchical net (levels at strides 4, 8, 16, 32): the modules the feature network runs, in order,
  are cut into ``stem, layer1..layer4``, each stage ending at its level's module (the stem is everything
  before layer1's: ResNet's conv1..maxpool, ConvNeXt's patchify conv, EfficientNet's stem and first
  block). The cut runs the same modules in the same order as timm's forward, and is checked against it.
- a plain ViT (every level at stride 16): split as torchvision's ViT is (``transformers``): a stem (patch
  embedding plus the position embedding resized to the input grid, no class token), the blocks in four
  groups, and ViTDet's simple feature pyramid.
"""
from __future__ import annotations

import functools
import importlib.util
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence, cast

import torch
from torch import nn
from torchvision.ops.misc import Permute
from torchvision.transforms import InterpolationMode

from ..errors import ConfigError, WeightsUnavailableError, suggest
from . import timm_weights as TW
from . import weights as W
from .backbone_spec import BackboneSpec, NetSource
from .stages import OUT_STAGES
from .transformers import TO_NCHW, TO_NHWC, SimpleFeaturePyramid, ViTBlocks

PREFIX = "timm/"
# The timm backbones the test suite builds, loads from stand-ins and trains (one per kind of feature network:
# FeatureListNet with LayerNorm and with BatchNorm, timm's own EfficientNet features, a plain ViT).
TESTED = ("timm/convnext_atto", "timm/efficientnet_b0", "timm/resnet18", "timm/vit_tiny_patch16_224")
LEVEL_STRIDES = (4, 8, 16, 32)
CHECK_SIZE = 64  # the split is checked against timm's forward on one image of this size


def available() -> bool:
    """Whether the optional timm extra is installed."""
    return importlib.util.find_spec("timm") is not None


def weights_state(name: str) -> str:
    """Where timm's default weights for ``name`` live and whether they are in the local Hugging Face cache."""
    arch = arch_of(name)
    try:
        repo = TW.hub_files(name, arch)[0]
    except WeightsUnavailableError:
        return "none on the hub"
    return f"{repo} ({'cached' if TW.cached_file(name, arch) is not None else 'not cached'})"


def arch_of(name: str) -> str:
    """``timm/convnext_atto`` -> ``convnext_atto`` (timm's model name, with an optional ``.tag``)."""
    return name[len(PREFIX):] if name.startswith(PREFIX) else name


@dataclass(frozen=True)
class Layout:
    """Which of timm's feature levels a backbone returns (``out_indices``), their strides and channels
    (timm's ``feature_info``), and whether it is a plain (one-stride) ViT."""

    out_indices: tuple[int, ...]
    strides: tuple[int, ...]
    channels: tuple[int, ...]
    plain: bool
    module: str  # timm's module of the architecture, e.g. 'convnext'


@functools.lru_cache(maxsize=None)
def layout(name: str) -> Layout:
    """The levels of ``timm/<name>``, read off timm's ``feature_info`` of the network built on the meta device."""
    timm = TW.require_timm(name)
    arch = arch_of(name)
    if not timm.is_model(arch):
        raise ConfigError(f"model.backbone: timm has no model '{arch}'{suggest(arch, timm.list_models())} "
                          f"(timm.list_models() lists them)")
    try:
        with torch.device("meta"):
            net = timm.create_model(arch, features_only=True, pretrained=False)
    except (RuntimeError, TypeError, ValueError, AttributeError, AssertionError, NotImplementedError) as err:
        raise ConfigError(f"model.backbone: {name}: timm cannot build it with features_only=True "
                          f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    info = list(net.feature_info.info)
    module = timm.models.model_entrypoint(arch.partition(".")[0]).__module__.rpartition(".")[2]
    if all(level["reduction"] == 16 for level in info) and hasattr(getattr(net, "model", None), "patch_embed"):
        last = len(info) - 1
        return Layout((last,), (16,), (int(info[last]["num_chs"]),), True, module)
    picks = []
    for stride in LEVEL_STRIDES:
        at = [i for i, level in enumerate(info) if level["reduction"] == stride]
        if not at:
            have = ", ".join(str(level["reduction"]) for level in info)
            raise ConfigError(f"model.backbone: {name} has feature levels at strides {have}; a timm backbone "
                              f"needs levels at 4, 8, 16 and 32 (or one stride-16 map, a plain ViT)")
        picks.append(at[-1])  # the last module at a stride ends that level
    return Layout(tuple(picks), LEVEL_STRIDES, tuple(int(info[i]["num_chs"]) for i in picks), False, module)


# --------------------------------------------------------------------------------- hierarchical nets
def _units(module: nn.Module, ends: Sequence[str], prefix: str = "") -> list[tuple[str, nn.Module]]:
    """The modules ``module`` runs, in registration order, opening every container that holds a level's
    end module (``ends``) so that each end is one unit."""
    out: list[tuple[str, nn.Module]] = []
    for name, child in module.named_children():
        path = prefix + name
        if any(end.startswith(path + ".") for end in ends):
            out += _units(child, ends, path + ".")
        else:
            out.append((path, child))
    return out


def _level_ends(net: nn.Module) -> list[str]:
    """The modules ending the returned levels, in order: FeatureListNet's renamed children (``stages_0``),
    or the module names of ``feature_info`` (timm's own ``*Features`` classes)."""
    returned = getattr(net, "return_layers", None)
    if isinstance(returned, dict) and returned:
        return sorted(returned, key=lambda k: int(returned[k]))
    return list(cast(Any, net).feature_info.module_name())


def _channels_last(net: nn.Module) -> bool:
    fmt = getattr(net, "output_fmt", None)
    return str(getattr(fmt, "value", fmt)) == "NHWC"  # Swin-like nets pass NHWC maps between stages


def sequential_stages(net: nn.Module, name: str) -> OrderedDict[str, nn.Module]:
    """``stem, layer1..layer4`` of a timm feature network: its units cut at the level ends, NCHW between
    stages; checked to give what timm's own forward gives."""
    ends = _level_ends(net)
    units = _units(net, ends)
    paths = [path for path, _ in units]
    missing = [end for end in ends if end not in paths]
    if missing or len(ends) != len(OUT_STAGES):
        raise ConfigError(f"model.backbone: {name}: cannot find timm's feature modules {missing or ends} among "
                          f"the modules its feature network runs")
    at = [paths.index(end) for end in ends]
    bounds = [0, at[0], *(i + 1 for i in at)]
    nhwc = _channels_last(net)

    def stage(a: int, b: int, first: bool) -> nn.Sequential:
        mods: list[tuple[str, nn.Module]] = [(p.replace(".", "_"), m) for p, m in units[a:b]]
        if nhwc:
            mods = ([] if first else [("to_nhwc", Permute(TO_NHWC))]) + mods + [("to_nchw", Permute(TO_NCHW))]
        return nn.Sequential(OrderedDict(mods))

    stages: OrderedDict[str, nn.Module] = OrderedDict((s, stage(a, b, s == "stem")) for s, a, b in
                         zip(("stem", *OUT_STAGES), bounds, bounds[1:]))
    _check_against_timm(net, stages, name, nhwc)
    return stages


@torch.no_grad()
def _check_against_timm(net: nn.Module, stages: OrderedDict[str, nn.Module], name: str, nhwc: bool) -> None:
    """The stages run in order give timm's feature maps (values; shapes only on the meta device), at the
    strides and channels timm's ``feature_info`` declares."""
    was_training = net.training
    net.eval()
    try:
        device = next(net.parameters()).device
        x = torch.rand(1, 3, CHECK_SIZE, CHECK_SIZE, generator=torch.Generator().manual_seed(0)).to(device)
        theirs = [t.permute(*TO_NCHW) if nhwc else t for t in net(x)]
        ours, h = [], x
        for s, module in stages.items():
            h = module(h)
            if s != "stem":
                ours.append(h)
    except (RuntimeError, AssertionError, ValueError) as err:
        raise ConfigError(f"model.backbone: {name}: timm's feature network does not run on a "
                          f"{CHECK_SIZE}x{CHECK_SIZE} image ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    finally:
        net.train(was_training)
    declared = layout(name)
    for level, (a, b, stride, chs) in enumerate(zip(ours, theirs, declared.strides, declared.channels), 1):
        same = a.shape == b.shape and (a.is_meta or torch.allclose(a, b, rtol=1e-4, atol=1e-5))
        if not same or a.shape[1] != chs or CHECK_SIZE // a.shape[-1] != stride:
            raise ConfigError(f"model.backbone: {name}: its modules run in order do not give timm's level {level} "
                              f"(stride {stride}, {chs} channels): timm's feature network for it is not a "
                              f"sequence of stages, which a timm backbone needs")


# ------------------------------------------------------------------------------------------ plain ViT
class TimmViTStem(nn.Module):
    """A timm ViT's patch embedding plus its position embedding resized to the input's grid, without the
    prefix (class, register) tokens, as ViTDet runs a ViT at any size. Returns N x D x H/p x W/p."""

    def __init__(self, vit: Any) -> None:
        super().__init__()
        self.patch_embed = vit.patch_embed  # built with dynamic_img_size: any size in, N x h x w x D out
        self.pos_embed = vit.pos_embed      # 1 x (prefix + g*g) x D, or None (no absolute position embedding)
        self.prefix = 0 if getattr(vit, "no_embed_class", False) else int(vit.num_prefix_tokens)
        self.grid = tuple(int(g) for g in vit.patch_embed.grid_size)
        self.norm_pre = vit.norm_pre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from timm.layers import resample_abs_pos_embed

        x = self.patch_embed(x)
        n, h, w, d = x.shape
        if self.pos_embed is not None:
            pos = self.pos_embed
            if (h, w) != self.grid:
                pos = resample_abs_pos_embed(pos, [h, w], list(self.grid), num_prefix_tokens=self.prefix)
            x = x + pos[:, self.prefix:].reshape(1, h, w, d)
        return self.norm_pre(x).permute(*TO_NCHW)


def vit_stages(net: nn.Module, name: str) -> OrderedDict[str, nn.Module]:
    """A timm ViT (inside timm's ``FeatureGetterNet``): the stem, then its blocks in four equal groups."""
    vit = getattr(net, "model", net)
    blocks = getattr(vit, "blocks", None)
    if not isinstance(blocks, nn.Sequential) or not hasattr(vit, "patch_embed") or not hasattr(vit, "norm_pre"):
        raise ConfigError(f"model.backbone: {name}: a one-stride timm model without a ViT's patch_embed, "
                          f"norm_pre and blocks; only plain ViTs (vit_*, deit_*) are split this way")
    layers = list(blocks)
    per = len(layers) // len(OUT_STAGES)
    stages: OrderedDict[str, nn.Module] = OrderedDict(stem=TimmViTStem(vit))
    for i, stage in enumerate(OUT_STAGES):
        stages[stage] = ViTBlocks(layers[i * per:None if i == len(OUT_STAGES) - 1 else (i + 1) * per])
    return stages


def vit_pyramid(net: nn.Module) -> nn.Module:
    return SimpleFeaturePyramid(int(cast(Any, getattr(net, "model", net)).embed_dim))


# ------------------------------------------------------------------------------------ building, weights
@dataclass(frozen=True)
class TimmPreset:
    """timm's eval preprocessing for some weights (``resolve_data_config``), read as torchvision's presets are:
    the shorter side resized to ``input_size / crop_pct``, a centre crop of ``input_size``."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize_size: list[int]
    crop_size: list[int]
    interpolation: InterpolationMode
    antialias: bool = True

    @classmethod
    def from_data_config(cls, cfg: dict[str, Any]) -> TimmPreset:
        size = int(cfg["input_size"][-1])
        return cls(tuple(cfg["mean"]), tuple(cfg["std"]), [math.floor(size / float(cfg["crop_pct"]))], [size],
                   InterpolationMode(cfg["interpolation"]))


def timm_transforms(name: str, weights: W.Spec) -> TimmPreset:
    """The preset of ``name``'s default pretrained config (random and local weights preprocess alike)."""
    timm = TW.require_timm(name)
    pretrained = timm.models.get_pretrained_cfg(arch_of(name))
    from timm.data import resolve_data_config
    return TimmPreset.from_data_config(resolve_data_config(pretrained_cfg=pretrained.to_dict() if pretrained else None))


def timm_net(name: str, weights: W.Spec, key: str, **kwargs: Any) -> nn.Module:
    """timm's features_only network for ``name`` with ``weights`` loaded through timm's pretrained path."""
    timm = TW.require_timm(name)
    arch, lay = arch_of(name), layout(name)
    file = TW.weights_file(name, arch, weights, key)
    extra = {"dynamic_img_size": True} if lay.plain else {}  # a ViT at any input size
    try:
        return timm.create_model(arch, features_only=True, out_indices=lay.out_indices, **TW.pretrained_kwargs(file),
                                 **extra, **kwargs)
    except (RuntimeError, OSError, EOFError, ValueError, KeyError) as err:  # a truncated, foreign or mismatched file
        detail = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line or "Missing" in line),
                      (str(err) or "empty").splitlines()[0])
        raise WeightsUnavailableError(f"{name}: cannot load {file} ({type(err).__name__}: {detail})") from None


TIMM = NetSource("timm", timm_net, timm_transforms)


@functools.lru_cache(maxsize=None)
def timm_spec(name: str) -> BackboneSpec:
    """The registry entry of ``timm/<name>``, made from timm's ``feature_info`` (output stride 32 only: timm's
    dilation options differ by architecture and are not mapped)."""
    lay = layout(name)
    family = f"timm {lay.module}"
    if lay.plain:
        return BackboneSpec(name, family, functools.partial(vit_stages, name=name), pyramid=vit_pyramid, source=TIMM)
    return BackboneSpec(name, family, functools.partial(sequential_stages, name=name), source=TIMM)
