"""What a subscriber tells its callbacks: leaf updates and status changes.

These are public types (re-exported from :mod:`grapevine`); the subscriber core produces
them and the dispatcher delivers them.
"""


import enum
from typing import Generic, NamedTuple

from .model import DeltaT, LeafT

__all__ = ["Status", "StatusEvent", "Update", "UpdateKind"]


class UpdateKind(enum.IntEnum):
    """What happened to a leaf, as delivered to leaf callbacks."""

    CHANGED = 1  # a delta was applied (``delta`` is the decoded delta)
    REPLACED = 2  # a snapshot was installed (initial sync or repair); ``delta`` is None
    DELETED = 3  # the leaf no longer exists; ``leaf`` is None
    CONFLATED = 4  # several changes, delivered late as one; read the leaf


class Update(NamedTuple, Generic[LeafT, DeltaT]):
    """One change to one leaf, as :meth:`Subscriber.handle`, :meth:`Subscriber.updates`
    and callbacks registered with ``as_update=True`` receive it.

    ``sequence`` and ``send_time_ns`` let a user order updates across leaves and measure
    lag; plain callbacks get only the first four fields, which costs less per update.
    """

    leaf_id: int
    kind: UpdateKind
    leaf: LeafT | None
    """The leaf's value after the change; None for DELETED. For mutable leaves (an
    OrderBook) this is the live replica object: read it under ``Subscriber.locked()``."""
    delta: DeltaT | None
    """The decoded delta for CHANGED; None otherwise."""
    sequence: int
    """The stream sequence the leaf is now up to date with: the delta's sequence for
    CHANGED (and for a DELETED by a delta); for REPLACED, the last sequence the snapshot
    (and any deltas buffered after it) reflects; otherwise the stream position."""
    send_time_ns: int
    """The publisher's clock (Unix ns) when it sent the datagram that caused the update;
    0 when no datagram did (a timer, a restart, :meth:`Subscriber.resync`). Compare it with
    ``time.time_ns()`` for one-way delay if the clocks are synchronised."""


class Status(enum.Enum):
    """Status changes reported to status callbacks."""

    SESSION_STARTED = "session started"  # first datagram of a publisher session
    SYNCED = "synced"  # every leaf known and fresh
    UNSYNCED = "unsynced"  # no longer synced (gap, silence, session end, distrust)
    GAP = "gap"  # deltas [first_seq, end_seq) were lost; all leaves suspect
    LEAF_STALE = "leaf stale"  # leaf_id missed changes; it waits for a snapshot
    LEAF_REPAIRED = "leaf repaired"  # leaf_id was repaired from a snapshot
    LEAF_DIVERGED = "leaf diverged"  # evidence contradicted a leaf reported fresh (reason)
    RESYNC = "resync"  # the subscriber distrusted its whole state and rebuilds it (reason)
    SILENT = "publisher silent"  # nothing heard for the silence timeout
    RESUMED = "publisher resumed"  # heard again after SILENT (or data after END_OF_SESSION)
    RESTARTED = "publisher restarted"  # a new session replaced the old: replica rebuilt
    SESSION_ENDED = "session ended"  # the publisher stopped cleanly
    LAGGING = "lagging"  # datagrams arrive later than the lag threshold (see lag_s)
    CAUGHT_UP = "caught up"  # lag back under half the threshold after LAGGING


class StatusEvent(NamedTuple):
    """One status change. Fields that do not apply to ``kind`` are None."""

    kind: Status
    time: float
    """When it happened: ``time.monotonic()`` seconds in :class:`~grapevine.Subscriber` (the
    clock the sans-I/O core is driven with), the clock of ``SubscriberStats.taken_at``."""
    leaf_id: int | None = None
    first_seq: int | None = None
    end_seq: int | None = None
    session_id: int | None = None
    reason: str | None = None
