"""Shared fixtures: every test fails if it leaks a thread (python-zeroconf's rule)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def verify_threads_ended() -> Iterator[None]:
    """Fail the test if it leaves a thread running."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 2.0
    leaked: set[threading.Thread] = set()
    while time.monotonic() < deadline:
        leaked = {t for t in threading.enumerate() if t not in before and t.is_alive()}
        if not leaked:
            return
        # Threads that were asked to stop get a moment to finish; wait on them, not a sleep.
        next(iter(leaked)).join(timeout=0.05)
    pytest.fail(f"threads leaked: {sorted(t.name for t in leaked)}")
