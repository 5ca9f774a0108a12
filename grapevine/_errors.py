"""Grapevine's exception tree.

Errors are split the way h11 splits them: :class:`DecodeError` means a *remote* party sent
bytes that are not valid Grapevine v1 (receivers count it and carry on); every other error
means the *local* caller misused the library and is raised at the call, except
:class:`PublisherFailedError`, raised at the next call after a publisher's sender thread failed.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "ClosedError",
    "ConfigError",
    "DecodeError",
    "EncodeError",
    "GrapevineError",
    "PublisherFailedError",
]


class GrapevineError(Exception):
    """Root of every exception Grapevine raises on purpose."""


class DecodeError(GrapevineError, ValueError):
    """A datagram is not valid Grapevine v1.

    The only exception decoding ever raises. ``field`` names the wire field that was wrong
    (as spelled in protocol/SPEC.md) and ``offset`` is its byte offset in the datagram.
    """

    def __init__(self, message: str, *, offset: int, field: str) -> None:
        super().__init__(f"{message} (field {field!r} at offset {offset})")
        self.reason = message
        self.offset = offset
        self.field = field


class EncodeError(GrapevineError, ValueError):
    """A value cannot be represented on the wire (negative, too large, payload too big)."""


class ConfigError(GrapevineError, ValueError):
    """A constructor or call argument is invalid (bad group address, bad rate, ...)."""


class AuthError(GrapevineError, ValueError):
    """Authentication was misconfigured or misused locally.

    Bad key material (a malformed or short secret, a duplicate key id, a key file or
    environment variable that cannot be read), or signing with a key the ring lacks. A
    datagram that fails verification is not an error: :class:`grapevine.auth.Verifier`
    returns a verdict for it.
    """


class ClosedError(GrapevineError, RuntimeError):
    """The object was used after ``close()``."""


class PublisherFailedError(GrapevineError, RuntimeError):
    """The publisher's sender thread failed, so nothing more is sent in its session.

    Raised by ``publish``, ``delete`` and ``flush`` once the sender has failed, and by
    ``close`` if no earlier call raised it. The exception that stopped the sender is its
    ``__cause__`` (and :attr:`Publisher.failure`). Start a new ``Publisher`` (a new
    session) to go on publishing.
    """
