"""The ``grapevine`` console entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from grapevine.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_version_and_help() -> None:
    result = subprocess.run([sys.executable, "-m", "grapevine", "--version"],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0
    assert result.stdout.startswith("grapevine ")
    result = subprocess.run([sys.executable, "-m", "grapevine", "--help"],
                            capture_output=True, text=True, timeout=30, check=False)
    assert "decode" in result.stdout
    assert "demo" in result.stdout


def test_decode_subcommand_describes_a_vector(capsys) -> None:  # type: ignore[no-untyped-def]
    vector = json.loads((ROOT / "protocol" / "vectors" / "batch_deltas.json").read_text())
    assert main(["decode", vector["hex"]]) == 0
    out = capsys.readouterr().out
    assert "grapevine v1" in out
    assert "DELTA seq=" in out
