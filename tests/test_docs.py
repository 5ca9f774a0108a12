"""The reference documentation builds without a warning and documents every public name."""

from __future__ import annotations

import importlib
import inspect
import warnings
from pathlib import Path
from typing import Any

import pytest

import grapevine

PUBLIC_MODULES = ["grapevine", "grapevine.book", "grapevine.auth", "grapevine.model",
                  "grapevine.events", "grapevine.stats", "grapevine.testing",
                  "grapevine.codec", "grapevine.wire"]


def _public_objects() -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                found.append((f"{module_name}.{name}", obj))
    return found


@pytest.mark.parametrize(("name", "obj"), _public_objects(), ids=lambda v: str(v)[:60])
def test_every_public_name_has_a_docstring(name: str, obj: Any) -> None:
    assert inspect.getdoc(obj), f"{name} has no docstring"
    if not inspect.isclass(obj) or not obj.__module__.startswith("grapevine"):
        return
    for attr, member in vars(obj).items():
        if attr.startswith("_") or not (inspect.isfunction(member)
                                        or isinstance(member, property)):
            continue
        if any(attr in vars(base) for base in obj.__mro__[1:]):
            continue  # documented where it is defined (a protocol or a base class)
        assert member.__doc__, f"{name}.{attr} has no docstring"


def test_reference_documentation_builds_cleanly(tmp_path: Path) -> None:
    pytest.importorskip("pdoc", reason="pdoc is in the test extra")
    import pdoc
    import pdoc.render

    pdoc.render.configure(docformat="google")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.pdoc(*PUBLIC_MODULES, output_directory=tmp_path)
    assert [str(w.message)[:200] for w in caught] == []
    top = (tmp_path / "grapevine.html").read_text()
    for heading in ("What a subscriber knows", "Threads", "Tuning", "Failure modes"):
        assert heading in top  # the guide is part of the reference
    for name in grapevine.__all__:
        assert name in top, name
    stats_page = (tmp_path / "grapevine" / "stats.html").read_text()
    assert "kernel_drops" in stats_page
    assert "Datagrams the kernel dropped" in stats_page  # attribute docstrings rendered
