"""Which system each tool's effects go to: the connectors file, validated with file:line errors.

``OUTREACH_CONNECTORS=connectors.yaml`` names the file; without it every tool goes to the file
connector (``DATA_DIR/effects.jsonl``), the embedded default. The file (see
``connectors.example.yaml`` and docs/connectors.md)::

    tools:
      rebook_shipment:
        kind: http                       # http | helpdesk | stripe | file
        url: https://oms.example.com/v1/shipments/{{ params.shipment_id }}/rebook
        method: POST
        idempotent: true                 # the receiver honours Idempotency-Key: retry is safe
        headers: {Authorization: "Bearer ${OMS_TOKEN}"}   # ${VAR} (url, headers): environment
        body: {shipment_id: "{{ params.shipment_id }}", reason: late delivery}
        timeout: {connect: 3s, read: 10s}
        breaker: {failures: 5, cooldown: 60s}
        response:
          external_id: rebooking.id      # a dotted path into the JSON answer
          failed_when: {status: [rejected]}
          reason: error.message
          events:
            - when: new_estimate         # present in the answer
              type: shipment.updated
              data: {...}
      retry_payment: {kind: stripe}      # also request_payment_update, grant_credit,
    stripe:                              # offer_discount (outreach.connectors.billing)
      api_key: ${STRIPE_API_KEY}
      api_base: ${STRIPE_API_BASE}       # optional: a local double

Templates: a string that is exactly ``{{ path }}`` takes the value at that path with its type
(a number stays a number); any other string is rendered by a sandboxed Jinja2 environment
with undefined names refused. Names: ``params`` (the tool's validated parameters), ``effect``
(``idempotency_key``, ``action_id``, ``customer_id``, ``tool``), ``customer_id``,
``timeline_url`` (the customer's timeline on the operator API, when ``OUTREACH_PUBLIC_URL`` is
set), ``now`` (RFC 3339) and, in ``response.events``, ``answer`` (the JSON answer).

Must not import: faust, aiokafka, sqlalchemy, fastapi, openai.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any, Literal

from jinja2 import StrictUndefined, Template, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from outreach.agents.tools import TOOLS
from outreach.events import PUBLIC_TYPES
from outreach.rules.durations import Duration
from outreach.rules.yamlfile import Loc, Problem, RuleFileError, YamlDoc, load_yaml

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PATH = re.compile(r"^\{\{\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)\s*\}\}$")
_JINJA = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)


class ConnectorsSettings(BaseSettings):
    """Where the connectors file is and the secret requests are signed with."""

    model_config = SettingsConfigDict(env_prefix="OUTREACH_")

    connectors: Path | None = Field(
        default=None, description="the connectors file; none: every tool goes to the file connector"
    )
    connector_secret: SecretStr | None = Field(
        default=None,
        description="HMAC-SHA256 key of X-Outreach-Signature on every connector request",
    )


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(_Model):
    connect: Duration = Field(default="3s", validate_default=True)
    read: Duration = Field(default="10s", validate_default=True)


class Breaker(_Model):
    """Consecutive failures that open the circuit, and how long it stays open."""

    failures: int = Field(default=5, ge=1)
    cooldown: Duration = Field(default="60s", validate_default=True)


class EventMap(_Model):
    """An event made from the answer: the system reported a new state."""

    when: str | None = Field(default=None, description="a dotted path that must be present")
    type: str
    data: dict[str, Any]

    @field_validator("type")
    @classmethod
    def _public(cls, kind: str) -> str:
        public = [m.model_fields["type"].annotation.__args__[0] for m in PUBLIC_TYPES]  # type: ignore[union-attr]
        if kind not in public:
            raise ValueError(f"{kind!r} is not an input event type; one of: {', '.join(public)}")
        return kind


class ResponseMap(_Model):
    external_id: str | None = None
    failed_when: dict[str, list[Any]] = Field(default_factory=dict)
    reason: str | None = None
    events: list[EventMap] = Field(default_factory=list)


class HttpTool(_Model):
    """A tool performed by one HTTP request to the operator's system."""

    kind: Literal["http"] = "http"
    url: str
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    idempotent: bool = False
    headers: dict[str, str] = Field(default_factory=dict)
    body: Any = None  # None: the effect itself as JSON
    timeout: Timeouts = Timeouts()
    breaker: Breaker = Breaker()
    response: ResponseMap = ResponseMap()

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        if not url.startswith(("https://", "http://", "${")):
            raise ValueError(f"{url!r} is not an http(s) URL (or one starting with ${{VAR}})")
        return url


# a Zendesk-compatible ticket (POST /api/v2/tickets.json): the handoff summary, the evidence
# and a link to the customer's timeline; external_id ties the ticket to the effect
HELPDESK_BODY: dict[str, Any] = {
    "ticket": {
        "subject": "{{ params.summary | truncate(150, True, '...', 0) }}",
        "priority": "{{ params.priority }}",
        "tags": ["outreach", "{{ params.queue }}"],
        "external_id": "{{ effect.idempotency_key }}",
        "comment": {
            "body": (
                "{{ params.summary }}\n\nWhat happened:\n"
                "{% for line in params.what_happened %}- {{ line }}\n{% endfor %}"
                "\nAlready tried:\n"
                "{% for line in params.tried %}- {{ line }}\n{% else %}- nothing\n{% endfor %}"
                "\nNext step: {{ params.next_step }}\n\nEvidence:\n"
                "{% for k, v in params.evidence | dictsort %}- {{ k }}: {{ v }}\n{% endfor %}"
                "{% if timeline_url %}\nTimeline: {{ timeline_url }}\n{% endif %}"
                "\nCustomer: {{ customer_id }} (action {{ effect.action_id }})"
            ),
            "public": False,
        },
    }
}


class HelpdeskTool(HttpTool):
    """``escalate_to_human`` as a ticket; the body defaults to a Zendesk ticket."""

    kind: Literal["helpdesk"] = "helpdesk"  # type: ignore[assignment]
    body: Any = HELPDESK_BODY
    response: ResponseMap = ResponseMap(external_id="ticket.id")


class FileTool(_Model):
    """The file connector (the default for every tool not listed)."""

    kind: Literal["file"]


STRIPE_TOOLS = ("retry_payment", "request_payment_update", "grant_credit", "offer_discount")


class StripeTool(_Model):
    """A billing tool performed through the Stripe API (the ``stripe`` section says how)."""

    kind: Literal["stripe"]


class StripeSection(_Model):
    """The Stripe account the billing tools act on."""

    api_key: str = Field(description="a secret or restricted key: ${STRIPE_API_KEY}")
    api_base: str | None = Field(
        default=None, description="another API address (a local double); default Stripe's"
    )
    timeout: Timeouts = Timeouts.model_validate({"read": "30s"})
    breaker: Breaker = Breaker()

    @field_validator("api_base")
    @classmethod
    def _base(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("https://", "http://", "${")):
            raise ValueError(f"{url!r} is not an http(s) URL (or one starting with ${{VAR}})")
        return url


KINDS: dict[str, type[HttpTool] | type[FileTool] | type[StripeTool]] = {
    "http": HttpTool, "helpdesk": HelpdeskTool, "file": FileTool, "stripe": StripeTool,
}  # fmt: skip


class ConnectorsFile(_Model):
    tools: dict[str, dict[str, Any]] = Field(default_factory=dict)  # each checked by its kind
    stripe: StripeSection | None = None


AnyTool = HttpTool | HelpdeskTool | FileTool | StripeTool


class Loaded(_Model):
    """A validated connectors file with its environment references resolved."""

    path: str
    tools: dict[str, AnyTool]
    stripe: StripeSection | None = None


def load_connectors(path: Path, environ: dict[str, str] | None = None) -> Loaded:
    """Read, validate and resolve ``path``; raises ``RuleFileError`` listing every problem
    as file:line:col (a missing ``${VAR}`` included)."""
    env = dict(os.environ) if environ is None else environ
    doc = load_yaml(path)
    if not isinstance(doc.data, dict):
        raise RuleFileError([doc.problem((), "must be a mapping with a 'tools' key")])
    try:
        parsed = ConnectorsFile.model_validate(doc.data)
    except ValidationError as exc:
        raise RuleFileError(doc.validation_problems(exc)) from None
    problems: list[Problem] = []
    tools: dict[str, AnyTool] = {}
    for name, raw in parsed.tools.items():
        tool = _tool(name, raw, parsed, env, doc, problems)
        if tool is not None:
            tools[name] = tool
    stripe = parsed.stripe
    if stripe is not None:
        key = _resolve(stripe.api_key, env, doc, ("stripe", "api_key"), problems)
        base = stripe.api_base
        if base is not None:
            base = _resolve(base, env, doc, ("stripe", "api_base"), problems) or None
        stripe = stripe.model_copy(update={"api_key": key, "api_base": base})
    if problems:
        raise RuleFileError(problems)
    return Loaded(path=str(path), tools=tools, stripe=stripe)


def _tool(
    name: str,
    raw: Any,
    parsed: ConnectorsFile,
    env: dict[str, str],
    doc: YamlDoc,
    problems: list[Problem],
) -> AnyTool | None:
    """One tool's entry validated by its kind (``None``, with problems added, if it is not)."""
    loc: Loc = ("tools", name)
    if name not in TOOLS:
        names = ", ".join(sorted(TOOLS))
        problems.append(doc.problem(loc, f"not a pre-approved tool; known: {names}"))
        return None
    kind = raw.get("kind", "http") if isinstance(raw, dict) else None
    model = KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        where = (*loc, "kind") if isinstance(raw, dict) else loc
        problems.append(doc.problem(where, f"kind must be one of: {', '.join(KINDS)}"))
        return None
    try:
        tool = model.model_validate(raw)
    except ValidationError as exc:
        problems += doc.validation_problems(exc, loc)
        return None
    if isinstance(tool, StripeTool):
        if name not in STRIPE_TOOLS:
            problems.append(
                doc.problem((*loc, "kind"), f"stripe performs {', '.join(STRIPE_TOOLS)}")
            )
        elif parsed.stripe is None:
            problems.append(doc.problem(loc, "kind stripe needs a top-level 'stripe' section"))
        return tool
    if isinstance(tool, FileTool):
        return tool
    headers = {}
    for header, value in tool.headers.items():
        headers[header] = _resolve(value, env, doc, (*loc, "headers", header), problems)
    known = len(problems)
    url = _resolve(tool.url, env, doc, (*loc, "url"), problems)
    if len(problems) == known and not url.startswith(("https://", "http://")):
        problems.append(doc.problem((*loc, "url"), f"{url!r} is not an http(s) URL"))
    _check_templates(tool, doc, loc, problems)
    return tool.model_copy(update={"headers": headers, "url": url})


def _resolve(value: str, env: dict[str, str], doc: YamlDoc, loc: Loc, out: list[Problem]) -> str:
    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            out.append(doc.problem(loc, f"${{{name}}} is not set in the environment; export it"))
            return ""
        return env[name]

    return _ENV.sub(sub, value)


def _check_templates(tool: HttpTool, doc: YamlDoc, loc: Loc, out: list[Problem]) -> None:
    """Every template of ``tool`` compiles (undefined names are found when rendering)."""
    leaves: list[tuple[Loc, str]] = [((*loc, "url"), tool.url)]
    leaves += _strings(tool.body, (*loc, "body"))
    for i, event in enumerate(tool.response.events):
        leaves += _strings(event.data, (*loc, "response", "events", i, "data"))
    for where, text in leaves:
        try:
            _JINJA.parse(text)
        except TemplateSyntaxError as exc:
            out.append(doc.problem(where, f"template: {exc.message}"))


def _strings(value: Any, loc: Loc) -> list[tuple[Loc, str]]:
    if isinstance(value, str):
        return [(loc, value)]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _strings(v, (*loc, str(k)))]
    if isinstance(value, list):
        return [s for i, v in enumerate(value) for s in _strings(v, (*loc, i))]
    return []


@functools.lru_cache(maxsize=512)
def _compiled(text: str) -> Template:
    """A template compiled once per process (every effect of a tool renders the same ones)."""
    return _JINJA.from_string(text)


def render(value: Any, context: dict[str, Any]) -> Any:
    """``value`` (a YAML structure) with every template filled from ``context``."""
    if isinstance(value, str):
        exact = _PATH.match(value)
        if exact:
            return lookup(context, exact.group(1), strict=True)
        if "{" not in value:
            return value
        return _compiled(value).render(context)
    if isinstance(value, dict):
        return {k: render(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, context) for v in value]
    return value


def lookup(data: Any, path: str, strict: bool = False) -> Any:
    """The value at dotted ``path`` (list items by index); ``None`` if absent, or KeyError
    with ``strict``."""
    node = data
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            if strict:
                raise KeyError(f"{path}: no {part!r} here")
            return None
    return node
