"""Helpers for testing and demonstrating applications built on Grapevine.

* :class:`Market`: a seeded random market that produces valid order-book delta streams
  (never a crossed book), the generator the demo and the order-book examples use;
* :func:`free_port`: a UDP port nothing on this host holds for a group (a bind probe that
  sends nothing), so tests need no fixed ports.

Everything here is public API, unlike the modules whose names start with an underscore.
"""

from __future__ import annotations

from ._market import Market
from ._transport import free_port

__all__ = ["Market", "free_port"]
