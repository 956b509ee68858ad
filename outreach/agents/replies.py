"""Reply understanding: what a free-text SMS reply means (accept, decline, question,
complaint, opt-out), by keywords here, by a model in ``adapters.openai_replies``.

Opt-out first: any opt-out language ("stop texting me", "unsubscribe", "leave me alone")
is an opt-out whatever else the text says and whatever a model thinks, so the customer is
suppressed first and questions are asked later. A reply understood with less than
``threshold`` confidence goes to a person (``human``).

CTIA keywords (``outreach.outbound.keywords``) are read the same way as the inbound webhook
reads them: STOP and its synonyms are opt-outs, YES accept, NO decline, HELP a question.

Must not import faust, aiokafka, twilio, sendgrid, openai, httpx, fastapi or sqlalchemy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from outreach.outbound.keywords import classify as keyword

Intent = Literal["accept", "decline", "question", "complaint", "opt_out", "human"]
INTENTS: tuple[str, ...] = ("accept", "decline", "question", "complaint", "opt_out")
DEFAULT_THRESHOLD = 0.7

OPT_OUT = (
    r"\bstop (texting|messaging|sending|contacting|calling|emailing)\b",
    r"\bunsubscribe\b", r"\bleave me alone\b", r"\bopt[- ]?out\b", r"\bremove me\b",
    r"\btake me off\b", r"\b(do not|don'?t|dont) (text|message|contact|email|call)\b",
    r"\bno more (texts|messages|sms|emails)\b", r"\bstop it\b", r"^\s*stop\b",
    r"\bd[ée]sabonn", r"\bd[ée]sinscri", r"\barr[êe]te[rz]? (de|les)\b", r"\bne plus recevoir\b",
)  # fmt: skip
PHRASES: Mapping[str, tuple[str, ...]] = {
    "accept": (
        r"^\s*(yes|yep|yeah|ok|okay|sure|oui|d'accord)\b", r"\bi accept\b", r"\bsounds good\b",
        r"\b(yes|ok) please\b", r"\bdeal\b", r"\bgo ahead\b", r"\bi'?ll take it\b",
    ),
    "decline": (
        r"^\s*(no|nope|non)\b", r"\bno thanks?\b", r"\bnot interested\b", r"\bno thank you\b",
        r"\bnon merci\b", r"\bpas int[ée]ress[ée]\b", r"\bi'?ll pass\b",
    ),
    "complaint": (
        r"\b(terrible|awful|horrible|ridiculous|unacceptable|worst|disgusting|scam)\b",
        r"\b(angry|furious|disappointed|fed up)\b", r"\bcomplain", r"\binadmissible\b",
        r"\bnul(le)?\b", r"\bhonteux\b",
    ),
    "question": (
        r"\?", r"^\s*(what|when|where|why|how|who|which|can|could|is|are|do|does|will)\b",
        r"^\s*(quand|pourquoi|comment|est-ce)\b",
    ),
}  # fmt: skip
_COMPILED = {k: [re.compile(p, re.IGNORECASE) for p in v] for k, v in PHRASES.items()}
_OPT_OUT = [re.compile(p, re.IGNORECASE) for p in OPT_OUT]


@dataclass(frozen=True)
class Understanding:
    """What a reply means, how sure, who said so (``keywords`` or ``model``) and why.

    ``intent`` is ``human`` when no intent is sure enough (``confidence`` then says how sure
    the best guess, ``guess``, was)."""

    intent: Intent
    confidence: float
    source: Literal["keywords", "model"]
    reason: str
    guess: str | None = None
    fallback: str | None = None  # why the model's answer was not used
    llm: list[dict[str, Any]] = field(default_factory=list)


class ReplyReader(Protocol):
    """Understands a free-text reply."""

    def understand(self, body: str) -> Understanding:
        """The intent of ``body``."""
        ...


def opts_out(body: str) -> bool:
    """Whether ``body`` contains opt-out language or is a STOP keyword."""
    return keyword(body) == "stop" or any(p.search(body) for p in _OPT_OUT)


def decide(
    guess: str, confidence: float, source: Literal["keywords", "model"], reason: str,
    threshold: float = DEFAULT_THRESHOLD,
) -> Understanding:  # fmt: skip
    """An ``Understanding`` from a guess: below ``threshold`` it goes to a person."""
    if guess in INTENTS and confidence >= threshold:
        return Understanding(guess, confidence, source, reason, guess)  # type: ignore[arg-type]
    why = f"{reason}; not sure enough ({confidence:.2f} < {threshold:.2f}): a person reads it"
    return Understanding("human", confidence, source, why, guess)


def understand_by_keywords(body: str, threshold: float = DEFAULT_THRESHOLD) -> Understanding:
    """The keyword reading of a reply (the default, and the fallback of a model)."""
    if opts_out(body):
        return Understanding("opt_out", 1.0, "keywords", "opt-out language", "opt_out")
    word = keyword(body)
    exact = {"yes": "accept", "no": "decline", "help": "question"}.get(word)
    if exact is not None:
        return decide(exact, 1.0, "keywords", f"the keyword {word.upper()}", threshold)
    hits = [
        intent for intent, patterns in _COMPILED.items() if any(p.search(body) for p in patterns)
    ]
    if not hits:
        return decide("question", 0.0, "keywords", "no known phrase", threshold)
    if len(hits) == 1:
        confidence = 0.7 if hits[0] == "question" else 0.8
        return decide(hits[0], confidence, "keywords", f"{hits[0]} phrase", threshold)
    if "complaint" in hits:  # an angry question or refusal is a complaint first
        return decide("complaint", 0.75, "keywords", f"phrases of {', '.join(hits)}", threshold)
    return decide(hits[0], 0.4, "keywords", f"phrases of {', '.join(hits)}", threshold)


class KeywordReplies:
    """The default ``ReplyReader``: keywords and phrases, no model."""

    def __init__(self, threshold: float = DEFAULT_THRESHOLD) -> None:
        self.threshold = threshold

    def understand(self, body: str) -> Understanding:
        """The keyword reading of ``body``."""
        return understand_by_keywords(body, self.threshold)
