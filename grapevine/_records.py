"""Decoded datagrams as plain JSON-ready dicts, and order-book payloads decoded for reading.

The field names are the codec's (:mod:`grapevine.codec` named tuples) so that any other
decoder of the wire format, a Wireshark dissector for one, can be compared field by field:

* per datagram: ``version``, ``datagram_flags`` (the header's ``flags``; a message has its
  own), ``stream_id``, ``session_id``, ``sequence``, ``send_time_ns``, ``message_count``,
  ``auth`` (``{"key_id", "tag"}`` or null);
* per message: ``message_index``, ``kind`` (its name: ``DELTA``, ``SNAPSHOT``,
  ``HEARTBEAT``, ``END_OF_SESSION``, ``TOUCHED``, ``UNKNOWN``), ``wire_kind`` (the kind
  byte: an UnknownMessage's ``kind`` field), then every field of the message's named tuple
  under its own name (payloads and bodies as hex, TOUCHED ``entries`` as a list of
  ``{"leaf_id", "leaf_seq"}``, none left out);
* a malformed datagram: ``kind`` ``MALFORMED``, ``error`` (the DecodeError's reason),
  ``field``, ``offset`` and the datagram as hex in ``data``.

Integers stay JSON numbers and flags stay integers.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from ._errors import DecodeError
from ._select import kind_name
from .book import BookDelta, OrderBook, OrderBookModel, decode_book
from .codec import Decoded, Delta, Message, Snapshot, Touched, UnknownMessage
from .wire import MessageKind

__all__ = [
    "BookPayloads",
    "book_fields",
    "book_text",
    "datagram_fields",
    "delta_text",
    "malformed_fields",
    "message_fields",
]

_WIRE_KIND = {"DELTA": int(MessageKind.DELTA), "SNAPSHOT": int(MessageKind.SNAPSHOT),
              "HEARTBEAT": int(MessageKind.HEARTBEAT),
              "END_OF_SESSION": int(MessageKind.END_OF_SESSION),
              "TOUCHED": int(MessageKind.TOUCHED)}


def datagram_fields(datagram: Decoded) -> dict[str, Any]:
    """The header's fields (every message of the datagram repeats them)."""
    auth = datagram.auth
    return {
        "version": datagram.version,
        "datagram_flags": datagram.flags,
        "stream_id": datagram.stream_id,
        "session_id": datagram.session_id,
        "sequence": datagram.sequence,
        "send_time_ns": datagram.send_time_ns,
        "message_count": len(datagram.messages),
        "auth": None if auth is None else {"key_id": auth.key_id, "tag": auth.tag.hex()},
    }


def message_fields(index: int, message: Message) -> dict[str, Any]:
    """One message: its index, kind, kind byte and every codec field."""
    kind = kind_name(message)
    out: dict[str, Any] = {"message_index": index, "kind": kind}
    if isinstance(message, UnknownMessage):
        out["wire_kind"] = message.kind
    else:
        out["wire_kind"] = _WIRE_KIND[kind]
    value: Any
    for name, value in zip(message._fields, message, strict=True):
        if isinstance(message, UnknownMessage) and name == "kind":
            continue  # already there as wire_kind: "kind" is the name in every record
        if isinstance(value, bytes | bytearray | memoryview):
            out[name] = bytes(value).hex()
        elif isinstance(message, Touched) and name == "entries":
            out[name] = [{"leaf_id": leaf_id, "leaf_seq": leaf_seq}
                         for leaf_id, leaf_seq in value]
        else:
            out[name] = value
    return out


def malformed_fields(error: DecodeError, data: bytes) -> dict[str, Any]:
    """A datagram that did not decode: what was wrong, where, and its bytes."""
    return {"kind": "MALFORMED", "error": error.reason, "field": error.field,
            "offset": error.offset, "data": data.hex()}


def book_fields(book: OrderBook, depth: int | None = None) -> dict[str, Any]:
    """An order book: levels best first (``depth`` per side, or all), trade state, checksum."""
    def levels(side: int) -> list[dict[str, int]]:
        shown: list[dict[str, int]] = []
        for price, qty, orders, time_ns in book.iter_levels(side):
            if depth is not None and len(shown) >= depth:
                break
            shown.append({"price_ticks": price, "quantity": qty, "orders": orders,
                          "time_ns": time_ns})
        return shown

    trade = book.last_trade
    return {
        "bids": levels(0),
        "asks": levels(1),
        "last_trade": (None if trade is None else
                       {"price_ticks": trade[0], "quantity": trade[1], "time_ns": trade[2]}),
        "traded_volume": book.traded_volume,
        "checksum": book.checksum(),
    }


def delta_text(delta: BookDelta) -> str:
    """``ADD BID 10050 x 300 t=...``: a book delta on one line."""
    return (f"{delta.op.name} {delta.side.name} {delta.price_ticks} x {delta.quantity} "
            f"t={delta.time_ns}")


def book_text(book: OrderBook) -> str:
    """A one-line summary of a book."""
    bid, ask = book.best_bid(), book.best_ask()
    best_bid = "-" if bid is None else f"{bid[0]}x{bid[1]}"
    best_ask = "-" if ask is None else f"{ask[0]}x{ask[1]}"
    bids = sum(1 for _ in book.iter_levels(0))
    asks = sum(1 for _ in book.iter_levels(1))
    return (f"book {bids} bids {asks} asks, "
            f"best {best_bid} / {best_ask}, checksum {book.checksum():#018x}")


class BookPayloads:
    """Decodes DELTA and SNAPSHOT payloads as the order-book model's (``--model book``).

    Snapshot fragments are put together again, as a subscriber does (SPEC §6.3: consecutive,
    in order): the fragment that completes a snapshot carries the decoded book. A viewer
    shows what is there, so crossed books are accepted.
    """

    _MAX_PENDING = 64  # snapshots being put together at once; the oldest is dropped
    _MAX_BYTES = 64 << 20  # largest snapshot put together

    def __init__(self) -> None:
        self._model = OrderBookModel(allow_crossed=True)
        self._pending: OrderedDict[tuple[int, ...], tuple[bytearray, int]] = OrderedDict()

    def delta(self, message: Delta) -> tuple[BookDelta | None, str | None]:
        """(the decoded delta, None), or (None, why not). A DELETE has no payload."""
        if not len(message.payload):
            return None, None
        try:
            return self._model.decode_delta(memoryview(message.payload)), None
        except DecodeError as exc:
            return None, str(exc)

    def snapshot(self, datagram: Decoded,
                 message: Snapshot) -> tuple[OrderBook | None, str | None]:
        """(the book, None) when ``message`` holds or completes a leaf encoding; (None,
        None) for an empty-cycle marker or an incomplete fragment; (None, why) on error."""
        total = message.total_length
        payload = bytes(message.payload)
        if total == 0:
            return None, None
        if message.fragment_offset == 0 and len(payload) == total:
            return self._decode(payload)
        if total > self._MAX_BYTES:
            return None, f"snapshot of {total} bytes is too large to put together"
        key = (datagram.stream_id, datagram.session_id, message.leaf_id, message.leaf_seq,
               message.as_of_seq, total)
        held = self._pending.pop(key, None)
        if message.fragment_offset == 0:
            held = (bytearray(total), 0)
        if held is None or held[1] != message.fragment_offset:
            return None, None  # a fragment without its predecessors: nothing to show
        buffer, filled = held
        end = filled + len(payload)
        buffer[filled:end] = payload
        if end >= total:
            return self._decode(bytes(buffer))
        self._pending[key] = (buffer, end)
        while len(self._pending) > self._MAX_PENDING:
            self._pending.popitem(last=False)
        return None, None

    def _decode(self, payload: bytes) -> tuple[OrderBook | None, str | None]:
        try:
            return decode_book(payload, allow_crossed=True), None
        except DecodeError as exc:
            return None, str(exc)
