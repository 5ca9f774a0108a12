"""Authenticated datagrams (issue 8), sans-I/O: keys, signing, verification, replay guard.

Nothing here opens a socket or reads a clock. A publisher passes each finished datagram to
:func:`sign`; a subscriber passes each received datagram to :meth:`Verifier.check` and, if it
is accepted, its session id, send time and tag to :meth:`ReplayGuard.accept`.

Choice of MAC: keyed BLAKE2b with a 16-byte digest, not HMAC-SHA256 truncated to 16 bytes.
``tools/bench_auth.py`` measures both in one run. One run (CPython 3.11, best of 5, ns per
datagram; in brackets: multiples of a ``bytearray(data)`` copy of the same datagram):

=====================================  ===============  ===============
construction                           1,400 bytes      200 bytes
=====================================  ===============  ===============
HMAC-SHA256/16, new object each time    1986 (11.7x)     1371 (11.3x)
HMAC-SHA256/16, pre-keyed ``.copy()``   1568  (9.3x)      952  (7.9x)
BLAKE2b-16, new object each time        1423  (8.4x)      578  (4.8x)
BLAKE2b-16, pre-keyed ``.copy()``       1209  (7.1x)      377  (3.1x)
=====================================  ===============  ===============

The host was shared, so absolute figures moved by up to 40% between five runs, but the
ranking never did: BLAKE2b with ``.copy()`` took 0.52 to 0.78 of HMAC-SHA256 with ``.copy()``
at 1,400 bytes and 0.32 to 0.40 at 200 bytes. BLAKE2b is a keyed MAC by design (one pass and
one finalisation, where HMAC hashes twice), so it wins per byte and, more so, per datagram:
heartbeats, END_OF_SESSION and short deltas are small. Keying once and ``.copy()``-ing the
keyed state per datagram skips the key block every time. A 128-bit BLAKE2b tag with a
128 to 512-bit key is at least as strong as HMAC-SHA256/16. Keys are 16 to 64 bytes
(BLAKE2b's key limit); :func:`generate_key` makes 32. :func:`sign` and
:meth:`Verifier.check` each add about 0.5 us per datagram to the MAC itself (checks,
copies, the constant-time comparison).

What the tag covers (SPEC section 9): every byte of the datagram before the tag, that is the
header with flag AUTH (0x01 in byte 5) set, all messages and the trailer's ``key_id``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import string
import struct
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType

from . import wire
from ._errors import AuthError, ConfigError, EncodeError

__all__ = [
    "DEFAULT_REPLAY_WINDOW_NS",
    "KEY_ENV_VAR",
    "MAX_SECRET_SIZE",
    "MIN_SECRET_SIZE",
    "TAG_SIZE",
    "Key",
    "KeyRing",
    "ReplayGuard",
    "Verdict",
    "Verifier",
    "generate_key",
    "sign",
]

TAG_SIZE = 16  # bytes of tag in the trailer
MIN_SECRET_SIZE = 16  # shortest accepted secret (128 bits)
MAX_SECRET_SIZE = 64  # BLAKE2b's longest key
GENERATED_SECRET_SIZE = 32
KEY_ENV_VAR = "GRAPEVINE_KEYS"
DEFAULT_REPLAY_WINDOW_NS = 2_000_000_000
DEFAULT_MAX_TAGS = 1 << 17
DEFAULT_MAX_SESSIONS = 16

_HEADER_SIZE = 36
_FLAGS_OFFSET = 5
_AUTH = int(wire.HeaderFlag.AUTH)
_TRAILER_SIZE = wire.AUTH_TRAILER_SIZE  # key_id u32 + tag
_KEY_ID_SIZE = _TRAILER_SIZE - TAG_SIZE
_SMALLEST_SIGNED = _HEADER_SIZE + _TRAILER_SIZE
_KEY_ID = struct.Struct("<I")
_unpack_key_id = _KEY_ID.unpack_from
_MAX_KEY_ID = 0xFFFF_FFFF
_WITH_AUTH_FLAG = [bytes([flags | _AUTH]) for flags in range(256)]
_HEX_DIGITS = frozenset(string.hexdigits)
_URLSAFE_TO_STANDARD = str.maketrans("-_", "+/")


def _keyed_mac(secret: bytes) -> hashlib.blake2b:
    return hashlib.blake2b(key=secret, digest_size=TAG_SIZE)


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True, slots=True)
class Key:
    """One shared key: ``key_id`` (u32, named in each trailer) and its ``secret``.

    ``secret`` is 16 to 64 bytes (BLAKE2b keys at most 64). It is left out of ``repr``.
    """

    key_id: int
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.key_id, bool) or not isinstance(self.key_id, int):
            raise AuthError(f"key id must be an int, not {type(self.key_id).__name__}")
        if not 0 <= self.key_id <= _MAX_KEY_ID:
            raise AuthError(f"key id {self.key_id} is outside 0..{_MAX_KEY_ID} (u32)")
        if not isinstance(self.secret, bytes | bytearray | memoryview):
            raise AuthError(f"key {self.key_id}: secret must be bytes, not "
                            f"{type(self.secret).__name__}")
        secret = bytes(self.secret)
        if not MIN_SECRET_SIZE <= len(secret) <= MAX_SECRET_SIZE:
            raise AuthError(f"key {self.key_id}: secret of {len(secret)} bytes; it must be "
                            f"{MIN_SECRET_SIZE} to {MAX_SECRET_SIZE} bytes")
        object.__setattr__(self, "secret", secret)


class KeyRing:
    """The keys a process accepts, one of which it signs with.

    Several keys at once make rotation possible without a restart: add the new key to every
    receiver's ring, then make it the publishers' signing key, then drop the old one.
    Immutable; :meth:`with_signing_key` returns a ring that signs with another key.

    Key text (:meth:`from_text`, :meth:`from_file`, :meth:`from_env`) has one entry per line
    (``;`` also separates entries, for environment variables)::

        # blank lines and everything after '#' are ignored
        1:5f1c0b...          # KEY_ID:SECRET, KEY_ID decimal 0..2^32-1
        *2:q83vAbC...=       # a leading '*' marks the signing key

    The signing key is the entry marked ``*`` (at most one), else the first entry.
    SECRET is hex or base64, told apart like this: an optional ``hex:`` or ``base64:`` prefix
    says which; without one, hex is tried first, so a secret made only of hex digits is
    always hex; anything else is base64 (standard or URL-safe alphabet, with padding). A
    base64 secret that happens to be made only of hex digits needs the ``base64:`` prefix.
    Every error names the line (never the secret).
    """

    __slots__ = ("_keys", "_macs", "_signing_key_id", "_signing_mac", "_signing_trailer")

    def __init__(self, keys: Iterable[Key], signing_key_id: int | None = None) -> None:
        by_id: dict[int, Key] = {}
        for key in keys:
            if not isinstance(key, Key):
                raise AuthError(f"a KeyRing holds Key objects, not {type(key).__name__}")
            if key.key_id in by_id:
                raise AuthError(f"key id {key.key_id} appears twice")
            by_id[key.key_id] = key
        if not by_id:
            raise AuthError("a KeyRing needs at least one key")
        if signing_key_id is None:
            signing_key_id = next(iter(by_id))
        elif signing_key_id not in by_id:
            raise AuthError(f"signing key id {signing_key_id} is not in the ring "
                            f"(key ids: {sorted(by_id)})")
        self._keys = MappingProxyType(by_id)
        self._macs = {key_id: _keyed_mac(key.secret) for key_id, key in by_id.items()}
        self._signing_key_id = signing_key_id
        self._signing_mac = self._macs[signing_key_id]
        self._signing_trailer = _KEY_ID.pack(signing_key_id)

    @property
    def keys(self) -> Mapping[int, Key]:
        """The keys by id (read-only)."""
        return self._keys

    @property
    def signing_key_id(self) -> int:
        """The id of the key :func:`sign` uses."""
        return self._signing_key_id

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[Key]:
        return iter(self._keys.values())

    def __repr__(self) -> str:
        return f"KeyRing(key_ids={list(self._keys)}, signing_key_id={self._signing_key_id})"

    def with_signing_key(self, key_id: int) -> KeyRing:
        """The same keys, signing with ``key_id`` (AuthError if the ring lacks it)."""
        return KeyRing(self._keys.values(), signing_key_id=key_id)

    @classmethod
    def from_text(cls, text: str, *, source: str = "key text") -> KeyRing:
        """Parse key text (format in the class docstring); ``source`` names it in errors."""
        keys: list[Key] = []
        line_of: dict[int, int] = {}
        signing_key_id: int | None = None
        for number, line in enumerate(text.splitlines(), start=1):
            for entry in line.split("#", 1)[0].split(";"):
                entry = entry.strip()
                if not entry:
                    continue
                where = f"{source} line {number}"
                marked = entry.startswith("*")
                key = _parse_entry(entry[1:] if marked else entry, where)
                if key.key_id in line_of:
                    raise AuthError(f"{where}: key id {key.key_id} already given on line "
                                    f"{line_of[key.key_id]}")
                line_of[key.key_id] = number
                if marked:
                    if signing_key_id is not None:
                        raise AuthError(f"{where}: a second signing key marked '*' (key "
                                        f"{signing_key_id} on line {line_of[signing_key_id]} "
                                        "is marked already)")
                    signing_key_id = key.key_id
                keys.append(key)
        if not keys:
            raise AuthError(f"{source}: no keys (expected lines KEY_ID:SECRET)")
        return cls(keys, signing_key_id)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> KeyRing:
        """Read key text from a UTF-8 file (AuthError if it cannot be read or parsed)."""
        try:
            with open(path, encoding="utf-8") as stream:
                text = stream.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise AuthError(f"cannot read key file {os.fspath(path)!s}: {exc}") from exc
        return cls.from_text(text, source=str(os.fspath(path)))

    @classmethod
    def from_env(cls, name: str = KEY_ENV_VAR,
                 environ: Mapping[str, str] | None = None) -> KeyRing:
        """Read key text from environment variable ``name`` (entries split by ``;``)."""
        value = (os.environ if environ is None else environ).get(name)
        if value is None:
            raise AuthError(f"environment variable {name} is not set")
        return cls.from_text(value, source=f"${name}")


def _parse_entry(entry: str, where: str) -> Key:
    key_id_text, colon, secret_text = entry.partition(":")
    if not colon:
        raise AuthError(f"{where}: expected KEY_ID:SECRET")
    key_id_text = key_id_text.strip()
    if not (key_id_text.isascii() and key_id_text.isdigit()):
        raise AuthError(f"{where}: key id {key_id_text!r} is not a decimal number")
    key_id = int(key_id_text)
    if key_id > _MAX_KEY_ID:
        raise AuthError(f"{where}: key id {key_id} is outside 0..{_MAX_KEY_ID} (u32)")
    secret = _parse_secret(secret_text.strip(), f"{where} (key {key_id})")
    try:
        return Key(key_id, secret)
    except AuthError as exc:
        raise AuthError(f"{where}: {exc}") from None


def _parse_secret(text: str, where: str) -> bytes:
    prefix, colon, rest = text.partition(":")
    if colon:
        kind = prefix.strip().lower()
        if kind == "hex":
            return _from_hex(rest.strip(), where)
        if kind in ("base64", "b64"):
            return _from_base64(rest.strip(), where)
        raise AuthError(f"{where}: unknown secret prefix {prefix.strip()!r} (hex: or base64:)")
    if not text:
        raise AuthError(f"{where}: empty secret")
    if _HEX_DIGITS.issuperset(text):
        secret = _from_hex(text, where)
        if len(secret) < MIN_SECRET_SIZE and len(text) % 4 == 0:
            raise AuthError(f"{where}: read as hex (only hex digits), the secret is "
                            f"{len(secret)} bytes, below {MIN_SECRET_SIZE}; if it is base64, "
                            "write it as base64:SECRET")
        return secret
    return _from_base64(text, where)


def _from_hex(text: str, where: str) -> bytes:
    if not text or not _HEX_DIGITS.issuperset(text):
        raise AuthError(f"{where}: the secret is not hex digits")
    if len(text) % 2:
        raise AuthError(f"{where}: odd number ({len(text)}) of hex digits in the secret")
    return bytes.fromhex(text)


def _from_base64(text: str, where: str) -> bytes:
    try:
        secret = base64.b64decode(text.translate(_URLSAFE_TO_STANDARD), validate=True)
    except (binascii.Error, ValueError):
        raise AuthError(f"{where}: the secret is neither hex nor valid base64 (standard or "
                        "URL-safe alphabet, with '=' padding)") from None
    if not secret:
        raise AuthError(f"{where}: empty secret")
    return secret


def generate_key(key_id: int) -> str:
    """A new random 32-byte key as one line of key text: ``KEY_ID:HEX`` (no newline)."""
    key = Key(key_id, secrets.token_bytes(GENERATED_SECRET_SIZE))
    return f"{key.key_id}:{key.secret.hex()}"


# --------------------------------------------------------------------------- signing


def sign(datagram: bytes | bytearray | memoryview, ring: KeyRing) -> bytes:
    """The datagram signed with the ring's signing key.

    ``datagram`` is a complete datagram without a trailer (what
    :meth:`~grapevine.codec.DatagramBuilder.finish` returns). The result is a copy with
    header flag AUTH set and the 20-byte trailer appended: the signing key's id (u32 little
    endian) and the 16-byte tag over every byte before the tag. Raises
    :class:`~grapevine.EncodeError` if ``datagram`` is shorter than a header, already has
    the AUTH flag, or would exceed MAX_DATAGRAM_SIZE with the trailer (leave 20 bytes of room).
    """
    if isinstance(datagram, memoryview) and (
            datagram.format != "B" or datagram.ndim != 1 or not datagram.c_contiguous):
        datagram = datagram.tobytes()
    size = len(datagram)
    if size < _HEADER_SIZE or datagram[:4] not in (wire.MAGIC, wire.RETRANSMIT_MAGIC):
        raise EncodeError(f"sign needs a complete datagram or retransmission packet; got "
                          f"{size} bytes that do not start with a Grapevine header")
    flags = datagram[_FLAGS_OFFSET]
    if flags & _AUTH:
        raise EncodeError("the datagram already has the AUTH flag (signed twice?)")
    if size + _TRAILER_SIZE > wire.MAX_DATAGRAM_SIZE:
        raise EncodeError(f"a datagram of {size} bytes plus the {_TRAILER_SIZE}-byte trailer "
                          f"exceeds MAX_DATAGRAM_SIZE {wire.MAX_DATAGRAM_SIZE}")
    # One join and one concatenation measured fastest (tools/bench_auth.py, 2 copies).
    covered = b"".join((datagram[:_FLAGS_OFFSET], _WITH_AUTH_FLAG[flags],
                        datagram[_FLAGS_OFFSET + 1 :], ring._signing_trailer))
    mac = ring._signing_mac.copy()
    mac.update(covered)
    return covered + mac.digest()


# --------------------------------------------------------------------------- verifying


class Verdict(Enum):
    """What :meth:`Verifier.check` found."""

    ACCEPTED = "accepted"
    UNAUTHENTICATED = "unauthenticated"  # no AUTH flag, or too short to hold the trailer
    UNKNOWN_KEY = "unknown key"  # the trailer's key_id is not in the ring
    BAD_TAG = "bad tag"  # forged or corrupted


class Verifier:
    """Checks datagrams' tags against a :class:`KeyRing` (sans-I/O; never raises on data).

    It does not decode messages and does not detect replays (see :class:`ReplayGuard`).
    Counters: ``accepted``, ``unauthenticated``, ``unknown_key``, ``bad_tag`` (also as
    :attr:`counts`). Assign :attr:`ring` to rotate keys.
    """

    __slots__ = ("_macs", "_ring", "accepted", "bad_tag", "unauthenticated", "unknown_key")

    def __init__(self, ring: KeyRing) -> None:
        self._ring = ring
        self._macs = ring._macs
        self.accepted = 0
        self.unauthenticated = 0
        self.unknown_key = 0
        self.bad_tag = 0

    @property
    def ring(self) -> KeyRing:
        """The keys accepted; assign another ring to rotate (takes effect at once)."""
        return self._ring

    @ring.setter
    def ring(self, ring: KeyRing) -> None:
        self._ring = ring
        self._macs = ring._macs

    @property
    def counts(self) -> dict[Verdict, int]:
        """How many datagrams got each verdict."""
        return {Verdict.ACCEPTED: self.accepted, Verdict.UNAUTHENTICATED: self.unauthenticated,
                Verdict.UNKNOWN_KEY: self.unknown_key, Verdict.BAD_TAG: self.bad_tag}

    def check(self, data: bytes | bytearray | memoryview) -> Verdict:
        """The verdict on one received datagram (any bytes: never raises on content).

        Accepted only if header flag AUTH is set, the trailer's key id is in the ring and
        the tag matches (compared in constant time) over every byte before it.
        """
        if type(data) is not bytes:  # bytes (what recvfrom returns) is read as it is
            view = memoryview(data)
            if view.format != "B" or view.ndim != 1 or not view.c_contiguous:
                view = memoryview(view.tobytes())
            data = view
        size = len(data)
        if size < _SMALLEST_SIGNED or not data[_FLAGS_OFFSET] & _AUTH:
            self.unauthenticated += 1
            return Verdict.UNAUTHENTICATED
        tag_start = size - TAG_SIZE
        keyed = self._macs.get(_unpack_key_id(data, tag_start - _KEY_ID_SIZE)[0])
        if keyed is None:
            self.unknown_key += 1
            return Verdict.UNKNOWN_KEY
        mac = keyed.copy()
        mac.update(data[:tag_start])
        if hmac.compare_digest(mac.digest(), data[tag_start:]):
            self.accepted += 1
            return Verdict.ACCEPTED
        self.bad_tag += 1
        return Verdict.BAD_TAG


# --------------------------------------------------------------------------- replay


class _SessionMemory:
    """What a ReplayGuard remembers of one session."""

    __slots__ = ("newest_ns", "order", "seen")

    def __init__(self, send_time_ns: int) -> None:
        self.newest_ns = send_time_ns  # newest send_time_ns accepted in this session
        self.seen: dict[bytes, int] = {}  # remembered tag -> its send_time_ns
        self.order: deque[tuple[int, bytes]] = deque()  # (send_time_ns, tag), accept order


class ReplayGuard:
    """Accepts each authenticated datagram once (sans-I/O: the caller passes the times).

    Call :meth:`accept` with the session id, the header's ``send_time_ns`` and the tag of
    each datagram that :meth:`Verifier.check` accepted (the tag covers the send time, so
    neither can be changed). The rule, per datagram of session S with send time T:

    * if S is remembered: rejected as *old* if T is more than ``window_ns`` older than the
      newest send time accepted in S; else rejected as a *duplicate* if its tag was seen in
      S within the window; else accepted. Reordering within the window is accepted.
    * if S is not remembered (a new session): rejected as *old* if T is more than
      ``window_ns`` older than the newest send time accepted in *any* session (a replayed
      old session, including one forgotten since); else accepted, and S is remembered.

    Rejected datagrams change nothing but the counters. Memory is bounded: a session
    remembers the tags it accepted in accept order and forgets the earliest ones once their
    send time is older than the window (a tag accepted after a later-sent one may linger
    until that one goes: harmless, as a datagram that old is rejected as old anyway), and
    beyond ``max_tags`` tags forgets the earliest (counted in ``forgotten_tags``; a copy of
    such a datagram would then be accepted, so size ``max_tags`` above the datagrams a
    session sends in one window). At most ``max_sessions`` sessions are remembered; the one
    least recently accepted is forgotten first (``forgotten_sessions``). O(1) amortised per
    datagram.

    Counters: ``accepted``, ``replayed_duplicate``, ``replayed_old``. ``newest_ns`` is the
    newest send time accepted in any session (None before the first).
    """

    def __init__(self, window_ns: int = DEFAULT_REPLAY_WINDOW_NS,
                 max_tags: int = DEFAULT_MAX_TAGS,
                 max_sessions: int = DEFAULT_MAX_SESSIONS) -> None:
        if window_ns < 0:
            raise ConfigError(f"window_ns must be >= 0, not {window_ns}")
        if max_tags < 1:
            raise ConfigError(f"max_tags must be >= 1, not {max_tags}")
        if max_sessions < 1:
            raise ConfigError(f"max_sessions must be >= 1, not {max_sessions}")
        self.window_ns = window_ns
        self.max_tags = max_tags
        self.max_sessions = max_sessions
        self.newest_ns: int | None = None
        self.accepted = 0
        self.replayed_duplicate = 0
        self.replayed_old = 0
        self.forgotten_tags = 0
        self.forgotten_sessions = 0
        self._sessions: OrderedDict[int, _SessionMemory] = OrderedDict()

    def accept(self, session_id: int, send_time_ns: int, tag: bytes) -> bool:
        """True the first time this datagram is seen within the window (rule above)."""
        session = self._sessions.get(session_id)
        if session is None:
            if self.newest_ns is not None and send_time_ns < self.newest_ns - self.window_ns:
                self.replayed_old += 1
                return False
            session = self._sessions[session_id] = _SessionMemory(send_time_ns)
            if len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
                self.forgotten_sessions += 1
        else:
            if send_time_ns < session.newest_ns - self.window_ns:
                self.replayed_old += 1
                return False
            if tag in session.seen:
                self.replayed_duplicate += 1
                return False
            self._sessions.move_to_end(session_id)
            if send_time_ns > session.newest_ns:
                session.newest_ns = send_time_ns
        seen = session.seen
        order = session.order
        seen[tag] = send_time_ns
        order.append((send_time_ns, tag))
        if len(order) > self.max_tags:
            del seen[order.popleft()[1]]
            self.forgotten_tags += 1
        horizon = session.newest_ns - self.window_ns
        while order[0][0] < horizon:  # stops at the latest entry at the latest: T >= horizon
            del seen[order.popleft()[1]]
        if self.newest_ns is None or send_time_ns > self.newest_ns:
            self.newest_ns = send_time_ns
        self.accepted += 1
        return True

    @property
    def session_count(self) -> int:
        """Sessions remembered now."""
        return len(self._sessions)

    def remembered_tags(self, session_id: int) -> int:
        """Tags remembered now for ``session_id`` (0 if it is not remembered)."""
        session = self._sessions.get(session_id)
        return 0 if session is None else len(session.seen)

    def _check(self) -> None:
        """Assert the invariants (tests call this after every step; O(tags))."""
        assert len(self._sessions) <= self.max_sessions
        assert min(self.accepted, self.replayed_duplicate, self.replayed_old,
                   self.forgotten_tags, self.forgotten_sessions) >= 0
        assert (self.newest_ns is None) == (self.accepted == 0)
        for session in self._sessions.values():
            order, seen = session.order, session.seen
            assert 1 <= len(order) <= self.max_tags
            assert len(seen) == len(order)
            assert {tag: time for time, tag in order} == seen
            assert all(time <= session.newest_ns for time, _ in order)
            assert order[0][0] >= session.newest_ns - self.window_ns
            assert self.newest_ns is not None
            assert session.newest_ns <= self.newest_ns
