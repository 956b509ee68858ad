"""The engine's own request signature, for every request it sends to a system of the operator's
(approvals webhook, HTTP action connectors).

``X-Outreach-Timestamp: <unix seconds>`` and ``X-Outreach-Signature: sha256=<hex>``, the
HMAC-SHA256 of ``<timestamp>.<body>`` under the shared secret. A receiver recomputes it over
the raw body, compares in constant time (``hmac.compare_digest``) and refuses timestamps more
than five minutes from its own clock (a replayed request).
"""

from __future__ import annotations

import hashlib
import hmac

TIMESTAMP_HEADER = "X-Outreach-Timestamp"
SIGNATURE_HEADER = "X-Outreach-Signature"


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Outreach-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"
