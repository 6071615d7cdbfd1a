"""Suite-wide fixtures: a private TORCH_HOME, stand-in checkpoints, and a guard against the network.

A stand-in is a torchvision architecture built with a fixed seed and ``weights=None`` and saved under
the official checkpoint file name, so torchvision's own loading path (enum -> cache hit -> strict
``load_state_dict``) runs for real. Its values are random: it proves two pipelines agree, never that
a model is accurate.
"""
from __future__ import annotations

import socket
from pathlib import Path
from typing import Callable

import pytest

from seg_transfer.testing import build_standin, build_timm_standin

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
IMAGES = SHARED / "images"
# The backbones that the per-combination tests (every neck x head, every pool, dilation, stand-ins, freezing)
# cover in depth; tests/models/test_backbones.py covers every registered one under one neck/head per task.
CORE_BACKBONES = ("mobilenet_v2", "mobilenet_v3_large", "resnet18", "resnet50", "vgg16")


@pytest.fixture(scope="module")
def one_thread():
    """Small tensors gain nothing from threads, and OpenMP's spinning stalls when test runs share the cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def torch_home(tmp_path_factory) -> Path:
    """Every test sees a private, initially empty TORCH_HOME and Hugging Face cache: never the user's."""
    home = tmp_path_factory.mktemp("torch_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(home))
        mp.delenv("SEG_TRANSFER_OFFLINE", raising=False)
        mp.delenv("HF_HUB_OFFLINE", raising=False)
        mp.setenv("HF_HUB_CACHE", str(home / "huggingface"))  # for subprocesses
        try:  # huggingface_hub reads the variable at import: the running process needs its constant set
            from huggingface_hub import constants
            mp.setattr(constants, "HF_HUB_CACHE", str(home / "huggingface"))
            mp.setattr(constants, "HF_HUB_OFFLINE", False)
        except ImportError:  # without the timm extra
            pass
        yield home


@pytest.fixture(scope="session")
def standin(torch_home) -> Callable[..., Path]:
    """``standin("fcn_resnet50")`` -> path of the stand-in checkpoint, built on first use."""
    return build_standin


@pytest.fixture(scope="session")
def timm_standin(torch_home) -> Callable[..., Path]:
    """``timm_standin("convnext_atto")`` -> the stand-in of timm's default weights in the Hugging Face cache;
    tests of timm backbones skip without the timm extra."""
    pytest.importorskip("timm")
    return build_timm_standin


LOOPBACK = ("127.0.0.1", "::1")


class NetworkAttempt(AssertionError):
    pass


@pytest.fixture(autouse=True)
def no_network(request, monkeypatch):
    """Fail any test that tries to reach the network; code under test sees a DNS failure, as offline.
    The loopback address is not the network: the server's tests talk HTTP to 127.0.0.1."""
    attempts: list[str] = []
    getaddrinfo, create_connection = socket.getaddrinfo, socket.create_connection

    def refuse(host, *args, **kwargs):
        attempts.append(str(host))
        raise socket.gaierror(socket.EAI_NONAME, f"network disabled in tests ({host})")

    def resolve(host, *args, **kwargs):
        return getaddrinfo(host, *args, **kwargs) if host in LOOPBACK else refuse(host)

    def connect(address, *args, **kwargs):
        return create_connection(address, *args, **kwargs) if address[0] in LOOPBACK else refuse(address[0])

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    monkeypatch.setattr(socket, "create_connection", connect)
    yield attempts
    if attempts and request.node.get_closest_marker("network_attempt") is None:
        pytest.fail(f"test tried to reach the network: {attempts}")


def shared_image(name: str) -> Path:
    path = IMAGES / name
    if not path.exists():
        pytest.skip(f"{path} not available (../shared missing)")
    return path


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` run where a CUDA device is, and are skipped (saying why) elsewhere."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
