"""What :meth:`Subscriber.stats` and :meth:`Publisher.stats` return.

Each call returns a frozen snapshot of every counter, taken in O(1) (a copy of a few dozen
integers, whatever the number of leaves). Counters only grow; a few fields are *gauges*
(the state right now: ``stale_leaves``, ``queued_deltas``...). To watch rates, keep the
previous snapshot and ask the new one::

    before = sub.stats()
    ...
    now = sub.stats()
    print(now.rates(before)["deltas"], "deltas/s")       # counters per second
    print(now.since(before).gaps, "gaps in the interval")  # counter differences

``to_dict()`` gives a plain dict (for JSON, logs, metrics systems).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Self

__all__ = ["PublisherStats", "SubscriberStats"]

_GAUGE: dict[str, Any] = {"gauge": True}


class _Counters:
    """Shared behaviour of the two stats classes (which are frozen, slotted dataclasses)."""

    __slots__ = ()
    taken_at: float

    def to_dict(self) -> dict[str, int | float]:
        """Every field by name (``taken_at`` included)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    def since(self, earlier: Self) -> Self:
        """Counter differences from ``earlier`` to this snapshot; gauges keep this
        snapshot's value and ``taken_at`` becomes the interval in seconds."""
        values = {}
        for f in fields(self):  # type: ignore[arg-type]
            mine = getattr(self, f.name)
            if f.name == "taken_at":
                values[f.name] = mine - earlier.taken_at
            elif f.metadata.get("gauge"):
                values[f.name] = mine
            else:
                values[f.name] = mine - getattr(earlier, f.name)
        return type(self)(**values)

    def rates(self, earlier: Self) -> dict[str, float]:
        """Each counter's growth per second since ``earlier`` (gauges left out)."""
        interval = self.taken_at - earlier.taken_at
        if interval <= 0:
            raise ValueError("rates() needs an earlier snapshot (taken_at is not earlier)")
        return {f.name: (getattr(self, f.name) - getattr(earlier, f.name)) / interval
                for f in fields(self)  # type: ignore[arg-type]
                if f.name != "taken_at" and not f.metadata.get("gauge")}


@dataclass(frozen=True, slots=True)
class SubscriberStats(_Counters):
    """A subscriber's counters and gauges at one moment (:meth:`Subscriber.stats`).

    Datagram counters count every datagram read from the socket once in ``datagrams`` and
    at most once in one of the reasons it was not used (``malformed``, ``foreign_stream``,
    authentication failures...). Nothing here needs a lock to read.
    """

    taken_at: float
    """``time.monotonic()`` when the snapshot was taken (the clock of status events)."""

    # -- datagrams
    datagrams: int
    """Datagrams read from the socket (every one, used or not)."""
    malformed: int
    """Datagrams that failed to decode (SPEC §10): dropped, logged at a limited rate."""
    foreign_stream: int
    """Datagrams of another stream id on the same group and port: ignored."""
    foreign_session: int
    """Datagrams of a session other than the one followed, not (yet) taken as a restart."""
    duplicate_datagrams: int
    """Datagrams already received (every DELTA in them already applied)."""
    reordered_datagrams: int
    """Datagrams that arrived ahead of a hole and were held until it filled or expired."""
    unconfirmed_datagrams: int
    """Datagrams held ahead of a hole that no later datagram confirmed: dropped."""
    inconsistent_datagrams: int
    """Datagrams whose new DELTAs all contradicted the leaves (replayed or re-sequenced
    copies): dropped without moving the stream position."""
    kernel_drops: int
    """Datagrams the kernel dropped because the socket's receive buffer was full
    (SO_RXQ_OVFL; 0 where the platform does not report it). Raise
    ``receive_buffer_bytes`` or make callbacks faster."""
    injected_drops: int
    """Datagrams the ``drop_filter`` dropped (fault injection in tests and demos)."""

    # -- authentication (SPEC §9; all zero without keys)
    unauthenticated: int
    """With keys: datagrams without an AUTH trailer, dropped."""
    unknown_keys: int
    """With keys: datagrams signed with a key id not in the ring, dropped."""
    bad_tags: int
    """With keys: datagrams whose tag did not verify (forged or corrupted), dropped."""
    replayed: int
    """With keys: datagrams seen before or older than the replay window, dropped."""

    # -- messages
    deltas: int
    """DELTAs at new stream positions (applied, buffered for a stale leaf, or rejected)."""
    late_deltas: int
    """DELTAs behind the stream position that were a held leaf's next change: applied."""
    duplicate_deltas: int
    """DELTAs at positions already passed: ignored."""
    snapshots: int
    """SNAPSHOT messages (fragments included) received."""
    snapshots_used: int
    """Snapshots that installed, repaired or proved a leaf."""
    snapshots_verified: int
    """Snapshots that matched a fresh leaf byte for byte (the continuous self-check)."""
    heartbeats: int
    """HEARTBEAT messages received."""
    touched_summaries: int
    """TOUCHED summaries received (which leaves recent deltas changed)."""
    unknown_messages: int
    """Messages of kinds this version does not know: skipped (forward compatibility)."""

    # -- loss and repair
    gaps: int
    """Gap episodes: deltas lost for good (GAP status events)."""
    missed_deltas: int
    """Deltas lost in those gaps."""
    gaps_resolved: int
    """Gaps whose touched leaves summaries named exactly (other leaves stayed fresh)."""
    leaves_made_stale: int
    """Held leaves found to have missed changes (LEAF_STALE events)."""
    suspects_proven: int
    """Suspect leaves proven untouched by a gap (by their next delta or a snapshot)."""
    installs: int
    """Leaves installed from a snapshot (initial sync, or a lost creation)."""
    repairs: int
    """Stale leaves repaired from a snapshot (LEAF_REPAIRED events)."""
    inferred_deletes: int
    """Leaves removed because two snapshot claims showed they no longer exist."""
    restarts: int
    """Publisher restarts: a new session replaced the followed one (RESTARTED)."""
    resyncs: int
    """Whole-state rebuilds after distrust or :meth:`Subscriber.resync` (RESYNC)."""

    # -- retransmission (SPEC §15)
    retransmit_requests: int
    """Ranges asked for again from the retransmission server."""
    retransmit_unavailable: int
    """UNAVAILABLE answers: the server no longer held the range (snapshots repair it)."""
    retransmitted_datagrams: int
    """Datagrams received from the retransmission server (used or not)."""
    retransmit_refused: int
    """Retransmission packets dropped: malformed, for another stream, or (with keys) not
    signed by a key of the ring. Ignoring one costs only the wait for retransmission."""

    # -- evidence against the replica (each repaired; see LEAF_DIVERGED)
    divergences: int
    """Times evidence contradicted a leaf reported fresh: it was wrong, and is repaired."""
    census_mismatches: int
    """Snapshots whose leaf count contradicted a complete leaf set: the set is rebuilt."""
    bad_payloads: int
    """Payloads the model rejected (``decode_*`` or ``apply`` raised): the leaf goes stale."""
    bad_fragments: int
    """Snapshot reassemblies dropped because overlapping fragments disagreed."""
    oversize_snapshots: int
    """Snapshots larger than ``max_snapshot_bytes``: not reassembled."""
    buffer_overflows: int
    """Stale leaves whose buffered deltas passed ``max_buffered_deltas_per_leaf``: the
    buffer was dropped and the repair waits for a later snapshot."""
    shed_deltas: int
    """Deltas of stale leaves not buffered because the subscriber was overloaded (its
    receive queue filling, or kernel drops, in the last second): their snapshot repairs
    those leaves anyway."""
    leaves_shed: int
    """Fresh leaves made stale on purpose because the receive queue was filling faster
    than the subscriber read it (highest leaf ids first): the others stay exact instead of
    all going stale when the kernel drops datagrams. Each is repaired once there is room."""
    repairs_deferred: int
    """Snapshots that could have repaired a stale leaf but came while the subscriber was
    overloaded and its queue was not draining: a later snapshot repairs the leaf."""

    # -- callbacks and the runtime
    callback_errors: int
    """Exceptions raised by user callbacks (each failing callback is logged once)."""
    conflated_updates: int
    """Updates merged away because callbacks fell more than ``max_callback_backlog``
    behind (the latest per leaf is delivered as CONFLATED)."""
    internal_errors: int
    """Bugs caught in the receive path (logged); the receiver goes on. Should stay 0."""

    # -- gauges
    stale_leaves: int = field(metadata=_GAUGE)
    """Leaves known to have missed changes, waiting for a snapshot (now)."""
    suspect_leaves: int = field(metadata=_GAUGE)
    """Leaves a gap may have touched, not yet proven either way (now)."""
    callback_backlog: int = field(metadata=_GAUGE)
    """Updates queued for callbacks and not yet delivered (now)."""


@dataclass(frozen=True, slots=True)
class PublisherStats(_Counters):
    """A publisher's counters and gauges at one moment (:meth:`Publisher.stats`)."""

    taken_at: float
    """``time.monotonic()`` when the snapshot was taken."""
    deltas: int
    """Deltas published (each with its stream sequence)."""
    datagrams: int
    """Datagrams sent, of every kind."""
    delta_datagrams: int
    """Datagrams that carried at least one DELTA."""
    bytes_sent: int
    """Bytes of datagrams sent (UDP payload)."""
    snapshots: int
    """Leaf snapshots sent by the cycle (a fragmented leaf counts once)."""
    snapshot_fragments: int
    """SNAPSHOT messages sent (fragments of large leaves counted separately)."""
    snapshot_bytes: int
    """Bytes of snapshot payload sent."""
    cycles: int
    """Snapshot cycles completed."""
    touched_summaries: int
    """TOUCHED summaries sent."""
    touched_entries: int
    """Leaf entries in those summaries."""
    heartbeats: int
    """HEARTBEAT messages sent while idle."""
    snapshot_errors: int
    """``encode_leaf`` calls that raised (that leaf's snapshot was skipped)."""
    send_errors: int
    """Datagrams the socket refused to send (logged)."""
    retransmit_requests: int
    """Valid retransmission requests received (SPEC §15)."""
    retransmitted_datagrams: int
    """Datagrams sent again in answer to requests."""
    retransmit_unavailable: int
    """Requests answered UNAVAILABLE (the range was no longer held)."""
    retransmit_refused: int
    """Requests dropped unanswered: malformed, unauthenticated, for another stream, or
    over the requester's rate limit."""
    queued_deltas: int = field(metadata=_GAUGE)
    """Deltas published but not yet sent (now)."""
    leaves: int = field(metadata=_GAUGE)
    """Leaves the publisher holds (now)."""
    cycle_id: int = field(metadata=_GAUGE)
    """The snapshot cycle in progress."""
    snapshot_failing_leaves: int = field(metadata=_GAUGE)
    """Leaves whose latest ``encode_leaf`` failed (see ``snapshot_failures()``)."""
