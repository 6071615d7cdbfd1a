"""``seg-transfer`` sub-commands: parse arguments, call the modules below, map errors to exit codes.

Exit status: 0 success, 1 some inputs failed (the others were processed), 2 nothing could be done.
Heavy imports (torch) happen inside the commands so ``--help`` stays instant.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from .errors import SegTransferError
from .run_folder import (
    BEST,
    COMPARE,
    CONFIG,
    CV_PLOT,
    CV_SUMMARY_CSV,
    CV_SUMMARY_JSON,
    EVAL_DIR,
    LAST,
    REPORT,
    SUGGEST_DIR,
    SUGGESTIONS_CSV,
    SUGGESTIONS_PNG,
    SUGGESTIONS_TXT,
    RunFolder,
)

_AUTO_TILE_MP = 16  # predict.tiling.AUTO_TILE_PIXELS in megapixels (not imported: --help stays torch-free)

if TYPE_CHECKING:
    from .predict import Predictor


def _rank() -> Optional[str]:
    """This process's rank when torchrun started several (from its environment: no torch import needed)."""
    return os.environ.get("RANK") if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None


def _err(msg: str) -> None:
    rank = _rank()
    print(f"seg-transfer: error: {f'rank {rank}: ' if rank else ''}{msg}", file=sys.stderr)


# ------------------------------------------------------------------------------------------- infer

def _predictor(args: argparse.Namespace) -> Predictor:
    """The model infer runs: a checkpoint, an exported file, or a zoo name / config file built with the
    CLI's overrides; on the backend, tiling and TTA the flags ask for."""
    from .predict import Predictor

    runtime = {"tile": args.tile, "overlap": args.overlap, "tta": args.tta}
    backend = {"backend": args.backend or "torch", "fast": args.fast}
    if args.model_file:
        if args.weights is not None or args.backbone_weights is not None or args.fast:
            raise SegTransferError("--weights/--backbone-weights/--fast do not apply to --model-file")
        predictor = Predictor.from_file(args.model_file, backend=args.backend or "", device=args.device, **runtime)
        if args.resize is not None:
            import dataclasses
            predictor.preprocess = dataclasses.replace(predictor.preprocess, resize_size=args.resize or None)
        return predictor
    if args.checkpoint:
        if args.weights is not None or args.backbone_weights is not None:
            raise SegTransferError("--weights/--backbone-weights do not apply to --checkpoint (its weights are inside)")
        predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device, **backend, **runtime)
        if args.resize is not None:
            import dataclasses
            predictor.preprocess = dataclasses.replace(predictor.preprocess, resize_size=args.resize or None)
        return predictor
    from .config import ModelConfig, load_model_config, to_dict
    from .transfer.sources import create_model

    cfg = to_dict(load_model_config(args.config) if args.config else ModelConfig(name=args.model))
    for key in ("weights", "backbone_weights"):
        spec = getattr(args, key)
        if spec is not None:
            cfg[key] = None if spec.lower() in ("none", "null") else spec
    if args.resize is not None:
        cfg["resize"] = args.resize
    return Predictor(create_model(cfg), device=args.device, **backend, **runtime)


def _predict_options(args: argparse.Namespace, predictor: Predictor) -> dict[str, Any]:
    """The task-specific infer flags as ``Predictor.predict`` options; a flag for another task, or a bad
    value, fails before any image is processed."""
    from .errors import unknown

    task, options = predictor.task, {}
    if args.top_k is not None:  # classification: how many classes to print and write
        if task != "classification":
            raise SegTransferError(f"--top-k applies to classification models, not {task}")
        options["top_k"] = args.top_k
    if args.score_threshold is not None:  # detection: keep boxes scoring at least this
        if task != "detection":
            raise SegTransferError(f"--score-threshold applies to detection models, not {task}")
        if not 0.0 <= args.score_threshold <= 1.0:
            raise SegTransferError(f"--score-threshold: expected a number from 0 to 1, got {args.score_threshold}")
        options["score_threshold"] = args.score_threshold
    if args.threshold is not None:  # binary segmentation: foreground where its probability >= this
        if not predictor.binary:
            what = f"a {len(predictor.classes)}-class segmentation model" if task == "segmentation" else task
            raise SegTransferError(f"--threshold applies to binary segmentation models, not {what}")
        if not 0.0 <= args.threshold <= 1.0:
            raise SegTransferError(f"--threshold: expected a number from 0 to 1, got {args.threshold}")
        options["threshold"] = args.threshold
    if task == "detection" and args.classes:  # the class filter, also for describe()
        options["classes"] = args.classes
    if task == "segmentation" and args.classes:  # tiled predictions keep only these probabilities
        options["keep"] = args.classes
    for c in args.classes:
        if c not in predictor.classes:
            raise unknown("class", c, predictor.classes, "--class")
    return options


def _unique_stem(path: Path, used: set[str]) -> str:
    """``path``'s stem, numbered when an earlier input had it (same name in two folders, or a real 'x_2.jpg')."""
    stem, k = path.stem, 1
    while stem in used:
        k += 1
        stem = f"{path.stem}_{k}"
    used.add(stem)
    return stem


# A model file among infer's inputs: what it is, and the flag that takes it.
_MODEL_FILES = {".pt": ("a checkpoint", "--checkpoint"), ".pth": ("a checkpoint", "--checkpoint"),
                ".onnx": ("an exported model", "--model-file"), ".torchscript": ("an exported model", "--model-file")}


def _refuse_model_inputs(inputs: Sequence[str]) -> None:
    """``infer runs/x/best.pt dog.jpg`` fails before anything runs, naming the flag meant: going on would
    skip the file and predict the photos with the default model."""
    for word in inputs:
        what = _MODEL_FILES.get(Path(word).suffix.lower())
        if what:
            raise SegTransferError(f"{word} is {what[0]}, not an image: did you mean {what[1]} {word}?")


def cmd_infer(args: argparse.Namespace) -> int:
    _refuse_model_inputs(args.inputs)
    from tqdm import tqdm

    from .io import expand_inputs

    inputs, errors = expand_inputs(args.inputs)
    if args.sample:
        import matplotlib.cbook
        inputs.insert(0, Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    if not inputs and not errors:
        raise SegTransferError("no input images: give files or folders, or --sample")
    for e in errors:
        _err(e)
    if not inputs:  # every input failed: nothing to run a model on (and no weights to fetch for it)
        raise SegTransferError(f"no usable input image ({len(errors)} input(s) failed, listed above)")
    predictor = _predictor(args)
    options = _predict_options(args, predictor)
    out = Path(args.out)
    used: set[str] = set()
    failed, written = len(errors), 0
    bar = tqdm(inputs, desc="infer", unit="img", disable=len(inputs) < 2 or args.quiet, file=sys.stderr)
    for path in bar:
        stem = _unique_stem(path, used)
        try:
            result = predictor.predict(path, **options)
            files = result.save(out, classes=args.classes, json_report=args.json, stem=stem)
        except SegTransferError as err:
            failed += 1
            bar.write(f"seg-transfer: error: {err}", file=sys.stderr)
            continue
        written += len(files)
        if not args.quiet:
            # classification writes files only with --json: then the printed top-k is the output
            bar.write(f"{path}: {result.describe()}" + (f" -> {', '.join(f.name for f in files)}" if files else ""))
    ok = len(inputs) - (failed - len(errors))
    print(_infer_summary(written, ok, out, predictor.task, args.quiet) + (f"; {failed} input(s) failed" if failed else ""),
          file=sys.stderr)
    return 1 if failed else 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .predict.export import requires

    for module in ("starlette", "uvicorn", "python_multipart"):  # before a model is loaded
        requires(module, "serve")
    from .serve.app import serve
    from .serve.options import ServeOptions

    options = ServeOptions(max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms, max_queue=args.max_queue,
                           timeout_s=args.timeout, max_bytes=args.max_bytes, max_pixels=args.max_pixels,
                           token=args.token or os.environ.get("SEG_TRANSFER_TOKEN") or None)
    serve(_predictor(args), options, host=args.host, port=args.port, quiet=args.quiet)
    return 0


def _infer_summary(written: int, ok: int, out: Path, task: str, quiet: bool) -> str:
    """infer's closing line: the files written, or for a classifier without --json, where its result went."""
    if written or task != "classification" or not ok:
        return f"wrote {written} files for {ok} image(s) to {out}/"
    shown = "-q printed no top-k and no files were written" if quiet else \
        "the top-k is printed above, no files written"
    return f"classified {ok} image(s): {shown} (--json writes <stem>.json to {out}/)"


# ------------------------------------------------------------------------------------------- export

def cmd_export(args: argparse.Namespace) -> int:
    from .predict.backends import check_export
    from .predict.export import default_path, export_model

    predictor = _predictor(args)
    assert predictor.model is not None
    name = args.model if not (args.checkpoint or args.config) else Path(args.checkpoint or args.config).stem
    out = Path(args.out) if args.out else default_path(args.checkpoint, name, args.format)
    if not args.quiet:
        print(f"exporting {predictor.task} model ({len(predictor.classes)} classes) to {args.format}...", file=sys.stderr)
    path = export_model(predictor.model, out, args.format, opset=args.opset, dynamic=not args.static)
    size = path.stat().st_size / 2**20
    print(f"wrote {path} ({size:.1f} MB): task {predictor.task}, classes and preprocessing inside")
    if not args.no_check:
        diff = check_export(predictor.model, path)
        print(f"checked against eager PyTorch on a random input: {diff}")
    return 0


def _add_export(sub: Any) -> None:
    exp = sub.add_parser("export", help="write a model as ONNX or TorchScript, classes and preprocessing inside",
                         description="Export for deployment; run the file with `seg-transfer infer --model-file` "
                                     "or your own onnxruntime script (see the README's Deploy section).")
    src = exp.add_mutually_exclusive_group()
    src.add_argument("--model", default="fcn_resnet50", help="zoo model name (default: fcn_resnet50)")
    src.add_argument("--checkpoint", help="a seg_transfer checkpoint (.pt) from fine-tuning")
    src.add_argument("--config", help="a YAML file whose model: block describes the model")
    exp.add_argument("--weights", help="weights spec for --model: DEFAULT, an enum member, a .pth file or none")
    exp.add_argument("--backbone-weights", help="backbone weights spec (as for infer)")
    exp.add_argument("--format", choices=("onnx", "torchscript"), default="onnx", help="default: onnx")
    exp.add_argument("--out", help="output file (default: beside the checkpoint, or <model>.onnx here)")
    exp.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18; detectors need >= 11)")
    exp.add_argument("--static", action="store_true", help="fix batch and image size to the example input's "
                     "(default: dynamic batch, height and width)")
    exp.add_argument("--resize", type=int, help="shorter side the exported preprocessing resizes to")
    exp.add_argument("--no-check", action="store_true", help="skip running the file once against eager PyTorch")
    exp.add_argument("-q", "--quiet", action="store_true", help="no 'exporting ...' line")
    exp.set_defaults(func=cmd_export, device="cpu", model_file=None, backend=None, fast=False, tile=None,
                     overlap=128, tta=None)


# -------------------------------------------------------------------------------- finetune, evaluate

def _load_run_config(args: argparse.Namespace, pretrain: bool = False):
    """The config of ``args.config`` (or of the ``--resume`` run folder) with the overrides: finetune's, or
    with ``pretrain`` a ``seg-transfer pretrain`` config."""
    from .config import load_config, load_pretrain_config

    if getattr(args, "resume", None) and args.config and "=" in args.config and not Path(args.config).is_file():
        args.overrides, args.config = [args.config, *args.overrides], None  # `--resume DIR key=value`
    if args.config is None and not getattr(args, "resume", None):
        raise SegTransferError("give a CONFIG file (or --resume RUN_DIR)")
    path = args.config or str(RunFolder(args.resume).config)
    return (load_pretrain_config if pretrain else load_config)(path, args.overrides)


def _check_data(cfg, quiet: bool = False, progress: bool = True, whole: bool = False) -> int:
    """Scan the whole dataset (a progress bar once it takes 2 s); print every problem; the number of errors.
    ``whole`` (``--check-data``): also resolve the rest of the config as the run would, without weights,
    and end with what was scanned."""
    from .data.checks import scan_dataset
    from .models.build import is_binary

    # checked as a binary model reads its masks (0/255 are fine there)
    binary = bool(cfg.model.binary or cfg.model.num_classes == 1) and is_binary(cfg.model)
    scan = scan_dataset(cfg.data, progress=progress, binary=binary)
    problems = [(getattr(p, "severity", "error"), str(p)) for p in scan.problems]
    notes: list[str] = []
    if whole and scan.data is not None:
        from .engine.preflight import preflight

        problems += [("error", line) for line in preflight(cfg, scan.data, note=notes.append)]
    errors = sum(severity == "error" for severity, _ in problems)
    if _rank() not in (None, "0"):  # under torchrun every rank scans; one prints
        return errors
    for severity, line in problems:
        print(f"{severity}: {line}", file=sys.stderr)
    for line in notes:
        print(f"note: {line}", file=sys.stderr)
    if not quiet or problems:
        print(f"data check: {errors} error(s), {len(problems) - errors} warning(s)"
              + (f"; {scan.summary()}" if scan.splits else "")
              + ("; the config's model, freezing, optimizer and device checked without loading weights"
                 if whole and scan.data is not None else ""), file=sys.stderr)
    return errors


def cmd_finetune(args: argparse.Namespace) -> int:
    if args.limit_train is not None:  # as a config key, the run folder's config.yaml keeps it for reruns and --resume
        args.overrides = [*args.overrides, f"train.limit_train={args.limit_train}"]
    cfg = _load_run_config(args)
    if args.check_data:
        return 1 if _check_data(cfg, progress=not args.quiet, whole=True) else 0
    if _check_data(cfg, quiet=True, progress=not args.quiet):
        raise SegTransferError("the dataset has problems (listed above); fix them, or run with --check-data "
                               "to list them again")
    from .engine import distributed as D
    from .engine.trainer import Trainer

    try:  # under torchrun every rank leaves the process group, also on error: no rank waits on a dead peer
        trainer = Trainer(cfg, run_dir=Path(args.resume) if args.resume else args.run_dir,
                          resume=bool(args.resume), progress=not args.quiet, command=_command(args))
        result = trainer.fit()
        if D.is_main():
            print(f"best val {trainer.task.metric_label} {result.best:.4f} at epoch {result.best_epoch}; "
                  f"checkpoints in {result.run_dir}/ ({BEST}, {LAST})")
    finally:
        D.teardown()
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    cfg = _load_run_config(args, pretrain=True)
    from .engine import distributed as D
    from .engine.pretrain.run import Pretrainer

    try:  # every rank leaves the process group, also on error
        run = Pretrainer(cfg, run_dir=Path(args.resume) if args.resume else args.run_dir, resume=bool(args.resume),
                         progress=not args.quiet, command=_command(args))
        run.fit()
    finally:
        D.teardown()
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .config import parse_override
    from .engine.evaluate import evaluate_checkpoint, run_data

    cfg = _load_run_config(args)
    from .models.tta import TTA

    tta = TTA.parse(args.tta)
    # A checkpoint in a run folder is scored on that run's val split (its list files, its split options),
    # unless data overrides or --config-split say which images to score.
    overridden = any(parse_override(o)[0][0] == "data" for o in args.overrides)
    saved = None if overridden or args.config_split else run_data(args.checkpoint)
    if saved is not None:
        cfg = replace(cfg, data=saved[0])
    source = str(saved[1]) if saved is not None else args.config
    report = evaluate_checkpoint(cfg, args.checkpoint, out_dir=args.out, device=args.device,
                                 progress=not args.quiet, command=_command(args), tta=tta, data_from=source)
    first, *rest = report["summary"]
    print(f"{first}  ({report['images']} images" + (f", TTA {report['tta']})" if report['tta'] else ")"))
    for line in rest:
        print(line)
    whose = "the run's" if saved is not None else "the config's"
    print(f"scored {whose} val split ({report['images']} images, from {source}"
          f"{', with data overrides' if overridden else ''})")
    print(f"report: {report['out_dir']}/ ({', '.join(report['files'])})")
    return 0


def _cv_configs(paths: Sequence[str], overrides: Sequence[str], quiet: bool = False) -> list:
    """The configs of ``cv`` / ``compare`` with the shared overrides, each dataset checked once."""
    from .config import load_config

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise SegTransferError("cv and compare run one process; start them without torchrun")
    configs = [load_config(path, overrides) for path in paths]
    for k, (path, cfg) in enumerate(zip(paths, configs)):
        if cfg.data in [c.data for c in configs[:k]]:
            continue  # the same data block: scanned already
        if _check_data(cfg, quiet=True, progress=not quiet):
            raise SegTransferError(f"{path}: the dataset has problems (listed above); fix them, or list them "
                                   f"with seg-transfer finetune {path} --check-data")
    return configs


def _cv_status(*summaries: dict) -> int:
    """0 when every run completed, 2 when none did, 1 otherwise."""
    done = sum(s["completed"] for s in summaries)
    failed = sum(s["failed"] for s in summaries)
    return 0 if not failed else 2 if not done else 1


def _cv_logs(quiet: bool) -> dict[str, Any]:
    """cv's and compare's ``log``: every line; with -q only one line per finished run (flushed: they come
    minutes apart, also into a log file)."""
    if not quiet:
        return {"log": print}
    return {"log": lambda _m: None, "finished": lambda line: print(line, flush=True)}


def cmd_cv(args: argparse.Namespace) -> int:
    from .engine.cv import format_summary, run_cv

    (cfg,) = _cv_configs([args.config], args.overrides, args.quiet)
    out = args.out or Path(cfg.output.dir) / f"cv_{Path(args.config).stem}"
    summary = run_cv(cfg, folds=args.folds, seeds=args.seeds, out=out, limit_train=args.limit_train,
                     progress=not args.quiet, source=args.config, overrides=args.overrides, **_cv_logs(args.quiet))
    print("\n" + format_summary(summary))
    print(f"summary: {out}/ ({CV_SUMMARY_JSON}, {CV_SUMMARY_CSV}, {CV_PLOT})")
    return _cv_status(summary)


def cmd_compare(args: argparse.Namespace) -> int:
    from .engine.compare import run_compare
    from .engine.cv import format_summary

    a, b = args.configs
    cfg_a, cfg_b = _cv_configs([a, b], args.overrides, args.quiet)
    out = args.out or Path(cfg_a.output.dir) / f"compare_{Path(a).stem}_vs_{Path(b).stem}"
    result = run_compare(cfg_a, cfg_b, folds=args.folds, seeds=args.seeds, out=out, limit_train=args.limit_train,
                         progress=not args.quiet, sources=(a, b), overrides=args.overrides, **_cv_logs(args.quiet))
    for summary in result["summaries"]:
        print("\n" + format_summary(summary))
    print(f"\nA = {a}, B = {b}: {result['verdict']}")
    print(f"comparison: {out}/{COMPARE}; runs in {out}/A and {out}/B")
    return _cv_status(*result["summaries"])


def _command(args: argparse.Namespace) -> Optional[list[str]]:
    """The command line as typed (``main`` keeps its argv), recorded in the run folder to reproduce the run."""
    argv = getattr(args, "argv", None)
    return ["seg-transfer", *argv] if argv is not None else None


def cmd_report(args: argparse.Namespace) -> int:
    from .engine.report import write_report

    print(f"report: {write_report(args.run_dir, args.out)}")
    return 0


def cmd_suggest(args: argparse.Namespace) -> int:
    from .data.unlabelled import image_files
    from .predict import Predictor
    from .predict.suggest import suggest

    run = RunFolder(args.run_dir)
    if not run.path.is_dir():
        raise SegTransferError(f"{run.path}: no such run folder")
    if not run.best.is_file():
        raise SegTransferError(f"{run.path}: no {BEST} (a fine-tune's run folder holds one once an epoch was evaluated)")
    if args.n < 1:
        raise SegTransferError(f"--n: expected at least 1 image to suggest, got {args.n}")
    pool = image_files(args.pool, "--pool")
    out = Path(args.out) if args.out else run.path / SUGGEST_DIR
    found = suggest(Predictor.from_checkpoint(run.best, device=args.device), pool, args.n, out,
                    progress=not args.quiet)
    for line in found.failed:
        _err(f"{line} (skipped)")
    if not args.quiet:
        for rank, (i, _, score) in enumerate(found.picks):
            print(f"{rank + 1:>4}  {found.scored[i].uncertainty:.3f}  {found.scored[i].path}")
    print(f"suggested {len(found.picks)} of {len(found.scored)} pool images (uncertainty x distance in the "
          f"model's feature space); wrote {', '.join(str(f) for f in found.files)}")
    return 1 if found.failed else 0


def cmd_advise(args: argparse.Namespace) -> int:
    from .advise import advise

    print(advise(args.num_images, args.similarity, task=args.task).snippet())
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .data.convert import convert, source_block

    done = convert(source_block(args.source, args.options), args.out, progress=not args.quiet,
                   overwrite=args.overwrite)
    print(f"wrote {done.images} images ({done.train} train, {done.val} val) to {done.out}/ in the {done.layout} "
          f"layout; {done.out}/dataset.yaml holds the data: block that reads it back")
    return 0


# ------------------------------------------------------------------------------------------ models

def cmd_backbone_table() -> int:
    from .models.catalog import FLOPS_SIZE, backbone_facts, table_path, weights_state

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    rows = [(f.name, f.family, f"{f.params_m:.1f}", f"{f.gflops:.1f}", "/".join(map(str, f.strides)),
             "/".join(map(str, f.channels)), weights_state(f.name)) for f in backbone_facts(progress)]
    _table(("backbone", "family", "params (M)", f"GFLOPs@{FLOPS_SIZE}", "strides", "channels",
            "weights (* DEFAULT)"), rows)
    print(f"measured on the meta device (shapes only); kept in {table_path()}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    if args.backbones:
        return cmd_backbone_table()
    from .models import timm_backbones
    from .models.backbones import BACKBONES
    from .models.build import TASKS
    from .models.necks import NECKS
    from .models.timm_weights import EXTRA

    print("backbones:\n  " + "\n  ".join(sorted(BACKBONES)))
    installed = "installed" if timm_backbones.available() else f"not installed: {EXTRA}"
    print(f"timm backbones (the optional 'timm' extra, {installed}):\n"
          f"  timm/<name>: a timm model whose features_only network has levels at strides 4, 8, 16, 32 and runs "
          f"as a sequence of modules, or a plain ViT (vit_*, deit_*); output stride 32\n"
          f"  tested: {', '.join(timm_backbones.TESTED)}")
    print("necks:\n  " + "\n  ".join(sorted(NECKS)))
    for task, models in TASKS.items():
        print(f"{task} zoo (torchvision, pretrained end to end):\n  " + "\n  ".join(sorted(models.zoo)))
        print(f"{task} heads (backbones; necks):")
        for name, head in sorted(models.heads.items()):
            backbones = getattr(head, "backbones", None) or ["any"]
            print(f"  {name:<10} {', '.join(backbones)}; {', '.join(head.necks)}")
    return 0


# ----------------------------------------------------------------------------------------- weights

def _weights_models() -> list[str]:
    from .models.build import torchvision_builders
    return torchvision_builders()


def cmd_weights_list(args: argparse.Namespace) -> int:
    from .models import weights as W

    rows = []
    for w in W.entries(_weights_models()):
        path = W.cache_path(w)
        cached = path.is_file()
        if args.cached and not cached:
            continue
        size = path.stat().st_size / 2**20 if cached else w.meta.get("_file_size")
        # Not cached: the download size torchvision's meta announces, marked with '~'.
        size_text = "-" if not size else f"{size:.1f} MB" if cached else f"~{size:.1f} MB"
        rows.append((W.entry_name(w), "yes" if cached else "no", size_text, str(path)))
    print(f"cache: {W.checkpoint_dir()}")
    _table(("weights", "cached", "size", "path"), rows)
    return 0


def cmd_weights_verify(args: argparse.Namespace) -> int:
    from .models import weights as W

    files = [Path(f) for f in args.files] or sorted(
        p for p in W.checkpoint_dir().glob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        print(f"nothing to verify: {W.checkpoint_dir()} holds no checkpoints")
        return 0
    bad = 0
    for f in files:
        if not f.is_file():
            _err(f"{f}: no such file")
            bad += 1
            continue
        v = W.verify(f)
        if v.expected is None:
            status = "UNKNOWN (no hash in file name)"
        elif v.ok:
            status = "OK"
        else:
            status = f"MISMATCH (sha256 {v.actual[:len(v.expected)]}, name says {v.expected})"
            bad += 1
        print(f"{status:<12} {f}")
    if bad:
        _err(f"{bad} file(s) failed verification (left in place; a stand-in or corrupted file fails here)")
    return 1 if bad else 0


def cmd_weights_import(args: argparse.Namespace) -> int:
    from .models import weights as W

    models = _weights_models()
    failed = 0
    for f in map(Path, args.files):
        try:
            entry = W.find_entry(args.as_entry or f.name, models)
            dst, v = W.import_file(f, entry, force=args.force)
        except SegTransferError as err:
            _err(str(err))
            failed += 1
            continue
        note = "" if v.ok else " (hash MISMATCH, imported because of --force)"
        print(f"imported {f} -> {dst} as {W.entry_name(entry)}{note}")
    return 1 if failed else 0


def cmd_weights_fetch(args: argparse.Namespace) -> int:
    from .models import weights as W

    models = _weights_models()
    failed = 0
    for name in args.names:
        try:
            entry = W.find_entry(name, models)
            path = W.ensure_cached(name, entry)
        except SegTransferError as err:
            _err(str(err))
            failed += 1
            continue
        print(f"{W.entry_name(entry)} -> {path}")
    return 1 if failed else 0


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


# ----------------------------------------------------------------------------------------- parsing

def _add_model_source(p: argparse.ArgumentParser) -> None:
    """The model flags infer and serve share (what ``_predictor`` reads): its source, device, backend, tiling, TTA."""
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", default="fcn_resnet50", help="zoo model name (default: fcn_resnet50)")
    src.add_argument("--checkpoint", help="a seg_transfer checkpoint (.pt) from fine-tuning")
    src.add_argument("--config", help="a YAML file whose model: block describes the model")
    src.add_argument("--model-file", help="a model written by `seg-transfer export` (.onnx, .torchscript): "
                     "classes and preprocessing are inside")
    p.add_argument("--weights", help="weights spec for --model: DEFAULT, an enum member, a .pth file or none")
    p.add_argument("--backbone-weights", help="backbone weights spec, used when --weights is none "
                   "(zoo) or always (assembled models)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--resize", type=int, help="shorter side fed to the model (default: the weights' own)")
    dep = p.add_argument_group("deployment and speed")
    dep.add_argument("--backend", choices=("torch", "onnxruntime", "openvino"),
                     help="what runs the model (default: torch; an .onnx --model-file: onnxruntime); "
                     "onnxruntime/openvino export the model to ONNX first")
    dep.add_argument("--fast", action="store_true", help="torch backend: fold BatchNorm, run channels-last")
    dep.add_argument("--tile", type=int, metavar="PX", help="segmentation, detection: sliding-window inference "
                     f"at full resolution with PX-pixel tiles (0: never; default: only above {_AUTO_TILE_MP} MP)")
    dep.add_argument("--overlap", type=int, default=128, metavar="PX", help="tile overlap (default 128)")
    dep.add_argument("--tta", metavar="SPEC", help="test-time augmentation: flip, scales=0.75,1,1.25 or both "
                     "(flip,scales=...)")


def _add_infer(sub: Any) -> None:
    inf = sub.add_parser("infer", help="predict images: masks and overlays, boxes, or top-k labels",
                         description="Predict with a zoo model, a config's model or a fine-tuned checkpoint "
                                     "(segmentation, detection or classification: the model's task).")
    inf.add_argument("inputs", nargs="*", help="image files or folders")
    _add_model_source(inf)
    inf.add_argument("--sample", action="store_true", help="also run on matplotlib's bundled sample photo")
    inf.add_argument("--out", default="outputs", help="output folder (default: outputs)")
    inf.add_argument("--class", dest="classes", action="append", default=[], metavar="NAME",
                     help="write NAME's probability as <stem>_NAME.png (repeatable)")
    inf.add_argument("--json", action="store_true", help="write <stem>.json with class pixel fractions "
                     "(classification: the top-k labels and probabilities)")
    inf.add_argument("--top-k", type=int, metavar="K", help="classification: the K most probable classes (default 5)")
    inf.add_argument("--score-threshold", type=float, metavar="S", help="detection: draw and list the boxes "
                     "scoring at least S (default 0.5); with --class NAME only NAME's boxes; --json: boxes, "
                     "labels and scores")
    inf.add_argument("--threshold", type=float, metavar="T", help="binary segmentation: foreground where its "
                     "probability is at least T (default 0.5); writes <stem>_mask.png (0/255) and <stem>_prob.png")
    inf.add_argument("-q", "--quiet", action="store_true", help="no per-image lines or progress bar")
    inf.set_defaults(func=cmd_infer)


def _add_serve(sub: Any) -> None:
    from .serve.options import ServeOptions

    d = ServeOptions()  # the defaults (a light import: --help stays torch-free)
    srv = sub.add_parser("serve", help="an HTTP server for a model: POST /predict, a page to try it, /metrics",
                         description="Serve a model over HTTP (needs the serve extra: pip install "
                                     "\"seg_transfer[serve]\"): POST /predict with an image, GET / for a page.")
    _add_model_source(srv)
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine "
                     "only; 0.0.0.0 for every interface)")
    srv.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: a free one, printed)")
    srv.add_argument("--token", help="ask /predict, /model and /metrics for this bearer token "
                     "(default: the SEG_TRANSFER_TOKEN variable, else none)")
    for flag, kind, default, metavar, text in (
            ("--max-batch", int, d.max_batch, "N", f"gather up to N concurrent requests into one model call "
             f"(default {d.max_batch}; 1: batching off)"),
            ("--batch-wait-ms", float, d.batch_wait_ms, "MS", f"how long the first request waits for others to "
             f"join its batch (default {d.batch_wait_ms:g})"),
            ("--max-queue", int, d.max_queue, "N", f"requests admitted at once; more are answered 503 (default "
             f"{d.max_queue})"),
            ("--timeout", float, d.timeout_s, "S", f"per-request limit in seconds; past it 504 (default {d.timeout_s:g})"),
            ("--max-bytes", int, d.max_bytes, "B", f"largest request body (default {d.max_bytes / 2**20:g} MiB)"),
            ("--max-pixels", int, d.max_pixels, "P", f"largest image (width x height, read from its header before "
             f"decoding; default {d.max_pixels:,})")):
        srv.add_argument(flag, type=kind, default=default, metavar=metavar, help=text)
    srv.add_argument("-q", "--quiet", action="store_true", help="no start-up line")
    srv.set_defaults(func=cmd_serve)


def _add_finetune_evaluate(sub: Any) -> None:
    fin = sub.add_parser("finetune", help="fine-tune a model on your labelled images (YAML config)",
                         description="Fine-tune with the transfer strategy the config names. Overrides: "
                                     "key.path=value, e.g. train.epochs=3 data.root=/data/camvid")
    fin.add_argument("config", nargs="?", help="YAML config (optional with --resume)")
    fin.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, after the CONFIG file "
                     "(before or after the options), e.g. train.epochs=3")
    fin.add_argument("--resume", metavar="RUN_DIR", help=f"continue the run in RUN_DIR from its {LAST}")
    fin.add_argument("--run-dir", type=Path, help="run folder (default: output.dir/output.name)")
    fin.add_argument("--check-data", action="store_true", help="scan the dataset, report every problem, exit")
    fin.add_argument("--limit-train", type=int, metavar="N", help="train on N items of the train split (a fixed "
                     "random subset: a quick trial; val untouched); the same as train.limit_train=N")
    fin.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    fin.set_defaults(func=cmd_finetune)

    pre = sub.add_parser("pretrain", help="self-supervised pretraining of a backbone on unlabelled images",
                         description="Pretrain a backbone (SimCLR, VICReg or the dense PixContrast) on a folder "
                                     f"of unlabelled images; RUN_DIR/{LAST} then serves as model.backbone_weights "
                                     "for any task. Overrides: key.path=value, e.g. pretrain.epochs=3")
    pre.add_argument("config", nargs="?", help="YAML config (optional with --resume)")
    pre.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, after the CONFIG file")
    pre.add_argument("--resume", metavar="RUN_DIR", help=f"continue the run in RUN_DIR from its {LAST}")
    pre.add_argument("--run-dir", type=Path, help="run folder (default: output.dir/output.name)")
    pre.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    pre.set_defaults(func=cmd_pretrain)

    ev = sub.add_parser("evaluate", help="score a checkpoint on a config's val split (or any folder)",
                        description="The task's metrics (mIoU and per-class IoU, COCO AP, accuracy and F1) "
                                    "and plots. A checkpoint in a run folder is scored on the run's own val "
                                    f"split (the data: block of its {CONFIG}). Point the data elsewhere "
                                    "with overrides, e.g. data.images=test data.masks=testannot data.split=all")
    ev.add_argument("config", help="YAML config whose data: block describes the images (for a run's checkpoint: "
                    "the run's saved data: block, unless data overrides or --config-split)")
    ev.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, after the CONFIG file "
                    "(before or after the options), e.g. data.split=all")
    ev.add_argument("--checkpoint", required=True, help=f"a seg_transfer checkpoint ({BEST})")
    ev.add_argument("--out", help=f"report folder (default: <checkpoint folder>/{EVAL_DIR})")
    ev.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    ev.add_argument("--tta", metavar="SPEC", help="score with test-time augmentation: flip, scales=0.75,1,1.25 "
                    "or both (flip,scales=...), to see what it buys before deploying it")
    ev.add_argument("--config-split", action="store_true", help="score CONFIG's val split even when the "
                    "checkpoint's run folder saved its own (by default a run's checkpoint is scored on the run's "
                    "val split, unless data overrides are given)")
    ev.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    ev.set_defaults(func=cmd_evaluate)


def _add_cv(sub: Any) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="applied to every run, e.g. train.epochs=3")
        p.add_argument("--folds", type=int, default=5, metavar="K", help="number of folds (default 5); with "
                       "data.group_regex, K = the number of groups leaves one group out")
        p.add_argument("--seeds", type=int, default=1, metavar="N", help="train each fold with N seeds "
                       "(train.seed, +1, ...; default 1)")
        p.add_argument("--limit-train", type=int, metavar="N", help="train on N items of each fold (a fixed "
                       "random subset: quick screening)")
        p.add_argument("--out", type=Path, metavar="DIR", help="output folder (default: output.dir/cv_<config> "
                       "or compare_<a>_vs_<b>)")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or epoch lines")

    cv = sub.add_parser("cv", help="cross-validate a config: K folds x N seeds, mean +- std of every metric",
                        description="K-fold cross-validation over the config's train and val images pooled: "
                                    "whole groups stay in one fold (data.group_regex), classes are balanced "
                                    "over folds (classification). Every fold is a normal run folder, "
                                    f"DIR/fold<k>_seed<s>/; the summary is DIR/{CV_SUMMARY_JSON}, .csv and {CV_PLOT}. A run's "
                                    "figures are its last epoch's, and only that epoch is evaluated unless "
                                    "train.val_interval=N asks for more.")
    cv.add_argument("config", help="YAML config")
    common(cv)
    cv.set_defaults(func=cmd_cv)
    cmp = sub.add_parser("compare", help="two recipes on the same folds and seeds: is B really better than A?",
                         description="Cross-validate two configs on the same folds and seeds and compare the "
                                     "task's main metric (mIoU, AP or accuracy) fold by fold: paired "
                                     "differences, a 95% confidence interval (paired t) and a verdict, "
                                     f"written to DIR/{COMPARE}.")
    cmp.add_argument("configs", nargs=2, metavar="CONFIG", help="recipe A, then recipe B")
    common(cmp)
    cmp.set_defaults(func=cmd_compare)


def _add_report(sub: Any) -> None:
    rep = sub.add_parser("report", help=f"write RUN_DIR/{REPORT}: one self-contained page about a run",
                         description="One HTML page (pictures inlined, no network) from a fine-tune's run folder "
                                     "or an evaluate --out folder: config, transfer report, curves, per-class "
                                     "table, confusion matrix, best and worst val images, timings, and the "
                                     "command that reproduces the run.")
    rep.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (output.dir/output.name) or evaluate's --out")
    rep.add_argument("--out", help=f"where to write the page (default: RUN_DIR/{REPORT})")
    rep.set_defaults(func=cmd_report)


def _add_suggest(sub: Any) -> None:
    sug = sub.add_parser("suggest", help="rank unlabelled images for labelling: uncertain and diverse first",
                         description=f"Score every image of a pool with a run's {BEST}: the model's uncertainty "
                                     "(pixel or image entropy; detection: 1 - best box score) times the distance, "
                                     "in the backbone's feature space, to the images already picked (greedy "
                                     f"k-center). Writes {SUGGESTIONS_CSV}, {SUGGESTIONS_TXT} and a contact sheet "
                                     f"{SUGGESTIONS_PNG} of the picks with their predictions.")
    sug.add_argument("run_dir", metavar="RUN_DIR", help=f"a fine-tune's run folder (its {BEST} is used)")
    sug.add_argument("--pool", required=True, metavar="DIR", help="the unlabelled images (searched recursively)")
    sug.add_argument("--n", type=int, required=True, metavar="N", help="how many images to pick")
    sug.add_argument("--out", metavar="DIR", help=f"where to write (default: RUN_DIR/{SUGGEST_DIR})")
    sug.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default: cpu)")
    sug.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no table of the picks")
    sug.set_defaults(func=cmd_suggest)


def _add_convert(sub: Any) -> None:
    conv = sub.add_parser("convert", help="write a dataset as folder masks, COCO JSON or class folders",
                          description="Write what training reads from a dataset in the toolkit's own layout, to "
                                      "inspect and version it: segmentation as the folder format (images, palette "
                                      "PNG masks, train.txt/val.txt), detection as COCO JSON, classification as "
                                      "class folders. E.g. seg-transfer convert labelme annotations/ --out ds/, "
                                      "seg-transfer convert run.yaml data.root=/data/x --out ds/")
    conv.add_argument("source", metavar="CONFIG_OR_FORMAT", help="a config file (its data: block) or a format name")
    conv.add_argument("options", nargs="*", metavar="KEY=VALUE",
                      help="config overrides (data.root=...), or the format's options (root=DIR, or DIR alone)")
    conv.add_argument("--out", required=True, help="output folder (new or empty)")
    conv.add_argument("--overwrite", action="store_true", help="write into a folder that holds files already")
    conv.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    conv.set_defaults(func=cmd_convert)


def _add_weights(sub: Any) -> None:
    wts = sub.add_parser("weights", help="manage the pretrained-checkpoint cache (offline use)")
    wsub = wts.add_subparsers(dest="weights_command", required=True, metavar="ACTION")
    wl = wsub.add_parser("list", help="every weights entry the registries use: cached or not, size, path")
    wl.add_argument("--cached", action="store_true", help="only cached entries")
    wl.set_defaults(func=cmd_weights_list)
    wv = wsub.add_parser("verify", help="check cached files' sha256 against the hash in their names")
    wv.add_argument("files", nargs="*", help="files to check (default: the whole cache)")
    wv.set_defaults(func=cmd_weights_verify)
    wi = wsub.add_parser("import", help="copy checkpoint files into the cache under their official names")
    wi.add_argument("files", nargs="+")
    wi.add_argument("--as", dest="as_entry", help="weights entry (e.g. FCN_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1)"
                    " when the file was renamed")
    wi.add_argument("--force", action="store_true", help="import even if the hash does not match")
    wi.set_defaults(func=cmd_weights_import)
    wf = wsub.add_parser("fetch", help="download weights (on a connected machine, to carry to an offline one)")
    wf.add_argument("names", nargs="+", help="model names (DEFAULT weights) or weights entries")
    wf.set_defaults(func=cmd_weights_fetch)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seg-transfer", description="Transfer learning for segmentation, detection "
                                "and classification on torchvision models.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_infer(sub)
    _add_serve(sub)
    _add_export(sub)
    _add_finetune_evaluate(sub)
    _add_cv(sub)
    adv = sub.add_parser("advise", help="recommend a transfer strategy for your dataset size and similarity")
    adv.add_argument("--num-images", type=int, required=True, help="labelled training images")
    adv.add_argument("--similarity", choices=("high", "low"), required=True,
                     help="how much your images look like the pretraining data (ImageNet/COCO photos)")
    adv.add_argument("--task", choices=("segmentation", "classification", "detection"), default="segmentation",
                     help="whose measured settings to add (default: segmentation)")
    adv.set_defaults(func=cmd_advise)
    mod = sub.add_parser("models", help="list backbones, necks, and each task's zoo models and heads")
    mod.add_argument("--backbones", action="store_true",
                     help="one table of the backbones, measured from the models: parameters, GFLOPs at 512x512, "
                          "strides, channels, torchvision's weights and whether they are cached")
    mod.set_defaults(func=cmd_models)
    _add_weights(sub)
    _add_report(sub)
    _add_suggest(sub)
    _add_convert(sub)
    return p


# The sub-commands that take KEY=VALUE overrides: the argument names of their CONFIG file(s) and overrides.
_OVERRIDES = {"finetune": ("config", "overrides"), "pretrain": ("config", "overrides"),
              "evaluate": ("config", "overrides"), "cv": ("config", "overrides"),
              "compare": ("configs", "overrides"), "convert": ("source", "options")}


def _is_override(word: str) -> bool:
    """``key.path=value``; a path with '=' in it (``runs/a=b.yaml``) or an option is not."""
    key, sep, _ = word.partition("=")
    return bool(sep) and re.fullmatch(r"\w[\w.\-]*", key) is not None


def _config_first(args: argparse.Namespace, configs: str, overrides: str) -> None:
    """An override where a CONFIG file goes (``finetune train.epochs=1 cfg.yaml``) fails naming it, with the
    order that works. ``finetune --resume DIR key=value`` has no CONFIG: _load_run_config takes it."""
    given = getattr(args, configs)
    given = [given] if isinstance(given, str) else list(given or ())
    misplaced = next((w for w in given if _is_override(w) and not Path(w).is_file()), None)
    if misplaced is None or getattr(args, "resume", None):
        return
    words = [*given, *getattr(args, overrides)]
    files = [w for w in words if not _is_override(w)] or ["CONFIG"]
    raise SegTransferError(f"{misplaced} is a KEY=VALUE override, not a CONFIG file: the CONFIG file comes first, "
                           f"then the overrides (seg-transfer {args.command} "
                           f"{' '.join(files + [w for w in words if _is_override(w)])})")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line as a Namespace; KEY=VALUE overrides may come anywhere, before or after options.

    argparse fills a positional list from one run of positionals only: overrides after an option come back
    as unknown arguments, and join the others here, in order. Anything else unknown stays an error.
    """
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    names = _OVERRIDES.get(args.command)
    late = [w for w in unknown if names and _is_override(w)]
    if len(late) < len(unknown):
        parser.error(f"unrecognized arguments: {' '.join(w for w in unknown if not (names and _is_override(w)))}")
    if names:
        setattr(args, names[1], [*getattr(args, names[1]), *late])
        _config_first(args, *names)
    return args


def _note(message: Warning | str, category: type[Warning], filename: str, lineno: int, line: Optional[str] = None) -> str:
    """Warnings as one line: seg_transfer's own read as notes, others keep their origin."""
    if "seg_transfer" in filename.replace(os.sep, "/").split("/"):
        return f"seg-transfer: note: {message}\n"
    return f"{Path(filename).name}:{lineno}: {category.__name__}: {message}\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    import warnings

    warnings.formatwarning = _note
    try:
        args = parse_args(argv)
        args.argv = list(argv) if argv is not None else sys.argv[1:]  # recorded by finetune/evaluate in the run folder
        return args.func(args)
    except SegTransferError as err:
        _err(str(err))
        return 2
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except BrokenPipeError:  # `seg-transfer weights list | head`
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
