"""What the command-line tools share about their standard output."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

__all__ = ["stop_quietly_on_broken_pipe"]


def stop_quietly_on_broken_pipe(function: Callable[[], int]) -> int:
    """``function()``; if the reader of stdout went away (``grapevine decode ... | head``),
    stop quietly with status 0 as Unix tools do, instead of a traceback."""
    try:
        return function()
    except BrokenPipeError:
        # Python flushes stdout again at exit, which would fail once more: point it at
        # /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0
