"""Deterministic ids: the same input always yields the same ids, so replays are comparable.

An id is a prefix and a 24-character hex digest (96 bits, BLAKE2b) of the parts that define
it, e.g. ``signal_id = make_id("sig", rule_id, customer_id, event_id)``. Hex, not base32:
``base64.b32encode`` is pure Python and showed up in replay profiles.
"""

from __future__ import annotations

import hashlib


def digest(*parts: str) -> str:
    """A 24-character lowercase hex digest of ``parts`` (unambiguous separator)."""
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=12).hexdigest()


def make_id(prefix: str, *parts: str) -> str:
    """``prefix_<digest>``, e.g. ``sig_3f9c2a...``."""
    return f"{prefix}_{digest(*parts)}"
