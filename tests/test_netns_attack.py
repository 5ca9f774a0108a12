"""Forged, mutated and replayed datagrams against a live stream, in a private namespace.

``tools/attack_run.py`` runs a real publisher, three real subscribers and an attacker (plain
UDP sockets that capture the real datagrams and send forgeries to the same group and port)
inside a network namespace of its own (``unshare -rn``): nothing leaves the host. With
``--veth`` (both tests here) the attacker runs in a second namespace made inside that one,
on the same segment: a veth pair joins the two, and the stream and the forgeries cross it. The
attacks, in order: a sequence of 2**62 and a bit-flipped header sequence; a forged
END_OF_SESSION followed by a stranger session; a SNAPSHOT copy with LAST set (and a variant
with cycle_count made consistent with LAST) in a quiet moment; a flood of bit-flipped but
decodable copies; replays of datagrams seconds old; DELTAs whose payload the order-book
model rejects. Its JSON report records, per step, what every subscriber showed shortly
after and whether (and when) it recovered; this test checks the end state only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        not (shutil.which("unshare") and shutil.which("ip")),
        reason="needs unshare (util-linux) and ip (iproute2) for a private network namespace",
    ),
]

SUBSCRIBERS = 3


def assert_crossed_veth(report: dict[str, Any]) -> None:
    """The attacker was in the other namespace: the stream left through this end of the
    veth pair and every forgery came in through it."""
    config = report["config"]
    assert config["topology"] == "veth", config
    assert (config["interface"], config["attacker_interface"]) == ("10.77.0.1", "10.77.0.2")
    veth = report["veth"]
    assert veth["tx_packets"] >= report["publisher"]["datagrams"], veth
    assert veth["rx_packets"] >= report["attacker"]["sent"], veth


def run_attack(*extra: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], str]:
    """Run tools/attack_run.py (attacker in its own namespace over a veth pair): the
    process, its JSON report, and the tail of its per-step digest (stderr, or the
    traceback if the run crashed)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "attack_run.py"), "--veth", *extra,
         "--subscribers", str(SUBSCRIBERS), "--leaves", "300", "--rate", "3000"],
        capture_output=True, text=True, timeout=110, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    lines = result.stdout.strip().splitlines()
    digest = result.stderr[-30_000:]
    assert lines, f"no report (exit {result.returncode}):\n{digest}"
    return result, json.loads(lines[-1]), digest


@pytest.mark.timeout(120)
def test_subscribers_survive_attacks_and_converge() -> None:
    result, report, digest = run_attack()
    assert all(report["initial_sync"]), f"the subscribers never synced before the attacks\n{digest}"
    assert_crossed_veth(report)
    assert len(report["steps"]) == 10, digest

    # The bound the run waited after publishing stopped: restart grace + 2 snapshot cycles
    # + slack, from the publisher's and subscribers' configs.
    config = report["config"]
    bound = config["final_bound_s"]
    assert bound == pytest.approx(config["restart_grace_s"] + 2 * config["snapshot_cycle_s"] + 3.0,
                                  abs=0.01)
    final = report["final"]
    for index, sub in enumerate(final["subscribers"]):
        why = (f"subscriber {index} is not synced and equal to the publisher {bound} s after "
               f"publishing stopped: {sub}\n{digest}")
        assert sub["live_session"], why
        assert sub["synced"], why
        assert sub["equal"], why
    assert final["all"], digest
    assert final["time_since_stop_s"] is not None, digest
    assert final["time_since_stop_s"] <= bound, digest

    assert report["internal_errors"] == [0] * SUBSCRIBERS, (
        f"internal errors {report['internal_errors']}: {report['log']['samples']}\n{digest}")
    threads = report["threads"]
    assert threads["all_alive"], f"a library thread died: {threads}\n{digest}"
    assert threads["feeder_error"] is None, threads
    assert result.returncode == 0, digest


@pytest.mark.timeout(120)
def test_with_keys_every_attack_is_dropped_and_replicas_stay_synced_throughout() -> None:
    """Issue 8: the same attacks against a signed stream (the attacker has no key). Every
    forged, mutated and replayed datagram is dropped and counted before the core sees it,
    and every subscriber is synced, on the live session and (in quiet steps) equal at every
    observation, with no divergence, resync, restart or stale leaf anywhere."""
    result, report, digest = run_attack("--keys")
    assert report["keys"] is True
    assert_crossed_veth(report)
    assert len(report["steps"]) == 10, digest
    assert report["unsynced_observations"] == [], digest
    assert report["silent_divergences"] == [], digest
    attacker_sent = report["attacker"]["sent"]
    for drops in report["auth_drops"]:
        # Every datagram the attacker sent was dropped by authentication (the replays as
        # replayed, the rest as unsigned or with a bad tag).
        assert sum(drops.values()) == attacker_sent, (drops, attacker_sent)
        assert drops["replayed"] > 0
        assert drops["bad_tags"] > 0
        assert drops["unauthenticated"] > 0
    assert report["ok"], digest
    assert result.returncode == 0, digest
