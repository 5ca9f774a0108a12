"""Two networks joined only by a routed veth link (tools/repeat_run.py): repeaters carry a
stream across faults; a static multicast route (smcroute) carries it where the kernel
can route multicast.

``tools/repeat_run.py`` makes a private network namespace (A, ``unshare -rn``) and a second
one (B) joined to it by a veth pair, with no multicast route between them. The publisher
multicasts on A, the subscriber listens on B; the tool prints a JSON report whose checks
these tests read. Each test runs the tool once (10-30 s).
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
        not (shutil.which("unshare") and shutil.which("nft") and shutil.which("ip")),
        reason="needs unshare, ip and nft (.ci/run installs nftables and iproute2)",
    ),
]


def repeat_run(*argv: str) -> tuple[int, dict[str, Any], str]:
    """Run the tool; its exit status, its JSON report and its stderr (for messages)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "repeat_run.py"), *argv],
        capture_output=True, text=True, timeout=170, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    lines = result.stdout.strip().splitlines()
    assert lines, f"no report (exit {result.returncode}):\n{result.stderr[-20_000:]}"
    return result.returncode, json.loads(lines[-1]), result.stderr[-20_000:]


def phase(report: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(p for p in report["phases"] if p["phase"] == name)
    return found


@pytest.mark.timeout(180)
def test_tcp_repeaters_carry_the_stream_through_loss_restarts_and_a_link_cut() -> None:
    code, report, log = repeat_run()
    why = json.dumps(report, indent=1)[:20_000] + log
    # Nothing but the repeaters joins the networks: B heard nothing before they started.
    assert report["control"]["publisher_datagrams"] > 0, why
    assert report["control"]["subscriber_datagrams"] == 0, why
    assert report["initial"]["synced"], why
    assert report["initial"]["equal"], why
    assert [p["phase"] for p in report["phases"]] == [
        "loss_a", "loss_b", "restart_receive", "restart_send", "link_cut"]
    for result in report["phases"]:
        assert result["fault_had_effect"], (result["phase"], why)
        assert result["converged"]["synced"], (result["phase"], why)
        assert result["converged"]["equal"], (result["phase"], why)
        assert result["subscriber"]["internal_errors"] == 0, why
    for name in ("loss_a", "loss_b"):  # real kernel loss
        assert phase(report, name)["nft_dropped"] > 0, why
    # Lost in A, before the repeater: it cannot send what it never got; snapshots repair.
    assert phase(report, "loss_a")["subscriber"]["gaps"] > 0, why
    assert phase(report, "loss_a")["subscriber"]["repairs"] > 0, why
    # Lost in B, after it: the repeater sends it again from its cache (SPEC §15).
    assert phase(report, "loss_b")["subscriber"]["retransmitted"] > 0, why
    # Loss in A happened before the repeater (it forwarded all it got); in B after it.
    assert phase(report, "loss_b")["send_side"]["dropped"]["malformed"] == 0, why
    # The send side reconnected after the receive side crashed and after the cut.
    assert phase(report, "restart_receive")["send_side"]["reconnects"] >= 1, why
    cut = phase(report, "link_cut")
    assert cut["send_side"]["reconnects"] >= 1, why
    assert cut["send_side"]["link_errors"] >= 1, why
    assert cut["nft_dropped"] > 0, why
    assert report["veth"]["tx_packets"] > 0, why
    assert report["feeder_error"] is None, why
    assert report["ok"], why
    assert code == 0, why


@pytest.mark.timeout(180)
def test_a_signed_stream_over_a_udp_link() -> None:
    code, report, log = repeat_run("--udp", "--keys", "--phases", "loss_a,loss_b,link_cut")
    why = json.dumps(report, indent=1)[:20_000] + log
    assert report["transport"] == "udp", why
    assert report["keys"] is True, why
    assert report["control"]["subscriber_datagrams"] == 0, why
    for result in report["phases"]:
        assert result["converged"]["equal"], (result["phase"], why)
        assert result["converged"]["synced"], (result["phase"], why)
    # Over UDP a cut loses what it carries (no queue survives it): gaps, then repair.
    assert phase(report, "link_cut")["subscriber"]["gaps"] > 0, why
    # Every datagram the subscriber got verified: the repeaters changed no byte.
    counts = report["subscriber"]
    assert (counts["unauthenticated"], counts["bad_tags"], counts["malformed"]) == (0, 0, 0), why
    assert report["ok"], why
    assert code == 0, why


@pytest.mark.timeout(120)
@pytest.mark.skipif(not shutil.which("smcrouted"),
                    reason="needs smcrouted (apt-get install smcroute)")
def test_a_static_multicast_route_carries_the_stream_with_ttl_2() -> None:
    code, report, log = repeat_run("--mode", "mroute")
    why = json.dumps(report, indent=1)[:20_000] + log
    # Without the route, TTL-2 multicast from A's LAN never reaches B.
    assert report["control"]["publisher_datagrams"] > 0, why
    assert report["control"]["subscriber_datagrams"] == 0, why
    if code == 3:
        assert report["supported"] is False, why
        assert report["subscriber_datagrams_with_smcrouted"] == 0, why
        pytest.skip(f"this kernel cannot route multicast: {report['reason']}")
    assert report["supported"] is True, why
    assert report["converged"]["synced"], why
    assert report["converged"]["equal"], why
    assert report["ok"], why
    assert code == 0, why


@pytest.mark.timeout(120)
def test_throughput_mode_reports_a_ratio() -> None:
    """A smoke run of the measurement (the figures themselves are in the report of issue 9):
    a low blaster rate is carried without loss, and the ratio is computed from it."""
    code, report, log = repeat_run("--mode", "throughput", "--seconds", "0.5",
                                   "--rates", "500")
    why = json.dumps(report, indent=1)[:20_000] + log
    publisher = report["publisher"]
    assert publisher["datagrams_per_s"] > 0, why
    trial = report["blaster"]["trials"][0]
    assert trial["lossless"], why
    assert report["max_lossless_datagrams_per_s"] == trial["sent_per_s"], why
    assert report["ratio_to_publisher"] == pytest.approx(
        trial["sent_per_s"] / publisher["datagrams_per_s"], abs=0.01), why
    assert code in (0, 1), why  # 1: the publisher flat out outran the repeater (reported)
