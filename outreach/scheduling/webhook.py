"""The approvals webhook: announce each new pending approval to a URL of the operator's choice
(a chat bot, an on-call tool, a ticket queue).

Run by the active scheduler (one per store, so one announcer): every ``every`` seconds it posts
each pending approval not yet announced, oldest first, and marks it announced once the
receiver answered 2xx. A failure (an error status, a timeout, a refused connection) leaves it
unannounced and stops the round; the next round tries again. At least once: a scheduler killed
between the receiver's 2xx and the mark announces it again, with the same ``Idempotency-Key``
(``approval:<action_id>``) for the receiver to drop.

The request: ``POST`` JSON ``{"type": "approval.pending", "approval": {...}}`` (the entry as
``GET /v1/approvals/{id}`` returns it) with headers ``X-Outreach-Timestamp`` (Unix seconds)
and, when a secret is set, ``X-Outreach-Signature: sha256=<hex>``, the HMAC-SHA256 of
``<timestamp>.<body>`` under the secret. A receiver recomputes it over the raw body, compares
in constant time and refuses timestamps more than five minutes old.
"""

from __future__ import annotations

import logging
import time

import httpx
import orjson

from outreach.signing import signature
from outreach.store import Store
from outreach.store.operator import Approval, Operator

log = logging.getLogger(__name__)


class ApprovalsWebhook:
    """Announces new pending approvals to ``url`` (see the module docstring)."""

    def __init__(
        self, store: Store, url: str, secret: str | None = None, *, timeout: float = 10.0
    ) -> None:
        self.operator = Operator(store)
        self.url = url
        self.secret = secret
        self.client = httpx.Client(timeout=timeout, follow_redirects=False)
        self.announced = 0
        self.failures = 0

    def close(self) -> None:
        """Release the HTTP connections."""
        self.client.close()

    def request(self, approval: Approval) -> tuple[bytes, dict[str, str]]:
        """The body and headers announcing ``approval``."""
        body = orjson.dumps({"type": "approval.pending", "approval": approval.as_dict()})
        stamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "outreach-approvals-webhook",
            "Idempotency-Key": f"approval:{approval.action_id}",
            "X-Outreach-Timestamp": stamp,
        }
        if self.secret:
            headers["X-Outreach-Signature"] = signature(self.secret, stamp, body)
        return body, headers

    def announce_once(self, limit: int = 100) -> int:
        """Announce what is waiting (at most ``limit``); returns how many were accepted."""
        done = 0
        for approval in self.operator.unannounced_approvals(limit):
            body, headers = self.request(approval)
            try:
                answer = self.client.post(self.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                self.failures += 1
                log.warning("approvals webhook: %s unreachable (%r); will retry", self.url, exc)
                break
            if not answer.is_success:
                self.failures += 1
                log.warning(
                    "approvals webhook: %s answered %d for %s; will retry",
                    self.url, answer.status_code, approval.action_id,
                )  # fmt: skip
                break
            self.operator.mark_announced(approval.action_id, time.time())
            done += 1
        self.announced += done
        return done
