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
    "LeafIdError",
    "NetworkError",
    "PublisherFailedError",
    "QueueFullError",
    "UnknownLeafError",
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


class LeafIdError(ConfigError, EncodeError):
    """A leaf id is not an int in 0..MAX_LEAF_ID (2**32 - 1).

    The same error wherever a leaf id is given: ``publish``, ``delete``, ``initial``,
    ``on_leaf``. It is a :class:`ConfigError` (a bad argument) and an :class:`EncodeError`
    (a value the wire cannot carry).
    """


class UnknownLeafError(GrapevineError, KeyError):
    """The leaf does not exist (``delete`` of a missing leaf, ``get`` of a leaf not held).

    A :class:`KeyError` too, so mapping-style code that catches ``KeyError`` still works.
    """

    def __str__(self) -> str:  # KeyError would print the repr of its argument
        return str(self.args[0]) if self.args else "unknown leaf"


class QueueFullError(GrapevineError, RuntimeError):
    """Back-pressure: the send queue is full and the change was *not* applied.

    Raised by ``publish``/``delete`` with ``on_full="error"``, or after ``publish_timeout``
    with ``on_full="block"``. Not an :class:`EncodeError`: nothing was wrong with the value;
    publish it again once the queue drains. From ``publish_many``, ``published`` is how
    many of the batch's changes were published before the queue filled.
    """

    published: int = 0


class NetworkError(GrapevineError, OSError):
    """A socket could not be set up for the group, port and interface given (for example
    an interface address this host does not have). ``errno`` is the operating system's;
    the message names the interface, group and port."""


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
