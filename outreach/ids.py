"""Deterministic ids: the same input always yields the same ids, so replays are comparable.

An id is a prefix and a 24-character base32 digest (120 bits) of the parts that define it,
e.g. ``signal_id = make_id("sig", rule_id, event_id)``.
"""

from __future__ import annotations

import base64
import hashlib


def digest(*parts: str) -> str:
    """A 24-character lowercase base32 digest of ``parts`` (unambiguous separator)."""
    h = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=15)
    return base64.b32encode(h.digest()).decode().lower()


def make_id(prefix: str, *parts: str) -> str:
    """``prefix_<digest>``, e.g. ``sig_mfrggzdfmztwq2lk``."""
    return f"{prefix}_{digest(*parts)}"
