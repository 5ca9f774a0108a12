"""The adversarial explorer (tests/adversary.py) against the subscriber core.

* Hypothesis state machines drive a hostile network move by move; the oracle runs after
  every datagram delivered and every poll (see tests/adversary.py for what it checks);
* fixed-seed random schedules, the same ones tools/explore.py runs (reproducible anywhere);
* scripted regressions, one per defect the explorer found, each as small as it could be.

Long runs: ``python tools/explore.py --seconds 600 --seed N`` (prints a failing schedule,
shrunk, as a test to paste at the end of this file).
"""

from __future__ import annotations

import os
import random

import pytest
from adversary import (
    DATAGRAM_CLASSES,
    MUTABLE_FIELDS,
    SCENARIOS,
    Move,
    OracleFailure,
    Scenario,
    World,
    random_schedule,
    run_schedule,
)
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

from grapevine._subscriber_core import SubscriberConfig
from grapevine.wire import DeltaFlag, SnapshotFlag

# Reproducible in CI: no example database, derandomized, bounded work per test. Hypothesis
# shrinking of these long stateful runs can take many minutes, so CI reports the first
# failing run as found (its moves are in the failure message; adversary.shrink() or
# tools/explore.py minimise it); GRAPEVINE_SHRINK=1 lets Hypothesis shrink it instead.
_PHASES = tuple(Phase) if os.environ.get("GRAPEVINE_SHRINK") else (
    Phase.explicit, Phase.reuse, Phase.generate)
# GRAPEVINE_EXPLORE_SCALE=10 runs ten times as many examples (a longer local hunt; add
# pytest --timeout=0, the 60 s per-test limit would stop it).
_SCALE = float(os.environ.get("GRAPEVINE_EXPLORE_SCALE", "1"))
EXPLORE = settings(max_examples=12, stateful_step_count=50, deadline=None, database=None,
                   derandomize=True, print_blob=False, phases=_PHASES,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                          HealthCheck.filter_too_much])


def explore(examples: int) -> settings:
    return settings(EXPLORE, max_examples=max(1, round(examples * _SCALE)))


subs = st.integers(0, 1)
classes = st.sampled_from(DATAGRAM_CLASSES)
picks = st.sampled_from((-1, -1, -2, 0, 1, -3))
delays_ms = st.sampled_from((5, 30, 100, 1000, 10_000))


# --------------------------------------------------------------------------- Hypothesis


class Explorer(RuleBasedStateMachine):
    """Honest moves: the publisher's, time, and any delivery schedule."""

    scenario = SCENARIOS["chain-honest"]

    def __init__(self) -> None:
        super().__init__()
        self.world = World(self.scenario)

    def apply(self, move: Move) -> None:
        try:
            self.world.apply(move)
        except OracleFailure as failure:
            self.failed = True
            # The whole schedule, ready for run_schedule() / shrink().
            failure.args = (f"{failure.args[0]}\nscenario: {self.scenario!r}\n"
                            f"moves: {self.world.trace!r}",)
            raise

    def teardown(self) -> None:
        # Every run ends with a heal: after the attack, the replicas must be exact again.
        if not getattr(self, "failed", False):
            self.apply(("heal", 0, True))

    @rule(leaf=st.sampled_from(Scenario().leaf_pool), value=st.integers(0, 2**32 - 1))
    def publish(self, leaf: int, value: int) -> None:
        self.apply(("publish", leaf, value))

    @rule(leaf=st.sampled_from(Scenario().leaf_pool))
    def delete(self, leaf: int) -> None:
        self.apply(("delete", leaf))

    @rule(seed=st.integers(0, 2**16), count=st.integers(2, 30))
    def burst(self, seed: int, count: int) -> None:
        self.apply(("burst", seed, count))

    @rule(ms=st.sampled_from((1, 2, 3, 5, 10, 20, 50, 100, 250, 1000)))
    def advance(self, ms: int) -> None:
        self.apply(("advance", ms))

    @rule(clean=st.booleans(), keep=st.booleans())
    def restart(self, clean: bool, keep: bool) -> None:
        self.apply(("restart", clean, keep))

    @rule(sub=subs)
    def rejoin(self, sub: int) -> None:
        self.apply(("rejoin", sub))

    @rule(seed=st.integers(0, 2**16), publish=st.booleans())
    def heal(self, seed: int, publish: bool) -> None:
        self.apply(("heal", seed, publish))

    @rule(action=st.sampled_from(("drop", "dup", "hold", "release", "replay")), sub=subs,
          cls=classes, k=picks)
    def deliver(self, action: str, sub: int, cls: str, k: int) -> None:
        self.apply((action, sub, cls, k))

    @rule(sub=subs, cls=classes, k=picks, ms=delays_ms)
    def delay(self, sub: int, cls: str, k: int, ms: int) -> None:
        self.apply(("delay", sub, cls, k, ms))

    @rule(sub=subs, cls=st.sampled_from(DATAGRAM_CLASSES[1:]),
          action=st.sampled_from(("drop", "dup", "hold", "delay")), ms=delays_ms)
    def arm(self, sub: int, cls: str, action: str, ms: int) -> None:
        self.apply(("arm", sub, cls, action, ms))

    @rule(sub=subs, seed=st.integers(0, 2**16), loss=st.sampled_from((0, 5, 20, 50)),
          dup=st.sampled_from((0, 5, 20)), delay=st.sampled_from((0, 10, 30)),
          hold=st.sampled_from((0, 5)), max_delay=st.sampled_from((5, 30, 150)))
    def faults(self, sub: int, seed: int, loss: int, dup: int, delay: int, hold: int,
               max_delay: int) -> None:
        self.apply(("faults", sub, seed, loss, dup, delay, hold, max_delay))

    @rule(sub=subs, k=st.integers(-4, -1), seed=st.integers(0, 2**16))
    def refragment(self, sub: int, k: int, seed: int) -> None:
        self.apply(("refragment", sub, k, seed))


class ControlExplorer(Explorer):
    """Plus forged control datagrams, which must keep the strict oracle."""

    @rule(sub=subs, what=st.sampled_from(("eos", "huge_seq", "flip_seq", "foreign",
                                          "foreign_eos", "last")), arg=st.integers(0, 63))
    def forge(self, sub: int, what: str, arg: int) -> None:
        self.apply(("forge", sub, what, arg))

    @rule(sub=subs, cls=classes, k=picks, bit=st.integers(0, 63), which=st.integers(0, 3),
          field=st.sampled_from(("header.sequence", "header.session_id",
                                  "snapshot.range_start", "snapshot.cycle_count",
                                  "snapshot.cycle_position", "snapshot.flags")))
    def mutate_control(self, sub: int, cls: str, k: int, bit: int, which: int,
                       field: str) -> None:
        operand: int
        if field == "snapshot.flags":
            operand = SnapshotFlag.LAST
        else:
            operand = 1 << (bit if field.startswith("header") else bit % 32)
        self.apply(("mutate", sub, "quiet" if field == "header.sequence" else cls, k,
                          field, "xor", operand, which))


class HostileExplorer(ControlExplorer):
    """Plus forged content: the strict oracle pauses until the next heal, which must work."""

    @rule(sub=subs, cls=classes, k=picks, field=st.sampled_from(MUTABLE_FIELDS),
          op=st.sampled_from(("xor", "set", "add")), operand=st.sampled_from(
              (1, 2, 4, 0x80, 1 << 31, 1 << 40, 1 << 62, 0, 2**32 - 1, 2**64 - 1)),
          which=st.integers(0, 3), at=st.integers(0, 3))
    def mutate(self, sub: int, cls: str, k: int, field: str, op: str, operand: int,
               which: int, at: int) -> None:
        self.apply(("mutate", sub, cls, k, field, op, operand, which, at))

    @rule(sub=subs, cls=classes, k=picks,
          scope=st.sampled_from(("delta", "snapshot", "touched")),
          how=st.sampled_from(("short", "long", "empty", "poison", "garbage")),
          which=st.integers(0, 3))
    def payload(self, sub: int, cls: str, k: int, scope: str, how: str, which: int) -> None:
        self.apply(("payload", sub, cls, k, scope, how, which))

    @rule(sub=subs)
    def empty_cycle(self, sub: int) -> None:
        self.apply(("forge", sub, "empty_cycle", 0))


class HonestChain(Explorer):
    scenario = SCENARIOS["chain-honest"]


class HonestBlob(Explorer):
    scenario = SCENARIOS["blob-honest"]


class ControlChain(ControlExplorer):
    scenario = SCENARIOS["chain-control"]


class HostileChain(HostileExplorer):
    scenario = SCENARIOS["chain-all"]


class HostileBlob(HostileExplorer):
    scenario = SCENARIOS["blob-all"]


# Examples per machine: about 50 s for the five on one core of a CI runner.
TestHonestChain = HonestChain.TestCase
TestHonestChain.settings = explore(20)
TestHonestBlob = HonestBlob.TestCase
TestHonestBlob.settings = explore(10)
TestControlChain = ControlChain.TestCase
TestControlChain.settings = explore(30)
TestHostileChain = HostileChain.TestCase
TestHostileChain.settings = explore(40)
TestHostileBlob = HostileBlob.TestCase
TestHostileBlob.settings = explore(10)


# --------------------------------------------------------------------------- fixed seeds


@pytest.mark.parametrize(("name", "seed"), [
    ("chain-honest", 1), ("chain-honest-nosummary", 2), ("blob-honest", 3),
    ("chain-control", 4), ("chain-control-nosummary", 5), ("blob-control", 6),
    ("chain-all", 7), ("chain-all-nosummary", 8), ("blob-all", 9),
])
def test_fixed_seed_schedule(name: str, seed: int) -> None:
    """The schedules ``tools/explore.py --seed N --scenario NAME`` runs first."""
    scenario = SCENARIOS[name]
    run_schedule(scenario, random_schedule(seed, scenario, 150))


# --------------------------------------------------------------------------- regressions
# One per defect, each as small as it could be made. They failed on the core of issue 7
# (commit 498927f); the rewrite must keep them passing.

# The scripted regressions below script losses that the snapshot cycle must repair: no
# retransmission, which would otherwise fill the holes first (tests below cover it).
ONE = Scenario(subscribers=1, attacks="honest", retransmit=False)
ONE_CONTROL = Scenario(subscribers=1, attacks="control", retransmit=False)
ONE_HOSTILE = Scenario(subscribers=1, attacks="all", retransmit=False)


def test_a_delayed_summary_proves_leaves_only_against_the_gaps_it_covers() -> None:
    """A TOUCHED-only datagram delayed ~130 ms past two nearby losses. Its window lists leaf
    0 at the leaf_seq the subscriber holds, so it proves leaf 0 against the first gap; it
    must not prove it against the second, later gap, which hid leaf 0's next change
    (SPEC 12(k): a summary proves leaves only against gaps ending at or before its
    end_seq). The old core reported leaf 0 fresh one change behind."""
    world = World(Scenario(subscribers=1, attacks="honest", min_cycle_s=1.0,
                           retransmit=False))
    world.run([
        ("advance", 100),  # synced; the next snapshot cycle is 1 s away
        ("publish", 2, 1),  # its datagram carries the summary of an old window: primes it
        ("publish", 0, 1),
        ("publish", 1, 1), ("drop", 0, "delta", -1),  # lost: gap 1
        ("arm", 0, "touched", "hold", 0),  # the summary of {0: 1, 1: 1}: held
        ("advance", 7),
        ("publish", 2, 2),
        ("advance", 25),  # gap 1 is declared
        ("publish", 0, 2), ("drop", 0, "delta", -1),  # leaf 0's next change lost: gap 2
        ("publish", 2, 3), ("publish", 3, 1),  # two datagrams after it confirm the hole
        ("arm", 0, "touched", "drop", 0),  # and the summary that would cover gap 2 is lost
        ("advance", 30),  # gap 2 is declared
        ("release", 0, "touched", 0),  # the held summary arrives, ~130 ms late
    ])
    assert world.subs[0].core.stats.gaps == 2  # the premise: two gaps, then the summary


@pytest.mark.parametrize("pieces", [((0, 8), (4, 12)), ((0, 10), (2, 10), (0, 10))],
                         ids=["overlapping", "overlapping_repeated"])
def test_b_overlapping_fragments_with_a_hole_are_not_installed(
        pieces: tuple[tuple[int, int], ...]) -> None:
    """Honest bytes of leaf 3's 16-byte snapshot, framed as overlapping pieces that leave
    its last bytes missing: the old core counted 16 bytes received, took the zero-filled
    hole for data and installed (and reported fresh) a value the publisher never had."""
    world = World(ONE)
    world.run([("advance", 30), ("publish", 3, 2**32 - 1),  # bytes 8..13 of leaf 3 non-zero
               ("advance", 60), ("rejoin", 0), ("fragments", 0, -1, pieces), ("advance", 5)])


def test_b_honest_cycles_with_other_fragment_boundaries_do_not_mix() -> None:
    """No forgery at all: a quiet leaf is snapshotted in two cycles with the same leaf_seq
    and as_of_seq but different fragment boundaries (a heartbeat shifted them); loss,
    duplication and delay mix the two cycles' fragments. The old core completed the
    reassembly with holes and reported a wrong leaf fresh (found by the explorer: seed 2,
    blob-honest)."""
    run_schedule(SCENARIOS["blob-honest"], [
        ("faults", 0, 55956, 20, 5, 30, 0, 150),
        ("advance", 5),
        ("publish", 1, 4099813280),
        ("burst", 38630, 3),
        ("publish", 6, 477492862),
        ("publish", 0, 3223738878),
        ("advance", 100),
        ("publish", 4294967295, 2495703725),
        ("advance", 300),
        ("advance", 250),
        ("burst", 58175, 5),
        ("advance", 1000),
    ])


@pytest.mark.parametrize(("scope", "how", "late_joiner"), [
    ("delta", "short", False),  # decode_delta raises ValueError
    ("delta", "poison", False),  # decodes; apply raises ValueError
    ("snapshot", "short", True),  # decode_leaf raises struct.error
])
def test_c_payloads_the_model_rejects_do_not_escape(scope: str, how: str,
                                                    late_joiner: bool) -> None:
    """A copy of a live datagram whose DELTA or SNAPSHOT payload the model rejects arrives
    instead of the original: it is counted, never raised out of receive(), and the
    subscriber heals."""
    world = World(ONE_HOSTILE)
    moves = [("advance", 30), ("publish", 0, 5)]
    if late_joiner:
        moves += [("rejoin", 0)]
    moves += [("payload", 0, scope, -1, scope, how),
              ("drop", 0, "any", 0),  # the original (in flight before the copy)
              ("advance", 5), ("heal", 1, True)]
    world.run(moves)


def test_d_a_forged_last_claim_does_not_wipe_the_replica_for_good() -> None:
    """A copy of leaf 0's real snapshot claiming to end the cycle (LAST) while the
    publisher is quiet. The old core removed leaves 1..3, remembered them as deleted at
    their leaf_seq and never reinstalled them from the cycle; it even stayed synced with
    them missing."""
    world = World(ONE_CONTROL)
    world.run([("advance", 100), ("forge", 0, "last", 0), ("advance", 10),
               ("heal", 0, False)])  # three cycles of a quiet publisher


@pytest.mark.parametrize(("what", "arg"), [("huge_seq", 0), ("flip_seq", 40)],
                         ids=["2**62", "bit_40_flipped"])
def test_e_a_forged_huge_sequence_does_not_freeze_the_session(what: str, arg: int) -> None:
    """A HEARTBEAT with the live session id and sequence 2**62 (or the stream's position
    with bit 40 flipped): the old core declared a gap up to it, and from then on every
    real DELTA was a duplicate."""
    world = World(ONE_CONTROL)
    world.run([("advance", 100), ("forge", 0, what, arg), ("advance", 30),
               ("publish", 0, 1), ("publish", 1, 2), ("advance", 10), ("heal", 0, True)])


def test_f_a_forged_end_of_session_does_not_unsync_for_good() -> None:
    """END_OF_SESSION with the live session id while DELTAs keep flowing: the old core
    stayed 'ended' (unsynced) for good."""
    world = World(ONE_CONTROL)
    world.run([("advance", 100), ("forge", 0, "eos", 0), ("advance", 10), ("heal", 0, True)])


@pytest.mark.parametrize("mutation", [
    # leaf 3's snapshot claiming [1, 3) empty: leaves 1 and 2 removed for good
    ("mutate", 0, "snapshot", -1, "snapshot.range_start", "xor", 2, 3),
    # a change arriving as a CREATE: applied to an empty leaf, wrong for good
    ("mutate", 0, "delta", -1, "delta.flags", "xor", DeltaFlag.CREATE),
    # a change moved to the next stream position
    ("mutate", 0, "delta", -1, "header.sequence", "add", 1),
], ids=["range_start", "create_flag", "sequence_plus_one"])
def test_g_a_bit_flipped_copy_of_a_live_datagram_heals(mutation: Move) -> None:
    """A decodable bit-flipped copy of a live datagram, delivered first: after honest
    traffic for two cycles the subscriber is synced and equal again."""
    world = World(ONE_HOSTILE)
    world.run([("advance", 100), ("publish", 1, 7), mutation,
               ("release", 0, "any", -1),  # the copy overtakes the original
               ("advance", 10),
               ("heal", 0, False)])  # a quiet publisher: only the cycle can repair


@pytest.mark.parametrize("seed", [0, 2, 3])
def test_g_a_flood_of_bit_flipped_copies_heals(seed: int) -> None:
    """Single-bit flips of any field of recent live datagrams, mixed with traffic, then
    honest traffic for two cycles: every subscriber synced and equal."""
    rng = random.Random(seed)
    moves: list[Move] = [("advance", 60)]
    for _ in range(60):
        roll = rng.random()
        if roll < 0.3:
            moves.append(("publish", rng.choice(Scenario().leaf_pool[:5]),
                          rng.getrandbits(32)))
        elif roll < 0.45:
            moves.append(("advance", rng.choice((1, 3, 10, 40))))
        else:
            target = rng.choice([f for f in MUTABLE_FIELDS if f != "header.session_id"])
            moves.append(("mutate", rng.randrange(2), rng.choice(("any", "delta", "snapshot")),
                          rng.randrange(-4, 0), target, "xor", 1 << rng.randrange(32),
                          rng.randrange(4), rng.randrange(4)))
            moves.append(("release", 0, "any", -1))
    moves.append(("heal", seed, False))  # the flood stops; a quiet publisher cycles
    run_schedule(SCENARIOS["chain-all"], moves)


def test_h_a_forged_last_claim_does_not_make_a_joiner_synced_with_leaves_missing() -> None:
    """Found by the explorer in the rewritten core (ControlChain, 2 moves): a late joiner
    whose first datagram is a copy of leaf 0's real snapshot claiming to end the cycle
    (LAST, cycle_count 1: "leaf 0 is the only leaf") reports itself synced with leaves
    1..3 missing. A control forgery without leaf content; the claim contradicts the real
    cycle (same cycle_id and as_of_seq, cycle_count 4) as soon as any other snapshot of it
    arrives. A leaf set is now known only from snapshots of two cycles (SPEC §12(g))."""
    world = World(ONE_CONTROL)
    world.run([("advance", 120), ("rejoin", 0), ("forge", 0, "last", 0), ("advance", 3),
               ("heal", 0, False)])


def test_oracle_catches_a_wrong_fresh_leaf(monkeypatch: pytest.MonkeyPatch) -> None:
    """The oracle itself: a core that lies about a fresh leaf is caught at once."""
    world = World(ONE)
    world.run([("advance", 50)])
    core = world.subs[0].core
    honest_values = core.values
    monkeypatch.setattr(core, "values", lambda: {**honest_values(), 0: (99, 99)})
    with pytest.raises(OracleFailure, match=r"\[strict\].*leaf 0 is reported fresh"):
        world.apply(("advance", 1))


def test_oracle_catches_unbounded_memory() -> None:
    """The oracle itself: the reorder buffer measured against a tighter bound than the
    core was given is caught (the footprint walker finds the core's containers)."""
    world = World(ONE)
    world.run([("advance", 50), ("publish", 0, 1), ("drop", 0, "delta", -1)])
    world.subs[0].config = SubscriberConfig(reorder_window_datagrams=2)
    with pytest.raises(OracleFailure, match=r"\[memory\].*pending datagrams"):
        world.run([("publish", 0, 2), ("publish", 1, 3), ("publish", 2, 4), ("advance", 3)])


def test_i_a_repeated_copy_of_a_forged_claim_is_not_a_second_claim() -> None:
    """Found by the explorer (seed 100050, chain-control, shrunk to 6 moves): a forged LAST
    claim made three fresh leaves stale, as it should (one claim never removes a fresh
    leaf), and a duplicate of the same forged datagram then counted as "the next claim"
    and removed them: synced with leaves 2, 3 and 5 missing. A stale leaf is now removed
    only by a claim from another source (datagram sequence, cycle_id)."""
    run_schedule(SCENARIOS["chain-control"], [
        ("publish", 5, 2335687369),
        ("advance", 10),
        ("advance", 100),
        ("forge", 1, "last", 11),
        ("dup", 1, "quiet", -2),
        ("advance", 5),
    ])


def test_j_a_suspect_leaf_ahead_of_the_publisher_is_repaired() -> None:
    """Found by the explorer (seed 200062, chain-all-nosummary, shrunk to 5 moves): a
    snapshot whose leaf_seq was mutated to 2048 installed leaf 0 ahead of the publisher; the
    honest DELTA datagram (leaf_seq 2) then looked inconsistent, was dropped, and the hole
    became a gap that made leaf 0 suspect. Honest snapshots (leaf_seq 2) were ignored for a
    suspect leaf, so it stayed suspect and wrong for good. A snapshot behind a leaf, as of
    after the leaf was last seen, is a divergence for a suspect leaf too: repaired."""
    run_schedule(SCENARIOS["chain-all-nosummary"], [
        ("arm", 0, "delta", "delay", 1000),
        ("publish", 0, 1358974987),
        ("mutate", 0, "heartbeat", -1, "snapshot.leaf_seq", "xor", 2048, 3, 3),
        ("advance", 5),
        ("heal", 31854, False),
    ])


def test_k_healing_waits_out_a_forged_restart_grace() -> None:
    """Found by the explorer (seed 200178, blob-all, shrunk to 23 moves): a mutated
    datagram read as a HEARTBEAT with a huge interval raised the restart grace to its 60 s
    cap, and the oracle's own 60 s limit for healing ran out first. The bound is the grace
    in force plus two cycles (SPEC §12(l)); the oracle now allows exactly that."""
    run_schedule(SCENARIOS["blob-all"], [
        ("publish", 4294967295, 1256855086), ("advance", 100), ("burst", 37547, 8),
        ("publish", 2, 1341969107), ("advance", 1000), ("advance", 5), ("delete", 2),
        ("advance", 30), ("publish", 5, 4197665571),
        ("payload", 1, "snapshot", 0, "snapshot", "garbage", 3), ("hold", 0, "any", -1),
        ("publish", 0, 3306321929), ("drop", 1, "delta", -2), ("burst", 2834, 8),
        ("drop", 1, "eos", 0), ("mutate", 1, "quiet", 0, "message.kind", "xor", 1, 3, 2),
        ("rejoin", 1), ("hold", 1, "eos", 0), ("advance", 3), ("drop", 0, "snapshot", 0),
        ("advance", 1), ("release", 0, "delta", -2), ("heal", 15457, False),
    ])


def test_m_a_forged_last_claim_does_not_complete_a_rebuilt_leaf_set() -> None:
    """Found by the explorer (seed 1100000, blob-control, shrunk to 7 moves; the session's
    starting commit failed it too): after a crash restart, a subscriber rebuilding its
    replica had real snapshots of the lowest leaves when a copy of one of them, re-flagged
    LAST (its cycle_count made consistent), claimed that no leaf above it existed. Two
    sources, complete: the leaf set was "known" and the subscriber synced with five leaves
    missing. A snapshot taken at the stream position with no CREATE, DELETE or gap since
    had counted more leaves: that contradiction now means the set is gathered again."""
    run_schedule(SCENARIOS["blob-control"], [
        ("delete", 2),
        ("restart", False, True),
        ("burst", 16275, 23),
        ("advance", 130),
        ("advance", 100),
        ("forge", 1, "last", 42),
        ("advance", 114),
    ])
