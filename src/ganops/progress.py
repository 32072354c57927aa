"""Progress bars for every wait longer than a few seconds (tqdm), readable in a terminal and in a log file.

In a terminal the bar redraws in place. Where stderr is not a terminal (CI, ``make run > log``, the Prefect flow's
stage subprocesses, workers) a redrawn bar would be one endless line of carriage returns, so the bar is written as a
plain line every ``GANOPS_PROGRESS_INTERVAL_S`` seconds (default 30) instead, plus the final line.
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any

from tqdm.auto import tqdm

ENV_INTERVAL = "GANOPS_PROGRESS_INTERVAL_S"
DEFAULT_INTERVAL_S = 30.0


class _PlainLines:
    """A file for tqdm that turns each carriage-return redraw into one newline-terminated line."""

    def __init__(self, stream: IO[str]):
        self.stream = stream

    def write(self, text: str) -> int:
        line = text.replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")
            self.stream.flush()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def is_terminal(stream: IO[str] | None = None) -> bool:
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def plain_interval_s() -> float:
    """Seconds between plain progress lines (``GANOPS_PROGRESS_INTERVAL_S``; a bad value falls back to 30)."""
    try:
        return max(float(os.environ.get(ENV_INTERVAL, DEFAULT_INTERVAL_S)), 0.0)
    except ValueError:
        return DEFAULT_INTERVAL_S


def progress_bar(*, total: float | None, desc: str, unit: str, disable: bool = False, **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr with ``desc``, ``unit``, rate and ETA; plain periodic lines when not a terminal."""
    if not is_terminal():
        kwargs.setdefault("file", _PlainLines(sys.stderr))
        kwargs.setdefault("mininterval", plain_interval_s())
        kwargs.setdefault("ascii", True)
        kwargs.setdefault("ncols", 100)
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=is_terminal(), **kwargs)


__all__ = ["ENV_INTERVAL", "is_terminal", "plain_interval_s", "progress_bar"]
