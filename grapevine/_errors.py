"""Grapevine's exception tree.

Errors are split the way h11 splits them: :class:`DecodeError` means a *remote* party sent
bytes that are not valid Grapevine v1 (receivers count it and carry on); every other error
means the *local* caller misused the library and is raised at the call.
"""

from __future__ import annotations

__all__ = ["ClosedError", "ConfigError", "DecodeError", "EncodeError", "GrapevineError"]


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


class ClosedError(GrapevineError, RuntimeError):
    """The object was used after ``close()``."""
