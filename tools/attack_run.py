#!/usr/bin/env python3
"""Forged, mutated and replayed datagrams against a live stream, in a private namespace.

Run as root (or anywhere ``unshare -rn`` works)::

    python3 tools/attack_run.py                    # every attack step, in order
    python3 tools/attack_run.py --steps 2          # only phase 2 (numbers or step names)
    python3 tools/attack_run.py --veth             # the attacker in a namespace of its own

It re-executes itself inside a new network namespace (``unshare -rn``: only a loopback
interface exists there, so nothing can leave the host) and brings ``lo`` up. Inside, a real
:class:`Publisher` (order books from the demo's market generator) publishes to a group on a
free port (loopback, TTL 0) and real :class:`Subscriber` s follow it. An *attacker*, two
plain UDP sockets in the same namespace, captures the real datagrams (it joins the group
itself) and, during the live stream, sends to the same group and port, step by step.

With ``--veth`` the attacker runs in a second namespace of its own, made inside the private
one and joined to it by a veth pair (10.77.0.1 here, 10.77.0.2 there): the publisher (TTL 1)
and the subscribers use 10.77.0.1, the attacker's sockets live in the other namespace and
use 10.77.0.2 (TTL 1), so the stream and the forgeries cross the veth. Neither namespace
has any other interface than ``lo`` and its end of the pair. The steps:

1. ``seq_2_62``: a HEARTBEAT-only datagram of the live session with sequence 2**62;
   ``bitflip_header_sequence``: a copy of a live DELTA datagram with one header-sequence bit
   (a 0 bit, so the sequence jumps forward) flipped;
2. ``forged_end_then_new_session``: an END_OF_SESSION of the live session at the current
   sequence, then at once a datagram of a new random session (HEARTBEAT + empty-cycle
   marker: "no leaf exists");
3. ``snapshot_last_flag``: in a quiet moment (publishing paused), a copy of a SNAPSHOT
   datagram just sent with LAST set on its first snapshot; ``snapshot_last_consistent``:
   the same with ``cycle_count`` = ``cycle_position`` + 1, consistent with LAST;
4. ``bitflip_flood``: thousands of still-decodable copies of live datagrams, each with one
   bit flipped in a SNAPSHOT, TOUCHED or DELTA field;
5. ``replay_old``: datagrams captured several seconds earlier, sent again in order;
6. in quiet moments, a DELTA at the next stream sequence with the leaf's next ``leaf_seq``
   whose payload the order-book model rejects: ``delta_reduce_missing_level`` (REDUCE at a
   price level that does not exist), ``delta_truncated_payload`` (25 of the 26 bytes),
   ``delta_create_rejected`` (CREATE whose payload is a REDUCE, impossible on an empty book).

After each step the run records each subscriber's state 0.05 s and 0.3 s later (synced,
following the live session, leaves held, stale/suspect, and in quiet steps whether the
replica equals the publisher's, compared by ``OrderBook.checksum()`` per leaf), then pauses
publishing and waits (bounded) until every subscriber is synced, caught up and equal. After
the last step the publisher keeps publishing for a moment, then stops publishing (it keeps
running: snapshot cycle and heartbeats go on) and the run waits up to restart grace + 2
snapshot cycles + slack for every replica to be synced and equal. Prints one JSON report
line last; exit 0 only if every subscriber ended synced and equal, no subscriber counted an
internal error and every library thread is still alive.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import socket
import struct
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _feeder import Feeder  # this script's folder, tools/
from _netns import PeerNamespace, run_in_private_namespace

from grapevine import Publisher, PublisherConfig, StatusEvent, Subscriber, SubscriberConfig
from grapevine._errors import DecodeError, EncodeError
from grapevine.auth import KeyRing, generate_key
from grapevine.book import BookDelta, Op, OrderBookModel, Side
from grapevine.codec import (
    HEADER_SIZE,
    SNAPSHOT_OVERHEAD,
    DatagramBuilder,
    Decoded,
    Delta,
    Snapshot,
    Touched,
    decode_datagram,
    encode_datagram,
)
from grapevine.testing import Market, free_port
from grapevine.wire import DeltaFlag, HeaderFlag, SnapshotFlag

_GROUP = "239.255.74.1"
_INTERFACE = "127.0.0.1"

# (phase, step name, quiet: publishing paused around the attack)
STEPS: list[tuple[int, str, bool]] = [
    (1, "seq_2_62", False),
    (1, "bitflip_header_sequence", False),
    (2, "forged_end_then_new_session", False),
    (3, "snapshot_last_flag", True),
    (3, "snapshot_last_consistent", True),
    (4, "bitflip_flood", False),
    (5, "replay_old", False),
    (6, "delta_reduce_missing_level", True),
    (6, "delta_truncated_payload", True),
    (6, "delta_create_rejected", True),
]
OBSERVE_AFTER_S = (0.05, 0.3)
# The fields the flood flips a bit in (each equally often), with their widths in bits.
FLOOD_FIELDS = (
    ("SNAPSHOT.leaf_id", 32), ("SNAPSHOT.range_start", 32), ("SNAPSHOT.cycle_id", 32),
    ("SNAPSHOT.cycle_position", 32), ("SNAPSHOT.cycle_count", 32), ("SNAPSHOT.leaf_seq", 64),
    ("SNAPSHOT.as_of_seq", 64), ("SNAPSHOT.total_length", 32),
    ("SNAPSHOT.fragment_offset", 32), ("SNAPSHOT.flags", 8),
    ("TOUCHED.first_seq", 64), ("TOUCHED.end_seq", 64), ("TOUCHED.entry.leaf_id", 32),
    ("TOUCHED.entry.leaf_seq", 64),
    ("DELTA.leaf_id", 32), ("DELTA.leaf_seq", 64), ("DELTA.flags", 8),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leaves", type=int, default=300, help="instruments (order books)")
    parser.add_argument("--rate", type=int, default=3000, help="deltas per second")
    parser.add_argument("--subscribers", type=int, default=3)
    parser.add_argument("--port", type=int, default=0, help="UDP port (0: a free one)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--steps", default="all",
                        help="comma-separated phase numbers or step names (default: all)")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="seconds of live stream after the first sync, before attacking")
    parser.add_argument("--between", type=float, default=0.5,
                        help="seconds of live stream between steps")
    parser.add_argument("--tail", type=float, default=1.0,
                        help="seconds of publishing after the last attack")
    parser.add_argument("--flood", type=int, default=3000, help="datagrams in the flood")
    parser.add_argument("--flood-fields", default="",
                        help="only these fields (comma-separated prefixes of KIND.field, "
                             "e.g. SNAPSHOT.flags,TOUCHED); default: all")
    parser.add_argument("--replays", type=int, default=500, help="datagrams replayed")
    parser.add_argument("--replay-age", type=float, default=3.0,
                        help="replayed datagrams were captured at least this long before")
    parser.add_argument("--step-slack", type=float, default=1.0,
                        help="per-step recovery bound: restart grace + 2 cycles + this")
    parser.add_argument("--keys", action="store_true",
                        help="the publisher signs and the subscribers verify (a fresh random "
                             "key the attacker does not have): every attack must be dropped, "
                             "every replica synced and equal throughout")
    parser.add_argument("--veth", action="store_true",
                        help="the attacker in a network namespace of its own, joined to the "
                             "publisher's and subscribers' by a veth pair (default: all on "
                             "loopback in one namespace)")
    parser.add_argument("--slack", type=float, default=3.0,
                        help="final bound: restart grace + 2 snapshot cycles + this")
    args = parser.parse_args()
    return run_in_private_namespace(__file__, lambda: run_inside(args))


def selected_steps(spec: str) -> list[tuple[int, str, bool]]:
    if spec == "all":
        return list(STEPS)
    wanted = {word.strip() for word in spec.split(",") if word.strip()}
    known = {name for _, name, _ in STEPS} | {str(phase) for phase, _, _ in STEPS}
    unknown = wanted - known
    if unknown:
        raise SystemExit(f"unknown steps {sorted(unknown)}; known: {sorted(known)}")
    return [step for step in STEPS if step[1] in wanted or str(step[0]) in wanted]


def message_offsets(data: bytes | bytearray) -> list[tuple[int, int]]:
    """(offset, kind) of each message of a valid datagram (SPEC 4 and 6.1)."""
    count = int.from_bytes(data[6:8], "little")
    offset = HEADER_SIZE
    found = []
    for _ in range(count):
        found.append((offset, data[offset]))
        offset += 4 + int.from_bytes(data[offset + 2 : offset + 4], "little")
    return found


# --------------------------------------------------------------------------- the stream


@dataclass
class Capture:
    serial: int  # 1, 2, 3, ... in arrival order
    at: float
    data: bytes
    datagram: Decoded


class Attacker:
    """Captures the real datagrams on its own joined socket; sends from another socket."""

    def __init__(self, group: str, port: int, *, interface: str = _INTERFACE,
                 ttl: int = 0) -> None:
        self.sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        self.sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                               socket.inet_aton(interface))
        self.sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
        self.sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        self.sender.bind((interface, 0))
        self.sender.connect((group, port))
        self.own_address = self.sender.getsockname()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.listener.bind((group, port))
        self.listener.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                                 socket.inet_aton(group) + socket.inet_aton(interface))
        self.listener.settimeout(0.05)
        self.lock = threading.Lock()
        self.captures: deque[Capture] = deque(maxlen=20_000)
        self.serial = 0  # of the latest capture
        self.sent = 0
        self.undecodable = 0
        self._closing = threading.Event()
        self.thread = threading.Thread(target=self._capture, name="attack-run-capture",
                                       daemon=True)
        self.thread.start()

    def _capture(self) -> None:
        while not self._closing.is_set():
            try:
                data, source = self.listener.recvfrom(70_000)
            except TimeoutError:
                continue
            except OSError:
                if self._closing.is_set():
                    return
                raise
            if source == self.own_address:
                continue  # our own forgeries come back through the loop
            try:
                datagram = decode_datagram(data)
            except DecodeError:
                self.undecodable += 1
                continue
            with self.lock:
                self.serial += 1
                self.captures.append(Capture(self.serial, time.monotonic(), data, datagram))

    def send(self, data: bytes) -> None:
        self.sender.send(data)
        self.sent += 1

    def recent(self, seconds: float) -> list[Capture]:
        cutoff = time.monotonic() - seconds
        with self.lock:
            return [c for c in self.captures if c.at >= cutoff]

    def between(self, oldest: float, newest: float) -> list[Capture]:
        with self.lock:
            return [c for c in self.captures if oldest <= c.at <= newest]

    def after(self, serial: int) -> list[Capture]:
        """The captures newer than ``serial``, oldest first."""
        fresh = []
        with self.lock:
            for capture in reversed(self.captures):
                if capture.serial <= serial:
                    break
                fresh.append(capture)
        fresh.reverse()
        return fresh

    def latest(self) -> Capture | None:
        with self.lock:
            return self.captures[-1] if self.captures else None

    def next_sequence(self) -> int | None:
        """The stream sequence the next DELTA will get, as the wire shows it."""
        last = self.latest()
        if last is None:
            return None
        datagram = last.datagram
        return datagram.sequence + sum(1 for m in datagram.messages if type(m) is Delta)

    def leaf_seq(self, leaf_id: int) -> int | None:
        """The leaf's latest leaf_seq seen on the wire (DELTA or snapshot), newest first."""
        with self.lock:
            captures = list(self.captures)
        for capture in reversed(captures):
            for msg in reversed(capture.datagram.messages):
                if isinstance(msg, Delta | Snapshot) and msg.leaf_id == leaf_id:
                    return msg.leaf_seq
        return None

    def close(self) -> None:
        self._closing.set()
        self.thread.join(5)
        self.listener.close()
        self.sender.close()


# --------------------------------------------------------------------------- the attacks


class Attacks:
    """Each method sends one step's datagrams and returns details for the report."""

    def __init__(self, attacker: Attacker, pub: Publisher[Any, Any], rng: random.Random,
                 args: argparse.Namespace) -> None:
        self.attacker, self.pub, self.rng, self.args = attacker, pub, rng, args
        self.model = OrderBookModel()
        self.mark = 0  # capture serial when the current step began (set by the run)
        prefixes = [p.strip() for p in args.flood_fields.split(",") if p.strip()]
        self.flood_fields = [label for label, _ in FLOOD_FIELDS
                             if not prefixes or any(label.startswith(p) for p in prefixes)]
        if not self.flood_fields:
            raise SystemExit(f"--flood-fields {args.flood_fields!r} matches none of "
                             f"{[label for label, _ in FLOOD_FIELDS]}")
        self.synced_at = 0.0  # when every subscriber first synced (set by the run)

    def _session(self) -> int:
        last = self.attacker.latest()
        assert last is not None, "nothing captured"
        return last.datagram.session_id

    def _wait_capture(self, predicate: Callable[[Capture], bool], timeout: float,
                      since: int | None = None) -> Capture | None:
        """The first capture after serial ``since`` (default: from now on) that matches."""
        deadline = time.monotonic() + timeout
        scanned = self.attacker.serial if since is None else since
        while True:
            for capture in self.attacker.after(scanned):
                scanned = capture.serial
                if predicate(capture):
                    return capture
            if time.monotonic() >= deadline:
                return None
            threading.Event().wait(0.005)  # polling a condition with a deadline

    # phase 1 ---------------------------------------------------------------

    def seq_2_62(self) -> dict[str, Any]:
        builder = DatagramBuilder(0, self._session())
        builder.start(2**62)
        builder.add_heartbeat(round(self.pub.config.heartbeat_interval_s * 1000))
        self.attacker.send(bytes(builder.finish(time.time_ns())))
        return {"sent": 1, "sequence": 2**62, "content": "HEARTBEAT only"}

    def bitflip_header_sequence(self) -> dict[str, Any]:
        capture = self._wait_capture(
            lambda c: any(type(m) is Delta for m in c.datagram.messages), 1.0)
        assert capture is not None, "no live DELTA datagram captured"
        original = capture.datagram.sequence
        zero_bits = [bit for bit in range(16, 63) if not original >> bit & 1]
        bit = self.rng.choice(zero_bits)
        data = bytearray(capture.data)
        data[20 + bit // 8] ^= 1 << (bit % 8)  # SPEC 5: sequence is a u64 LE at offset 20
        flipped = decode_datagram(data).sequence
        self.attacker.send(bytes(data))
        return {"sent": 1, "bit": bit, "original_sequence": original,
                "flipped_sequence": flipped,
                "deltas_in_copy": sum(1 for m in capture.datagram.messages
                                      if type(m) is Delta)}

    # phase 2 ---------------------------------------------------------------

    def forged_end_then_new_session(self) -> dict[str, Any]:
        session = self._session()
        current = self.attacker.next_sequence()
        assert current is not None
        end = DatagramBuilder(0, session)
        end.start(current)
        end.add_end_of_session()
        forged_end = bytes(end.finish(time.time_ns()))
        stranger = self.rng.getrandbits(64) | 1
        new = DatagramBuilder(0, stranger)
        new.start(1)
        new.add_heartbeat(round(self.pub.config.heartbeat_interval_s * 1000))
        new.add_snapshot(Snapshot(0, 0, 1, 0, 0, 0, 1, 0, 0,
                                  SnapshotFlag.DELETED | SnapshotFlag.LAST, b""))
        new_session = bytes(new.finish(time.time_ns()))
        self.attacker.send(forged_end)
        self.attacker.send(new_session)
        return {"sent": 2, "end_of_session_sequence": current,
                "publisher_next_sequence": self.pub.last_sequence + 1,
                "new_session_id": f"{stranger:#018x}",
                "new_session_content": "HEARTBEAT + empty-cycle marker (DELETED|LAST) at seq 1"}

    # phase 3 ---------------------------------------------------------------

    def _quiet_snapshot_datagram(self) -> Capture:
        """A SNAPSHOT datagram sent after publishing paused, first snapshot low in the cycle."""
        quiet_from = self.pub.last_sequence + 1
        best: list[Capture] = []

        def good(capture: Capture) -> bool:
            snaps = [m for m in capture.datagram.messages if type(m) is Snapshot]
            if not snaps or snaps[0].as_of_seq != quiet_from or snaps[0].flags:
                return False
            if snaps[0].total_length != len(snaps[0].payload):
                return False  # a fragment: keep the attack about LAST alone
            best.append(capture)
            first = snaps[0]
            return first.cycle_position * 4 < first.cycle_count  # in the first quarter

        found = self._wait_capture(good, 1.0, since=self.mark)
        if found is None:
            assert best, "no SNAPSHOT datagram captured in the quiet moment"
            found = min(best, key=lambda c: next(m for m in c.datagram.messages
                                                 if type(m) is Snapshot).cycle_position)
        return found

    def _snapshot_last(self, consistent: bool) -> dict[str, Any]:
        # Patched in place at the offsets of SPEC 6.1 and 6.3 (the codec's encoder would
        # refuse a LAST that is not at cycle_count - 1, and so may its decoder: a receiver
        # that drops the datagram as malformed is the point of the first variant).
        capture = self._quiet_snapshot_datagram()
        data = bytearray(capture.data)
        at = next(offset for offset, kind in message_offsets(data) if kind == 2)
        snap = next(m for m in capture.datagram.messages if isinstance(m, Snapshot))
        data[at + 1] |= SnapshotFlag.LAST  # message flags
        forged_count = snap.cycle_count
        if consistent:
            forged_count = snap.cycle_position + 1
            data[at + 20 : at + 24] = forged_count.to_bytes(4, "little")  # cycle_count
        try:
            decode_datagram(data)
            decodable = True
        except DecodeError:
            decodable = False
        self.attacker.send(bytes(data))
        return {"sent": 1, "leaf_id": snap.leaf_id, "cycle_position": snap.cycle_position,
                "cycle_count": snap.cycle_count, "forged_cycle_count": forged_count,
                "as_of_seq": snap.as_of_seq,
                "leaves_above_claimed_absent": snap.cycle_count - snap.cycle_position - 1,
                "decodable_by_this_codec": decodable}

    def snapshot_last_flag(self) -> dict[str, Any]:
        return self._snapshot_last(consistent=False)

    def snapshot_last_consistent(self) -> dict[str, Any]:
        return self._snapshot_last(consistent=True)

    # phase 4 ---------------------------------------------------------------

    def _bit(self, width: int) -> int:
        # Half the flips in the low byte (plausible values), half anywhere in the field.
        return self.rng.randrange(min(width, 8) if self.rng.random() < 0.5 else width)

    def _mutate(self, datagram: Decoded, label: str) -> bytes | None:
        """``datagram`` with one bit flipped in the field ``label`` names (KIND.field) of a
        random message of that kind; None if it has none or the result would not decode."""
        rng = self.rng
        kind, _, name = label.partition(".")
        wanted = {"SNAPSHOT": Snapshot, "TOUCHED": Touched, "DELTA": Delta}[kind]
        width = dict(FLOOD_FIELDS)[label]
        messages = list(datagram.messages)
        candidates = [i for i, m in enumerate(messages) if type(m) is wanted]
        if not candidates:
            return None
        index = rng.choice(candidates)
        msg: Any = messages[index]
        if name.startswith("entry."):
            if not msg.entries:
                return None
            entries = list(msg.entries)
            k = rng.randrange(len(entries))
            leaf_id, leaf_seq = entries[k]
            if name == "entry.leaf_id":
                leaf_id ^= 1 << self._bit(width)
            else:
                leaf_seq ^= 1 << self._bit(width)
            entries[k] = (leaf_id, leaf_seq)
            messages[index] = msg._replace(entries=tuple(entries))
        else:
            messages[index] = msg._replace(**{name: getattr(msg, name) ^ 1 << self._bit(width)})
        auth = datagram.auth
        try:
            data = encode_datagram(datagram._replace(messages=messages, flags=0, auth=None))
            if auth is not None:
                # A signed capture: the same mutation, with its original (now wrong) trailer.
                signed = bytearray(data)
                signed[5] |= HeaderFlag.AUTH
                signed += struct.pack("<I", auth.key_id) + auth.tag
                data = bytes(signed)
            decode_datagram(data)
        except (EncodeError, DecodeError):
            return None
        return data

    def bitflip_flood(self) -> dict[str, Any]:
        wanted = self.args.flood
        fields: Counter[str] = Counter()
        pool: list[Capture] = []
        sent = attempts = 0
        while sent < wanted and attempts < wanted * 50:
            if sent % 200 == 0 or not pool:
                pool = self.attacker.recent(1.0) or pool
            attempts += 1
            label = self.rng.choice(self.flood_fields)
            data = self._mutate(self.rng.choice(pool).datagram, label)
            if data is None:
                continue
            self.attacker.send(data)
            fields[label] += 1
            sent += 1
            if sent % 100 == 0:
                threading.Event().wait(0.002)  # pacing: let the receivers keep up
        return {"sent": sent, "attempts": attempts, "fields": dict(sorted(fields.items()))}

    # phase 5 ---------------------------------------------------------------

    def replay_old(self) -> dict[str, Any]:
        age = self.args.replay_age
        # The stream has run at least `age` seconds since the first sync (live meanwhile).
        threading.Event().wait(max(0.0, self.synced_at + age + 1.0 - time.monotonic()))
        now = time.monotonic()
        old = self.attacker.between(self.synced_at, now - age)
        chosen = old[-self.args.replays:]
        assert chosen, "nothing captured long enough ago"
        kinds: Counter[str] = Counter()
        for n, capture in enumerate(chosen, 1):
            self.attacker.send(capture.data)
            for msg in capture.datagram.messages:
                kinds[type(msg).__name__] += 1
            if n % 100 == 0:
                threading.Event().wait(0.002)  # pacing
        return {"sent": len(chosen), "oldest_age_s": round(now - chosen[0].at, 2),
                "newest_age_s": round(now - chosen[-1].at, 2), "messages": dict(kinds),
                "sequences": [chosen[0].datagram.sequence, chosen[-1].datagram.sequence]}

    # phase 6 ---------------------------------------------------------------

    def _forged_delta(self, what: str) -> dict[str, Any]:
        expected_next = self.pub.last_sequence + 1
        capture = self._wait_capture(lambda c: c.datagram.sequence == expected_next, 1.0,
                                     since=self.mark)
        wire_next = self.attacker.next_sequence()
        sequence = wire_next if wire_next is not None else expected_next
        with self.pub.locked() as books:
            leaf_ids = list(books)
        leaf_id = self.rng.choice(leaf_ids)
        leaf_seq = (self.attacker.leaf_seq(leaf_id) or 0) + 1
        flags = 0
        reduce = BookDelta(Op.REDUCE, Side.BID, 1, 100, time.time_ns())  # no level at 1
        payload = self.model.encode_delta(reduce)
        described = "REDUCE BID 100 at price 1 (no such level)"
        if what == "truncated":
            payload = payload[:25]
            described = "the first 25 of the 26 bytes of " + described
        elif what == "create":
            flags = DeltaFlag.CREATE
            described = "CREATE with " + described
        builder = DatagramBuilder(0, self._session())
        builder.start(sequence)
        builder.add_delta(leaf_id, leaf_seq, flags, payload)
        self.attacker.send(bytes(builder.finish(time.time_ns())))
        return {"sent": 1, "sequence": sequence, "publisher_next_sequence": expected_next,
                "wire_caught_up": capture is not None, "leaf_id": leaf_id,
                "leaf_seq": leaf_seq,
                "flags": flags, "payload_bytes": len(payload), "payload": described}

    def delta_reduce_missing_level(self) -> dict[str, Any]:
        return self._forged_delta("reduce")

    def delta_truncated_payload(self) -> dict[str, Any]:
        return self._forged_delta("truncated")

    def delta_create_rejected(self) -> dict[str, Any]:
        return self._forged_delta("create")


# --------------------------------------------------------------------------- observing


class ErrorLog(logging.Handler):
    """Counts the library's log records; keeps the first distinct internal errors."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.samples: list[str] = []
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[record.levelname] += 1
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            tb = record.exc_info[2]
            frames: list[str] = []
            while tb is not None:
                code = tb.tb_frame.f_code
                frames.append(f"{Path(code.co_filename).name}:{tb.tb_lineno} {code.co_name}")
                tb = tb.tb_next
            text = f"{type(exc).__name__}: {str(exc)[:160]} (at {' < '.join(frames[-3:][::-1])})"
        else:
            text = f"{record.levelname}: {record.getMessage()[:160]}"
        if text not in self.samples and len(self.samples) < 12:
            self.samples.append(text)


class Run:
    def __init__(self, pub: Publisher[Any, Any], subs: list[Subscriber[Any, Any]],
                 events: list[list[tuple[float, str]]], feeder: Feeder) -> None:
        self.pub, self.subs, self.events, self.feeder = pub, subs, events, feeder
        self.finished_at: float | None = None  # when the last wait_equal succeeded

    def truth(self) -> dict[int, int]:
        with self.pub.locked() as books:
            return {leaf_id: book.checksum() for leaf_id, book in books.items()}

    @staticmethod
    def replica(sub: Subscriber[Any, Any]) -> dict[int, int]:
        with sub.locked() as replica:
            return {leaf_id: book.checksum() for leaf_id, book in replica.items()}

    def state(self, sub: Subscriber[Any, Any], truth: dict[int, int] | None) -> dict[str, Any]:
        stats = sub.stats()
        mine = self.replica(sub)
        state: dict[str, Any] = {
            "synced": sub.synced,
            "live_session": sub.session_id == self.pub.session_id,
            "behind": self.pub.last_sequence - sub.stream_position,
            "leaves": len(mine),
            "stale": stats.stale_leaves,
            "suspect": stats.suspect_leaves,
        }
        if truth is not None:
            state["equal"] = mine == truth
            if mine != truth:
                state["missing"] = len(truth.keys() - mine.keys())
                state["extra"] = len(mine.keys() - truth.keys())
                state["different"] = sum(1 for k in truth.keys() & mine.keys()
                                         if truth[k] != mine[k])
        return state

    def good(self, sub: Subscriber[Any, Any], truth: dict[int, int]) -> bool:
        pub = self.pub
        return (sub.synced and sub.session_id == pub.session_id
                and sub.stream_position >= pub.last_sequence and self.replica(sub) == truth)

    def wait_equal(self, bound: float, since: float) -> dict[str, Any]:
        """Publishing paused: wait up to ``bound`` for every replica synced and equal."""
        self.pub.flush(5)
        truth = self.truth()
        started = time.monotonic()
        deadline = started + bound
        done: dict[int, float] = {}
        while True:
            for index, sub in enumerate(self.subs):
                if index not in done and self.good(sub, truth):
                    done[index] = time.monotonic()
            if len(done) == len(self.subs) or time.monotonic() >= deadline:
                break
            threading.Event().wait(0.02)  # polling a condition with a deadline
        subs = []
        for index, sub in enumerate(self.subs):
            state = self.state(sub, truth)
            state["recovered"] = index in done
            state["time_since_attack_s"] = (round(done[index] - since, 3)
                                            if index in done else None)
            subs.append(state)
        self.finished_at = max(done.values()) if len(done) == len(self.subs) else None
        return {"all": len(done) == len(self.subs), "bound_s": round(bound, 3),
                "waited_s": round(time.monotonic() - started, 3),
                "time_since_attack_s": (round(max(done.values()) - since, 3)
                                        if len(done) == len(self.subs) else None),
                "subscribers": subs}

    def event_counts(self, since: float) -> list[dict[str, int]]:
        return [dict(Counter(kind for at, kind in list(events) if at >= since))
                for events in self.events]


def stats_delta(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[dict[str, int]]:
    out = []
    for old, new in zip(before, after, strict=True):
        out.append({key: value - old.get(key, 0) for key, value in new.items()
                    if isinstance(value, int) and value != old.get(key, 0)
                    and key not in ("datagrams", "deltas", "snapshots", "heartbeats",
                                    "touched_summaries", "snapshots_used",
                                    "callback_backlog")})
    return out


def silent_divergences(report: dict[str, Any]) -> list[str]:
    """Where a subscriber said synced, live and caught up while its replica differed from
    the publisher's (only states taken with publishing paused compare replicas)."""
    found = []

    def check(where: str, states: list[dict[str, Any]]) -> None:
        for index, state in enumerate(states):
            if (state["synced"] and state["live_session"] and state["behind"] <= 0
                    and state.get("equal") is False):
                found.append(f"{where}: subscriber {index}")

    for step in report["steps"]:
        for obs in step["observations"]:
            check(f"{step['name']} +{obs['after_s']}s", obs["subscribers"])
        check(f"{step['name']} recovery", step["recovery"]["subscribers"])
    check("final", report["final"]["subscribers"])
    return found


def unsynced_observations(report: dict[str, Any]) -> list[str]:
    """Where a subscriber was not synced, not on the live session, or (quiet steps) not
    equal when observed after an attack: with keys there must be none."""
    found = []
    for step in report["steps"]:
        for obs in step["observations"]:
            for index, state in enumerate(obs["subscribers"]):
                if (not state["synced"] or not state["live_session"]
                        or state.get("equal") is False):
                    found.append(f"{step['name']} +{obs['after_s']}s: subscriber {index}")
    return found


def _brief(state: dict[str, Any]) -> str:
    flags = "".join(("S" if state["synced"] else "-", "L" if state["live_session"] else "-"))
    if "equal" in state:
        flags += "=" if state["equal"] else "!"
    text = f"{flags} n={state['leaves']} st={state['stale']} su={state['suspect']}"
    if state.get("equal") is False:
        text += f" miss={state['missing']} extra={state['extra']} diff={state['different']}"
    return text


def summary(report: dict[str, Any]) -> str:
    """A readable digest of the report (S synced, L live session, = equal, ! not equal)."""
    lines = []
    for step in report["steps"]:
        lines.append(f"[{step['phase']}] {step['name']}: {json.dumps(step['details'])}")
        for obs in step["observations"]:
            states = " | ".join(_brief(s) for s in obs["subscribers"])
            lines.append(f"    +{obs['after_s']}s  {states}")
        rec = step["recovery"]
        states = " | ".join(_brief(s) for s in rec["subscribers"])
        lines.append(f"    recovered={rec['all']} in {rec['time_since_attack_s']}s  {states}")
        lines.append(f"    events {step['events']}")
        lines.append(f"    stats  {step['stats_changed']}")
    final = report.get("final")
    if final:
        states = " | ".join(_brief(s) for s in final["subscribers"])
        lines.append(f"final: all={final['all']} since attack {final['time_since_attack_s']}s "
                     f"since stop {final['time_since_stop_s']}s (bound {final['bound_s']}s) "
                     f"{states}")
    lines.append(f"silent divergences: {report.get('silent_divergences')}")
    lines.append(f"internal_errors={report.get('internal_errors')} "
                 f"threads_alive={report.get('threads', {}).get('all_alive')}")
    lines.extend(f"log: {sample}" for sample in report.get("log", {}).get("samples", []))
    return "\n".join(lines)


def library_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate()
                  if t.name.startswith("grapevine-") and t.is_alive())


# --------------------------------------------------------------------------- the run


def run_inside(args: argparse.Namespace) -> int:
    steps = selected_steps(args.steps)
    port = args.port or free_port(_GROUP)
    errors = ErrorLog()
    library_log = logging.getLogger("grapevine")
    library_log.addHandler(errors)
    library_log.propagate = False
    rng = random.Random(args.seed)
    model = OrderBookModel()
    market = Market(args.leaves, seed=args.seed)
    ring = KeyRing.from_text(generate_key(1)) if args.keys else None
    pub_config = PublisherConfig(keys=ring)
    sub_config = SubscriberConfig(keys=ring)
    events: list[list[tuple[float, str]]] = [[] for _ in range(args.subscribers)]

    def recorder(index: int) -> Callable[[StatusEvent], None]:
        def on_status(event: StatusEvent) -> None:
            events[index].append((time.monotonic(), event.kind.name))
        return on_status

    subs: list[Subscriber[Any, Any]] = []
    attacker: Attacker | None = None
    feeder: Feeder | None = None
    peer: PeerNamespace | None = None
    report: dict[str, Any] = {"steps": []}
    try:
        interface, ttl = _INTERFACE, 0
        if args.veth:
            peer = PeerNamespace()
            interface, ttl = peer.local, 1
        subs = [Subscriber(model, group=_GROUP, port=port, interface=interface,
                           config=sub_config, on_status=recorder(i))
                for i in range(args.subscribers)]
        if peer is not None:
            # Made on the peer namespace's thread: its sockets live there for good.
            attacker = peer.run(lambda: Attacker(_GROUP, port, interface=peer.peer, ttl=1))
        else:
            attacker = Attacker(_GROUP, port)
        initial = market.copy_books()
        with Publisher(model, group=_GROUP, port=port, interface=interface, ttl=ttl,
                       config=pub_config, initial=initial) as pub:
            # The bounds, from the configs: a snapshot cycle lasts min_cycle_s or the time
            # its bytes take at snapshot_bytes_per_s, whichever is longer.
            cycle_bytes = sum(len(model.encode_leaf(book)) + SNAPSHOT_OVERHEAD
                              for book in initial.values())
            cycle_bytes += HEADER_SIZE * (cycle_bytes // pub_config.max_datagram_size + 1)
            cycle_s = max(pub_config.min_cycle_s, cycle_bytes / pub_config.snapshot_bytes_per_s)
            grace_s = (sub_config.restart_grace_s if sub_config.restart_grace_s is not None
                       else 2 * pub_config.heartbeat_interval_s)
            step_bound = grace_s + 2 * cycle_s + args.step_slack
            final_bound = grace_s + 2 * cycle_s + args.slack
            report["config"] = {
                "leaves": args.leaves, "rate": args.rate, "subscribers": args.subscribers,
                "group": _GROUP, "port": port, "seed": args.seed,
                "topology": "veth" if peer is not None else "loopback",
                "interface": interface, "ttl": ttl,
                "attacker_interface": peer.peer if peer is not None else _INTERFACE,
                "steps": [name for _, name, _ in steps],
                "restart_grace_s": grace_s, "snapshot_cycle_s": round(cycle_s, 3),
                "step_bound_s": round(step_bound, 3), "final_bound_s": round(final_bound, 3),
            }
            feeder = Feeder(pub, market, args.rate, paused=False, name="attack-run-feeder")
            run = Run(pub, subs, events, feeder)
            attacks = Attacks(attacker, pub, rng, args)
            first_sync = [sub.wait_synced(timeout=20) for sub in subs]
            report["initial_sync"] = first_sync
            attacks.synced_at = time.monotonic()
            threading.Event().wait(args.warmup)  # live stream before the first attack
            last_attack = time.monotonic()
            for phase, name, quiet in steps:
                stats_before = [sub.stats().to_dict() for sub in subs]
                attacks.mark = attacker.serial
                if quiet:
                    feeder.pause()
                    pub.flush(5)
                    # Let every subscriber catch up before the quiet attack (bounded).
                    caught_up_by = time.monotonic() + 1.0
                    for sub in subs:
                        sub.wait_until_applied(pub.last_sequence, session_id=pub.session_id,
                                               timeout=max(0.0, caught_up_by - time.monotonic()))
                started = time.monotonic()
                details = getattr(attacks, name)()
                last_attack = time.monotonic()
                observations = []
                for after in OBSERVE_AFTER_S:
                    threading.Event().wait(max(0.0, last_attack + after - time.monotonic()))
                    truth = run.truth() if quiet else None
                    observations.append({"after_s": after, "subscribers": [
                        run.state(sub, truth) for sub in subs]})
                feeder.pause()
                recovery = run.wait_equal(step_bound, last_attack)
                report["steps"].append({
                    "phase": phase, "name": name, "quiet": quiet,
                    "attack_s": round(last_attack - started, 3), "details": details,
                    "observations": observations, "recovery": recovery,
                    "events": run.event_counts(started),
                    "stats_changed": stats_delta(
                        stats_before, [sub.stats().to_dict() for sub in subs]),
                })
                feeder.resume()
                threading.Event().wait(args.between)  # live stream between steps
            threading.Event().wait(args.tail)  # publishing goes on after the last attack
            feeder.pause()
            stopped = time.monotonic()
            final = run.wait_equal(final_bound, last_attack)
            final["time_since_stop_s"] = (round(run.finished_at - stopped, 3)
                                          if run.finished_at is not None else None)
            threads = library_threads()
            expected_threads = {f"grapevine-receiver[{_GROUP}:{port}/0]": args.subscribers,
                                f"grapevine-dispatch[{_GROUP}:{port}/0]": args.subscribers,
                                f"grapevine-sender[{_GROUP}:{port}/0]": 1}
            alive = Counter(threads)
            report["final"] = final
            report["silent_divergences"] = silent_divergences(report)
            report["keys"] = args.keys
            report["unsynced_observations"] = unsynced_observations(report)
            report["auth_drops"] = [
                {key: stats[key] for key in ("unauthenticated", "unknown_keys", "bad_tags",
                                             "replayed")}
                for stats in (sub.stats().to_dict() for sub in subs)]
            report["subscriber_stats"] = [sub.stats().to_dict() for sub in subs]
            report["internal_errors"] = [sub.stats().internal_errors for sub in subs]
            report["threads"] = {
                "expected": expected_threads, "alive": dict(alive),
                "all_alive": all(alive[name] >= n for name, n in expected_threads.items()),
                "feeder_error": feeder.error, "capture_alive": attacker.thread.is_alive(),
            }
            report["deltas_published"] = feeder.sent
            report["publisher"] = {k: v for k, v in pub.stats().to_dict().items()
                                   if k in ("deltas", "datagrams", "cycles", "send_errors")}
            report["attacker"] = {"sent": attacker.sent,
                                  "captured_undecodable": attacker.undecodable}
            if peer is not None:  # the stream out of and the forgeries into this namespace
                report["veth"] = {"device": peer.local_dev, **peer.counters()}
            feeder.stop()
    finally:
        if feeder is not None:
            feeder.stop()
        if attacker is not None:
            attacker.close()
        for sub in subs:
            sub.close()
        if peer is not None:
            peer.close()
    report["log"] = {"counts": dict(errors.counts), "samples": errors.samples}
    ok = (report.get("final", {}).get("all", False)
          and all(state.get("equal") and state.get("synced")
                  for state in report["final"]["subscribers"])
          and not any(report["internal_errors"]) and report["threads"]["all_alive"])
    if args.keys:  # authenticated: nothing forged may ever show, not even for a moment
        ok = ok and not report.get("unsynced_observations") and not any(
            step["stats_changed"][i].get(key) for step in report["steps"]
            for i in range(args.subscribers)
            for key in ("divergences", "resyncs", "restarts", "bad_payloads", "malformed",
                        "leaves_made_stale", "census_mismatches"))
    report["ok"] = bool(ok)
    print(summary(report), file=sys.stderr)
    print(json.dumps(report))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
