"""The engine's exceptions, one tree under ``OutreachError``.

    OutreachError
    ├── InvalidEventError            an input that is not a valid event (-> DLQ, never retried)
    ├── RuleFileError                a rules folder that cannot be loaded (file:line:field problems)
    ├── TemplateRenderError          a message template that cannot render with its data
    ├── ConnectorError               a remediation side effect that did not complete
    │   ├── TransientConnectorError  may succeed if retried later (``retry_after`` seconds)
    │   │   └── ConnectorPaused      its circuit is open: held untried, not an attempt
    │   └── PermanentConnectorError  will never succeed as asked; record and escalate
    └── DeliveryError                a message a channel did not accept
        ├── TransientDeliveryError   may succeed if retried later (``retry_after`` seconds)
        └── PermanentDeliveryError   will never be delivered as addressed; never retried

Error policy (retry, dead-letter, escalate) lives at the edges (runtimes, dispatcher); the
decision core raises and never swallows.
"""

from __future__ import annotations


class OutreachError(Exception):
    """Root of every error the engine raises on purpose."""


class TemplateRenderError(OutreachError):
    """A template that cannot be rendered with the data of a decision."""


class ConnectorError(OutreachError):
    """A remediation effect that did not complete."""


class TransientConnectorError(ConnectorError):
    """Worth retrying after ``retry_after`` seconds (timeouts, 429, 5xx)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ConnectorPaused(TransientConnectorError):  # noqa: N818 - a state, like a kill switch
    """The tool's circuit breaker is open: hold the effect untried until ``retry_after``."""


class PermanentConnectorError(ConnectorError):
    """Will not succeed as asked; never retried."""


class DeliveryError(OutreachError):
    """A message a channel did not accept."""


class TransientDeliveryError(DeliveryError):
    """Worth retrying after ``retry_after`` seconds (timeouts, 429, 5xx)."""

    def __init__(
        self, message: str, retry_after: float | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.code = code


class PermanentDeliveryError(DeliveryError):
    """Will not be delivered as addressed; never retried.

    ``code``: the provider's error code (Twilio 21610, 21211...; SendGrid HTTP status), which
    the core maps to a policy change (suppression, fallback to email, pausing a template)."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code
