"""The README's code runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.network
def test_readme_python_example_runs() -> None:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "the README has no python example"
    result = subprocess.run([sys.executable, "-c", blocks[0]], capture_output=True, text=True,
                            timeout=30, check=False, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    # Callbacks print from the dispatcher thread, so lines may interleave: check pieces.
    assert "synced" in result.stdout
    assert "[(10050, 300, 1)]" in result.stdout
    assert "CHANGED (10050, 300)" in result.stdout  # the per-leaf callback ran, and read
    assert "Traceback" not in result.stderr  # no callback failed (they are logged, not raised)


def test_readme_starts_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    first_block = re.search(r"```sh\n(.*?)```", text, re.S)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert commands == ["python3 tools/dev.py demo", "python3 tools/dev.py test"]
