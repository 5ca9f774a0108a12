-- Wireshark dissector for Grapevine v1 (protocol/SPEC.md) and its order-book profile
-- (protocol/ORDERBOOK.md). Tested with Wireshark 4.0 (Lua 5.2); written to need no bit library.
--
--   wireshark -X lua_script:tools/wireshark/grapevine.lua capture.pcap
--   tshark -X lua_script:tools/wireshark/grapevine.lua -r capture.pcap -V
--   (or copy it into the personal Lua plugins folder, Help > About > Folders)
--
-- It registers a heuristic UDP dissector (grapevine_udp) that claims any datagram starting
-- with the magic "GRPV" and version 1, whatever its port, and dissects a fixed UDP port too
-- when the preference grapevine.udp_port is set (then datagrams with another magic or version
-- are shown as malformed instead of being left to other dissectors). Every field of every
-- message kind is shown as grapevine.<kind>.<field>, with the field names of the named tuples
-- in grapevine/codec.py (grapevine.header.*, grapevine.delta.seq, grapevine.snapshot.as_of_seq,
-- grapevine.touched.entries.leaf_id, grapevine.unknown.body, grapevine.auth.tag, ...), and
-- every datagram is checked with the rules of SPEC.md section 10 in their order: the first
-- rule that fails is reported as expert info and as grapevine.malformed.field / .offset,
-- exactly the field and offset the reference decoder (grapevine.codec.decode_datagram)
-- reports. Retransmission packets (section 15, magic "GRPR": REQUEST and UNAVAILABLE) are
-- shown as grapevine.retransmit.<field> and checked as grapevine._retransmit's
-- decode_retransmit checks them.
--
-- Payloads are opaque to Grapevine. The preference grapevine.payload_model decodes them as
-- order-book deltas and books (ORDERBOOK.md): "book" always (reporting what the order-book
-- model rejects under grapevine.payload_error.*), "auto" (the default) when a payload has the
-- shape of one (a 26-byte delta with a valid op and side; a book whose header's counts give
-- exactly the snapshot's total_length), "opaque" never. Snapshot fragments are put together
-- as grapevine decode --model book does (in order, keyed by stream, session, leaf, leaf_seq,
-- as_of_seq and total_length): the fragment that completes a book shows it, on a tab of its
-- own, with its checksum (BLAKE2b-64, ORDERBOOK.md section 6) unless grapevine.checksum is
-- off. grapevine.allow_crossed (on by default, as grapevine decode shows crossed books)
-- decides whether a crossed book is rejected (rule B10) or only warned about.
--
-- The dissector never raises a Lua error on any input: everything it reads is
-- bounds-checked first, and an unexpected failure becomes expert info
-- (grapevine.internal_error). tests/test_wireshark.py compares its every field with
-- grapevine's decoders.

local grapevine = Proto("grapevine", "Grapevine")

-- ------------------------------------------------------------------------- constants

local MAGIC = "GRPV"
local RETRANSMIT_MAGIC = "GRPR" -- retransmission packets, SPEC.md section 15
local RETRANSMIT_SIZE = 60
local RETRANSMIT_KINDS = { [1] = "REQUEST", [2] = "UNAVAILABLE" }
-- (offset, size, name) of each field of a retransmission packet, in order.
local RETRANSMIT_FIELDS = {
    { 0, 4, "magic" }, { 4, 1, "version" }, { 5, 1, "flags" }, { 6, 1, "kind" },
    { 7, 1, "reserved" }, { 8, 4, "stream_id" }, { 12, 8, "session_id" },
    { 20, 8, "first_seq" }, { 28, 8, "end_seq" }, { 36, 8, "available_first" },
    { 44, 8, "available_end" }, { 52, 8, "send_time_ns" },
}
local VERSION = 1
local HEADER_SIZE = 36
local MESSAGE_HEADER_SIZE = 4
local AUTH_TRAILER_SIZE = 20
local MAX_DATAGRAM_SIZE = 65507
local DELTA_FIXED = 12      -- leaf_id, leaf_seq
local SNAPSHOT_FIXED = 44
local HEARTBEAT_FIXED = 4
local TOUCHED_FIXED = 16
local TOUCHED_ENTRY_SIZE = 12

local KIND_DELTA, KIND_SNAPSHOT, KIND_HEARTBEAT, KIND_END_OF_SESSION, KIND_TOUCHED = 1, 2, 3, 4, 5
local KIND_NAMES = {
    [KIND_DELTA] = "DELTA", [KIND_SNAPSHOT] = "SNAPSHOT", [KIND_HEARTBEAT] = "HEARTBEAT",
    [KIND_END_OF_SESSION] = "END_OF_SESSION", [KIND_TOUCHED] = "TOUCHED",
}
local FLAG_AUTH = 0x01
local DELTA_CREATE, DELTA_DELETE = 0x01, 0x02
local SNAPSHOT_DELETED, SNAPSHOT_LAST = 0x01, 0x02

local BOOK_DELTA_SIZE = 26
local BOOK_HEADER_SIZE = 42
local BOOK_LEVEL_SIZE = 28
local BOOK_VERSION = 1
local BOOK_FLAG_TRADE = 0x01
local OP_NAMES = { [1] = "ADD", [2] = "REDUCE", [3] = "REMOVE", [4] = "CLEAR_SIDE",
                   [5] = "CLEAR_BOOK", [6] = "TRADE" }
local SIDE_NAMES = { [0] = "BID", [1] = "ASK" }
-- grapevine decode --model book's limits on snapshots being put together.
local MAX_PENDING = 64
local MAX_REASSEMBLY = 64 * 1024 * 1024

local U64_MAX = UInt64.max()
local I64_ZERO = Int64.new(0)
local I64_ONE = Int64.new(1)
local U64_ZERO = UInt64.new(0)

-- ------------------------------------------------------------------------- fields

local f = {}
local function field(key, value)
    f[key] = value
end

-- The datagram header (SPEC.md section 5).
field("header", ProtoField.none("grapevine.header", "Header"))
field("magic", ProtoField.bytes("grapevine.header.magic", "magic"))
field("version", ProtoField.uint8("grapevine.header.version", "version", base.DEC))
field("header_flags", ProtoField.uint8("grapevine.header.flags", "flags", base.HEX))
field("header_flags_auth", ProtoField.bool("grapevine.header.flags.auth", "AUTH", 8, nil,
                                           FLAG_AUTH))
field("message_count", ProtoField.uint16("grapevine.header.message_count", "message_count",
                                         base.DEC))
field("stream_id", ProtoField.uint32("grapevine.header.stream_id", "stream_id", base.DEC))
field("session_id", ProtoField.uint64("grapevine.header.session_id", "session_id", base.HEX))
field("sequence", ProtoField.uint64("grapevine.header.sequence", "sequence", base.DEC))
field("send_time_ns", ProtoField.uint64("grapevine.header.send_time_ns", "send_time_ns",
                                        base.DEC))
field("send_time", ProtoField.absolute_time("grapevine.header.send_time", "send_time (UTC)",
                                            base.UTC))

-- Message framing (section 6.1); the flags byte is shown under each kind's own name.
field("message", ProtoField.none("grapevine.message", "Message"))
field("message_index", ProtoField.uint16("grapevine.message.index", "index", base.DEC))
field("message_kind", ProtoField.uint8("grapevine.message.kind", "kind", base.DEC, KIND_NAMES))
field("message_flags", ProtoField.uint8("grapevine.message.flags", "flags", base.HEX))
field("message_length", ProtoField.uint16("grapevine.message.length", "length", base.DEC))
field("message_extra", ProtoField.bytes("grapevine.message.extra",
                                        "extra body bytes (ignored)"))

-- DELTA (section 6.2): codec.Delta(seq, leaf_id, leaf_seq, flags, payload).
field("delta_seq", ProtoField.uint64("grapevine.delta.seq", "seq", base.DEC))
field("delta_leaf_id", ProtoField.uint32("grapevine.delta.leaf_id", "leaf_id", base.DEC))
field("delta_leaf_seq", ProtoField.uint64("grapevine.delta.leaf_seq", "leaf_seq", base.DEC))
field("delta_flags", ProtoField.uint8("grapevine.delta.flags", "flags", base.HEX))
field("delta_flags_create", ProtoField.bool("grapevine.delta.flags.create", "CREATE", 8, nil,
                                            DELTA_CREATE))
field("delta_flags_delete", ProtoField.bool("grapevine.delta.flags.delete", "DELETE", 8, nil,
                                            DELTA_DELETE))
field("delta_payload", ProtoField.bytes("grapevine.delta.payload", "payload"))

-- SNAPSHOT (section 6.3): codec.Snapshot.
local SNAPSHOT_NAMES = { "leaf_id", "range_start", "cycle_id", "cycle_position",
                         "cycle_count", "leaf_seq", "as_of_seq", "total_length",
                         "fragment_offset" }
local SNAPSHOT_SIZES = { 4, 4, 4, 4, 4, 8, 8, 4, 4 }
for index, name in ipairs(SNAPSHOT_NAMES) do
    local abbr = "grapevine.snapshot." .. name
    if SNAPSHOT_SIZES[index] == 8 then
        field("snapshot_" .. name, ProtoField.uint64(abbr, name, base.DEC))
    else
        field("snapshot_" .. name, ProtoField.uint32(abbr, name, base.DEC))
    end
end
field("snapshot_flags", ProtoField.uint8("grapevine.snapshot.flags", "flags", base.HEX))
field("snapshot_flags_deleted", ProtoField.bool("grapevine.snapshot.flags.deleted", "DELETED",
                                                8, nil, SNAPSHOT_DELETED))
field("snapshot_flags_last", ProtoField.bool("grapevine.snapshot.flags.last", "LAST", 8, nil,
                                             SNAPSHOT_LAST))
field("snapshot_payload", ProtoField.bytes("grapevine.snapshot.payload", "payload"))

-- HEARTBEAT (6.4), END_OF_SESSION (6.5), TOUCHED (6.6), unknown kinds (8), auth (9).
field("heartbeat_interval_ms", ProtoField.uint32("grapevine.heartbeat.interval_ms",
                                                 "interval_ms", base.DEC))
field("end_of_session", ProtoField.none("grapevine.end_of_session", "END_OF_SESSION"))
field("touched_first_seq", ProtoField.uint64("grapevine.touched.first_seq", "first_seq",
                                             base.DEC))
field("touched_end_seq", ProtoField.uint64("grapevine.touched.end_seq", "end_seq", base.DEC))
field("touched_entries", ProtoField.uint16("grapevine.touched.entries", "entries", base.DEC))
field("touched_entry", ProtoField.none("grapevine.touched.entries.entry", "entry"))
field("touched_entry_leaf_id", ProtoField.uint32("grapevine.touched.entries.leaf_id",
                                                 "leaf_id", base.DEC))
field("touched_entry_leaf_seq", ProtoField.uint64("grapevine.touched.entries.leaf_seq",
                                                  "leaf_seq", base.DEC))
field("unknown_kind", ProtoField.uint8("grapevine.unknown.kind", "kind", base.DEC))
field("unknown_flags", ProtoField.uint8("grapevine.unknown.flags", "flags", base.HEX))
field("unknown_body", ProtoField.bytes("grapevine.unknown.body", "body"))
field("auth", ProtoField.none("grapevine.auth", "Authentication trailer"))
field("auth_key_id", ProtoField.uint32("grapevine.auth.key_id", "key_id", base.DEC))
field("auth_tag", ProtoField.bytes("grapevine.auth.tag", "tag"))

-- Retransmission packets (section 15): grapevine._retransmit.RetransmitMessage's fields.
field("retransmit", ProtoField.none("grapevine.retransmit", "Retransmission packet"))
for _, spec in ipairs(RETRANSMIT_FIELDS) do
    local size, name = spec[2], spec[3]
    local abbr = "grapevine.retransmit." .. name
    local value
    if name == "magic" then
        value = ProtoField.bytes(abbr, name)
    elseif name == "kind" then
        value = ProtoField.uint8(abbr, name, base.DEC, RETRANSMIT_KINDS)
    elseif name == "flags" then
        value = ProtoField.uint8(abbr, name, base.HEX)
    elseif size == 1 then
        value = ProtoField.uint8(abbr, name, base.DEC)
    elseif size == 4 then
        value = ProtoField.uint32(abbr, name, base.DEC)
    else
        value = ProtoField.uint64(abbr, name, name == "session_id" and base.HEX or base.DEC)
    end
    field("retransmit_" .. name, value)
end
field("retransmit_flags_auth", ProtoField.bool("grapevine.retransmit.flags.auth", "AUTH", 8,
                                               nil, FLAG_AUTH))

-- A datagram that fails SPEC.md section 10: the reference decoder's DecodeError.
field("malformed_error", ProtoField.string("grapevine.malformed.error", "error"))
field("malformed_field", ProtoField.string("grapevine.malformed.field", "field"))
field("malformed_offset", ProtoField.uint32("grapevine.malformed.offset", "offset", base.DEC))
field("undecoded", ProtoField.bytes("grapevine.undecoded", "not decoded"))

-- Order-book payloads (ORDERBOOK.md): book.BookDelta and the book payload.
field("book_delta", ProtoField.none("grapevine.book_delta", "Order-book delta"))
field("book_delta_op", ProtoField.uint8("grapevine.book_delta.op", "op", base.DEC, OP_NAMES))
field("book_delta_side", ProtoField.uint8("grapevine.book_delta.side", "side", base.DEC,
                                          SIDE_NAMES))
field("book_delta_price_ticks", ProtoField.int64("grapevine.book_delta.price_ticks",
                                                 "price_ticks", base.DEC))
field("book_delta_quantity", ProtoField.int64("grapevine.book_delta.quantity", "quantity",
                                              base.DEC))
field("book_delta_time_ns", ProtoField.uint64("grapevine.book_delta.time_ns", "time_ns",
                                              base.DEC))
field("book", ProtoField.none("grapevine.book", "Order book"))
field("book_version", ProtoField.uint8("grapevine.book.version", "version", base.DEC))
field("book_flags", ProtoField.uint8("grapevine.book.flags", "flags", base.HEX))
field("book_flags_trade", ProtoField.bool("grapevine.book.flags.trade", "TRADE", 8, nil,
                                          BOOK_FLAG_TRADE))
field("book_n_bids", ProtoField.uint32("grapevine.book.n_bids", "n_bids", base.DEC))
field("book_n_asks", ProtoField.uint32("grapevine.book.n_asks", "n_asks", base.DEC))
field("book_last_trade_price", ProtoField.int64("grapevine.book.last_trade_price",
                                                "last_trade_price", base.DEC))
field("book_last_trade_qty", ProtoField.int64("grapevine.book.last_trade_qty",
                                              "last_trade_qty", base.DEC))
field("book_last_trade_time_ns", ProtoField.uint64("grapevine.book.last_trade_time_ns",
                                                   "last_trade_time_ns", base.DEC))
field("book_traded_volume", ProtoField.uint64("grapevine.book.traded_volume",
                                              "traded_volume", base.DEC))
field("book_checksum", ProtoField.uint64("grapevine.book.checksum", "checksum", base.HEX))
field("book_crossed", ProtoField.bool("grapevine.book.crossed", "crossed"))
for _, side in ipairs({ "bids", "asks" }) do
    field("book_" .. side, ProtoField.none("grapevine.book." .. side, side))
    field("book_" .. side .. "_level", ProtoField.none("grapevine.book." .. side .. ".level",
                                                       "level"))
    field("book_" .. side .. "_price_ticks",
          ProtoField.int64("grapevine.book." .. side .. ".price_ticks", "price_ticks", base.DEC))
    field("book_" .. side .. "_quantity",
          ProtoField.int64("grapevine.book." .. side .. ".quantity", "quantity", base.DEC))
    field("book_" .. side .. "_orders",
          ProtoField.uint32("grapevine.book." .. side .. ".orders", "orders", base.DEC))
    field("book_" .. side .. "_time_ns",
          ProtoField.uint64("grapevine.book." .. side .. ".time_ns", "time_ns", base.DEC))
end
-- A payload the order-book model rejects (ORDERBOOK.md sections 4.1 and 5.4).
field("payload_error_reason", ProtoField.string("grapevine.payload_error.reason", "error"))
field("payload_error_field", ProtoField.string("grapevine.payload_error.field", "field"))
field("payload_error_offset", ProtoField.uint32("grapevine.payload_error.offset", "offset",
                                                base.DEC))
field("fragment_pending", ProtoField.bool("grapevine.book.incomplete",
                                          "incomplete: more fragments follow"))

local field_list = {}
for _, value in pairs(f) do
    field_list[#field_list + 1] = value
end
grapevine.fields = field_list

local ef_malformed = ProtoExpert.new("grapevine.malformed.expert", "Malformed Grapevine datagram",
                                     expert.group.MALFORMED, expert.severity.ERROR)
local ef_truncated = ProtoExpert.new("grapevine.truncated", "Datagram not captured completely",
                                     expert.group.MALFORMED, expert.severity.WARN)
local ef_unknown = ProtoExpert.new("grapevine.unknown_kind", "Unknown message kind (skipped)",
                                   expert.group.UNDECODED, expert.severity.NOTE)
local ef_payload = ProtoExpert.new("grapevine.payload_error.expert",
                                   "Order-book payload rejected",
                                   expert.group.MALFORMED, expert.severity.WARN)
local ef_crossed = ProtoExpert.new("grapevine.book.crossed.expert",
                                   "Crossed order book", expert.group.PROTOCOL,
                                   expert.severity.WARN)
local ef_internal = ProtoExpert.new("grapevine.internal_error", "Grapevine dissector failure",
                                    expert.group.UNDECODED, expert.severity.ERROR)
grapevine.experts = { ef_malformed, ef_truncated, ef_unknown, ef_payload, ef_crossed,
                      ef_internal }

-- ------------------------------------------------------------------------- preferences

local MODEL_AUTO, MODEL_BOOK, MODEL_OPAQUE = 1, 2, 3
grapevine.prefs.udp_port = Pref.uint("UDP port", 0,
    "Dissect every datagram to this UDP port as Grapevine, even with a bad magic or "
    .. "version (0: none). Other ports are found by the heuristic (magic GRPV, version 1).")
grapevine.prefs.payload_model = Pref.enum("Payload model", MODEL_AUTO,
    "How to decode DELTA and SNAPSHOT payloads: auto (as order-book payloads when they have "
    .. "their shape), book (always, reporting payloads the order-book model rejects) or "
    .. "opaque (never)",
    { { 1, "auto", MODEL_AUTO }, { 2, "book", MODEL_BOOK }, { 3, "opaque", MODEL_OPAQUE } },
    false)
grapevine.prefs.allow_crossed = Pref.bool("Books may be crossed", true,
    "Decode crossed books as the stream's model allows them (grapevine decode --model book "
    .. "does); when unset, a crossed book is rejected as OrderBookModel() rejects it by "
    .. "default (ORDERBOOK.md rule B10). Either way a crossed book gets an expert warning.")
grapevine.prefs.checksum = Pref.bool("Compute book checksums", true,
    "Show each complete book's checksum (BLAKE2b-64, ORDERBOOK.md section 6)")

local registered_port = 0
function grapevine.prefs_changed()
    local udp = DissectorTable.get("udp.port")
    if registered_port ~= 0 then
        udp:remove(registered_port, grapevine)
    end
    registered_port = grapevine.prefs.udp_port
    if registered_port ~= 0 then
        udp:add(registered_port, grapevine)
    end
end

-- ------------------------------------------------------------------------- BLAKE2b-64

-- BLAKE2b (RFC 7693) with UInt64 arithmetic, which every Wireshark's Lua has (whatever its
-- Lua version): digest length 8, no key.
local B2_IV = {
    UInt64.fromhex("6a09e667f3bcc908"), UInt64.fromhex("bb67ae8584caa73b"),
    UInt64.fromhex("3c6ef372fe94f82b"), UInt64.fromhex("a54ff53a5f1d36f1"),
    UInt64.fromhex("510e527fade682d1"), UInt64.fromhex("9b05688c2b3e6c1f"),
    UInt64.fromhex("1f83d9abfb41bd6b"), UInt64.fromhex("5be0cd19137e2179"),
}
local B2_SIGMA = {
    [0] = { 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15 },
    { 14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3 },
    { 11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4 },
    { 7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8 },
    { 9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13 },
    { 2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9 },
    { 12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11 },
    { 13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10 },
    { 6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5 },
    { 10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0 },
}

local function b2_mix(v, a, b, c, d, x, y)
    v[a] = v[a] + v[b] + x
    v[d] = v[d]:bxor(v[a]):ror(32)
    v[c] = v[c] + v[d]
    v[b] = v[b]:bxor(v[c]):ror(24)
    v[a] = v[a] + v[b] + y
    v[d] = v[d]:bxor(v[a]):ror(16)
    v[c] = v[c] + v[d]
    v[b] = v[b]:bxor(v[c]):ror(63)
end

-- The checksum of a book payload (a Lua string): the 8-byte digest as a little-endian u64.
local function blake2b64(data)
    local h = {}
    for i = 1, 8 do
        h[i] = B2_IV[i]
    end
    h[1] = h[1]:bxor(UInt64.new(0x01010008, 0)) -- depth 1, fanout 1, no key, 8-byte digest
    local length = #data
    local blocks = math.max(1, math.ceil(length / 128))
    for block = 0, blocks - 1 do
        local chunk = data:sub(block * 128 + 1, block * 128 + 128)
        chunk = chunk .. string.rep("\0", 128 - #chunk)
        local m = {}
        for i = 0, 15 do
            m[i] = UInt64.decode(chunk:sub(i * 8 + 1, i * 8 + 8), true)
        end
        local last = block == blocks - 1
        local counter = last and length or (block + 1) * 128
        local v = {}
        for i = 0, 7 do
            v[i] = h[i + 1]
            v[i + 8] = B2_IV[i + 1]
        end
        v[12] = v[12]:bxor(UInt64.new(counter % 4294967296, math.floor(counter / 4294967296)))
        if last then
            v[14] = v[14]:bnot()
        end
        for round = 0, 11 do
            local s = B2_SIGMA[round % 10]
            b2_mix(v, 0, 4, 8, 12, m[s[1]], m[s[2]])
            b2_mix(v, 1, 5, 9, 13, m[s[3]], m[s[4]])
            b2_mix(v, 2, 6, 10, 14, m[s[5]], m[s[6]])
            b2_mix(v, 3, 7, 11, 15, m[s[7]], m[s[8]])
            b2_mix(v, 0, 5, 10, 15, m[s[9]], m[s[10]])
            b2_mix(v, 1, 6, 11, 12, m[s[11]], m[s[12]])
            b2_mix(v, 2, 7, 8, 13, m[s[13]], m[s[14]])
            b2_mix(v, 3, 4, 9, 14, m[s[15]], m[s[16]])
        end
        for i = 0, 7 do
            h[i + 1] = h[i + 1]:bxor(v[i]):bxor(v[i + 8])
        end
    end
    return h[1]
end

-- ------------------------------------------------------------------------- helpers

-- Whether the single-bit ``mask`` is set in ``value``: plain arithmetic, because the bit
-- libraries differ between the Lua versions Wireshark builds use (bit32 is gone in 5.4).
local function has_bit(value, mask)
    return math.floor(value / mask) % 2 == 1
end

local function u64(tvb, offset)
    return tvb(offset, 8):le_uint64()
end

local function hex_u64(value)
    return "0x" .. value:tohex()
end

local function add_flags(tree, tvb, offset, flags_field, bits)
    local item = tree:add(flags_field, tvb(offset, 1))
    for _, bit_field in ipairs(bits) do
        item:add(bit_field, tvb(offset, 1))
    end
    return item
end

-- ------------------------------------------------------------------------- state

-- Snapshot reassembly (grapevine decode --model book's BookPayloads), built on the first
-- pass over the capture; what each frame's messages decoded to is kept by frame number so
-- that later passes (Wireshark redissects when a packet is clicked) show the same.
local pending = {}       -- key -> { data = {strings}, filled = n, order = n }
local pending_count = 0
local pending_order = 0
local results = {}       -- frame number -> message index -> { kind, data | error }

function grapevine.init()
    pending = {}
    pending_count = 0
    pending_order = 0
    results = {}
end

local function pending_evict()
    while pending_count > MAX_PENDING do
        local oldest, oldest_order = nil, nil
        for key, entry in pairs(pending) do
            if oldest_order == nil or entry.order < oldest_order then
                oldest, oldest_order = key, entry.order
            end
        end
        pending[oldest] = nil
        pending_count = pending_count - 1
    end
end

local function pending_pop(key)
    local entry = pending[key]
    if entry ~= nil then
        pending[key] = nil
        pending_count = pending_count - 1
    end
    return entry
end

local function pending_put(key, entry)
    pending_order = pending_order + 1
    entry.order = pending_order
    pending[key] = entry
    pending_count = pending_count + 1
    pending_evict()
end

-- ------------------------------------------------------------------------- validation

-- The first failure of SPEC.md section 10, as grapevine.codec reports it.
local function failure(reason, name, offset)
    return { reason = reason, field = name, offset = offset }
end

-- Checks and walks one datagram exactly as codec.decode_datagram does. Returns the
-- messages it read (each a table of offsets and values) and the failure, if any.
local function walk(tvb, size)
    local messages = {}
    if size > MAX_DATAGRAM_SIZE then
        return messages, failure(string.format(
            "datagram of %d bytes exceeds MAX_DATAGRAM_SIZE %d", size, MAX_DATAGRAM_SIZE),
            "datagram", MAX_DATAGRAM_SIZE)
    end
    if size < HEADER_SIZE then
        return messages, failure(string.format(
            "datagram of %d bytes is shorter than the %d-byte header", size, HEADER_SIZE),
            "header", size)
    end
    if tvb(0, 4):raw() ~= MAGIC then
        return messages, failure("bad magic, expected 'GRPV'", "magic", 0)
    end
    local version = tvb(4, 1):uint()
    if version ~= VERSION then
        return messages, failure(string.format(
            "unsupported version %d (this receiver speaks %d)", version, VERSION),
            "version", 4)
    end
    if u64(tvb, 12) == U64_ZERO then
        return messages, failure("session_id must not be 0", "session_id", 12)
    end
    local flags = tvb(5, 1):uint()
    local count = tvb(6, 2):le_uint()
    local sequence = u64(tvb, 20)
    local finish = size
    if has_bit(flags, FLAG_AUTH) then
        finish = size - AUTH_TRAILER_SIZE
        if finish < HEADER_SIZE then
            return messages, failure("datagram too short for its auth trailer", "auth",
                                     HEADER_SIZE)
        end
    end
    local offset = HEADER_SIZE
    local deltas = 0 -- DELTAs so far: the next DELTA's seq is sequence + deltas
    for index = 0, count - 1 do
        local where = "messages[" .. index .. "]"
        if offset + MESSAGE_HEADER_SIZE > finish then
            return messages, failure(string.format(
                "message_count says %d but message %d is missing or truncated", count, index),
                where, offset)
        end
        local kind = tvb(offset, 1):uint()
        local mflags = tvb(offset + 1, 1):uint()
        local length = tvb(offset + 2, 2):le_uint()
        local body = offset + MESSAGE_HEADER_SIZE
        local stop = body + length
        local message = { index = index, kind = kind, flags = mflags, length = length,
                          offset = offset, body = body, stop = stop }
        if stop > finish then
            return messages, failure(string.format(
                "message %d length %d overruns the datagram", index, length),
                where .. ".length", offset + 2)
        end
        local function short(what, minimum)
            return failure(string.format("%s message %d has length %d, below the minimum %d",
                                         what, index, length, minimum),
                           where .. ".length", offset + 2)
        end
        -- The bound every SNAPSHOT's as_of_seq and TOUCHED's end_seq is checked against:
        -- sequence + deltas, which must itself fit a u64.
        local function bound_overflows()
            return deltas > 0 and sequence > U64_MAX - UInt64.new(deltas)
        end
        if kind == KIND_DELTA then
            if length < DELTA_FIXED then
                return messages, short("delta", DELTA_FIXED)
            end
            message.seq = sequence + UInt64.new(deltas)
            message.leaf_id = tvb(body, 4):le_uint()
            message.leaf_seq = u64(tvb, body + 4)
            messages[#messages + 1] = message
            if message.leaf_seq == U64_ZERO then
                return messages, failure("delta leaf_seq must be at least 1",
                                         where .. ".leaf_seq", offset + 8)
            end
            if has_bit(mflags, DELTA_CREATE) and has_bit(mflags, DELTA_DELETE) then
                return messages, failure("delta flags CREATE and DELETE are exclusive",
                                         where .. ".flags", offset + 1)
            end
            if has_bit(mflags, DELTA_DELETE) and length > DELTA_FIXED then
                return messages, failure("a DELETE delta must have an empty payload",
                                         where .. ".payload", offset + 16)
            end
            deltas = deltas + 1
        elseif kind == KIND_SNAPSHOT then
            if length < SNAPSHOT_FIXED then
                return messages, short("snapshot", SNAPSHOT_FIXED)
            end
            local s = {}
            s.leaf_id = tvb(body, 4):le_uint()
            s.range_start = tvb(body + 4, 4):le_uint()
            s.cycle_id = tvb(body + 8, 4):le_uint()
            s.cycle_position = tvb(body + 12, 4):le_uint()
            s.cycle_count = tvb(body + 16, 4):le_uint()
            s.leaf_seq = u64(tvb, body + 20)
            s.as_of_seq = u64(tvb, body + 28)
            s.total_length = tvb(body + 36, 4):le_uint()
            s.fragment_offset = tvb(body + 40, 4):le_uint()
            for key, value in pairs(s) do
                message[key] = value
            end
            message.payload_length = length - SNAPSHOT_FIXED
            messages[#messages + 1] = message
            local deleted = has_bit(mflags, SNAPSHOT_DELETED)
            local last = has_bit(mflags, SNAPSHOT_LAST)
            if s.range_start > s.leaf_id then
                return messages, failure(string.format(
                    "snapshot range_start %d is above leaf_id %d", s.range_start, s.leaf_id),
                    where .. ".range_start", body + 4)
            end
            if s.cycle_count == 0 then
                if not (deleted and last) or s.cycle_position ~= 0 then
                    return messages, failure("cycle_count 0 is only valid for the "
                        .. "DELETED|LAST marker of an empty cycle (cycle_position 0)",
                        where .. ".cycle_count", body + 16)
                end
                if s.leaf_id ~= 0 then
                    return messages, failure(string.format(
                        "the empty-cycle marker has leaf_id %d, not 0", s.leaf_id),
                        where .. ".leaf_id", body)
                end
                if s.leaf_seq ~= U64_ZERO then
                    return messages, failure(string.format(
                        "the empty-cycle marker has leaf_seq %s, not 0", tostring(s.leaf_seq)),
                        where .. ".leaf_seq", body + 20)
                end
                if s.total_length ~= 0 then
                    return messages, failure(string.format(
                        "the empty-cycle marker (DELETED) has total_length %d: a DELETED "
                        .. "snapshot must have total_length 0", s.total_length),
                        where .. ".total_length", body + 36)
                end
            elseif deleted then
                return messages, failure(string.format(
                    "DELETED is only valid in the empty-cycle marker (cycle_count 0), not "
                    .. "with cycle_count %d", s.cycle_count), where .. ".flags", offset + 1)
            elseif s.cycle_position >= s.cycle_count then
                return messages, failure(string.format(
                    "cycle_position %d is not below cycle_count %d", s.cycle_position,
                    s.cycle_count), where .. ".cycle_position", body + 12)
            elseif last and s.cycle_position ~= s.cycle_count - 1 then
                return messages, failure(string.format(
                    "LAST is set but cycle_position %d is not cycle_count - 1 (%d)",
                    s.cycle_position, s.cycle_count - 1), where .. ".flags", offset + 1)
            end
            if bound_overflows() then
                return messages, failure("the as_of_seq bound (header sequence + DELTAs "
                    .. "before it) is beyond 2^64 - 1", "sequence", 20)
            end
            local next_seq = sequence + UInt64.new(deltas)
            if s.as_of_seq > next_seq then
                return messages, failure(string.format(
                    "snapshot as_of_seq %s is ahead of the stream (%s)", tostring(s.as_of_seq),
                    tostring(next_seq)), where .. ".as_of_seq", body + 28)
            end
            if s.fragment_offset + message.payload_length > s.total_length then
                return messages, failure(string.format(
                    "fragment [%d, +%d) overruns total_length %d", s.fragment_offset,
                    message.payload_length, s.total_length), where .. ".fragment_offset",
                    body + 40)
            end
        elseif kind == KIND_HEARTBEAT then
            if length < HEARTBEAT_FIXED then
                return messages, short("heartbeat", HEARTBEAT_FIXED)
            end
            message.interval_ms = tvb(body, 4):le_uint()
            messages[#messages + 1] = message
        elseif kind == KIND_END_OF_SESSION then
            messages[#messages + 1] = message
        elseif kind == KIND_TOUCHED then
            if length < TOUCHED_FIXED or (length - TOUCHED_FIXED) % TOUCHED_ENTRY_SIZE ~= 0 then
                return messages, failure(string.format(
                    "touched message %d has length %d: it must be %d plus a multiple of %d",
                    index, length, TOUCHED_FIXED, TOUCHED_ENTRY_SIZE), where .. ".length",
                    offset + 2)
            end
            message.first_seq = u64(tvb, body)
            message.end_seq = u64(tvb, body + 8)
            message.entries = {}
            for position = 0, math.floor((length - TOUCHED_FIXED) / TOUCHED_ENTRY_SIZE) - 1 do
                local at = body + TOUCHED_FIXED + position * TOUCHED_ENTRY_SIZE
                message.entries[#message.entries + 1] = {
                    offset = at, leaf_id = tvb(at, 4):le_uint(), leaf_seq = u64(tvb, at + 4) }
            end
            messages[#messages + 1] = message
            if bound_overflows() then
                return messages, failure("the end_seq bound (header sequence + DELTAs "
                    .. "before it) is beyond 2^64 - 1", "sequence", 20)
            end
            local next_seq = sequence + UInt64.new(deltas)
            if not (message.first_seq <= message.end_seq and message.end_seq <= next_seq) then
                return messages, failure(string.format(
                    "touched range [%s, %s) is reversed or ahead of the stream (%s)",
                    tostring(message.first_seq), tostring(message.end_seq), tostring(next_seq)),
                    where .. ".end_seq", body + 8)
            end
            local previous = -1
            for position, entry in ipairs(message.entries) do
                if entry.leaf_id <= previous or entry.leaf_seq == U64_ZERO then
                    return messages, failure(string.format(
                        "touched entry %d (leaf %d, leaf_seq %s) breaks ascending leaf ids or "
                        .. "has leaf_seq 0", position - 1, entry.leaf_id, tostring(entry.leaf_seq)),
                        where .. ".entries", entry.offset)
                end
                previous = entry.leaf_id
            end
        else
            messages[#messages + 1] = message
        end
        offset = stop
    end
    if offset ~= finish then
        return messages, failure(string.format(
            "%d trailing bytes after the %d messages the header announces", finish - offset,
            count), "messages", offset)
    end
    -- The last DELTA's stream sequence, sequence + deltas - 1, must fit a u64.
    if deltas > 1 and sequence > U64_MAX - UInt64.new(deltas - 1) then
        return messages, failure("the stream sequence of the last DELTA is beyond 2^64 - 1",
                                 "sequence", 20)
    end
    return messages, nil
end

-- ------------------------------------------------------------------------- order books

-- ORDERBOOK.md section 4.1: nil, or the failure decode_delta reports.
local function check_book_delta(tvb, offset, length)
    if length ~= BOOK_DELTA_SIZE then
        return failure(string.format("book delta is %d bytes, not %d", length, BOOK_DELTA_SIZE),
                       "book_delta", 0)
    end
    local op = tvb(offset, 1):uint()
    if OP_NAMES[op] == nil then
        return failure(string.format("unknown book delta op %d", op), "op", 0)
    end
    local side = tvb(offset + 1, 1):uint()
    if SIDE_NAMES[side] == nil then
        return failure(string.format("unknown book side %d", side), "side", 1)
    end
    return nil
end

-- ORDERBOOK.md section 5.4, rules B1 to B4: does the payload have a book's shape?
local function book_shape(tvb)
    local size = tvb:len()
    if size < BOOK_HEADER_SIZE then
        return failure(string.format(
            "book snapshot is %d bytes, shorter than its %d-byte header", size,
            BOOK_HEADER_SIZE), "book.header", 0)
    end
    local version = tvb(0, 1):uint()
    if version ~= BOOK_VERSION then
        return failure(string.format("unknown book snapshot version %d", version), "version", 0)
    end
    local flags = tvb(1, 1):uint()
    if flags > BOOK_FLAG_TRADE then
        return failure(string.format("unknown book snapshot flags 0x%02x", flags), "flags", 1)
    end
    local n_bids, n_asks = tvb(2, 4):le_uint(), tvb(6, 4):le_uint()
    -- Lua numbers are doubles: exact up to 2^53, far above 42 + 28 * (2^33 - 2).
    local expected = BOOK_HEADER_SIZE + BOOK_LEVEL_SIZE * (n_bids + n_asks)
    if size ~= expected then
        return failure(string.format(
            "book snapshot is %d bytes but n_bids=%d and n_asks=%d need %.0f", size, n_bids,
            n_asks, expected), "n_bids", 2)
    end
    return nil
end

-- Rules B5 to B10 on a payload of the right shape: nil, or the first failure; and whether
-- the book is crossed.
local function check_book(tvb)
    local flags = tvb(1, 1):uint()
    local n_bids, n_asks = tvb(2, 4):le_uint(), tvb(6, 4):le_uint()
    if has_bit(flags, BOOK_FLAG_TRADE) then
        local qty = tvb(18, 8):le_int64()
        -- qty >= 1 makes its bytes read as a u64 equal to it: compare with the u64 volume.
        if qty < I64_ONE or tvb(18, 8):le_uint64() > u64(tvb, 34) then
            return failure(string.format("last_trade_qty %s must be in 1..traded_volume (%s)",
                                         tostring(qty), tostring(u64(tvb, 34))),
                           "last_trade_qty", 18), false
        end
    else
        for at = 10, 34, 8 do
            if u64(tvb, at) ~= U64_ZERO then
                return failure("trade fields must be 0 when no trade is recorded",
                               "last_trade", 10), false
            end
        end
    end
    local sides = { { first = 0, count = n_bids, descending = true },
                    { first = n_bids, count = n_asks, descending = false } }
    for _, side in ipairs(sides) do
        local function at(i)
            return BOOK_HEADER_SIZE + (side.first + i) * BOOK_LEVEL_SIZE
        end
        for i = 1, side.count - 1 do
            local price, previous = tvb(at(i), 8):le_int64(), tvb(at(i - 1), 8):le_int64()
            if (side.descending and price >= previous) or
                    (not side.descending and price <= previous) then
                return failure(string.format(
                    "level price %s is not strictly after the previous level's %s",
                    tostring(price), tostring(previous)), "level.price_ticks", at(i)), false
            end
        end
        for i = 0, side.count - 1 do
            local qty = tvb(at(i) + 8, 8):le_int64()
            if qty < I64_ONE then
                return failure(string.format("level quantity %s must be positive",
                                             tostring(qty)), "level.quantity", at(i) + 8), false
            end
        end
        for i = 0, side.count - 1 do
            if tvb(at(i) + 16, 4):le_uint() == 0 then
                return failure("level order count is 0", "level.orders", at(i) + 16), false
            end
        end
    end
    local crossed = n_bids > 0 and n_asks > 0 and
        tvb(BOOK_HEADER_SIZE, 8):le_int64() >=
        tvb(BOOK_HEADER_SIZE + n_bids * BOOK_LEVEL_SIZE, 8):le_int64()
    if crossed and not grapevine.prefs.allow_crossed then
        return failure("book snapshot is crossed (best bid >= best ask)", "level.price_ticks",
                       BOOK_HEADER_SIZE), true
    end
    return nil, crossed
end

local function add_payload_error(tree, err, what)
    tree:add(f.payload_error_reason, err.reason):set_generated()
    if err.field ~= nil then
        tree:add(f.payload_error_field, err.field):set_generated()
        tree:add(f.payload_error_offset, err.offset):set_generated()
        tree:add_proto_expert_info(ef_payload, string.format(
            "%s rejected: %s (field '%s' at offset %d)", what, err.reason, err.field,
            err.offset))
    else
        tree:add_proto_expert_info(ef_payload, what .. ": " .. err.reason)
    end
end

local function show_book_delta(tree, tvb, offset)
    local item = tree:add(f.book_delta, tvb(offset, BOOK_DELTA_SIZE))
    item:add(f.book_delta_op, tvb(offset, 1))
    item:add(f.book_delta_side, tvb(offset + 1, 1))
    item:add_le(f.book_delta_price_ticks, tvb(offset + 2, 8))
    item:add_le(f.book_delta_quantity, tvb(offset + 10, 8))
    item:add_le(f.book_delta_time_ns, tvb(offset + 18, 8))
    local text = string.format("%s %s %s x %s", OP_NAMES[tvb(offset, 1):uint()],
                               SIDE_NAMES[tvb(offset + 1, 1):uint()],
                               tostring(tvb(offset + 2, 8):le_int64()),
                               tostring(tvb(offset + 10, 8):le_int64()))
    item:append_text(": " .. text)
    return text
end

-- A whole book payload (its own tvb): every field that is there, its failure or checksum.
local function show_book(tree, btvb)
    local item = tree:add(f.book, btvb())
    local err = book_shape(btvb)
    local size = btvb:len()
    if size >= BOOK_HEADER_SIZE then
        item:add(f.book_version, btvb(0, 1))
        add_flags(item, btvb, 1, f.book_flags, { f.book_flags_trade })
        item:add_le(f.book_n_bids, btvb(2, 4))
        item:add_le(f.book_n_asks, btvb(6, 4))
        item:add_le(f.book_last_trade_price, btvb(10, 8))
        item:add_le(f.book_last_trade_qty, btvb(18, 8))
        item:add_le(f.book_last_trade_time_ns, btvb(26, 8))
        item:add_le(f.book_traded_volume, btvb(34, 8))
    end
    local crossed = false
    if err == nil then
        err, crossed = check_book(btvb)
        local n_bids, n_asks = btvb(2, 4):le_uint(), btvb(6, 4):le_uint()
        for _, side in ipairs({ { "bids", 0, n_bids }, { "asks", n_bids, n_asks } }) do
            local name, first, count = side[1], side[2], side[3]
            if count > 0 then
                local start = BOOK_HEADER_SIZE + first * BOOK_LEVEL_SIZE
                local levels = item:add(f["book_" .. name], btvb(start, count * BOOK_LEVEL_SIZE))
                levels:append_text(string.format(" (%d)", count))
                for i = 0, count - 1 do
                    local at = start + i * BOOK_LEVEL_SIZE
                    local level = levels:add(f["book_" .. name .. "_level"],
                                             btvb(at, BOOK_LEVEL_SIZE))
                    level:add_le(f["book_" .. name .. "_price_ticks"], btvb(at, 8))
                    level:add_le(f["book_" .. name .. "_quantity"], btvb(at + 8, 8))
                    level:add_le(f["book_" .. name .. "_orders"], btvb(at + 16, 4))
                    level:add_le(f["book_" .. name .. "_time_ns"], btvb(at + 20, 8))
                    level:append_text(string.format(" %d: %s x %s (%d orders)", i,
                        tostring(btvb(at, 8):le_int64()), tostring(btvb(at + 8, 8):le_int64()),
                        btvb(at + 16, 4):le_uint()))
                end
            end
        end
    end
    if crossed then
        item:add(f.book_crossed, true):set_generated()
        item:add_proto_expert_info(ef_crossed, "crossed book: best bid >= best ask (valid "
                                   .. "only where the stream's model allows crossed books)")
    end
    if err ~= nil then
        add_payload_error(item, err, "book payload")
        return nil
    end
    local summary = string.format(": %d bids, %d asks", btvb(2, 4):le_uint(),
                                  btvb(6, 4):le_uint())
    if grapevine.prefs.checksum then
        local checksum = blake2b64(btvb():raw())
        item:add(f.book_checksum, checksum):set_generated()
        summary = summary .. ", checksum " .. hex_u64(checksum)
    end
    item:append_text(summary)
    return true
end

-- Does a snapshot's first fragment begin a book of exactly total_length bytes?
local function looks_like_book_start(tvb, offset, length, total)
    if length < BOOK_HEADER_SIZE then
        return false
    end
    if tvb(offset, 1):uint() ~= BOOK_VERSION or tvb(offset + 1, 1):uint() > BOOK_FLAG_TRADE then
        return false
    end
    local levels = tvb(offset + 2, 4):le_uint() + tvb(offset + 6, 4):le_uint()
    return BOOK_HEADER_SIZE + BOOK_LEVEL_SIZE * levels == total
end

-- First pass: what each DELTA and SNAPSHOT payload of a valid datagram decodes to, as
-- grapevine decode --model book's BookPayloads decides (updating the reassembly state).
local function decode_payloads(tvb, messages, stream_id, session_id)
    local model = grapevine.prefs.payload_model
    local out = {}
    if model == MODEL_OPAQUE then
        return out
    end
    for _, m in ipairs(messages) do
        if m.kind == KIND_DELTA then
            local length = m.length - DELTA_FIXED
            if length > 0 then
                local err = check_book_delta(tvb, m.body + DELTA_FIXED, length)
                if err == nil then
                    out[m.index] = { kind = "delta" }
                elseif model == MODEL_BOOK then
                    out[m.index] = { kind = "delta", error = err }
                end
            end
        elseif m.kind == KIND_SNAPSHOT and m.total_length > 0 then
            local total = m.total_length
            local start = m.body + SNAPSHOT_FIXED
            local piece = m.payload_length > 0 and tvb(start, m.payload_length):raw() or ""
            if m.fragment_offset == 0 and m.payload_length == total then
                if model == MODEL_BOOK or looks_like_book_start(tvb, start, m.payload_length,
                                                                total) then
                    out[m.index] = { kind = "book", data = piece }
                end
            elseif total > MAX_REASSEMBLY then
                if model == MODEL_BOOK then
                    out[m.index] = { kind = "book", error = failure(string.format(
                        "snapshot of %d bytes is too large to put together", total)) }
                end
            else
                local key = table.concat({ stream_id, tostring(session_id), m.leaf_id,
                                           tostring(m.leaf_seq), tostring(m.as_of_seq), total },
                                         ":")
                local held = pending_pop(key)
                if m.fragment_offset == 0 then
                    held = nil
                    if model == MODEL_BOOK or looks_like_book_start(tvb, start,
                                                                    m.payload_length, total) then
                        held = { data = {}, filled = 0 }
                    end
                end
                if held ~= nil and held.filled == m.fragment_offset then
                    held.data[#held.data + 1] = piece
                    held.filled = held.filled + m.payload_length
                    if held.filled >= total then
                        out[m.index] = { kind = "book", data = table.concat(held.data),
                                         reassembled = true }
                    else
                        pending_put(key, held)
                        out[m.index] = { kind = "fragment" }
                    end
                end
            end
        end
    end
    return out
end

-- ------------------------------------------------------------------------- display

local function show_header(tree, tvb)
    local header = tree:add(f.header, tvb(0, HEADER_SIZE))
    header:add(f.magic, tvb(0, 4))
    header:add(f.version, tvb(4, 1))
    add_flags(header, tvb, 5, f.header_flags, { f.header_flags_auth })
    header:add_le(f.message_count, tvb(6, 2))
    header:add_le(f.stream_id, tvb(8, 4))
    header:add_le(f.session_id, tvb(12, 8))
    header:add_le(f.sequence, tvb(20, 8))
    header:add_le(f.send_time_ns, tvb(28, 8))
    local ns = u64(tvb, 28)
    local billion = UInt64.new(1000000000)
    local seconds = (ns / billion):tonumber()
    local nanos = (ns % billion):tonumber()
    header:add(f.send_time, tvb(28, 8), NSTime.new(seconds, nanos)):set_generated()
    return header
end

local function show_message(tree, tvb, m, payloads, labels)
    local name = KIND_NAMES[m.kind] or "UNKNOWN"
    local last = math.min(m.stop, tvb:len())
    local item = tree:add(f.message, tvb(m.offset, last - m.offset))
    item:add(f.message_index, m.index):set_generated()
    local kind_item = item:add(f.message_kind, tvb(m.offset, 1))
    local flags_range = tvb(m.offset + 1, 1)
    if m.kind == KIND_DELTA then
        add_flags(item, tvb, m.offset + 1, f.delta_flags,
                  { f.delta_flags_create, f.delta_flags_delete })
    elseif m.kind == KIND_SNAPSHOT then
        add_flags(item, tvb, m.offset + 1, f.snapshot_flags,
                  { f.snapshot_flags_deleted, f.snapshot_flags_last })
    elseif KIND_NAMES[m.kind] == nil then
        item:add(f.unknown_flags, flags_range)
    else
        item:add(f.message_flags, flags_range)
    end
    item:add_le(f.message_length, tvb(m.offset + 2, 2))
    local body = m.body
    local label = name
    if m.kind == KIND_DELTA then
        item:add(f.delta_seq, m.seq):set_generated()
        item:add_le(f.delta_leaf_id, tvb(body, 4))
        item:add_le(f.delta_leaf_seq, tvb(body + 4, 8))
        local length = m.length - DELTA_FIXED
        local payload = length > 0 and tvb(body + DELTA_FIXED, length) or tvb(m.stop, 0)
        item:add(f.delta_payload, payload)
        label = string.format("DELTA seq=%s leaf=%d leaf_seq=%s", tostring(m.seq), m.leaf_id,
                              tostring(m.leaf_seq))
        if has_bit(m.flags, DELTA_CREATE) then
            label = label .. " CREATE"
        end
        if has_bit(m.flags, DELTA_DELETE) then
            label = label .. " DELETE"
        end
        local decoded = payloads[m.index]
        if decoded ~= nil and decoded.error ~= nil then
            add_payload_error(item, decoded.error, "book delta")
        elseif decoded ~= nil then
            label = label .. ": " .. show_book_delta(item, tvb, body + DELTA_FIXED)
        end
    elseif m.kind == KIND_SNAPSHOT then
        for index, field_name in ipairs(SNAPSHOT_NAMES) do
            local at = body + ({ 0, 4, 8, 12, 16, 20, 28, 36, 40 })[index]
            item:add_le(f["snapshot_" .. field_name], tvb(at, SNAPSHOT_SIZES[index]))
        end
        local payload = m.payload_length > 0 and tvb(body + SNAPSHOT_FIXED, m.payload_length)
            or tvb(m.stop, 0)
        item:add(f.snapshot_payload, payload)
        label = string.format("SNAPSHOT leaf=%d cycle=%d position=%d/%d as_of=%s",
                              m.leaf_id, m.cycle_id, m.cycle_position, m.cycle_count,
                              tostring(m.as_of_seq))
        if m.payload_length ~= m.total_length then
            label = label .. string.format(" fragment=%d+%d/%d", m.fragment_offset,
                                           m.payload_length, m.total_length)
        end
        local decoded = payloads[m.index]
        if decoded ~= nil and decoded.kind == "fragment" then
            item:add(f.fragment_pending, true):set_generated()
        elseif decoded ~= nil and decoded.error ~= nil then
            add_payload_error(item, decoded.error, "book payload")
        elseif decoded ~= nil then
            local btvb
            if decoded.reassembled then
                btvb = ByteArray.new(decoded.data, true):tvb("Reassembled book")
            else
                btvb = payload:tvb()
            end
            if show_book(item, btvb) then
                label = label .. " book"
            end
        end
    elseif m.kind == KIND_HEARTBEAT then
        item:add_le(f.heartbeat_interval_ms, tvb(body, 4))
        if m.length > HEARTBEAT_FIXED then
            item:add(f.message_extra, tvb(body + HEARTBEAT_FIXED, m.length - HEARTBEAT_FIXED))
        end
        label = string.format("HEARTBEAT interval_ms=%d", m.interval_ms)
    elseif m.kind == KIND_END_OF_SESSION then
        item:add(f.end_of_session, tvb(m.offset, MESSAGE_HEADER_SIZE)):set_generated()
        if m.length > 0 then
            item:add(f.message_extra, tvb(body, m.length))
        end
    elseif m.kind == KIND_TOUCHED then
        item:add_le(f.touched_first_seq, tvb(body, 8))
        item:add_le(f.touched_end_seq, tvb(body + 8, 8))
        local entries_length = m.length - TOUCHED_FIXED
        local entries = item:add(f.touched_entries,
                                 entries_length > 0 and tvb(body + TOUCHED_FIXED, entries_length)
                                 or tvb(m.stop, 0), #m.entries)
        for _, entry in ipairs(m.entries) do
            local e = entries:add(f.touched_entry, tvb(entry.offset, TOUCHED_ENTRY_SIZE))
            e:add_le(f.touched_entry_leaf_id, tvb(entry.offset, 4))
            e:add_le(f.touched_entry_leaf_seq, tvb(entry.offset + 4, 8))
            e:append_text(string.format(": leaf %d at leaf_seq %s", entry.leaf_id,
                                        tostring(entry.leaf_seq)))
        end
        label = string.format("TOUCHED [%s, %s) leaves=%d", tostring(m.first_seq),
                              tostring(m.end_seq), #m.entries)
    else
        item:add(f.unknown_kind, tvb(m.offset, 1))
        item:add(f.unknown_body, m.length > 0 and tvb(body, m.length) or tvb(m.stop, 0))
        kind_item:add_proto_expert_info(ef_unknown, string.format(
            "unknown message kind %d: skipped by its length (%d bytes)", m.kind, m.length))
        label = string.format("UNKNOWN kind=%d", m.kind)
    end
    item:set_text(string.format("Message %d: %s", m.index, label))
    labels[#labels + 1] = name
    return item
end

local function info_summary(labels)
    local parts, counts, order = {}, {}, {}
    for _, name in ipairs(labels) do
        if counts[name] == nil then
            counts[name] = 0
            order[#order + 1] = name
        end
        counts[name] = counts[name] + 1
    end
    for _, name in ipairs(order) do
        parts[#parts + 1] = counts[name] > 1 and (name .. "x" .. counts[name]) or name
    end
    return table.concat(parts, " ")
end

-- The first failure of grapevine._retransmit.decode_retransmit, in its order.
local function check_retransmit(tvb, size)
    if size < RETRANSMIT_SIZE then
        local name = "magic"
        for _, spec in ipairs(RETRANSMIT_FIELDS) do
            if spec[1] <= size then
                name = spec[3] -- the field the first missing byte belongs to
            end
        end
        return failure(string.format("retransmission packet of %d bytes is shorter than %d",
                                     size, RETRANSMIT_SIZE), name, size)
    end
    if tvb(0, 4):raw() ~= RETRANSMIT_MAGIC then
        return failure("bad retransmission magic", "magic", 0)
    end
    local version = tvb(4, 1):uint()
    if version ~= VERSION then
        return failure(string.format("unsupported retransmission version %d", version),
                       "version", 4)
    end
    local expected = RETRANSMIT_SIZE
    if has_bit(tvb(5, 1):uint(), FLAG_AUTH) then
        expected = expected + AUTH_TRAILER_SIZE
    end
    if size ~= expected then
        return failure(string.format("retransmission packet of %d bytes; its flags call for %d",
                                     size, expected), "flags", math.min(size, expected))
    end
    local kind = tvb(6, 1):uint()
    if RETRANSMIT_KINDS[kind] == nil then
        return failure(string.format("unknown retransmission kind %d", kind), "kind", 6)
    end
    local first_seq, end_seq = u64(tvb, 20), u64(tvb, 28)
    if not (U64_ZERO < first_seq and first_seq < end_seq) then
        return failure(string.format("empty or invalid range [%s, %s)", tostring(first_seq),
                                     tostring(end_seq)), "end_seq", 28)
    end
    if u64(tvb, 36) > u64(tvb, 44) then
        return failure(string.format("invalid available range [%s, %s)",
                                     tostring(u64(tvb, 36)), tostring(u64(tvb, 44))),
                       "available_end", 44)
    end
    return nil
end

local function add_malformed(root, err)
    root:add(f.malformed_error, err.reason):set_generated()
    root:add(f.malformed_field, err.field):set_generated()
    root:add(f.malformed_offset, err.offset):set_generated()
    root:add_proto_expert_info(ef_malformed, string.format("%s (field '%s' at offset %d)",
                                                           err.reason, err.field, err.offset))
end

-- A retransmission packet (magic GRPR): its fields, its trailer, its first failure.
local function dissect_retransmit(tvb, pinfo, root, size)
    local item = root:add(f.retransmit, tvb())
    for _, spec in ipairs(RETRANSMIT_FIELDS) do
        local at, length, name = spec[1], spec[2], spec[3]
        if at + length <= size then
            if name == "flags" then
                add_flags(item, tvb, at, f.retransmit_flags, { f.retransmit_flags_auth })
            else
                item:add_le(f["retransmit_" .. name], tvb(at, length))
            end
        end
    end
    local err = check_retransmit(tvb, size)
    local kind = size > 6 and RETRANSMIT_KINDS[tvb(6, 1):uint()] or nil
    local info = "retransmission " .. (kind or "packet")
    if size >= 36 then
        info = string.format("%s stream=%d [%s, %s)", info, tvb(8, 4):le_uint(),
                             tostring(u64(tvb, 20)), tostring(u64(tvb, 28)))
    end
    if err == nil and size > RETRANSMIT_SIZE then
        local auth = root:add(f.auth, tvb(RETRANSMIT_SIZE, AUTH_TRAILER_SIZE))
        auth:add_le(f.auth_key_id, tvb(RETRANSMIT_SIZE, 4))
        auth:add(f.auth_tag, tvb(RETRANSMIT_SIZE + 4, 16))
    end
    if err ~= nil then
        add_malformed(root, err)
        info = string.format("%s [Malformed: %s at offset %d]", info, err.field, err.offset)
    end
    pinfo.cols.info = info
    root:append_text(", " .. info)
    return size
end

local function dissect(tvb, pinfo, tree)
    pinfo.cols.protocol = "Grapevine"
    local size = tvb:len()
    local root = tree:add(grapevine, tvb())
    if size < tvb:reported_len() then
        -- The capture cut the datagram (snaplen): decoding would misreport it as malformed.
        if size >= HEADER_SIZE then
            show_header(root, tvb)
        end
        root:add_proto_expert_info(ef_truncated, string.format(
            "only %d of the datagram's %d bytes were captured: not decoded", size,
            tvb:reported_len()))
        pinfo.cols.info = "Grapevine (not captured completely)"
        return size
    end
    if size >= 4 and tvb(0, 4):raw() == RETRANSMIT_MAGIC then
        return dissect_retransmit(tvb, pinfo, root, size)
    end
    local messages, err = walk(tvb, size)
    if size >= HEADER_SIZE then
        show_header(root, tvb)
    end
    local stream_id = size >= HEADER_SIZE and tvb(8, 4):le_uint() or nil
    local session_id = size >= HEADER_SIZE and u64(tvb, 12) or nil
    -- Payloads are decoded only in datagrams a receiver accepts, as grapevine decode does.
    local frame = pinfo.number
    local payloads = {}
    if err == nil then
        if not pinfo.visited then
            results[frame] = decode_payloads(tvb, messages, stream_id, session_id)
        end
        payloads = results[frame] or {}
    end
    local labels = {}
    for _, m in ipairs(messages) do
        show_message(root, tvb, m, payloads, labels)
    end
    if err == nil and size >= HEADER_SIZE and has_bit(tvb(5, 1):uint(), FLAG_AUTH) then
        local at = size - AUTH_TRAILER_SIZE
        local auth = root:add(f.auth, tvb(at, AUTH_TRAILER_SIZE))
        auth:add_le(f.auth_key_id, tvb(at, 4))
        auth:add(f.auth_tag, tvb(at + 4, 16))
    end
    local info
    if size >= HEADER_SIZE then
        info = string.format("stream=%d seq=%s", stream_id, tostring(u64(tvb, 20)))
    else
        info = "Grapevine"
    end
    if err ~= nil then
        add_malformed(root, err)
        info = string.format("%s [Malformed: %s at offset %d]", info, err.field, err.offset)
        -- What a receiver drops without reading: the bytes after the last message shown.
        local shown = HEADER_SIZE
        if #messages > 0 then
            shown = math.min(messages[#messages].stop, size)
        end
        if size > shown and size >= HEADER_SIZE then
            root:add(f.undecoded, tvb(shown, size - shown))
        end
    end
    if #labels > 0 then
        info = info .. " " .. info_summary(labels)
    end
    pinfo.cols.info = info
    root:append_text(", " .. info)
    return size
end

function grapevine.dissector(tvb, pinfo, tree)
    local ok, result = pcall(dissect, tvb, pinfo, tree)
    if not ok then
        -- A bug here must not hide the packet: say so instead of raising.
        tree:add(grapevine, tvb()):add_proto_expert_info(ef_internal, tostring(result))
        return tvb:len()
    end
    return result
end

-- Claims UDP datagrams that start with a Grapevine magic (a stream datagram's or a
-- retransmission packet's) and version 1, whatever their port.
local function heuristic(tvb, pinfo, tree)
    if tvb:len() < 5 or tvb(4, 1):uint() ~= VERSION then
        return false
    end
    local magic = tvb(0, 4):raw()
    if magic ~= MAGIC and magic ~= RETRANSMIT_MAGIC then
        return false
    end
    grapevine.dissector(tvb, pinfo, tree)
    return true
end

grapevine:register_heuristic("udp", heuristic)
