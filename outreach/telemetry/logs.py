"""The log lines of every ``outreach`` command: one handler on stderr, JSON or text, with
correlation ids and redaction.

``configure_logging(level, fmt)`` replaces whatever configured the root logger before (faust
does at import) with one stderr handler carrying two filters, in this order:

1. ``CorrelationFilter``: the ids bound by ``correlate(...)`` in the current context (a
   ``contextvars`` context: per asyncio task, per thread) become fields of the record, unless
   the call gave the same field in ``extra=``.
2. ``RedactingFilter`` (``outreach.telemetry.redact``): secrets cut, personal data masked.

The filters work on a copy of each record (``LogHandler.handle``): a test's capture handler
beside it sees what the code logged, which is how the tests prove the filter removed it.

Formats (``--log-format``, else ``OUTREACH_LOG_FORMAT``, else ``text``):

- ``json``: one object per line: ``time`` (ISO-8601 UTC), ``level``, ``logger``, ``message``,
  the correlation fields known (``event_id``, ``customer_id``, ``signal_id``, ``action_id``,
  ``message_id``, ``idempotency_key``, ``kind``, ``tool``, ``channel``, ``topic``,
  ``partition``, ``offset``, ``request_id``...), any other ``extra=`` field, and ``exc_info``
  (the traceback) for an exception. The compose file sets it for every engine container.
- ``text``: ``time level logger: message [field=value ...]``, for a person at a terminal.

uvicorn's and faust's loggers propagate to the same handler (``outreach.api.logs`` builds
uvicorn's configuration so).

Must not import: the engine's packages.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO, Any, Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from outreach.telemetry.redact import RedactingFilter, parse_redactions, register_environment

LogFormat = Literal["json", "text"]
CORRELATION_FIELDS = (
    "request_id", "event_id", "customer_id", "signal_id", "action_id", "message_id",
    "idempotency_key", "kind", "tool", "channel", "timer_id", "topic", "partition", "offset",
)  # fmt: skip
_ids: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("outreach_log_ids")


class TelemetrySettings(BaseSettings):
    """Logging and metrics of a command (``OUTREACH_LOG_FORMAT``, ``OUTREACH_LOG_REDACT``,
    ``OUTREACH_METRICS_PORT``)."""

    model_config = SettingsConfigDict(env_prefix="OUTREACH_")

    log_format: LogFormat = Field(default="text", description="json (containers) or text")
    log_redact: str = Field(
        default="pii,secrets",
        description="what log lines hide: pii (phone numbers, e-mail addresses) and secrets; "
        "secrets are always hidden",
    )
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="serve this process's /metrics on this port"
    )

    @field_validator("log_redact")
    @classmethod
    def _check_redact(cls, value: str) -> str:
        parse_redactions(value)
        return value


@contextlib.contextmanager
def correlate(**ids: Any) -> Iterator[dict[str, Any]]:
    """Bind ``ids`` (``None`` values are left out) to every log record made inside the block,
    in this task or thread and the tasks it starts; blocks nest (the inner ids win)."""
    current = _ids.get({})
    bound = {**current, **{k: v for k, v in ids.items() if v is not None}}
    token = _ids.set(bound)
    try:
        yield bound
    finally:
        _ids.reset(token)


def rebind(**ids: Any) -> None:
    """Bind exactly ``ids`` from here on, in place of what the innermost ``correlate`` block
    bound (that block restores the ids it found when it ends). For per-item loops: one
    context-variable write (~0.2 µs) where ``correlate`` costs ~1.8 µs."""
    _ids.set(ids)


def current_ids() -> dict[str, Any]:
    """The ids bound in this context."""
    return dict(_ids.get({}))


class CorrelationFilter(logging.Filter):
    """Adds the context's correlation ids to a record (``extra=`` fields win)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _ids.get({}).items():
            if name not in record.__dict__:
                record.__dict__[name] = value
        return True


class UtcJsonFormatter(JsonFormatter):
    """python-json-logger's formatter with the engine's field names and UTC times."""

    def __init__(self) -> None:
        super().__init__(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger"},
            reserved_attrs=[*RESERVED_ATTRS, "taskName", "_outreach_redacted", "color_message"],
            timestamp="time",
            json_ensure_ascii=False,
        )

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        """``time`` (ISO-8601 UTC, milliseconds) first, then the standard and extra fields."""
        super().add_fields(log_data, record, message_dict)
        fields = {k: v for k, v in log_data.items() if k != "time"}
        log_data.clear()
        log_data["time"] = _iso(record.created)
        log_data.update(fields)


class TextFormatter(logging.Formatter):
    """``time level logger: message [field=value ...]`` with the correlation fields known."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return _iso(record.created)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = [
            f"{name}={record.__dict__[name]}"
            for name in CORRELATION_FIELDS
            if record.__dict__.get(name) is not None
        ]
        if not fields:
            return line
        head, sep, tail = line.partition("\n")
        return f"{head} [{' '.join(fields)}]{sep}{tail}"


def _iso(created: float) -> str:
    return (
        datetime.fromtimestamp(created, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


class LogHandler(logging.StreamHandler[IO[str]]):
    """The commands' handler: writes to ``stream``, or to whatever ``sys.stderr`` is when a
    record is written (a command run inside a test runner swaps it, and swaps it back).

    Its filters (correlation, redaction) work on a copy of each record, so a handler beside it
    (a test's capture) still sees what the code logged; in a command there is no other."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._fixed = stream
        super().__init__(stream if stream is not None else sys.stderr)

    @property
    def stream(self) -> IO[str]:
        """The stream written to."""
        return self._fixed if self._fixed is not None else sys.stderr

    @stream.setter
    def stream(self, _value: IO[str]) -> None:
        pass  # StreamHandler.__init__ sets it; setStream is not supported

    def handle(self, record: logging.LogRecord) -> bool:
        """Filter and emit a copy of ``record``."""
        return super().handle(logging.makeLogRecord(record.__dict__))


def build_handler(
    fmt: LogFormat = "text",
    redact: str | None = None,
    stream: IO[str] | None = None,
) -> LogHandler:
    """A handler with the correlation and redaction filters and the chosen format."""
    handler = LogHandler(stream)
    handler.addFilter(CorrelationFilter())
    handler.addFilter(RedactingFilter(parse_redactions(redact)))
    handler.setFormatter(UtcJsonFormatter() if fmt == "json" else TextFormatter())
    return handler


def configure_logging(
    level: str | int = "info",
    fmt: str | None = None,
    *,
    redact: str | None = None,
    settings: TelemetrySettings | None = None,
    secrets: tuple[BaseModel | None, ...] = (),
    stream: IO[str] | None = None,
) -> LogHandler:
    """Configure the root logger for a command; returns its handler.

    ``fmt``/``redact``: the command's options (``None``: ``OUTREACH_LOG_FORMAT`` /
    ``OUTREACH_LOG_REDACT``, see ``TelemetrySettings``). ``secrets``: settings objects whose
    ``SecretStr`` fields must never be logged (the environment's secret-looking variables are
    registered whatever is passed). Raises ``ValueError`` for an unknown format or redaction.
    """
    from outreach.telemetry.redact import register_settings

    chosen = settings or TelemetrySettings()
    form = (fmt or chosen.log_format).lower()
    if form not in ("json", "text"):
        raise ValueError(f"log format {form!r}: use json or text")
    register_environment()
    register_settings(*secrets)
    handler = build_handler(
        "json" if form == "json" else "text", redact or chosen.log_redact, stream
    )
    root = logging.getLogger()
    for old in list(root.handlers):  # faust's import, an earlier configure_logging
        if _is_console(old):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "faust", "mode", "aiokafka"):
        named = logging.getLogger(name)
        named.handlers.clear()
        named.propagate = True
    return handler


def _is_console(handler: logging.Handler) -> bool:
    """Handlers this module installed, or plain stream handlers on stdout/stderr (what
    ``basicConfig`` and faust install); capture handlers of test runners stay."""
    if isinstance(handler, LogHandler):
        return True
    return type(handler) is logging.StreamHandler and getattr(handler, "stream", None) in (
        sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__,
    )  # fmt: skip
