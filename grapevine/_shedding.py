"""When an overloaded subscriber sheds whole leaves, and when it takes them back.

A subscriber offered more than it can process does not keep up by reading faster: the
kernel drops datagrams in chunks, each chunk touches nearly every leaf, and every leaf then
waits for the snapshot cycle. Taking a repaired leaf back only restarts that (issue 12).
What degrades gracefully is to choose: keep as many leaves as the subscriber can follow,
exactly, and let the others go STALE on purpose (their DELTAs are skipped cheaply and their
repairs wait), before the socket overflows. That is safe by construction: a shed leaf is a
STALE leaf like any other, repaired by a snapshot through the usual checks; only *when*
repairs happen changes (SPEC §12(c), "Shedding leaves").

The runtime reports how full its receive queue is whenever it reads a batch without
emptying it (:meth:`Shedder.report`; 1.0 for kernel drops). This object is the policy, on
plain numbers and the caller's clock. Samples are taken :data:`SAMPLE_S` apart:

* **shed** a quarter of the fresh leaves (half, over half full) when the queue is over
  :data:`SHED_AT` and has been filling, sample after sample, for :data:`RISE_S` (a burst
  the queue absorbs is not an overload: it stops filling sooner); then, while overloaded,
  again each :data:`RESHED_S` while it is still fuller than at the last shedding (until
  it has drained); at once on kernel drops. Never while most datagrams since the last
  sample were rejected (forged, malformed, foreign, duplicate): shedding leaves cannot
  lighten that load, and a flood of it must not cost the replica its leaves;
* while **overloaded** (within :data:`OVERLOAD_S` of the last shedding or kernel drops),
  take a STALE leaf back only if no report over :data:`ADMIT_BELOW` came in the last
  :data:`ADMIT_HOLD_S`: the queue has drained, so there is room for one more leaf.

Every state ends with time alone, so a runtime that stops reporting (the queue drained,
or no runtime at all) never keeps a leaf from its repair.
"""

from __future__ import annotations

SHED_AT = 0.25  # queue fill (share of the receive buffer) over which leaves are shed
RISE_S = 0.02  # ... once it has been filling for this long
SAMPLE_S = 0.01  # fill samples this far apart judge whether the queue is filling
SHED_SHARE = 4  # each shedding makes STALE one in this many of the fresh leaves
RESHED_S = 0.02  # overloaded, shed again only this long after the last shedding ...
# ... and only if the queue is fuller than it was then: a queue that has grown large drains
# slowly and its fill is noisy from sample to sample, so sample-to-sample rises after a
# shedding would shed far more leaves than the overload needs.
ADMIT_BELOW = 0.05  # while overloaded, repairs wait for the fill to stay under this
ADMIT_HOLD_S = 0.02  # ... for this long
OVERLOAD_S = 1.0  # overloaded for this long after the last shedding or kernel drops


class Shedder:
    """The shedding policy of one subscriber (see the module docstring)."""

    __slots__ = ("_accepted", "_admit_at", "_junk", "_received", "_rising_since", "_sample_at",
                 "_sample_fill", "_shed_at", "_shed_fill", "overloaded_until")

    def __init__(self) -> None:
        self._sample_at = float("-inf")
        self._sample_fill = 0.0
        self._rising_since = float("inf")
        self._admit_at = float("-inf")
        self._received = self._accepted = 0  # the counters at the last sample
        self._junk = False  # most datagrams between the last two samples were rejected
        self._shed_at, self._shed_fill = float("-inf"), 0.0  # the last shedding
        self.overloaded_until = float("-inf")

    def report(self, fill: float, now: float, received: int, accepted: int) -> bool:
        """The receive queue is ``fill`` full (0 to 1; 1 when the kernel dropped
        datagrams) at ``now``, after ``received`` datagrams of which ``accepted`` were
        the stream's (both counted since the start). True: shed a share of the fresh
        leaves now."""
        if fill >= ADMIT_BELOW:
            self._admit_at = max(self._admit_at, now + ADMIT_HOLD_S)
        else:
            self._shed_fill = 0.0  # the queue drained: a new rise is a new overload
        overloaded = now < self.overloaded_until
        if fill >= 1.0:  # kernel drops: overloaded beyond doubt, unless by junk
            if self._junk or (overloaded and now - self._shed_at < RESHED_S):
                return False
        else:
            since = now - self._sample_at
            if since < SAMPLE_S:
                return False
            self._junk = 2 * (accepted - self._accepted) < received - self._received
            self._received, self._accepted = received, accepted
            filling = fill > self._sample_fill and since < 2 * SAMPLE_S and not self._junk
            if not filling:
                self._rising_since = now
            self._sample_at, self._sample_fill = now, fill
            if fill < SHED_AT or not filling:
                return False
            if overloaded:
                if now - self._shed_at < RESHED_S or fill <= self._shed_fill:
                    return False
            elif now - self._rising_since < RISE_S:
                return False
        self._shed_at, self._shed_fill = now, fill
        self.overloaded_until = now + OVERLOAD_S
        return True

    def overloaded(self, now: float) -> bool:
        """Whether ``now`` is within :data:`OVERLOAD_S` of the last shedding."""
        return now < self.overloaded_until

    def admits(self, now: float) -> bool:
        """Whether a STALE leaf may be repaired at ``now``."""
        return now >= self.overloaded_until or now >= self._admit_at

    def share(self, fresh: int) -> int:
        """How many of ``fresh`` leaves the shedding just decided makes STALE (at least
        one): twice as many with the queue over half full, since it then has less time
        left than the shedding takes to show."""
        if not fresh:
            return 0
        return max(1, fresh * (2 if self._shed_fill >= 0.5 else 1) // SHED_SHARE)
