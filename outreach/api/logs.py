"""Logging of ``outreach api``: uvicorn's own configuration, with the unsubscribe tokens cut
out of the access log.

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
