"""Reading the specification documents (SPEC.md, ORDERBOOK.md) and loading the generators
in tools/, for the tests that hold the documents, the vectors and the code together."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def markdown_table(text: str, marker: str) -> list[list[str]]:
    """The body rows (cells stripped) of the Markdown table right after ``<!-- marker -->``,
    which must appear exactly once in ``text``."""
    tag = f"<!-- {marker} -->"
    assert text.count(tag) == 1, f"the document needs exactly one {tag}"
    rows = []
    for line in text.split(tag, 1)[1].lstrip("\n").splitlines():
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    assert len(rows) >= 3, f"no table after {tag}"
    assert set(rows[1][0]) <= set("-: "), f"malformed table after {tag}"
    return rows[2:]


def unquote(cell: str) -> str:
    return cell.strip("`")


def load_tool(name: str) -> ModuleType:
    """``tools/<name>.py`` as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ids(vectors: list[dict[str, Any]]) -> list[str]:
    """pytest ids: the vectors' names."""
    return [v["name"] for v in vectors]
