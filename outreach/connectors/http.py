"""The generic HTTP action connector: one tool, one request to the operator's own system.

Every request carries ``Idempotency-Key: <the effect's key>`` (the same on every retry, so a
receiver that keeps keys performs once), ``X-Outreach-Timestamp`` and, with a secret,
``X-Outreach-Signature: sha256=HMAC(secret, "<timestamp>.<body>")`` (``outreach.signing``).

What is retried (by the dispatcher, with backoff) and what is not:
- the request never reached the system (connection refused, connect timeout): transient for
  every tool, since nothing was sent (this is what the circuit breaker holds during an outage);
- a 429, a read timeout, a broken connection or a 5xx: retried only for tools declared
  ``idempotent`` (the receiver honours the key). For the others it is a permanent failure for
  a person to check, never a second attempt: "outcome unknown" for a timeout or a 5xx (the
  system may have performed it), "rate limited, not retried" for a 429;
- any other 4xx: permanent, with the system's reason.
A 2xx is mapped by ``response``: ``failed_when`` turns an answer into a failed result with the
system's ``reason``; ``external_id`` and ``events`` (new states the system reports) are taken
from it.

Circuit breaker, per tool: ``failures`` consecutive failures of the system (unreachable,
timeouts, 5xx; not 4xx, not 429) open it for ``cooldown``; while open, its effects are held
(``ConnectorPaused``: put back untried, not counted as attempts) and every other tool goes on.
After the cooldown one request is let through: an answer below 500 (the system is up) closes
it, a failure opens it again, and a request that never went (a template that does not fit)
lets the next one try.
Each dispatcher process keeps its own breakers.

Must not import: faust, aiokafka, sqlalchemy, fastapi, openai.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NoReturn

import httpx
import orjson

from outreach.agents.connectors import Effect, EffectResult
from outreach.connectors.config import HttpTool, lookup, render
from outreach.errors import ConnectorPaused, PermanentConnectorError, TransientConnectorError
from outreach.outbound.config import retry_after_seconds
from outreach.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, signature


class CircuitBreaker:
    """Consecutive-failure breaker with a cooldown and a single trial when it ends."""

    def __init__(
        self, failures: int, cooldown: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.threshold = failures
        self.cooldown = cooldown
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self.trial = False  # a request is under way after the cooldown
        self.opened = 0  # times it opened (for metrics and tests)

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half_open`` (cooldown over, a trial may go)."""
        if self.opened_at is None:
            return "closed"
        return "open" if self.clock() - self.opened_at < self.cooldown else "half_open"

    def allow(self) -> float | None:
        """None when a request may go; else the seconds until it may."""
        state = self.state
        if state == "closed":
            return None
        assert self.opened_at is not None
        if state == "open" or self.trial:
            return max(0.0, self.opened_at + self.cooldown - self.clock()) or self.cooldown
        self.trial = True
        return None

    def success(self) -> None:
        self.failures, self.opened_at, self.trial = 0, None, False

    def release(self) -> None:
        """The trial ended without a verdict on the system (its request was never sent, or
        was cancelled): the next caller may try."""
        self.trial = False

    def failure(self) -> None:
        self.failures += 1
        if self.trial or (self.opened_at is None and self.failures >= self.threshold):
            self.opened_at, self.trial = self.clock(), False
            self.opened += 1


class HttpConnector:
    """Performs one tool's effects by HTTP (see the module docstring)."""

    def __init__(
        self,
        tool: str,
        config: HttpTool,
        *,
        secret: str | None = None,
        public_url: str | None = None,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tool = tool
        self.config = config
        self.secret = secret
        self.public_url = public_url.rstrip("/") if public_url else None
        self.client = client or httpx.AsyncClient(follow_redirects=False)
        self.breaker = CircuitBreaker(
            config.breaker.failures, config.breaker.cooldown.total_seconds(), clock
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    def context(self, effect: Effect) -> dict[str, Any]:
        """What the templates see."""
        timeline = (
            f"{self.public_url}/v1/customers/{effect.customer_id}/timeline"
            if self.public_url
            else None
        )
        return {
            "params": effect.params,
            "effect": effect.model_dump(mode="json", exclude={"params"}),
            "customer_id": effect.customer_id,
            "timeline_url": timeline,
            "now": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        }

    def request(
        self, effect: Effect, ctx: dict[str, Any] | None = None
    ) -> tuple[str, bytes, dict[str, str]]:
        """The URL, body and headers performing ``effect``; PermanentConnectorError when the
        templates cannot be filled from it (a configuration that does not fit the tool)."""
        ctx = self.context(effect) if ctx is None else ctx
        try:
            url = str(render(self.config.url, ctx))
            body = render(self.config.body, ctx) if self.config.body is not None else None
        except Exception as exc:  # jinja's UndefinedError, a missing path: never retried
            raise PermanentConnectorError(
                f"{self.tool}: the connector's templates do not fit this effect: {exc}"
            ) from None
        if body is None:
            body = effect.model_dump(mode="json")
        content = orjson.dumps(body)
        stamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "outreach-connector",
            **self.config.headers,
            "Idempotency-Key": effect.idempotency_key,
            TIMESTAMP_HEADER: stamp,
        }
        if self.secret:
            headers[SIGNATURE_HEADER] = signature(self.secret, stamp, content)
        return url, content, headers

    async def perform(self, effect: Effect) -> EffectResult:
        """One request; raises as the module docstring says."""
        wait = self.breaker.allow()
        if wait is not None:
            raise ConnectorPaused(
                f"{self.tool}: circuit open after {self.breaker.failures} failures in a row; "
                f"held for {wait:.0f}s",
                retry_after=wait,
            )
        try:
            return await self._perform(effect)
        finally:
            self.breaker.release()  # a trial that reached no verdict frees its slot

    async def _perform(self, effect: Effect) -> EffectResult:
        ctx = self.context(effect)
        url, content, headers = self.request(effect, ctx)
        timeout = httpx.Timeout(
            self.config.timeout.read.total_seconds(),
            connect=self.config.timeout.connect.total_seconds(),
        )
        try:
            answer = await self.client.request(
                self.config.method, url, content=content, headers=headers, timeout=timeout
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            self.breaker.failure()
            raise TransientConnectorError(f"{self.tool}: {url} unreachable: {exc!r}") from None
        except httpx.HTTPError as exc:  # read timeout, connection dropped mid-answer
            self.breaker.failure()
            self._unknown(f"no answer from {url} ({type(exc).__name__})")
        return self._answer(answer, ctx)

    def _unknown(self, what: str, retry_after: float | None = None) -> NoReturn:
        """The system may have performed it: retry only what it keeps once per key."""
        if self.config.idempotent:
            raise TransientConnectorError(f"{self.tool}: {what}", retry_after)
        raise PermanentConnectorError(
            f"{self.tool}: {what}; the outcome is unknown and the tool is not declared "
            "idempotent, so it is not retried: check the system for this Idempotency-Key"
        )

    def _answer(self, answer: httpx.Response, ctx: dict[str, Any]) -> EffectResult:
        status = answer.status_code
        if status < 500:  # it answered: the system is up, whatever it said
            self.breaker.success()
        if status == 429:
            after = retry_after_seconds(answer.headers.get("Retry-After"))
            if self.config.idempotent:
                raise TransientConnectorError(f"{self.tool}: rate limited (429)", after)
            raise PermanentConnectorError(
                f"{self.tool}: rate limited (429); not retried, since only tools declared "
                "idempotent are retried: raise the system's limit or declare the tool idempotent"
            )
        if status >= 500:
            self.breaker.failure()
            after = retry_after_seconds(answer.headers.get("Retry-After"))
            self._unknown(f"answered {status}: {_excerpt(answer)}", after)
        if status == 409 and self.config.idempotent:  # the same key still in flight there
            raise TransientConnectorError(f"{self.tool}: 409 conflict: {_excerpt(answer)}")
        if not 200 <= status < 300:
            raise PermanentConnectorError(f"{self.tool}: answered {status}: {_excerpt(answer)}")
        data = _json(answer)
        mapping = self.config.response
        external = lookup(data, mapping.external_id) if mapping.external_id else None
        external_id = None if external is None else str(external)
        for path, values in mapping.failed_when.items():
            if lookup(data, path) in values:
                reason = lookup(data, mapping.reason) if mapping.reason else None
                detail = f"{path} = {lookup(data, path)!r}" + (f": {reason}" if reason else "")
                return EffectResult(status="failed", detail=detail, external_id=external_id)
        replayed = answer.headers.get("Idempotent-Replayed", "").lower() == "true"
        ctx = {**ctx, "answer": data}
        events: list[dict[str, Any]] = []
        for event in mapping.events:
            if event.when is not None and lookup(data, event.when) is None:
                continue
            try:
                events.append({"type": event.type, "data": render(event.data, ctx)})
            except Exception as exc:  # the answer lacks what the mapping reads: dead-lettered
                why = f"the answer does not fit response.events ({event.type}): {exc}"
                events.append({"type": event.type, "data": None, "mapping_error": why})
        return EffectResult(
            status="done", detail=f"{status}", external_id=external_id, replayed=replayed,
            events=tuple(events),
        )  # fmt: skip


def _json(answer: httpx.Response) -> Any:
    if not answer.content:
        return {}
    try:
        return orjson.loads(answer.content)
    except orjson.JSONDecodeError:
        return {}


def _excerpt(answer: httpx.Response) -> str:
    text = answer.text.strip().replace("\n", " ")
    return text[:300] or answer.reason_phrase
