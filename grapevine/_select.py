"""Which datagrams and messages a tool shows: the ``--stream``, ``--session``, ``--leaf``,
``--kind``, ``--seq`` and ``--time`` filters shared by ``decode``, ``listen`` and ``replay``.

Every message has a *position*: a DELTA's stream sequence (``seq``), and for any other
message the sequence the next DELTA would get at its place in the datagram (the header's
``sequence`` plus the DELTAs before it, which is also a snapshot's ``as_of_seq``). ``--seq``
selects by it, so ``--seq 100:200`` shows the deltas 100 to 200 and everything sent between
them. Ranges are inclusive and either end may be left out (``100:``, ``:200``).

Times (``--time``, ``replay --at``) are capture times: Unix seconds (``1767225600.25``), an
ISO 8601 date and time (``2026-01-01T00:00:00.25``, UTC unless it names a zone) or
``+SECONDS`` after the first packet of the capture.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import TypeVar

from .codec import Decoded, Delta, EndOfSession, Heartbeat, Message, Snapshot, Touched

__all__ = [
    "KINDS",
    "Selection",
    "TimeBound",
    "add_arguments",
    "id_argument",
    "kind_name",
    "parse_kinds",
    "parse_seq_range",
    "parse_time",
    "parse_time_range",
    "positioned",
    "time_argument",
]

# Message kind names as the tools print them and --kind takes them (lower case accepted).
KINDS = ("DELTA", "SNAPSHOT", "HEARTBEAT", "END_OF_SESSION", "TOUCHED", "UNKNOWN", "MALFORMED")
_KIND_OF: dict[type, str] = {Delta: "DELTA", Snapshot: "SNAPSHOT", Heartbeat: "HEARTBEAT",
                             EndOfSession: "END_OF_SESSION", Touched: "TOUCHED"}
_U64 = (1 << 64) - 1
_T = TypeVar("_T")


def kind_name(message: Message) -> str:
    """``DELTA``, ``SNAPSHOT``, ``HEARTBEAT``, ``END_OF_SESSION``, ``TOUCHED`` or ``UNKNOWN``."""
    return _KIND_OF.get(type(message), "UNKNOWN")


def positioned(datagram: Decoded) -> Iterator[tuple[int, int, Message]]:
    """``(index, position, message)`` for each message of ``datagram`` (positions above)."""
    position = datagram.sequence
    for index, message in enumerate(datagram.messages):
        if type(message) is Delta:
            yield index, message.seq, message
            position = message.seq + 1
        else:
            yield index, position, message


@dataclass(frozen=True)
class TimeBound:
    """A time given on the command line: absolute, or relative to a capture's first packet."""

    ns: int
    relative: bool = False

    def resolve(self, first_ns: int | None) -> int | None:
        """Unix nanoseconds; None for a relative bound when the capture has no time yet."""
        if not self.relative:
            return self.ns
        return None if first_ns is None else first_ns + self.ns


def parse_time(text: str) -> TimeBound:
    """``+SECONDS``, Unix seconds or an ISO 8601 date-time; ValueError otherwise."""
    text = text.strip()
    if text.startswith("+"):
        return TimeBound(_seconds_to_ns(text[1:]), relative=True)
    try:
        return TimeBound(_seconds_to_ns(text))
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise ValueError(f"{text!r} is not a time: give Unix seconds, an ISO 8601 date and "
                         "time, or +SECONDS after the first packet") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    # timedelta keeps microseconds exactly; float seconds would not.
    return TimeBound((delta.days * 86_400 + delta.seconds) * 1_000_000_000
                     + delta.microseconds * 1_000)


def _seconds_to_ns(text: str) -> int:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a number of seconds") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"{text!r} is not a number of seconds")
    return int(value * 1_000_000_000)


def parse_time_range(text: str) -> tuple[TimeBound | None, TimeBound | None]:
    """``FROM:TO`` of :func:`parse_time` values, either end optional.

    ISO times contain colons themselves: the split is the one colon where both sides parse.
    """
    candidates = []
    for at, char in enumerate(text):
        if char != ":":
            continue
        left, right = text[:at], text[at + 1 :]
        try:
            bounds = (parse_time(left) if left else None, parse_time(right) if right else None)
        except ValueError:
            continue
        candidates.append(bounds)
    if len(candidates) != 1:
        what = "no" if not candidates else "more than one"
        raise ValueError(f"{text!r}: {what} way to read FROM:TO (each a time: Unix seconds, "
                         "ISO 8601, or +SECONDS after the first packet; either may be empty)")
    return candidates[0]


def parse_seq_range(text: str) -> tuple[int, int]:
    """``FROM:TO`` (inclusive, either end optional) or a single sequence number."""
    left, colon, right = text.partition(":")
    try:
        low = int(left, 0) if left.strip() else 0
        high = int(right, 0) if right.strip() else _U64
        if not colon:
            high = low
    except ValueError:
        raise ValueError(f"{text!r} is not FROM:TO of sequence numbers") from None
    if low < 0 or high < low:
        raise ValueError(f"{text!r}: need 0 <= FROM <= TO")
    return low, high


def parse_kinds(text: str) -> frozenset[str]:
    """Comma-separated kind names (any case; ``END`` for END_OF_SESSION)."""
    kinds = set()
    for word in text.split(","):
        name = word.strip().upper().replace("-", "_")
        if name == "END":
            name = "END_OF_SESSION"
        if name not in KINDS:
            raise ValueError(f"unknown kind {word!r}: choose from {', '.join(KINDS).lower()}")
        kinds.add(name)
    return frozenset(kinds)


def _int(text: str) -> int:
    return int(text, 0)  # decimal, or 0x... as the tools print session ids


def _argtype(parse: Callable[[str], _T]) -> Callable[[str], _T]:
    """``parse`` as an argparse type: its ValueError becomes a usage error, not a crash."""
    def convert(text: str) -> _T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def id_argument(text: str) -> int:
    """An argparse type: an id in decimal or ``0x`` hex."""
    return _argtype(_int)(text)


def time_argument(text: str) -> TimeBound:
    """An argparse type: one time (see :func:`parse_time`)."""
    return _argtype(parse_time)(text)


def add_arguments(parser: argparse.ArgumentParser, *, times: bool = True) -> None:
    """Register the filters on ``parser`` (``--time`` only where there are capture times)."""
    group = parser.add_argument_group("filters (all must match)")
    group.add_argument("--stream", type=id_argument, default=None,
                       metavar="ID", help="only datagrams of this stream_id")
    group.add_argument("--session", type=id_argument, default=None,
                       metavar="ID", help="only datagrams of this session_id (decimal or 0x hex)")
    group.add_argument("--leaf", type=id_argument, default=None, metavar="ID",
                       help="only messages about this leaf (DELTA, SNAPSHOT, a TOUCHED naming "
                            "it)")
    group.add_argument("--kind", type=_argtype(parse_kinds), action="append",
                       default=None, metavar="KINDS",
                       help="only these message kinds, comma-separated: "
                            + ", ".join(KINDS).lower())
    group.add_argument("--seq", type=_argtype(parse_seq_range),
                       default=None, metavar="FROM:TO",
                       help="only messages at these stream positions (a DELTA's seq, else the "
                            "next DELTA's), inclusive")
    if times:
        group.add_argument("--time", type=_argtype(parse_time_range),
                           default=None, metavar="FROM:TO",
                           help="only packets captured in this interval, inclusive (Unix "
                                "seconds, ISO 8601, or +SECONDS after the first packet)")


@dataclass(frozen=True)
class Selection:
    """The filters of one run. ``time`` bounds are resolved per capture (relative ones)."""

    stream: int | None = None
    session: int | None = None
    leaf: int | None = None
    kinds: frozenset[str] | None = None
    seq: tuple[int, int] | None = None
    time: tuple[TimeBound | None, TimeBound | None] | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Selection:
        kinds = None
        if args.kind:
            kinds = frozenset().union(*args.kind)
        return cls(args.stream, args.session, args.leaf, kinds, args.seq,
                   getattr(args, "time", None))

    @property
    def filters_messages(self) -> bool:
        """True if some messages of a datagram may be shown and others not."""
        return self.leaf is not None or self.kinds is not None or self.seq is not None

    def time_passes(self, time_ns: int | None, first_ns: int | None) -> bool:
        """Whether a packet captured at ``time_ns`` passes ``--time`` (``first_ns``: the
        capture's first packet time, for relative bounds). Inputs without a capture time
        are not captures and pass."""
        if self.time is None or time_ns is None:
            return True
        low, high = (None if bound is None else bound.resolve(first_ns) for bound in self.time)
        return (low is None or time_ns >= low) and (high is None or time_ns <= high)

    def datagram_passes(self, datagram: Decoded) -> bool:
        return ((self.stream is None or datagram.stream_id == self.stream)
                and (self.session is None or datagram.session_id == self.session))

    def malformed_passes(self, stream_id: int | None, session_id: int | None) -> bool:
        """A malformed datagram: shown unless ``--kind`` leaves MALFORMED out or its header
        (when readable) names another stream or session. Leaf and sequence filters cannot
        judge it, so they let it through: a broken datagram is what one is looking for."""
        if self.kinds is not None and "MALFORMED" not in self.kinds:
            return False
        if self.stream is not None and stream_id is not None and stream_id != self.stream:
            return False
        return self.session is None or session_id is None or session_id == self.session

    def messages(self, datagram: Decoded) -> list[tuple[int, int, Message]]:
        """The datagram's ``(index, position, message)`` that pass the message filters."""
        if not self.filters_messages:
            return list(positioned(datagram))
        return [item for item in positioned(datagram) if self._message_passes(*item)]

    def _message_passes(self, _index: int, position: int, message: Message) -> bool:
        if self.kinds is not None and kind_name(message) not in self.kinds:
            return False
        if self.seq is not None and not self.seq[0] <= position <= self.seq[1]:
            return False
        if self.leaf is not None:
            if type(message) is Delta or type(message) is Snapshot:
                return message.leaf_id == self.leaf
            if type(message) is Touched:
                return any(leaf_id == self.leaf for leaf_id, _ in message.entries)
            return False
        return True
