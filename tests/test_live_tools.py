"""``grapevine listen``, ``stats``, ``record`` and ``play`` on loopback multicast.

Each tool runs as the user runs it (a ``python -m grapevine`` process); the test waits for
the line it writes once its socket is joined, then sends. Everything goes to a free test
group and port through 127.0.0.1 with TTL 0 (the tools' defaults and the library's).
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pytest
from test_replay_cmd import Stream, book_stream, write_pcapng

from grapevine import Publisher, PublisherConfig
from grapevine._capture import Capture, read_packets
from grapevine._transport import open_sender
from grapevine.book import OrderBookModel
from grapevine.codec import EndOfSession, decode_datagram
from grapevine.testing import Market

pytestmark = pytest.mark.network

ROOT = Path(__file__).resolve().parent.parent
VECTORS = {p.stem: bytes.fromhex(json.loads(p.read_text())["hex"])
           for p in (ROOT / "protocol" / "vectors").glob("*.json")}


def tool(*argv: str, stdout: int | IO[Any] = subprocess.PIPE) -> subprocess.Popen[bytes]:
    # Unbuffered pipes: wait_for_line reads exactly a line, so select() sees what is left.
    return subprocess.Popen([sys.executable, "-m", "grapevine", *argv], stdout=stdout,
                            stderr=subprocess.PIPE, cwd=ROOT, bufsize=0,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def wait_for_line(stream: IO[bytes] | None, text: str, timeout: float = 20) -> str:
    """Read ``stream`` line by line until one contains ``text`` (at most ``timeout`` s)."""
    assert stream is not None
    deadline = time.monotonic() + timeout
    seen = []
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(deadline - time.monotonic()):
                break
            line = stream.readline().decode()
            if not line:
                break
            seen.append(line)
            if text in line:
                return line
    raise AssertionError(f"no line with {text!r} within {timeout} s; got {seen}")


def wait_until(condition: Callable[[], bool], timeout: float = 20) -> None:
    """Wait for ``condition`` (checked every 20 ms) at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    ticker = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        ticker.wait(0.02)


@contextmanager
def running(process: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """Make sure a tool process is gone after the block, whatever happened in it."""
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


def finish(process: subprocess.Popen[bytes], *, stop: signal.Signals | None = None,
           ) -> tuple[int, str, str]:
    """Wait for the tool to end (after sending it ``stop``): status, stdout, stderr."""
    if stop is not None:
        process.send_signal(stop)
    out, err = process.communicate(timeout=60)
    return process.returncode, out.decode(), err.decode()


def publish(endpoint: dict[str, Any], batches: int = 5) -> tuple[int, dict[int, int], int]:
    """Run a publisher on ``endpoint``: (session id, final checksums, last seq)."""
    market = Market(instruments=8, seed=5)
    config = PublisherConfig(min_cycle_s=0.05, heartbeat_interval_s=0.1)
    with Publisher(OrderBookModel(), **endpoint, initial=market.copy_books(),
                   config=config) as pub:
        for _ in range(batches):
            for leaf_id, delta in market.batch(60):
                seq = pub.publish(leaf_id, delta)
            assert pub.flush(timeout=10)
        with pub.locked() as books:
            checksums = {leaf_id: book.checksum() for leaf_id, book in books.items()}
        session = pub.session_id
    return session, checksums, seq


def ended_copies(path: Path, session_id: int) -> int:
    """END_OF_SESSION datagrams of ``session_id`` in a capture being written."""
    count = 0
    for packet in Capture(path.read_bytes()):
        decoded = decode_datagram(packet.payload)
        if decoded.session_id == session_id:
            count += sum(isinstance(m, EndOfSession) for m in decoded.messages)
    return count


# --------------------------------------------------------------------------- record


def test_record_a_publisher_then_decode_and_replay(endpoint: dict[str, Any],
                                                   tmp_path: Path) -> None:
    path = tmp_path / "recorded.pcapng"
    target = f"{endpoint['group']}:{endpoint['port']}"
    with running(tool("record", str(path), target)) as recorder:
        wait_for_line(recorder.stderr, "recording")
        session, checksums, last = publish(endpoint)
        wait_until(lambda: ended_copies(path, session) == 3)  # the publisher's last words
        code, _, err = finish(recorder, stop=signal.SIGINT)
    assert code == 0, err
    packets = list(read_packets(path.read_bytes()))
    assert f"recorded {len(packets)} datagrams to {path}" in err
    assert {(p.dst, p.dst_port, p.src) for p in packets} == {
        (endpoint["group"], endpoint["port"], "127.0.0.1")}
    result = subprocess.run([sys.executable, "-m", "grapevine", "decode", str(path),
                             "--summary", "--json"], capture_output=True, text=True,
                            timeout=60, check=True, cwd=ROOT)
    (seen,) = json.loads(result.stdout)["sessions"]
    assert (seen["session_id"], seen["next_sequence"], seen["gaps"]) == (session, last + 1, 0)
    result = subprocess.run([sys.executable, "-m", "grapevine", "replay", str(path), "--model",
                             "book", "--json"], capture_output=True, text=True, timeout=60,
                            check=True, cwd=ROOT)
    report = json.loads(result.stdout)
    assert report["position"] == last
    assert {leaf["leaf_id"]: leaf["checksum"] for leaf in report["leaves"]} == checksums
    if shutil.which("tshark"):  # the file is a capture other tools read too
        shown = subprocess.run(["tshark", "-n", "-r", str(path), "-T", "fields", "-e",
                                "udp.dstport"], capture_output=True, text=True, timeout=60,
                               check=True).stdout.split()
        assert shown == [str(endpoint["port"])] * len(packets)


def test_record_to_stdout_stops_after_a_count(endpoint: dict[str, Any]) -> None:
    target = f"{endpoint['group']}:{endpoint['port']}"
    with running(tool("record", "-", target, "--count", "3")) as recorder:
        wait_for_line(recorder.stderr, "recording")
        sender = open_sender(**endpoint)
        try:
            for name in ("delta", "heartbeat", "bad_magic", "snapshot"):
                sender.send(VECTORS[name])
        finally:
            sender.close()
        out, err = recorder.communicate(timeout=60)
    assert recorder.returncode == 0, err
    packets = list(read_packets(out))
    assert [p.payload for p in packets] == [VECTORS[n] for n in ("delta", "heartbeat",
                                                                  "bad_magic")]
    assert all(p.time_ns is not None and p.digits == 9 for p in packets)


def test_record_into_an_unwritable_place(endpoint: dict[str, Any], tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "grapevine", "record",
                             str(tmp_path / "no" / "such" / "dir.pcapng"),
                             f"{endpoint['group']}:{endpoint['port']}", "--duration", "1"],
                            capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: cannot write")
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- play


@pytest.fixture(scope="module")
def played_stream(tmp_path_factory: pytest.TempPathFactory) -> tuple[Stream, Path]:
    stream = book_stream(bursts=[(0.05, 200), (0.6, 200)], duration=1.0, leaves=6, seed=11)
    path = write_pcapng(tmp_path_factory.mktemp("play") / "stream.pcapng", stream.datagrams)
    return stream, path


@pytest.mark.parametrize("pace", [["--speed", "4"], ["--as-fast-as-possible"]])
def test_play_is_heard_byte_for_byte(endpoint: dict[str, Any], tmp_path: Path,
                                     played_stream: tuple[Stream, Path],
                                     pace: list[str]) -> None:
    stream, capture = played_stream
    target = f"{endpoint['group']}:{endpoint['port']}"
    path = tmp_path / "heard.pcapng"
    with running(tool("record", str(path), target)) as recorder:
        wait_for_line(recorder.stderr, "recording")
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "grapevine", "play", str(capture),
                                 target, *pace], capture_output=True, text=True, timeout=60,
                                check=False, cwd=ROOT)
        elapsed = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"played {len(stream.datagrams)} datagrams to {target}")
        wait_until(lambda: len(list(read_packets(path.read_bytes()))) == len(stream.datagrams))
        code, _, err = finish(recorder, stop=signal.SIGTERM)
    assert code == 0, err
    heard = [p.payload for p in read_packets(path.read_bytes())]
    assert heard == [data for _, data in stream.datagrams]
    if pace[0] == "--speed":
        # The capture spans a second: a quarter of it at least, at four times the pace.
        assert elapsed >= 0.25
        # The datagrams were heard spread over a quarter of the span they were captured in.
        times = [p.time_ns or 0 for p in read_packets(path.read_bytes())]
        captured = stream.datagrams[-1][0] - stream.datagrams[0][0]
        assert times[-1] - times[0] >= 0.9 * captured / 4


def test_play_selects_grapevine_datagrams_of_a_stream(endpoint: dict[str, Any],
                                                      tmp_path: Path) -> None:
    from test_capture import ipv4, pcap

    frames = [(1_000_000_000 * i, ipv4(data, dport=7000)) for i, data in enumerate([
        VECTORS["delta"], b"not grapevine at all", VECTORS["bad_magic"], VECTORS["heartbeat"],
        VECTORS["unknown_kind"], VECTORS["truncated_header_before_magic"]])]
    capture = tmp_path / "mixed.pcap"
    capture.write_bytes(pcap(frames, 101))
    target = f"{endpoint['group']}:{endpoint['port']}"
    stream_of = {name: int.from_bytes(VECTORS[name][8:12], "little")
                 for name in ("delta", "heartbeat", "unknown_kind")}
    path = tmp_path / "heard.pcapng"
    with running(tool("record", str(path), target)) as recorder:
        wait_for_line(recorder.stderr, "recording")
        result = subprocess.run([sys.executable, "-m", "grapevine", "play", str(capture),
                                 target, "--as-fast-as-possible", "--stream",
                                 str(stream_of["unknown_kind"])], capture_output=True,
                                text=True, timeout=60, check=True, cwd=ROOT)
        expected = [VECTORS[name] for name in ("delta", "heartbeat", "unknown_kind")
                    if stream_of[name] == stream_of["unknown_kind"]]
        assert result.stdout.startswith(f"played {len(expected)} datagrams")
        wait_until(lambda: len(list(read_packets(path.read_bytes()))) == len(expected))
        code, _, err = finish(recorder, stop=signal.SIGINT)
    assert code == 0, err
    assert [p.payload for p in read_packets(path.read_bytes())] == expected


@pytest.mark.parametrize(("argv", "status", "message"), [
    (["10.0.0.1:5000"], 2, "not a multicast address"),
    (["239.255.72.1:70000"], 2, "port"),
    (["--speed", "0"], 1, "--speed must be positive"),
    (["--interface", "192.0.2.77"], 1, "no interface on this host has the address"),
])
def test_play_refuses_what_would_leave_or_cannot_work(played_stream: tuple[Stream, Path],
                                                      argv: list[str], status: int,
                                                      message: str) -> None:
    _, capture = played_stream
    result = subprocess.run([sys.executable, "-m", "grapevine", "play", str(capture), *argv],
                            capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)
    assert result.returncode == status, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_play_a_file_that_is_no_capture(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    result = subprocess.run([sys.executable, "-m", "grapevine", "play", str(path)],
                            capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)
    assert result.returncode == 1
    assert result.stderr == f"error: cannot read {path}: not a pcap or pcapng capture\n"


# --------------------------------------------------------------------------- listen


def test_listen_json_and_text(endpoint: dict[str, Any]) -> None:
    target = f"{endpoint['group']}:{endpoint['port']}"
    names = ["delta", "bad_magic", "mixed_batch", "touched"]
    with running(tool("listen", target, "--json", "--count", "4")) as listener:
        wait_for_line(listener.stderr, "listening on")
        sender = open_sender(**endpoint)
        try:
            for name in names:
                sender.send(VECTORS[name])
        finally:
            sender.close()
        code, out, err = finish(listener)
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    datagrams = [decode_datagram(VECTORS[n]) if n != "bad_magic" else None for n in names]
    expected_count = sum(1 if d is None else len(d.messages) for d in datagrams)
    assert len(records) == expected_count
    assert [r["capture_index"] for r in records if r.get("message_index", 0) == 0] == [
        1, 2, 3, 4]
    assert {(r["src"], r["dst"], r["dst_port"]) for r in records} == {
        ("127.0.0.1", endpoint["group"], endpoint["port"])}
    assert records[1]["kind"] == "MALFORMED"
    assert records[1]["field"] == "magic"
    assert all(abs(r["capture_time_ns"] - time.time_ns()) < 60 * 10**9 for r in records)
    with running(tool("listen", target, "--kind", "touched", "--count", "2")) as listener:
        wait_for_line(listener.stderr, "listening on")
        sender = open_sender(**endpoint)
        try:
            sender.send(VECTORS["delta"])
            sender.send(VECTORS["touched"])
        finally:
            sender.close()
        code, out, err = finish(listener)
    assert code == 0, err
    assert "TOUCHED" in out
    assert "DELTA" not in out
    assert out.strip().endswith("heard 2 datagrams: 1 shown, 0 malformed, 1 not selected")


def test_listen_stops_on_sigterm_and_after_a_duration(endpoint: dict[str, Any]) -> None:
    target = f"{endpoint['group']}:{endpoint['port']}"
    with running(tool("listen", target)) as listener:
        wait_for_line(listener.stderr, "listening on")
        listener.terminate()
        code, out, err = finish(listener)
    assert code == 0, err
    assert out.strip() == "heard 0 datagrams: 0 shown, 0 malformed, 0 not selected"
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "grapevine", "listen", target,
                             "--duration", "0.3"], capture_output=True, text=True, timeout=60,
                            check=True, cwd=ROOT)
    assert time.monotonic() - started >= 0.3
    assert "heard 0 datagrams" in result.stdout


# --------------------------------------------------------------------------- stats


def test_stats_once_reports_the_stream(endpoint: dict[str, Any]) -> None:
    target = f"{endpoint['group']}:{endpoint['port']}"
    with running(tool("stats", target, "--once", "30", "--json")) as stats:
        wait_for_line(stats.stderr, "listening on")
        session, _, last = publish(endpoint)
        stats.send_signal(signal.SIGINT)  # no need to wait out the 30 s
        code, out, err = finish(stats)
    assert code == 0, err
    report = json.loads(out)
    assert (report["group"], report["port"], report["interface"]) == (
        endpoint["group"], endpoint["port"], "127.0.0.1")
    (seen,) = report["sessions"]
    assert seen["session_id"] == session
    assert seen["messages"]["DELTA"] == last
    assert (seen["gaps"], seen["next_sequence"], seen["ended"]) == (0, last + 1, True)
    assert seen["cycle"]["completed"] >= 1
    assert seen["heartbeat_ms"] == 100
    assert 0 <= seen["latency_ms"]["min"] <= seen["latency_ms"]["max"] < 5000
    assert report["kernel_drops"] == 0


def test_stats_live_view_refreshes(endpoint: dict[str, Any]) -> None:
    target = f"{endpoint['group']}:{endpoint['port']}"
    with running(tool("stats", target, "--every", "0.2")) as stats:
        wait_for_line(stats.stderr, "listening on")
        sender = open_sender(**endpoint)
        try:
            sender.send(VECTORS["mixed_batch"])
            sender.send(VECTORS["bad_magic"])
        finally:
            sender.close()
        # Two refreshed reports on stdout, then a normal stop.
        first = wait_for_line(stats.stdout, "grapevine stats")
        second = wait_for_line(stats.stdout, "grapevine stats")
        code, out, err = finish(stats, stop=signal.SIGINT)
    assert code == 0, err
    assert first.startswith(f"grapevine stats {target} via 127.0.0.1:")
    assert second != first  # the elapsed time moved on
    assert "2 datagrams" in out
    assert "1 malformed" in out
    assert "rates (last" in out
    assert "malformed from 127.0.0.1:" in out


def test_stats_once_with_nothing_heard(endpoint: dict[str, Any]) -> None:
    result = subprocess.run([sys.executable, "-m", "grapevine", "stats",
                             f"{endpoint['group']}:{endpoint['port']}", "--once", "0.2"],
                            capture_output=True, text=True, timeout=60, check=True, cwd=ROOT)
    assert result.stdout.splitlines()[1] == "0 datagrams (0 bytes): 0 decoded, 0 malformed"
