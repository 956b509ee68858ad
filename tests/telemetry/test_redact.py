"""Redaction of log lines: secrets always cut, personal data masked unless asked otherwise."""

from __future__ import annotations

import base64
import logging
import sys
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr
from pydantic_settings import BaseSettings

from outreach.telemetry import redact
from outreach.telemetry.redact import (
    MASK,
    RedactingFilter,
    SecretRegistry,
    mask_phone,
    parse_redactions,
    redact_pii,
    redact_secrets,
)

SECRET_CHARS = st.characters(
    whitelist_categories=("Lu", "Ll", "Nd"), whitelist_characters="-_.~/+=!$", max_codepoint=127
)
secrets_st = st.text(SECRET_CHARS, min_size=redact.MIN_SECRET, max_size=40)
surrounding = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@pytest.fixture(autouse=True)
def _fresh_registry() -> Iterator[None]:
    redact.SECRETS.clear()
    yield
    redact.SECRETS.clear()


@given(secret=secrets_st, before=surrounding, after=surrounding)
def test_a_registered_secret_never_survives_in_any_text(secret: str, before: str, after: str):
    registry = SecretRegistry()
    registry.add(secret)
    out = redact_secrets(f"{before}{secret}{after}", registry)
    assert secret not in out
    assert quote(secret, safe="") not in out


@given(secrets=st.lists(secrets_st, min_size=2, max_size=4), text=surrounding)
def test_several_secrets_even_inside_one_another_are_all_cut(secrets: list[str], text: str):
    registry = SecretRegistry()
    for secret in secrets:
        registry.add(secret)
    joined = text.join(secrets) + secrets[0][:3] + secrets[-1]
    out = redact_secrets(joined, registry)
    assert all(s not in out for s in secrets)


@given(secret=secrets_st)
def test_base64_forms_are_cut_too(secret: str):
    registry = SecretRegistry()
    registry.add_basic("AC" + "1" * 32, secret)
    basic = base64.b64encode(f"{'AC' + '1' * 32}:{secret}".encode()).decode()
    alone = base64.b64encode(secret.encode()).decode()
    out = redact_secrets(f"Authorization: {basic}; raw {alone}", registry)
    assert basic not in out and alone not in out


@given(text=st.text(st.characters(blacklist_characters="@+:/", blacklist_categories=("Cs",))))
def test_text_without_secrets_or_credentials_shapes_is_left_alone(text: str):
    registry = SecretRegistry()
    registry.add("zz-registered-secret-zz")
    if "zz-registered-secret-zz" in text or "ok_" in text or "bearer" in text.lower():
        return
    if "basic" in text.lower():
        return
    assert redact_secrets(text, registry) == text


@given(
    country=st.integers(1, 9),
    rest=st.text(st.characters(whitelist_categories=("Nd",), max_codepoint=127), min_size=7,
                 max_size=13),
    before=st.sampled_from(["", "to ", "phone=", "(", "'"]),
    after=st.sampled_from(["", " ok", ")", "'", ","]),
)  # fmt: skip
def test_phone_numbers_are_masked_keeping_a_few_digits(
    country: int, rest: str, before: str, after: str
):
    phone = f"+{country}{rest}"
    out = redact_pii(f"{before}{phone}{after}")
    assert phone not in out
    masked = mask_phone(phone)
    assert out == f"{before}{masked}{after}"
    assert masked.count("*") == 4 and masked[-3:] == phone[-3:]
    assert sum(c.isdigit() for c in masked) <= len(phone) - 1 - 4  # at least four hidden
    assert redact_pii(out) == out  # masking is idempotent


def test_phone_mask_matches_the_documented_example():
    assert mask_phone("+447000000123") == "+4470****123"
    assert redact_pii("call +15557654321 now") == "call +155****321 now"  # 5 hidden


@given(
    local=st.from_regex(r"[a-z0-9][a-z0-9._+-]{0,15}", fullmatch=True),
    domain=st.from_regex(r"[a-z0-9]{1,10}\.(com|org|co\.uk|example)", fullmatch=True),
)
def test_email_addresses_keep_the_first_character_and_the_domain(local: str, domain: str):
    address = f"{local}@{domain}"
    out = redact_pii(f"send to {address}.")
    assert out == f"send to {local[0]}{MASK}@{domain}."
    if len(local) > 1:
        assert address not in out


def test_credential_shapes_are_cut_without_being_registered():
    text = (
        "postgresql+psycopg://outreach:s3cret-pw@db:5432/x Authorization: Bearer abc.def-ghi "
        "key ok_0123456789ab_ZmFrZS1rZXktdmFsdWU and /unsubscribe/eyJ0.sig?x=1"
    )
    out = redact_secrets(text)
    assert "s3cret-pw" not in out and "abc.def-ghi" not in out
    assert "ZmFrZS1rZXktdmFsdWU" not in out and "eyJ0.sig" not in out
    assert "postgresql+psycopg://outreach:***@db:5432/x" in out
    assert "ok_0123456789ab_***" in out and "/unsubscribe/<token>?x=1" in out
    assert redact_secrets("Authorization: Basic QUMxMTpzZWNyZXQ=") == "Authorization: Basic ***"
    ordinary = "a basic question from the bearer of the parcel"
    assert redact_secrets(ordinary) == ordinary


def test_short_values_are_not_cut_bare_but_urls_keep_their_password_hidden():
    redact.register_environment({"OUTREACH_DATABASE_URL": "postgresql://outreach:outreach@db/x"})
    out = redact_secrets("outreach.streams: connected to postgresql://outreach:outreach@db/x")
    assert out == "outreach.streams: connected to postgresql://outreach:***@db/x"


def test_the_environment_and_settings_secrets_are_registered():
    class Example(BaseSettings):
        account_sid: str = "AC" + "2" * 32
        auth_token: SecretStr = SecretStr("settings-token-1234")
        database_url: str = "postgresql://u:url-password-123456@h/db"

    redact.register_environment(
        {"STRIPE_API_KEY": "sk_test_env_value_99", "SHORT_TOKEN": "abc", "PLAIN": "not-a-secret"}
    )
    redact.register_settings(Example())
    values = redact.SECRETS.values()
    assert {"sk_test_env_value_99", "settings-token-1234", "url-password-123456"} <= values
    assert "abc" not in values and "not-a-secret" not in values
    pair = base64.b64encode(f"{'AC' + '2' * 32}:settings-token-1234".encode()).decode()
    assert pair in values


def test_the_redaction_setting_always_keeps_secrets():
    assert parse_redactions(None) == {"pii", "secrets"}
    assert parse_redactions("secrets") == {"secrets"}
    assert parse_redactions("none") == {"secrets"}
    assert parse_redactions(" PII ") == {"pii", "secrets"}
    with pytest.raises(ValueError, match="unknown tokens"):
        parse_redactions("tokens")


def _record(msg: object, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("outreach.t", logging.WARNING, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_the_filter_cuts_message_arguments_extras_and_exceptions():
    redact.register_secret("filter-secret-value")
    try:
        raise RuntimeError("raised with filter-secret-value to a@example.com")
    except RuntimeError:
        info = sys.exc_info()
    record = _record(
        "msg filter-secret-value %s %r %d", "arg filter-secret-value", {"k": "filter-secret-value"},
        7, customer_email="jane@example.com", nested={"token": ["filter-secret-value"]},
    )  # fmt: skip
    record.exc_info = info
    assert RedactingFilter().filter(record)
    text = record.getMessage() + str(record.__dict__) + (record.exc_text or "")
    assert "filter-secret-value" not in text
    assert "jane@example.com" not in text and "a@example.com" not in text
    assert record.getMessage() == "msg *** arg *** {'k': '***'} 7"
    assert record.customer_email == "j***@example.com"
    assert record.exc_info is None and "RuntimeError: raised with *** to a***@example.com" in (
        record.exc_text or ""
    )


def test_pii_is_kept_when_only_secrets_are_redacted():
    redact.register_secret("filter-secret-value")
    record = _record("to %s: filter-secret-value", "+447000000123")
    RedactingFilter({"secrets"}).filter(record)
    assert record.getMessage() == "to +447000000123: ***"


def test_an_object_argument_is_formatted_redacted_both_ways():
    redact.register_secret("object-secret-value")

    class Client:
        def __str__(self) -> str:
            return "client(object-secret-value)"

        def __repr__(self) -> str:
            return "<Client object-secret-value>"

    record = _record("%s and %r", Client(), Client())
    RedactingFilter().filter(record)
    assert record.getMessage() == "client(***) and <Client ***>"
