"""``report.html``: one self-contained page about a run folder (a fine-tune's, or an evaluation's), read
from the files the trainer and ``evaluate`` leave there. Pictures are inlined as base64 ``data:`` URIs,
the style sheet is inline and there is no script: the page opens anywhere, offline, as one file.

Sections (each an ``<section id=...>``, with a line saying what is missing when a file is absent):
summary, command (how to reproduce the run), transfer (what was loaded, re-initialised, frozen),
curves, per-class (the best epoch's figures), confusion, pr-curves (detection), predictions (the best
and worst val images by their own score), timings, config.
"""
from __future__ import annotations

import base64
import html
import math
import shlex
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, Union

from ..errors import SegTransferError
from ..io import save_text
from ..run_folder import (
    BEST_WORST,
    CONFIG,
    CONFUSION,
    CURVES,
    EVAL_METRICS,
    MARKERS,
    METRICS_CSV,
    PR_CURVES,
    PREDICTIONS,
    RUN_JSON,
    TRANSFER_REPORT,
    VAL_METRICS_BEST,
    RunFolder,
    read_json,
)

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d232b; margin: 0;
       background: #f3f5f8; }
main { max-width: 1140px; margin: 0 auto; padding: 18px 26px 40px; }
header { background: #1f3a5a; color: #fff; padding: 18px 26px; }
header h1 { margin: 0 0 4px; font-size: 22px; font-weight: 600; }
header p { margin: 0; opacity: .85; }
nav { margin-top: 10px; font-size: 13px; }
nav a { color: #cfe0f5; margin-right: 14px; text-decoration: none; }
section { background: #fff; border: 1px solid #dde3ea; border-radius: 6px; padding: 4px 20px 16px; margin: 16px 0; }
h2 { font-size: 17px; margin: 14px 0 10px; color: #1f3a5a; }
h3 { font-size: 14px; margin: 14px 0 6px; }
table { border-collapse: collapse; margin: 6px 0 10px; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid #e5e9ee; padding: 4px 10px; text-align: right; }
th { background: #f0f3f7; font-weight: 600; }
th:first-child, td:first-child { text-align: left; }
td.bar { background-repeat: no-repeat; background-size: var(--w) 100%;
         background-image: linear-gradient(#cfe3f7, #cfe3f7); }
tr.best td { font-weight: 600; background: #fff6d9; }
table.kv th { text-align: left; background: none; color: #56606b; font-weight: 500; }
table.kv td { text-align: left; }
pre, code { font: 12.5px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
pre { background: #f6f8fa; border: 1px solid #e1e5ea; border-radius: 4px; padding: 10px 12px; overflow-x: auto;
      white-space: pre-wrap; word-break: break-all; }
img { max-width: 100%; height: auto; border: 1px solid #e5e9ee; margin: 6px 0; }
#confusion img, #pr-curves img { max-width: 640px; }
.missing { color: #8a6d1f; background: #fff8e1; padding: 6px 10px; border-radius: 4px; display: inline-block; }
.note { color: #56606b; font-size: 13px; }
details summary { cursor: pointer; color: #1f3a5a; margin: 4px 0; }
"""

SECTIONS = ("summary", "command", "transfer", "curves", "per-class", "confusion", "pr-curves", "predictions",
            "timings", "config")
TITLES = {"summary": "Summary", "command": "Reproduce", "transfer": "Transfer: loaded, re-initialised, frozen",
          "curves": "Curves", "per-class": "Per-class figures", "confusion": "Confusion matrix",
          "pr-curves": "Precision-recall curves", "predictions": "Best and worst val images", "timings": "Timings",
          "config": "Resolved config"}
COUNT_COLUMNS = ("support", "boxes")  # per-class columns that are counts, not rates
COLUMN_LABELS = {"iou": "IoU", "ap": "AP", "ap50": "AP50", "f1": "F1"}
MAX_NAMES = 200  # names listed per kind in the transfer section (a model has thousands of tensors)


# ------------------------------------------------------------------------------------------ reading
class RunFiles:
    """The files of a run folder, and of the training run an evaluation's checkpoint came from."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.run = self.json(RUN_JSON) or {}
        train = self.run.get("train_run")
        self.train = Path(train) if train and Path(train).is_dir() and Path(train) != folder else None
        self.train_run = (read_json(RunFolder(self.train).run_json) or {}) if self.train else {}

    def find(self, name: str, train_too: bool = True) -> Optional[Path]:
        """``name`` in the folder, else (``train_too``) in the training run's."""
        for folder in (self.folder, self.train if train_too else None):
            if folder is not None and (folder / name).is_file():
                return folder / name
        return None

    def json(self, name: str, train_too: bool = False) -> Optional[dict[str, Any]]:
        path = self.find(name, train_too)
        return read_json(path) if path else None

    def text(self, name: str, train_too: bool = False) -> Optional[str]:
        path = self.find(name, train_too)
        return path.read_text(errors="replace") if path else None


def _history(files: RunFiles) -> list[dict[str, Any]]:
    """The per-epoch rows: run.json's (every logger choice has them), else metrics.csv's."""
    for run in (files.run, files.train_run):
        if run.get("history"):
            return list(run["history"])
    path = files.find(METRICS_CSV)
    return RunFolder(path.parent).metrics_rows() if path else []


# ------------------------------------------------------------------------------------------ writing
def _e(value: Any) -> str:
    return html.escape(str(value))


def _fmt(value: Any, count: bool = False) -> str:
    if isinstance(value, bool) or value is None:
        return "–" if value is None else str(value)
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return "–"
        return f"{int(value):,}" if count or isinstance(value, int) else f"{value:.4f}"
    return _e(value)


def _seconds(value: Any) -> str:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "–"
    if value < 120:
        return f"{value:.1f} s"
    return f"{value / 60:.1f} min" if value < 7200 else f"{value / 3600:.2f} h"


def _missing(what: str) -> str:
    return f'<p class="missing">not available: {_e(what)}</p>'


def image(path: Optional[Path], alt: str, missing: str = "") -> str:
    """``<img>`` with the PNG inlined as a data URI, or the 'not available' line."""
    if path is None or not path.is_file():
        return _missing(missing or f"{alt} (no picture)")
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "") -> str:
    """Cells are HTML already (escape text before)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _kv(pairs: Iterable[tuple[str, str]]) -> str:
    """A two-column table of label / HTML value."""
    return '<table class="kv">' + "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in pairs) + "</table>"


def _config(files: RunFiles) -> dict[str, Any]:
    import yaml  # a dependency already (configs are YAML); here only to read the saved one

    text = files.text(CONFIG, train_too=True)
    try:
        data = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


# ------------------------------------------------------------------------------------------ sections
def _summary(files: RunFiles, cfg: dict[str, Any], best: Optional[dict[str, Any]]) -> str:
    run = files.run
    model = cfg.get("model") or {}
    data = cfg.get("data") or {}
    name = model.get("name") or " + ".join(str(model.get(k)) for k in ("backbone", "neck", "head") if model.get(k))
    label = run.get("metric_label") or run.get("metric") or "score"
    pairs = [("kind", _e(run.get("kind", "run folder"))), ("task", _e(run.get("task", "–"))),
             ("model", _e(name or "–")),
             ("data", _e(", ".join(f"{k}: {data[k]}" for k in ("format", "root", "images") if data.get(k)) or "–")),
             ("classes", _e(", ".join(str(c) for c in run.get("classes") or (best or {}).get("classes") or []
                                      if not str(c).startswith("__")) or "–"))]  # not detection's __background__
    if run.get("images"):
        pairs.append(("images", _e(", ".join(f"{v} {k}" for k, v in run["images"].items()))))
    if run.get("kind") == "evaluate":
        pairs.append(("checkpoint", f"<code>{_e(run.get('checkpoint', '–'))}</code>"))
        metric = run.get("metric")
        if best and metric in best:
            pairs.append((f"val {label}", _fmt(best[metric])))
    elif run.get("best_epoch", -1) >= 1:
        epochs = len(run.get("history") or [])
        pairs.append((f"best val {label}", f"<b>{_fmt(run.get('best'))}</b> at epoch {run['best_epoch']} of {epochs}"
                      + (" (stopped early)" if run.get("stopped_early") else "")))
    pairs += [("device", _e(f"{run.get('device', '–')}" + (f" x {run['world_size']} processes"
                                                           if run.get("world_size", 1) > 1 else ""))),
              ("started", _e(run.get("started") or "–")), ("finished", _e(run.get("finished") or "not finished"))]
    return _kv(pairs)


def command_line(run: dict[str, Any]) -> Optional[str]:
    """The shell line that reruns a recorded command (in its folder, under torchrun when it ran there)."""
    argv = run.get("command")
    if not argv:
        return None
    line = shlex.join(str(a) for a in argv)
    if run.get("world_size", 1) > 1 and argv[0] == "seg-transfer":
        line = f"torchrun --nproc_per_node {run['world_size']} -m seg_transfer.cli " + shlex.join(argv[1:])
    return f"cd {shlex.quote(run['cwd'])} && {line}" if run.get("cwd") else line


def _command(files: RunFiles) -> str:
    run = files.run
    out = []
    line = command_line(run)
    if line:
        out.append(f"<p>The command that ran this {_e(run.get('kind', 'run'))}:</p><pre>{_e(line)}</pre>")
    else:
        out.append(_missing("the command (the run was started from Python, or before commands were recorded)"))
    for r in run.get("resumes") or []:
        if command_line(r):
            out.append(f"<p class=\"note\">resumed at epoch {_e(r.get('epoch'))} ({_e(r.get('at'))}):</p>"
                       f"<pre>{_e(command_line(r))}</pre>")
    if run.get("kind") != "evaluate" and files.find(CONFIG, train_too=False):
        config = RunFolder(files.folder.resolve()).config
        out.append(f"<p class=\"note\">The saved, resolved config reruns it too (same data paths, same seed):</p>"
                   f"<pre>{_e(shlex.join(['seg-transfer', 'finetune', str(config)]))}</pre>")
    return "".join(out)


def _names(title: str, names: Sequence[str]) -> str:
    if not names:
        return ""
    shown = "".join(f"{_e(n)}\n" for n in names[:MAX_NAMES])
    more = f"... and {len(names) - MAX_NAMES} more\n" if len(names) > MAX_NAMES else ""
    return f"<details><summary>{_e(title)} ({len(names)})</summary><pre>{shown}{more}</pre></details>"


def _transfer(files: RunFiles, cfg: dict[str, Any]) -> str:
    out = []
    if files.train is not None:
        out.append(f'<p class="note">From the training run {_e(files.train)}.</p>')
    report = files.json(TRANSFER_REPORT, train_too=True)
    model = cfg.get("model") or {}
    if report:
        c = report.get("counts", {})
        total = sum(c.get(k, 0) for k in ("loaded", "skipped", "missing"))
        out.append(f"<p>Weights from <b>{_e(report.get('source') or 'source weights')}</b>: loaded "
                   f"{c.get('loaded', 0)} of the model's {total} tensors; {c.get('skipped', 0)} skipped (shape "
                   f"mismatch) and {c.get('missing', 0)} missing from the source were re-initialised; "
                   f"{c.get('unexpected', 0)} unexpected in the source were ignored.</p>")
        parts = report.get("by_part") or {}
        kinds = ("loaded", "skipped", "missing", "unexpected")
        out.append(_table(("part", *kinds), ([_e(p), *(str(v.get(k, 0)) if v.get(k) else "" for k in kinds)]
                                              for p, v in parts.items())))
        if report.get("class_aware_init") is not None:
            ca = report["class_aware_init"]
            out.append(f"<p>Class-aware init: {_e(', '.join(ca)) if ca else 'no class name matches the source'}"
                       f"{' (their classifier rows came from the source)' if ca else ''}.</p>")
        skipped = [f"{s['name']}: source {s['source_shape']} vs model {s['model_shape']}"
                   for s in report.get("skipped", [])]
        out += [_names("re-initialised: shape mismatch", skipped),
                _names("re-initialised: missing from the source", report.get("missing", [])),
                _names("ignored: only in the source", report.get("unexpected", []))]
    else:
        out.append(f"<p>{_e(_built_weights(model))}</p>")
    freeze = (files.run.get("freeze") or files.train_run.get("freeze")) if files.run or files.train_run else None
    if freeze:
        parts = freeze.get("parts", {})
        total_t = sum(v["trainable"] for v in parts.values())
        total_f = sum(v["frozen"] for v in parts.values())
        rows = [[_e(p), f"{v['trainable']:,}", f"{v['frozen']:,}", _state(v["trainable"], v["frozen"])]
                for p, v in parts.items()]
        rows.append(["<b>total</b>", f"<b>{total_t:,}</b>", f"<b>{total_f:,}</b>", ""])
        out.append(f"<h3>Freezing (freeze.strategy: {_e(freeze.get('strategy', '–'))}; "
                   f"{freeze.get('bn_held_in_eval', 0)} BatchNorm layers held in eval)</h3>")
        out.append(_table(("part", "trainable parameters", "frozen parameters", ""), rows))
        unfrozen = files.run.get("unfrozen") or files.train_run.get("unfrozen")
        if unfrozen:
            out.append(f"<p>Unfrozen during training (freeze.schedule): {_e(', '.join(unfrozen))}.</p>")
    else:
        out.append(_missing(f"the freezing table ({RUN_JSON})"))
    return "".join(out)


def _state(trainable: int, frozen: int) -> str:
    return "no parameters" if not trainable + frozen else "trains" if not frozen else \
        "frozen" if not trainable else "partly frozen"


def _built_weights(model: dict[str, Any]) -> str:
    """What the model block says was loaded when there is no partial-loading report."""
    def spec(key: str) -> Optional[str]:
        value = model.get(key)
        return None if value is None or str(value).lower() in ("none", "null", "") else str(value)
    if model.get("name"):  # a zoo model: its own weights would have been partially loaded (and reported)
        backbone = spec("backbone_weights")
        return (f"Zoo model {model['name']} without its pretrained weights; "
                + (f"backbone from {backbone}, loaded when the model was built; the rest freshly initialised."
                   if backbone else "every layer freshly initialised (random init)."))
    backbone = spec("backbone_weights")
    if backbone:
        return (f"Backbone {model.get('backbone')} from {backbone}, loaded whole when the model was built; the neck "
                f"({model.get('neck')}) and head ({model.get('head')}) freshly initialised.")
    return "No pretrained weights (model.backbone_weights: null): every layer freshly initialised (random init)."


def _per_class(files: RunFiles, best: Optional[dict[str, Any]], history: list[dict[str, Any]]) -> str:
    if not best or not best.get("per_class"):
        return _missing(f"per-class figures ({VAL_METRICS_BEST} / {EVAL_METRICS})")
    per_class: dict[str, dict[str, Any]] = best["per_class"]
    columns = list(dict.fromkeys(k for v in per_class.values() for k in v))
    label = files.run.get("metric_label") or best.get("metric", "")
    score = f"{_e(label)} {_fmt(best.get(best.get('metric', ''), None))}"
    if files.run.get("kind") == "evaluate":
        head = f"<p>The checkpoint on this val split ({score}).</p>"
    else:
        head = f"<p>At the best epoch, <b>{_e(best.get('epoch', '–'))}</b> of {len(history)} (val {score}).</p>"

    def cell(key: str, value: Any) -> str:
        count = key in COUNT_COLUMNS
        if not count and isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= 1:
            # a bar behind each rate (the style sheet draws it): its width is the value
            return f'<td class="bar" style="--w:{value * 100:.1f}%">{_fmt(value)}</td>'
        return f"<td>{_fmt(value, count)}</td>"
    head_row = "".join(f"<th>{_e(COLUMN_LABELS.get(h, h))}</th>" for h in ("class", *columns))
    rows = "".join(f"<tr><td>{_e(name)}</td>" + "".join(cell(k, v.get(k)) for k in columns) + "</tr>"
                   for name, v in per_class.items())
    return head + f'<table class="per-class"><thead><tr>{head_row}</tr></thead><tbody>{rows}</tbody></table>'


def _curves(files: RunFiles) -> str:
    path = files.find(CURVES)
    note = ""
    if path is not None and files.run.get("kind") == "evaluate":
        note = f'<p class="note">From the training run {_e(path.parent)}.</p>'
    return note + image(path, "loss and validation curves per epoch", f"{CURVES} (no epoch finished)")


def _confusion(files: RunFiles, task: str) -> str:
    when = "of the checkpoint" if files.run.get("kind") == "evaluate" else "at the best epoch"
    notes = {"segmentation": f"Pixels {when}; each row (label) normalised to 1: the diagonal is each class's "
                             "recall, grey rows had no labelled pixels.",
             "classification": f"Images {when}; each row (label) normalised to 1: the diagonal is each class's recall.",
             "detection": f"Boxes {when}, matched one to one at IoU 0.5 (detections scoring at least 0.5): the first "
                          "row counts false alarms, the first column missed boxes."}
    return f'<p class="note">{_e(notes.get(task, ""))}</p>' + image(files.find(CONFUSION, train_too=False),
                                                                    "confusion matrix", CONFUSION)


def _predictions(files: RunFiles, best: Optional[dict[str, Any]]) -> str:
    out = []
    label = (best or {}).get("image_score") or files.run.get("image_score") or "score"
    path = files.find(BEST_WORST, train_too=False)
    if path is not None:
        out.append(f'<p class="note">Ranked by each image\'s own {_e(label)} at the best epoch (best first, '
                   f'then the worst).</p>')
    out.append(image(path, "best and worst val images", f"{BEST_WORST} (output.num_predictions: 0?)"))
    scores = (best or {}).get("image_scores") or []
    if scores:
        finite = sorted(s for s in scores if isinstance(s, (int, float)) and math.isfinite(s))
        if finite:
            mid = finite[len(finite) // 2]
            same = " Every image scores the same: which are shown as best and worst is arbitrary." \
                if finite[0] == finite[-1] else ""
            out.append(f'<p class="note">{_e(label)} over {len(finite)} val images: min {finite[0]:.3f}, '
                       f'median {mid:.3f}, max {finite[-1]:.3f}.{same}</p>')
    spread = files.find(PREDICTIONS, train_too=False)
    if spread is not None and files.run.get("kind") != "evaluate":  # folded: the page stays short
        out.append("<details><summary>Predictions spread evenly over the val split (the last epoch's "
                   f"{PREDICTIONS})</summary>" + image(spread, "predictions over the val split") + "</details>")
    return "".join(out)


def _timings(files: RunFiles, history: list[dict[str, Any]]) -> str:
    run = files.run
    pairs = []
    for key, label in (("setup_seconds", "set-up (data, model, weights)"), ("cache_seconds", "feature cache"),
                       ("fit_seconds", "training (all epochs, with outputs)"), ("load_seconds", "checkpoint and data"),
                       ("eval_seconds", "evaluation"), ("total_seconds", "total")):
        if isinstance(run.get(key), (int, float)) and (run[key] > 0 or key != "cache_seconds"):
            pairs.append((label, _seconds(run[key])))
    out = [_kv(pairs)] if pairs else []
    if history and run.get("kind") != "evaluate":
        rows = [[_e(int(r.get("epoch", i + 1))), _seconds(r.get("train_seconds")), _seconds(r.get("eval_seconds")),
                 _seconds(r.get("seconds"))] for i, r in enumerate(history)]
        secs = [float(r["seconds"]) for r in history if isinstance(r.get("seconds"), (int, float))]
        out.append(_table(("epoch", "train", "eval", "epoch total"), rows))
        if secs:
            note = f"{len(secs)} epochs, {_seconds(sum(secs))} in all, {_seconds(sum(secs) / len(secs))} per epoch"
            if isinstance(run.get("fit_seconds"), (int, float)) and run["fit_seconds"] > sum(secs):
                note += f"; writing checkpoints and figures took {_seconds(run['fit_seconds'] - sum(secs))} more"
            out.append(f'<p class="note">{_e(note)}.</p>')
    return "".join(out) or _missing(f"timings ({RUN_JSON})")


# -------------------------------------------------------------------------------------------- page
def render(folder: Union[str, Path]) -> str:
    """The report page of run folder ``folder`` (a fine-tune's, or ``evaluate``'s out folder) as HTML."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SegTransferError(f"{folder}: no such run folder")
    files = RunFiles(folder)
    if not RunFolder(folder).is_run_folder():
        raise SegTransferError(f"{folder}: not a run folder (none of {', '.join(MARKERS)} is there)")
    cfg = _config(files)
    history = _history(files)
    best = files.json(VAL_METRICS_BEST) or files.json(EVAL_METRICS)
    task = files.run.get("task") or ""
    sections: dict[str, Callable[[], str]] = {
        "summary": lambda: _summary(files, cfg, best),
        "command": lambda: _command(files),
        "transfer": lambda: _transfer(files, cfg),
        "curves": lambda: _curves(files),
        "per-class": lambda: _per_class(files, best, history),
        "confusion": lambda: _confusion(files, task),
        "pr-curves": lambda: image(files.find(PR_CURVES, train_too=False), "precision-recall curves per class",
                                   PR_CURVES),
        "predictions": lambda: _predictions(files, best),
        "timings": lambda: _timings(files, history),
        "config": lambda: (f"<pre>{_e(files.text(CONFIG, train_too=True))}</pre>"
                           if files.find(CONFIG) else _missing(CONFIG)),
    }
    shown = [s for s in SECTIONS if s != "pr-curves" or task == "detection"]
    body = "".join(f'<section id="{s}"><h2>{_e(TITLES[s])}</h2>{sections[s]()}</section>' for s in shown)
    nav = "".join(f'<a href="#{s}">{_e(TITLES[s].split(":")[0])}</a>' for s in shown)
    title = f"{folder.resolve().name}: {task or 'run'} report"
    sub = f"{files.run.get('kind', 'run')} · {folder.resolve()}"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{_e(title)}</title>"
            f"<style>{STYLE}</style></head><body><header><h1>{_e(title)}</h1><p>{_e(sub)}</p>"
            f"<nav>{nav}</nav></header><main>{body}</main></body></html>\n")


def write_report(folder: Union[str, Path], out: Optional[Union[str, Path]] = None) -> Path:
    """``folder/report.html`` (or ``out``), written atomically; returns its path."""
    path = Path(out) if out else RunFolder(folder).report
    return save_text(render(folder), path)
