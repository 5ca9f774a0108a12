"""Shared fixtures: every test fails if it leaks a thread (python-zeroconf's rule); tests that
open real sockets take a free multicast ``endpoint``."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import Endpoint, free_endpoint


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


@pytest.fixture
def endpoint() -> Endpoint:
    """``{"group", "port"}``: a test group and a port free for it on this host.

    Pass it as ``**endpoint`` to Publisher, Subscriber, open_sender or open_receiver, with
    their loopback defaults (interface 127.0.0.1, TTL 0).
    """
    return free_endpoint()
