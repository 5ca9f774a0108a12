"""The command line shared by the vector generators (make_vectors, make_book_vectors,
make_retransmit_vectors): write a folder of JSON vectors, or ``--check`` it."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["render", "write_or_check"]


def render(item: dict[str, Any]) -> str:
    """One vector's file content (stable: re-running reproduces it byte for byte)."""
    return json.dumps(item, indent=2) + "\n"


def write_or_check(description: str, default_dir: Path,
                   expected_files: Callable[[], dict[str, str]],
                   argv: list[str] | None = None) -> int:
    """Write ``expected_files()`` (file name -> content) into the folder, removing stale
    ones; with ``--check``, only say what is out of date (exit status 1 if anything)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--check", action="store_true",
                        help="compare with the files on disk instead of writing them")
    parser.add_argument("--out", type=Path, default=default_dir)
    args = parser.parse_args(argv)
    out: Path = args.out
    files = expected_files()
    existing = {p.name for p in out.glob("*.json")} if out.exists() else set()
    if args.check:
        bad = sorted(name for name, text in files.items()
                     if not (out / name).exists() or (out / name).read_text() != text)
        bad += sorted(existing - set(files))
        for name in bad:
            print(f"out of date: {name}")
        return 1 if bad else 0
    out.mkdir(parents=True, exist_ok=True)
    for stale in existing - set(files):
        (out / stale).unlink()
    for name, text in files.items():
        (out / name).write_text(text)
    print(f"wrote {len(files)} vectors to {out}")
    return 0
