"""``grapevine replay``: the replica rebuilt from a capture equals the publisher's state.

The captures are made here without a network: a :class:`PublisherCore` (the publisher's
sans-I/O core) runs on a virtual clock publishing order-book bursts, every datagram it
emits is written to a pcapng file with its virtual send time as capture time, and the
publisher's books are recorded after chosen deltas. Dropping datagrams from the file is
packet loss.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from grapevine import PublisherConfig
from grapevine._pcapng_writer import PcapngWriter
from grapevine._publisher_core import PublisherCore
from grapevine._replay_cmd import _run, add_arguments
from grapevine.book import OrderBook, OrderBookModel
from grapevine.codec import Delta, Snapshot, decode_datagram
from grapevine.testing import Market

ROOT = Path(__file__).resolve().parent.parent
BASE_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
GROUP, PORT = "239.255.72.10", 47100


@dataclass
class Stream:
    """What a publisher sent, and its books after chosen deltas."""

    datagrams: list[tuple[int, bytes]]
    books: dict[int, dict[int, OrderBook]]  # after delta seq -> leaf -> book copy
    session_id: int
    bursts: list[tuple[int, int]] = field(default_factory=list)  # (first, last) seq of each

    def checksums(self, seq: int) -> dict[int, int]:
        return {leaf_id: book.checksum() for leaf_id, book in self.books[seq].items()}


def book_stream(*, bursts: Iterable[tuple[float, int]] = ((0.05, 300), (1.0, 300),
                                                          (2.0, 300)),
                duration: float = 3.0, leaves: int = 10, seed: int = 1, stream_id: int = 0,
                record: Iterable[int] = (), end: bool = True,
                max_datagram_size: int = 1400) -> Stream:
    """Run a publisher core for ``duration`` virtual seconds (1 ms steps), publishing
    ``(time, deltas)`` bursts; record its books after the ``record`` sequences and after
    every burst."""
    market = Market(instruments=leaves, seed=seed, clock=lambda: BASE_NS)
    config = PublisherConfig(stream_id=stream_id, min_cycle_s=0.1, heartbeat_interval_s=0.2,
                             max_datagram_size=max_datagram_size)
    core: PublisherCore[OrderBook, Any] = PublisherCore(
        OrderBookModel(), config, initial=market.copy_books(), now=0.0)
    wanted = set(record)
    stream = Stream([], {}, core.session_id)
    pending = sorted(bursts)
    for step in range(round(duration * 1000) + 1):
        now = step / 1000
        while pending and pending[0][0] <= now:
            _, count = pending.pop(0)
            first = core.next_seq
            for leaf_id, delta in market.batch(count):
                seq = core.publish(leaf_id, delta)
                if seq in wanted:
                    stream.books[seq] = {k: v.copy() for k, v in core.leaves.items()}
            stream.books[seq] = {k: v.copy() for k, v in core.leaves.items()}
            stream.bursts.append((first, seq))
        time_ns = BASE_NS + step * 1_000_000
        while (datagram := core.next_datagram(now, time_ns)) is not None:
            stream.datagrams.append((time_ns, bytes(datagram)))
    if end:
        time_ns = BASE_NS + round(duration * 1e9) + 1_000_000
        stream.datagrams.append((time_ns, bytes(core.end_of_session(duration, time_ns))))
    return stream


def write_pcapng(path: Path, datagrams: Iterable[tuple[int, bytes]]) -> Path:
    with open(path, "wb") as handle:
        writer = PcapngWriter(handle, interface_name="test")
        for time_ns, data in datagrams:
            writer.write_udp(data, time_ns, src="127.0.0.1", src_port=40000, dst=GROUP,
                             dst_port=PORT)
    return path


def replay(*argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = io.StringIO()
    return _run(parser.parse_args(list(argv)), out), out.getvalue()


def replay_json(*argv: str) -> dict[str, Any]:
    code, text = replay(*argv, "--json")
    assert code == 0, text
    report: dict[str, Any] = json.loads(text)
    return report


def leaf_checksums(report: dict[str, Any]) -> dict[int, int]:
    return {leaf["leaf_id"]: leaf["checksum"] for leaf in report["leaves"]}


@pytest.fixture(scope="module")
def stream() -> Stream:
    return book_stream(record=(1, 17, 150, 299, 301, 333, 600, 777))


@pytest.fixture(scope="module")
def capture(stream: Stream, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pcapng(tmp_path_factory.mktemp("replay") / "stream.pcapng", stream.datagrams)


# --------------------------------------------------------------------------- tests


def test_replay_to_the_end_equals_the_publisher(stream: Stream, capture: Path) -> None:
    report = replay_json(str(capture), "--model", "book")
    last = stream.bursts[-1][1]
    assert report["session_id"] == stream.session_id
    assert report["position"] == last
    assert leaf_checksums(report) == stream.checksums(last)
    assert report["datagrams_fed"] == len(stream.datagrams) == report["packets"]
    assert report["stop_reason"] == "end of capture"
    assert not report["synced"]
    assert report["not_synced_because"] == ["the session ended (END_OF_SESSION)"]
    assert {leaf["state"] for leaf in report["leaves"]} == {"fresh"}
    assert report["counters"]["gaps"] == 0


@pytest.mark.parametrize("seq", [17, 150, 299, 301, 333, 600, 777])
def test_replay_to_a_sequence_is_exact(stream: Stream, capture: Path, seq: int) -> None:
    report = replay_json(str(capture), "--model", "book", "--seq", str(seq))
    assert report["position"] == seq
    assert report["stop_reason"] == "--seq"
    assert leaf_checksums(report) == stream.checksums(seq)
    # The datagram holding DELTA seq + 1 is cut after seq, or never fed if it starts after.
    assert report["cut_at_seq"] in (seq, None)
    if seq > 300:  # a whole cycle has gone round by then
        assert report["synced"], report["not_synced_because"]


def test_replay_to_the_first_sequence_and_before_anything(stream: Stream,
                                                          capture: Path) -> None:
    report = replay_json(str(capture), "--model", "book", "--seq", "1")
    assert report["position"] == 1
    held = leaf_checksums(report)
    assert held == {k: v for k, v in stream.checksums(1).items() if k in held}
    report = replay_json(str(capture), "--model", "book", "--at", "1000")  # 1970
    assert report["datagrams_fed"] == 0
    assert report["session_id"] is None
    assert report["not_synced_because"] == ["no datagram of the stream was fed"]
    assert report["leaves"] == []


@pytest.mark.parametrize("form", ["relative", "epoch", "iso"])
def test_replay_to_a_time_between_bursts(stream: Stream, capture: Path, form: str) -> None:
    # 0.9 s: the first burst (published at 0.05 s) has been sent and a cycle has gone round.
    at = {"relative": "+0.9", "epoch": f"{(BASE_NS + 900_000_000) / 1e9:.3f}",
          "iso": "2026-01-01T00:00:00.9"}[form]
    report = replay_json(str(capture), "--model", "book", "--at", at)
    first_burst_end = stream.bursts[0][1]
    assert report["position"] == first_burst_end
    assert report["synced"]
    assert leaf_checksums(report) == stream.checksums(first_burst_end)
    assert report["stop_reason"] == "--at"
    assert report["stopped_at"]["capture_time_ns"] > BASE_NS + 900_000_000
    assert report["last_fed"]["capture_time_ns"] <= BASE_NS + 900_000_000


def test_replay_after_loss_is_unsynced_then_repaired(stream: Stream, tmp_path: Path) -> None:
    # Lose the datagrams carrying deltas of the second burst's middle, and every snapshot
    # for half a second after it, so that no repair can come before 1.5 s.
    lost_from, lost_to = stream.bursts[1][0] + 50, stream.bursts[1][0] + 150
    kept = []
    lost = 0
    for time_ns, data in stream.datagrams:
        kinds = {type(message) for message in decode_datagram(data).messages}
        seqs = [m.seq for m in decode_datagram(data).messages if isinstance(m, Delta)]
        if (seqs and lost_from <= seqs[0] <= lost_to) or (
                Snapshot in kinds and 1_000_000_000 <= time_ns - BASE_NS < 1_500_000_000):
            lost += 1
            continue
        kept.append((time_ns, data))
    assert lost
    path = write_pcapng(tmp_path / "lossy.pcapng", kept)
    # After the gap is known, before the cycle repairs: not synced, and it says why.
    report = replay_json(str(path), "--model", "book", "--at", "+1.3")
    assert not report["synced"]
    assert report["counters"]["gaps"] >= 1
    assert report["counters"]["missed_deltas"] > 0
    assert report["stale_leaves"] or report["suspect_leaves"]
    assert any("stale" in reason or "suspect" in reason or "leaf set" in reason
               for reason in report["not_synced_because"])
    # Half a second later the snapshot cycle has repaired every leaf.
    report = replay_json(str(path), "--model", "book", "--at", "+1.9")
    assert report["synced"], report["not_synced_because"]
    assert report["counters"]["repairs"] >= 1
    assert leaf_checksums(report) == stream.checksums(stream.bursts[1][1])
    # And the text says the same.
    code, text = replay(str(path), "--model", "book", "--at", "+1.3")
    assert code == 0
    assert "NOT synced" in text
    assert "gaps" in text


def test_replay_prints_a_book_to_a_depth(stream: Stream, capture: Path) -> None:
    book = stream.books[333][3]
    code, text = replay(str(capture), "--model", "book", "--seq", "333", "--leaf", "3",
                        "--depth", "2")
    assert code == 0, text
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("leaf 3 (fresh)"))
    assert f"checksum {book.checksum():#018x}" in lines[header]
    rows = lines[header + 2 : header + 4]
    assert len(rows) == 2
    assert header + 4 == len(lines)
    for row, bid, ask in zip(rows, book.depth(0, 2), book.depth(1, 2), strict=True):
        left, right = row.split("|")
        assert left.split() == [str(bid[1]), str(bid[2]), str(bid[0])]  # qty orders price
        assert right.split() == [str(ask[0]), str(ask[2]), str(ask[1])]  # price orders qty
    report = replay_json(str(capture), "--model", "book", "--seq", "333", "--leaf", "3",
                         "--depth", "3")
    leaf = report["leaf"]
    assert leaf["state"] == "fresh"
    assert [(lv["price_ticks"], lv["quantity"], lv["orders"]) for lv in leaf["bids"]] == \
        book.depth(0, 3)
    assert [(lv["price_ticks"], lv["quantity"], lv["orders"]) for lv in leaf["asks"]] == \
        book.depth(1, 3)
    assert leaf["checksum"] == book.checksum()
    code, text = replay(str(capture), "--model", "book", "--leaf", "999")
    assert code == 0
    assert "leaf 999: not held" in text


def test_replay_follows_the_stream_asked_for(tmp_path: Path) -> None:
    zero = book_stream(duration=1.0, bursts=[(0.05, 100)], seed=3)
    five = book_stream(duration=1.0, bursts=[(0.05, 120)], seed=4, stream_id=5)
    merged = sorted(zero.datagrams + five.datagrams, key=lambda item: item[0])
    path = write_pcapng(tmp_path / "two_streams.pcapng", merged)
    report = replay_json(str(path), "--model", "book", "--stream", "5")
    assert report["stream_id"] == 5
    assert report["session_id"] == five.session_id
    assert leaf_checksums(report) == five.checksums(five.bursts[0][1])
    assert report["counters"]["foreign_stream"] == len(zero.datagrams)
    report = replay_json(str(path), "--model", "book")
    assert leaf_checksums(report) == zero.checksums(zero.bursts[0][1])


def test_replay_of_a_pcap_with_a_port_filter(stream: Stream, tmp_path: Path) -> None:
    # A pcap (not pcapng) written by the decode tests' builder, with noise on another port.
    from test_capture import ipv4, pcap

    frames = []
    for time_ns, data in stream.datagrams:
        frames.append((time_ns, ipv4(data, dst=GROUP, dport=PORT)))
        frames.append((time_ns, ipv4(b"GRPV-but-not-ours", dst=GROUP, dport=PORT + 1)))
    path = tmp_path / "noisy.pcap"
    path.write_bytes(pcap(frames, 101, nanos=True))
    report = replay_json(str(path), "--model", "book", "--port", str(PORT))
    assert report["counters"]["malformed"] == 0
    assert leaf_checksums(report) == stream.checksums(stream.bursts[-1][1])
    report = replay_json(str(path), "--model", "book")
    assert report["counters"]["malformed"] == len(stream.datagrams)
    assert leaf_checksums(report) == stream.checksums(stream.bursts[-1][1])


def test_replay_text_checksums(stream: Stream, capture: Path) -> None:
    code, text = replay(str(capture), "--model", "book", "--seq", "600", "--checksums")
    assert code == 0
    assert "SYNCED" in text
    for leaf_id, checksum in stream.checksums(600).items():
        assert f"  leaf {leaf_id}: checksum {checksum:#018x} fresh" in text


def test_bad_inputs_give_one_line_and_status(tmp_path: Path, stream: Stream,
                                             capture: Path) -> None:
    broken = tmp_path / "broken.pcapng"
    broken.write_bytes(capture.read_bytes()[:-7])
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello")
    cases: list[tuple[list[str], int, Callable[[str], bool]]] = [
        ([str(tmp_path / "missing.pcap"), "--model", "book"], 1,
         lambda err: err.startswith("error: cannot read") and "No such file" in err),
        ([str(text_file), "--model", "book"], 1,
         lambda err: "not a pcap or pcapng capture" in err),
        ([str(broken), "--model", "book"], 1,
         lambda err: "cannot read" in err and "truncated" in err),
        ([str(capture), "--model", "book", "--at", "yesterday"], 2,
         lambda err: "is not a time" in err),
        ([str(capture), "--model", "book", "--seq", "12", "--at", "+1"], 2,
         lambda err: "not allowed with" in err),
        ([str(capture)], 2, lambda err: "--model" in err),
    ]
    for argv, status, check in cases:
        result = subprocess.run([sys.executable, "-m", "grapevine", "replay", *argv],
                                capture_output=True, text=True, timeout=60, check=False,
                                cwd=ROOT)
        assert result.returncode == status, (argv, result.stderr)
        assert check(result.stderr), (argv, result.stderr)
        assert "Traceback" not in result.stderr
    # The broken capture still replays what it holds before the damage: all but the last.
    result = subprocess.run([sys.executable, "-m", "grapevine", "replay", str(broken),
                             "--model", "book", "--json"], capture_output=True, text=True,
                            timeout=60, check=False, cwd=ROOT)
    assert json.loads(result.stdout)["datagrams_fed"] == len(stream.datagrams) - 1


def test_iso_time_is_utc() -> None:
    from grapevine._select import parse_time

    moment = datetime(2026, 1, 1, 0, 0, 0, 900_000, tzinfo=UTC)
    assert parse_time("2026-01-01T00:00:00.9").ns == int(moment.timestamp()) * 10**9 + \
        900_000_000
    assert parse_time("2026-01-01T01:00:00.9+01:00").ns == parse_time(
        "2026-01-01T00:00:00.9Z").ns
