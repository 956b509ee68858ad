"""One-click unsubscribe links (RFC 8058): signed tokens naming a recipient and a list.

Templates write ``{{ unsubscribe_url }}``; the core renders it as ``UNSUBSCRIBE_MARKER`` (it
holds no secret), and the channel that sends the email replaces the marker with the signed
link and sets ``List-Unsubscribe`` / ``List-Unsubscribe-Post`` to the same URL. The token is
an HMAC-SHA256 signature (itsdangerous) over ``{c: customer_id, a: address, l: list_id}``:
no login, no cookie, nothing to look up; it does not expire (CAN-SPAM wants links to work for
at least 30 days after sending, and a link that stops working sends people to "report spam").

Must not import: faust, aiokafka, twilio, sendgrid, openai, fastapi, sqlalchemy.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeSerializer

from outreach.errors import OutreachError

UNSUBSCRIBE_MARKER = "%unsubscribe_url%"
MARKETING_LIST = "marketing"  # the list of a marketing email with no unsubscribe group
_SALT = "outreach.unsubscribe.v1"


class InvalidUnsubscribeToken(OutreachError):
    """A token that was not signed with our secret (forged, truncated or from another key)."""


@dataclass(frozen=True)
class Unsubscription:
    """Who asked to leave which list."""

    customer_id: str
    address: str
    list_id: str


class UnsubscribeLinks:
    """Makes and checks unsubscribe links for one secret and public base URL."""

    def __init__(self, secret: str, base_url: str) -> None:
        if not secret:
            raise ValueError("the unsubscribe secret is empty: set OUTREACH_UNSUBSCRIBE_SECRET")
        self._serializer = URLSafeSerializer(
            secret, salt=_SALT, signer_kwargs={"digest_method": hashlib.sha256}
        )
        self.base_url = base_url.rstrip("/")

    def token(self, customer_id: str, address: str, list_id: str = MARKETING_LIST) -> str:
        """The signed token for ``address`` of ``customer_id`` leaving ``list_id``."""
        return str(self._serializer.dumps({"c": customer_id, "a": address, "l": list_id}))

    def url(self, customer_id: str, address: str, list_id: str = MARKETING_LIST) -> str:
        """The one-click URL (``POST`` unsubscribes, ``GET`` shows a confirmation page)."""
        return f"{self.base_url}/unsubscribe/{self.token(customer_id, address, list_id)}"

    def verify(self, token: str) -> Unsubscription:
        """What ``token`` names; ``InvalidUnsubscribeToken`` if it was not signed by us."""
        try:
            claim = self._serializer.loads(token)
        except BadSignature:
            raise InvalidUnsubscribeToken("unsubscribe link is not valid") from None
        if not isinstance(claim, dict) or not all(isinstance(claim.get(k), str) for k in "cal"):
            raise InvalidUnsubscribeToken("unsubscribe link is not valid")
        return Unsubscription(claim["c"], claim["a"], claim["l"])

    def fill(self, text: str, customer_id: str, address: str, list_id: str) -> str:
        """``text`` with the marker replaced by this recipient's link."""
        if UNSUBSCRIBE_MARKER not in text:
            return text
        return text.replace(UNSUBSCRIBE_MARKER, self.url(customer_id, address, list_id))
