"""The composer port: the words around a message's facts, and the checks a model's words pass.

A message is first rendered from its template with the decision's data (``Draft``): amounts,
dates, links, the unsubscribe footer and the STOP text all come from there. A composer may
only add *free-text slots* to it (``Slots``: greeting, apology, explanation), placed by
``assemble``: the greeting opens an email (in place of its salutation line), the apology and
the explanation go after the template's core text and before its closing part (an email's
last paragraph, an SMS's trailing "Reply STOP ..." sentence). SMS get no greeting: the brand
must open them.

``check`` refuses slots that would change what the decision says: too long (per slot, SMS
segments over the template's budget, or a GSM-7 text turned UCS-2), a URL, an email address,
a currency sign, any number that is not already in the rendered template, a promise (refund,
credit, discount...) the decision does not make, line breaks in an SMS, or another language
than the customer's. Failing any, the template text goes as it is.

The language check is deliberately simple: the shipped templates are English and French,
and a slot is a sentence or two, so counting each language's most frequent function words
is enough to catch a model answering in the wrong language (it needs no model, no network
and no dependency); a non-Latin script for a Latin-script locale fails too. A locale whose
language it does not know is not judged on language.

Must not import faust, aiokafka, twilio, sendgrid, openai, httpx, fastapi or sqlalchemy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from outreach.outbound.policy import ComposeHook, Composition, OutboundMessage
from outreach.outbound.segments import count_segments
from outreach.outbound.templates import Rendered, TemplateCatalog

Channel = Literal["sms", "email"]
SLOT_NAMES = ("greeting", "apology", "explanation")
MAX_SLOT = {"sms": 120, "email": 300}
EMAIL_GROWTH = 700  # characters an email may grow by, all slots together


@dataclass(frozen=True)
class Draft:
    """A message rendered from its template, and what the composer may rely on.

    ``actions``: the tools the decision performs (promises are allowed only for them)."""

    template: str
    channel: Channel
    locale: str
    body: str
    subject: str | None = None
    max_segments: int | None = None
    context: Mapping[str, Any] = field(default_factory=dict)
    actions: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Slots:
    """Free text a composer may add; empty slots add nothing."""

    greeting: str = ""
    apology: str = ""
    explanation: str = ""


@dataclass
class Composed:
    """The text to send and where it came from (``fallback``: why not the model's)."""

    body: str
    source: Literal["template", "model"]
    reason: str
    fallback: str | None = None
    slots: Slots | None = None
    llm: list[dict[str, Any]] = field(default_factory=list)


class Composer(Protocol):
    """Turns a rendered template into the text that goes."""

    def compose(self, draft: Draft) -> Composed:
        """The message body for ``draft``."""
        ...


class TemplateComposer:
    """The default composer: the template text, unchanged."""

    def compose(self, draft: Draft) -> Composed:
        """The template's text."""
        return Composed(draft.body, "template", "template text")


def policy_hook(composer: Composer, templates: TemplateCatalog) -> ComposeHook:
    """The contact policy's ``compose`` step for ``composer``: the message that goes, worded
    (model slots that passed ``check``) or as the template has it, the ``composer`` check,
    and the account the message record keeps (source, reason, fallback, LLM audit).

    The draft names no actions: a slot may promise nothing (the decision's own promises,
    amounts and dates are already in the template text)."""

    def hook(msg: OutboundMessage, rendered: Rendered) -> Composition:
        draft = Draft(
            template=msg.template, channel=rendered.channel, locale=rendered.locale,
            body=rendered.body, subject=rendered.subject,
            max_segments=templates.max_segments(msg.template), context=msg.context,
        )  # fmt: skip
        composed = composer.compose(draft)
        account = {
            "source": composed.source, "reason": composed.reason,
            "fallback": composed.fallback, "llm": composed.llm,
        }  # fmt: skip
        if composed.source != "model" or composed.body == rendered.body:
            detail = f"template text ({composed.fallback or 'kept'}: {composed.reason})"
            return rendered, {"check": "composer", "result": "template", "detail": detail}, account
        segments = count_segments(composed.body) if rendered.channel == "sms" else None
        worded = replace(rendered, body=composed.body, segments=segments)
        check = {"check": "composer", "result": "model", "detail": composed.reason}
        return worded, check, account

    return hook


_STOP_TAIL = re.compile(r"\s*((?:Reply|Répondez|Repondez)\s+STOP\b[^\n]*)$", re.IGNORECASE)
_SALUTATION = re.compile(r"^\s*(hello|hi|dear|bonjour|bonsoir|hallo|hola)\b[^\n]{0,40},?\s*$", re.I)


def assemble(draft: Draft, slots: Slots) -> str:
    """The template text with the slots in their places (see the module docstring)."""
    middle = " ".join(s.strip() for s in (slots.apology, slots.explanation) if s.strip())
    if draft.channel == "sms":
        return _sms(draft.body, middle)
    return _email(draft.body, slots.greeting.strip(), middle)


def _sms(body: str, middle: str) -> str:
    if not middle:
        return body
    tail = _STOP_TAIL.search(body)
    if tail is None:
        return f"{body.rstrip()} {middle}"
    return f"{body[: tail.start()].rstrip()} {middle} {tail.group(1)}"


def _email(body: str, greeting: str, middle: str) -> str:
    lines = body.split("\n")
    if greeting:
        if lines and _SALUTATION.match(lines[0]):
            lines[0] = greeting
        else:
            lines = [greeting, "", *lines]
    text = "\n".join(lines)
    if not middle:
        return text
    paragraphs = text.rstrip("\n").split("\n\n")
    if len(paragraphs) < 2:
        return f"{text.rstrip()}\n\n{middle}\n"
    paragraphs.insert(len(paragraphs) - 1, middle)
    return "\n\n".join(paragraphs) + "\n"


# -- checks -----------------------------------------------------------------------------------

_URL = re.compile(r"(https?://|www\.|\b[a-z0-9-]+\.(com|net|org|io|example|co)\b)", re.I)
_EMAIL = re.compile(r"\S+@\S+")
_CURRENCY = re.compile(r"[$€£¥₹]|\b(usd|eur|gbp|cad|aud)\b", re.I)
_NUMBER = re.compile(r"\d+")
PROMISES: Mapping[str, tuple[str, ...]] = {
    # words -> the tools that make them true (no tool: never promised by a model)
    "refund": (), "rembours": (), "money back": (), "reimburs": (), "compensat": (),
    "free": (), "gratuit": (), "voucher": (), "coupon": (), "guarantee": (), "garanti": (),
    "credit": ("grant_credit",), "crédit": ("grant_credit",),
    "discount": ("offer_discount",), "% off": ("offer_discount",),
    "réduction": ("offer_discount",), "remise": ("offer_discount",),
    "rebook": ("rebook_shipment",), "expedit": ("rebook_shipment",),
    "retry": ("retry_payment",), "try again": ("retry_payment",),
    "nouvel essai": ("retry_payment",),
}  # fmt: skip
FUNCTION_WORDS: Mapping[str, frozenset[str]] = {
    "en": frozenset(
        [
            "the",
            "a",
            "an",
            "and",
            "or",
            "to",
            "of",
            "for",
            "is",
            "are",
            "we",
            "you",
            "your",
            "our",
            "it",
            "this",
            "that",
            "with",
            "on",
            "in",
            "be",
            "will",
            "sorry",
            "thank",
            "thanks",
            "please",
            "have",
            "has",
            "not",
        ]
    ),
    "fr": frozenset(
        [
            "le",
            "la",
            "les",
            "un",
            "une",
            "et",
            "ou",
            "de",
            "des",
            "du",
            "pour",
            "est",
            "sont",
            "nous",
            "vous",
            "votre",
            "vos",
            "notre",
            "ce",
            "cette",
            "avec",
            "sur",
            "dans",
            "être",
            "sera",
            "désolé",
            "désolés",
            "merci",
            "pas",
        ]
    ),
    "de": frozenset(
        [
            "der",
            "die",
            "das",
            "und",
            "oder",
            "zu",
            "für",
            "ist",
            "sind",
            "wir",
            "sie",
            "ihr",
            "ihre",
            "mit",
            "auf",
        ]
    ),
    "es": frozenset(
        [
            "el",
            "la",
            "los",
            "las",
            "y",
            "o",
            "de",
            "para",
            "es",
            "son",
            "nosotros",
            "usted",
            "su",
            "con",
            "en",
        ]
    ),
}
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


def _non_latin(text: str) -> bool:
    """Whether ``text`` has a letter outside the Latin script (emoji are not letters)."""
    return any(c.isalpha() and not (ord(c) <= 0x024F or 0x1E00 <= ord(c) <= 0x1EFF) for c in text)


def check(draft: Draft, slots: Slots, text: str) -> str | None:
    """Why the composed ``text`` (``slots`` added to ``draft``) may not go, or ``None``."""
    for name in SLOT_NAMES:
        problem = _check_slot(draft, name, getattr(slots, name))
        if problem is not None:
            return problem
    if draft.channel == "sms":
        return _check_sms(draft, text)
    if len(text) > len(draft.body) + EMAIL_GROWTH:
        return f"the email grew by more than {EMAIL_GROWTH} characters"
    return None


def _check_slot(draft: Draft, name: str, value: str) -> str | None:
    if not value:
        return None
    if len(value) > MAX_SLOT[draft.channel]:
        return f"{name}: longer than {MAX_SLOT[draft.channel]} characters"
    if draft.channel == "sms" and "\n" in value:
        return f"{name}: a line break in an SMS"
    if _URL.search(value) or _EMAIL.search(value):
        return f"{name}: a link or address not taken from the decision"
    if _CURRENCY.search(value):
        return f"{name}: an amount not taken from the decision"
    foreign = [n for n in _NUMBER.findall(value) if n not in _NUMBER.findall(draft.body)]
    if foreign:
        return f"{name}: the number {foreign[0]} is not in the decision"
    lowered = value.lower()
    for word, tools in PROMISES.items():
        if word in lowered and not draft.actions.intersection(tools):
            return f"{name}: promises '{word}', which the decision does not do"
    return _check_language(draft.locale, name, value)


def _check_language(locale: str, name: str, value: str) -> str | None:
    language = locale.replace("_", "-").split("-")[0].lower()
    if _non_latin(value) and language in FUNCTION_WORDS:
        return f"{name}: not written in the customer's language ({language})"
    words = [w.lower() for w in _WORD.findall(value)]
    if language not in FUNCTION_WORDS or len(words) < 3:
        return None
    scores = {lang: sum(w in known for w in words) for lang, known in FUNCTION_WORDS.items()}
    best = max(scores, key=lambda lang: scores[lang])
    if scores[best] > scores[language]:
        return f"{name}: written in {best}, not the customer's language ({language})"
    return None


def _check_sms(draft: Draft, text: str) -> str | None:
    before, after = count_segments(draft.body), count_segments(text)
    budget = draft.max_segments or before.segments
    if after.segments > budget:
        return f"the SMS would be {after.segments} segments (budget {budget})"
    if before.encoding == "GSM-7" and after.encoding != "GSM-7":
        return "the SMS would switch from GSM-7 to UCS-2"
    return None
