"""The engine's exceptions, one tree under ``OutreachError``.

    OutreachError
    ├── InvalidEventError            an input that is not a valid event (-> DLQ, never retried)
    ├── EngineFailure                the core raised on a valid event or timer (-> DLQ, skipped)
    ├── StoreRefusal                 the database refused what a valid event produced (-> DLQ)
    ├── RuleFileError                a rules folder that cannot be loaded (file:line:field problems)
    ├── TemplateRenderError          a message template that cannot render with its data
    ├── ConnectorError               a remediation side effect that did not complete
    │   ├── TransientConnectorError  may succeed if retried later (``retry_after`` seconds)
    │   │   └── ConnectorPaused      its circuit is open: held untried, not an attempt
    │   └── PermanentConnectorError  will never succeed as asked; record and escalate
    └── DeliveryError                a message a channel did not accept
        ├── TransientDeliveryError   may succeed if retried later (``retry_after`` seconds)
        │   └── DeliveryHeld         an earlier try could not be looked up: held, not an attempt
        └── PermanentDeliveryError   will never be delivered as addressed; never retried

Error policy (retry, dead-letter, escalate) lives at the edges (runtimes, dispatcher); the
decision core raises and never swallows.
"""

from __future__ import annotations

import traceback
from pathlib import Path


class OutreachError(Exception):
    """Root of every error the engine raises on purpose."""


class EngineFailure(OutreachError):  # noqa: N818 - what happened to one input, like a dead letter
    """The decision core raised while evaluating a valid event or firing a timer: a defect of
    the engine (or of a code path no rule guard covers), not of the input. The runtimes skip
    that one input, as if it had never come (the customer's state stays as it was before
    it), put it in the dead-letter queue with this text, and go on; see
    docs/live-runtime.md, "An event the engine fails on".

    ``what``: "event" or "timer"; ``ident``: its event or timer id."""

    def __init__(self, cause: BaseException, what: str, ident: str) -> None:
        frames = traceback.extract_tb(cause.__traceback__)
        at = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
        detail = f"{type(cause).__name__}: {cause}"[:1000]
        super().__init__(
            f"the engine failed on this {what} ({ident}): {detail}{at}. It was skipped: the "
            f"customer's state is as before it, and the events after it were applied. This "
            f"is an engine defect, not bad input: report it with this record and the traceback "
            f"logged with it"
            + (
                "; a dropped timer does not come back"
                if what == "timer"
                else "; once fixed, publish (or replay) the event again"
            )
        )
        self.what = what
        self.ident = ident


class StoreRefusal(OutreachError):  # noqa: N818 - what happened to one input, like a dead letter
    """The database refused what a valid event produced (a value its schema does not take but
    the contract does, a constraint), told apart from the rest of its batch by applying the
    batch in halves. The live runtime skips that event as it skips an ``EngineFailure``, with
    this text in its dead letter; see docs/live-runtime.md, "An event the engine fails on".

    ``ident``: the event id; ``cause``: the database's error."""

    def __init__(self, cause: BaseException, ident: str) -> None:
        orig = getattr(cause, "orig", None) or cause  # SQLAlchemy's wraps the driver's
        first = (str(orig).strip().splitlines() or [""])[0]
        detail = f"{type(orig).__name__}: {first}"[:1000]
        super().__init__(
            f"the store refused what this event ({ident}) produced: {detail}. It was skipped: "
            f"the customer's state is as before it, and the other records of its batch were "
            f"applied. The event passed the contract but not the database schema (a value "
            f"too long, a constraint): report it with this record; once fixed, publish the "
            f"event again"
        )
        self.ident = ident


def engine_fault(exc: BaseException) -> bool:
    """Whether ``exc``, raised inside the decision core, is the engine failing on its input
    (to be skipped and dead-lettered) rather than the process failing (out of memory, an
    interrupt), which must stop the run. A runtime whose core reads a database tells that
    database's errors apart itself (``outreach.streams.outage.store_error``)."""
    return isinstance(exc, Exception) and not isinstance(exc, MemoryError | EngineFailure)


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
    """Worth retrying after ``retry_after`` seconds (timeouts, 429, 5xx).

    ``unsent``: the provider certainly holds no copy of the message after this call: it
    refused the send outright (429, 401/403: nothing was processed) and, when the call was a
    retry, its lookup of earlier tries found none. The dispatcher's next attempt then needs no
    lookup (``retry=False``). A timeout, a 5xx or a failed lookup leave it False: the message
    may have gone."""

    def __init__(
        self,
        message: str,
        retry_after: float | None = None,
        code: str | None = None,
        unsent: bool = False,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.code = code
        self.unsent = unsent


class DeliveryHeld(TransientDeliveryError):  # noqa: N818 - a state, like ConnectorPaused
    """The channel could not tell whether an earlier try reached the provider (its lookup was
    rate-limited, the provider's API failed or timed out) and sent nothing: hold the row
    untried until ``retry_after``, not counted as an attempt. Counted, a burst of retries
    behind a lookup limited to a few calls a minute (SendGrid's Email Activity: 6) ran out
    its attempts and was given up unsent."""


class PermanentDeliveryError(DeliveryError):
    """Will not be delivered as addressed; never retried.

    ``code``: the provider's error code (Twilio 21610, 21211...; SendGrid HTTP status), which
    the core maps to a policy change (suppression, fallback to email, pausing a template)."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code
