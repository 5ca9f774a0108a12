"""How a user describes the state that a stream replicates.

A stream carries *leaves* keyed by an integer ``leaf_id`` (0 to 2**32-1). The user tells
Grapevine, once, how a delta changes a leaf and how deltas and whole leaves become bytes, by
passing an object with the six methods of :class:`LeafModel`. Grapevine never looks inside
leaves or deltas.
"""

from __future__ import annotations

from typing import Protocol, TypeVar, runtime_checkable

__all__ = ["BytesModel", "LeafModel"]

LeafT = TypeVar("LeafT")
DeltaT = TypeVar("DeltaT")


@runtime_checkable
class LeafModel(Protocol[LeafT, DeltaT]):
    """The six operations Grapevine needs on a user's leaves and deltas.

    ``apply`` may mutate ``leaf`` in place and return it, or return a new value. It must be
    deterministic: the publisher and every subscriber apply the same deltas in the same order
    and must end with equal leaves.
    """

    def new_leaf(self) -> LeafT:
        """An empty leaf: a delta that creates a leaf is applied to this."""
        ...

    def apply(self, leaf: LeafT, delta: DeltaT) -> LeafT:
        """The leaf after ``delta``."""
        ...

    def encode_delta(self, delta: DeltaT) -> bytes:
        """Delta to bytes (the payload of a DELTA message)."""
        ...

    def decode_delta(self, payload: memoryview) -> DeltaT:
        """Bytes to delta. ``payload`` is only valid during the call: copy what you keep."""
        ...

    def encode_leaf(self, leaf: LeafT) -> bytes:
        """A whole leaf to bytes (the payload of its SNAPSHOT, fragmented if large)."""
        ...

    def decode_leaf(self, payload: memoryview) -> LeafT:
        """Bytes to a whole leaf. ``payload`` is only valid during the call."""
        ...


class BytesModel:
    """The simplest model: a leaf is a ``bytes`` value and each delta replaces it."""

    def new_leaf(self) -> bytes:
        """The empty value."""
        return b""

    def apply(self, leaf: bytes, delta: bytes) -> bytes:
        """The delta is the new value."""
        return delta

    def encode_delta(self, delta: bytes) -> bytes:
        """The bytes themselves."""
        return bytes(delta)

    def decode_delta(self, payload: memoryview) -> bytes:
        """A copy of the payload."""
        return bytes(payload)

    def encode_leaf(self, leaf: bytes) -> bytes:
        """The bytes themselves."""
        return bytes(leaf)

    def decode_leaf(self, payload: memoryview) -> bytes:
        """A copy of the payload."""
        return bytes(payload)
