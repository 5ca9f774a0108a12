"""Grapevine: replicate state over UDP multicast.

A publisher owns some state made of *leaves*; it multicasts every change as a sequenced
delta and cycles snapshots of every leaf, so any number of subscribers keep a live replica,
detect loss, repair exactly the leaves that loss touched and know when they are in sync.
"""

from __future__ import annotations

from ._errors import ClosedError, ConfigError, DecodeError, EncodeError, GrapevineError
from .codec import decode, describe
from .model import BytesModel, LeafModel

__version__ = "0.1.0"

__all__ = [
    "BytesModel",
    "ClosedError",
    "ConfigError",
    "DecodeError",
    "EncodeError",
    "GrapevineError",
    "LeafModel",
    "__version__",
    "decode",
    "describe",
]
