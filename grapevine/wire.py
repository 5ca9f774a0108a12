"""The Grapevine v1 wire format: the single definition every other layer derives from.

protocol/SPEC.md describes these structures in prose; the vectors in protocol/vectors/ are
built from them; :mod:`grapevine.codec` derives its fast ``struct`` formats from them with
:func:`struct_format` (nothing is copied by hand). Field names match SPEC.md exactly.
All integers are little-endian.
"""

from __future__ import annotations

import enum
from typing import Any

from construct import (
    Array,
    Bytes,
    Const,
    FixedSized,
    GreedyBytes,
    GreedyRange,
    If,
    Int8ul,
    Int16ul,
    Int32ul,
    Int64ul,
    Struct,
    Switch,
    Terminated,
    this,
)

__all__ = [
    "AUTH_TRAILER_SIZE",
    "AuthTrailer",
    "Datagram",
    "DeltaFields",
    "DeltaFlag",
    "EndOfSessionFields",
    "HeaderFlag",
    "Header",
    "HeartbeatFields",
    "TouchedEntry",
    "TouchedFields",
    "MAGIC",
    "LINK_MAGIC",
    "RETRANSMIT_MAGIC",
    "RepeaterAddress",
    "RepeaterFrameHeader",
    "RepeaterFrameKind",
    "RepeaterHello",
    "RetransmitKind",
    "RetransmitPacket",
    "RetransmitFields",
    "MAX_DATAGRAM_SIZE",
    "DEFAULT_DATAGRAM_SIZE",
    "MAX_LEAF_ID",
    "Message",
    "MessageHeader",
    "MessageKind",
    "SnapshotFields",
    "SnapshotFlag",
    "VERSION",
    "struct_format",
]

MAGIC = b"GRPV"
VERSION = 1
# Largest UDP payload over IPv4 (65535 - 20 IP - 8 UDP); receivers accept anything up to it.
MAX_DATAGRAM_SIZE = 65507
# Default sender limit: fits a 1500-byte Ethernet MTU with room for IP options and tunnels.
DEFAULT_DATAGRAM_SIZE = 1400
MAX_LEAF_ID = 0xFFFF_FFFF


class MessageKind(enum.IntEnum):
    """Message kinds. Only DELTA consumes stream sequence numbers."""

    DELTA = 1
    SNAPSHOT = 2
    HEARTBEAT = 3
    END_OF_SESSION = 4
    TOUCHED = 5


class RetransmitKind(enum.IntEnum):
    """Kinds of retransmission packets (SPEC §15): unicast, never part of a stream."""

    REQUEST = 1  # receiver -> server: send me the datagrams of [first_seq, end_seq)
    UNAVAILABLE = 2  # server -> receiver: not held; it holds [available_first, available_end)


class RepeaterFrameKind(enum.IntEnum):
    """Frames on a repeater link (SPEC §16)."""

    DATAGRAM = 1  # a group's address and port, then one datagram, unchanged
    KEEPALIVE = 2  # empty: the link is idle, not dead


class HeaderFlag(enum.IntFlag):
    """Datagram header flags; other bits are reserved (sent as 0, ignored on receipt)."""

    AUTH = 0x01  # an AuthTrailer ends the datagram


class DeltaFlag(enum.IntFlag):
    """Delta message flags; other bits are reserved."""

    CREATE = 0x01  # the leaf did not exist before: apply the payload to an empty leaf
    DELETE = 0x02  # the leaf no longer exists after this delta (payload is empty)


class SnapshotFlag(enum.IntFlag):
    """Snapshot message flags; other bits are reserved."""

    DELETED = 0x01  # tombstone: the leaf does not exist as of as_of_seq (payload empty)
    LAST = 0x02  # last snapshot of its cycle: coverage extends to MAX_LEAF_ID


# fmt: off
Header = Struct(
    "magic" / Const(MAGIC),
    "version" / Int8ul,
    "flags" / Int8ul,
    "message_count" / Int16ul,
    "stream_id" / Int32ul,
    "session_id" / Int64ul,
    "sequence" / Int64ul,
    "send_time_ns" / Int64ul,
)

MessageHeader = Struct(
    "kind" / Int8ul,
    "flags" / Int8ul,
    "length" / Int16ul,          # bytes of body that follow this 4-byte message header
)

DeltaFields = Struct(
    "leaf_id" / Int32ul,
    "leaf_seq" / Int64ul,
)                                # followed by the payload: length - 12 bytes

SnapshotFields = Struct(
    "leaf_id" / Int32ul,
    "range_start" / Int32ul,     # no leaf exists with range_start <= id < leaf_id
    "cycle_id" / Int32ul,
    "cycle_position" / Int32ul,
    "cycle_count" / Int32ul,
    "leaf_seq" / Int64ul,
    "as_of_seq" / Int64ul,
    "total_length" / Int32ul,    # length of the whole leaf encoding
    "fragment_offset" / Int32ul, # where this fragment's payload starts in it
)                                # followed by the fragment payload: length - 44 bytes

HeartbeatFields = Struct(
    "interval_ms" / Int32ul,
)

EndOfSessionFields = Struct()

TouchedFields = Struct(
    "first_seq" / Int64ul,       # the summary covers DELTAs with first_seq <= seq < end_seq
    "end_seq" / Int64ul,
)                                # followed by (length - 16) / 12 entries, ascending leaf_id

TouchedEntry = Struct(
    "leaf_id" / Int32ul,         # a leaf those DELTAs changed
    "leaf_seq" / Int64ul,        # its leaf_seq after them
)

AuthTrailer = Struct(
    "key_id" / Int32ul,
    "tag" / Bytes(16),
)
# fmt: on

AUTH_TRAILER_SIZE = AuthTrailer.sizeof()

# Retransmission packets (SPEC §15) have their own magic, so that no stream receiver of any
# version can take one for stream data. ``flags`` sits at the same offset as in the stream
# header, so the same AUTH trailer (and the same signing and checking code) applies.
RETRANSMIT_MAGIC = b"GRPR"

# fmt: off
RetransmitFields = Struct(
    "magic" / Const(RETRANSMIT_MAGIC),
    "version" / Int8ul,
    "flags" / Int8ul,            # HeaderFlag: AUTH means an AuthTrailer ends the packet
    "kind" / Int8ul,             # RetransmitKind
    "reserved" / Int8ul,         # sent as 0, ignored
    "stream_id" / Int32ul,
    "session_id" / Int64ul,
    "first_seq" / Int64ul,       # the DELTAs asked for: first_seq <= seq < end_seq
    "end_seq" / Int64ul,
    "available_first" / Int64ul, # UNAVAILABLE: the server holds first <= seq < end; else 0
    "available_end" / Int64ul,
    "send_time_ns" / Int64ul,    # sender's wall clock (Unix ns), for freshness
)

# The repeater link (SPEC §16): a hello once per TCP connection, then frames.
LINK_MAGIC = b"GRPL"

# fmt: off
RepeaterHello = Struct(
    "magic" / Const(LINK_MAGIC),
    "version" / Int8ul,
    "flags" / Int8ul,            # 0, ignored
    "reserved" / Int16ul,        # 0, ignored
)

RepeaterFrameHeader = Struct(
    "kind" / Int8ul,             # RepeaterFrameKind
    "flags" / Int8ul,            # 0, ignored
    "length" / Int16ul,          # bytes of body that follow
)

RepeaterAddress = Struct(        # a DATAGRAM frame's body starts with where it goes
    "group" / Bytes(4),          # IPv4 address, network byte order
    "port" / Int16ul,
)
# fmt: on

RetransmitPacket = Struct(
    "packet" / RetransmitFields,
    "auth" / If(this.packet.flags & int(HeaderFlag.AUTH), AuthTrailer),
    Terminated,
)
# fmt: on

# Keyed by plain ints (not enum members) so that construct's .compile() can emit them.
_BODIES = {
    int(MessageKind.DELTA): Struct(*DeltaFields.subcons, "payload" / GreedyBytes),
    int(MessageKind.SNAPSHOT): Struct(*SnapshotFields.subcons, "payload" / GreedyBytes),
    int(MessageKind.HEARTBEAT): HeartbeatFields,
    int(MessageKind.END_OF_SESSION): EndOfSessionFields,
    int(MessageKind.TOUCHED): Struct(*TouchedFields.subcons,
                                     "entries" / GreedyRange(TouchedEntry)),
}

Message = Struct(
    *MessageHeader.subcons,
    "body" / FixedSized(this.length, Switch(this.kind, _BODIES, default=GreedyBytes)),
)

# A whole datagram, for tools, vectors and validation (the hot path uses grapevine.codec).
Datagram = Struct(
    "header" / Header,
    "messages" / Array(this.header.message_count, Message),
    "auth" / If(this.header.flags & int(HeaderFlag.AUTH), AuthTrailer),
    Terminated,
)


def struct_format(definition: Any) -> str:
    """Derive a :mod:`struct` format string (little-endian) from a flat construct Struct.

    Supports the field types the fixed parts of Grapevine's messages use: integer
    FormatFields, ``Const`` byte strings and fixed ``Bytes``.
    """
    parts = ["<"]
    for sub in definition.subcons:
        inner = getattr(sub, "subcon", sub)
        fmtstr = getattr(inner, "fmtstr", None)
        if fmtstr is not None:
            parts.append(fmtstr.lstrip("<>=!"))
            continue
        value = getattr(inner, "value", None)  # Const
        if isinstance(value, bytes):
            parts.append(f"{len(value)}s")
            continue
        length = getattr(inner, "length", None)  # Bytes(n)
        if isinstance(length, int):
            parts.append(f"{length}s")
            continue
        raise TypeError(f"cannot derive a struct format for field {sub.name!r}")
    return "".join(parts)
