"""timm backbones (``timm/<name>``): each tested name resolves to one ``BackboneSpec`` whose stages, strides and
channels are timm's ``feature_info``'s, loads stand-in weights through timm's own pretrained path from the
Hugging Face cache, preprocesses as timm's data config, builds under one neck/head per task, freezes
stem..layer2, round-trips through a checkpoint and (one) exports to ONNX; a missing file or a missing timm is
one line."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from seg_transfer import create_model
from seg_transfer.errors import ConfigError, WeightsUnavailableError
from seg_transfer.models.backbones import build_backbone, check_stride, spec_of
from seg_transfer.models.timm_backbones import TESTED, TIMM, arch_of, layout

from .test_backbones import DEFAULT_STRIDES, OUT_STAGES, TASK_MODELS, assert_freezes_and_trains, assert_round_trip

timm = pytest.importorskip("timm")
safetensors_torch = pytest.importorskip("safetensors.torch")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=TESTED)
def name(request) -> str:
    return request.param


def test_spec_is_one_registry_entry_from_feature_info(name):
    spec = spec_of(name)
    assert spec.source is TIMM and spec.tv_name == name and spec.family.startswith("timm ")
    assert spec_of(name) is spec  # resolved once
    lay = layout(name)
    assert (spec.pyramid is not None) == lay.plain
    with pytest.raises(ConfigError, match=rf"model\.output_stride: {name} .* supports only 32, got 16"):
        check_stride(name, 16)


def test_weights_load_through_timm_from_the_hf_cache(name, timm_standin):
    """DEFAULT: timm's pretrained path loads the stand-in from the Hugging Face cache into every stage (only a
    ViT's pyramid is new); declared strides and channels are feature_info's; preprocessing is timm's."""
    state = safetensors_torch.load_file(str(timm_standin(arch_of(name))))
    backbone = build_backbone(name, "DEFAULT", resize=None)
    loaded = {k: v for k, v in backbone.state_dict().items() if not k.startswith("pyramid.")}
    assert loaded and all(any(torch.equal(v, s) for s in state.values() if s.shape == v.shape) for v in loaded.values())
    lay = layout(name)
    assert backbone.stage_names == ["stem", *OUT_STAGES] and backbone.strides == DEFAULT_STRIDES
    if not lay.plain:
        assert list(backbone.out_channels.values()) == list(lay.channels)
    cfg = timm.data.resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg(arch_of(name)).to_dict())
    p = backbone.preprocess
    assert (p.mean, p.std, p.interpolation) == (tuple(cfg["mean"]), tuple(cfg["std"]), cfg["interpolation"])
    assert p.resize_size == int(cfg["input_size"][-1] / cfg["crop_pct"])
    seen: set[int] = set()
    for stage in backbone.stage_names:  # the stages partition the parameters
        params = {id(q) for q in backbone.stage(stage).parameters()}
        assert params and not params & seen
        seen |= params
    assert seen == {id(q) for q in backbone.parameters()}


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_b0"])
def test_stages_run_as_timms_forward(arch, timm_standin):
    """A hierarchical net's stages give exactly the maps of timm's own features_only network on the same weights."""
    file = timm_standin(arch)
    backbone = build_backbone(f"timm/{arch}", "DEFAULT", resize=None).eval()
    net = timm.create_model(arch, features_only=True, out_indices=layout(f"timm/{arch}").out_indices, pretrained=True,
                            pretrained_cfg_overlay={"file": str(file)}).eval()
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        for ours, theirs in zip(backbone(x).values(), net(x), strict=True):
            torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("task", sorted(TASK_MODELS))
def test_builds_freezes_and_trains_under_each_task(name, task):
    """stem..layer2 frozen (no gradient, BatchNorm held in eval), layer3 on: a training step reaches layer3."""
    assert_freezes_and_trains(name, task)


def test_checkpoint_round_trip(name, tmp_path):
    assert_round_trip(name, tmp_path)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning")
def test_onnx_export_matches_eager(tmp_path):
    """A timm ConvNeXt exports (fixed size) and onnxruntime agrees with eager PyTorch."""
    pytest.importorskip("onnxruntime")
    from seg_transfer.predict.backends import load_model_file
    from seg_transfer.predict.export import export_model, sample_input

    model = create_model(backbone="timm/convnext_atto", backbone_weights=None, neck="fpn", head="fpn",
                         num_classes=3, resize=64).eval()
    runner = load_model_file(export_model(model, tmp_path / "m.onnx", "onnx", dynamic=False))
    x = torch.rand_like(sample_input(model, dynamic=False))
    with torch.no_grad():
        torch.testing.assert_close(torch.as_tensor(runner(x)), model(x)["out"], rtol=1e-3, atol=1e-4)


def test_missing_weights_is_one_line_naming_file_and_cache(monkeypatch, torch_home):
    monkeypatch.setenv("SEG_TRANSFER_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError) as err:
        build_backbone("timm/convnext_pico", "DEFAULT")
    message = str(err.value)
    assert "\n" not in message and "timm/convnext_pico.d1_in1k (model.safetensors)" in message
    assert str(torch_home / "huggingface" / "models--timm--convnext_pico.d1_in1k") in message
    assert "backbone_weights: null" in message


@pytest.mark.parametrize("bad, match", [
    ("timm/convnext_atoo", r"timm has no model 'convnext_atoo' \(did you mean 'convnext_atto'\?\)"),
    ("timm/levit_128s", r"strides 16, 32, 64; a timm backbone needs levels at 4, 8, 16 and 32"),
])
def test_unusable_names_are_one_line(bad, match):
    with pytest.raises(ConfigError, match=match):
        spec_of(bad)


def test_other_weights_specs_are_refused():
    with pytest.raises(ConfigError, match=r"timm backbones take DEFAULT, a local file or null, got 'IMAGENET1K_V1'"):
        build_backbone("timm/convnext_atto", "IMAGENET1K_V1")


def test_without_timm_everything_else_works_and_timm_names_the_extra(tmp_path):
    """timm hidden from import: torchvision backbones build, ``timm/...`` is one line naming the extra."""
    code = (
        "import sys; sys.modules['timm'] = None\n"
        "from seg_transfer import create_model\n"
        "from seg_transfer.errors import ConfigError\n"
        "create_model(backbone='resnet18', backbone_weights=None, head='classifier', num_classes=2)\n"
        "try:\n"
        "    create_model(backbone='timm/convnext_atto', backbone_weights=None, head='classifier', num_classes=2)\n"
        "except ConfigError as err:\n"
        "    print(err)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path,
                         env={**__import__("os").environ, "PYTHONPATH": str(__import__("pathlib").Path(__file__).parents[2])})
    assert out.stdout.strip() == ("model.backbone: timm/convnext_atto needs timm, the optional 'timm' extra "
                                  "(pip install 'seg_transfer[timm]')")
