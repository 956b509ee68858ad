"""``create_app``: the FastAPI application, built from its dependencies (no globals).

    app = create_app(ApiSettings(), Contacts(store), sink, replies, lifespan=sink.lifespan)

Must not import: faust, the decision core.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from stripe import StripeClient

from outreach import __version__
from outreach.agents.replies import ReplyReader
from outreach.api.billing import pay_router, stripe_router
from outreach.api.inbox import Clock, Inbox, utc_now
from outreach.api.metrics import LagProbe, Metrics
from outreach.api.operator import LoadedRules, operator_router
from outreach.api.pages import unsubscribe_router
from outreach.api.reading import reply_reader
from outreach.api.settings import ApiSettings
from outreach.api.sink import EventSink
from outreach.api.webhooks import KeywordReplies, TwilioSignature, sendgrid_router, twilio_router
from outreach.store.contacts import Contacts
from outreach.store.operator import Operator

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def create_app(
    settings: ApiSettings,
    contacts: Contacts,
    sink: EventSink,
    replies: KeywordReplies,
    *,
    brand: str = "",
    clock: Clock = utc_now,
    lifespan: Lifespan | None = None,
    rules: LoadedRules | None = None,
    lag: LagProbe | None = None,
    billing: StripeClient | None = None,
    reader: ReplyReader | None = None,
) -> FastAPI:
    """The HTTP app: provider webhooks, one-click unsubscribe, the operator API (``/v1``,
    with ``rules``: the rules folder it validated), ``/healthz``, ``/readyz`` and
    ``/metrics`` (``lag``: how to measure consumer lag; none: not reported), the Stripe
    webhook and, with ``billing`` (the Stripe account), the ``/pay/<invoice>`` links.

    ``replies``: what to text back to STOP/START/HELP from an unknown number; ``reader``:
    what a customer's free-text reply means (default ``reply_reader(store)``: the model's when
    configured, its token budget shared with the workers; else keywords); ``brand``: the
    sender's name on the unsubscribe pages; ``lifespan``: starts and stops the sink (the
    Kafka one must start inside the server's event loop). A bad SendGrid key raises
    ``ValueError`` here, before anything listens."""
    inbox = Inbox(contacts, sink, clock)
    operator = Operator(contacts.store)
    app = FastAPI(
        title="outreach api",
        version=__version__,
        description=(
            "Operator API of the outreach engine: ingest events, approve actions, explain "
            "decisions, reload rules, throw kill switches. Authenticate with an API key "
            "(`outreach keys create`) as `Authorization: Bearer ok_...`. The provider "
            "webhooks (Twilio, SendGrid) and unsubscribe links are checked by their own "
            "signatures instead."
        ),
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    metrics = Metrics(operator, lag)
    app.add_middleware(_Wrap, wrap=metrics.middleware)
    signature = TwilioSignature(settings.twilio_auth_token, settings.public_url)
    app.include_router(
        twilio_router(inbox, signature, replies, reader or reply_reader(contacts.store))
    )
    app.include_router(
        sendgrid_router(inbox, settings.sendgrid_webhook_public_key, settings.sendgrid_max_skew)
    )
    app.include_router(unsubscribe_router(inbox, settings.unsubscribe_secret, brand))
    app.include_router(
        stripe_router(inbox, settings.stripe_webhook_secret, settings.stripe_webhook_tolerance)
    )
    if billing is not None:
        app.include_router(pay_router(billing, brand))
    if rules is not None:
        counted = metrics.count_ingested
        router = operator_router(operator, sink, rules, clock=clock, ingested=counted)
        app.include_router(router, tags=["operator"])

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "not ready"}})
    async def readyz() -> JSONResponse:
        """Readiness: the database answers and Kafka is connected."""
        problems = []
        try:
            await asyncio.to_thread(operator.ping)
        except Exception as exc:
            problems.append(f"database: {type(exc).__name__}")
        if not sink.ready():
            problems.append("kafka: not connected")
        if problems:
            return JSONResponse({"status": "not ready", "problems": problems}, status_code=503)
        return JSONResponse({"status": "ready"})

    app.add_api_route("/metrics", metrics.scrape, methods=["GET"], include_in_schema=False)
    return app


class _Wrap:
    """Adapts ``Metrics.middleware`` (a function of the app) to Starlette's middleware API."""

    def __init__(self, app: ASGIApp, wrap: Callable[[ASGIApp], ASGIApp]) -> None:
        self._app = wrap(app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)
