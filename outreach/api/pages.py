"""One-click unsubscribe (RFC 8058): ``GET`` shows a confirmation page, ``POST`` unsubscribes.

The link carries a signed token naming the customer, the address and the list
(``outreach.outbound.unsubscribe``): no login, no cookie, nothing to look up. ``GET`` never
changes anything, because mail scanners and link previews fetch every link in a message;
mail clients that honour ``List-Unsubscribe-Post`` send the ``POST`` themselves. The
suppression is written before the answer and ``contact.suppressed`` is published with an id
derived from the token, so pressing the button twice is one unsubscription downstream.

Must not import: faust, the decision core.
"""

from __future__ import annotations

import hashlib
from html import escape

from fastapi import APIRouter, HTTPException
from fastapi.responses import HTMLResponse
from pydantic import SecretStr

from outreach.api.inbox import Inbox, make_event, some
from outreach.outbound.unsubscribe import (
    InvalidUnsubscribeToken,
    UnsubscribeLinks,
    Unsubscription,
)

# the token is in the URL: keep it out of caches, referrers and search engines
PRIVATE = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
}
_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;"
    "color:#222}button{font-size:1rem;padding:.6rem 1.2rem}"
)


def page(title: str, body_html: str, status_code: int = 200) -> HTMLResponse:
    """A small self-contained HTML page (no scripts, no cookies, no third-party assets)."""
    html = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{escape(title)}</h1>{body_html}</body></html>"
    )
    return HTMLResponse(html, status_code=status_code, headers=PRIVATE)


def masked(address: str) -> str:
    """``j***@example.com``: enough to recognise one's address, not to harvest it."""
    local, at, domain = address.partition("@")
    return f"{local[:1]}***{at}{domain}" if at else "***"


def _invalid() -> HTMLResponse:
    return page(
        "This link is not valid",
        "<p>This unsubscribe link is not valid. Use the link in the email you received, "
        "or reply to it and ask us to stop.</p>",
        403,
    )


def _off() -> HTMLResponse:
    return page(
        "Please try again",
        "<p>We could not complete your request right now. Please try again in a few minutes.</p>",
        503,
    )


def unsubscribe_event_id(token: str) -> str:
    """The same id for every ``POST`` of one link (deduplicated downstream)."""
    return "unsub:" + hashlib.sha256(token.encode()).hexdigest()[:48]


def unsubscribe_router(inbox: Inbox, secret: SecretStr | None, brand: str) -> APIRouter:
    """``GET`` and ``POST /unsubscribe/{token}``."""
    router = APIRouter()
    links = UnsubscribeLinks(secret.get_secret_value(), "") if secret else None

    def verify(token: str) -> Unsubscription | HTMLResponse:
        if links is None:
            return _off()
        try:
            return links.verify(token)
        except InvalidUnsubscribeToken:
            return _invalid()

    @router.get("/unsubscribe/{token}", response_class=HTMLResponse)
    async def confirm(token: str) -> HTMLResponse:
        """The confirmation page; changes nothing."""
        who = verify(token)
        if isinstance(who, HTMLResponse):
            return who
        sender = f" from {escape(brand)}" if brand else ""
        return page(
            "Unsubscribe",
            f"<p>Stop emails{sender} to <strong>{escape(masked(who.address))}</strong>?</p>"
            '<form method="post"><button type="submit" name="List-Unsubscribe" '
            'value="One-Click">Unsubscribe</button></form>',
        )

    @router.post("/unsubscribe/{token}", response_class=HTMLResponse)
    async def unsubscribe(token: str) -> HTMLResponse:
        """Unsubscribe at once (any body; RFC 8058 clients send ``List-Unsubscribe=One-Click``)."""
        who = verify(token)
        if isinstance(who, HTMLResponse):
            return who
        await inbox.call(inbox.contacts.suppress, "email", who.address, "unsubscribe", who.list_id)
        data = {"channel": "email", "reason": "unsubscribe", "address": who.address,
                "list_id": who.list_id or None}  # fmt: skip
        event = make_event(
            "contact.suppressed", unsubscribe_event_id(token), who.customer_id,
            inbox.clock(), "unsubscribe", data,
        )  # fmt: skip
        try:
            await inbox.emit(some([event]))
        except HTTPException:  # written (no more mail), but the engine must hear of it too
            return _off()
        return page(
            "You are unsubscribed",
            f"<p>{escape(masked(who.address))} will receive no more of these emails.</p>",
        )

    return router
