"""protocol/ORDERBOOK.md, protocol/vectors/orderbook/ and grapevine/book.py agree.

The vectors regenerate identically; every vector decodes to its fields (and checksum) or
raises its documented error; the sequence and the stream replay to their checksums; and the
document's constants, enumerations, layout tables, diagrams, rule tables, hex examples and
sequence table are parsed and compared with the code and the vectors.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from spec_text import ids, load_tool, markdown_table, unquote

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the venv may not have grapevine installed
    sys.path.insert(0, str(ROOT))

from grapevine import book, codec  # noqa: E402
from grapevine._errors import DecodeError  # noqa: E402
from grapevine.book import (  # noqa: E402
    BookDelta,
    Op,
    OrderBook,
    OrderBookModel,
    Side,
    decode_book,
    encode_book,
)
from grapevine.codec import Delta, Snapshot  # noqa: E402
from grapevine.wire import DeltaFlag  # noqa: E402

DOC_PATH = ROOT / "protocol" / "ORDERBOOK.md"
DOC = DOC_PATH.read_text()
VECTOR_DIR = ROOT / "protocol" / "vectors" / "orderbook"
VECTOR_FILES = sorted(VECTOR_DIR.glob("*.json"))
VECTORS = {p.stem: json.loads(p.read_text()) for p in VECTOR_FILES}
BOOKS = [v for v in VECTORS.values() if v["kind"] == "book"]
DELTAS = [v for v in VECTORS.values() if v["kind"] == "delta"]
SEQUENCE = VECTORS["sequence"]
STREAM = VECTORS["stream"]

TYPES = {"u8": ("B", 1), "u32": ("I", 4), "u64": ("Q", 8), "i64": ("q", 8)}
LEVEL_FIELDS = ("price_ticks", "quantity", "orders", "time_ns")
HEADER_FIELDS = ("version", "flags", "n_bids", "n_asks", "last_trade_price", "last_trade_qty",
                 "last_trade_time_ns", "traded_volume")
HEX_BLOCK = re.compile(r"^```hex vector=orderbook/(\S+)(?: step=(\d+))?\n(.*?)^```", re.M | re.S)


def load_generator() -> ModuleType:
    return load_tool("make_book_vectors")

def table_after(marker: str, text: str = DOC) -> list[list[str]]:
    return markdown_table(text, marker)



def section(heading: str) -> str:
    """The text of a section, from its heading to the next heading of any level."""
    body = DOC.split(heading + "\n", 1)[1]
    return re.split(r"^#{2,3} ", body, maxsplit=1, flags=re.M)[0]


def layout(marker: str) -> list[tuple[int, int, str, str]]:
    """(offset, size, field, struct code) of each row of a layout table, checked for size."""
    out = []
    for row in table_after(f"layout: {marker}"):
        offset, size, name, kind = int(row[0]), int(row[1]), unquote(row[2]), row[3]
        code, width = TYPES[kind]
        assert width == size, row
        out.append((offset, size, name, code))
    return out


def layout_struct(marker: str) -> struct.Struct:
    rows = layout(marker)
    position = 0
    for offset, size, _, _ in rows:
        assert offset == position, f"{marker}: a gap or overlap at {offset}"
        position += size
    return struct.Struct("<" + "".join(code for *_, code in rows))


def fields_of(decoded: OrderBook) -> dict[str, Any]:
    """A decoded book's fields in the vectors' vocabulary, through the public API."""
    trade = decoded.last_trade
    tp, tq, tt = (0, 0, 0) if trade is None else trade
    bids = [dict(zip(LEVEL_FIELDS, lv, strict=True)) for lv in decoded.iter_levels(Side.BID)]
    asks = [dict(zip(LEVEL_FIELDS, lv, strict=True)) for lv in decoded.iter_levels(Side.ASK)]
    return {"version": 1, "flags": int(trade is not None), "n_bids": len(bids),
            "n_asks": len(asks), "last_trade_price": tp, "last_trade_qty": tq,
            "last_trade_time_ns": tt, "traded_volume": decoded.traded_volume,
            "bids": bids, "asks": asks}


def blake2b64(payload: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(payload, digest_size=8).digest(), "little")


# --------------------------------------------------------------------------- vectors


def test_vectors_on_disk_are_up_to_date() -> None:
    files = load_generator().expected_files()
    on_disk = {p.name: p.read_text() for p in VECTOR_FILES}
    assert sorted(files) == sorted(on_disk), "re-run tools/make_book_vectors.py"
    for name, text in files.items():
        assert on_disk[name] == text, f"{name} differs: re-run tools/make_book_vectors.py"


def test_generator_check_mode_agrees(tmp_path: Path) -> None:
    generator = load_generator()
    assert generator.main(["--check"]) == 0
    assert generator.main(["--out", str(tmp_path)]) == 0
    (tmp_path / "book_empty.json").write_text("{}\n")
    (tmp_path / "stray.json").write_text("{}\n")
    assert generator.main(["--check", "--out", str(tmp_path)]) == 1


def test_there_are_vectors_of_every_kind() -> None:
    kinds = {v["kind"] for v in VECTORS.values()}
    assert kinds == {"book", "delta", "sequence", "stream"}
    assert sum(v["valid"] for v in BOOKS) >= 8
    assert sum(not v["valid"] for v in BOOKS) >= 25
    assert sum(v["valid"] for v in DELTAS) >= 6
    assert sum(not v["valid"] for v in DELTAS) >= 6
    assert [p.stem for p in VECTOR_FILES] == sorted(VECTORS)
    assert all(VECTORS[name]["name"] == name for name in VECTORS)


@pytest.mark.parametrize("vector", [v for v in BOOKS if v["valid"]],
                         ids=ids([v for v in BOOKS if v["valid"]]))
def test_valid_book_vector(vector: dict[str, Any]) -> None:
    payload = bytes.fromhex(vector["hex"])
    assert len(payload) == vector["size"]
    decoded = decode_book(payload, allow_crossed=vector["allow_crossed"])
    decoded._check()
    assert fields_of(decoded) == vector["fields"]
    assert encode_book(decoded) == payload, "the encoding is canonical"
    assert decoded.checksum() == vector["checksum"] == blake2b64(payload)
    assert bytes.fromhex(vector["digest_hex"]) == hashlib.blake2b(payload, digest_size=8).digest()
    # The document's layout tables alone read the same fields.
    header = layout_struct("book_header")
    level = layout_struct("level")
    names = [name for _, _, name, _ in layout("book_header")]
    read = dict(zip(names, header.unpack_from(payload), strict=True))
    levels = [dict(zip([n for _, _, n, _ in layout("level")], values, strict=True))
              for values in level.iter_unpack(payload[header.size:])]
    read["bids"], read["asks"] = levels[: read["n_bids"]], levels[read["n_bids"]:]
    assert read == vector["fields"]
    if vector["allow_crossed"]:
        with pytest.raises(DecodeError):
            decode_book(payload)


@pytest.mark.parametrize("vector", [v for v in BOOKS if not v["valid"]],
                         ids=ids([v for v in BOOKS if not v["valid"]]))
def test_invalid_book_vector(vector: dict[str, Any]) -> None:
    payload = bytes.fromhex(vector["hex"])
    assert len(payload) == vector["size"]
    error = vector["error"]
    with pytest.raises(DecodeError) as caught:
        decode_book(payload, allow_crossed=vector["allow_crossed"])
    assert (caught.value.field, caught.value.offset) == (error["field"], error["offset"])
    assert error["reason_contains"] in caught.value.reason
    # The same bytes through the model a subscriber uses.
    with pytest.raises(DecodeError):
        OrderBookModel(allow_crossed=vector["allow_crossed"]).decode_leaf(memoryview(payload))


@pytest.mark.parametrize("vector", [v for v in DELTAS if v["valid"]],
                         ids=ids([v for v in DELTAS if v["valid"]]))
def test_valid_delta_vector(vector: dict[str, Any]) -> None:
    payload = bytes.fromhex(vector["hex"])
    assert len(payload) == vector["size"] == book.BOOK_DELTA_SIZE
    model = OrderBookModel()
    delta = model.decode_delta(memoryview(payload))
    fields = vector["fields"]
    assert delta == BookDelta(Op(fields["op"]), Side(fields["side"]), fields["price_ticks"],
                              fields["quantity"], fields["time_ns"])
    assert (delta.op.name, delta.side.name) == (fields["op_name"], fields["side_name"])
    assert model.encode_delta(delta) == payload
    read = layout_struct("delta").unpack(payload)
    assert dict(zip([n for _, _, n, _ in layout("delta")], read, strict=True)) == {
        k: fields[k] for k in BookDelta._fields}


@pytest.mark.parametrize("vector", [v for v in DELTAS if not v["valid"]],
                         ids=ids([v for v in DELTAS if not v["valid"]]))
def test_invalid_delta_vector(vector: dict[str, Any]) -> None:
    payload = bytes.fromhex(vector["hex"])
    error = vector["error"]
    with pytest.raises(DecodeError) as caught:
        OrderBookModel().decode_delta(memoryview(payload))
    assert (caught.value.field, caught.value.offset) == (error["field"], error["offset"])
    assert error["reason_contains"] in caught.value.reason


def test_sequence_replays_to_its_checksums() -> None:
    model = OrderBookModel(allow_crossed=SEQUENCE["allow_crossed"])
    current = model.new_leaf()
    assert encode_book(current).hex() == SEQUENCE["initial"]["hex"]
    assert current.checksum() == SEQUENCE["initial"]["checksum"]
    assert [s["step"] for s in SEQUENCE["steps"]] == list(range(1, len(SEQUENCE["steps"]) + 1))
    for step in SEQUENCE["steps"]:
        delta = model.decode_delta(memoryview(bytes.fromhex(step["delta_hex"])))
        assert delta.op.name == step["delta"]["op_name"]
        if step["accepted"]:
            model.apply(current, delta)
        else:
            before = encode_book(current)
            with pytest.raises(ValueError, match=re.escape(step["reason_contains"])):
                model.apply(current, delta)
            assert encode_book(current) == before
        current._check()
        assert encode_book(current).hex() == step["book_hex"], step["step"]
        assert current.checksum() == step["checksum"] == blake2b64(encode_book(current))
        assert step["checksum"].to_bytes(8, "little").hex() == step["digest_hex"]
    assert any(not s["accepted"] for s in SEQUENCE["steps"])
    assert {s["delta"]["op_name"] for s in SEQUENCE["steps"]} == {o.name for o in Op}


def test_stream_replays_through_the_codec() -> None:
    """Decode each datagram, apply DELTAs (CREATE: to the empty book), reassemble snapshots."""
    model = OrderBookModel()
    leaves: dict[int, OrderBook] = {}
    partial: dict[int, bytearray] = {}
    steps = {s["step"]: s for s in SEQUENCE["steps"]}
    expected_seq = 1
    for item in STREAM["datagrams"]:
        decoded = codec.decode_datagram(bytes.fromhex(item["hex"]))
        assert len(decoded.messages) == len(item["messages"])
        for message, described in zip(decoded.messages, item["messages"], strict=True):
            if isinstance(message, Delta):
                assert described["kind"] == "DELTA"
                assert (message.seq, message.leaf_id, message.leaf_seq, message.flags) == (
                    described["seq"], described["leaf_id"], described["leaf_seq"],
                    described["flags"])
                assert message.seq == expected_seq
                expected_seq += 1
                assert bytes(message.payload).hex() == steps[described["step"]]["delta_hex"]
                delta = model.decode_delta(memoryview(message.payload))
                base = (model.new_leaf() if message.flags & DeltaFlag.CREATE
                        else leaves[message.leaf_id])
                leaves[message.leaf_id] = model.apply(base, delta)
                assert leaves[message.leaf_id].checksum() == described["checksum"]
            else:
                assert isinstance(message, Snapshot)
                assert described["kind"] == "SNAPSHOT"
                buffer = partial.setdefault(message.leaf_id, bytearray())
                assert message.fragment_offset == described["fragment_offset"] == len(buffer)
                buffer += message.payload
                assert len(message.payload) == described["payload_length"]
                complete = len(buffer) == message.total_length
                assert complete == described["complete"]
                if complete:
                    whole = bytes(partial.pop(message.leaf_id))
                    snapshot_book = model.decode_leaf(memoryview(whole))
                    assert snapshot_book.checksum() == described["checksum"]
                    if message.leaf_id in leaves:  # the replica verifies byte for byte
                        assert encode_book(leaves[message.leaf_id]) == whole
                    leaves[message.leaf_id] = snapshot_book
    assert not partial
    assert {str(k): {"hex": encode_book(v).hex(), "checksum": v.checksum()}
            for k, v in sorted(leaves.items())} == STREAM["final"]
    assert STREAM["final"]["1"]["checksum"] == SEQUENCE["steps"][-1]["checksum"]
    fragments = [m for d in STREAM["datagrams"] for m in d["messages"]
                 if m["kind"] == "SNAPSHOT" and m["leaf_id"] == 2]
    assert len(fragments) == 3


# --------------------------------------------------------------------------- the document


def test_spec_links_the_profile() -> None:
    spec = (ROOT / "protocol" / "SPEC.md").read_text()
    assert "[ORDERBOOK.md](ORDERBOOK.md)" in spec


def test_constants_table_matches_the_code() -> None:
    rows = {row[0]: int(unquote(row[1]), 0) for row in table_after("constants")}
    assert rows == {
        "BOOK_DELTA_SIZE": book.BOOK_DELTA_SIZE,
        "BOOK_HEADER_SIZE": book._HEADER_SIZE,
        "BOOK_LEVEL_SIZE": book._LEVEL_SIZE,
        "BOOK_VERSION": book._SNAPSHOT_VERSION,
        "CHECKSUM_SIZE": rows["CHECKSUM_SIZE"],
    }
    # CHECKSUM_SIZE is the digest length OrderBook.checksum() uses: only that length
    # reproduces it (BLAKE2b's digest length is a parameter, not a truncation).
    probe = decode_book(bytes.fromhex(VECTORS["book_two_sided"]["hex"]))
    payload = encode_book(probe)
    matching = [n for n in range(1, 65) if int.from_bytes(
        hashlib.blake2b(payload, digest_size=n).digest()[:8], "little") == probe.checksum()]
    assert matching == [rows["CHECKSUM_SIZE"]]


@pytest.mark.parametrize(("marker", "enum"), [("Op", Op), ("Side", Side)])
def test_enum_table_matches_the_code(marker: str, enum: type[Op] | type[Side]) -> None:
    rows = table_after(f"enum: {marker}")
    assert {unquote(row[1]): int(row[0], 0) for row in rows} == {m.name: int(m) for m in enum}


def test_book_flag_table_matches_the_code() -> None:
    rows = table_after("enum: BookFlag")
    assert {unquote(row[1]): int(row[0], 0) for row in rows} == {"TRADE": book._FLAG_TRADE}


@pytest.mark.parametrize(("marker", "code", "names"), [
    ("delta", book._DELTA, BookDelta._fields),
    ("book_header", book._HEADER, HEADER_FIELDS),
    ("level", book._LEVEL, LEVEL_FIELDS),
])
def test_layout_table_matches_the_code(marker: str, code: struct.Struct,
                                       names: tuple[str, ...]) -> None:
    stated = layout_struct(marker)
    assert stated.format == code.format
    assert stated.size == code.size
    assert tuple(name for _, _, name, _ in layout(marker)) == names


def test_vector_field_names_are_the_layout_names() -> None:
    header = [name for _, _, name, _ in layout("book_header")]
    levels = [name for _, _, name, _ in layout("level")]
    for vector in BOOKS:
        if vector["valid"]:
            assert list(vector["fields"]) == [*header, "bids", "asks"]
            for level in vector["fields"]["bids"] + vector["fields"]["asks"]:
                assert list(level) == levels


def test_diagrams_show_every_field_at_its_offset() -> None:
    """Each diagram row starting at byte N names the field the layout table puts at N."""
    for heading, marker in (("## 4. Delta payload", "delta"), ("### 5.1 Header", "book_header"),
                            ("### 5.2 Levels", "level")):
        diagram = section(heading).split("```\n", 2)[1]
        rows = {int(m.group(1)): m.group(2) for m in
                re.finditer(r"^\s*(\d+) \|(.*)\|?\s*$", diagram, re.M)}
        total = sum(size for _, size, _, _ in layout(marker))
        for offset, _, name, _ in layout(marker):
            row = rows[offset - offset % 4]
            assert re.search(rf"\b{name}\b", row), (marker, name, row)
        assert max(rows) == (total - 1) - (total - 1) % 4, f"{marker}: rows up to its end"


def offset_formula(cell: str) -> str:
    return cell.replace("\N{MULTIPLICATION SIGN}", "*").replace("\N{MINUS SIGN}", "-")


def level_count(payload: bytes) -> int:
    return max(0, (len(payload) - book._HEADER_SIZE) // book._LEVEL_SIZE)


@pytest.mark.parametrize(("marker", "vectors"), [("errors: book", BOOKS),
                                                 ("errors: delta", DELTAS)])
def test_rule_tables_cover_every_invalid_vector(marker: str,
                                                vectors: list[dict[str, Any]]) -> None:
    """Each invalid vector's field and offset is a row of its rule table, and each row is
    exercised by some vector (the rules are complete, and none is untested)."""
    rows = table_after(marker)
    used: set[str] = set()
    for vector in vectors:
        if vector["valid"]:
            continue
        error = vector["error"]
        payload = bytes.fromhex(vector["hex"])
        matches = []
        for rule, _check, field_cell, offset_cell in rows:
            if unquote(field_cell) != error["field"]:
                continue
            formula = offset_formula(offset_cell)
            assert re.fullmatch(r"[\d i+*]+", formula), offset_cell
            candidates = range(level_count(payload)) if "i" in formula else range(1)
            if any(eval(formula, {}, {"i": i}) == error["offset"] for i in candidates):
                matches.append(rule)
        assert matches, f"{vector['name']}: no rule gives {error['field']}@{error['offset']}"
        used.update(matches)
    assert used == {row[0] for row in rows}


def test_rule_order_is_the_decoders() -> None:
    """Rows are numbered in order, and the multi-fault vectors the text names report the
    rule the document says comes first."""
    for marker, prefix in (("errors: book", "B"), ("errors: delta", "D")):
        rules = [row[0] for row in table_after(marker)]
        assert rules == [f"{prefix}{n}" for n in range(1, len(rules) + 1)]
    text = section("### 5.4 Decoding rules")
    for name in ("book_bids_checked_before_asks", "book_order_checked_before_quantity",
                 "book_crossed_after_level_checks"):
        assert f"`{name}`" in text
        assert not VECTORS[name]["valid"]
    assert VECTORS["book_bids_checked_before_asks"]["error"]["field"] == "level.orders"
    assert VECTORS["book_order_checked_before_quantity"]["error"]["field"] == (
        "level.price_ticks")
    assert VECTORS["book_quantity_checked_before_orders"]["error"]["field"] == "level.quantity"
    assert VECTORS["delta_op_checked_before_side"]["error"]["field"] == "op"
    assert "240518168562" in text
    assert VECTORS["book_counts_overflow"]["error"]["reason_contains"] == "need 240518168562"


def hex_blocks() -> list[tuple[str, int | None, str]]:
    return [(m.group(1), int(m.group(2)) if m.group(2) else None, m.group(3))
            for m in HEX_BLOCK.finditer(DOC)]


def test_document_has_worked_examples() -> None:
    assert {(name, step) for name, step, _ in hex_blocks()} >= {("delta_add", None),
                                                                 ("sequence", 15)}


@pytest.mark.parametrize(("name", "step", "content"), hex_blocks(),
                         ids=[f"{n}-{s}" for n, s, _ in hex_blocks()])
def test_hex_block_matches_vector(name: str, step: int | None, content: str) -> None:
    data = bytes.fromhex(re.sub(r"\s+", "", content))
    vector = VECTORS[name]
    expected = vector["steps"][step - 1]["book_hex"] if step else vector["hex"]
    assert data.hex() == expected


def test_example_tables_state_the_bytes() -> None:
    """The byte tables of section 9 agree with the vectors at every offset they name."""
    for heading, payload in (
        ("### 9.1 A delta: ADD a bid of 300 at 10050", VECTORS["delta_add"]["hex"]),
        ("### 9.2 A book: one bid, one ask, a trade", SEQUENCE["steps"][14]["book_hex"]),
    ):
        raw = bytes.fromhex(payload)
        rows = [line.strip().strip("|").split("|") for line in section(heading).splitlines()
                if re.match(r"^\| \d+ \|", line)]
        assert rows
        for cells in rows:
            offset = int(cells[0])
            shown = bytes.fromhex(unquote(cells[1].strip()).replace("\N{HORIZONTAL ELLIPSIS}",
                                                                    "").strip())
            assert raw[offset : offset + len(shown)] == shown, cells


def test_checksum_section_states_the_construction() -> None:
    text = section("## 6. Checksum")
    assert '`int.from_bytes(hashlib.blake2b(payload, digest_size=8).digest(), "little")`' in text
    empty = OrderBook()
    assert f"`{empty.checksum():#018x}`" in text
    digest = hashlib.blake2b(encode_book(empty), digest_size=8).digest()
    assert f"digest `{digest.hex(' ')}`" in text
    assert SEQUENCE["initial"]["checksum"] == empty.checksum()
    example = section("### 9.2 A book: one bid, one ask, a trade")
    step = SEQUENCE["steps"][14]
    assert f"`{step['checksum']:#018x}`" in example
    assert f"`{bytes.fromhex(step['digest_hex']).hex(' ')}`" in example


def test_sequence_table_matches_the_vector() -> None:
    rows = table_after("sequence")
    assert len(rows) == len(SEQUENCE["steps"])
    for row, step in zip(rows, SEQUENCE["steps"], strict=True):
        number, delta, result, checksum = row
        d = step["delta"]
        assert int(number) == step["step"]
        assert delta == f"{d['op_name']} {d['side_name']} {d['price_ticks']} x {d['quantity']}"
        assert result.startswith("accepted" if step["accepted"] else "rejected"), row
        if not step["accepted"]:
            assert step["reason_contains"] in result
        assert int(unquote(checksum), 16) == step["checksum"]


def test_stream_section_states_its_numbers() -> None:
    text = section("### 9.4 The same deltas as a stream")
    fragments = [m for d in STREAM["datagrams"] for m in d["messages"]
                 if m["kind"] == "SNAPSHOT" and m["leaf_id"] == 2]
    offsets = [m["fragment_offset"] for m in fragments]
    assert f"offsets {offsets[0]}, {offsets[1]} and {offsets[2]}" in text
    assert f"{fragments[0]['total_length']}-byte book" in text
    assert f"`{STREAM['final']['2']['checksum']:#018x}`" in text
    assert f"`{STREAM['final']['1']['checksum']:#018x}`" in text
    accepted = sum(s["accepted"] for s in SEQUENCE["steps"])
    assert f"the {accepted} accepted deltas" in text


def test_every_rejection_reason_in_the_apply_rules() -> None:
    """Section 4.2 states each kind of rejection the sequence exercises."""
    text = " ".join(section("### 4.2 Applying a delta").split())
    for phrase in ("reject if q ≤ 0", "best ask", "best bid", "does not exist",
                   "exceeds its `quantity`", "2^63 \N{MINUS SIGN} 1",
                   "2^32 \N{MINUS SIGN} 1", "2^64 \N{MINUS SIGN} 1",
                   "**or the level has 1 order**", "The trade state is kept"):
        assert phrase in text, phrase
