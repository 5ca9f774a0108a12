"""The stream id rules both ends share: its range, and the keyword that may override a config.

A :class:`Publisher` and a :class:`Subscriber` each take ``stream_id`` both as a keyword and as
a field of their config; one definition here keeps the two ends from drifting apart in what
they accept or in the error they raise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, ClassVar, Protocol, TypeVar

from ._errors import ConfigError

__all__ = ["MAX_STREAM_ID", "check_stream_id", "config_for_stream"]

MAX_STREAM_ID = 0xFFFF_FFFF  # the header's stream_id field is 32 bits


def check_stream_id(stream_id: int) -> None:
    """Raise :class:`ConfigError` unless ``stream_id`` fits the header's 32-bit field."""
    if not 0 <= stream_id <= MAX_STREAM_ID:
        raise ConfigError(f"stream_id {stream_id} is outside 0..2**32-1")


class _StreamConfig(Protocol):
    """A frozen dataclass config with a ``stream_id`` field (PublisherConfig, SubscriberConfig)."""

    __dataclass_fields__: ClassVar[dict[str, Any]]

    @property
    def stream_id(self) -> int: ...


_ConfigT = TypeVar("_ConfigT", bound=_StreamConfig)


def config_for_stream(config: _ConfigT | None, stream_id: int | None,
                      default: Callable[[], _ConfigT]) -> _ConfigT:
    """``config`` (or ``default()`` when None) with the ``stream_id`` keyword applied.

    Without the keyword the config's stream_id stands. A keyword that contradicts a config
    the caller gave raises :class:`ConfigError`: picking either would silently follow the
    wrong stream. The copy goes through the config's validation, so an out-of-range keyword
    fails exactly as the same value in the config would.
    """
    base = config if config is not None else default()
    if stream_id is None:
        stream_id = base.stream_id
    elif config is not None and config.stream_id != stream_id:
        raise ConfigError(f"stream_id={stream_id} conflicts with "
                          f"config.stream_id={config.stream_id}: give it once")
    return replace(base, stream_id=stream_id)
