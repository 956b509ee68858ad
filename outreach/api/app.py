"""``create_app``: the FastAPI application, built from its dependencies (no globals).

    app = create_app(ApiSettings(), Contacts(store), sink, replies, lifespan=sink.lifespan)

Must not import: faust, the decision core.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from fastapi import FastAPI

from outreach.api.inbox import Clock, Inbox, utc_now
from outreach.api.pages import unsubscribe_router
from outreach.api.settings import ApiSettings
from outreach.api.sink import EventSink
from outreach.api.webhooks import KeywordReplies, TwilioSignature, sendgrid_router, twilio_router
from outreach.store.contacts import Contacts

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
) -> FastAPI:
    """The HTTP app: provider webhooks, one-click unsubscribe and ``/healthz``.

    ``replies``: what to text back to STOP/START/HELP from an unknown number; ``brand``: the
    sender's name on the unsubscribe pages; ``lifespan``: starts and stops the sink (the
    Kafka one must start inside the server's event loop). A bad SendGrid key raises
    ``ValueError`` here, before anything listens."""
    inbox = Inbox(contacts, sink, clock)
    app = FastAPI(
        title="outreach api", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    signature = TwilioSignature(settings.twilio_auth_token, settings.public_url)
    app.include_router(twilio_router(inbox, signature, replies))
    app.include_router(
        sendgrid_router(inbox, settings.sendgrid_webhook_public_key, settings.sendgrid_max_skew)
    )
    app.include_router(unsubscribe_router(inbox, settings.unsubscribe_secret, brand))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    return app
