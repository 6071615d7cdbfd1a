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


@pytest.mark.parametrize("name, flag, what", [("best.pt", "--checkpoint", "a checkpoint"),
                                              ("backbone.pth", "--checkpoint", "a checkpoint"),
                                              ("model.onnx", "--model-file", "an exported model"),
                                              ("model.torchscript", "--model-file", "an exported model")])
def test_infer_model_among_the_inputs_stops_before_anything_runs(home, tmp_path, capsys, no_network, name, flag,
                                                                  what):
    """`infer runs/x/best.pt dog1.jpg`: one line naming the flag meant, and the default model (not cached in
    this empty TORCH_HOME) is never loaded for the photo."""
    model = tmp_path / "runs" / "x" / name
    model.parent.mkdir(parents=True)
    model.write_bytes(b"not an image")
    img = small_photo(tmp_path / "a.jpg")
    code, stdout, err = run(capsys, "infer", model, img, "--out", tmp_path / "out")
    assert code == 2 and stdout == "" and "Traceback" not in err
    assert lines(err) == [f"seg-transfer: error: {model} is {what}, not an image: did you mean {flag} {model}?"]
    assert no_network == [] and not (tmp_path / "out").exists()


def test_infer_classifier_without_json_says_where_the_result_went(tmp_path, capsys):
    """A classifier writes files only with --json: the closing line says the top-k above is the result."""
    model = create_model(backbone="resnet18", head="classifier", backbone_weights=None, classes=["ant", "bee"],
                         resize=32)
    ckpt = save_checkpoint(tmp_path / "best.pt", model)
    img = small_photo(tmp_path / "a.jpg")
    code, stdout, err = run(capsys, "infer", "--checkpoint", ckpt, img, "--out", tmp_path / "out")
    assert code == 0, err
    assert lines(stdout)[0].startswith(f"{img}: ") and "%" in stdout
    assert lines(err)[-1] == (f"classified 1 image(s): the top-k is printed above, no files written "
                              f"(--json writes <stem>.json to {tmp_path / 'out'}/)")
    code, stdout, err = run(capsys, "infer", "--checkpoint", ckpt, img, "--out", tmp_path / "out", "-q")
    assert code == 0 and stdout == ""
    assert lines(err) == [f"classified 1 image(s): -q printed no top-k and no files were written "
                          f"(--json writes <stem>.json to {tmp_path / 'out'}/)"]
    code, _, err = run(capsys, "infer", "--checkpoint", ckpt, img, "--out", tmp_path / "out", "--json", "-q")
    assert code == 0 and lines(err) == [f"wrote 1 files for 1 image(s) to {tmp_path / 'out'}/"]
    assert (tmp_path / "out" / "a.json").is_file()


# ------------------------------------------------------------------------------------ parsing

def _subcommands(parser, path=()):
    """Every sub-command's argv prefix, nested ones (``weights list``) included."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name)
                yield from _subcommands(sub, (*path, name))


def test_every_help_reads_without_format_escapes(capsys):
    """argparse prints a description as written: a '%%' meant for %-formatting would show doubled."""
    from seg_transfer.cli import build_parser

    commands = list(_subcommands(build_parser()))
    assert {"compare", "cv", "finetune", "infer", "weights list"} <= {" ".join(c) for c in commands}
    for command in [(), *commands]:
        with pytest.raises(SystemExit) as exit_:
            main([*command, "--help"])
        out = capsys.readouterr().out
        assert exit_.value.code == 0 and out.startswith("usage: seg-transfer"), command
        assert "%%" not in out and "%(" not in out, (command, out)
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    assert "a 95% confidence interval" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("argv, fixed", [
    (["finetune", "train.epochs=1", "{cfg}"], "finetune {cfg} train.epochs=1"),
    (["evaluate", "train.epochs=1", "{cfg}", "--checkpoint", "best.pt"], "evaluate {cfg} train.epochs=1"),
    (["cv", "train.epochs=1", "{cfg}", "--folds", "3"], "cv {cfg} train.epochs=1"),
    (["compare", "train.epochs=1", "{cfg}", "{cfg}"], "compare {cfg} {cfg} train.epochs=1"),
    (["convert", "data.root=x", "{cfg}", "--out", "ds"], "convert {cfg} data.root=x"),
])
def test_override_before_the_config_says_the_config_comes_first(tmp_path, capsys, argv, fixed):
    cfg = tmp_path / "camvid.yaml"
    cfg.write_text("model: {name: fcn_resnet50}\n")
    code, stdout, err = run(capsys, *(a.format(cfg=cfg) for a in argv))
    given = argv[1]
    assert code == 2 and stdout == "" and "Traceback" not in err
    assert lines(err) == [f"seg-transfer: error: {given} is a KEY=VALUE override, not a CONFIG file: the CONFIG "
                          f"file comes first, then the overrides (seg-transfer {fixed.format(cfg=cfg)})"]


def test_overrides_anywhere_on_the_line():
    from seg_transfer.cli import parse_args

    args = parse_args(["finetune", "c.yaml", "a=1", "-q", "b.c=2", "--run-dir", "r", "d=[1, 2]"])
    assert (args.config, args.overrides, args.quiet, str(args.run_dir)) == ("c.yaml", ["a=1", "b.c=2", "d=[1, 2]"],
                                                                          True, "r")
    args = parse_args(["cv", "c.yaml", "--folds", "3", "train.epochs=1", "-q", "data.root=/d"])
    assert (args.folds, args.overrides) == (3, ["train.epochs=1", "data.root=/d"])
    args = parse_args(["compare", "a.yaml", "b.yaml", "--seeds", "2", "train.epochs=1"])
    assert (args.configs, args.overrides) == (["a.yaml", "b.yaml"], ["train.epochs=1"])
    args = parse_args(["evaluate", "c.yaml", "--checkpoint", "b.pt", "data.split=all"])
    assert args.overrides == ["data.split=all"]
    args = parse_args(["convert", "labelme", "--out", "ds", "root=ann"])
    assert (args.source, args.options) == ("labelme", ["root=ann"])
    args = parse_args(["finetune", "--resume", "runs/x", "-q", "train.epochs=4", "train.lr=0.1"])
    assert (args.resume, [args.config, *args.overrides]) == ("runs/x", ["train.epochs=4", "train.lr=0.1"])


@pytest.mark.parametrize("argv, unknown", [(["cv", "c.yaml", "--bogus", "train.epochs=1"], "--bogus"),
                                           (["finetune", "c.yaml", "-q", "other.yaml"], "other.yaml"),
                                           (["infer", "a.jpg", "--bogus"], "--bogus"),
                                           (["models", "x=1"], "x=1")])
def test_unknown_arguments_stay_an_error(capsys, argv, unknown):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.splitlines()[-1] == f"seg-transfer: error: unrecognized arguments: {unknown}"


@pytest.mark.parametrize("argv", [["finetune", "{cfg}", "-q", "data.root={missing}"],
                                  ["cv", "{cfg}", "--folds", "2", "-q", "data.root={missing}"],
                                  ["compare", "{cfg}", "{cfg}", "--folds", "2", "data.root={missing}"],
                                  ["convert", "{cfg}", "--out", "{out}", "data.root={missing}"]])
def test_overrides_after_options_reach_the_config(tmp_path, capsys, argv):
    """The override after an option is applied (the data root it names is read, and is missing), where it
    used to end in argparse's 'unrecognized arguments'."""
    root = tmp_path / "data"
    small_photo(root / "images" / "a.png")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{backbone: resnet18, head: classifier, backbone_weights: null}}\n"
                   f"data: {{format: imagefolder, root: {root}}}\n")
    missing = tmp_path / "missing"
    code, _, err = run(capsys, *(a.format(cfg=cfg, missing=missing, out=tmp_path / "ds") for a in argv))
    assert code == 2 and "Traceback" not in err and "unrecognized" not in err
    assert f"data root {missing}: no such folder" in err  # the data check lists it, as for an override before
    assert len([s for s in lines(err) if s.startswith("seg-transfer: error: ")]) == 1


# ------------------------------------------------------------------------------------ models

def test_models_lists_every_registry_name(capsys):
    from seg_transfer.models.build import TASKS

    code, stdout, _ = run(capsys, "models")
    assert code == 0
    sections = re.split(r"^(\S.*):$", stdout, flags=re.M)
    body = {sections[i].split(" (")[0]: sections[i + 1] for i in range(1, len(sections), 2)}
    expected = {"backbones", "timm backbones", "necks"} | {f"{t} zoo" for t in TASKS} | {f"{t} heads" for t in TASKS}
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


def test_models_backbones_prints_the_measured_table(capsys, monkeypatch):
    """One row per backbone with its measured figures; progress goes to stderr (two backbones, to stay quick)."""
    from seg_transfer.models import catalog

    monkeypatch.setattr(catalog, "BACKBONES", {n: BACKBONES[n] for n in ("mobilenet_v3_small", "resnet18")})
    monkeypatch.setattr(catalog.timm_backbones, "TESTED", ())
    code, stdout, err = run(capsys, "models", "--backbones")
    assert code == 0
    header, *rows = lines(stdout)[:3]
    assert header.split()[:3] == ["backbone", "family", "params"]
    facts = {f.name: f for f in catalog.backbone_facts()}
    for row in rows:
        name, family, params, gflops, strides, channels = row.split()[:6]
        f = facts[name]
        assert (family, float(params), float(gflops)) == (f.family, f.params_m, f.gflops)
        assert strides == "4/8/16/32" and channels == "/".join(map(str, f.channels))
    assert sorted(r.split()[0] for r in rows) == ["mobilenet_v3_small", "resnet18"]


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


# ---------------------------------------------------------------------- every error path: one line, no traceback
def _bad_command_lines(tmp: Path) -> list[list[str]]:
    cfg = tmp / "c.yaml"
    cfg.write_text("model: {backbone: resnet18, head: lraspp, backbone_weights: null}\n"
                   f"data: {{format: folder, root: {tmp / 'nowhere'}, classes: [a, b]}}\n")
    (tmp / "best.pt").write_bytes(b"not a checkpoint")
    (tmp / "x.onnx").write_bytes(b"not onnx")
    return [
        ["infer", str(tmp / "missing.jpg")],
        ["infer", str(tmp / "best.pt"), str(tmp / "missing.jpg")],
        ["infer", "--model", "fcn_resnet5", str(tmp / "missing.jpg")],
        ["infer", "--checkpoint", str(tmp / "best.pt"), str(tmp / "missing.jpg")],
        ["infer", "--model-file", str(tmp / "x.onnx"), str(tmp / "missing.jpg")],
        ["infer", "--model-file", str(tmp / "missing.onnx"), str(tmp / "missing.jpg")],
        ["export", "--checkpoint", str(tmp / "missing.pt")],
        ["finetune", str(tmp / "missing.yaml")],
        ["finetune", "train.epochs=1", str(cfg)],
        ["finetune", str(cfg), "train.epoch=1"],
        ["finetune", str(cfg), "--check-data", "-q"],
        ["finetune", str(cfg), "-q"],
        ["finetune", "--resume", str(tmp / "no_run")],
        ["evaluate", str(cfg), "--checkpoint", str(tmp / "missing.pt")],
        ["cv", str(cfg), "--folds", "1", "-q"],
        ["compare", str(cfg), str(tmp / "missing.yaml"), "-q"],
        ["report", str(tmp / "no_run")],
        ["convert", "nosuchformat", str(tmp), "--out", str(tmp / "out")],
        ["weights", "import", str(tmp / "missing.pth")],
        ["advise", "--num-images", "-3", "--similarity", "high"],
    ]


def test_no_command_error_path_shows_a_traceback(tmp_path, capsys):
    """Each bad command line ends with a non-zero status and one-line errors, never a traceback."""
    for argv in _bad_command_lines(tmp_path):
        try:
            code = main(argv)
        except SystemExit as stop:  # argparse's own usage errors
            code = stop.code
        err = capsys.readouterr().err
        assert code not in (0, None), (argv, err)
        assert "Traceback" not in err, (argv, err)
        errors = [line for line in err.splitlines() if "error" in line]
        assert errors and all(line.startswith(("seg-transfer: error:", "error:", "data check:")) for line in errors), (argv, err)
