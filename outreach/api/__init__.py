"""The HTTP app (``outreach api``): provider webhooks, one-click unsubscribe, health.

Owns the edges where the outside world reports facts: Twilio inbound SMS and status
callbacks, SendGrid's event webhook and the unsubscribe links. Handlers check the provider's
signature, write the address suppressions that must hold at once, and publish every fact as an
engine event (``EventSink``) keyed by customer; the decision core does the rest.

Must not import: faust, the decision core (``outreach.core``, rules, agents).
"""

from __future__ import annotations

from outreach.api.app import create_app
from outreach.api.settings import ApiSettings
from outreach.api.sink import EventSink, FakeEventSink, KafkaEventSink
from outreach.api.webhooks import KeywordReplies

__all__ = [
    "ApiSettings",
    "EventSink",
    "FakeEventSink",
    "KafkaEventSink",
    "KeywordReplies",
    "create_app",
]
