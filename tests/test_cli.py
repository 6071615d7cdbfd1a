"""The ``seg-transfer`` CLI, run in-process through ``main([...])`` (plus one run of tools/infer.py).

Inference uses the LR-ASPP stand-in at ``--resize 64`` (fast on CPU); tests that change the
checkpoint cache get their own TORCH_HOME so the session's stand-ins stay untouched.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from seg_transfer import create_model
from seg_transfer.cli import main
from seg_transfer.models.backbones import BACKBONES
from seg_transfer.models.checkpoint import save_checkpoint
from seg_transfer.models.necks import NECKS
from seg_transfer.models.segmentation import HEADS, ZOO

from conftest import shared_image

HEAD_NECKS = {name: head.necks for name, head in HEADS.items()}

REPO = Path(__file__).resolve().parents[1]
MODEL = "lraspp_mobilenet_v3_large"
SMALL = ["--model", MODEL, "--resize", "64"]
LRASPP = torchvision.models.get_model_weights(MODEL).DEFAULT
FCN = torchvision.models.get_model_weights("fcn_resnet50").DEFAULT


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def error_lines(err: str) -> list[str]:
    """stderr's error lines (tqdm's progress bar uses carriage returns, so split on those too)."""
    return [s.strip() for s in re.split(r"[\r\n]+", err) if "error:" in s]


def lines(text: str) -> list[str]:
    return [s for s in text.splitlines() if s.strip()]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def small_photo(path: Path, name: str = "dog1.jpg", size=(96, 72)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(shared_image(name)) as img:
        img.convert("RGB").resize(size).save(path)
    return path


@pytest.fixture(scope="module")
def lraspp(standin) -> Path:
    """The LR-ASPP stand-in in the session's TORCH_HOME, so ``--model lraspp_...`` loads offline."""
    return standin(MODEL)


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh, empty TORCH_HOME for this test only."""
    h = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(h))
    return h


def cached(home: Path, weights) -> Path:
    return home / "hub" / "checkpoints" / os.path.basename(weights.url)


# ------------------------------------------------------------------------------------- infer

def test_infer_files_and_folder(lraspp, tmp_path, capsys):
    a = small_photo(tmp_path / "in" / "a.jpg")
    folder = tmp_path / "in" / "more"
    small_photo(folder / "b.png", "person1.jpg", (48, 64))
    small_photo(folder / "sub" / "c.jpg", "dog2.jpg", (50, 40))
    (folder / "notes.txt").write_text("skipped: not an image extension")
    out = tmp_path / "out"

    code, stdout, err = run(capsys, "infer", *SMALL, a, folder, "--out", out, "--class", "dog", "--json")
    assert code == 0, err
    assert error_lines(err) == []
    expected = {f"{s}{suffix}" for s in "abc" for suffix in ("_mask.png", "_overlay.png", "_dog.png", ".json")}
    assert {p.name for p in out.iterdir()} == expected
    for stem, size in (("a", (96, 72)), ("b", (48, 64)), ("c", (50, 40))):
        with Image.open(out / f"{stem}_mask.png") as m:
            assert m.mode == "P" and m.size == size
        with Image.open(out / f"{stem}_overlay.png") as o:
            assert o.mode == "RGB" and o.size == size
        with Image.open(out / f"{stem}_dog.png") as p:
            assert p.mode == "L" and p.size == size
    assert "wrote 12 files for 3 image(s)" in err
    assert len(lines(stdout)) == 3 and all("_mask.png" in s for s in lines(stdout))


def test_infer_json_report_matches_mask(lraspp, tmp_path, capsys):
    img = small_photo(tmp_path / "photo.jpg", "person1.jpg", (60, 80))
    code, _, err = run(capsys, "infer", *SMALL, img, "--out", tmp_path / "out", "--json", "-q")
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "photo.json").read_text())
    assert report["image"] == "photo" and (report["width"], report["height"]) == (60, 80)
    with Image.open(tmp_path / "out" / "photo_mask.png") as m:
        mask = np.asarray(m)
    classes = list(LRASPP.meta["categories"])
    counts = np.bincount(mask.ravel(), minlength=len(classes))
    assert report["fractions"] == {classes[i]: round(counts[i] / mask.size, 6) for i in np.flatnonzero(counts)}
    assert sum(report["fractions"].values()) == pytest.approx(1, abs=1e-4)


def test_infer_bad_inputs_among_good(lraspp, tmp_path, capsys):
    inp = tmp_path / "in"
    good = small_photo(inp / "good.jpg")
    folder = inp / "folder"
    small_photo(folder / "also_good.png", "dog2.jpg", (40, 30))
    empty = inp / "empty.jpg"
    empty.write_bytes(b"")
    text = inp / "notes.jpg"
    text.write_text("definitely not a JPEG\n" * 10)
    data = shared_image("dog1.jpg").read_bytes()
    truncated = inp / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    missing = inp / "missing.jpg"
    out = tmp_path / "out"

    code, _, err = run(capsys, "infer", *SMALL, empty, good, text, folder, truncated, missing, "--out", out)
    assert code == 1
    assert {p.name for p in out.iterdir()} == {"good_mask.png", "good_overlay.png",
                                              "also_good_mask.png", "also_good_overlay.png"}
    errs = error_lines(err)
    assert len(errs) == 4, err
    for bad in (empty, text, truncated, missing):
        assert sum(str(bad) in e for e in errs) == 1, (bad, errs)
    assert all(e.startswith("seg-transfer: error:") for e in errs)
    assert "Traceback" not in err
    assert "for 2 image(s)" in err and "4 input(s) failed" in err


def test_infer_unknown_class_exits_2_before_writing(lraspp, tmp_path, capsys):
    img = small_photo(tmp_path / "a.jpg")
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "infer", *SMALL, img, "--out", out, "--class", "dog", "--class", "dgo")
    assert code == 2
    assert not out.exists()
    errs = lines(err)
    assert len(errs) == 1
    assert "unknown class 'dgo'" in errs[0] and "did you mean 'dog'" in errs[0]
    for name in LRASPP.meta["categories"]:
        assert name in errs[0]
    assert stdout == ""


def test_infer_unknown_model_suggests(tmp_path, capsys):
    img = small_photo(tmp_path / "a.jpg")
    code, _, err = run(capsys, "infer", "--model", "lraspp_mobilenet_v3_larg", img, "--out", tmp_path / "out")
    assert code == 2
    assert len(lines(err)) == 1
    assert "unknown model 'lraspp_mobilenet_v3_larg'" in err
    assert "did you mean 'lraspp_mobilenet_v3_large'" in err
    assert all(name in err for name in ZOO)
    assert not (tmp_path / "out").exists()


def test_infer_sample(lraspp, tmp_path, capsys):
    code, _, err = run(capsys, "infer", *SMALL, "--sample", "--out", tmp_path / "out", "-q")
    assert code == 0, err
    with Image.open(tmp_path / "out" / "grace_hopper_mask.png") as m:
        assert m.size == (512, 600)
    assert (tmp_path / "out" / "grace_hopper_overlay.png").is_file()


def test_infer_nothing_to_do(capsys):
    code, _, err = run(capsys, "infer", *SMALL)
    assert code == 2 and "no input images" in err


def test_infer_same_name_in_two_folders(lraspp, tmp_path, capsys):
    a = small_photo(tmp_path / "x" / "dog.jpg", size=(96, 72))
    b = small_photo(tmp_path / "y" / "dog.jpg", "dog2.jpg", size=(40, 30))
    out = tmp_path / "out"
    code, _, err = run(capsys, "infer", *SMALL, a, b, "--out", out, "-q")
    assert code == 0, err
    with Image.open(out / "dog_mask.png") as m1, Image.open(out / "dog_2_mask.png") as m2:
        assert m1.size == (96, 72) and m2.size == (40, 30)
    assert len(list(out.iterdir())) == 4


def test_infer_suffixed_name_does_not_overwrite_a_real_file_of_that_name(lraspp, tmp_path, capsys):
    a = small_photo(tmp_path / "x" / "dog.jpg", size=(96, 72))
    b = small_photo(tmp_path / "y" / "dog.jpg", size=(40, 30))
    c = small_photo(tmp_path / "z" / "dog_2.jpg", size=(33, 21))  # its own stem is 'dog_2'
    out = tmp_path / "out"
    code, _, err = run(capsys, "infer", *SMALL, a, b, c, "--out", out, "-q")
    assert code == 0, err
    masks = sorted(out.glob("*_mask.png"))
    assert len(masks) == 3, [m.name for m in masks]
    sizes = set()
    for m in masks:
        with Image.open(m) as img:
            sizes.add(img.size)
    assert sizes == {(96, 72), (40, 30), (33, 21)}


def test_infer_checkpoint(tmp_path, capsys, monkeypatch):
    torch.manual_seed(0)
    model = create_model(MODEL, weights=None, backbone_weights=None, resize=48,
                         classes=["__background__", "cat", "dog"])
    ckpt = save_checkpoint(tmp_path / "best.pt", model)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_home"))  # nothing to download
    monkeypatch.setenv("SEG_TRANSFER_OFFLINE", "1")
    img = small_photo(tmp_path / "a.jpg")
    code, _, err = run(capsys, "infer", "--checkpoint", ckpt, img, "--out", tmp_path / "out", "--class", "cat")
    assert code == 0, err
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"a_mask.png", "a_overlay.png", "a_cat.png"}
    code, _, err = run(capsys, "infer", "--checkpoint", ckpt, img, "--out", tmp_path / "out2", "--class", "dog1")
    assert code == 2 and "valid: __background__, cat, dog" in err
    code, _, err = run(capsys, "infer", "--checkpoint", ckpt, img, "--out", tmp_path / "out3", "--weights", "DEFAULT")
    assert code == 2 and "do not apply to --checkpoint" in err and not (tmp_path / "out3").exists()
    # --resize overrides the checkpoint's preprocessing; outputs stay at the input's size
    code, _, err = run(capsys, "infer", "--checkpoint", ckpt, img, "--out", tmp_path / "out4", "--resize", "32")
    assert code == 0, err
    with Image.open(tmp_path / "out4" / "a_mask.png") as m:
        assert m.size == (96, 72)


def test_infer_bad_checkpoint(tmp_path, capsys):
    bad = tmp_path / "best.pt"
    bad.write_text("nope")
    img = small_photo(tmp_path / "a.jpg")
    code, _, err = run(capsys, "infer", "--checkpoint", bad, img, "--out", tmp_path / "out")
    assert code == 2 and len(lines(err)) == 1 and str(bad) in err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_infer_device_cuda_without_gpu(lraspp, tmp_path, capsys):
    img = small_photo(tmp_path / "a.jpg")
    code, stdout, err = run(capsys, "infer", *SMALL, "--device", "cuda", img, "--out", tmp_path / "out")
    assert code == 2
    assert len(lines(err)) == 1 and "CUDA is not available" in err and "--device cpu" in err
    assert stdout == "" and not (tmp_path / "out").exists()


def test_infer_random_weights_offline(home, tmp_path, capsys, monkeypatch, no_network):
    monkeypatch.setenv("SEG_TRANSFER_OFFLINE", "1")
    img = small_photo(tmp_path / "a.jpg")
    # --weights none still starts the backbone from ImageNet: not cached here, so one clear line.
    code, _, err = run(capsys, "infer", *SMALL, "--weights", "none", img, "--out", tmp_path / "out")
    backbone = torchvision.models.get_model_weights("mobilenet_v3_large").DEFAULT
    assert code == 2 and len(lines(err)) == 1
    assert "backbone_weights" in err and str(cached(home, backbone)) in err
    # ... and with --backbone-weights none nothing is needed at all.
    code, _, err = run(capsys, "infer", *SMALL, "--weights", "none", "--backbone-weights", "none", img,
                       "--out", tmp_path / "out")
    assert code == 0, err
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"a_mask.png", "a_overlay.png"}
    assert no_network == []


@pytest.mark.network_attempt
def test_infer_offline_names_cache_path_and_url(home, tmp_path, capsys, no_network):
    img = small_photo(tmp_path / "a.jpg")
    code, stdout, err = run(capsys, "infer", "--model", "fcn_resnet50", img, "--out", tmp_path / "out")
    assert code == 2
    assert no_network, "expected a (refused) download attempt"
    errs = lines(err)
    assert len(errs) == 1, err
    assert str(cached(home, FCN)) in errs[0]
    assert FCN.url in errs[0]
    assert "weights import" in errs[0] and "--weights none" in errs[0]
    assert stdout == "" and not (tmp_path / "out").exists()


def test_infer_offline_env_does_not_try_the_network(home, tmp_path, capsys, monkeypatch, no_network):
    monkeypatch.setenv("SEG_TRANSFER_OFFLINE", "1")
    img = small_photo(tmp_path / "a.jpg")
    code, _, err = run(capsys, "infer", "--model", "fcn_resnet50", img, "--out", tmp_path / "out")
    assert code == 2 and no_network == []
    assert len(lines(err)) == 1 and "SEG_TRANSFER_OFFLINE" in err and str(cached(home, FCN)) in err


# ------------------------------------------------------------------------------------ models

def test_models_lists_every_registry_name(capsys):
    from seg_transfer.models.build import TASKS

    code, stdout, _ = run(capsys, "models")
    assert code == 0
    sections = re.split(r"^(\S.*):$", stdout, flags=re.M)
    body = {sections[i].split(" (")[0]: sections[i + 1] for i in range(1, len(sections), 2)}
    expected = {"backbones", "necks"} | {f"{t} zoo" for t in TASKS} | {f"{t} heads" for t in TASKS}
    assert set(body) == expected
    for key, registry in (("backbones", BACKBONES), ("necks", NECKS),
                          *((f"{t} zoo", m.zoo) for t, m in TASKS.items())):
        assert sorted(s.strip() for s in lines(body[key])) == sorted(registry)
    for task, models in TASKS.items():
        head_rows = {s.split()[0]: s for s in lines(body[f"{task} heads"])}
        assert set(head_rows) == set(models.heads)
        for head, spec in models.heads.items():
            assert all(n in head_rows[head].split(";")[1] for n in spec.necks)
            assert all(b in head_rows[head].split(";")[0] for b in (getattr(spec, "backbones", None) or ["any"]))
    assert "classifier" in TASKS["classification"].heads and "fasterrcnn" in TASKS["detection"].heads
    assert set(HEAD_NECKS) == set(HEADS) == set(TASKS["segmentation"].heads)


# ----------------------------------------------------------------------------------- weights

def _table_rows(stdout: str) -> dict[str, list[str]]:
    rows = lines(stdout)[2:]  # after 'cache: ...' and the header
    return {r.split()[0]: r.split() for r in rows}


def test_weights_list_shows_cached_standin(home, capsys, standin):
    path = standin(MODEL)  # into this test's own TORCH_HOME
    assert path == cached(home, LRASPP)
    code, stdout, _ = run(capsys, "weights", "list")
    assert code == 0
    assert lines(stdout)[0] == f"cache: {home / 'hub' / 'checkpoints'}"
    rows = _table_rows(stdout)
    name = f"{type(LRASPP).__name__}.{LRASPP.name}"
    assert rows[name][1] == "yes" and rows[name][-1] == str(path)
    assert [n for n, r in rows.items() if r[1] == "yes"] == [name]
    fcn = f"{type(FCN).__name__}.{FCN.name}"
    assert rows[fcn][1] == "no" and rows[fcn][-1] == str(cached(home, FCN))
    for model in [*ZOO, *BACKBONES]:  # every registry's DEFAULT entry is listed
        w = torchvision.models.get_model_weights(model).DEFAULT
        assert f"{type(w).__name__}.{w.name}" in rows

    code, stdout, _ = run(capsys, "weights", "list", "--cached")
    assert code == 0 and list(_table_rows(stdout)) == [name]


def test_weights_verify_standin_mismatch_leaves_file(home, capsys, standin):
    path = standin(MODEL)
    before, mtime = sha(path), path.stat().st_mtime_ns
    for argv in (("weights", "verify"), ("weights", "verify", path)):  # whole cache, then the file
        code, stdout, err = run(capsys, *argv)
        assert code == 1
        assert len(lines(stdout)) == 1
        assert lines(stdout)[0].startswith("MISMATCH") and str(path) in stdout
        assert len(lines(err)) == 1 and "1 file(s) failed verification" in err
    assert sha(path) == before and path.stat().st_mtime_ns == mtime
    assert os.listdir(path.parent) == [path.name]


def test_weights_verify_corrupted_copy(lraspp, tmp_path, capsys):
    copy = tmp_path / lraspp.name
    data = bytearray(lraspp.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = bytes(64)
    copy.write_bytes(bytes(data))
    before = sha(copy)
    code, stdout, err = run(capsys, "weights", "verify", copy)
    assert code == 1 and stdout.startswith("MISMATCH") and str(copy) in stdout
    assert sha(copy) == before


def test_weights_verify_ok_unknown_and_missing(tmp_path, capsys):
    blob = b"some checkpoint bytes"
    ok = tmp_path / f"thing-{hashlib.sha256(blob).hexdigest()[:8]}.pth"
    ok.write_bytes(blob)
    unnamed = tmp_path / "thing.pth"
    unnamed.write_bytes(blob)
    code, stdout, err = run(capsys, "weights", "verify", ok, unnamed)
    assert code == 0 and err == ""
    out = lines(stdout)
    assert out[0].startswith("OK") and str(ok) in out[0]
    assert out[1].startswith("UNKNOWN") and str(unnamed) in out[1]
    code, _, err = run(capsys, "weights", "verify", tmp_path / "gone.pth")
    assert code == 1 and "gone.pth: no such file" in err


def test_weights_verify_empty_cache(home, capsys):
    code, stdout, _ = run(capsys, "weights", "verify")
    assert code == 0 and "nothing to verify" in stdout


def test_weights_import_refuses_mismatch_then_force(lraspp, home, tmp_path, capsys, monkeypatch):
    download = tmp_path / "downloads" / lraspp.name  # official name, stand-in content
    download.parent.mkdir()
    shutil.copyfile(lraspp, download)
    dst = cached(home, LRASPP)

    code, stdout, err = run(capsys, "weights", "import", download)
    assert code == 1 and stdout == ""
    assert len(lines(err)) == 1 and "--force" in err and "not imported" in err and str(download) in err
    assert not dst.exists()
    assert not dst.parent.exists() or os.listdir(dst.parent) == []

    code, stdout, err = run(capsys, "weights", "import", "--force", download)
    assert code == 0, err
    assert str(dst) in stdout and "MISMATCH" in stdout
    assert dst.read_bytes() == download.read_bytes()
    assert os.listdir(dst.parent) == [dst.name]  # no temp file left
    # ... and the model now loads from the cache without any download.
    monkeypatch.setenv("SEG_TRANSFER_OFFLINE", "1")
    model = create_model(MODEL, resize=64)
    sd = torch.load(dst, weights_only=True)
    assert torch.equal(model.state_dict()["classifier.low_classifier.weight"], sd["classifier.low_classifier.weight"])


def test_weights_import_renamed_file_with_as(lraspp, home, tmp_path, capsys):
    renamed = tmp_path / "renamed.pth"
    shutil.copyfile(lraspp, renamed)
    dst = cached(home, LRASPP)

    code, _, err = run(capsys, "weights", "import", "--force", renamed)
    assert code == 1 and "unknown weights entry 'renamed.pth'" in err and not dst.exists()

    entry = f"{type(LRASPP).__name__}.{LRASPP.name}"
    code, stdout, err = run(capsys, "weights", "import", "--as", entry, "--force", renamed)
    assert code == 0, err
    assert f"as {entry}" in stdout
    assert dst.read_bytes() == renamed.read_bytes()


@pytest.mark.network_attempt
def test_weights_fetch_offline(home, capsys, no_network):
    code, stdout, err = run(capsys, "weights", "fetch", "fcn_resnet50")
    assert code == 1 and stdout == ""
    assert no_network
    errs = lines(err)
    assert len(errs) == 1, err
    assert str(cached(home, FCN)) in errs[0] and FCN.url in errs[0]
    assert not cached(home, FCN).exists()


def test_weights_fetch_cached_prints_path(standin, capsys, no_network):
    path = standin("fcn_resnet50")
    code, stdout, err = run(capsys, "weights", "fetch", "fcn_resnet50")
    assert code == 0, err
    assert stdout.strip() == f"{type(FCN).__name__}.{FCN.name} -> {path}"
    assert no_network == []


def test_weights_fetch_unknown_name(capsys):
    code, _, err = run(capsys, "weights", "fetch", "fcn_resnet5")
    assert code == 1 and "did you mean 'fcn_resnet50'" in err


# ------------------------------------------------------------------------- tools/infer.py

def test_tools_infer_wrapper_subprocess(tmp_path, monkeypatch, standin):
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    standin("mobilenet_v3_large")  # --weights none still starts the backbone from its DEFAULT weights
    img = small_photo(tmp_path / "a.jpg")
    out = tmp_path / "out"
    env = {**os.environ, "TORCH_HOME": str(home), "SEG_TRANSFER_OFFLINE": "1"}  # never the network
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "infer.py"), "--model", MODEL, "--weights", "none",
         "--resize", "64", str(img), "--out", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with Image.open(out / "a_mask.png") as m:
        assert m.mode == "P" and m.size == (96, 72)
    assert (out / "a_overlay.png").is_file()
    assert "wrote 2 files for 1 image(s)" in proc.stderr
