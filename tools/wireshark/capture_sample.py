#!/usr/bin/env python3
"""Capture real Grapevine traffic into a pcap file, to open with the Wireshark dissector.

    python3 tools/wireshark/capture_sample.py sample.pcap             # dumpcap (root or userns)
    python3 tools/wireshark/capture_sample.py sample.pcap --recorder  # no privileges needed
    wireshark -X lua_script:tools/wireshark/grapevine.lua sample.pcap

Two publishers run on loopback multicast (interface 127.0.0.1, TTL 0: nothing leaves the
host) on one group and port. Stream 1 publishes order books: a random market of small books
and one deep book whose snapshots are fragmented, with deltas, a DELETE and a re-CREATE,
TOUCHED summaries, HEARTBEATs and, when it closes, END_OF_SESSION. Stream 2 signs its
datagrams with the published test key of SPEC section 9 (the AUTH trailer). A socket joined
to the group watches the traffic and the publishers close once it has seen every message kind
and a whole fragmented snapshot cycle after the last delta, so the capture holds each.

By default the script re-executes itself in a private network namespace (``unshare -rn``,
tools/_netns.py: only ``lo`` exists there) and ``dumpcap`` captures ``lo``. With
``--recorder`` it runs on this host's loopback instead and writes the datagrams the watching
socket received (Ethernet/IPv4/UDP around each, tools/wireshark/pcap_file.py).

Prints a JSON summary on its last line: the group and port, the datagrams the socket
received, and the kinds it saw.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
for folder in (ROOT, ROOT / "tools", HERE):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from _netns import run_in_private_namespace  # noqa: E402  (tools/_netns.py)
from pcap_file import Packet, write_pcap  # noqa: E402  (this folder)

from grapevine import Key, KeyRing, Publisher, PublisherConfig  # noqa: E402
from grapevine._errors import DecodeError  # noqa: E402
from grapevine._transport import open_receiver  # noqa: E402
from grapevine.book import BookDelta, Op, OrderBook, OrderBookModel, Side  # noqa: E402
from grapevine.codec import (  # noqa: E402
    Delta,
    EndOfSession,
    Heartbeat,
    Snapshot,
    Touched,
    decode_datagram,
)
from grapevine.testing import Market, free_port  # noqa: E402
from grapevine.wire import DeltaFlag  # noqa: E402

GROUP = "239.255.77.7"
BOOK_STREAM = 1
SIGNED_STREAM = 2
DEEP_LEAF = 1000  # the book too large for one datagram
TEST_KEY = Key(1, bytes(range(32)))  # SPEC section 9's published test key: never deploy it


def deep_book() -> OrderBook:
    """A book with 150 levels a side: 8442 bytes, fragmented over 7 datagrams."""
    book = OrderBook()
    for i in range(150):
        book.apply(BookDelta(Op.ADD, Side.BID, 50_000 - i, 10 + i, 1_000 + i))
        book.apply(BookDelta(Op.ADD, Side.ASK, 50_001 + i, 20 + i, 2_000 + i))
    book.apply(BookDelta(Op.TRADE, Side.BID, 50_000, 5, 3_000))
    return book


class Watcher(threading.Thread):
    """Receives every datagram of the group and notes what it has seen."""

    def __init__(self, port: int) -> None:
        super().__init__(name="capture-watcher", daemon=True)
        self.socket = open_receiver(GROUP, port)
        self.socket.settimeout(0.1)  # how often run() checks whether to stop
        self.port = port
        self.datagrams: list[tuple[int, bytes]] = []
        self.kinds: dict[str, int] = {}
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.stopping = threading.Event()
        self.last_delta_seq = 0  # of the book stream
        # Bytes of the deep book's snapshots as of after the last delta, by as_of_seq.
        self.deep_bytes: dict[int, int] = {}
        self.deep_complete = False
        self.ended: set[int] = set()

    def run(self) -> None:
        buffer = bytearray(65_536)
        while not self.stopping.is_set():
            try:
                size = self.socket.recv_into(buffer)
            except TimeoutError:
                continue
            data = bytes(buffer[:size])
            with self.changed:
                self.datagrams.append((time.time_ns(), data))
                self._note(data)
                self.changed.notify_all()
        self.socket.close()

    def _count(self, kind: str) -> None:
        self.kinds[kind] = self.kinds.get(kind, 0) + 1

    def _note(self, data: bytes) -> None:
        try:
            decoded = decode_datagram(data)
        except DecodeError:
            self._count("MALFORMED")
            return
        if decoded.auth is not None:
            self._count("AUTH")
        for message in decoded.messages:
            if isinstance(message, Delta):
                self._count("DELTA")
                if message.flags & DeltaFlag.DELETE:
                    self._count("DELETE")
                if message.flags & DeltaFlag.CREATE:
                    self._count("CREATE")
            elif isinstance(message, Snapshot):
                self._count("SNAPSHOT")
                if len(message.payload) < message.total_length:
                    self._count("FRAGMENT")
                if (decoded.stream_id == BOOK_STREAM and message.leaf_id == DEEP_LEAF
                        and self.last_delta_seq and message.as_of_seq > self.last_delta_seq):
                    # Fragments are sent once each, in order: their bytes add up.
                    got = self.deep_bytes.get(message.as_of_seq, 0) + len(message.payload)
                    self.deep_bytes[message.as_of_seq] = got
                    if got == message.total_length and message.fragment_offset > 0:
                        self.deep_complete = True
            elif isinstance(message, Heartbeat):
                self._count("HEARTBEAT")
            elif isinstance(message, Touched):
                self._count("TOUCHED")
            elif isinstance(message, EndOfSession):
                self._count("END_OF_SESSION")
                self.ended.add(decoded.stream_id)

    def wait_for(self, what: str, predicate: Any, timeout: float) -> None:
        with self.changed:
            if not self.changed.wait_for(predicate, timeout):
                raise TimeoutError(f"no {what} within {timeout} s; seen so far: {self.kinds}")


def publish_and_watch(port: int, timeout: float) -> Watcher:
    """Run both publishers on ``port`` until the watcher has seen everything."""
    watcher = Watcher(port)
    watcher.start()
    try:
        market = Market(12, seed=7, clock=lambda: 1_767_225_600_000_000_000)
        initial = market.copy_books()
        initial[DEEP_LEAF] = deep_book()
        fast = PublisherConfig(stream_id=BOOK_STREAM, heartbeat_interval_s=0.05,
                               min_cycle_s=0.05)
        signed = PublisherConfig(stream_id=SIGNED_STREAM, heartbeat_interval_s=0.05,
                                 min_cycle_s=0.05, keys=KeyRing([TEST_KEY]))
        books = Publisher(OrderBookModel(), group=GROUP, port=port, initial=initial,
                          config=fast)
        secure = Publisher(OrderBookModel(), group=GROUP, port=port, config=signed)
        try:
            for leaf_id, delta in market.batch(300):
                books.publish(leaf_id, delta)
            books.delete(3)
            books.publish(3, BookDelta(Op.ADD, Side.BID, 999, 1, 5))  # created again
            last = books.publish(DEEP_LEAF, BookDelta(Op.REDUCE, Side.ASK, 50_001, 1, 9))
            secure.publish(1, BookDelta(Op.ADD, Side.ASK, 101, 4, 1))
            secure.publish(1, BookDelta(Op.TRADE, Side.ASK, 101, 2, 2))
            with watcher.changed:
                watcher.last_delta_seq = last
            watcher.wait_for(
                "complete traffic",
                lambda: (all(watcher.kinds.get(k) for k in (
                    "DELTA", "CREATE", "DELETE", "SNAPSHOT", "FRAGMENT", "HEARTBEAT",
                    "TOUCHED", "AUTH"))
                    and watcher.deep_complete),
                timeout)
        finally:
            books.close()
            secure.close()
        watcher.wait_for("END_OF_SESSION of both streams",
                         lambda: watcher.ended >= {BOOK_STREAM, SIGNED_STREAM}, timeout)
    finally:
        watcher.stopping.set()
        watcher.join(5)
    return watcher


def summary(watcher: Watcher, mode: str) -> dict[str, Any]:
    return {"mode": mode, "group": GROUP, "port": watcher.port,
            "datagrams": len(watcher.datagrams), "kinds": dict(sorted(watcher.kinds.items()))}


class DumpcapReader(threading.Thread):
    """Reads the pcap stream dumpcap writes to a pipe, record by record.

    dumpcap announces "Capturing on" before its capture is open, and stopping it can lose
    the packets the kernel has not handed over yet, so both ends are proven instead: probe
    datagrams go to ``probe_port`` until one comes back through the capture, before the
    traffic (the capture is running) and after it (everything before the probe has been
    read). The probes are left out of the file; every other record is kept as dumpcap
    wrote it.
    """

    def __init__(self, stream: Any, probe_port: int) -> None:
        super().__init__(name="dumpcap-reader", daemon=True)
        self.stream = stream
        self.probe_port = probe_port
        self.header = b""
        self.records: list[bytes] = []
        self.probes: set[bytes] = set()
        self.changed = threading.Condition()
        self.error: str | None = None

    def _read(self, size: int) -> bytes:
        data = self.stream.read(size)
        return data if len(data) == size else b""

    def run(self) -> None:
        self.header = self._read(24)
        if int.from_bytes(self.header[20:24], "little") != 1:  # LINKTYPE_ETHERNET on lo
            self.error = f"unexpected pcap header {self.header.hex()}"
            return
        while record := self._read(16):
            data = self._read(int.from_bytes(record[8:12], "little"))
            if not data:
                break
            probe = self._probe(data)
            with self.changed:
                if probe is None:
                    self.records.append(record + data)
                else:
                    self.probes.add(probe)
                    self.changed.notify_all()

    @staticmethod
    def udp(frame: bytes) -> tuple[int, bytes] | None:
        """(destination port, payload) of an Ethernet/IPv4/UDP frame, else None."""
        if len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
            return None
        udp = 14 + (frame[14] & 0x0F) * 4
        length = int.from_bytes(frame[udp + 4 : udp + 6], "big")
        return int.from_bytes(frame[udp + 2 : udp + 4], "big"), frame[udp + 8 : udp + length]

    def _probe(self, frame: bytes) -> bytes | None:
        """The payload of a probe datagram (UDP to probe_port), else None."""
        found = self.udp(frame)
        return found[1] if found is not None and found[0] == self.probe_port else None

    def probe(self, label: bytes, timeout: float) -> bool:
        """Send probes labelled ``label`` until one has come through the capture."""
        deadline = time.monotonic() + timeout
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            while time.monotonic() < deadline:
                sender.sendto(label, ("127.0.0.1", self.probe_port))
                with self.changed:
                    # The next probe only if this one has not shown within 50 ms.
                    if self.changed.wait_for(lambda: label in self.probes, 0.05):
                        return True
        return False


def run_with_dumpcap(out: Path, timeout: float) -> int:
    """Inside the private namespace: dumpcap on lo while the publishers run."""
    port = free_port(GROUP)
    capture = subprocess.Popen(["dumpcap", "-i", "lo", "-P", "-w", "-", "-f", "udp", "-q"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader = DumpcapReader(capture.stdout, free_port("127.0.0.1"))
    reader.start()
    watcher: Watcher | None = None
    flushed = False
    try:
        if reader.probe(b"capture_sample: started?", timeout):
            watcher = publish_and_watch(port, timeout)
            flushed = reader.probe(b"capture_sample: all read?", timeout)
    finally:
        capture.send_signal(signal.SIGINT)  # dumpcap finishes the stream and exits
        try:
            capture.wait(timeout=10)
        except subprocess.TimeoutExpired:
            capture.kill()
            capture.wait()
        reader.join(10)  # the reader, not communicate(), owns stdout
        assert capture.stderr is not None
        errors = capture.stderr.read()  # a few lines: dumpcap -q reports little
    if watcher is None or not flushed or reader.error or capture.returncode != 0:
        print(f"dumpcap failed (exit {capture.returncode}, traffic seen "
              f"{watcher is not None}, flushed {flushed}, {reader.error}): "
              f"{errors.decode(errors='replace')}", file=sys.stderr)
        return 1
    with reader.changed:
        records = list(reader.records)
    out.write_bytes(reader.header + b"".join(records))
    # The watcher stops once it has seen what it waits for (later END_OF_SESSION copies
    # may go unread), so the capture holds at least its datagrams: count any it lacks.
    captured = Counter(found[1] for found in (reader.udp(r[16:]) for r in records) if found)
    missed = Counter(data for _, data in watcher.datagrams) - captured
    print(json.dumps({**summary(watcher, "dumpcap"), "captured": len(records),
                      "missed": sum(missed.values())}))
    return 0


def run_with_recorder(out: Path, timeout: float) -> int:
    """On this host's loopback: the watching socket's datagrams become the capture."""
    port = free_port(GROUP)
    watcher = publish_and_watch(port, timeout)
    write_pcap(out, (Packet(data, time_ns, src="127.0.0.1", dst=GROUP, dst_port=port)
                     for time_ns, data in watcher.datagrams))
    print(json.dumps(summary(watcher, "recorder")))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the pcap file to write")
    parser.add_argument("--recorder", action="store_true",
                        help="write what a socket received on this host's loopback instead "
                             "of running dumpcap in a private network namespace")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to wait for each part of the traffic")
    args = parser.parse_args()
    out = args.out.resolve()
    if args.recorder:
        return run_with_recorder(out, args.timeout)
    return run_in_private_namespace(__file__, lambda: run_with_dumpcap(out, args.timeout),
                                    also_needs={"dumpcap": "wireshark-common (tshark)"})


if __name__ == "__main__":
    sys.exit(main())
