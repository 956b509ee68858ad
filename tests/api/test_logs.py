"""Unsubscribe tokens never reach the logs of ``outreach api`` (they are credentials)."""

from __future__ import annotations

import logging

from uvicorn.config import LOGGING_CONFIG

from outreach.api.logs import RedactTokens, redact, uvicorn_log_config

TOKEN = "eyJjIjoiY3VzXzEiLCJhIjoiYUBleGFtcGxlLmNvbSJ9.Zx_y-1"


def test_tokens_are_cut_from_paths_wherever_they_appear() -> None:
    assert redact(f"/unsubscribe/{TOKEN}") == "/unsubscribe/<token>"
    assert redact(f'"POST /unsubscribe/{TOKEN}?x=1 HTTP/1.1"') == (
        '"POST /unsubscribe/<token>?x=1 HTTP/1.1"'
    )
    assert redact("/webhooks/twilio/status?message_id=m") == "/webhooks/twilio/status?message_id=m"


def test_an_access_record_as_uvicorn_makes_it_is_logged_without_the_token() -> None:
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", f"/unsubscribe/{TOKEN}", "1.1", 200), None,
    )  # fmt: skip
    assert RedactTokens().filter(record)
    assert record.getMessage() == '127.0.0.1:5000 - "GET /unsubscribe/<token> HTTP/1.1" 200'


def test_the_uvicorn_configuration_filters_both_handlers() -> None:
    config = uvicorn_log_config()
    assert config["filters"]["redact_tokens"]["()"] is RedactTokens
    assert {name: h["filters"] for name, h in config["handlers"].items()} == {
        "default": ["redact_tokens"], "access": ["redact_tokens"],
    }  # fmt: skip
    assert "filters" not in LOGGING_CONFIG["handlers"]["access"]  # uvicorn's own left alone
