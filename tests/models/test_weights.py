"""The weights layer: specs, the checkpoint cache, offline errors, verification, import and reading."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.models import ResNet18_Weights, ResNet50_Weights

from seg_transfer import create_model
from seg_transfer.errors import ConfigError, SegTransferError, WeightsUnavailableError
from seg_transfer.models import weights as W
from seg_transfer.models.segmentation import ZOO

from conftest import CORE_BACKBONES

MODELS = [*CORE_BACKBONES, *sorted(ZOO)]  # the segmentation registries' builders (other backbones: test_backbones)
FCN_DEFAULT = torchvision.models.get_model_weights("fcn_resnet50").DEFAULT


def all_entries():
    return [w for model in MODELS for w in torchvision.models.get_model_weights(model)]


def full_name(w) -> str:
    return f"{type(w).__name__}.{w.name}"


@pytest.fixture
def empty_home(tmp_path, monkeypatch) -> Path:
    """A fresh, empty TORCH_HOME for this test only."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def resnet18_standin(standin) -> Path:
    """The stand-in for ResNet18's DEFAULT weights in the session's cache (module scope: made before
    a test switches to ``empty_home``)."""
    return standin("resnet18")


def expected_cache_file(home: Path, w) -> Path:
    return home / "hub" / "checkpoints" / os.path.basename(w.url)


# ---------------------------------------------------------------- resolve / cache_path

@pytest.mark.parametrize("spec, expected", [
    ("DEFAULT", ResNet50_Weights.DEFAULT),
    ("IMAGENET1K_V1", ResNet50_Weights.IMAGENET1K_V1),
    ("ResNet50_Weights.IMAGENET1K_V2", ResNet50_Weights.IMAGENET1K_V2),
    (ResNet50_Weights.IMAGENET1K_V1, ResNet50_Weights.IMAGENET1K_V1),
    (None, None),
    ("null", None),
])
def test_resolve(spec, expected):
    assert W.resolve("resnet50", spec) is expected


def test_resolve_local_file(tmp_path):
    path = tmp_path / "mine.pth"
    path.write_bytes(b"")
    assert W.resolve("resnet50", str(path)) == path


def test_resolve_unknown_member_suggests_and_lists():
    with pytest.raises(ConfigError) as err:
        W.resolve("resnet50", "IMAGENET1K_V3", "backbone_weights")
    message = str(err.value)
    assert message.startswith("backbone_weights") and "did you mean 'IMAGENET1K_V2'" in message
    assert all(name in message for name in ["DEFAULT", *ResNet50_Weights.__members__])


def test_resolve_entry_of_another_model():
    with pytest.raises(ConfigError, match="ResNet50_Weights"):
        W.resolve("resnet50", "ResNet18_Weights.IMAGENET1K_V1")


def test_resolve_missing_local_file(tmp_path):
    missing = tmp_path / "missing.pth"
    with pytest.raises(ConfigError, match=f"^weights: .*{re.escape(str(missing))} does not exist"):
        W.resolve("resnet50", str(missing))


def test_cache_path_is_torchvision_cache_file(empty_home):
    assert torch.hub.get_dir() == str(empty_home / "hub")
    for w in all_entries():
        assert W.cache_path(w) == expected_cache_file(empty_home, w)


# ---------------------------------------------------------------- offline errors

def assert_offline_message(err: pytest.ExceptionInfo, model: str, w, key: str, home: Path) -> None:
    """One line naming the model, the entry, the expected file, the URL and every way out."""
    message = str(err.value)
    assert "\n" not in message
    for part in (model, full_name(w), str(expected_cache_file(home, w)), w.url,
                 "seg-transfer weights import", f"'model.{key}: null'", f"--{key.replace('_', '-')} none"):
        assert part in message, part
    assert not expected_cache_file(home, w).exists()


@pytest.mark.network_attempt
def test_offline_download_failure_is_one_clear_line(empty_home, no_network):
    with pytest.raises(WeightsUnavailableError) as err:
        create_model("fcn_resnet50")
    assert no_network, "expected a download attempt"
    assert_offline_message(err, "fcn_resnet50", FCN_DEFAULT, "weights", empty_home)


@pytest.mark.parametrize("kwargs, model, entry, key", [
    ({"name": "fcn_resnet50"}, "fcn_resnet50", FCN_DEFAULT, "weights"),
    ({"name": "fcn_resnet50", "weights": None}, "fcn_resnet50", ResNet50_Weights.DEFAULT, "backbone_weights"),
    ({"backbone": "resnet18", "head": "fcn", "num_classes": 3}, "resnet18", ResNet18_Weights.DEFAULT,
     "backbone_weights"),
])
def test_offline_env_fails_without_network(empty_home, monkeypatch, kwargs, model, entry, key):
    """SEG_TRANSFER_OFFLINE=1: the same message, and no network attempt at all (the guard checks)."""
    monkeypatch.setenv(W.OFFLINE_ENV, "1")
    with pytest.raises(WeightsUnavailableError) as err:
        create_model(**kwargs)
    assert_offline_message(err, model, entry, key, empty_home)


@pytest.mark.parametrize("corrupt", [
    pytest.param(lambda data: data[: len(data) // 2], id="truncated"),
    pytest.param(lambda data: b"", id="empty"),
    pytest.param(lambda data: b"not a checkpoint" * 64, id="garbage"),
])
def test_corrupted_cached_checkpoint(resnet18_standin, empty_home, corrupt):
    """A damaged file in the cache is one clear error pointing at 'weights verify', not a torch traceback."""
    data = resnet18_standin.read_bytes()
    cached = expected_cache_file(empty_home, ResNet18_Weights.DEFAULT)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(corrupt(data))
    with pytest.raises(WeightsUnavailableError) as err:
        create_model(backbone="resnet18", head="fcn", num_classes=3)
    message = str(err.value)
    assert "\n" not in message and "weights verify" in message and str(cached) in message


# ---------------------------------------------------------------- verify / import

def test_verify_reports_mismatch_and_leaves_the_file_alone(resnet18_standin):
    path = resnet18_standin
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    check = W.verify(path)
    assert not check.ok
    assert check.expected and path.stem.endswith(f"-{check.expected}")
    assert check.actual == hashlib.sha256(before[0]).hexdigest()
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before


def test_verify_name_without_hash(tmp_path):
    path = tmp_path / "model.pth"
    path.write_bytes(b"weights")
    check = W.verify(path)
    assert check.expected is None and not check.ok


def test_verify_matching_hash(tmp_path):
    data = b"weights"
    path = tmp_path / f"model-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    path.write_bytes(data)
    assert W.verify(path).ok


def test_import_refuses_hash_mismatch_unless_forced(resnet18_standin, tmp_path, empty_home):
    src = tmp_path / "download.pth"
    shutil.copyfile(resnet18_standin, src)
    entry = ResNet18_Weights.DEFAULT
    dst = expected_cache_file(empty_home, entry)
    with pytest.raises(SegTransferError, match="--force"):
        W.import_file(src, entry)
    assert not dst.exists()

    path, check = W.import_file(src, entry, force=True)
    assert path == dst and not check.ok
    assert dst.read_bytes() == src.read_bytes()
    assert os.listdir(dst.parent) == [dst.name]  # no temporary (.part) file left behind


def test_interrupted_import_leaves_nothing(resnet18_standin, tmp_path, empty_home, monkeypatch):
    """A copy that fails half-way neither creates the official file nor leaves a partial one."""
    def copy_half(src, dst, *args, **kwargs):
        Path(dst).write_bytes(Path(src).read_bytes()[:1000])
        raise OSError("disk full")

    monkeypatch.setattr(shutil, "copyfile", copy_half)
    with pytest.raises(OSError, match="disk full"):
        W.import_file(resnet18_standin, ResNet18_Weights.DEFAULT, force=True)
    checkpoints = expected_cache_file(empty_home, ResNet18_Weights.DEFAULT).parent
    assert not checkpoints.exists() or not os.listdir(checkpoints)


# ---------------------------------------------------------------- find_entry / read_state_dict

def test_find_entry_by_model_name():
    for model in MODELS:
        assert W.find_entry(model, MODELS) is torchvision.models.get_model_weights(model).DEFAULT


def test_find_entry_by_full_name_and_file_name():
    for w in all_entries():
        assert W.find_entry(full_name(w), MODELS) is w
        assert W.find_entry(os.path.basename(w.url), MODELS) is w


def test_find_entry_unknown():
    with pytest.raises(ConfigError, match="did you mean 'fcn_resnet50'"):
        W.find_entry("fcn_resnet5", MODELS)


@pytest.mark.parametrize("wrap", [lambda sd: sd, lambda sd: {"state_dict": sd, "epoch": 3}],
                         ids=["plain", "checkpoint"])
def test_read_state_dict(tmp_path, wrap):
    state = {"a.weight": torch.rand(2, 3), "a.bias": torch.rand(2)}
    path = tmp_path / "w.pth"
    torch.save(wrap(state), path)
    read = W.read_state_dict(path)
    assert set(read) == set(state) and all(torch.equal(read[k], state[k]) for k in state)


def test_read_state_dict_rejects_other_content(tmp_path):
    path = tmp_path / "w.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(WeightsUnavailableError, match="no state dict"):
        W.read_state_dict(path)
