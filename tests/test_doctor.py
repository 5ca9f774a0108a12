"""``grapevine doctor``: each check finds what it is for, with the command that fixes it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from grapevine._doctor_cmd import Finding, diagnose
from grapevine.testing import free_port

ROOT = Path(__file__).resolve().parent.parent
GROUP = "239.255.78.1"


def by_check(findings: list[Finding]) -> dict[str, Finding]:
    return {f.check: f for f in findings}


@pytest.mark.network
def test_loopback_multicast_works_here() -> None:
    found = by_check(diagnose("127.0.0.1", GROUP, free_port(GROUP), 1 << 16, 0))
    assert found["interface"].ok
    assert found["loopback delivery"].ok, found
    assert found["receive buffer"].ok


def test_an_address_this_host_lacks_is_named_with_the_fix() -> None:
    findings = diagnose("10.255.255.254", GROUP, 0, 1 << 16, 0)
    assert len(findings) == 1
    assert not findings[0].ok
    assert "10.255.255.254" in findings[0].detail
    assert "ip -4 addr show" in findings[0].fix


def test_a_receive_buffer_above_rmem_max_is_found() -> None:
    limit = int(Path("/proc/sys/net/core/rmem_max").read_text())
    found = by_check(diagnose("127.0.0.1", GROUP, 0, limit + 1, 0))
    finding = found["receive buffer"]
    assert not finding.ok
    assert f"sysctl -w net.core.rmem_max={limit + 1}" == finding.fix


def test_ttl_zero_on_a_real_interface_is_found() -> None:
    from grapevine._doctor_cmd import _ttl
    assert not _ttl("10.0.0.5", 0).ok
    assert _ttl("10.0.0.5", 1).ok
    assert _ttl("127.0.0.1", 0).ok


@pytest.mark.netns
@pytest.mark.timeout(60)
@pytest.mark.skipif(not (shutil.which("unshare") and shutil.which("ip")),
                    reason="needs unshare and ip (.ci/run installs iproute2)")
def test_in_a_fresh_namespace_it_finds_loopback_down_and_no_route() -> None:
    """A private network namespace (nothing leaves it): lo down, then up."""
    script = (f"{sys.executable} -m grapevine doctor --json --group {GROUP}; echo ==; "
              f"ip link set lo up; {sys.executable} -m grapevine doctor --json --group {GROUP}")
    result = subprocess.run(["unshare", "-rn", "sh", "-c", script], capture_output=True,
                            text=True, timeout=50, check=False,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    first, _, second = result.stdout.partition("==\n")
    lines = result.stdout + result.stderr
    first_run = {f["check"]: f for f in map(json.loads, first.splitlines())}
    second_run = {f["check"]: f for f in map(json.loads, second.splitlines())}
    # lo down: found, with the fix.
    assert not first_run["interface"]["ok"], lines
    assert first_run["interface"]["fix"] == "ip link set lo up", lines
    # lo up: loopback multicast works, but nothing routes the group (no default route).
    assert second_run["interface"]["ok"], lines
    assert second_run["loopback delivery"]["ok"], lines
    assert not second_run["route"]["ok"], lines
    assert "ip route add 224.0.0.0/4 dev lo" in second_run["route"]["fix"], lines


def test_the_cli_prints_findings_and_fixes() -> None:
    result = subprocess.run([sys.executable, "-m", "grapevine", "doctor", "--interface",
                             "10.255.255.254"], capture_output=True, text=True, timeout=30,
                            check=False, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 1
    assert "FAIL interface:" in result.stdout
    assert "fix: ip -4 addr show" in result.stdout
