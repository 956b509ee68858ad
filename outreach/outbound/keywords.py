"""SMS keywords (CTIA): what an inbound text asks for when it is one of the reserved words.

``classify(body)`` looks at the whole message, in any case, ignoring surrounding white space
and trailing punctuation (``"Stop."`` is STOP; ``"stop texting me"`` is not a keyword and is
left to reply understanding). Used by the inbound webhook (to suppress at once) and by the
core (to decide the reply), so both read a message the same way.

Must not import: faust, aiokafka, twilio, sendgrid, openai, fastapi, sqlalchemy.
"""

from __future__ import annotations

from typing import Literal

Keyword = Literal["stop", "start", "help", "yes", "no", "other"]

STOP_WORDS = frozenset(
    {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"}
)
START_WORDS = frozenset({"START", "UNSTOP"})
HELP_WORDS = frozenset({"HELP", "INFO"})
_WORDS: dict[str, Keyword] = {
    **dict.fromkeys(STOP_WORDS, "stop"),
    **dict.fromkeys(START_WORDS, "start"),
    **dict.fromkeys(HELP_WORDS, "help"),
    "YES": "yes",
    "NO": "no",
}
_TRAILING = ".!?,;:"


def classify(body: str) -> Keyword:
    """The keyword ``body`` is, or ``"other"``."""
    word = body.strip().rstrip(_TRAILING).strip().upper()
    return _WORDS.get(word, "other")
