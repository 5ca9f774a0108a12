"""grapevine.auth: keys and key text, sign/verify, the replay guard, ``grapevine keygen``."""

from __future__ import annotations

import base64
import hashlib
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the venv may not have grapevine installed
    sys.path.insert(0, str(ROOT))

from grapevine import AuthError, ConfigError, EncodeError, wire  # noqa: E402
from grapevine.auth import (  # noqa: E402
    TAG_SIZE,
    Key,
    KeyRing,
    ReplayGuard,
    Verdict,
    Verifier,
    generate_key,
    sign,
)
from grapevine.cli import main  # noqa: E402
from grapevine.codec import (  # noqa: E402
    HEADER_SIZE,
    AuthTag,
    DatagramBuilder,
    Snapshot,
    comparable,
    decode_datagram,
)
from grapevine.wire import DeltaFlag, SnapshotFlag  # noqa: E402

SESSION = 0x1234_5678_9ABC_DEF0
SECRET_1 = bytes(range(32))
SECRET_2 = bytes(range(100, 132))
TRAILER = wire.AUTH_TRAILER_SIZE
SECOND = 1_000_000_000


def ring(*key_ids: int, signing: int | None = None) -> KeyRing:
    secrets = {1: SECRET_1, 2: SECRET_2}
    return KeyRing([Key(k, secrets.get(k, bytes([k]) * 32)) for k in key_ids], signing)


def deltas_datagram(sequence: int = 100, send_time_ns: int = 5 * SECOND) -> bytes:
    builder = DatagramBuilder(3, SESSION, max_size=1400 - TRAILER)
    builder.start(sequence)
    assert builder.add_delta(1, 1, DeltaFlag.CREATE, b"new")
    assert builder.add_delta(1, 2, 0, b"change")
    assert builder.add_delta(7, 4, 0, bytes(range(50)))
    return bytes(builder.finish(send_time_ns))


def control_datagram() -> bytes:
    builder = DatagramBuilder(3, SESSION)
    builder.start(103)
    snap = Snapshot(1, 0, 4, 0, 1, 2, 102, 6, 0, SnapshotFlag.LAST, b"state!")
    assert builder.add_snapshot(snap)
    assert builder.add_heartbeat(250)
    assert builder.add_end_of_session()
    return bytes(builder.finish(6 * SECOND))


# --------------------------------------------------------------------------- sign / verify


@pytest.mark.parametrize("make", [deltas_datagram, control_datagram])
def test_sign_verify_round_trip_and_decode_frames_the_messages(
        make: Callable[[], bytes]) -> None:
    plain = make()
    keys = ring(1, 2)
    signed = sign(plain, keys)
    assert len(signed) == len(plain) + TRAILER
    assert signed[5] == plain[5] | wire.HeaderFlag.AUTH
    assert signed[:5] == plain[:5]
    assert signed[6 : len(plain)] == plain[6:]
    assert Verifier(keys).check(signed) is Verdict.ACCEPTED
    assert Verifier(keys).check(memoryview(bytearray(signed))) is Verdict.ACCEPTED
    # The tag is keyed BLAKE2b-16 over every byte before it.
    expected = hashlib.blake2b(signed[:-TAG_SIZE], key=SECRET_1, digest_size=16).digest()
    assert signed[-TAG_SIZE:] == expected
    decoded, original = decode_datagram(signed), decode_datagram(plain)
    assert decoded.flags == wire.HeaderFlag.AUTH
    assert decoded.auth == AuthTag(1, expected)
    assert comparable(decoded.messages) == comparable(original.messages)
    assert decoded[2:6] == original[2:6]


def test_sign_accepts_the_builders_memoryview_and_a_bytearray() -> None:
    builder = DatagramBuilder(3, SESSION)
    builder.start(1)
    builder.add_heartbeat(100)
    view = builder.finish(SECOND)
    keys = ring(1)
    assert sign(view, keys) == sign(bytearray(view), keys) == sign(bytes(view), keys)
    assert view[5] == 0  # the builder's buffer is not modified


def test_every_byte_is_covered_by_the_tag() -> None:
    keys = ring(1, 2)
    verifier = Verifier(keys)
    signed = sign(deltas_datagram(), keys)
    key_id_at = len(signed) - TRAILER
    for position in range(len(signed)):
        for bit in (0x01, 0x80):
            flipped = bytearray(signed)
            flipped[position] ^= bit
            verdict = verifier.check(flipped)
            if position == 5 and bit == wire.HeaderFlag.AUTH:
                assert verdict is Verdict.UNAUTHENTICATED
            elif key_id_at <= position < key_id_at + 4:
                assert verdict is Verdict.UNKNOWN_KEY  # key ids 0, 3, 129, 2^24+1, ...
            else:
                assert verdict is Verdict.BAD_TAG, position
    assert verifier.counts[Verdict.ACCEPTED] == 0


def test_a_key_id_flipped_to_another_known_key_is_a_bad_tag() -> None:
    keys = ring(1, 3)
    signed = bytearray(sign(deltas_datagram(), keys))
    signed[-TRAILER] = 3
    assert Verifier(keys).check(signed) is Verdict.BAD_TAG


def test_unknown_key_id() -> None:
    signed = sign(deltas_datagram(), ring(1))
    assert Verifier(ring(2)).check(signed) is Verdict.UNKNOWN_KEY


def test_missing_trailer_and_truncated_datagrams() -> None:
    keys = ring(1)
    verifier = Verifier(keys)
    plain = deltas_datagram()
    assert verifier.check(plain) is Verdict.UNAUTHENTICATED
    flagged = bytearray(plain)
    flagged[5] |= wire.HeaderFlag.AUTH  # flag set, no trailer: the last 20 bytes are read
    assert verifier.check(flagged) in (Verdict.UNKNOWN_KEY, Verdict.BAD_TAG)
    signed = sign(plain, keys)
    for size in range(len(signed)):
        verdict = verifier.check(signed[:size])
        if size < HEADER_SIZE + TRAILER or size < 6:
            assert verdict is Verdict.UNAUTHENTICATED
        else:
            assert verdict is not Verdict.ACCEPTED
    # An empty-bodied signed datagram (header + trailer) is the smallest that can verify.
    builder = DatagramBuilder(3, SESSION)
    builder.start(1)
    smallest = sign(builder.finish(SECOND), keys)
    assert len(smallest) == HEADER_SIZE + TRAILER
    assert verifier.check(smallest) is Verdict.ACCEPTED
    assert verifier.counts[Verdict.ACCEPTED] == 1


def test_random_bytes_never_raise() -> None:
    rng = random.Random(8)
    keys = ring(1, 2)
    verifier = Verifier(keys)
    signed = sign(deltas_datagram(), keys)
    for index in range(4000):
        mode = index % 4
        if mode == 0:  # pure noise
            data = bytearray(rng.randbytes(rng.randrange(0, 200)))
        elif mode == 1:  # noise that claims AUTH with a known key id
            data = bytearray(rng.randbytes(rng.randrange(0, 200)))
            if len(data) > 5:
                data[5] |= 1
            if len(data) >= 20:
                data[-20:-16] = (1 + index % 2).to_bytes(4, "little")
        elif mode == 2:  # a signed datagram with a few random changes, cut or grown
            data = bytearray(signed)
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(len(data))] ^= rng.randrange(1, 256)
            data = data[: rng.randrange(len(data) + 1)] + rng.randbytes(rng.randrange(3))
        else:  # odd buffer shapes
            raw = bytearray(signed) + rng.randbytes(rng.randrange(4) * 2)
            data = bytearray(raw)
            view = memoryview(raw)
            shaped: list[memoryview] = [view[::2], view[1:], view.cast("H") if len(raw) % 2
                                        == 0 else view]
            for other in shaped:
                assert isinstance(verifier.check(other), Verdict)
        verdict = verifier.check(data)
        assert isinstance(verdict, Verdict)
        if mode != 3 and data != signed:
            assert verdict is not Verdict.ACCEPTED
    assert sum(verifier.counts.values()) == 4000 + 3 * 1000
    assert verifier.check(memoryview(bytearray(signed)).cast("H", (len(signed) // 2,))
                          if len(signed) % 2 == 0 else signed) is Verdict.ACCEPTED


def test_rotation() -> None:
    both = ring(1, 2)
    by_1 = sign(deltas_datagram(), both)
    by_2 = sign(deltas_datagram(), both.with_signing_key(2))
    assert by_1[-TRAILER:-TAG_SIZE] == (1).to_bytes(4, "little")
    assert by_2[-TRAILER:-TAG_SIZE] == (2).to_bytes(4, "little")
    assert by_1[:-TRAILER] == by_2[:-TRAILER]
    accepts_both = Verifier(ring(1, 2))
    assert accepts_both.check(by_1) is Verdict.ACCEPTED
    assert accepts_both.check(by_2) is Verdict.ACCEPTED
    only_2 = Verifier(ring(2))
    assert only_2.check(by_1) is Verdict.UNKNOWN_KEY
    assert only_2.check(by_2) is Verdict.ACCEPTED
    only_2.ring = ring(1)  # rotating a live verifier takes effect at once
    assert only_2.check(by_1) is Verdict.ACCEPTED
    assert only_2.check(by_2) is Verdict.UNKNOWN_KEY
    assert only_2.ring.signing_key_id == 1


def test_same_key_id_other_secret_is_a_bad_tag() -> None:
    signed = sign(deltas_datagram(), ring(1))
    impostor = KeyRing([Key(1, SECRET_2)])
    assert Verifier(impostor).check(signed) is Verdict.BAD_TAG


def test_sign_rejects_what_is_not_an_unsigned_datagram() -> None:
    keys = ring(1)
    with pytest.raises(EncodeError, match="complete datagram"):
        sign(b"GRPV\x01\x00", keys)
    with pytest.raises(EncodeError, match="complete datagram"):
        sign(b"XXXX" + deltas_datagram()[4:], keys)
    with pytest.raises(EncodeError, match="already has the AUTH flag"):
        sign(sign(deltas_datagram(), keys), keys)
    too_big = deltas_datagram()[:HEADER_SIZE] + bytes(wire.MAX_DATAGRAM_SIZE - TRAILER + 1
                                                      - HEADER_SIZE)
    with pytest.raises(EncodeError, match="MAX_DATAGRAM_SIZE"):
        sign(too_big, keys)
    fits = too_big[:-1]
    assert len(sign(fits, keys)) == wire.MAX_DATAGRAM_SIZE


# --------------------------------------------------------------------------- keys


def test_key_validation() -> None:
    assert Key(0, bytes(16)).secret == bytes(16)
    # Any bytes-like secret is taken (and kept as bytes), though Key declares bytes.
    assert Key(2**32 - 1, bytearray(64)).secret == bytes(64)  # type: ignore[arg-type]
    assert isinstance(Key(5, bytearray(20)).secret, bytes)  # type: ignore[arg-type]
    for bad_id in (-1, 2**32, True):
        with pytest.raises(AuthError):
            Key(bad_id, bytes(32))
    with pytest.raises(AuthError, match="15 bytes"):
        Key(1, bytes(15))
    with pytest.raises(AuthError, match="65 bytes"):
        Key(1, bytes(65))
    with pytest.raises(AuthError, match="must be bytes"):
        Key(1, "x" * 32)  # type: ignore[arg-type]
    assert SECRET_1.hex() not in repr(Key(1, SECRET_1))
    assert "SECRET" not in repr(ring(1, 2))


def test_keyring_construction() -> None:
    keys = ring(1, 2)
    assert keys.signing_key_id == 1
    assert len(keys) == 2
    assert 2 in keys
    assert 3 not in keys
    assert [k.key_id for k in keys] == [1, 2]
    assert keys.keys[2].secret == SECRET_2
    assert ring(1, 2, signing=2).signing_key_id == 2
    with pytest.raises(AuthError, match="at least one key"):
        KeyRing([])
    with pytest.raises(AuthError, match="twice"):
        KeyRing([Key(1, SECRET_1), Key(1, SECRET_2)])
    with pytest.raises(AuthError, match="signing key id 3"):
        ring(1, 2, signing=3)
    with pytest.raises(AuthError, match="signing key id 9"):
        keys.with_signing_key(9)


def test_key_text_hex_base64_comments_and_signing_mark() -> None:
    urlsafe = base64.urlsafe_b64encode(b"\xfb\xff" * 12).decode()
    assert "-" in urlsafe or "_" in urlsafe
    text = f"""
    # keys for the test stream
    1:{SECRET_1.hex()}
    2:{base64.b64encode(SECRET_2).decode()}   # standard base64

    3 : {SECRET_1.hex().upper()}
    4:{urlsafe}
    5:hex:{SECRET_2.hex()}
    6:base64:{base64.b64encode(bytes.fromhex("ab" * 24)).decode()}
    """
    keys = KeyRing.from_text(text)
    assert keys.signing_key_id == 1
    assert keys.keys[1].secret == SECRET_1
    assert keys.keys[2].secret == SECRET_2
    assert keys.keys[3].secret == SECRET_1
    assert keys.keys[4].secret == b"\xfb\xff" * 12
    assert keys.keys[5].secret == SECRET_2
    assert keys.keys[6].secret == bytes.fromhex("ab" * 24)
    marked = KeyRing.from_text(f"1:{SECRET_1.hex()}\n*2:{SECRET_2.hex()}\n")
    assert marked.signing_key_id == 2
    one_line = KeyRing.from_text(f"1:{SECRET_1.hex()}; *2:{SECRET_2.hex()};")
    assert (len(one_line), one_line.signing_key_id) == (2, 2)


def test_base64_made_of_hex_digits_needs_its_prefix() -> None:
    secret = base64.b64decode("abcd" * 8)  # 32 base64 characters, all of them hex digits
    assert KeyRing.from_text("1:" + "abcd" * 8).keys[1].secret == bytes.fromhex("abcd" * 8)
    assert KeyRing.from_text("1:base64:" + "abcd" * 8).keys[1].secret == secret
    with pytest.raises(AuthError, match=r"line 1.*read as hex.*base64:SECRET"):
        KeyRing.from_text("1:" + "abcd" * 6)  # 12 bytes as hex, 18 as base64


@pytest.mark.parametrize(("line", "message"), [
    ("nocolon", "expected KEY_ID:SECRET"),
    ("x1:" + SECRET_1.hex(), "not a decimal number"),
    ("-1:" + SECRET_1.hex(), "not a decimal number"),
    ("4294967296:" + SECRET_1.hex(), "outside"),
    ("1:", "empty secret"),
    ("1:" + SECRET_1.hex()[:-1], "odd number"),
    ("1:" + bytes(15).hex(), "15 bytes"),
    ("1:" + bytes(65).hex(), "65 bytes"),
    ("1:" + base64.b64encode(b"\xff" * 12).decode(), "12 bytes"),
    ("1:not base64 at all!", "neither hex nor valid base64"),
    ("1:" + base64.b64encode(SECRET_1).decode().rstrip("="), "neither hex nor valid base64"),
    ("1:rot13:" + SECRET_1.hex(), "unknown secret prefix"),
    ("1:hex:" + base64.b64encode(SECRET_1).decode(), "not hex digits"),
    ("1:base64:!!!!", "neither hex nor valid base64"),
])
def test_bad_key_lines_name_the_line(line: str, message: str) -> None:
    text = f"# header\n7:{SECRET_2.hex()}\n\n{line}\n"
    with pytest.raises(AuthError, match=message) as info:
        KeyRing.from_text(text, source="keys.txt")
    assert "keys.txt line 4" in str(info.value)
    secret_part = line.partition(":")[2]
    if len(secret_part) >= 8:
        assert secret_part not in str(info.value)  # errors never echo the secret


def test_key_text_duplicates_marks_and_emptiness() -> None:
    with pytest.raises(AuthError, match=r"line 2: key id 1 already given on line 1"):
        KeyRing.from_text(f"1:{SECRET_1.hex()}\n1:{SECRET_2.hex()}")
    with pytest.raises(AuthError, match=r"line 2: a second signing key"):
        KeyRing.from_text(f"*1:{SECRET_1.hex()}\n*2:{SECRET_2.hex()}")
    with pytest.raises(AuthError, match="no keys"):
        KeyRing.from_text("# nothing here\n\n")


def test_key_file_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "grapevine.keys"
    path.write_text(f"1:{SECRET_1.hex()}\n*2:{SECRET_2.hex()}\n", encoding="utf-8")
    from_file = KeyRing.from_file(path)
    assert (sorted(from_file.keys), from_file.signing_key_id) == ([1, 2], 2)
    assert KeyRing.from_file(str(path)).signing_key_id == 2
    with pytest.raises(AuthError, match="cannot read key file"):
        KeyRing.from_file(tmp_path / "missing.keys")
    path.write_text("1:zz\n", encoding="utf-8")
    with pytest.raises(AuthError, match=r"grapevine.keys line 1"):
        KeyRing.from_file(path)
    monkeypatch.setenv("GRAPEVINE_KEYS", f"1:{SECRET_1.hex()};2:{SECRET_2.hex()}")
    from_env = KeyRing.from_env()
    assert (sorted(from_env.keys), from_env.signing_key_id) == ([1, 2], 1)
    assert KeyRing.from_env("K", {"K": f"*9:{SECRET_1.hex()}"}).signing_key_id == 9
    with pytest.raises(AuthError, match="MISSING_KEYS is not set"):
        KeyRing.from_env("MISSING_KEYS", {})
    with pytest.raises(AuthError, match=r"\$K line 1"):
        KeyRing.from_env("K", {"K": "1:00"})


def test_generate_key() -> None:
    lines = {generate_key(7) for _ in range(5)}
    assert len(lines) == 5
    for line in lines:
        keys = KeyRing.from_text(line)
        assert keys.signing_key_id == 7
        assert len(keys.keys[7].secret) == 32
    assert generate_key(2**32 - 1).startswith("4294967295:")
    with pytest.raises(AuthError):
        generate_key(2**32)


def test_keygen_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", "--key-id", "42"]) == 0
    captured = capsys.readouterr()
    keys = KeyRing.from_text(captured.out)
    assert list(keys.keys) == [42]
    assert captured.out.count("\n") == 1
    assert "secret" in captured.err
    assert main(["keygen"]) == 0
    assert list(KeyRing.from_text(capsys.readouterr().out).keys) == [1]
    with pytest.raises(SystemExit):
        main(["keygen", "--key-id", "4294967296"])
    assert "outside" in capsys.readouterr().err


# --------------------------------------------------------------------------- replay guard


def checked(guard: ReplayGuard, session_id: int, send_time_ns: int, tag: bytes) -> bool:
    result = guard.accept(session_id, send_time_ns, tag)
    guard._check()
    return result


def test_guard_rejects_duplicates_and_accepts_reordering() -> None:
    guard = ReplayGuard()
    t = 100 * SECOND
    assert checked(guard, 1, t, b"a")
    assert not checked(guard, 1, t, b"a")
    assert checked(guard, 1, t + 10, b"b")
    assert checked(guard, 1, t - SECOND, b"c")  # reordered, within the window
    assert not checked(guard, 1, t - SECOND, b"c")
    assert checked(guard, 2, t, b"a")  # tags are per session
    assert (guard.accepted, guard.replayed_duplicate, guard.replayed_old) == (4, 2, 0)


def test_guard_rejects_old_datagrams_at_the_window_edge() -> None:
    guard = ReplayGuard(window_ns=2 * SECOND)
    t = 100 * SECOND
    assert checked(guard, 1, t, b"newest")
    assert checked(guard, 1, t - 2 * SECOND, b"exactly the window")
    assert not checked(guard, 1, t - 2 * SECOND - 1, b"one ns older")
    assert (guard.accepted, guard.replayed_old) == (2, 1)
    assert checked(guard, 1, t + 2 * SECOND, b"later")
    # "exactly the window" is out of the window but lingers behind "newest" (accepted
    # before it), which is still in: tags are forgotten in accept order.
    assert guard.remembered_tags(1) == 3
    assert checked(guard, 1, t + 2 * SECOND + 1, b"later still")
    assert guard.remembered_tags(1) == 2
    assert not checked(guard, 1, t - 1, b"newest-but-one")


def test_guard_rejects_a_replayed_old_session() -> None:
    guard = ReplayGuard(window_ns=2 * SECOND)
    t = 1000 * SECOND
    assert checked(guard, 1, t, b"a1")
    assert checked(guard, 2, t + 60 * SECOND, b"b1")
    # Session 1 is still remembered: its own window applies and its tags are known.
    assert not checked(guard, 1, t, b"a1")
    assert guard.replayed_duplicate == 1
    # A session never seen, from minutes ago.
    assert not checked(guard, 3, t, b"c1")
    assert guard.session_count == 2
    assert guard.replayed_old == 1
    # A new session within the window of the newest datagram is accepted.
    assert checked(guard, 4, t + 58 * SECOND, b"d1")
    # Session 1 forgotten (LRU) and replayed: rejected as an old session.
    small = ReplayGuard(window_ns=2 * SECOND, max_sessions=2)
    assert checked(small, 1, t, b"a1")
    assert checked(small, 2, t + 60 * SECOND, b"b1")
    assert checked(small, 3, t + 60 * SECOND, b"c1")
    assert small.forgotten_sessions == 1
    assert small.remembered_tags(1) == 0
    assert not checked(small, 1, t, b"a1")
    assert not checked(small, 1, t + 1, b"a2")
    assert small.replayed_old == 2


def test_guard_forgets_the_least_recently_accepted_session() -> None:
    guard = ReplayGuard()
    t = 10 * SECOND
    for session in range(1, 17):
        assert checked(guard, session, t, b"x")
    assert checked(guard, 1, t + 1, b"y")  # 1 is now the most recently accepted
    assert checked(guard, 17, t, b"x")  # forgets 2
    assert guard.session_count == 16
    assert guard.remembered_tags(2) == 0
    assert guard.remembered_tags(1) == 2
    assert not checked(guard, 1, t, b"x")
    assert checked(guard, 2, t, b"x")  # forgotten: within the window, accepted again
    assert guard.forgotten_sessions == 2


def test_guard_memory_bounds() -> None:
    guard = ReplayGuard(window_ns=SECOND, max_tags=4)
    for n in range(20):
        assert checked(guard, 1, n, n.to_bytes(2, "big"))
        assert guard.remembered_tags(1) == min(n + 1, 4)
    assert guard.forgotten_tags == 16
    # Past the window, time alone forgets tags.
    assert checked(guard, 1, 10 * SECOND, b"late")
    assert guard.remembered_tags(1) == 1
    with pytest.raises(ConfigError):
        ReplayGuard(window_ns=-1)
    with pytest.raises(ConfigError):
        ReplayGuard(max_tags=0)
    with pytest.raises(ConfigError):
        ReplayGuard(max_sessions=0)


@dataclass
class ModelSession:
    newest: int
    accepted: list[tuple[int, bytes]] = field(default_factory=list)


class ReplayModel:
    """The rule written plainly: full histories, no expiry, LRU over a list."""

    def __init__(self, window: int, max_sessions: int) -> None:
        self.window = window
        self.max_sessions = max_sessions
        self.sessions: dict[int, ModelSession] = {}
        self.lru: list[int] = []
        self.newest: int | None = None

    def accept(self, session_id: int, time: int, tag: bytes) -> str:
        session = self.sessions.get(session_id)
        if session is None:
            if self.newest is not None and self.newest - time > self.window:
                return "old"
            session = self.sessions[session_id] = ModelSession(time)
            self.lru.append(session_id)
            if len(self.lru) > self.max_sessions:
                del self.sessions[self.lru.pop(0)]
        else:
            if session.newest - time > self.window:
                return "old"
            if any(t >= session.newest - self.window and g == tag for t, g in session.accepted):
                return "duplicate"
            self.lru.remove(session_id)
            self.lru.append(session_id)
            session.newest = max(session.newest, time)
        session.accepted.append((time, tag))
        self.newest = time if self.newest is None else max(self.newest, time)
        return "accepted"


@pytest.mark.parametrize("seed", range(6))
def test_guard_matches_the_reference_model(seed: int) -> None:
    rng = random.Random(seed)
    window = 1000
    max_sessions = rng.choice([2, 4, 16])
    guard = ReplayGuard(window_ns=window, max_sessions=max_sessions)
    model = ReplayModel(window, max_sessions)
    clocks = dict.fromkeys(range(1, 25), 0)
    sent: list[tuple[int, int, bytes]] = []
    outcomes = {"accepted": 0, "duplicate": 0, "old": 0}
    for step in range(3000):
        roll = rng.random()
        if roll < 0.55 or not sent:  # a new datagram, maybe delivered late
            session = rng.choice(list(clocks)[: rng.choice([3, 8, 24])])
            clocks[session] += rng.randrange(0, 300)
            time = max(0, clocks[session] - rng.choice([0, 0, 0, rng.randrange(1500)]))
            datagram = (session, time, hashlib.blake2b(f"{session}/{time}/{step}".encode(),
                                                       digest_size=16).digest())
            sent.append(datagram)
        elif roll < 0.8:  # a recent copy (network duplicate or quick replay)
            datagram = sent[-rng.randrange(1, min(len(sent), 30) + 1)]
        else:  # a replay of anything captured so far
            datagram = rng.choice(sent)
        expected = model.accept(*datagram)
        assert checked(guard, *datagram) == (expected == "accepted"), (step, datagram)
        outcomes[expected] += 1
        assert guard.session_count == len(model.sessions) <= max_sessions
    assert (guard.accepted, guard.replayed_duplicate, guard.replayed_old) == (
        outcomes["accepted"], outcomes["duplicate"], outcomes["old"])
    assert min(outcomes.values()) > 50  # every branch exercised


def test_guard_stress_with_tight_bounds() -> None:
    rng = random.Random(88)
    guard = ReplayGuard(window_ns=500, max_tags=8, max_sessions=3)
    clocks = dict.fromkeys(range(1, 6), 0)
    for step in range(5000):
        session = rng.choice(list(clocks))
        clocks[session] += rng.randrange(0, 50)
        time = max(0, clocks[session] - rng.randrange(0, 700))
        tag = rng.randrange(40).to_bytes(1, "big") if rng.random() < 0.5 else step.to_bytes(4,
                                                                                         "big")
        checked(guard, session, time, tag)
        assert guard.remembered_tags(session) <= 8
        assert guard.session_count <= 3
    assert guard.forgotten_tags > 0
    assert guard.forgotten_sessions > 0
    assert guard.accepted + guard.replayed_duplicate + guard.replayed_old == 5000


def test_end_to_end_sign_verify_guard() -> None:
    keys = ring(1, 2)
    verifier = Verifier(keys)
    guard = ReplayGuard()
    captured: list[bytes] = []
    for n in range(10):
        datagram = sign(deltas_datagram(sequence=100 + 3 * n, send_time_ns=5 * SECOND + n), keys)
        captured.append(datagram)
    for datagram in [*captured, *captured[::3]]:
        verdict = verifier.check(datagram)
        assert verdict is Verdict.ACCEPTED
        decoded = decode_datagram(datagram)
        assert decoded.auth is not None
        guard.accept(decoded.session_id, decoded.send_time_ns, decoded.auth.tag)
        guard._check()
    assert (guard.accepted, guard.replayed_duplicate) == (10, 4)
