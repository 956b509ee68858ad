"""Logging of ``outreach api``: uvicorn's configuration, with the unsubscribe tokens cut
out of the access log. ``outreach api`` uses ``uvicorn_root_config`` (uvicorn's records go
through the root handler of ``outreach.telemetry.logs``: JSON or text, redacted);
``uvicorn_log_config`` is uvicorn's own configuration with the token filter, for embedding.

A token in ``/unsubscribe/{token}`` names the recipient and unsubscribes them in one click for
whoever holds it, so it is a credential: the access log shows ``/unsubscribe/<token>``.

Must not import: faust, the decision core.
"""

from __future__ import annotations

import copy
import logging
import re
from typing import Any

from uvicorn.config import LOGGING_CONFIG

_TOKEN = re.compile(r"(/unsubscribe/)[^/?#\s\"]+")
HIDDEN = r"\1<token>"


def redact(text: str) -> str:
    """``text`` with every unsubscribe token replaced by ``<token>``."""
    return _TOKEN.sub(HIDDEN, text)


class RedactTokens(logging.Filter):
    """Cuts unsubscribe tokens out of a record's message and arguments (uvicorn's access
    records carry the path as an argument)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        return True


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's default logging configuration with ``RedactTokens`` on both handlers."""
    config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_tokens"] = {"()": RedactTokens}
    for handler in config["handlers"].values():
        handler.setdefault("filters", []).append("redact_tokens")
    return config


def uvicorn_root_config() -> dict[str, Any]:
    """uvicorn's loggers without handlers of their own: their records propagate to the root
    handler of ``outreach.telemetry.logs.configure_logging`` (one format, correlation ids,
    redaction), with ``RedactTokens`` on each logger besides."""
    loggers = ("uvicorn", "uvicorn.error", "uvicorn.access")
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact_tokens": {"()": RedactTokens}},
        "loggers": {
            name: {"handlers": [], "propagate": True, "filters": ["redact_tokens"]}
            for name in loggers
        },
    }
