"""protocol/SPEC.md cannot drift from grapevine/wire.py and protocol/vectors/.

Checks: every ```hex vector=NAME``` block equals the vector's bytes; every wire field name
appears in the spec; the constants table, the enum tables (kinds and flags) and the layout
tables (offset, size, field, type) match the construct definitions.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from spec_text import markdown_table, unquote

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the venv may not have grapevine installed
    sys.path.insert(0, str(ROOT))

from grapevine import codec, wire  # noqa: E402

SPEC_PATH = ROOT / "protocol" / "SPEC.md"
SPEC = SPEC_PATH.read_text()
VECTORS = {p.stem: json.loads(p.read_text())
           for p in sorted((ROOT / "protocol" / "vectors").glob("*.json"))}

HEX_BLOCK = re.compile(r"^```hex vector=(\S+)[^\n]*\n(.*?)^```", re.M | re.S)
TYPE_SIZES = {"u8": 1, "u16": 2, "u32": 4, "u64": 8}


def hex_blocks(text: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in HEX_BLOCK.finditer(text)]


def block_bytes(content: str) -> bytes:
    cleaned = re.sub(r"\s+", "", content)
    assert re.fullmatch(r"(?:[0-9a-fA-F]{2})*", cleaned), "hex blocks hold only hex digits"
    return bytes.fromhex(cleaned)


def table_after(marker: str, text: str = SPEC) -> list[list[str]]:
    return markdown_table(text, marker)



def parse_int(cell: str) -> int:
    return int(unquote(cell).replace(",", ""), 0)


def field_layout(*structs: Any) -> list[tuple[int, int, str]]:
    out, offset = [], 0
    for struct_ in structs:
        for sub in struct_.subcons:
            size = sub.sizeof()
            out.append((offset, size, sub.name))
            offset += size
    return out


# What follows a layout's fixed fields: nothing, a ``payload`` row (opaque bytes to the end
# of the body) or an ``entries`` row (records of a fixed layout to the end of the body).
PAYLOAD = ("payload", "bytes")
ENTRIES = ("entries", f"TouchedEntry[(length \N{MINUS SIGN} {{n}}) / {wire.TouchedEntry.sizeof()}]")

LAYOUTS: dict[str, tuple[list[tuple[int, int, str]], tuple[str, str] | None]] = {
    # marker: (fixed fields from wire.py, the variable-length row that ends it, if any)
    "header": (field_layout(wire.Header), None),
    "message_header": (field_layout(wire.MessageHeader), None),
    "delta": (field_layout(wire.MessageHeader, wire.DeltaFields), PAYLOAD),
    "snapshot": (field_layout(wire.MessageHeader, wire.SnapshotFields), PAYLOAD),
    "heartbeat": (field_layout(wire.MessageHeader, wire.HeartbeatFields), None),
    "end_of_session": (field_layout(wire.MessageHeader, wire.EndOfSessionFields), None),
    "touched": (field_layout(wire.MessageHeader, wire.TouchedFields), ENTRIES),
    "touched_entry": (field_layout(wire.TouchedEntry), None),
    "auth": (field_layout(wire.AuthTrailer), None),
    "retransmit": (field_layout(wire.RetransmitFields), None),
    "repeater_hello": (field_layout(wire.RepeaterHello), None),
}


# --------------------------------------------------------------------------- examples


def test_spec_has_worked_examples() -> None:
    names = [name for name, _ in hex_blocks(SPEC)]
    assert len(names) >= 8
    assert len(set(names)) == len(names)
    assert any(not VECTORS[n]["valid"] for n in names if n in VECTORS), "show an invalid one"


@pytest.mark.parametrize(("name", "content"), hex_blocks(SPEC),
                         ids=[name for name, _ in hex_blocks(SPEC)])
def test_hex_block_matches_vector(name: str, content: str) -> None:
    assert name in VECTORS, f"SPEC.md names unknown vector {name!r}"
    assert block_bytes(content) == bytes.fromhex(VECTORS[name]["hex"])


def test_hex_block_parser_catches_a_changed_byte() -> None:
    name, content = hex_blocks(SPEC)[0]
    broken = SPEC.replace(content, content.replace("47", "48", 1), 1)
    (_, changed), *_ = hex_blocks(broken)
    assert block_bytes(changed) != bytes.fromhex(VECTORS[name]["hex"])


def test_auth_example_tag_is_the_documented_mac() -> None:
    """Section 9's construction and published test key make the tags of the auth vectors."""
    section = SPEC.split("## 9. Authentication", 1)[1].split("## 10.", 1)[0]
    assert "`hashlib.blake2b(covered, key=secret, digest_size=16).digest()`" in section
    key = re.search(r"test key\s+`([0-9a-f]+)`", section)
    assert key is not None
    secret = bytes.fromhex(key.group(1))
    assert secret == bytes(range(32))
    for name in ("auth_trailer", "auth_valid"):
        raw = bytes.fromhex(VECTORS[name]["hex"])
        assert raw[5] & wire.HeaderFlag.AUTH
        assert int.from_bytes(raw[-20:-16], "little") == 1
        expected = hashlib.blake2b(raw[:-16], key=secret, digest_size=16).digest()
        assert raw[-16:] == expected
        assert VECTORS[name]["auth"]["key_hex"] == secret.hex()


def test_auth_section_names_the_api_and_counters() -> None:
    section = SPEC.split("## 9. Authentication", 1)[1].split("## 10.", 1)[0]
    for name in ("`KeyRing`", "`Publisher.set_keys", "`Subscriber.set_keys",
                 "`PublisherConfig(keys=", "`SubscriberConfig(keys=", "replay_window_s",
                 "`GRAPEVINE_KEYS`", "`grapevine keygen", "`unauthenticated`",
                 "`unknown_keys`", "`bad_tags`", "`replayed`", "`KEY_ID:SECRET`"):
        assert name in section, name
    for name in VECTORS:
        if name.startswith("auth_") and "auth" in VECTORS[name]:
            assert f"`{name}`" in SPEC, name


# --------------------------------------------------------------------------- names and values


def test_every_wire_field_name_appears_in_spec() -> None:
    names = {sub.name for s in (wire.Header, wire.MessageHeader, wire.DeltaFields,
                                wire.SnapshotFields, wire.HeartbeatFields, wire.TouchedFields,
                                wire.TouchedEntry, wire.AuthTrailer)
             for sub in s.subcons}
    missing = sorted(n for n in names if f"`{n}`" not in SPEC)
    assert not missing, f"SPEC.md does not mention {missing}"


@pytest.mark.parametrize("enum", [wire.MessageKind, wire.HeaderFlag, wire.DeltaFlag,
                                  wire.SnapshotFlag, wire.RetransmitKind],
                         ids=lambda e: e.__name__)
def test_enum_table_matches_wire(enum: Any) -> None:
    rows = table_after(f"enum: {enum.__name__}")
    stated = {unquote(row[1]): parse_int(row[0]) for row in rows}
    assert stated == {member.name: int(member) for member in enum}


def test_enum_values_stated_elsewhere_agree() -> None:
    """Any table row anywhere that pairs a kind/flag name with a number must be right."""
    known = {m.name: int(m) for e in (wire.MessageKind, wire.HeaderFlag, wire.DeltaFlag,
                                      wire.SnapshotFlag) for m in e}
    for line in SPEC.splitlines():
        cells = [unquote(c.strip()) for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 2:
            continue
        for a, b in ((cells[0], cells[1]), (cells[1], cells[0])):
            if a in known and re.fullmatch(r"0x[0-9a-fA-F]+|\d+", b):
                assert int(b, 0) == known[a], line
    for name, value in known.items():
        if name in {m.name for m in wire.MessageKind}:
            assert f"{name} (kind {value})" in SPEC


def test_constants_table_matches_wire() -> None:
    rows = {row[0]: row[1] for row in table_after("constants")}
    expected = {
        "VERSION": wire.VERSION,
        "HEADER_SIZE": codec.HEADER_SIZE,
        "MESSAGE_HEADER_SIZE": codec.MESSAGE_HEADER_SIZE,
        "DELTA_OVERHEAD": codec.DELTA_OVERHEAD,
        "SNAPSHOT_OVERHEAD": codec.SNAPSHOT_OVERHEAD,
        "TOUCHED_OVERHEAD": codec.TOUCHED_OVERHEAD,
        "TOUCHED_ENTRY_SIZE": codec.TOUCHED_ENTRY_SIZE,
        "AUTH_TRAILER_SIZE": wire.AUTH_TRAILER_SIZE,
        "DEFAULT_DATAGRAM_SIZE": wire.DEFAULT_DATAGRAM_SIZE,
        "MAX_DATAGRAM_SIZE": wire.MAX_DATAGRAM_SIZE,
        "MAX_LEAF_ID": wire.MAX_LEAF_ID,
    }
    for name, value in expected.items():
        assert parse_int(rows[name]) == value, name
    magic = re.search(r"`([0-9a-f ]+)`", rows["MAGIC"])
    assert magic is not None
    assert bytes.fromhex(magic.group(1)) == wire.MAGIC
    assert f'"{wire.MAGIC.decode()}"' in rows["MAGIC"]


@pytest.mark.parametrize("marker", sorted(LAYOUTS))
def test_layout_table_matches_wire(marker: str) -> None:
    fixed, tail = LAYOUTS[marker]
    rows = table_after(f"layout: {marker}")
    stated = []
    for row in rows[: len(fixed)]:
        offset, size, name, kind = int(row[0]), int(row[1]), unquote(row[2]), row[3]
        if kind in TYPE_SIZES:
            assert TYPE_SIZES[kind] == size, row
        else:
            assert kind == f"bytes[{size}]", row
        stated.append((offset, size, name))
    assert stated == fixed
    if tail is not None:
        assert len(rows) == len(fixed) + 1
        variable = rows[-1]
        end = fixed[-1][0] + fixed[-1][1]
        body_fixed = end - codec.MESSAGE_HEADER_SIZE
        name, kind = tail
        assert (int(variable[0]), unquote(variable[2])) == (end, name)
        assert variable[1] == f"length \N{MINUS SIGN} {body_fixed}"
        assert variable[3] == kind.format(n=body_fixed)
    else:
        assert len(rows) == len(fixed)


def test_diagrams_show_every_field_at_its_offset() -> None:
    """Each ASCII diagram row starting at byte N names the field wire.py puts at N."""
    sections = {
        "## 5. Datagram header": field_layout(wire.Header),
        "### 6.2 DELTA": field_layout(wire.MessageHeader, wire.DeltaFields),
        "### 6.3 SNAPSHOT": field_layout(wire.MessageHeader, wire.SnapshotFields),
        "### 6.4 HEARTBEAT": field_layout(wire.MessageHeader, wire.HeartbeatFields),
        "### 6.5 END_OF_SESSION": field_layout(wire.MessageHeader),
        "### 6.6 TOUCHED": field_layout(wire.MessageHeader, wire.TouchedFields),
        "Each TOUCHED entry:": field_layout(wire.TouchedEntry),
        "## 9. Authentication": field_layout(wire.AuthTrailer),
        "## 15. Retransmission on request": field_layout(wire.RetransmitFields),
    }
    for heading, layout in sections.items():
        body = SPEC.split(heading, 1)[1]
        diagram = body.split("```\n", 2)[1]
        rows = {int(m.group(1)): m.group(2) for m in
                re.finditer(r"^\s*(\d+) \|(.*)\|\s*$", diagram, re.M)}
        for offset, _, name in layout:
            row_start = offset - offset % 4
            assert re.search(rf"\b{name}\b", rows[row_start]), (heading, name, rows[row_start])


def test_validation_rules_name_every_checked_field() -> None:
    section = SPEC.split("## 10. Validation rules", 1)[1].split("## 11.", 1)[0]
    for vector in VECTORS.values():
        if not vector["valid"]:
            field = re.sub(r"\[\d+\]", "[i]", vector["error"]["field"])
            assert f"(`{field}`" in section or f"`{field}`)" in section or (
                f"`{field}`," in section), field


def test_message_kind_table_states_minimum_length_and_sequencing() -> None:
    rows = {unquote(row[1]): row for row in table_after("enum: MessageKind")}
    minimum = {"DELTA": codec.DELTA_OVERHEAD - codec.MESSAGE_HEADER_SIZE,
               "SNAPSHOT": codec.SNAPSHOT_OVERHEAD - codec.MESSAGE_HEADER_SIZE,
               "HEARTBEAT": wire.HeartbeatFields.sizeof(), "END_OF_SESSION": 0,
               "TOUCHED": codec.TOUCHED_OVERHEAD - codec.MESSAGE_HEADER_SIZE}
    assert {name: int(row[2]) for name, row in rows.items()} == minimum
    assert {name for name, row in rows.items() if row[3] == "yes"} == {"DELTA"}
    last = max(wire.MessageKind)
    assert f"Kinds 0 and {last + 1} to 255 are unknown" in SPEC


def test_touched_sections_are_present() -> None:
    section_12 = SPEC.split("## 12. Receiver algorithm", 1)[1].split("## 13.", 1)[0]
    assert "### (k) TOUCHED summaries" in section_12
    assert "on_touched(t):" in section_12
    for name in ("`unresolved`", "`chain`", "`saved`"):
        assert f"| {name} |" in section_12
    section_11 = SPEC.split("## 11. Publisher behaviour", 1)[1].split("## 12.", 1)[0]
    assert "TOUCHED" in section_11
    assert "112 for" in section_11
    assert "TOUCHED" in SPEC.split("## 13.", 1)[1].split("## 14.", 1)[0]


def test_error_offset_convention_covers_every_vector_field() -> None:
    """Section 10's offset table says where each field an invalid vector names points."""
    section = SPEC.split("## 10. Validation rules", 1)[1].split("## 11.", 1)[0]
    assert "**Error field and offset.**" in section
    table = section.split("**Error field and offset.**", 1)[1].split("\n\n| ", 1)[1]
    rows = [line for line in ("| " + table).splitlines() if line.startswith("|")][2:]
    named = {name for row in rows for name in re.findall(r"`([^`]+)`", row.split("|")[1])}
    fixed = {f"messages[i].{sub.name}" for s in (wire.MessageHeader, wire.DeltaFields,
                                                   wire.SnapshotFields, wire.TouchedFields)
             for sub in s.subcons}
    assert "a fixed message field" in section
    for vector in VECTORS.values():
        if not vector["valid"]:
            field = re.sub(r"\[\d+\]", "[i]", vector["error"]["field"])
            assert field in named or field in fixed, field
    # The header-field row lists those fields and their offsets, in the same order.
    header_row = next(row for row in rows if "a header field" in row)
    names = re.findall(r"`([^`]+)`", header_row.split("|")[1])
    offsets = {n: o for o, _, n in field_layout(wire.Header)}
    assert [int(o) for o in re.findall(r"\d+", header_row.split("|")[2])] == [
        offsets[n] for n in names]
    assert {v["error"]["field"] for v in VECTORS.values() if not v["valid"]} & set(
        offsets) <= set(names)
