"""Smoke test of ``tools/bench_join.py`` (issue 12) at tiny sizes.

It asserts only that the benchmark runs, prints every row and that the replicas it builds,
the new way and the old, equal the publisher's books; never a timing (the machine is
shared, and the sizes are far too small to mean anything).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the venv may not have grapevine installed
    sys.path.insert(0, str(ROOT))

from grapevine.book import OrderBook, decode_book, encode_book  # noqa: E402


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_join", ROOT / "tools" / "bench_join.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_main_runs_and_prints_every_row(bench: ModuleType,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--leaves", "30", "--levels", "3", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    for row in bench.ROWS:
        assert f"  {row} " in out
    assert "decode new / old" in out
    assert "receive new / old" in out


def test_replicas_equal_the_source(bench: ModuleType) -> None:
    recording = bench.record(leaves=25, levels=4, seed=3)
    assert len(recording.payloads) == 25
    for model in (bench.OrderBookModel(), bench.LegacyModel()):
        sub = bench.receive_all(model, recording)
        bench.check_replica(sub, recording)  # raises if any leaf differs
        for leaf_id, payload in recording.payloads.items():
            value = sub.leaves[leaf_id].value
            if isinstance(value, OrderBook):
                value._check()
                assert value == decode_book(payload)
                assert encode_book(value) == payload
            else:
                assert bench.encode_legacy(value) == payload


def test_legacy_decoder_matches_the_library(bench: ModuleType) -> None:
    """The old-representation yardstick decodes the same content as decode_book."""
    recording = bench.record(leaves=10, levels=6, seed=5)
    for payload in recording.payloads.values():
        legacy = bench.decode_legacy(payload)
        book = decode_book(payload)
        assert bench.encode_legacy(legacy) == encode_book(book) == payload
        assert [(-k, lv.qty, lv.orders, lv.time_ns) for k, lv in legacy.bids.items()] == list(
            book.iter_levels(0))
