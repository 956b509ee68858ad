"""Reading a free-text SMS reply when it arrives, so the event carries what it means.

The inbound webhook asks a ``ReplyReader`` (the model's when an LLM is configured and used for
replies, ``OUTREACH_LLM_USES``; keywords otherwise) what a reply that is no keyword means, and
puts the reading in the ``message.received`` event. The core acts on that reading, and a
replay of the same events acts on the same one, model or not.

Twilio waits 15 s for the webhook's answer, so the reading gets ``READ_LIMIT`` seconds in all
(the model's own timeout and retries are shortened to fit); past that, or on any error, the
keyword reading goes instead, with the reason in ``fallback``. Opt-out language never waits
for a model: ``OpenAIReplies`` reads it by keywords first.

Must not import: faust, the decision core.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
from dataclasses import replace
from typing import Any

from outreach.agents.replies import KeywordReplies, ReplyReader, understand_by_keywords
from outreach.store import Store

log = logging.getLogger(__name__)
READ_LIMIT = 8.0  # seconds for the whole reading, model retries included
MODEL_TIMEOUT = 3.5  # seconds per model request attempt when reading replies
MODEL_RETRIES = 1


def reply_reader(store: Store | None = None) -> ReplyReader:
    """The model's reader when an LLM is configured and used for replies, else keywords.
    With ``store``, its token budget is shared with every process on the store (the
    exchange's thread ends, after a last exchange, when the process exits)."""
    from outreach.agents.adapters.llm import LLMGateway, LLMSettings
    from outreach.agents.adapters.openai_replies import OpenAIReplies
    from outreach.store.tokens import SharedTokens

    settings = LLMSettings()
    if not settings.used_for("replies"):
        return KeywordReplies()
    bounded = settings.model_copy(
        update={
            "timeout": min(settings.timeout, MODEL_TIMEOUT),
            "max_retries": min(settings.max_retries, MODEL_RETRIES),
        }
    )
    log.info("api: replies read by %s at %s (keywords first for opt-outs; keyword fallback)",
             settings.model, settings.base_url or "api.openai.com")  # fmt: skip
    tokens = None
    if store is not None:
        tokens = SharedTokens(store).start()
        atexit.register(tokens.close)
    return OpenAIReplies(LLMGateway(bounded, usage=tokens))


async def read_reply(reader: ReplyReader, body: str, limit: float = READ_LIMIT) -> dict[str, Any]:
    """The reading of ``body`` as the ``understanding`` of a ``message.received`` event."""
    try:
        found = await asyncio.wait_for(asyncio.to_thread(reader.understand, body), limit)
    except TimeoutError:
        log.warning("api: reply reading took over %.1f s; keywords read it", limit)
        found = replace(understand_by_keywords(body), fallback="timeout")
    except Exception:  # a reader's bug must not lose the reply: keywords read it
        log.exception("api: reply reading failed; keywords read it")
        found = replace(understand_by_keywords(body), fallback="error")
    for call in found.llm:  # the audit of the model calls (hashes; text only if configured)
        log.info("api: reply reading LLM call %s", json.dumps(call, sort_keys=True))
    reading: dict[str, Any] = {
        "intent": found.intent,
        "confidence": round(min(max(found.confidence, 0.0), 1.0), 4),
        "source": found.source,
        "reason": found.reason[:512],
    }
    if found.fallback:
        reading["fallback"] = found.fallback[:256]
    return reading
