"""``grapevine demo``: loss, a late joiner and a publisher restart, then exact convergence."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

import pytest
from helpers import free_endpoint

from grapevine import _demo
from grapevine.book import Op
from grapevine.testing import Market

pytestmark = pytest.mark.network

# subscriber  synced  gaps  missed  made stale  repairs  restarts  first sync  books equal
ROW = re.compile(r"^(?P<name>\S+)\s+(?P<synced>yes|NO)\s+(?P<resent>\d+)\s+(?P<gaps>\d+)\s+"
                 r"(?P<missed>\d+)\s+"
                 r"(?P<stale>\d+)\s+(?P<repairs>\d+)\s+(?P<restarts>\d+)\s+"
                 r"(?P<first>[\d.]+ s|never)\s+(?P<equal>.+)$", re.MULTILINE)


def summary(out: str) -> dict[str, dict[str, str]]:
    table = out[out.index("subscriber  synced"):]
    return {m["name"]: m.groupdict() for m in ROW.finditer(table)}


def check_run(out: str, books: int) -> dict[str, dict[str, str]]:
    rows = summary(out)
    assert set(rows) == {"clean", "loss5%", "bursty", "late"}, out
    for row in rows.values():
        assert row["synced"] == "yes", out
        assert row["equal"] == f"Y ({books}/{books})", out
        assert row["restarts"] == "1", out  # every subscriber saw the publisher restart
        assert row["first"] != "never", out
    # loss5% asks for what it lost: the publisher sends it again (SPEC §15).
    assert int(rows["loss5%"]["resent"]) > 0, out
    assert int(rows["bursty"]["resent"]) == 0, out  # retransmission off: snapshots repair
    assert f"PASS: all 4 subscribers synced; every replica equals the publisher's {books}" in out
    assert "late subscriber joins" in out
    assert "RESTARTED" in out
    assert "loss injection off" in out
    return rows


@pytest.mark.timeout(60)
def test_demo_command_converges_after_loss_late_join_and_restart() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "grapevine", "demo", "--duration", "8", "--instruments", "100",
         "--rate", "3000", "--seed", "5"],
        capture_output=True, text=True, timeout=50, check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    rows = check_run(out, 100)
    assert int(rows["bursty"]["gaps"]) > 0, out  # 6 s of bursts at ~300 datagrams/s
    assert int(rows["bursty"]["repairs"]) > 0, out
    assert re.search(r"bursty: [\d,]+ gaps? \([\d,]+ deltas? missed, [\d,]+ resolved by TOUCHED "
                     r"summaries\)", out), out
    assert "repaired from snapshots" in out
    assert re.search(r"publisher: [\d,]+ deltas \(3,0\d\d/s\)", out), out
    assert "Traceback" not in proc.stderr


def test_demo_run_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    where = free_endpoint()
    args = argparse.Namespace(duration=3.0, instruments=20, rate=1000.0, seed=2, **where)
    assert _demo.run(args) == 0
    out = capsys.readouterr().out
    assert f"on {where['group']}:{where['port']} (interface 127.0.0.1, TTL 0)" in out
    check_run(out, 20)


def test_demo_reports_a_diverged_replica(monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The verdict is computed, not printed blindly: a replica that differs fails the run."""
    real = _demo._mismatches

    def corrupt(expected: dict[int, int], tracked: _demo._Tracked) -> int:
        return real(expected, tracked) + (3 if tracked.name == "bursty" else 0)

    monkeypatch.setattr(_demo, "_CONVERGE_TIMEOUT_S", 1.0)
    monkeypatch.setattr(_demo, "_mismatches", corrupt)
    args = argparse.Namespace(duration=1.5, instruments=10, rate=500.0, seed=3,
                              **free_endpoint())
    assert _demo.run(args) == 1
    out = capsys.readouterr().out
    assert summary(out)["bursty"]["equal"] == "N (3 of 10 differ)"
    assert summary(out)["clean"]["equal"] == "Y (10/10)"
    assert "FAIL: some replicas are not synced or differ from the publisher" in out


def test_market_makes_valid_replayable_deterministic_batches() -> None:
    ticks = iter(range(1, 10**9))
    market = Market(30, seed=9, clock=lambda: next(ticks))
    start = market.copy_books()
    replay = {leaf_id: book.copy() for leaf_id, book in start.items()}
    ops: set[Op] = set()
    made = 0
    for count in (0, 1, 7, 500, 20_000):
        batch = market.batch(count)
        assert len(batch) >= count
        made += len(batch)
        for leaf_id, delta in batch:
            replay[leaf_id].apply(delta)  # raises if the generator made an invalid delta
            ops.add(delta.op)
        # A batch ends with a whole event: replaying it gives exactly the market's books.
        assert replay == market.books
    assert market.deltas_made == made
    assert ops == {Op.ADD, Op.REDUCE, Op.REMOVE, Op.TRADE}
    for book in market.books.values():
        book._check()
        assert 1 <= len(book) <= 2 * (market.levels + 2)
        assert not book.crossed
    # Same seed and clock, same market; another seed, another market.
    one = Market(30, seed=9, clock=lambda: 1)
    two = Market(30, seed=9, clock=lambda: 1)
    assert one.copy_books() == two.copy_books()
    assert one.batch(1000) == two.batch(1000)
    assert one.batch(1000) != Market(30, seed=10, clock=lambda: 1).batch(1000)
    # A market continues from given books (after a restart) without reusing them.
    given = market.copy_books()
    resumed = Market(30, seed=1, books=given)
    assert resumed.books == given
    assert all(resumed.books[i] is not given[i] for i in given)
    for leaf_id, delta in resumed.batch(5000):
        given[leaf_id].apply(delta)
    assert given == resumed.books
