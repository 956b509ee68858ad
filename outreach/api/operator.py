"""The operator API (``/v1``): ingest, approvals, timelines, rules, kill switches.

Every endpoint needs an API key (``Authorization: Bearer ok_...``) whose scope allows it:
``ingest`` posts events; ``operator`` reads timelines, rules and the approvals queue and
approves or rejects; ``admin`` may do all that, reload the rules and throw kill switches. A
missing, unknown or revoked key is 401; a key of the wrong scope is 403.

Nothing here decides: events and approvals are published to the customer's partition and the
worker that owns it runs them through the core; kill switches and rule reloads are rows the
workers read at their next batch. Must not import: faust, the decision core.
"""

# no ``from __future__ import annotations``: the routes' dependencies are local aliases
# (``Annotated[ApiKey, Depends(...)]``) that FastAPI must see evaluated, not as strings
import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from outreach.agents.tools import TOOLS
from outreach.api.sink import EventSink
from outreach.events import (
    ApprovalDecided,
    ApprovalDecidedData,
    Event,
    InvalidEventError,
    is_engine_type,
    parse_event,
)
from outreach.rulebook import RuleBook, describe, load_rulebook
from outreach.rules.yamlfile import RuleFileError
from outreach.store.operator import GRANTS, ApiKey, Operator, Scope, iso
from outreach.streams.codec import DEFAULT_MAX_EVENT_BYTES, Record, dead_letter_value

MAX_BATCH = 1000  # events per POST /v1/events
CHANNELS = ("sms", "email")
_bearer = HTTPBearer(auto_error=False, description="an API key: `Bearer ok_...`")


@dataclass
class LoadedRules:
    """The rules the API validated last (``GET /v1/rules``), and how to reload them."""

    book: RuleBook
    loaded_at: float = field(default_factory=time.time)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def reload(self, operator: Operator) -> tuple[RuleBook, str]:
        """Load the folder again; raises ``RuleFileError`` and keeps the running set if it
        does not load. On success, asks every worker to reload (they read it next batch)."""
        async with self.lock:
            folder: Path = self.book.folder
            book = await asyncio.to_thread(load_rulebook, folder)
            previous = self.book.fingerprint
            await asyncio.to_thread(operator.request_rules_reload, book.fingerprint)
            self.book, self.loaded_at = book, time.time()
            return book, previous


class Decision(BaseModel):
    """An approval's answer."""

    by: str | None = Field(
        default=None, max_length=200, description="who decided (default: the API key's name)"
    )
    note: str | None = Field(default=None, max_length=1024, description="why, for the record")


class Switch(BaseModel):
    """A kill switch's new position."""

    active: bool = Field(default=True, description="true: switched off; false: lifted")
    reason: str = Field(min_length=1, max_length=500, description="why, for the record")


class ItemResult(BaseModel):
    """What became of one posted event."""

    index: int
    status: Literal[202, 422]
    event_id: str | None = None
    errors: list[str] = []


class IngestResult(BaseModel):
    """Per-item results of ``POST /v1/events``."""

    accepted: int
    rejected: int
    items: list[ItemResult]


def operator_router(
    operator: Operator,
    sink: EventSink,
    rules: LoadedRules,
    *,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ingested: Callable[[int, int], None] = lambda accepted, rejected: None,
) -> APIRouter:
    """The ``/v1`` endpoints over the store (``operator``) and Kafka (``sink``);
    ``ingested(accepted, rejected)`` hears what each ``POST /v1/events`` took (metrics)."""
    router = APIRouter(prefix="/v1")

    Ingest = Annotated[ApiKey, Depends(_scope(operator, "ingest"))]
    Operating = Annotated[ApiKey, Depends(_scope(operator, "operator"))]
    Admin = Annotated[ApiKey, Depends(_scope(operator, "admin"))]

    @router.post(
        "/events",
        status_code=202,
        response_model=IngestResult,
        responses={422: {"model": IngestResult, "description": "some items were invalid"}},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "oneOf": [
                                {"type": "object"},
                                {"type": "array", "items": {"type": "object"}},
                            ]
                        }
                    }
                },
            }
        },
    )
    async def post_events(request: Request, key: Ingest) -> JSONResponse:
        """Ingest one event (an object) or a batch (an array, at most 1000), validated as the
        stream validates them. Valid events are published to their topics (acknowledged by
        Kafka before the answer); invalid ones go to the dead-letter topic with the reason.
        202 when every item was accepted; 422 when any was not (the valid ones of the batch
        are still accepted: resending them is harmless, events are deduplicated by id)."""
        body = await request.body()
        results = [r async for r in _ingest(body, sink, max_event_bytes)]
        rejected = sum(r.status == 422 for r in results)
        ingested(len(results) - rejected, rejected)
        out = IngestResult(accepted=len(results) - rejected, rejected=rejected, items=results)
        return JSONResponse(out.model_dump(), status_code=422 if rejected else 202)

    @router.get("/approvals")
    async def list_approvals(
        key: Operating,
        status: Annotated[
            str, Query(description="pending_approval (default), a final status, or all")
        ] = "pending_approval",
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    ) -> list[dict[str, Any]]:
        """The approvals queue: actions waiting for a person (oldest first), or past entries."""
        wanted = None if status == "all" else status
        found = await asyncio.to_thread(operator.approvals, wanted, limit)
        return [a.as_dict() for a in found]

    @router.get("/approvals/{action_id}", responses={404: {"description": "no such approval"}})
    async def show_approval(action_id: str, key: Operating) -> dict[str, Any]:
        """One entry of the queue, with the action's checks and latest record."""
        found = await asyncio.to_thread(operator.approval, action_id)
        if found is None:
            raise HTTPException(404, f"no action {action_id!r} has waited for approval")
        return found.as_dict()

    async def answer(action_id: str, decision: str, body: Decision | None, key: ApiKey) -> Any:
        found = await asyncio.to_thread(operator.approval, action_id)
        if found is None:
            raise HTTPException(404, f"no action {action_id!r} has waited for approval")
        if found.status != "pending_approval":
            who = f" by {found.decided_by}" if found.decided_by else ""
            raise HTTPException(
                409, f"action {action_id} no longer waits for approval: {found.status}{who}"
            )
        given = body.by if body and body.by else None
        by = f"{given} (key {key.name})" if given else key.name
        now = clock()
        event = ApprovalDecided(
            event_id=f"apr_{uuid.uuid4().hex}", type="approval.decided",
            customer_id=found.customer_id, occurred_at=now, source="api",
            data=ApprovalDecidedData(
                action_id=action_id, decision=decision,
                by=by, note=body.note if body else None,
            ),
        )  # fmt: skip
        await _publish(sink, event)
        return {
            "action_id": action_id, "decision": decision, "by": by, "event_id": event.event_id,
            "detail": "submitted: the worker that owns the customer applies it (approving runs "
            "the guardrails again); GET this approval to see the outcome",
        }  # fmt: skip

    conflicts: dict[int | str, dict[str, Any]] = {
        404: {"description": "no such approval"},
        409: {"description": "no longer pending"},
    }

    @router.post("/approvals/{action_id}/approve", status_code=202, responses=conflicts)
    async def approve(action_id: str, key: Operating, body: Decision | None = None) -> Any:
        """Approve a pending action; it is judged again by the guardrails when applied."""
        return await answer(action_id, "approve", body, key)

    @router.post("/approvals/{action_id}/reject", status_code=202, responses=conflicts)
    async def reject(action_id: str, key: Operating, body: Decision | None = None) -> Any:
        """Reject a pending action: it is cancelled, never performed."""
        return await answer(action_id, "reject", body, key)

    @router.get("/customers/{customer_id}/timeline")
    async def timeline(
        customer_id: str, key: Operating, limit: Annotated[int, Query(ge=1, le=10000)] = 1000
    ) -> dict[str, Any]:
        """Everything about one customer in time order: events, signals (evidence, rule
        version), actions (every guardrail verdict), messages (every contact-policy
        verdict), delivery outcomes, replies and approvals."""
        entries = await asyncio.to_thread(operator.timeline, customer_id, limit)
        return {"customer_id": customer_id, "entries": entries}

    _admin_routes(router, operator, rules, Operating, Admin)
    return router


def _scope(operator: Operator, needed: Scope) -> Callable[..., Awaitable[ApiKey]]:
    async def check(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> ApiKey:
        unauthorised = HTTPException(
            401, "a valid API key is required (Authorization: Bearer ok_...)",
            headers={"WWW-Authenticate": "Bearer"},
        )  # fmt: skip
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise unauthorised
        key = await asyncio.to_thread(operator.authenticate, credentials.credentials)
        if key is None:
            raise unauthorised
        if needed not in GRANTS[key.scope]:
            raise HTTPException(
                403, f"this API key's scope ({key.scope}) does not allow {needed} requests"
            )
        return key

    return check


def _admin_routes(
    router: APIRouter, operator: Operator, rules: LoadedRules, Operating: Any, Admin: Any
) -> None:
    """Rules and kill switches."""

    @router.get("/rules")
    async def get_rules(key: Operating) -> dict[str, Any]:
        """The rules the API loaded last (the workers run the same folder)."""
        book = rules.book
        return {
            "fingerprint": book.fingerprint,
            "folder": str(book.folder),
            "loaded_at": iso(rules.loaded_at),
            "rules": describe(book),
        }

    @router.post("/rules/reload", responses={422: {"description": "the rules do not load"}})
    async def reload_rules(key: Admin) -> Any:
        """Validate the rules folder again; if it loads, every worker switches to it at its
        next batch. A folder with problems is refused (each one as file:line:col) and the
        running rules stay."""
        try:
            book, previous = await rules.reload(operator)
        except RuleFileError as exc:
            return JSONResponse(
                {"detail": "rules refused; the running rules stay",
                 "problems": [str(p).splitlines()[0] for p in exc.problems]},
                status_code=422,
            )  # fmt: skip
        return {"fingerprint": book.fingerprint, "previous": previous, "rules": describe(book)}

    @router.get("/killswitch")
    async def kill_switches(key: Operating) -> list[dict[str, Any]]:
        """The tools and channels switched off now (policy.yaml's are listed in GET /v1/rules'
        folder and stay off)."""
        found = await asyncio.to_thread(operator.kill_switches)
        return [{"kind": k, "name": n, **v} for (k, n), v in sorted(found.items())]

    @router.post("/killswitch/{name}", responses={404: {"description": "no such tool or channel"}})
    async def kill_switch(name: str, body: Switch, key: Admin) -> dict[str, Any]:
        """Switch a tool (``grant_credit``...) or a channel (``sms``, ``email``) off, or back
        on. Off: new actions of the tool are blocked and messages use another channel; what
        is already in the outbox is held (not performed) until the switch is lifted."""
        if name in CHANNELS:
            kind = "channel"
        elif name in TOOLS:
            kind = "tool"
        else:
            known = ", ".join([*CHANNELS, *sorted(TOOLS)])
            raise HTTPException(404, f"{name!r} is not a tool or a channel: one of {known}")
        reason = f"{body.reason} (by {key.name})"
        await asyncio.to_thread(operator.set_kill_switch, kind, name, body.active, reason)
        return {"kind": kind, "name": name, "active": body.active, "reason": reason}


async def _publish(sink: EventSink, event: Event) -> None:
    try:
        await sink.publish(event)
    except Exception as exc:
        raise HTTPException(
            503, f"could not publish to Kafka ({type(exc).__name__}); nothing was recorded, "
            "try again",
        ) from None  # fmt: skip


async def _ingest(body: bytes, sink: EventSink, max_bytes: int) -> AsyncIterator[ItemResult]:
    """Yield one ``ItemResult`` per posted item (a body that is not JSON is one bad item)."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        yield await _reject(sink, 0, None, body, f"request body is not JSON: {exc}")
        return
    if isinstance(parsed, list):
        if len(parsed) > MAX_BATCH:
            raise HTTPException(413, f"{len(parsed)} events in one request; at most {MAX_BATCH}")
        items = parsed
    else:
        items = [parsed]
    for index, item in enumerate(items):
        raw = orjson.dumps(item)
        key = item.get("customer_id") if isinstance(item, dict) else None
        key_bytes = key.encode() if isinstance(key, str) else None
        if len(raw) > max_bytes:
            error = f"oversized: {len(raw)} bytes, the limit is {max_bytes}"
            yield await _reject(sink, index, key_bytes, raw, error)
            continue
        try:
            event = parse_event(raw)
        except InvalidEventError as exc:
            yield await _reject(sink, index, key_bytes, raw, f"invalid event: {exc}", exc.problems)
            continue
        if is_engine_type(event):
            error = f"{event.type} is an engine event type; it cannot be posted here"
            yield await _reject(sink, index, key_bytes, raw, error)
            continue
        await _publish(sink, event)
        yield ItemResult(index=index, status=202, event_id=event.event_id)


async def _reject(
    sink: EventSink,
    index: int,
    key: bytes | None,
    raw: bytes,
    error: str,
    problems: list[str] | None = None,
) -> ItemResult:
    """Dead-letter one item (source ``http:/v1/events``, offset = its index) and say why."""
    record = Record("http:/v1/events", -1, index, key, raw)
    try:
        await sink.dead_letter(key, dead_letter_value(record, error))
    except Exception as exc:
        raise HTTPException(
            503, f"could not write the dead letter to Kafka ({type(exc).__name__}); try again"
        ) from None
    return ItemResult(index=index, status=422, errors=problems or [error])
