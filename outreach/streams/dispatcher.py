"""The effects dispatcher: performs due outbox rows through the connector and channel ports.

Each round claims due rows (leased, so a crashed dispatcher's rows come back after the lease),
performs them, and marks them ``done``; a transient failure puts the row back with exponential
backoff and full jitter (or the provider's ``retry_after``) until it has been tried
``max_attempts`` times AND ``retry_for`` seconds have passed since its first call to the
provider (so a provider down for minutes delays messages, it does not lose them); a permanent
failure marks it ``failed`` and is never retried. The first call's time (``first_tried_at``)
is written with that call's outcome, in the same fenced update: a row that waited for hours
before it (due after quiet hours, held by a kill switch or an open circuit) still gets its
whole window, and a row from before the column existed starts it at its next call. The
database away: each round is retried with backoff, and the outage is logged once when it
starts and once when it ends.

Before a delivery goes, the address is checked against the store's suppressions (written by
the webhooks the moment a STOP, bounce or unsubscribe arrives), so a message decided before
the customer's state caught up still never reaches an address that opted out; only the
compliance replies themselves (the STOP confirmation, HELP) pass. A delivery that is refused
(suppressed, a permanent provider error, too many attempts) is reported back to the core as a
``message.status`` event, in the same transaction as the row's final state, so its policy
reaction (suppression, email instead of SMS) happens on the customer's partition (the events
it writes back are made in ``outreach.streams.reports``).

An effect's result: ``failed`` (the system answered that it could not do it: the connector's
``failed_when``) marks the row ``failed`` with the system's reason; the new states a connector
reports (``EffectResult.events``, e.g. a new delivery estimate after a rebooking) become input
events for the customer, relayed in the same transaction as the row's ``done`` (one that does
not validate goes to the dead-letter topic instead). A connector whose circuit is open
(``ConnectorPaused``) has its rows held like a kill switch's, not counted as attempts; so
has a delivery whose channel could not look up an earlier try (``DeliveryHeld``: the lookup
rate-limited or failing), since sending blind might send it twice.

A kill switch thrown by an operator (``POST /v1/killswitch``) holds the rows of its tool or
channel already in the outbox: they are put back untried (not counted as attempts) and go
once the switch is lifted; the core stops deciding new ones at its next batch.

Crash between "performed" and "marked": the row's lease runs out and it is performed again
with the same idempotency key. Connectors pass the key on (Stripe, HTTP ``Idempotency-Key``)
and the file channel/connector keep each key once, so the second call changes nothing the
customer sees. A provider with no idempotency key of its own must be reconciled by its
channel (look the key up before sending again): the channel is told ``retry`` when an earlier
try may have reached the provider, which is from the second attempt on unless the attempt
just before was this process's and the channel said it left no copy
(``TransientDeliveryError.unsent``: a 429, a refused account). The window that remains is
documented in docs/live-runtime.md.

Logs and metrics. Each row is performed with its ids bound for log lines (``kind``,
``idempotency_key``, ``customer_id``, and ``action_id``/``tool``/``signal_id`` or
``message_id``/``channel``: ``outreach.telemetry.logs.correlate``). Each attempt counts in
this process's metrics (``outreach.telemetry.metrics``): its outcome, the provider call's
time, and a failed call's provider and class (timeout, connect, 429, 5xx, 4xx); the circuit
breakers of the connectors are exported too.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import orjson
from pydantic import ValidationError

from outreach.agents.connectors import Connector, Effect
from outreach.decisions import Delivery
from outreach.errors import (
    ConnectorPaused,
    DeliveryHeld,
    PermanentConnectorError,
    PermanentDeliveryError,
    TransientConnectorError,
    TransientDeliveryError,
)
from outreach.outbound.channels import Channel
from outreach.store import OutboxRow, Store
from outreach.store.contacts import Contacts
from outreach.streams.outage import Outage, unavailable
from outreach.streams.reports import relay_reported, report_failure
from outreach.telemetry import metrics
from outreach.telemetry.logs import correlate

log = logging.getLogger(__name__)


@dataclass
class DispatcherOptions:
    """Retry and lease policy."""

    batch: int = 100
    lease: float = 60.0  # a claimed row is due again if not marked within this
    max_attempts: int = 8  # a transient failure gives up only past both of these: at least
    retry_for: float = 3600.0  # this many attempts and this many seconds since the first call
    backoff_base: float = 1.0
    backoff_max: float = 600.0
    poll: float = 0.2
    hold: float = 30.0  # a row held by a kill switch is looked at again after this


@dataclass
class DispatchStats:
    """Counts since start."""

    done: int = 0
    replayed: int = 0  # performed before (a crash between performing and marking)
    retried: int = 0
    failed: int = 0
    suppressed: int = 0  # deliveries refused because the address had opted out meanwhile
    held: int = 0  # rows put back untried because a kill switch covers their tool or channel
    paused: int = 0  # effects put back untried because their connector's circuit is open
    reported: int = 0  # events made from what a connector's system answered
    by_kind: dict[str, int] = field(default_factory=dict)


class Dispatcher:
    """Drains the outbox through one connector (effects) and one channel (deliveries)."""

    def __init__(
        self,
        store: Store,
        connector: Connector,
        channel: Channel,
        options: DispatcherOptions | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.connector = connector
        self.channel = channel
        self.options = options or DispatcherOptions()
        self.stats = DispatchStats()
        self.contacts = Contacts(store)
        self._switches: dict[tuple[str, str], str] = {}
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not security
        self._clock: Callable[[], float] = time.time  # the round's (run_once sets it)
        # outbox row id -> the attempt after which its provider surely held no copy (the
        # channel said ``unsent``): the next attempt, if it is this process's, needs no lookup
        self._unsent: dict[int, int] = {}
        metrics.watch_circuits(connector)

    def backoff(self, attempts: int, retry_after: float | None) -> float:
        """Seconds before the next attempt: full jitter over an exponential cap, and never
        sooner than the provider asked."""
        opts = self.options
        cap = min(opts.backoff_max, opts.backoff_base * 2 ** min(attempts - 1, 60))
        delay = self._rng.uniform(0, cap)
        return max(delay, retry_after or 0.0)

    async def run_once(self, now: float | None = None) -> int:
        """Perform every row due now (one claim); returns how many were handled. ``now``
        fixes the round's clock (tests); by default each outcome is timed when it is known
        (a backoff or a provider's Retry-After counts from the failure, not the round's
        start, which may be minutes earlier)."""
        at = time.time() if now is None else now
        self._clock = time.time if now is None else (lambda: at)
        rows = await asyncio.to_thread(
            self.store.claim_due, at, self.options.batch, self.options.lease
        )
        if rows:  # switched off since the rows were decided: hold them, do not perform
            self._switches = await asyncio.to_thread(self.contacts.controls)
        for row in rows:
            with correlate(
                kind=row.kind, idempotency_key=row.idempotency_key, customer_id=row.customer_id
            ):
                await self._counted(row, at)
        return len(rows)

    async def _counted(self, row: OutboxRow, now: float) -> None:
        """Perform ``row`` and count the attempt's outcome (read off the stats it moved)."""
        before = dataclasses.replace(self.stats, by_kind={})
        target, outcome = _target(row), "error"  # error: the store failed us (run() logs it)
        try:
            await self._perform(row, now)
            outcome = _outcome(before, self.stats)
        finally:
            metrics.DISPATCH_ATTEMPTS.labels(row.kind, target, outcome).inc()

    def _provider(self, request: Effect | Delivery) -> str:
        """The provider label of the connector or channel that performs ``request``."""
        if isinstance(request, Effect):
            routes = getattr(self.connector, "routes", None)
            default = getattr(self.connector, "default", self.connector)
            if isinstance(routes, dict):
                return metrics.provider_of(routes.get(request.tool, default))
            return metrics.provider_of(self.connector)
        pick = getattr(self.channel, "channel_for", None)
        try:
            return metrics.provider_of(pick(request) if pick is not None else self.channel)
        except Exception:  # no channel for it: the error itself says so
            return "none"

    def _provider_error(self, request: Effect | Delivery, exc: BaseException) -> None:
        metrics.PROVIDER_ERRORS.labels(self._provider(request), metrics.error_class(exc)).inc()

    async def _held(self, row: OutboxRow, request: Effect | Delivery, now: float) -> bool:
        """Whether a kill switch holds ``row`` (its tool or channel is switched off); it is
        put back untried, due again after ``hold``, and goes once the switch is lifted."""
        key = (
            ("tool", request.tool) if isinstance(request, Effect) else ("channel", request.channel)
        )
        why = self._switches.get(key)
        if why is None:
            return False
        self.stats.held += 1
        error = f"held: kill switch on {key[0]} {key[1]} ({why})"
        await asyncio.to_thread(
            partial(
                self.store.retry_later, row.id, now + self.options.hold, error,
                claim=row.attempts, hold=True,
            )
        )  # fmt: skip
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch until ``stop`` is set (a database outage: logged once, waited out)."""
        outage = Outage("dispatcher", log)
        while not stop.is_set():
            wait = self.options.poll
            try:
                handled = await self.run_once()
                outage.recovered()
            except Exception as exc:
                if unavailable(exc):
                    wait = max(wait, outage.failed(exc))
                else:  # a bug or bad data: logged in full, and the next round goes on
                    log.exception("dispatcher: round failed; retrying")
                handled = 0
            if handled < self.options.batch:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=wait)

    async def _perform(self, row: OutboxRow, now: float) -> None:
        try:
            request = (Effect if row.kind == "effect" else Delivery).model_validate_json(
                row.payload
            )
        except ValidationError as exc:  # cannot succeed however often it is tried
            await self._finish(row, "failed", None, f"permanent: unreadable payload: {exc}")
            return
        ids = (
            {"action_id": request.action_id, "tool": request.tool,
             "signal_id": request.signal_id or None}
            if isinstance(request, Effect)
            else {"message_id": request.message_id, "channel": request.channel}
        )  # fmt: skip
        with correlate(**ids):
            await self._attempt(row, request, now)

    async def _attempt(self, row: OutboxRow, request: Effect | Delivery, now: float) -> None:
        if await self._held(row, request, now):
            return
        if isinstance(request, Delivery) and await self._refused(row, request, now):
            return
        if not await self._renewed(row):
            return
        records: list[tuple[str, bytes | None, bytes]] = []
        target = request.tool if isinstance(request, Effect) else request.channel
        timed = partial(_timed, row.kind, target, self._provider(request))
        tried = self._clock()  # this call's time: the row's first_tried_at if it has none
        finish = partial(self._finish, tried_at=tried)
        started = time.perf_counter()
        try:
            if isinstance(request, Effect):
                effect = await self.connector.perform(request)
                timed(started)
                now = self._clock()  # the outcome's time (a backoff counts from a failure)
                replayed, result = effect.replayed, effect.model_dump_json().encode()
                records = relay_reported(request, effect, now)
                self.stats.reported += len(records)
                if effect.status == "failed":  # what it reported still goes (a decline)
                    refused = f"the system refused: {effect.detail}"
                    report = report_failure(row, request, None, refused, now)
                    await finish(row, "failed", result, refused, *records, report)
                    return
            else:
                sent = await self.channel.send(
                    request, row.idempotency_key, retry=self._maybe_sent(row)
                )
                timed(started)
                replayed, result = sent.replayed, sent.model_dump_json().encode()
        except (ConnectorPaused, DeliveryHeld) as exc:  # nothing done, nothing known: not tried
            now = self._clock()
            self.stats.paused += 1
            at = now + (exc.retry_after or self.options.hold)
            await asyncio.to_thread(
                partial(
                    self.store.retry_later, row.id, at, f"held: {exc}", claim=row.attempts,
                    hold=True,
                )
            )  # fmt: skip
            return
        except (PermanentConnectorError, PermanentDeliveryError) as exc:
            timed(started)
            now = self._clock()
            self._provider_error(request, exc)
            code = exc.code if isinstance(exc, PermanentDeliveryError) else None
            report = report_failure(row, request, code, str(exc), now)
            await finish(row, "failed", None, f"permanent: {exc}", report)
            return
        except (TransientConnectorError, TransientDeliveryError) as exc:
            timed(started)
            now = self._clock()
            self._provider_error(request, exc)
            if isinstance(exc, TransientDeliveryError) and exc.unsent:
                self._note_unsent(row)
            await self._retry(row, now, str(exc), exc.retry_after, request, tried=tried)
            return
        except Exception as exc:  # an unexpected error is treated as transient, and logged
            timed(started)
            now = self._clock()
            self._provider_error(request, exc)
            log.exception("dispatcher: %s %s raised", row.kind, row.idempotency_key)
            error = f"{type(exc).__name__}: {exc}"
            await self._retry(row, now, error, None, request, tried=tried)
            return
        self.stats.replayed += replayed
        await finish(row, "done", result, None, *records)

    def _maybe_sent(self, row: OutboxRow) -> bool:
        """Whether an earlier try of ``row`` may have reached the provider (the channel then
        looks it up before sending: ``retry``): yes from the second attempt on, unless the
        attempt just before was this process's and the channel said it left no copy. A crash,
        a timeout, a 5xx or another dispatcher's attempt in between leave the doubt. Looking
        up after a clean refusal cost a provider call each time (SendGrid's lookup allows 6 a
        minute), which a burst of retries after a provider's outage would queue behind."""
        clean = self._unsent.pop(row.id, None)
        return row.attempts > 1 and clean != row.attempts - 1

    def _note_unsent(self, row: OutboxRow) -> None:
        """Remember that after this attempt of ``row`` the provider holds no copy (bounded:
        a row finished or taken by another dispatcher is never asked about again)."""
        unsent = self._unsent
        unsent[row.id] = row.attempts
        while len(unsent) > 10_000:
            del unsent[next(iter(unsent))]

    async def _renewed(self, row: OutboxRow) -> bool:
        """Whether the row's lease was extended for this attempt: the claim covers a round,
        and a round of slow sends (a provider's rate limit, timeouts) can outlast the lease,
        after which another dispatcher may have claimed the row and sent it. Only the one
        whose claim still stands performs it."""
        until = self._clock() + self.options.lease
        if await asyncio.to_thread(self.store.renew, row.id, row.attempts, until):
            return True
        log.warning("dispatcher: %s %s was re-claimed before it was tried; leaving it",
                    row.kind, row.idempotency_key)  # fmt: skip
        return False

    async def _refused(self, row: OutboxRow, delivery: Delivery, now: float) -> bool:
        """Whether the address opted out since the message was decided (then it is failed
        and reported, never sent); compliance replies always go."""
        if delivery.compliance:
            return False
        list_id = delivery.list_id if delivery.purpose == "marketing" else None
        why = await asyncio.to_thread(
            self.contacts.suppressed, delivery.channel, delivery.to, list_id
        )
        if why is None:
            return False
        self.stats.suppressed += 1
        report = report_failure(
            row, delivery, "suppressed", f"address suppressed ({why})", now, why
        )
        await self._finish(row, "failed", None, f"suppressed: {why}", report)
        return True

    async def _finish(
        self,
        row: OutboxRow,
        status: str,
        result: bytes | None,
        error: str | None,
        *reports: tuple[str, bytes | None, bytes] | None,
        tried_at: float | None = None,
    ) -> None:
        """Mark ``row`` for good; ``tried_at``: when this attempt called the provider (None:
        it was refused before any call)."""
        records = [r for r in reports if r is not None]
        kept = await asyncio.to_thread(
            partial(
                self.store.finish, row.id, status, result, error, claim=row.attempts,
                records=records, tried_at=tried_at,
            )
        )  # fmt: skip
        if not kept:  # our lease ran out and another dispatcher has the row now
            log.warning(
                "dispatcher: %s %s was re-claimed; leaving it", row.kind, row.idempotency_key
            )
            return
        if status == "done":
            self.stats.done += 1
            self.stats.by_kind[row.kind] = self.stats.by_kind.get(row.kind, 0) + 1
        else:
            self.stats.failed += 1
            log.warning("dispatcher: %s %s failed: %s", row.kind, row.idempotency_key, error)

    async def _retry(
        self,
        row: OutboxRow,
        now: float,
        error: str,
        retry_after: float | None,
        request: Effect | Delivery,
        *,
        tried: float,
    ) -> None:
        """After a transient failure at ``now``: give up past both limits, else put the row
        back with a backoff. ``tried``: when this attempt called the provider."""
        opts = self.options
        first = tried if row.first_tried_at is None else row.first_tried_at
        trying_for = max(0.0, now - first)  # clocks of two hosts may disagree
        if row.attempts >= opts.max_attempts and trying_for >= opts.retry_for:
            why = f"gave up after {row.attempts} attempts: {error}"
            report = report_failure(row, request, "gave_up", why, now)
            await self._finish(row, "failed", None, why, report, tried_at=tried)
            return
        self.stats.retried += 1
        at = now + self.backoff(row.attempts, retry_after)
        await asyncio.to_thread(
            partial(self.store.retry_later, row.id, at, error, claim=row.attempts, tried_at=tried)
        )


def _target(row: OutboxRow) -> str:
    """The tool (effect) or channel (delivery) a row goes to, for the attempts' labels."""
    try:
        payload = orjson.loads(row.payload)
    except orjson.JSONDecodeError:
        return "unknown"
    if not isinstance(payload, dict):
        return "unknown"
    name = payload.get("tool" if row.kind == "effect" else "channel")
    return name if isinstance(name, str) and name else "unknown"


def _timed(kind: str, target: str, provider: str, started: float) -> None:
    elapsed = time.perf_counter() - started
    metrics.DISPATCH_SECONDS.labels(kind, target, provider).observe(elapsed)


def _outcome(before: DispatchStats, after: DispatchStats) -> str:
    """What one attempt ended in, from the stats it moved: done, failed (suppressed ones
    included), retry, held (a kill switch or an open circuit) or lost (re-claimed)."""
    if after.done > before.done:
        return "done"
    if after.failed > before.failed:
        return "failed"
    if after.retried > before.retried:
        return "retry"
    if after.held > before.held or after.paused > before.paused:
        return "held"
    return "lost"
