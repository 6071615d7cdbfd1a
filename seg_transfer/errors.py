"""The few exception types the CLI turns into one-line messages (exit status 2)."""
from __future__ import annotations

import difflib
from typing import Iterable


class SegTransferError(Exception):
    """Base class: a problem the user can fix, reported as one line without a traceback."""


class ConfigError(SegTransferError, ValueError):
    """A bad name, key or value in a model/config spec."""


class WeightsUnavailableError(SegTransferError):
    """A pretrained checkpoint is neither in the local cache nor downloadable."""


class BadInputError(SegTransferError):
    """An input image (or other file) cannot be used; the message names the file."""


class ImageTooLargeError(BadInputError):
    """An image whose header declares more pixels than allowed (refused before decoding)."""


def suggest(name: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for a close match of ``name`` in ``choices``, else ''."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown(kind: str, name: object, choices: Iterable[str], where: str = "") -> ConfigError:
    """Build the standard 'unknown X' error: the bad name, a suggestion and the valid choices."""
    choices = sorted(str(c) for c in choices)
    loc = f"{where}: " if where else ""
    return ConfigError(
        f"{loc}unknown {kind} '{name}'{suggest(str(name), choices)}; valid: {', '.join(choices)}"
    )
