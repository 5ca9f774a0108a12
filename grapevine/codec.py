"""Encode and decode Grapevine v1 datagrams.

Two paths, one format:

* the **fast path** (:class:`DatagramBuilder`, :func:`decode_datagram`) packs into a preallocated
  buffer and reads a ``memoryview`` in place with ``struct`` formats that are *derived* from
  the construct definitions in :mod:`grapevine.wire` (never written by hand);
* the **construct path** (:func:`decode_with_construct`, :func:`encode_with_construct`)
  runs the construct definitions themselves, for tools, vectors and cross-checking.

Both return the same light values (named tuples, payloads as memoryviews into the received
buffer: nothing is copied until the caller needs it) and both raise only
:class:`~grapevine.DecodeError` on bad input. Tests prove they agree.
"""


import functools
import struct
from collections import deque
from collections.abc import Sequence
from itertools import chain
from typing import Any, NamedTuple

from construct import ConstructError

from . import wire
from ._errors import DecodeError, EncodeError
from .wire import DeltaFlag, HeaderFlag, MessageKind, SnapshotFlag

__all__ = [
    "AuthTag",
    "DatagramBuilder",
    "Decoded",
    "Delta",
    "EndOfSession",
    "HEADER_SIZE",
    "Heartbeat",
    "MESSAGE_HEADER_SIZE",
    "DELTA_OVERHEAD",
    "SNAPSHOT_OVERHEAD",
    "Snapshot",
    "TOUCHED_ENTRY_SIZE",
    "TOUCHED_OVERHEAD",
    "Touched",
    "UnknownMessage",
    "comparable",
    "decode_datagram",
    "decode_with_construct",
    "describe_datagram",
    "encode_datagram",
    "encode_with_construct",
    "restamped",
]

_HEADER = struct.Struct(wire.struct_format(wire.Header))
# As a plain int: ``int & IntFlag`` builds an enum member (about a microsecond).
_AUTH_FLAG = int(HeaderFlag.AUTH)
_MESSAGE_HEADER = struct.Struct(wire.struct_format(wire.MessageHeader))
_DELTA = struct.Struct(wire.struct_format(wire.DeltaFields))
_SNAPSHOT = struct.Struct(wire.struct_format(wire.SnapshotFields))
_HEARTBEAT = struct.Struct(wire.struct_format(wire.HeartbeatFields))
_AUTH = struct.Struct(wire.struct_format(wire.AuthTrailer))
_TOUCHED = struct.Struct(wire.struct_format(wire.TouchedFields))
_TOUCHED_ENTRY = struct.Struct(wire.struct_format(wire.TouchedEntry))
# The message header and the fixed delta fields packed in one call (hot path).
_DELTA_WITH_HEADER = struct.Struct(_MESSAGE_HEADER.format + _DELTA.format.lstrip("<"))
_new_tuple = tuple.__new__

HEADER_SIZE = _HEADER.size
MESSAGE_HEADER_SIZE = _MESSAGE_HEADER.size
DELTA_OVERHEAD = MESSAGE_HEADER_SIZE + _DELTA.size  # bytes a delta costs beyond its payload
SNAPSHOT_OVERHEAD = MESSAGE_HEADER_SIZE + _SNAPSHOT.size
TOUCHED_OVERHEAD = MESSAGE_HEADER_SIZE + _TOUCHED.size  # plus TOUCHED_ENTRY_SIZE per leaf
TOUCHED_ENTRY_SIZE = _TOUCHED_ENTRY.size
_MAX_BODY = 0xFFFF
_MAX_SEQ = 0xFFFF_FFFF_FFFF_FFFF  # the largest stream sequence (2^64 - 1)
_SEQUENCE_OFFSET = 20  # the header's ``sequence`` field
_SEQUENCE_TOO_BIG = 1 << 64  # a "next DELTA sequence" at or past this overflowed

_DELTA_FLAGS_BOTH = DeltaFlag.CREATE | DeltaFlag.DELETE
# Plain ints: an IntFlag operand would run enum's Python-level __rand__ on every snapshot.
_DELETED = int(SnapshotFlag.DELETED)
_LAST = int(SnapshotFlag.LAST)
_MARKER_FLAGS = _DELETED | _LAST


class Delta(NamedTuple):
    """A change to one leaf. ``seq`` is its stream sequence number (implicit on the wire)."""

    seq: int
    leaf_id: int
    leaf_seq: int
    flags: int
    payload: memoryview | bytes


class Snapshot(NamedTuple):
    """One leaf's whole state (or a fragment of it) from the snapshot cycle."""

    leaf_id: int
    range_start: int
    cycle_id: int
    cycle_position: int
    cycle_count: int
    leaf_seq: int
    as_of_seq: int
    total_length: int
    fragment_offset: int
    flags: int
    payload: memoryview | bytes


class Heartbeat(NamedTuple):
    """The stream is idle; the header's sequence is the next sequence number."""

    interval_ms: int


class EndOfSession(NamedTuple):
    """The publisher stopped cleanly; the header's sequence is one past its last delta."""


class Touched(NamedTuple):
    """Which leaves the DELTAs with ``first_seq <= seq < end_seq`` changed.

    ``entries`` holds ``(leaf_id, leaf_seq)`` pairs, ascending by leaf id: every leaf those
    deltas changed and its leaf_seq after them. A receiver that lost some of those deltas
    learns from it exactly which leaves the loss touched.
    """

    first_seq: int
    end_seq: int
    entries: tuple[tuple[int, int], ...]


class UnknownMessage(NamedTuple):
    """A message kind this version does not know; receivers skip it."""

    kind: int
    flags: int
    body: memoryview | bytes


class AuthTag(NamedTuple):
    """The optional authentication trailer (SPEC §9; verified by :mod:`grapevine.auth`)."""

    key_id: int
    tag: bytes


Message = Delta | Snapshot | Heartbeat | EndOfSession | Touched | UnknownMessage


class Decoded(NamedTuple):
    """A decoded datagram: the header's fields and its messages in wire order."""

    version: int
    flags: int
    stream_id: int
    session_id: int
    sequence: int
    send_time_ns: int
    messages: list[Message]
    auth: AuthTag | None = None


# --------------------------------------------------------------------------- decoding


def decode_datagram(data: bytes | bytearray | memoryview) -> Decoded:
    """Decode one datagram (fast path). Raises :class:`DecodeError` and nothing else.

    ``data`` is any bytes-like object; the datagram is its bytes in logical order, exactly
    ``bytes(data)`` (as :func:`decode_with_construct` reads it). Payloads in the result are
    memoryviews into ``data``: copy them (``bytes(p)``) before the buffer is reused. A
    non-contiguous buffer (``memoryview(b)[::2]``) is accepted by copying it first; its
    payloads then view that private copy.
    """
    mv = data if isinstance(data, memoryview) else memoryview(data)
    if not mv.c_contiguous:
        mv = memoryview(mv.tobytes())  # struct cannot read strided buffers in place
    elif mv.ndim != 1 or mv.itemsize != 1:
        mv = mv.cast("B")
    size = len(mv)
    if size > wire.MAX_DATAGRAM_SIZE:
        raise _too_large(size)
    if size < HEADER_SIZE:
        raise DecodeError(
            f"datagram of {size} bytes is shorter than the {HEADER_SIZE}-byte header",
            offset=size, field="header",
        )
    magic, version, flags, count, stream_id, session_id, sequence, send_time = (
        _HEADER.unpack_from(mv, 0)
    )
    _check_header(magic, version, session_id)
    end = size
    auth: AuthTag | None = None
    if flags & HeaderFlag.AUTH:
        end -= _AUTH.size
        if end < HEADER_SIZE:
            raise DecodeError("datagram too short for its auth trailer", offset=HEADER_SIZE,
                              field="auth")
        key_id, tag = _AUTH.unpack_from(mv, end)
        auth = AuthTag(key_id, tag)
    messages: list[Message] = []
    append = messages.append
    offset = HEADER_SIZE
    seq = sequence
    unpack_header = _MESSAGE_HEADER.unpack_from
    unpack_delta_with_header = _DELTA_WITH_HEADER.unpack_from
    delta_room = end - DELTA_OVERHEAD  # a whole delta header fits below this offset
    for index in range(count):
        if offset <= delta_room:
            # Hot path: read the message header and a delta's fixed fields in one call;
            # if the kind is not DELTA the last two values are simply not used.
            kind, mflags, length, leaf_id, leaf_seq = unpack_delta_with_header(mv, offset)
        elif offset + MESSAGE_HEADER_SIZE > end:
            raise DecodeError(
                f"message_count says {count} but message {index} is missing or truncated",
                offset=offset, field=f"messages[{index}]",
            )
        else:
            kind, mflags, length = unpack_header(mv, offset)
        body = offset + MESSAGE_HEADER_SIZE
        stop = body + length
        if stop > end:
            raise DecodeError(
                f"message {index} length {length} overruns the datagram",
                offset=offset + 2, field=f"messages[{index}].length",
            )
        if kind == 1:  # MessageKind.DELTA, inlined: this is the hot path
            if length < 12:
                raise _short(index, "delta", length, 12, offset)
            # tuple.__new__ directly: skips the named tuple's Python-level __new__.
            delta = _new_tuple(Delta, (seq, leaf_id, leaf_seq, mflags, mv[body + 12 : stop]))
            if mflags & 3 or leaf_seq == 0:
                _check_delta(delta, index, offset)
            append(delta)
            seq += 1
        elif kind == MessageKind.SNAPSHOT:
            if length < _SNAPSHOT.size:
                raise _short(index, "snapshot", length, _SNAPSHOT.size, offset)
            fields = _SNAPSHOT.unpack_from(mv, body)
            snap = Snapshot._make((*fields, mflags, mv[body + _SNAPSHOT.size : stop]))
            _check_snapshot(snap, index, offset, seq)
            append(snap)
        elif kind == MessageKind.HEARTBEAT:
            if length < _HEARTBEAT.size:
                raise _short(index, "heartbeat", length, _HEARTBEAT.size, offset)
            append(Heartbeat(*_HEARTBEAT.unpack_from(mv, body)))
        elif kind == MessageKind.END_OF_SESSION:
            append(EndOfSession())
        elif kind == MessageKind.TOUCHED:
            _check_touched_length(length, index, offset)
            first_seq, end_seq = _TOUCHED.unpack_from(mv, body)
            entries = tuple(_TOUCHED_ENTRY.iter_unpack(mv[body + _TOUCHED.size : stop]))
            touched = Touched(first_seq, end_seq, entries)
            _check_touched(touched, index, offset, seq)
            append(touched)
        else:
            append(UnknownMessage(kind, mflags, mv[body:stop]))
        offset = stop
    if offset != end:
        raise DecodeError(
            f"{end - offset} trailing bytes after the {count} messages the header announces",
            offset=offset, field="messages",
        )
    if seq > _SEQUENCE_TOO_BIG:  # once per datagram, not per DELTA
        raise _sequence_overflow(sequence, seq)
    return Decoded(version, flags, stream_id, session_id, sequence, send_time, messages, auth)


# The subscriber's receive path (internal): whole datagrams of DELTAs that all have the
# same length (the common case under load: a model whose deltas have one size, batched by
# the publisher) are read with one ``struct`` call each, payloads included (as ``bytes``:
# half the cost of a memoryview slice each), and their DELTAs come back as plain tuples,
# built in C by ``zip``: no Python-level loop and no named tuple per DELTA.
# Everything else, including every datagram with an error, goes to decode_datagram.
_uniform_formats: dict[tuple[int, int], struct.Struct] = {}
_MAX_UNIFORM_FORMATS = 64  # (message_count, record size) pairs cached; forged ones churn


def _decode_datagram_fast(data: bytes | bytearray | memoryview) -> Decoded:
    """:func:`decode_datagram`, except that DELTAs may come back as plain 5-tuples
    ``(seq, leaf_id, leaf_seq, flags, payload)`` (the fields of :class:`Delta`, in its
    order) instead of :class:`Delta`. Same checks, same errors (tests prove it on every
    vector and on mutations of them): it only takes the datagrams it can judge entirely,
    valid ones of uniform DELTAs, and hands every other one to decode_datagram."""
    if type(data) is memoryview:
        if not data.c_contiguous or data.ndim != 1 or data.itemsize != 1:
            return decode_datagram(data)
        mv = data
    else:
        mv = memoryview(data)
        if mv.ndim != 1 or mv.itemsize != 1:
            return decode_datagram(data)
    size = len(mv)
    if not HEADER_SIZE <= size <= wire.MAX_DATAGRAM_SIZE:
        return decode_datagram(data)
    magic, version, flags, count, stream_id, session_id, sequence, send_time = (
        _HEADER.unpack_from(mv, 0)
    )
    if magic != wire.MAGIC or version != wire.VERSION or not session_id or not count:
        return decode_datagram(data)
    end = size
    auth: AuthTag | None = None
    if flags & _AUTH_FLAG:
        end -= _AUTH.size
        if end < HEADER_SIZE:
            return decode_datagram(data)
    record, spare = divmod(end - HEADER_SIZE, count)
    # A record is one whole DELTA (header, fixed fields, payload); the next DELTA's
    # sequence after the last must not pass 2^64 as decode_datagram checks.
    if spare or record < DELTA_OVERHEAD or sequence + count > _SEQUENCE_TOO_BIG:
        return decode_datagram(data)
    form = _uniform_formats.get((count, record))
    if form is None:
        if len(_uniform_formats) >= _MAX_UNIFORM_FORMATS:
            _uniform_formats.clear()
        # Each record: the DELTA's header and fixed fields, then its payload ("0s": b"").
        one = _DELTA_WITH_HEADER.format.lstrip("<") + f"{record - DELTA_OVERHEAD}s"
        form = _uniform_formats[(count, record)] = struct.Struct("<" + one * count)
    values = form.unpack_from(mv, HEADER_SIZE)
    kinds, mflags, lengths = values[0::6], values[1::6], values[2::6]
    leaf_seqs = values[4::6]
    # Every message a DELTA of the same length (so each ends where the next begins and
    # the last at the trailer), no CREATE/DELETE flags (checked by _check_delta), no
    # leaf_seq 0: otherwise decode_datagram judges it and words any error.
    if (kinds.count(1) != count or lengths.count(record - MESSAGE_HEADER_SIZE) != count
            or mflags.count(0) != count or 0 in leaf_seqs):
        return decode_datagram(data)
    if flags & _AUTH_FLAG:
        key_id, tag = _AUTH.unpack_from(mv, end)
        auth = AuthTag(key_id, tag)
    messages: list[Any] = list(zip(range(sequence, sequence + count), values[3::6],
                                   leaf_seqs, mflags, values[5::6], strict=True))
    return _new_tuple(Decoded, (version, flags, stream_id, session_id, sequence, send_time,
                                messages, auth))


def decode_with_construct(data: bytes | bytearray | memoryview) -> Decoded:
    """Decode one datagram with the construct definitions (slow path, same result)."""
    raw = bytes(data)
    if len(raw) > wire.MAX_DATAGRAM_SIZE:
        raise _too_large(len(raw))
    if len(raw) >= 6:
        # Check identity first so that bad magic/version get the same error on both paths.
        magic, version = raw[:4], raw[4]
        session_id = int.from_bytes(raw[12:20], "little") if len(raw) >= 20 else 1
        _check_header(magic, version, session_id)
    try:
        parsed = wire.Datagram.parse(raw)
    except ConstructError as exc:
        path = getattr(exc, "path", None) or "datagram"
        raise DecodeError(f"malformed datagram: {exc}", offset=0, field=str(path)) from exc
    header = parsed.header
    _check_header(header.magic, header.version, header.session_id)
    messages: list[Message] = []
    seq = header.sequence
    offset = HEADER_SIZE
    for index, msg in enumerate(parsed.messages):
        body = msg.body
        if msg.kind == MessageKind.DELTA:
            if msg.length < _DELTA.size:
                raise _short(index, "delta", msg.length, _DELTA.size, offset)
            delta = Delta(seq, body.leaf_id, body.leaf_seq, msg.flags, memoryview(body.payload))
            _check_delta(delta, index, offset)
            messages.append(delta)
            seq += 1
        elif msg.kind == MessageKind.SNAPSHOT:
            if msg.length < _SNAPSHOT.size:
                raise _short(index, "snapshot", msg.length, _SNAPSHOT.size, offset)
            snap = Snapshot(
                body.leaf_id, body.range_start, body.cycle_id, body.cycle_position,
                body.cycle_count, body.leaf_seq, body.as_of_seq, body.total_length,
                body.fragment_offset, msg.flags, memoryview(body.payload),
            )
            _check_snapshot(snap, index, offset, seq)
            messages.append(snap)
        elif msg.kind == MessageKind.HEARTBEAT:
            if msg.length < _HEARTBEAT.size:
                raise _short(index, "heartbeat", msg.length, _HEARTBEAT.size, offset)
            messages.append(Heartbeat(body.interval_ms))
        elif msg.kind == MessageKind.END_OF_SESSION:
            messages.append(EndOfSession())
        elif msg.kind == MessageKind.TOUCHED:
            _check_touched_length(msg.length, index, offset)
            touched = Touched(body.first_seq, body.end_seq,
                              tuple((e.leaf_id, e.leaf_seq) for e in body.entries))
            _check_touched(touched, index, offset, seq)
            messages.append(touched)
        else:
            messages.append(UnknownMessage(msg.kind, msg.flags, memoryview(body)))
        offset += MESSAGE_HEADER_SIZE + msg.length
    if seq > _SEQUENCE_TOO_BIG:
        raise _sequence_overflow(header.sequence, seq)
    auth = AuthTag(parsed.auth.key_id, bytes(parsed.auth.tag)) if parsed.auth else None
    return Decoded(header.version, header.flags, header.stream_id, header.session_id,
                   header.sequence, header.send_time_ns, messages, auth)


def _check_header(magic: bytes, version: int, session_id: int) -> None:
    if magic != wire.MAGIC:
        raise DecodeError(f"bad magic {bytes(magic)!r}, expected {wire.MAGIC!r}", offset=0,
                          field="magic")
    if version != wire.VERSION:
        raise DecodeError(f"unsupported version {version} (this receiver speaks {wire.VERSION})",
                          offset=4, field="version")
    if session_id == 0:
        raise DecodeError("session_id must not be 0", offset=12, field="session_id")


def _too_large(size: int) -> DecodeError:
    return DecodeError(f"datagram of {size} bytes exceeds MAX_DATAGRAM_SIZE "
                       f"{wire.MAX_DATAGRAM_SIZE}", offset=wire.MAX_DATAGRAM_SIZE,
                       field="datagram")


def _sequence_overflow(sequence: int, next_seq: int) -> DecodeError:
    """``next_seq`` (sequence + the DELTAs before some point) went past 2^64 - 1."""
    return DecodeError(f"stream sequence {next_seq - 1} of the last DELTA is beyond 2^64 - 1 "
                       f"(header sequence {sequence})", offset=_SEQUENCE_OFFSET,
                       field="sequence")


def _bound_overflow(next_seq: int, what: str) -> DecodeError:
    return DecodeError(f"the {what} bound {next_seq} (header sequence + DELTAs before it) is "
                       "beyond 2^64 - 1", offset=_SEQUENCE_OFFSET, field="sequence")


def _short(index: int, what: str, length: int, minimum: int, offset: int) -> DecodeError:
    return DecodeError(f"{what} message {index} has length {length}, below the minimum {minimum}",
                       offset=offset + 2, field=f"messages[{index}].length")


def _check_delta(delta: Delta, index: int, offset: int) -> None:
    where = f"messages[{index}]"
    if delta.leaf_seq == 0:
        raise DecodeError("delta leaf_seq must be at least 1", offset=offset + 8,
                          field=f"{where}.leaf_seq")
    if delta.flags & _DELTA_FLAGS_BOTH == _DELTA_FLAGS_BOTH:
        raise DecodeError("delta flags CREATE and DELETE are exclusive", offset=offset + 1,
                          field=f"{where}.flags")
    if delta.flags & DeltaFlag.DELETE and len(delta.payload):
        raise DecodeError("a DELETE delta must have an empty payload", offset=offset + 16,
                          field=f"{where}.payload")


def _check_snapshot(snap: Snapshot, index: int, offset: int, next_seq: int) -> None:
    """SPEC section 10, rule 6.5, in its order (the first failing check is reported)."""
    where = f"messages[{index}]"
    body = offset + MESSAGE_HEADER_SIZE
    flags = snap.flags
    count = snap.cycle_count
    if snap.range_start > snap.leaf_id:
        raise DecodeError(f"snapshot range_start {snap.range_start} is above leaf_id "
                          f"{snap.leaf_id}", offset=body + 4, field=f"{where}.range_start")
    if count == 0:
        # The empty-cycle marker, and only it, has cycle_count 0; its fields are fixed.
        if flags & _MARKER_FLAGS != _MARKER_FLAGS or snap.cycle_position != 0:
            raise DecodeError("cycle_count 0 is only valid for the DELETED|LAST marker of an "
                              "empty cycle (cycle_position 0)", offset=body + 16,
                              field=f"{where}.cycle_count")
        if snap.leaf_id:
            raise DecodeError(f"the empty-cycle marker has leaf_id {snap.leaf_id}, not 0",
                              offset=body, field=f"{where}.leaf_id")
        if snap.leaf_seq:
            raise DecodeError(f"the empty-cycle marker has leaf_seq {snap.leaf_seq}, not 0",
                              offset=body + 20, field=f"{where}.leaf_seq")
        if snap.total_length:
            raise DecodeError(f"the empty-cycle marker (DELETED) has total_length "
                              f"{snap.total_length}: a DELETED snapshot must have "
                              "total_length 0", offset=body + 36,
                              field=f"{where}.total_length")
    elif flags & _DELETED:
        raise DecodeError(f"DELETED is only valid in the empty-cycle marker (cycle_count 0), "
                          f"not with cycle_count {count}", offset=offset + 1,
                          field=f"{where}.flags")
    elif snap.cycle_position >= count:
        raise DecodeError(f"cycle_position {snap.cycle_position} is not below cycle_count "
                          f"{count}", offset=body + 12, field=f"{where}.cycle_position")
    elif flags & _LAST and snap.cycle_position != count - 1:
        raise DecodeError(f"LAST is set but cycle_position {snap.cycle_position} is not "
                          f"cycle_count - 1 ({count - 1})", offset=offset + 1,
                          field=f"{where}.flags")
    if next_seq > _MAX_SEQ:
        raise _bound_overflow(next_seq, "as_of_seq")
    if snap.as_of_seq > next_seq:
        raise DecodeError(f"snapshot as_of_seq {snap.as_of_seq} is ahead of the stream "
                          f"({next_seq})", offset=body + 28, field=f"{where}.as_of_seq")
    if snap.fragment_offset + len(snap.payload) > snap.total_length:
        raise DecodeError(f"fragment [{snap.fragment_offset}, +{len(snap.payload)}) overruns "
                          f"total_length {snap.total_length}", offset=body + 40,
                          field=f"{where}.fragment_offset")


def _check_touched_length(length: int, index: int, offset: int) -> None:
    if length < _TOUCHED.size or (length - _TOUCHED.size) % _TOUCHED_ENTRY.size:
        raise DecodeError(f"touched message {index} has length {length}: it must be "
                          f"{_TOUCHED.size} plus a multiple of {_TOUCHED_ENTRY.size}",
                          offset=offset + 2, field=f"messages[{index}].length")


def _check_touched(touched: Touched, index: int, offset: int, next_seq: int) -> None:
    where = f"messages[{index}]"
    body = offset + MESSAGE_HEADER_SIZE
    if next_seq > _MAX_SEQ:
        raise _bound_overflow(next_seq, "end_seq")
    if not touched.first_seq <= touched.end_seq <= next_seq:
        raise DecodeError(f"touched range [{touched.first_seq}, {touched.end_seq}) is reversed "
                          f"or ahead of the stream ({next_seq})", offset=body + 8,
                          field=f"{where}.end_seq")
    previous = -1
    for position, (leaf_id, leaf_seq) in enumerate(touched.entries):
        if leaf_id <= previous or leaf_seq == 0:
            raise DecodeError(f"touched entry {position} (leaf {leaf_id}, leaf_seq {leaf_seq}) "
                              "breaks ascending leaf ids or has leaf_seq 0",
                              offset=body + _TOUCHED.size + position * _TOUCHED_ENTRY.size,
                              field=f"{where}.entries")
        previous = leaf_id


# --------------------------------------------------------------------------- encoding


@functools.lru_cache(maxsize=512)
def _touched_entries(count: int) -> struct.Struct:
    """The layout of ``count`` TOUCHED entries, packed in one call."""
    return struct.Struct("<" + _TOUCHED_ENTRY.format.lstrip("<") * count)


class DatagramBuilder:
    """Packs messages into one preallocated datagram buffer (fast path).

    Usage: :meth:`start` with the sequence number the next delta will get, ``add_*`` until
    one returns False (full), then :meth:`finish`. The returned memoryview stays valid
    until the next :meth:`start`.
    """

    def __init__(self, stream_id: int, session_id: int,
                 max_size: int = wire.DEFAULT_DATAGRAM_SIZE) -> None:
        if not HEADER_SIZE + SNAPSHOT_OVERHEAD + 1 <= max_size <= wire.MAX_DATAGRAM_SIZE:
            raise EncodeError(f"max_size {max_size} must be between "
                              f"{HEADER_SIZE + SNAPSHOT_OVERHEAD + 1} and "
                              f"{wire.MAX_DATAGRAM_SIZE}")
        _check_uint("stream_id", stream_id, 32)
        _check_uint("session_id", session_id, 64)
        if session_id == 0:
            raise EncodeError("session_id must not be 0")
        self.stream_id = stream_id
        self.session_id = session_id
        self.max_size = max_size
        self._buffer = bytearray(max_size)
        self._view = memoryview(self._buffer)
        self._offset = HEADER_SIZE
        self._count = 0
        self._sequence = 0
        self._deltas = 0
        self.delta_bytes = 0  # bytes the deltas of this datagram take (headers included)

    @property
    def count(self) -> int:
        """Messages added since :meth:`start`."""
        return self._count

    @property
    def delta_count(self) -> int:
        """Deltas added since :meth:`start` (each consumed one sequence number)."""
        return self._deltas

    @property
    def room(self) -> int:
        """Bytes still free for messages (headers included)."""
        return self.max_size - self._offset

    def start(self, sequence: int) -> None:
        """Begin a datagram whose first delta (if any) has stream sequence ``sequence``."""
        self._offset = HEADER_SIZE
        self._count = 0
        self._deltas = 0
        self.delta_bytes = 0
        self._sequence = sequence

    def add_delta(self, leaf_id: int, leaf_seq: int, flags: int,
                  payload: bytes | bytearray | memoryview) -> bool:
        """Append a delta; False if it does not fit (nothing written)."""
        offset = self._offset
        size = len(payload)
        stop = offset + DELTA_OVERHEAD + size
        if stop > self.max_size:
            return self._too_big(f"a delta payload of {size} bytes")
        if leaf_seq == 0 or flags & 3 == 3 or (flags & 2 and size):
            raise EncodeError(f"invalid delta (leaf_seq={leaf_seq}, flags={flags}, payload "
                              f"{size} bytes): leaf_seq must be >= 1, CREATE and DELETE are "
                              "exclusive and a DELETE has no payload")
        try:
            _DELTA_WITH_HEADER.pack_into(self._buffer, offset, 1, flags, 12 + size, leaf_id,
                                         leaf_seq)
        except struct.error as exc:
            raise EncodeError(f"delta not representable (leaf_id={leaf_id}, "
                              f"leaf_seq={leaf_seq}, flags={flags}): {exc}") from None
        self._view[offset + DELTA_OVERHEAD : stop] = payload
        self._offset = stop
        self._count += 1
        self._deltas += 1
        self.delta_bytes += stop - offset
        return True

    def add_queued_deltas(self, queue: deque[Any]) -> None:
        """Append the deltas at the head of ``queue`` while they fit, popping each one
        appended: every leading item that is a ``(leaf_id, leaf_seq, flags, payload)``
        tuple, up to the first other item or the first delta that does not fit.

        The publisher's fast path: one call per datagram instead of one per delta, with
        the same checks as :meth:`add_delta` (through which any delta that breaks a rule
        goes, so that it raises the same :class:`EncodeError`).
        """
        buffer, view, limit = self._buffer, self._view, self.max_size
        pack_into = _DELTA_WITH_HEADER.pack_into
        offset = start = self._offset
        added = 0
        popleft = queue.popleft
        while queue:
            item = queue[0]
            if type(item) is not tuple:
                break
            leaf_id, leaf_seq, flags, payload = item
            size = len(payload)
            stop = offset + DELTA_OVERHEAD + size
            if stop > limit or not leaf_seq or flags & 3 == 3 or (flags & 2 and size):
                # Full, or a delta that breaks a rule: add_delta says which (and raises
                # for the latter, or for one too large for any datagram).
                self._offset, self._count = offset, self._count + added
                self._deltas += added
                self.delta_bytes += offset - start
                if self.add_delta(*item):
                    popleft()
                    offset = start = self._offset
                    added = 0
                    continue
                return
            try:
                pack_into(buffer, offset, 1, flags, 12 + size, leaf_id, leaf_seq)
            except struct.error:
                self._offset, self._count = offset, self._count + added
                self._deltas += added
                self.delta_bytes += offset - start
                self.add_delta(*item)  # raises the EncodeError saying what is wrong
                raise  # not reached: add_delta packs the same values
            view[offset + DELTA_OVERHEAD : stop] = payload
            offset = stop
            added += 1
            popleft()
        self._offset, self._count = offset, self._count + added
        self._deltas += added
        self.delta_bytes += offset - start

    def add_snapshot(self, snap: Snapshot) -> bool:
        """Append a snapshot (fragment); False if it does not fit (nothing written)."""
        offset = self._offset
        size = len(snap.payload)
        stop = offset + SNAPSHOT_OVERHEAD + size
        if stop > self.max_size:
            return self._too_big(f"a snapshot fragment of {size} bytes")
        try:  # the receiver's rules, so that a builder never emits a datagram they drop
            _check_snapshot(snap, self._count, offset, self._sequence + self._deltas)
        except DecodeError as exc:
            raise EncodeError(f"invalid snapshot: {exc.reason}") from None
        try:
            _MESSAGE_HEADER.pack_into(self._buffer, offset, MessageKind.SNAPSHOT, snap.flags,
                                      _SNAPSHOT.size + size)
            _SNAPSHOT.pack_into(self._buffer, offset + MESSAGE_HEADER_SIZE, *snap[:9])
        except struct.error as exc:
            raise EncodeError(f"snapshot not representable ({snap[:10]}): {exc}") from None
        self._view[offset + SNAPSHOT_OVERHEAD : stop] = snap.payload
        self._offset = stop
        self._count += 1
        return True

    def add_touched(self, touched: Touched) -> bool:
        """Append a TOUCHED summary; False if it does not fit (nothing written)."""
        offset = self._offset
        length = _TOUCHED.size + len(touched.entries) * _TOUCHED_ENTRY.size
        stop = offset + MESSAGE_HEADER_SIZE + length
        if stop > self.max_size:
            return self._too_big(f"a touched summary of {len(touched.entries)} leaves")
        entries = touched.entries
        # The receiver's rules (ascending ids, no leaf_seq 0), checked in C: a summary of
        # a hundred leaves goes out every hundred deltas or so under load.
        ids = [entry[0] for entry in entries]
        if (0 in [entry[1] for entry in entries] or len(set(ids)) != len(ids)
                or sorted(ids) != ids or self._sequence + self._deltas > _MAX_SEQ or not (
                    touched.first_seq <= touched.end_seq <= self._sequence + self._deltas)):
            try:
                _check_touched(touched, self._count, offset, self._sequence + self._deltas)
            except DecodeError as exc:
                raise EncodeError(f"invalid touched summary: {exc.reason}") from None
        try:
            _MESSAGE_HEADER.pack_into(self._buffer, offset, MessageKind.TOUCHED, 0, length)
            _TOUCHED.pack_into(self._buffer, offset + MESSAGE_HEADER_SIZE, touched.first_seq,
                               touched.end_seq)
            if entries:
                _touched_entries(len(entries)).pack_into(
                    self._buffer, offset + TOUCHED_OVERHEAD, *chain.from_iterable(entries))
        except struct.error as exc:
            raise EncodeError(f"touched summary not representable: {exc}") from None
        self._offset = stop
        self._count += 1
        return True

    def add_heartbeat(self, interval_ms: int) -> bool:
        """Append a heartbeat; False if it does not fit."""
        return self._add_fixed(MessageKind.HEARTBEAT, _HEARTBEAT, (interval_ms,))

    def add_end_of_session(self) -> bool:
        """Append an end-of-session marker; False if it does not fit."""
        offset = self._offset
        if offset + MESSAGE_HEADER_SIZE > self.max_size:
            return False
        _MESSAGE_HEADER.pack_into(self._buffer, offset, MessageKind.END_OF_SESSION, 0, 0)
        self._offset = offset + MESSAGE_HEADER_SIZE
        self._count += 1
        return True

    def finish(self, send_time_ns: int) -> memoryview:
        """Write the header and return the datagram (valid until the next :meth:`start`)."""
        if self._sequence + self._deltas > _SEQUENCE_TOO_BIG:
            raise EncodeError(f"the last delta's stream sequence "
                              f"{self._sequence + self._deltas - 1} is beyond 2^64 - 1")
        try:
            _HEADER.pack_into(self._buffer, 0, wire.MAGIC, wire.VERSION, 0, self._count,
                              self.stream_id, self.session_id, self._sequence, send_time_ns)
        except struct.error as exc:
            raise EncodeError(f"header not representable (sequence={self._sequence}, "
                              f"send_time_ns={send_time_ns}): {exc}") from None
        return self._view[: self._offset]

    def _too_big(self, what: str) -> bool:
        """A message does not fit: False (the caller starts a new datagram), unless it
        would not fit even an empty one."""
        if self._count == 0:
            raise EncodeError(f"{what} cannot fit a {self.max_size}-byte datagram")
        return False

    def _add_fixed(self, kind: int, fields: struct.Struct, values: tuple[int, ...]) -> bool:
        offset = self._offset
        if offset + MESSAGE_HEADER_SIZE + fields.size > self.max_size:
            return False
        try:
            fields.pack_into(self._buffer, offset + MESSAGE_HEADER_SIZE, *values)
        except struct.error as exc:
            raise EncodeError(f"{MessageKind(kind).name} not representable {values}: "
                              f"{exc}") from None
        _MESSAGE_HEADER.pack_into(self._buffer, offset, kind, 0, fields.size)
        self._offset = offset + MESSAGE_HEADER_SIZE + fields.size
        self._count += 1
        return True


def restamped(datagram: bytes | bytearray | memoryview, send_time_ns: int) -> bytes:
    """A copy of an encoded datagram with another header ``send_time_ns``.

    Used for the repeated copies of END_OF_SESSION: receivers treat byte-identical
    datagrams as one (a replay or a network duplicate), so each copy carries its own time.
    """
    copy = bytearray(datagram)
    fields = list(_HEADER.unpack_from(copy, 0))
    fields[-1] = send_time_ns
    _HEADER.pack_into(copy, 0, *fields)
    return bytes(copy)


def encode_datagram(datagram: Decoded, max_size: int = wire.MAX_DATAGRAM_SIZE) -> bytes:
    """Encode decoded values again with the fast path (the inverse of :func:`decode_datagram`).

    Deltas' ``seq`` fields are implicit on the wire and ignored. Raises
    :class:`EncodeError` for what :class:`DatagramBuilder` does not write: header flags,
    an auth trailer, unknown message kinds, or more than fits ``max_size``.
    """
    if datagram.version != wire.VERSION or datagram.flags or datagram.auth is not None:
        raise EncodeError("the fast path writes version 1 datagrams without header flags "
                          "or auth trailer")
    builder = DatagramBuilder(datagram.stream_id, datagram.session_id, max_size)
    builder.start(datagram.sequence)
    for msg in datagram.messages:
        if isinstance(msg, Delta):
            ok = builder.add_delta(msg.leaf_id, msg.leaf_seq, msg.flags, msg.payload)
        elif isinstance(msg, Snapshot):
            ok = builder.add_snapshot(msg)
        elif isinstance(msg, Heartbeat):
            ok = builder.add_heartbeat(msg.interval_ms)
        elif isinstance(msg, EndOfSession):
            ok = builder.add_end_of_session()
        elif isinstance(msg, Touched):
            ok = builder.add_touched(msg)
        else:
            raise EncodeError(f"the fast path does not write unknown message kind {msg.kind}")
        if not ok:
            raise EncodeError(f"the messages do not fit a {max_size}-byte datagram")
    return bytes(builder.finish(datagram.send_time_ns))


def _check_uint(name: str, value: int, bits: int) -> None:
    if not 0 <= value < 1 << bits:
        raise EncodeError(f"{name}={value} is outside the u{bits} range")


def encode_with_construct(datagram: Decoded) -> bytes:
    """Build a datagram from decoded values with the construct definitions (slow path).

    Deltas' ``seq`` fields are implicit on the wire and ignored here. Raises
    :class:`EncodeError` for values the format cannot represent.
    """
    messages: list[dict[str, Any]] = []
    for msg in datagram.messages:
        if isinstance(msg, Delta):
            body: Any = {"leaf_id": msg.leaf_id, "leaf_seq": msg.leaf_seq,
                         "payload": bytes(msg.payload)}
            messages.append(_message(MessageKind.DELTA, msg.flags, body,
                                     _DELTA.size + len(msg.payload)))
        elif isinstance(msg, Snapshot):
            body = dict(zip(Snapshot._fields[:9], msg[:9], strict=True))
            body["payload"] = bytes(msg.payload)
            messages.append(_message(MessageKind.SNAPSHOT, msg.flags, body,
                                     _SNAPSHOT.size + len(msg.payload)))
        elif isinstance(msg, Heartbeat):
            messages.append(_message(MessageKind.HEARTBEAT, 0, {"interval_ms": msg.interval_ms},
                                     _HEARTBEAT.size))
        elif isinstance(msg, EndOfSession):
            messages.append(_message(MessageKind.END_OF_SESSION, 0, {}, 0))
        elif isinstance(msg, Touched):
            entries = [{"leaf_id": leaf_id, "leaf_seq": leaf_seq}
                       for leaf_id, leaf_seq in msg.entries]
            messages.append(_message(MessageKind.TOUCHED, 0,
                                     {"first_seq": msg.first_seq, "end_seq": msg.end_seq,
                                      "entries": entries},
                                     _TOUCHED.size + len(entries) * _TOUCHED_ENTRY.size))
        else:
            messages.append(_message(msg.kind, msg.flags, bytes(msg.body), len(msg.body)))
    value = {
        "header": {
            "version": datagram.version, "flags": datagram.flags,
            "message_count": len(messages), "stream_id": datagram.stream_id,
            "session_id": datagram.session_id, "sequence": datagram.sequence,
            "send_time_ns": datagram.send_time_ns,
        },
        "messages": messages,
        "auth": ({"key_id": datagram.auth.key_id, "tag": datagram.auth.tag}
                 if datagram.auth else None),
    }
    try:
        data = bytes(wire.Datagram.build(value))
    except (ConstructError, struct.error, OverflowError, ValueError, TypeError) as exc:
        raise EncodeError(f"datagram not representable: {exc}") from None
    if len(data) > wire.MAX_DATAGRAM_SIZE:
        raise EncodeError(f"datagram of {len(data)} bytes exceeds the UDP maximum "
                          f"{wire.MAX_DATAGRAM_SIZE}")
    return data


def _message(kind: int, flags: int, body: Any, length: int) -> dict[str, Any]:
    if length > _MAX_BODY:
        raise EncodeError(f"message body of {length} bytes exceeds {_MAX_BODY}")
    return {"kind": kind, "flags": flags, "length": length, "body": body}


# --------------------------------------------------------------------------- describing


def comparable(value: Any) -> Any:
    """A form of decoded values that compares by content, whichever path produced them.

    Payload memoryviews become bytes and named tuples keep their type name, so a Delta
    never equals a Heartbeat that happens to hold the same numbers.
    """
    if isinstance(value, memoryview | bytearray):
        return bytes(value)
    if isinstance(value, tuple):
        return (type(value).__name__, *(comparable(item) for item in value))
    if isinstance(value, list):
        return [comparable(item) for item in value]
    return value



def describe_datagram(datagram: Decoded, *, payload_bytes: int = 16) -> str:
    """A readable multi-line description of a decoded datagram."""
    flags = _flag_names(HeaderFlag, datagram.flags)
    lines = [
        f"grapevine v{datagram.version} stream={datagram.stream_id} "
        f"session={datagram.session_id:#018x} sequence={datagram.sequence} "
        f"time_ns={datagram.send_time_ns} flags={flags} messages={len(datagram.messages)}"
    ]
    for msg in datagram.messages:
        lines.append("  " + _describe_message(msg, payload_bytes))
    if datagram.auth is not None:
        lines.append(f"  auth key_id={datagram.auth.key_id} tag={datagram.auth.tag.hex()}")
    return "\n".join(lines)


def _describe_message(msg: Message, payload_bytes: int) -> str:
    if isinstance(msg, Delta):
        return (f"DELTA seq={msg.seq} leaf={msg.leaf_id} leaf_seq={msg.leaf_seq} "
                f"flags={_flag_names(DeltaFlag, msg.flags)} "
                f"payload={_hex(msg.payload, payload_bytes)}")
    if isinstance(msg, Snapshot):
        return (f"SNAPSHOT leaf={msg.leaf_id} range_start={msg.range_start} "
                f"cycle={msg.cycle_id} position={msg.cycle_position}/{msg.cycle_count} "
                f"leaf_seq={msg.leaf_seq} as_of={msg.as_of_seq} "
                f"fragment={msg.fragment_offset}+{len(msg.payload)}/{msg.total_length} "
                f"flags={_flag_names(SnapshotFlag, msg.flags)} "
                f"payload={_hex(msg.payload, payload_bytes)}")
    if isinstance(msg, Heartbeat):
        return f"HEARTBEAT interval_ms={msg.interval_ms}"
    if isinstance(msg, EndOfSession):
        return "END_OF_SESSION"
    if isinstance(msg, Touched):
        shown = " ".join(f"{leaf_id}@{leaf_seq}" for leaf_id, leaf_seq in msg.entries[:8])
        more = f" ...(+{len(msg.entries) - 8})" if len(msg.entries) > 8 else ""
        return (f"TOUCHED seq=[{msg.first_seq}, {msg.end_seq}) leaves={len(msg.entries)}"
                f"{': ' + shown if shown else ''}{more}")
    return f"UNKNOWN kind={msg.kind} flags={msg.flags:#04x} body={_hex(msg.body, payload_bytes)}"


def _flag_names(kind: type[HeaderFlag] | type[DeltaFlag] | type[SnapshotFlag], value: int) -> str:
    names = [f.name for f in kind if value & f.value and f.name]
    rest = value & ~sum(f.value for f in kind)
    if rest:
        names.append(f"{rest:#04x}")
    return "|".join(names) or "0"


def _hex(data: Sequence[int] | memoryview | bytes, limit: int) -> str:
    raw = bytes(data)
    text = raw[:limit].hex()
    return f"{text}...({len(raw)} bytes)" if len(raw) > limit else (text or "-")
