"""The server's batching and limits (no heavy import: the CLI reads the defaults for ``--help``)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

from ..errors import ConfigError

# Each limit's command-line flag, for the one-line error naming it.
FLAGS = {"max_batch": "--max-batch", "batch_wait_ms": "--batch-wait-ms", "max_queue": "--max-queue",
         "timeout_s": "--timeout", "max_bytes": "--max-bytes", "max_pixels": "--max-pixels"}


@dataclass(frozen=True)
class ServeOptions:
    """Batching and limits. ``max_batch=1`` is batching off; ``token``: the bearer token /predict, /model
    and /metrics ask for (None: open)."""

    max_batch: int = 8
    batch_wait_ms: float = 10.0
    max_queue: int = 64  # prediction requests admitted (waiting or running); more are answered 503
    timeout_s: float = 60.0  # per request, from admission to the answer; past it 504
    max_bytes: int = 20 * 2**20  # the request body
    max_pixels: int = 40_000_000  # width x height, read from the image header before decoding
    token: Optional[str] = None

    def __post_init__(self) -> None:
        for key, flag in FLAGS.items():
            value = getattr(self, key)
            if value < 0 or (value == 0 and key != "batch_wait_ms"):
                raise ConfigError(f"{flag}: expected a {'non-negative' if key == 'batch_wait_ms' else 'positive'} "
                                  f"number, got {value}")

    def public(self) -> dict[str, Any]:
        """The options ``GET /model`` shows (the token is not shown, only whether one is asked for)."""
        return {**{k: v for k, v in asdict(self).items() if k != "token"}, "token_required": self.token is not None}
