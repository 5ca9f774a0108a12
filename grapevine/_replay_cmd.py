"""``grapevine replay CAPTURE --model book``: rebuild a subscriber's replica from a capture.

The capture's UDP datagrams go, in file order, through the real subscriber core (the code a
:class:`~grapevine.Subscriber` runs), with each packet's capture time as the core's clock:
gaps, repairs, restarts and sync happen as they did for a subscriber that heard exactly
what was captured. It stops at the end of the capture, at ``--at TIME`` (the last packet
captured at or before it; Unix seconds, ISO 8601 or ``+SECONDS`` after the first packet),
or at ``--seq N`` (every DELTA up to N of the followed session applied and none after:
the datagram holding DELTA N+1 is cut before it). It prints whether the replica was synced
at that point (and if not, why), then one leaf (``--leaf ID``: the order book best first to
``--depth`` levels) or every leaf's checksum (``--checksums``, the default).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Any, TextIO

from ._capture import Capture, Packet, PcapError, read_capture
from ._errors import DecodeError, EncodeError
from ._output import stop_quietly_on_broken_pipe
from ._records import book_fields
from ._select import id_argument, positioned, time_argument
from ._subscriber_core import SubscriberConfig, SubscriberCore
from .book import BookDelta, OrderBook, OrderBookModel
from .codec import Delta, Message, UnknownMessage, decode_datagram, encode_datagram

__all__ = ["add_arguments", "run"]

_DEFAULT_DEPTH = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``replay`` options on ``parser``."""
    parser.description = __doc__.split("\n\n")[1] if __doc__ else None
    parser.add_argument("capture", metavar="CAPTURE", help="a pcap or pcapng capture")
    parser.add_argument("--model", choices=["book"], required=True,
                        help="the leaf model of the stream (book: grapevine.book order books)")
    parser.add_argument("--port", type=int, default=None,
                        help="only the capture's datagrams to (or from) this UDP port")
    parser.add_argument("--stream", type=id_argument, default=0, metavar="ID",
                        help="the stream_id to follow (default 0)")
    when = parser.add_mutually_exclusive_group()
    when.add_argument("--at", type=time_argument, default=None, metavar="TIME",
                      help="stop after the last packet captured at or before TIME")
    when.add_argument("--seq", type=id_argument, default=None, metavar="N",
                      help="stop with DELTAs up to N applied and none after")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--leaf", type=id_argument, default=None, metavar="ID",
                      help="print this leaf (its order book, best levels first)")
    what.add_argument("--checksums", action="store_true",
                      help="print every leaf's checksum (the default)")
    parser.add_argument("--depth", type=int, default=_DEFAULT_DEPTH, metavar="D",
                        help=f"levels per side for --leaf (default {_DEFAULT_DEPTH})")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    """Replay and print; 1 if the capture cannot be read."""
    return stop_quietly_on_broken_pipe(lambda: _run(args, sys.stdout))


@dataclass
class _Replay:
    """How far the capture was fed."""

    fed: int = 0
    last: Packet | None = None
    stopped_at: Packet | None = None
    stop_reason: str = "end of capture"
    cut: bool = False  # the last datagram fed was cut before DELTA N+1
    error: str | None = None


def _run(args: argparse.Namespace, out: TextIO) -> int:
    if args.depth < 0:
        sys.stderr.write("error: --depth must be at least 0\n")
        return 1
    data = read_capture(args.capture)
    if data is None:
        return 1
    model = OrderBookModel()
    core: SubscriberCore[OrderBook, BookDelta] = SubscriberCore(
        model, SubscriberConfig(stream_id=args.stream))
    capture = Capture(data, port=args.port)
    replay = _feed(core, capture, args)
    if replay.error is not None:
        sys.stderr.write(f"error: cannot read {args.capture} past packet {capture.frames}: "
                         f"{replay.error}\n")
    report = _report(core, replay, capture, args)
    if args.json:
        print(json.dumps(report), file=out)
    else:
        for line in _text(report):
            print(line, file=out)
    return 1 if replay.error is not None else 0


def _feed(core: SubscriberCore[OrderBook, BookDelta], capture: Capture,
          args: argparse.Namespace) -> _Replay:
    replay = _Replay()
    now = 0.0
    try:
        for packet in capture:
            if packet.time_ns is not None:
                if args.at is not None:
                    at_ns = args.at.resolve(capture.first_ns)
                    if at_ns is not None and packet.time_ns > at_ns:
                        replay.stopped_at, replay.stop_reason = packet, "--at"
                        break
                # The core's clock must not run backwards (captures of several interfaces
                # interleave slightly out of order).
                now = max(now, packet.time_ns / 1e9)
            payload = packet.payload
            if args.seq is not None:
                cut = _cut_after(payload, args.seq, core)
                if cut is not None:
                    replay.stopped_at, replay.stop_reason = packet, "--seq"
                    if not cut:
                        break
                    payload, replay.cut = cut, True
            core.receive(payload, now)
            replay.fed += 1
            replay.last = packet
            if replay.cut:
                break
    except PcapError as exc:
        replay.error = str(exc)
    if args.at is not None:
        at_ns = args.at.resolve(capture.first_ns)
        if at_ns is not None:
            now = max(now, at_ns / 1e9)  # timers (silence) run up to the time asked for
    core.poll(now)
    return replay


def _cut_after(payload: bytes, last_seq: int,
               core: SubscriberCore[OrderBook, BookDelta]) -> bytes | None:
    """None: feed ``payload`` whole. Otherwise the datagram up to DELTA ``last_seq`` (empty:
    none of it): it holds a DELTA after ``last_seq``, or a message as of after it, in the
    session the core follows (or would follow first)."""
    try:
        datagram = decode_datagram(payload)
    except DecodeError:
        return None  # the core counts it as malformed, as a subscriber would
    if datagram.stream_id != core.config.stream_id:
        return None
    if core.session_id is not None and datagram.session_id != core.session_id:
        return None
    keep: list[Message] = []
    for _index, position, message in positioned(datagram):
        if position > last_seq + (0 if isinstance(message, Delta) else 1):
            break
        if not isinstance(message, UnknownMessage):  # skipped by receivers anyway
            keep.append(message)
    else:
        return None
    if not keep:
        return b""
    try:
        return encode_datagram(datagram._replace(messages=keep, flags=0, auth=None))
    except EncodeError:
        return b""  # cannot happen for a datagram that decoded; stop before it then


def _report(core: SubscriberCore[OrderBook, BookDelta], replay: _Replay, capture: Capture,
            args: argparse.Namespace) -> dict[str, Any]:
    stale = core.stale_leaves()
    suspect = core.suspect_leaves()
    reasons = []
    if core.session_id is None:
        reasons.append("no datagram of the stream was fed")
    else:
        if core.ended:
            reasons.append("the session ended (END_OF_SESSION)")
        if core.silent:
            reasons.append("the publisher was silent for the silence timeout")
        if not core.leaf_set_known:
            reasons.append("the leaf set is not known yet (snapshots since the start or the "
                           "last gap have not covered every leaf id)")
        if stale:
            reasons.append(f"{len(stale)} stale leaves")
        if suspect:
            reasons.append(f"{len(suspect)} suspect leaves")
    position = core.expected - 1 if core.expected is not None else None
    counters = core.stats
    report: dict[str, Any] = {
        "capture": args.capture,
        "packets": capture.frames,
        "datagrams_fed": replay.fed,
        "last_fed": _packet_fields(replay.last),
        "stopped_at": _packet_fields(replay.stopped_at),
        "stop_reason": replay.stop_reason,
        "cut_at_seq": args.seq if replay.cut else None,
        "stream_id": core.config.stream_id,
        "session_id": core.session_id,
        "position": position,
        "synced": core.synced,
        "not_synced_because": [] if core.synced else reasons,
        "stale_leaves": stale,
        "suspect_leaves": suspect,
        "counters": {name: getattr(counters, name) for name in (
            "datagrams", "malformed", "foreign_stream", "foreign_session", "deltas", "gaps",
            "missed_deltas", "repairs", "restarts", "divergences", "resyncs")},
    }
    values: dict[int, OrderBook] = core.values()
    if args.leaf is not None:
        book = values.get(args.leaf)
        report["leaf"] = {"leaf_id": args.leaf, "state": _state(core, args.leaf, stale, suspect),
                          **({} if book is None else book_fields(book, args.depth))}
    else:
        report["leaves"] = [{"leaf_id": leaf_id, "state": _state(core, leaf_id, stale, suspect),
                             "checksum": book.checksum()}
                            for leaf_id, book in sorted(values.items())]
    return report


def _state(core: SubscriberCore[OrderBook, BookDelta], leaf_id: int, stale: list[int],
           suspect: list[int]) -> str:
    if leaf_id in stale:
        return "stale"
    if leaf_id in suspect:
        return "suspect"
    return "fresh" if core.is_fresh(leaf_id) else "not held"


def _packet_fields(packet: Packet | None) -> dict[str, Any] | None:
    if packet is None:
        return None
    return {"capture_index": packet.index, "capture_time_ns": packet.time_ns,
            "time": packet.stamp()}


def _text(report: dict[str, Any]) -> list[str]:
    last, stopped = report["last_fed"], report["stopped_at"]
    lines = [f"replay of {report['capture']}: {report['datagrams_fed']} datagrams fed"
             + (f", the last packet {last['capture_index']} t={last['time']}" if last else "")]
    if report["stop_reason"] == "--seq" and report["cut_at_seq"] is not None:
        lines.append(f"stopped by --seq: packet {stopped['capture_index']} was fed up to DELTA "
                     f"{report['cut_at_seq']}")
    elif stopped is not None:
        lines.append(f"stopped by {report['stop_reason']} before packet "
                     f"{stopped['capture_index']} t={stopped['time']}")
    else:
        lines.append("stopped at the end of the capture")
    session = report["session_id"]
    lines.append(f"stream {report['stream_id']} session "
                 f"{'-' if session is None else f'{session:#018x}'}: position "
                 f"{report['position'] if report['position'] is not None else '-'}, "
                 + ("SYNCED" if report["synced"] else
                    "NOT synced: " + "; ".join(report["not_synced_because"])))
    counters = report["counters"]
    lines.append("counters: " + ", ".join(f"{name} {value}" for name, value in counters.items()))
    if report["stale_leaves"]:
        lines.append("stale leaves: " + " ".join(map(str, report["stale_leaves"])))
    if report["suspect_leaves"]:
        lines.append("suspect leaves: " + " ".join(map(str, report["suspect_leaves"])))
    if "leaf" in report:
        lines.extend(_leaf_text(report["leaf"]))
    else:
        lines.append(f"{len(report['leaves'])} leaves:")
        for leaf in report["leaves"]:
            lines.append(f"  leaf {leaf['leaf_id']}: checksum {leaf['checksum']:#018x} "
                         f"{leaf['state']}")
    return lines


def _leaf_text(leaf: dict[str, Any]) -> list[str]:
    if "bids" not in leaf:
        return [f"leaf {leaf['leaf_id']}: not held"]
    lines = [f"leaf {leaf['leaf_id']} ({leaf['state']}): checksum {leaf['checksum']:#018x}, "
             f"traded volume {leaf['traded_volume']}"
             + ("" if leaf["last_trade"] is None else
                f", last trade {leaf['last_trade']['quantity']} @ "
                f"{leaf['last_trade']['price_ticks']}")]
    lines.append(f"  {'bid qty':>10} {'orders':>6} {'bid':>10} | {'ask':<10} {'orders':>6} "
                 f"{'ask qty':>10}")
    bids, asks = leaf["bids"], leaf["asks"]
    for row in range(max(len(bids), len(asks))):
        left = (f"{bids[row]['quantity']:>10} {bids[row]['orders']:>6} "
                f"{bids[row]['price_ticks']:>10}" if row < len(bids) else " " * 28)
        right = (f"{asks[row]['price_ticks']:<10} {asks[row]['orders']:>6} "
                 f"{asks[row]['quantity']:>10}" if row < len(asks) else "")
        lines.append(f"  {left} | {right}".rstrip())
    return lines
