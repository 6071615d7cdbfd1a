"""``seg-transfer serve``'s own failures: the missing extra and a bad limit, each one line before any model loads."""
from __future__ import annotations

import sys

import pytest

from seg_transfer.cli import main


@pytest.mark.parametrize("module", ["starlette", "uvicorn", "python_multipart"])
def test_serve_without_the_extra_names_it(monkeypatch, capsys, module):
    monkeypatch.setitem(sys.modules, module, None)  # an import of it fails, as when it is not installed
    assert main(["serve", "--model", "resnet18"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"seg-transfer: error: {module} is not installed: pip install \"seg_transfer[serve]\" "
                   "(or pip install -e \".[serve]\" in a checkout)")


def test_serve_refuses_a_bad_limit(capsys):
    pytest.importorskip("starlette")
    assert main(["serve", "--model", "no_such_model", "--max-queue", "0"]) == 2
    assert capsys.readouterr().err.strip() == "seg-transfer: error: --max-queue: expected a positive number, got 0"
