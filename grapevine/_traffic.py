"""Traffic accounting for ``decode --summary`` and ``grapevine stats``: what a stream sent,
per stream and session, judged from the datagrams alone (no replica is kept).

* **gaps** are holes in the datagram sequence: DELTA sequence numbers below the highest
  position seen (a datagram's ``sequence`` plus its DELTAs) that no datagram carried, counted
  from the first position heard. Datagrams that arrive late fill them again, so the holes
  are those still open;
* **rates** are per second of capture (or receive) time;
* **cycle** is the snapshot cycle's progress (``cycle_position`` of ``cycle_count``), the
  cycles completed and the period between the starts of the last two (how long a repair or
  a late join waits at most);
* **latency** is capture (receive) time minus the publisher's ``send_time_ns``: meaningful
  on one host or with synchronised clocks; its rise over the least seen is the lag.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ._errors import DecodeError
from ._select import kind_name
from .codec import Decoded, Delta, Heartbeat, Snapshot
from .wire import SnapshotFlag

__all__ = ["SessionTraffic", "Traffic", "render_report"]

_LAST = int(SnapshotFlag.LAST)
_HOLES_SHOWN = 20
_MALFORMED_SHOWN = 20


@dataclass
class SessionTraffic:
    """What one (stream_id, session_id) sent."""

    stream_id: int
    session_id: int
    datagrams: int = 0
    bytes: int = 0
    messages: Counter[str] = field(default_factory=Counter)
    first_ns: int | None = None
    last_ns: int | None = None
    start: int | None = None  # the lowest position heard
    end: int = 0  # one past the highest position heard
    duplicate_deltas: int = 0
    late_datagrams: int = 0  # carried DELTAs below the highest position: filled a hole
    heartbeat_ms: int | None = None
    ended: bool = False
    cycle_id: int | None = None
    cycle_position: int = 0
    cycle_count: int = 0
    cycles_completed: int = 0
    cycle_period_s: float | None = None  # between the starts of the last two cycles
    latency_ns: int | None = None
    min_latency_ns: int | None = None
    max_latency_ns: int | None = None
    _seen: list[list[int]] = field(default_factory=list)  # disjoint [from, to) of DELTAs
    _cycle_started_ns: int | None = None  # when the current cycle's position 0 was heard
    _cycle_done: bool = False  # the current cycle's LAST snapshot was heard

    def add(self, datagram: Decoded, size: int, time_ns: int | None) -> None:
        self.datagrams += 1
        self.bytes += size
        if time_ns is not None:
            if self.first_ns is None:
                self.first_ns = time_ns
            self.last_ns = time_ns
            if datagram.send_time_ns:
                latency = time_ns - datagram.send_time_ns
                self.latency_ns = latency
                if self.min_latency_ns is None or latency < self.min_latency_ns:
                    self.min_latency_ns = latency
                if self.max_latency_ns is None or latency > self.max_latency_ns:
                    self.max_latency_ns = latency
        deltas = 0
        for message in datagram.messages:
            kind = kind_name(message)
            self.messages[kind] += 1
            if type(message) is Delta:
                deltas += 1
            elif type(message) is Snapshot:
                self._on_snapshot(message, time_ns)
            elif type(message) is Heartbeat:
                self.heartbeat_ms = message.interval_ms
            elif kind == "END_OF_SESSION":
                self.ended = True
        sequence = datagram.sequence
        if self.start is None or sequence < self.start:
            self.start = sequence
        stop = sequence + deltas
        if deltas:
            if sequence < self.end:
                fresh = self._uncovered(sequence, stop)
                self.duplicate_deltas += deltas - fresh
                if fresh:
                    self.late_datagrams += 1
            self._cover(sequence, stop)
        self.end = max(self.end, stop)

    def _on_snapshot(self, snap: Snapshot, time_ns: int | None) -> None:
        cycle_id = snap.cycle_id
        if self.cycle_id is not None and cycle_id != self.cycle_id:
            if (self.cycle_id - cycle_id) & 0xFFFF_FFFF < 1 << 31:
                return  # an older cycle's snapshot (a late or duplicated datagram)
            if (snap.cycle_position == 0 and time_ns is not None
                    and self._cycle_started_ns is not None
                    and cycle_id == (self.cycle_id + 1) & 0xFFFF_FFFF):
                self.cycle_period_s = (time_ns - self._cycle_started_ns) / 1e9
        if cycle_id != self.cycle_id:
            self.cycle_id = cycle_id
            self._cycle_started_ns = time_ns if snap.cycle_position == 0 else None
            self._cycle_done = False
        self.cycle_position = snap.cycle_position
        self.cycle_count = snap.cycle_count
        whole = snap.fragment_offset + len(snap.payload) >= snap.total_length
        if snap.flags & _LAST and whole and not self._cycle_done:
            self.cycles_completed += 1
            self._cycle_done = True

    def _uncovered(self, low: int, high: int) -> int:
        """How many of the DELTA sequences [low, high) no datagram has carried yet."""
        covered = 0
        seen = self._seen
        at = bisect.bisect_right(seen, [low, 1 << 65]) - 1
        for start, stop in seen[max(at, 0):]:
            if start >= high:
                break
            covered += max(0, min(stop, high) - max(start, low))
        return (high - low) - covered

    def _cover(self, low: int, high: int) -> None:
        seen = self._seen
        at = bisect.bisect_left(seen, [low, low])
        if at and seen[at - 1][1] >= low:  # touches or overlaps the range before
            at -= 1
            low = seen[at][0]
        stop = at
        while stop < len(seen) and seen[stop][0] <= high:
            high = max(high, seen[stop][1])
            stop += 1
        seen[at:stop] = [[low, high]]

    def holes(self) -> list[tuple[int, int]]:
        """The open holes: ``[from, to)`` DELTA sequences between first and highest heard."""
        if self.start is None:
            return []
        holes = []
        at = self.start
        for low, high in self._seen:
            if high <= at:
                continue
            if low > at:
                holes.append((at, low))
            at = max(at, high)
        if self.end > at:
            holes.append((at, self.end))
        return holes

    def report(self) -> dict[str, Any]:
        holes = self.holes()
        seconds = (None if self.first_ns is None or self.last_ns is None
                   else (self.last_ns - self.first_ns) / 1e9)
        deltas = self.messages["DELTA"]
        return {
            "stream_id": self.stream_id,
            "session_id": self.session_id,
            "datagrams": self.datagrams,
            "bytes": self.bytes,
            "messages": dict(sorted(self.messages.items())),
            "first_sequence": self.start,
            "next_sequence": self.end,
            "gaps": len(holes),
            "missing_deltas": sum(high - low for low, high in holes),
            "holes": [list(hole) for hole in holes[:_HOLES_SHOWN]],
            "duplicate_deltas": self.duplicate_deltas,
            "late_datagrams": self.late_datagrams,
            "first_time_ns": self.first_ns,
            "last_time_ns": self.last_ns,
            "duration_s": seconds,
            "datagrams_per_s": _rate(self.datagrams, seconds),
            "deltas_per_s": _rate(deltas, seconds),
            "bytes_per_s": _rate(self.bytes, seconds),
            "heartbeat_ms": self.heartbeat_ms,
            "ended": self.ended,
            "cycle": (None if self.cycle_id is None else {
                "cycle_id": self.cycle_id, "cycle_position": self.cycle_position,
                "cycle_count": self.cycle_count, "completed": self.cycles_completed,
                "period_s": self.cycle_period_s}),
            "latency_ms": (None if self.latency_ns is None else {
                "last": self.latency_ns / 1e6, "min": _ms(self.min_latency_ns),
                "max": _ms(self.max_latency_ns),
                "lag": (self.latency_ns - (self.min_latency_ns or 0)) / 1e6}),
        }


def _ms(value: int | None) -> float | None:
    return None if value is None else value / 1e6


def _rate(count: int, seconds: float | None) -> float | None:
    return None if not seconds or seconds <= 0 else count / seconds


@dataclass
class Traffic:
    """Everything heard: per-session traffic, malformed datagrams, totals."""

    datagrams: int = 0
    malformed: int = 0
    bytes: int = 0
    first_ns: int | None = None
    last_ns: int | None = None
    sessions: dict[tuple[int, int], SessionTraffic] = field(default_factory=dict)
    malformed_examples: list[dict[str, Any]] = field(default_factory=list)

    def _heard(self, size: int, time_ns: int | None) -> None:
        self.datagrams += 1
        self.bytes += size
        if time_ns is not None:
            if self.first_ns is None or time_ns < self.first_ns:
                self.first_ns = time_ns
            if self.last_ns is None or time_ns > self.last_ns:
                self.last_ns = time_ns

    def add(self, datagram: Decoded, size: int, time_ns: int | None) -> None:
        """Count a datagram that decoded."""
        self._heard(size, time_ns)
        key = (datagram.stream_id, datagram.session_id)
        session = self.sessions.get(key)
        if session is None:
            session = self.sessions[key] = SessionTraffic(*key)
        session.add(datagram, size, time_ns)

    def add_malformed(self, error: DecodeError, size: int, time_ns: int | None,
                      where: str) -> None:
        """Count a datagram that did not decode (the first few are kept as examples)."""
        self._heard(size, time_ns)
        self.malformed += 1
        if len(self.malformed_examples) < _MALFORMED_SHOWN:
            self.malformed_examples.append({"where": where, "error": error.reason,
                                            "field": error.field, "offset": error.offset})

    def report(self) -> dict[str, Any]:
        seconds = (None if self.first_ns is None or self.last_ns is None
                   else (self.last_ns - self.first_ns) / 1e9)
        messages: Counter[str] = Counter()
        for session in self.sessions.values():
            messages.update(session.messages)
        return {
            "datagrams": self.datagrams,
            "decoded": self.datagrams - self.malformed,
            "malformed": self.malformed,
            "bytes": self.bytes,
            "duration_s": seconds,
            "datagrams_per_s": _rate(self.datagrams, seconds),
            "messages": dict(sorted(messages.items())),
            "sessions": [session.report() for _, session in sorted(self.sessions.items())],
            "malformed_examples": list(self.malformed_examples),
        }


def render_report(report: dict[str, Any],
                  rates: dict[tuple[int, int], dict[str, float]] | None = None) -> list[str]:
    """The report as text lines. ``rates`` (per session, from ``grapevine stats``) replaces
    the whole-capture rates with recent ones."""
    lines = [
        f"{report['datagrams']} datagrams ({report['bytes']} bytes): {report['decoded']} "
        f"decoded, {report['malformed']} malformed"
        + (f", over {report['duration_s']:.3f} s" if report["duration_s"] else ""),
        "messages: " + (", ".join(f"{kind} {count}" for kind, count in
                                  report["messages"].items()) or "none"),
    ]
    for session in report["sessions"]:
        key = (session["stream_id"], session["session_id"])
        lines.append(f"stream {session['stream_id']} session {session['session_id']:#018x}: "
                     f"{session['datagrams']} datagrams, positions {session['first_sequence']}"
                     f"..{session['next_sequence']}"
                     + (", ENDED" if session["ended"] else ""))
        lines.append("  messages: " + ", ".join(f"{kind} {count}" for kind, count in
                                                session["messages"].items()))
        recent = (rates or {}).get(key)
        if recent is not None:
            lines.append(f"  rates (last {recent['seconds']:.1f} s): "
                         f"{recent['datagrams']:.0f} datagrams/s, {recent['deltas']:.0f} "
                         f"deltas/s, {recent['bytes'] / 1000:.1f} kB/s")
        elif session["duration_s"]:
            lines.append(f"  rates: {session['datagrams_per_s']:.1f} datagrams/s, "
                         f"{session['deltas_per_s']:.1f} deltas/s, "
                         f"{session['bytes_per_s'] / 1000:.1f} kB/s over "
                         f"{session['duration_s']:.3f} s")
        holes = ", ".join(f"[{low}, {high})" for low, high in session["holes"])
        more = " ..." if session["gaps"] > len(session["holes"]) else ""
        lines.append(f"  gaps: {session['gaps']} ({session['missing_deltas']} deltas missing)"
                     + (f": {holes}{more}" if holes else "")
                     + f"; duplicate deltas {session['duplicate_deltas']}, late datagrams "
                       f"{session['late_datagrams']}")
        cycle = session["cycle"]
        if cycle is not None:
            count = cycle["cycle_count"]
            done = f"{cycle['cycle_position'] + 1}/{count}" if count else "empty"
            last = (f", period {cycle['period_s']:.3f} s"
                    if cycle["period_s"] is not None else "")
            lines.append(f"  snapshot cycle {cycle['cycle_id']}: {done} leaves, "
                         f"{cycle['completed']} cycles completed{last}")
        latency = session["latency_ms"]
        extras = []
        if session["heartbeat_ms"] is not None:
            extras.append(f"heartbeat {session['heartbeat_ms']} ms")
        if latency is not None:
            extras.append(f"latency {latency['last']:.3f} ms (min {latency['min']:.3f}, max "
                          f"{latency['max']:.3f}), lag {latency['lag']:.3f} ms")
        if extras:
            lines.append("  " + "; ".join(extras))
    for example in report["malformed_examples"]:
        lines.append(f"malformed {example['where']}: field={example['field']} "
                     f"offset={example['offset']}: {example['error']}")
    if report["malformed"] > len(report["malformed_examples"]):
        lines.append(f"... and {report['malformed'] - len(report['malformed_examples'])} "
                     "more malformed")
    return lines
