"""The LLM gateway: every model call goes through here, inside limits, with an audit record.

Owns the openai SDK client (``OpenAI(base_url=..., api_key=..., timeout=..., max_retries=...)``;
``OPENAI_BASE_URL`` points it at any OpenAI-compatible server, local models included), the
per-minute request cap, the daily token budget (per UTC day; shared by every process on one
store through ``outreach.store.tokens.SharedTokens``) and the audit record of each call
(model, sha256 of prompt and response, full text only when ``OUTREACH_LLM_RECORD_TEXT``,
tokens, latency, outcome). Timeouts and retries with exponential backoff are the SDK's own
(``timeout``, ``max_retries``; it honours ``Retry-After``).

Errors, one tree under ``OutreachError``; every one means "go deterministic"::

    LLMError                      the model could not be used for this call (``record``)
    ├── LLMLimitError             a local limit said no before any request was made
    │   ├── LLMRateLimitedError   the per-minute request cap is reached
    │   └── LLMBudgetExhaustedError  the daily token budget is spent (an alert is logged)
    └── LLMUnavailableError       the server did not answer usably (after the SDK's retries)
        └── LLMTimeoutError       it did not answer within the timeout

May import openai (an adapter); the core never imports this module.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol

import openai
from openai import OpenAI
from openai.types.chat import ChatCompletion
from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from outreach.errors import OutreachError
from outreach.telemetry import metrics

log = logging.getLogger("outreach.llm")

USES = ("planner", "composer", "replies")  # OUTREACH_LLM_USES: what the model does
_LOCAL_KEY = "not-needed"  # many local OpenAI-compatible servers ignore the key


class LLMSettings(BaseSettings):
    """Model access: ``OPENAI_API_KEY``, ``OPENAI_BASE_URL`` and ``OUTREACH_LLM_*``.

    Without a key and without a base URL the engine stays deterministic (``enabled`` false).
    A base URL alone is enough: local servers usually need no key."""

    model_config = SettingsConfigDict(env_prefix="OUTREACH_LLM_", populate_by_name=True)

    api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("api_key", "OPENAI_API_KEY")
    )
    base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("base_url", "OPENAI_BASE_URL")
    )
    model: str = Field(default="gpt-4o-mini", description="OUTREACH_LLM_MODEL")
    timeout: float = Field(default=10.0, gt=0, description="seconds per request attempt")
    max_retries: int = Field(default=2, ge=0, description="SDK retries, exponential backoff")
    requests_per_minute: int = Field(default=60, ge=1)
    daily_tokens: int = Field(
        default=1_000_000, ge=1, description="per UTC day, all calls of every process on the store"
    )
    record_text: bool = Field(default=False, description="keep full prompts and answers")
    redact_fields: Annotated[frozenset[str], NoDecode] = Field(
        default=frozenset(),
        description="field names never shown to the model, beyond the built-in PII ones "
        "(comma-separated, any depth; OUTREACH_LLM_REDACT_FIELDS)",
    )
    uses: Annotated[frozenset[str], NoDecode] = Field(
        default=frozenset(USES),
        description="what the model is used for: planner, composer, replies (comma-separated)",
    )

    @field_validator("redact_fields", mode="before")
    @classmethod
    def _fields(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(part.strip().lower() for part in value.split(",") if part.strip())
        if isinstance(value, (set, frozenset, list, tuple)):
            return frozenset(str(part).strip().lower() for part in value)
        return value

    @field_validator("uses", mode="before")
    @classmethod
    def _uses(cls, value: object) -> object:
        if isinstance(value, str):
            value = {part.strip().lower() for part in value.split(",") if part.strip()}
        if isinstance(value, (set, frozenset, list, tuple)):
            unknown = sorted(str(v) for v in value if v not in USES)
            if unknown:
                raise ValueError(f"unknown use {', '.join(unknown)}; choose from {', '.join(USES)}")
        return value

    @property
    def enabled(self) -> bool:
        """Whether a model may be used at all (an empty variable counts as unset)."""
        key = self.api_key.get_secret_value().strip() if self.api_key is not None else ""
        return bool(key) or bool((self.base_url or "").strip())

    def used_for(self, use: str) -> bool:
        """Whether the model is on and used for ``use`` (planner, composer or replies)."""
        return self.enabled and use in self.uses


class LLMError(OutreachError):
    """The model could not be used for this call; ``record`` is its audit record."""

    def __init__(self, message: str, record: LLMCall) -> None:
        super().__init__(message)
        self.record = record

    code = "llm_error"


class LLMLimitError(LLMError):
    """A local limit refused the call before any request was made."""


class LLMRateLimitedError(LLMLimitError):
    """The per-minute request cap is reached."""

    code = "rate_limited"


class LLMBudgetExhaustedError(LLMLimitError):
    """The daily token budget is spent: deterministic mode until the next UTC day."""

    code = "budget_exhausted"


class LLMUnavailableError(LLMError):
    """The server failed or answered unusably, after the SDK's retries."""


class LLMTimeoutError(LLMUnavailableError):
    """No answer within the timeout (after the SDK's retries)."""

    code = "timeout"


@dataclass
class LLMCall:
    """The audit record of one model call (``as_dict`` for the decision log)."""

    purpose: str  # planner | composer | replies
    model: str
    at: str  # RFC 3339 UTC
    prompt_sha256: str
    response_sha256: str | None = None
    prompt: str | None = None  # only with record_text
    response: str | None = None  # only with record_text
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    outcome: str = "ok"  # ok | a fallback code
    fallback_reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    def fell_back(self, code: str, reason: str) -> None:
        """Record that the caller did not use the answer, and why."""
        self.outcome, self.fallback_reason = code, reason


@dataclass(frozen=True)
class LLMReply:
    """A completion and its audit record."""

    completion: ChatCompletion
    record: LLMCall


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def answer_text(completion: ChatCompletion) -> str:
    """The answer as recorded and hashed: content, refusal and tool calls of the first choice."""
    if not completion.choices:
        return _canonical({"choices": []})
    message = completion.choices[0].message
    calls = [
        {"name": c.function.name, "arguments": c.function.arguments}
        for c in (message.tool_calls or [])
        if c.type == "function"
    ]
    return _canonical({"content": message.content, "refusal": message.refusal, "tools": calls})


class TokenUsage(Protocol):
    """Where the gateway counts the tokens spent per UTC day (``YYYY-MM-DD``)."""

    def spent(self, day: str) -> int:
        """Tokens spent on ``day`` (as far as known)."""
        ...

    def add(self, day: str, tokens: int) -> None:
        """Count ``tokens`` spent on ``day``."""
        ...


class LocalTokens:
    """Tokens spent by this process alone (the default; ``outreach.store.tokens.SharedTokens``
    shares the budget between every process on one store)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._day, self._tokens = "", 0

    def spent(self, day: str) -> int:
        """Tokens this process spent on ``day``."""
        with self._lock:
            return self._tokens if day == self._day else 0

    def add(self, day: str, tokens: int) -> None:
        """Count ``tokens`` spent on ``day`` (a new day starts from zero)."""
        with self._lock:
            if day != self._day:
                self._day, self._tokens = day, 0
            self._tokens += tokens


class LLMGateway:
    """Makes model calls within the request cap and the token budget, recording each one.

    ``clock`` (wall time, seconds) decides the UTC day of the token budget and the per-minute
    window; latencies are measured, not decided, so they use ``time.perf_counter``. ``client``
    defaults to ``OpenAI`` built from settings. ``usage`` counts the tokens: this process's
    alone by default; the live runtime and the API share one count per store. The request cap
    is this process's (the API's thread pool and a worker's batch thread may call at once)."""

    def __init__(
        self,
        settings: LLMSettings,
        client: OpenAI | None = None,
        clock: Callable[[], float] = time.time,
        usage: TokenUsage | None = None,
    ) -> None:
        self.settings = settings
        self.client = client or OpenAI(
            api_key=settings.api_key.get_secret_value() if settings.api_key else _LOCAL_KEY,
            base_url=settings.base_url,
            timeout=settings.timeout,
            max_retries=settings.max_retries,
        )
        self._clock = clock
        self.usage: TokenUsage = usage or LocalTokens()
        self._admitting = threading.Lock()  # the cap's check and count are one step
        self._recent: deque[float] = deque()
        self._alerted = ""

    @property
    def tokens_today(self) -> int:
        """Tokens spent on the current UTC day."""
        return self.usage.spent(self._today())

    def complete(
        self,
        purpose: str,
        messages: Sequence[Mapping[str, Any]],
        **request: Any,
    ) -> LLMReply:
        """One chat completion (``request``: tools, response_format, ...); raises ``LLMError``."""
        prompt = _canonical({"messages": list(messages), **request})
        record = LLMCall(
            purpose=purpose,
            model=self.settings.model,
            at=datetime.fromtimestamp(self._clock(), UTC).isoformat().replace("+00:00", "Z"),
            prompt_sha256=_digest(prompt),
            prompt=prompt if self.settings.record_text else None,
        )
        self._admit(record)
        started = time.perf_counter()
        try:
            completion = self.client.chat.completions.create(
                model=self.settings.model,
                messages=messages,  # type: ignore[arg-type]
                **request,
            )
        except openai.APITimeoutError as exc:
            raise self._failed(LLMTimeoutError, record, started, f"timed out: {exc}") from exc
        except openai.OpenAIError as exc:
            raise self._failed(LLMUnavailableError, record, started, _describe(exc)) from exc
        record.latency_ms = round((time.perf_counter() - started) * 1000, 1)
        usage = completion.usage
        if usage is not None:
            record.prompt_tokens = usage.prompt_tokens
            record.completion_tokens = usage.completion_tokens
            self.usage.add(self._today(), usage.total_tokens)
        answer = answer_text(completion)
        record.response_sha256 = _digest(answer)
        record.response = answer if self.settings.record_text else None
        metrics.LLM_CALLS.labels(purpose, "ok").inc()
        metrics.LLM_SECONDS.labels(purpose).observe(record.latency_ms / 1000)
        metrics.LLM_TOKENS.labels(purpose, "prompt").inc(record.prompt_tokens)
        metrics.LLM_TOKENS.labels(purpose, "completion").inc(record.completion_tokens)
        return LLMReply(completion, record)

    def _admit(self, record: LLMCall) -> None:
        """Count the call against the cap and the budget, or refuse it."""
        with self._admitting:
            self._admit_locked(record)

    def _admit_locked(self, record: LLMCall) -> None:
        day = self._today()
        spent = self.usage.spent(day)
        if spent >= self.settings.daily_tokens:
            why = (
                f"daily token budget spent ({spent} of {self.settings.daily_tokens} "
                f"tokens on {day} UTC): deterministic mode until the next UTC day"
            )
            if self._alerted != day:
                self._alerted = day
                log.error("ALERT LLM budget exhausted: %s", why)
            record.fell_back(LLMBudgetExhaustedError.code, why)
            metrics.LLM_CALLS.labels(record.purpose, LLMBudgetExhaustedError.code).inc()
            raise LLMBudgetExhaustedError(why, record)
        now = self._clock()
        while self._recent and self._recent[0] <= now - 60.0:
            self._recent.popleft()
        if len(self._recent) >= self.settings.requests_per_minute:
            why = f"request cap reached ({self.settings.requests_per_minute} per minute)"
            log.warning("LLM call refused: %s", why)
            record.fell_back(LLMRateLimitedError.code, why)
            metrics.LLM_CALLS.labels(record.purpose, LLMRateLimitedError.code).inc()
            raise LLMRateLimitedError(why, record)
        self._recent.append(now)

    def _today(self) -> str:
        return datetime.fromtimestamp(self._clock(), UTC).date().isoformat()

    def _failed(self, kind: type[LLMError], record: LLMCall, started: float, why: str) -> LLMError:
        record.latency_ms = round((time.perf_counter() - started) * 1000, 1)
        record.fell_back(kind.code, why)
        metrics.LLM_CALLS.labels(record.purpose, kind.code).inc()
        metrics.LLM_SECONDS.labels(record.purpose).observe(record.latency_ms / 1000)
        log.warning("LLM call failed (%s): %s", record.purpose, why)
        return kind(why, record)


def _describe(exc: openai.OpenAIError) -> str:
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code} from the model server: {str(exc)[:200]}"
    if isinstance(exc, openai.APIConnectionError):
        return f"cannot reach the model server: {exc}"
    return f"{type(exc).__name__}: {str(exc)[:200]}"
