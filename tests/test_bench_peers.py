"""Smoke test of ``tools/bench_peers.py --quick`` (issue 12): one run, in its own private
network namespace, reports every row and every column and checks every replica.

No timing figure is ever asserted: the machine is shared and the quick run is tiny. The
pyzmq and LCM rows may be unavailable (the ``bench`` extra is not installed): then the
report must say why, and only then.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "bench_peers.py"
ROWS = ["raw1", "raw20", "zmq", "lcm", "gv-bytes-thread", "gv-bytes-inline",
        "gv-book-thread", "gv-book-inline"]
OPTIONAL_MODULE = {"zmq": "zmq", "lcm": "lcm"}  # row -> the module it needs
COLUMNS = ["zero_gap_rate", "flood_rate", "flood_loss",
           *(f"lat_{rate}_{q}" for rate in ("20k", "100k") for q in ("p50", "p99", "p999")),
           "cpu_pub_1", "cpu_sub_1", "cpu_pub_4", "cpu_sub_4", "cpu_pub_net_1",
           "cpu_pub_net_4",
           "late_join_1k", "late_join_10k", "mem_per_level"]  # --quick: no 100k late join
NOT_APPLICABLE = {  # (row prefix, column prefix): rows that have no such figure
    ("raw", "late_join"), ("zmq", "late_join"), ("lcm", "late_join"),
    ("gv-bytes", "late_join"), ("raw", "mem_per_level"), ("gv-bytes", "mem_per_level"),
}

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(not (shutil.which("unshare") and shutil.which("ip")),
                       reason="needs unshare (util-linux) and ip (iproute2): the benchmark "
                              "runs in a private network namespace of its own"),
]


class Run:
    """One ``--quick`` run: its exit status, output and JSON report."""

    def __init__(self, result: subprocess.CompletedProcess[str], report: dict[str, Any],
                 png: Path) -> None:
        self.result = result
        self.report = report
        self.png = png
        self.rows = {row["key"]: row for row in report["rows"]}

    @property
    def output(self) -> str:
        return f"stdout:\n{self.result.stdout}\nstderr:\n{self.result.stderr}"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    out = tmp_path_factory.mktemp("bench_peers")
    json_path, png = out / "peers.json", out / "peers.png"
    result = subprocess.run(
        [sys.executable, str(TOOL), "--quick", "--json-out", str(json_path)],
        capture_output=True, text=True, timeout=55, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert json_path.exists(), result.stdout + result.stderr
    return Run(result, json.loads(json_path.read_text()), png)


def available(row: str) -> bool:
    module = OPTIONAL_MODULE.get(row)
    return module is None or importlib.util.find_spec(module) is not None


@pytest.mark.timeout(60)
def test_quick_run_succeeds_and_every_replica_equals_the_publisher(quick_run: Run) -> None:
    assert quick_run.result.returncode == 0, quick_run.output
    assert quick_run.report["errors"] == [], quick_run.output
    assert quick_run.report["replica_checks_ok"], quick_run.output
    checked = {check["row"] for check in quick_run.report["replica_checks"]}
    assert checked == {row for row in ROWS if available(row)}
    assert "Replica check: OK" in quick_run.result.stdout


@pytest.mark.timeout(60)
def test_every_row_and_column_is_reported(quick_run: Run) -> None:
    assert list(quick_run.rows) == ROWS
    assert [c["key"] for c in quick_run.report["columns"]] == COLUMNS
    for key, row in quick_run.rows.items():
        assert row["available"] is available(key), (key, row["reason"])
        if not row["available"]:  # pyzmq or LCM missing: the reason is printed
            assert row["reason"], key
            assert f"{row['label']}: not measured: {row['reason']}" in quick_run.result.stdout
        for column in COLUMNS:
            cell = row["cells"][column]
            expected_na = not row["available"] or any(
                key.startswith(r) and column.startswith(c) for r, c in NOT_APPLICABLE)
            if expected_na:
                assert cell["na"], (key, column)
            else:  # measured: a number (its value is not asserted), with its ratio
                assert isinstance(cell["median"], int | float), (key, column, cell)
                assert len(cell["per_repeat"]) == 1, (key, column)


@pytest.mark.timeout(60)
def test_markdown_table_names_every_row_and_column(quick_run: Run) -> None:
    text = quick_run.result.stdout
    for row in quick_run.report["rows"]:
        assert f"| {row['label']} |" in text, row["label"]
    for column in quick_run.report["columns"]:
        assert column["label"] in text, column["label"]


@pytest.mark.timeout(60)
def test_chart_when_matplotlib_is_installed(quick_run: Run) -> None:
    if importlib.util.find_spec("matplotlib") is None:
        assert quick_run.report["png"] is None
        assert "matplotlib is not installed" in quick_run.result.stdout
        return
    assert quick_run.report["png"] == str(quick_run.png)
    assert quick_run.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
