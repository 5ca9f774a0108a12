#!/usr/bin/env python3
"""Developer entry point: ``python3 tools/dev.py demo`` and ``python3 tools/dev.py test``.

On first use it creates ``.venv/`` beside the project and installs Grapevine with its
test extra into it; later runs reuse it (reinstalling only when pyproject.toml changes).
Only the Python standard library is needed to run this file.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".grapevine-installed"


def ensure_env() -> None:
    """Create the virtual environment and install the project if needed."""
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted and PYTHON.exists():
        return
    if not PYTHON.exists():
        print(f"dev: creating virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    print("dev: installing grapevine[test] (first run only)", flush=True)
    run([str(PYTHON), "-m", "pip", "install", "-q", "--upgrade", "pip"])
    run([str(PYTHON), "-m", "pip", "install", "-q", "-e", f"{ROOT}[test]"])
    STAMP.write_text(wanted)


def lint_paths() -> list[str]:
    return [name for name in ("grapevine", "tests", "tools", "examples") if (ROOT / name).is_dir()]


def run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, cwd=ROOT, check=False)
    if result.returncode != 0:
        sys.exit(result.returncode)


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in {"demo", "test", "lint", "bench", "docs", "shell"}:
        print(__doc__)
        print("commands: demo [demo options] | test [pytest options] | lint | bench | docs "
              "| shell CMD...")
        sys.exit(2)
    command, rest = argv[0], argv[1:]
    ensure_env()
    if command == "demo":
        run([str(PYTHON), "-m", "grapevine", "demo", *rest])
    elif command == "lint":
        run([str(PYTHON), "-m", "ruff", "check", *lint_paths()])
        run([str(PYTHON), "-m", "mypy"])
    elif command == "test":
        run([str(PYTHON), "-m", "ruff", "check", *lint_paths()])
        run([str(PYTHON), "-m", "mypy"])
        run([str(PYTHON), "-m", "pytest", *rest])
    elif command == "docs":  # the reference documentation, as HTML, in build/docs/
        run([str(PYTHON), "-m", "pdoc", "--docformat", "google", "-o",
             str(ROOT / "build" / "docs"), "grapevine", "grapevine.book", "grapevine.auth",
             "grapevine.model", "grapevine.events", "grapevine.stats", "grapevine.testing",
             "grapevine.codec", "grapevine.wire"])
        print(f"dev: reference documentation in {ROOT / 'build' / 'docs' / 'index.html'}")
    elif command == "bench":
        for script in sorted((ROOT / "tools").glob("bench_*.py")):
            run([str(PYTHON), str(script), *rest])
    else:
        run([str(BIN / rest[0]), *rest[1:]] if rest else [str(PYTHON)])


if __name__ == "__main__":
    main(sys.argv[1:])
