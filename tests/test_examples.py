"""The examples run as scripts on loopback multicast (127.0.0.1, TTL 0) and say what they should."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import free_endpoint

pytestmark = pytest.mark.network

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def endpoint() -> list[str]:
    """--group/--port arguments: a group and a port free for it on this host."""
    where = free_endpoint()
    return ["--group", where["group"], "--port", str(where["port"])]


def start(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-u", str(EXAMPLES / script), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 20) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"{proc.args!r} did not finish:\n{out}")
    assert proc.returncode == 0, out
    assert "Traceback" not in out, out
    return out


def read_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, f"{proc.args!r} exited early (rc={proc.poll()})"
    return line


TOP_OF_BOOK = re.compile(r"book +1 +\d+ @ \d+ +\| +\d+ x \d+ +spread +\d+")


@pytest.mark.timeout(30)
def test_subscriber_joins_a_running_publisher() -> None:
    where = endpoint()
    pub = start("order_book_publisher.py", *where, "--instruments", "20", "--rate", "1000",
                "--duration", "4")
    try:
        assert read_line(pub).startswith("publishing 20 books")
        sub = start("order_book_subscriber.py", *where, "--duration", "2.5", "--top", "3")
        sub_out = finish(sub)
    finally:
        pub_out = finish(pub)
    assert sub_out.startswith("listening on")
    assert "SESSION_STARTED" in sub_out
    assert "SYNCED" in sub_out
    assert re.search(r"\] SYNCED  fresh 20/20  stale 0  suspect 0 ", sub_out), sub_out
    assert TOP_OF_BOOK.search(sub_out), sub_out
    assert "book    4" not in sub_out  # --top 3
    assert re.search(r"\d deltas/s .* snapshot cycles  20 leaves", pub_out), pub_out
    assert "END_OF_SESSION sent" in pub_out


@pytest.mark.timeout(30)
def test_subscriber_waits_for_publisher_and_sees_loss_and_session_end() -> None:
    where = endpoint()
    sub = start("order_book_subscriber.py", *where, "--duration", "5", "--top", "2",
                "--loss", "0.05", "--seed", "4")
    try:
        assert read_line(sub).startswith("listening on")  # joined before the publisher
        pub = start("order_book_publisher.py", *where, "--instruments", "10", "--rate", "1000",
                    "--duration", "0")
        try:
            assert read_line(pub).startswith("publishing 10 books")
            read_line(pub)
            read_line(pub)  # two status lines: about two seconds of market
        finally:
            pub.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop that ends the session
            pub_out = finish(pub)
    finally:
        sub_out = finish(sub)
    assert "END_OF_SESSION sent" in pub_out
    assert "SYNCED" in sub_out
    dropped = [int(n) for n in re.findall(r"dropped (\d+)", sub_out)]
    assert dropped
    assert dropped[-1] > 0  # 5% of datagrams dropped on purpose...
    resent = [int(n) for n in re.findall(r"resent (\d+)", sub_out)]
    assert resent[-1] > 0  # ...and sent again on request (SPEC §15)
    assert TOP_OF_BOOK.search(sub_out), sub_out
    assert "SESSION_ENDED" in sub_out
    assert "publisher ended its session" in sub_out


def test_posts_with_likes() -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "posts_with_likes.py"), *endpoint()],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "post 1 'Hello, multicast': 3 likes" in out
    assert "post 2 'Snapshots are underrated': 5 likes" in out
    assert "post 3 'TTL 0': 1 likes" in out
    assert ("replica: {1: Post(title='Hello, multicast', likes=3), "
            "2: Post(title='Snapshots are underrated', likes=5), "
            "3: Post(title='TTL 0', likes=1)}") in out


def test_examples_use_only_public_modules() -> None:
    """What an example needs is public API (issue 11): no ``grapevine._private`` import."""
    import ast

    for path in sorted(EXAMPLES.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                parts = name.split(".")
                assert not (parts[0] == "grapevine" and any(p.startswith("_") for p in parts)), (
                    f"{path.name} imports the private module {name}")
