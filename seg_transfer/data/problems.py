"""What is wrong with a dataset: ``Problem``, the ``DataError`` that carries one, and how builders report them.

Bad data otherwise surfaces far from its cause (a CUDA device-side assert deep inside the loss), so every
problem names the file and says how to fix it. Builders raise the first problem they meet, or inside
``collecting()`` (the data check, ``--check-data``) record them all.
"""
from __future__ import annotations

import contextlib
import contextvars
import sys
import threading
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

from ..errors import SegTransferError

# Problem kinds, so callers (and tests) can tell them apart without parsing messages.
KINDS = ("missing_path", "unreadable", "missing_mask", "missing_image", "duplicate_name", "lossy_mask",
         "rgb_mask", "binary_mask", "size_mismatch", "label_range", "empty_split", "bad_list", "absent_class",
         "bad_box", "unknown_class",  # box annotations (detection.py)
         "name_spaces", "not_photo", "converted",  # class folders (classification.py)
         "unknown_colour",  # colour masks (colors.py)
         "bad_shape", "clipped",  # annotation-tool files (labelme.py, yolo.py)
         "overlap",  # list files: val inside train (split.py)
         "too_few_classes")  # a split labelled with fewer classes than a model learns from (checks.py)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset; ``message`` names the file and the fix."""

    kind: str
    path: str
    message: str
    severity: str = "error"  # "warning": worth a look, training still works

    def __str__(self) -> str:
        return self.message


class DataError(SegTransferError):
    """A dataset file or split cannot be used; the message names the file."""

    def __init__(self, message: str, problem: Optional[Problem] = None):
        # Constructible from the message alone: a DataLoader re-raises a worker's error as
        # type(err)("Caught ... in DataLoader worker ...\n<traceback>"); keep only the message line.
        if problem is None and message.startswith("Caught DataError in DataLoader worker"):
            last = message.rstrip().splitlines()[-1]
            message = last.split(f"{DataError.__name__}: ", 1)[-1]
        super().__init__(message)
        self.problem = problem or Problem("error", "", message)


def fail(problem: Problem, more: int = 0) -> DataError:
    """The DataError for ``problem``; ``more`` counts the further problems left unmentioned."""
    tail = f" (and {more} more; the data check, --check-data, lists them all)" if more else ""
    return DataError(problem.message + tail, problem)


_collector: contextvars.ContextVar[Optional[list[Problem]]] = contextvars.ContextVar(
    "seg_transfer_data_problems", default=None)


@contextlib.contextmanager
def collecting() -> Iterator[list[Problem]]:
    """Inside this block, builders record construction problems here instead of raising the first."""
    found: list[Problem] = []
    token = _collector.set(found)
    try:
        yield found
    finally:
        _collector.reset(token)


def report(problems: Sequence[Problem]) -> None:
    """Raise the first of ``problems`` (outside ``collecting()``), or record them all (inside it)."""
    if not problems:
        return
    found = _collector.get()
    if found is None:
        raise fail(problems[0], len(problems) - 1)
    found.extend(problems)


_said: set[str] = set()
_said_lock = threading.Lock()


def say_once(message: str) -> None:
    """Print ``message`` to stderr once per process: the data check and the Trainer each build the dataset."""
    with _said_lock:
        if message in _said:
            return
        _said.add(message)
    print(message, file=sys.stderr, flush=True)


def warn(problems: Sequence[Problem]) -> None:
    """Warnings found while building a dataset: recorded inside ``collecting()`` (the data check lists them),
    else each printed once; training goes on either way."""
    found = _collector.get()
    for problem in problems:
        if found is not None:
            found.append(problem)
            with _said_lock:  # listed by the check: the Trainer's build need not say it again
                _said.add(f"warning: {problem}")
        else:
            say_once(f"warning: {problem}")
