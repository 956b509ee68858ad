"""What log lines must not carry: secrets (always cut) and personal data (masked by default).

Secrets. Every value registered here is replaced by ``***`` wherever it appears in a record:
the message, its arguments, the ``extra`` fields and the exception text. ``configure_logging``
registers the secret-looking environment variables (names ending in ``_KEY``, ``_TOKEN``,
``_SECRET``, ``_PASSWORD``, and the password of any URL in the environment); the commands
register the ``SecretStr`` fields of the settings they load (``register_settings``). Their
URL-encoded and base64 forms go too (a ``sid:token`` pair is registered as HTTP Basic
credentials). Whatever the registry misses, three shapes are cut anyway: the password of a
URL (``scheme://user:***@host``), a bearer token (``Bearer ***``) and the secret half of an
operator API key (``ok_<id>_***``).

A value shorter than ``MIN_SECRET`` characters is not cut bare (it would cut ordinary words:
the compose file's default database password is ``outreach``, the package's name); a URL's
password is cut bare from ``MIN_URL_SECRET`` characters on, and always in its URL.

Personal data. Phone numbers (E.164) keep their first four and last three digits
(``+4470****123``) and e-mail addresses their first character and domain
(``j***@example.com``): enough to tell two customers' lines apart, not enough to contact
anyone. ``OUTREACH_LOG_REDACT=secrets`` keeps them whole (a private environment); secrets are
cut whatever it says.

Must not import: the engine's packages (every command imports this first).
"""

from __future__ import annotations

import base64
import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit

from pydantic import BaseModel, SecretStr

MASK = "***"
MIN_SECRET = 8
MIN_URL_SECRET = 12
SECRET_SUFFIXES = ("_KEY", "_TOKEN", "_SECRET", "_PASSWORD")
REDACTIONS = frozenset({"pii", "secrets"})

_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][\w+.-]*://[^\s/:@]*:)(?P<pw>[^\s/@]+)(?=@)")
# a credential after Bearer/Basic has a digit or a symbol ("a basic question" is not one)
_BEARER = re.compile(r"(?i)(\bbearer\s+)(?=[^\s'\",;]*[0-9_.~+/=-])[^\s'\",;]{8,}")
_BASIC = re.compile(r"(?i)(\bbasic\s+)(?=[A-Za-z0-9+/]*[0-9+/=])[A-Za-z0-9+/]{8,}={0,2}")
_API_KEY = re.compile(r"\b(ok_[0-9a-f]{12}_)[A-Za-z0-9_-]{8,}")
_UNSUBSCRIBE = re.compile(r"(/unsubscribe/)[^/?#\s\"']+")
_PHONE = re.compile(r"(?<![\w+])\+[1-9]\d{7,14}(?!\d)")
_EMAIL = re.compile(
    r"(?<![\w.%+-])([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)"
)


class SecretRegistry:
    """The secret values of this process (thread-safe; values only ever added)."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._lock = threading.Lock()
        self._pattern: re.Pattern[str] | None = None

    def add(self, value: str | None, *, minimum: int = MIN_SECRET) -> None:
        """Register ``value`` and its URL-encoded and base64 forms (if long enough)."""
        if value is None:
            return
        value = value.strip()
        if len(value) < minimum:
            return
        forms = {value, quote(value, safe=""), quote_plus(value)}
        raw = value.encode()
        forms |= {base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()}
        forms |= {f.rstrip("=") for f in list(forms) if f.endswith("=")}
        with self._lock:
            before = len(self._values)
            self._values |= {f for f in forms if len(f) >= minimum}
            if len(self._values) != before:
                self._pattern = None

    def add_basic(self, user: str, password: str) -> None:
        """Register HTTP Basic credentials (``user:password``, base64) besides the password."""
        self.add(password)
        if len(password.strip()) >= MIN_SECRET:
            pair = base64.b64encode(f"{user}:{password}".encode()).decode()
            self.add(pair)

    def values(self) -> frozenset[str]:
        """Everything registered."""
        with self._lock:
            return frozenset(self._values)

    def pattern(self) -> re.Pattern[str] | None:
        """One alternation of every value, longest first (so a value inside another is not
        cut first and the rest left)."""
        with self._lock:
            if self._pattern is None and self._values:
                ordered = sorted(self._values, key=len, reverse=True)
                self._pattern = re.compile("|".join(re.escape(v) for v in ordered))
            return self._pattern

    def clear(self) -> None:
        """Forget every value (tests)."""
        with self._lock:
            self._values.clear()
            self._pattern = None


SECRETS = SecretRegistry()


def register_secret(value: str | SecretStr | None) -> None:
    """Cut ``value`` from every log line of this process from now on."""
    SECRETS.add(value.get_secret_value() if isinstance(value, SecretStr) else value)


def register_settings(*settings: BaseModel | None) -> None:
    """Register every ``SecretStr`` field of these settings (nested models too), the password
    of every URL field, and ``<sid>:<secret>`` pairs as Basic credentials."""
    for model in settings:
        if model is None:
            continue
        plain: list[str] = []
        hidden: list[str] = []
        for name in type(model).model_fields:
            value = getattr(model, name, None)
            if isinstance(value, SecretStr):
                hidden.append(value.get_secret_value())
            elif isinstance(value, BaseModel):
                register_settings(value)
            elif isinstance(value, str):
                register_url(value)
                if name.endswith(("sid", "user", "username", "account")):
                    plain.append(value)
        for secret in hidden:
            SECRETS.add(secret)
            for user in plain:
                SECRETS.add_basic(user, secret)


def register_environment(environ: Mapping[str, str] | None = None) -> None:
    """Register secret-looking environment variables and the passwords of URLs in it."""
    env = os.environ if environ is None else environ
    for name, value in env.items():
        if name.upper().endswith(SECRET_SUFFIXES):
            SECRETS.add(value)
        if "://" in value:
            register_url(value)


def register_url(value: str) -> None:
    if "://" not in value or "@" not in value:
        return
    try:
        parts = urlsplit(value.strip())
        password, user = parts.password, parts.username
    except ValueError:
        return
    if password:
        SECRETS.add(password, minimum=MIN_URL_SECRET)
        if user and len(password) >= MIN_URL_SECRET:
            SECRETS.add_basic(user, password)


def redact_secrets(text: str, registry: SecretRegistry = SECRETS) -> str:
    """``text`` with every registered secret and every credential-shaped value cut."""
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, text)
    text = _BEARER.sub(r"\g<1>" + MASK, text)
    text = _BASIC.sub(r"\g<1>" + MASK, text)
    text = _API_KEY.sub(r"\g<1>" + MASK, text)
    text = _UNSUBSCRIBE.sub(r"\1<token>", text)
    pattern = registry.pattern()
    if pattern is None:
        return text
    for _ in range(3):  # a cut can join two halves into a secret again; rarely twice
        cut = pattern.sub(MASK, text)
        if cut == text:
            break
        text = cut
    return text


def mask_phone(phone: str) -> str:
    """``+447000000123`` -> ``+4470****123`` (at least four digits hidden)."""
    digits = phone[1:]
    head = max(1, min(4, len(digits) - 8))
    return f"+{digits[:head]}{'*' * 4}{digits[-3:]}"


def mask_email(local_first: str, domain: str) -> str:
    """``j`` + ``example.com`` -> ``j***@example.com``."""
    return f"{local_first}{MASK}@{domain}"


def redact_pii(text: str) -> str:
    """``text`` with phone numbers and e-mail addresses masked."""
    text = _PHONE.sub(lambda m: mask_phone(m.group(0)), text)
    return _EMAIL.sub(lambda m: mask_email(m.group(1), m.group(2)), text)


def parse_redactions(value: str | None) -> frozenset[str]:
    """``OUTREACH_LOG_REDACT`` (``pii,secrets`` when unset) as a set; ``secrets`` is always in
    it. Raises ``ValueError`` for a word it does not know."""
    if value is None or not value.strip():
        return REDACTIONS
    words = {w.strip().lower() for w in value.split(",") if w.strip()}
    unknown = words - REDACTIONS - {"none"}
    if unknown:
        raise ValueError(
            f"OUTREACH_LOG_REDACT: unknown {', '.join(sorted(unknown))}; use a comma-separated "
            "list of pii and secrets (secrets are always redacted)"
        )
    return frozenset((words - {"none"}) | {"secrets"})


class _Redacted:
    """An argument that formats as the redacted ``str``/``repr`` of the original."""

    __slots__ = ("_repr", "_str")

    def __init__(self, text: str, shown: str) -> None:
        self._str, self._repr = text, shown

    def __str__(self) -> str:
        return self._str

    def __repr__(self) -> str:
        return self._repr


_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime", "taskName",
}  # fmt: skip


class RedactingFilter(logging.Filter):
    """Cuts secrets (and, with ``pii``, masks phone numbers and e-mail addresses) in a record's
    message, arguments, ``extra`` fields, exception and stack text, in place, so every handler
    after it sees the redacted record."""

    def __init__(self, redactions: Iterable[str] = REDACTIONS) -> None:
        super().__init__()
        self.pii = "pii" in set(redactions)

    def text(self, value: str) -> str:
        """One string, redacted."""
        value = redact_secrets(value)
        return redact_pii(value) if self.pii else value

    def value(self, value: Any) -> Any:
        """An argument or extra field, redacted (numbers and booleans untouched)."""
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, bytes):
            return self.text(value.decode("utf-8", "replace"))
        if isinstance(value, Mapping):
            return {k: self.value(v) for k, v in value.items()}
        if type(value) is tuple:
            return tuple(self.value(v) for v in value)
        if isinstance(value, list | tuple | set | frozenset):
            return [self.value(v) for v in value]
        try:
            return _Redacted(self.text(str(value)), self.text(repr(value)))
        except Exception:  # a broken __str__ must not lose the line
            return "<unprintable>"

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_outreach_redacted", False):
            return True  # a second handler, or the record logged again
        if isinstance(record.msg, str):
            record.msg = self.text(record.msg)
        else:
            record.msg = self.value(record.msg)
        if isinstance(record.args, Mapping):
            record.args = {k: self.value(v) for k, v in record.args.items()}
        elif isinstance(record.args, tuple):
            record.args = tuple(self.value(a) for a in record.args)
        for name, value in list(record.__dict__.items()):
            if name not in _STANDARD and not name.startswith("_"):
                record.__dict__[name] = self.value(value)
        if record.exc_info and record.exc_info[0] is not None:
            formatted = logging.Formatter().formatException(record.exc_info)
            record.exc_text = self.text(formatted)
            record.exc_info = None  # formatters would format it again, unredacted
        elif record.exc_text:
            record.exc_text = self.text(record.exc_text)
        if record.stack_info:
            record.stack_info = self.text(record.stack_info)
        record._outreach_redacted = True
        return True
