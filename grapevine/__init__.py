"""Grapevine: replicate state over UDP multicast.

A publisher owns some state made of *leaves*; it multicasts every change as a sequenced
delta and cycles snapshots of every leaf, so any number of subscribers keep a live replica,
detect loss, repair exactly the leaves that loss touched and know when they are in sync.

.. include:: ../docs/guide.md
"""

from __future__ import annotations

from ._decode_cmd import PcapError
from ._dispatch import Subscription
from ._errors import (
    AuthError,
    ClosedError,
    ConfigError,
    DecodeError,
    EncodeError,
    GrapevineError,
    LeafIdError,
    NetworkError,
    PublisherFailedError,
    QueueFullError,
    UnknownLeafError,
)
from ._publisher_core import PublisherConfig
from ._subscriber_core import SubscriberConfig
from ._transport import DEFAULT_GROUP, DEFAULT_INTERFACE, DEFAULT_PORT
from .auth import Key, KeyRing, ReplayGuard, Verdict, Verifier
from .codec import decode_datagram, describe_datagram
from .events import Status, StatusEvent, Update, UpdateKind
from .model import BytesModel, LeafModel
from .publisher import Publisher
from .stats import PublisherStats, SubscriberStats
from .subscriber import Delivery, Replica, Subscriber

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_GROUP",
    "DEFAULT_INTERFACE",
    "DEFAULT_PORT",
    "AuthError",
    "BytesModel",
    "ClosedError",
    "ConfigError",
    "DecodeError",
    "Delivery",
    "EncodeError",
    "GrapevineError",
    "Key",
    "KeyRing",
    "LeafIdError",
    "LeafModel",
    "NetworkError",
    "PcapError",
    "Publisher",
    "PublisherConfig",
    "PublisherFailedError",
    "PublisherStats",
    "QueueFullError",
    "Replica",
    "ReplayGuard",
    "Status",
    "StatusEvent",
    "Subscriber",
    "SubscriberConfig",
    "SubscriberStats",
    "Subscription",
    "UnknownLeafError",
    "Update",
    "UpdateKind",
    "Verdict",
    "Verifier",
    "__version__",
    "decode_datagram",
    "describe_datagram",
]
