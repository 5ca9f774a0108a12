"""Smoke test of ``tools/bench_overload.py`` (issue 12): a tiny run ends with the replica
synced and equal to the publisher's state. No timing figure is ever asserted: the machine
is shared and the run is tiny."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "bench_overload.py"


@pytest.mark.timeout(120)
def test_a_tiny_overload_run_reports_and_converges(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(TOOL), "--model", "both", "--leaves", "20", "--capacity", "4000",
         "--seconds", "0.3", "--warmup", "0.1", "--lead-seconds", "0.3",
         "--recover-seconds", "4", "--repeats", "1", "--json"],
        capture_output=True, text=True, timeout=110, check=False, cwd=tmp_path,
        env={"TMPDIR": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(report) == {"bytes", "book"}
    for model, entry in report.items():
        (run,) = entry["runs"]["this"]
        assert run["converged"], (model, run)
        assert run["offered"] > 0
        for key in ("goodput", "taken", "cpu_us_per_taken", "kernel_drops", "gaps",
                    "resync_s"):
            assert key in run, (model, key)
