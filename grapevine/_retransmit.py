"""Retransmission on request (SPEC §15), sans-I/O.

A receiver that sees a hole in the stream asks a server (by default the publisher, at the
source address of the stream's datagrams) for the datagrams that carried the missing
DELTAs; the server answers, by unicast, with the original datagrams byte for byte, or with
an UNAVAILABLE packet naming the range it does hold. Recovered datagrams are ordinary
datagrams: the receiver feeds them to its core like any other, so a hole repaired in time
never becomes a gap and no leaf goes stale. When the range is gone, nobody answers, or
retransmission is off, the hole becomes a gap after ``retransmit_wait_s`` and the snapshot
cycle repairs the leaves it touched, as before.

* :class:`DatagramRing`: the server's bounded memory of recent delta datagrams.
* :class:`RetransmitServer`: answers requests, with per-requester rate limits and a cap
  on the answer size (a request is small and an answer large: unlimited answers would make
  the server an amplifier for anyone who can forge a source address).
* :class:`RepairRequester`: the receiver's schedule of requests: a random first delay (so
  many receivers that lost the same datagram do not all ask at once; RFC 5401's randomized
  delay), retries with exponential backoff and jitter, coalesced ranges, and giving up.
* :func:`encode_retransmit` / :func:`decode_retransmit`: the packets, defined once in
  :mod:`grapevine.wire` (``RetransmitPacket``).
"""

from __future__ import annotations

import random
import struct
import threading
from bisect import bisect_right
from collections import OrderedDict, deque
from collections.abc import Hashable
from typing import NamedTuple

from . import wire
from ._errors import DecodeError
from .auth import KeyRing, Verdict, Verifier, sign
from .codec import Delta, decode_datagram

__all__ = ["PACKET_SIZE", "DatagramRing", "RepairRequester", "RetransmitMessage",
           "RetransmitServer", "StreamCache", "decode_retransmit", "encode_retransmit"]

REQUEST = wire.RetransmitKind.REQUEST
UNAVAILABLE = wire.RetransmitKind.UNAVAILABLE
_FIELDS = struct.Struct(wire.struct_format(wire.RetransmitFields))
PACKET_SIZE = _FIELDS.size
_AUTH = int(wire.HeaderFlag.AUTH)


def _field_offsets() -> list[tuple[int, str]]:
    offsets, offset = [], 0
    for sub in wire.RetransmitFields.subcons:
        offsets.append((offset, sub.name))
        offset += sub.sizeof()
    return offsets


_FIELD_OFFSETS = _field_offsets()


def _field_at(offset: int) -> str:
    """The name of the field that the byte at ``offset`` belongs to (where data ran out)."""
    return next(name for start, name in reversed(_FIELD_OFFSETS) if start <= offset)


class RetransmitMessage(NamedTuple):
    """One retransmission packet's fields (SPEC §15)."""

    kind: int
    stream_id: int
    session_id: int
    first_seq: int
    end_seq: int
    available_first: int = 0
    available_end: int = 0
    send_time_ns: int = 0
    flags: int = 0


def encode_retransmit(message: RetransmitMessage, keys: KeyRing | None = None) -> bytes:
    """The packet's bytes; signed (AUTH flag and trailer) when ``keys`` is given."""
    packet = _FIELDS.pack(wire.RETRANSMIT_MAGIC, wire.VERSION, 0, int(message.kind), 0,
                          message.stream_id, message.session_id, message.first_seq,
                          message.end_seq, message.available_first, message.available_end,
                          message.send_time_ns)
    return sign(packet, keys) if keys is not None else packet


def decode_retransmit(data: bytes | bytearray | memoryview) -> RetransmitMessage:
    """A retransmission packet's fields. Raises :class:`DecodeError` naming what is wrong
    (the tag is not checked here: see :class:`~grapevine.auth.Verifier`)."""
    size = len(data)
    if size < PACKET_SIZE:
        raise DecodeError(f"retransmission packet of {size} bytes is shorter than "
                          f"{PACKET_SIZE}", offset=size, field=_field_at(size))
    (magic, version, flags, kind, _reserved, stream_id, session_id, first_seq, end_seq,
     available_first, available_end, send_time_ns) = _FIELDS.unpack_from(data)
    if magic != wire.RETRANSMIT_MAGIC:
        raise DecodeError(f"bad retransmission magic {bytes(magic)!r}", offset=0,
                          field="magic")
    if version != wire.VERSION:
        raise DecodeError(f"unsupported retransmission version {version}", offset=4,
                          field="version")
    expected_size = PACKET_SIZE + (wire.AUTH_TRAILER_SIZE if flags & _AUTH else 0)
    if size != expected_size:
        raise DecodeError(f"retransmission packet of {size} bytes; its flags call for "
                          f"{expected_size}", offset=min(size, expected_size), field="flags")
    if kind not in (REQUEST, UNAVAILABLE):
        raise DecodeError(f"unknown retransmission kind {kind}", offset=6, field="kind")
    if not 0 < first_seq < end_seq:
        raise DecodeError(f"empty or invalid range [{first_seq}, {end_seq})", offset=28,
                          field="end_seq")
    if available_first > available_end:
        raise DecodeError(f"invalid available range [{available_first}, {available_end})",
                          offset=44, field="available_end")
    return RetransmitMessage(kind, stream_id, session_id, first_seq, end_seq,
                             available_first, available_end, send_time_ns, flags)


# --------------------------------------------------------------------------- server side


class DatagramRing:
    """The most recent delta datagrams of one session, bounded in count and bytes.

    Datagrams are added in stream order, each with the range of DELTA sequences it carries
    (``first <= seq < end``). A publisher's ring is contiguous; a relay's (a repeater's) has
    the holes of what it never received itself.
    """

    def __init__(self, max_datagrams: int, max_bytes: int) -> None:
        if max_datagrams < 1 or max_bytes < 1:
            raise ValueError("a ring needs room for at least one datagram")
        self.max_datagrams = max_datagrams
        self.max_bytes = max_bytes
        self._firsts: deque[int] = deque()
        self._ends: deque[int] = deque()
        self._datagrams: deque[bytes] = deque()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._datagrams)

    @property
    def held(self) -> tuple[int, int]:
        """The range of sequences held, ``(first, end)``; ``(0, 0)`` when empty."""
        if not self._datagrams:
            return (0, 0)
        return (self._firsts[0], self._ends[-1])

    def add(self, first_seq: int, end_seq: int, datagram: bytes) -> None:
        """Remember a datagram carrying the DELTAs ``first_seq <= seq < end_seq``."""
        if self._ends and first_seq < self._ends[-1]:
            self.clear()  # behind what is held: another session or a replay; start over
        self._firsts.append(first_seq)
        self._ends.append(end_seq)
        self._datagrams.append(datagram)
        self.bytes += len(datagram)
        while len(self._datagrams) > self.max_datagrams or (
                self.bytes > self.max_bytes and len(self._datagrams) > 1):
            self._firsts.popleft()
            self._ends.popleft()
            self.bytes -= len(self._datagrams.popleft())

    def find(self, first_seq: int, end_seq: int, limit: int) -> list[bytes]:
        """Up to ``limit`` held datagrams, in order, that carry DELTAs of
        ``first_seq <= seq < end_seq``, starting with the one that carries ``first_seq``;
        none if no held datagram carries it (the start is what the receiver needs first)."""
        firsts, ends = self._firsts, self._ends
        index = bisect_right(firsts, first_seq) - 1
        if index < 0 or ends[index] <= first_seq:
            return []
        found: list[bytes] = []
        while index < len(firsts) and firsts[index] < end_seq and len(found) < limit:
            found.append(self._datagrams[index])
            index += 1
        return found

    def clear(self) -> None:
        self._firsts.clear()
        self._ends.clear()
        self._datagrams.clear()
        self.bytes = 0

    def _check(self) -> None:
        assert len(self._firsts) == len(self._ends) == len(self._datagrams)
        assert self.bytes == sum(len(d) for d in self._datagrams)
        assert len(self._datagrams) <= self.max_datagrams
        for index in range(1, len(self._firsts)):
            assert self._firsts[index] >= self._ends[index - 1]


class _Bucket:
    __slots__ = ("at", "tokens")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens = tokens
        self.at = at


class RetransmitServer:
    """Answers retransmission requests for one stream from a :class:`DatagramRing`.

    Each requester (an address) may take ``bytes_per_s`` of answers, with a burst of
    ``burst_bytes``; requests beyond are dropped and counted (the requester retries, then
    falls back to the snapshot cycle). An answer holds at most ``max_answer_datagrams``
    datagrams. With ``keys``, requests must be signed by a key of the ring and UNAVAILABLE
    answers are signed (retransmitted datagrams carry their original signature).
    """

    MAX_REQUESTERS = 1024  # rate-limit state kept for this many addresses (LRU)

    def __init__(self, ring: DatagramRing, *, stream_id: int, keys: KeyRing | None = None,
                 max_answer_datagrams: int = 64, bytes_per_s: float = 10e6,
                 burst_bytes: float = 256 * 1024) -> None:
        self.ring = ring
        self.stream_id = stream_id
        self.session_id = 0  # the session the ring holds (set by the publisher)
        self.keys = keys
        self._verifier = Verifier(keys) if keys is not None else None
        self.max_answer_datagrams = max_answer_datagrams
        self.bytes_per_s = bytes_per_s
        self.burst_bytes = burst_bytes
        self._buckets: OrderedDict[Hashable, _Bucket] = OrderedDict()
        self.requests = 0  # valid requests received
        self.datagrams_sent = 0  # datagrams retransmitted
        self.unavailable = 0  # UNAVAILABLE answers
        self.refused = 0  # malformed, unauthenticated, foreign or rate-limited: no answer

    def set_keys(self, keys: KeyRing) -> None:
        self.keys = keys
        self._verifier = Verifier(keys)

    def handle(self, data: bytes | bytearray | memoryview, requester: Hashable, now: float,
               send_time_ns: int) -> list[bytes]:
        """The packets to send back to ``requester`` (possibly none). Never raises on data."""
        try:
            request = decode_retransmit(data)
        except DecodeError:
            self.refused += 1
            return []
        verifier = self._verifier
        if request.kind != REQUEST or request.stream_id != self.stream_id or (
                verifier is not None and verifier.check(data) is not Verdict.ACCEPTED):
            self.refused += 1
            return []
        self.requests += 1
        first, end = request.first_seq, request.end_seq
        held_first, held_end = self.ring.held
        found: list[bytes] = []
        if request.session_id == self.session_id:
            found = self.ring.find(first, end, self.max_answer_datagrams)
        answer: list[bytes] = list(found)
        covers_start = bool(found)
        if not covers_start:
            # The start of the range is gone (or never was): say what is held, so the
            # requester falls back to the snapshot cycle at once instead of retrying.
            available = (held_first, held_end) if request.session_id == self.session_id \
                else (0, 0)
            answer = [encode_retransmit(RetransmitMessage(
                UNAVAILABLE, self.stream_id, request.session_id, first, end, *available,
                send_time_ns), self.keys)]
        if not self._take(requester, sum(map(len, answer)), now):
            self.refused += 1
            return []
        if covers_start:
            self.datagrams_sent += len(answer)
        else:
            self.unavailable += 1
        return answer

    def _take(self, requester: Hashable, size: int, now: float) -> bool:
        buckets = self._buckets
        bucket = buckets.get(requester)
        if bucket is None:
            bucket = buckets[requester] = _Bucket(self.burst_bytes, now)
            if len(buckets) > self.MAX_REQUESTERS:
                buckets.popitem(last=False)
        else:
            buckets.move_to_end(requester)
            bucket.tokens = min(self.burst_bytes,
                                bucket.tokens + (now - bucket.at) * self.bytes_per_s)
            bucket.at = now
        if bucket.tokens < size:
            return False
        bucket.tokens -= size
        return True


# --------------------------------------------------------------------------- receiver side


class _Pending:
    __slots__ = ("attempts", "given_up", "next_at")

    def __init__(self, next_at: float) -> None:
        self.next_at = next_at
        self.attempts = 0
        self.given_up = False


class RepairRequester:
    """When to ask for which missing ranges. Driven by the subscriber core.

    A new hole is asked for after a random delay in ``[0, delay_s]``, then again after
    ``timeout_s``, ``2 * timeout_s``, ... (each times a random factor in [0.5, 1.5]) up to
    ``attempts`` requests; then it is given up, and so is a hole the server said it does
    not hold or one of more than ``max_deltas`` DELTAs (the snapshot cycle is cheaper).
    A hole that shrinks (part of it arrived) keeps its schedule.
    """

    def __init__(self, *, delay_s: float, timeout_s: float, attempts: int, max_deltas: int,
                 rng: random.Random | None = None) -> None:
        self.delay_s = delay_s
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.max_deltas = max_deltas
        self._rng = rng or random.Random()
        self._pending: dict[tuple[int, int], _Pending] = {}

    def __bool__(self) -> bool:
        return bool(self._pending)

    def update(self, missing: list[tuple[int, int]], now: float) -> None:
        """The ranges missing now (ascending, disjoint); forget the others."""
        old = self._pending
        if not missing:
            old.clear()
            return
        if list(old) == missing:
            return
        pending: dict[tuple[int, int], _Pending] = {}
        for first, end in missing:
            state = old.get((first, end))
            if state is None:
                # Part of an older hole (it shrank or split) keeps that hole's schedule.
                state = next((s for (f, e), s in old.items() if f < end and first < e), None)
                if state is None:
                    state = _Pending(now + self._rng.uniform(0, self.delay_s))
                    state.given_up = end - first > self.max_deltas
            pending[(first, end)] = state
        self._pending = pending

    def due(self, now: float) -> list[tuple[int, int]]:
        """The ranges to request now, adjacent ones merged."""
        ranges: list[tuple[int, int]] = []
        for (first, end), state in self._pending.items():
            if state.given_up or state.next_at > now:
                continue
            if state.attempts >= self.attempts:
                state.given_up = True
                continue
            state.attempts += 1
            backoff = self.timeout_s * (1 << (state.attempts - 1))
            state.next_at = now + backoff * self._rng.uniform(0.5, 1.5)
            if ranges and ranges[-1][1] >= first:
                ranges[-1] = (ranges[-1][0], max(end, ranges[-1][1]))
            else:
                ranges.append((first, end))
        return ranges

    def unavailable(self, first: int, end: int, held_end: int | None = None) -> None:
        """The server does not hold ``[first, end)``: stop asking for what overlaps it.

        Unless the server holds nothing from ``first`` on yet (``held_end``, the end of what
        it holds, is at or below ``first``): a relay or replayer that has not received the
        datagram yet says so when asked a moment after the requester noticed the hole.
        That hole keeps its schedule (the next attempt, after the backoff) instead of
        becoming a gap at once; the attempt limit still bounds the wait.
        """
        if held_end is not None and 0 < held_end <= first:
            return
        for (f, e), state in self._pending.items():
            if f < end and first < e:
                state.given_up = True

    def waiting(self) -> bool:
        """True while some hole may still be repaired by retransmission."""
        return any(not state.given_up for state in self._pending.values())

    def next_deadline(self) -> float | None:
        """When :meth:`due` next has something to do (or a hole is to be given up)."""
        return min((state.next_at for state in self._pending.values() if not state.given_up),
                   default=None)

    def clear(self) -> None:
        self._pending.clear()


# --------------------------------------------------------------------------- relays


class StreamCache:
    """Serves retransmission for streams this process only *relays* (a repeater's receive
    side, a replayer): it keeps each stream's recent delta datagrams as they pass, for its
    two newest sessions, and answers requests for them like a publisher (SPEC §15).

    Datagrams that do not decode are not kept; with ``keys``, requests must verify.
    """

    SESSIONS_PER_STREAM = 2  # a restart's new session, and stragglers of the one before

    def __init__(self, *, max_datagrams: int = 4096, max_bytes: int = 8 << 20,
                 keys: KeyRing | None = None, max_answer_datagrams: int = 64,
                 bytes_per_s: float = 10e6) -> None:
        self.max_datagrams = max_datagrams
        self.max_bytes = max_bytes
        self.keys = keys
        self.max_answer_datagrams = max_answer_datagrams
        self.bytes_per_s = bytes_per_s
        # stream_id -> session_id -> its server, oldest session first
        self.servers: dict[int, dict[int, RetransmitServer]] = {}
        self.refused = 0  # requests for a stream never seen, or malformed
        # One thread observes and answers; the lock only keeps counts() (another thread's
        # stats) from walking the dicts while a session is added.
        self._lock = threading.Lock()

    def set_keys(self, keys: KeyRing) -> None:
        """Rotate the ring requests are checked and answers signed with."""
        self.keys = keys
        with self._lock:
            for sessions in self.servers.values():
                for server in sessions.values():
                    server.set_keys(keys)

    def observe(self, datagram: bytes) -> None:
        """A datagram of some stream passed: keep it if it carries DELTAs."""
        try:
            decoded = decode_datagram(datagram)
        except DecodeError:
            return
        deltas = sum(1 for message in decoded.messages if type(message) is Delta)
        if not deltas:
            return
        sessions = self.servers.get(decoded.stream_id)
        server = sessions.get(decoded.session_id) if sessions is not None else None
        if server is None:
            server = RetransmitServer(
                DatagramRing(self.max_datagrams, self.max_bytes), stream_id=decoded.stream_id,
                keys=self.keys, max_answer_datagrams=self.max_answer_datagrams,
                bytes_per_s=self.bytes_per_s)
            server.session_id = decoded.session_id
            with self._lock:
                sessions = self.servers.setdefault(decoded.stream_id, {})
                sessions[decoded.session_id] = server
                while len(sessions) > self.SESSIONS_PER_STREAM:
                    del sessions[next(iter(sessions))]
        server.ring.add(decoded.sequence, decoded.sequence + deltas, bytes(datagram))

    def answer(self, request: bytes | bytearray | memoryview, requester: Hashable,
               now: float, send_time_ns: int) -> list[bytes]:
        """What to send back to ``requester`` (possibly nothing). Never raises on data."""
        try:
            packet = decode_retransmit(request)
        except DecodeError:
            self.refused += 1
            return []
        sessions = self.servers.get(packet.stream_id)
        if not sessions:
            self.refused += 1
            return []
        # A session not held gets UNAVAILABLE (holding nothing) from the newest server.
        server = sessions.get(packet.session_id) or next(reversed(sessions.values()))
        return server.handle(request, requester, now, send_time_ns)

    def counts(self) -> dict[str, int]:
        """requests, datagrams_sent, unavailable and refused, over every stream."""
        with self._lock:
            servers = [server for sessions in self.servers.values()
                       for server in sessions.values()]
        return {"requests": sum(s.requests for s in servers),
                "datagrams_sent": sum(s.datagrams_sent for s in servers),
                "unavailable": sum(s.unavailable for s in servers),
                "refused": self.refused + sum(s.refused for s in servers)}
