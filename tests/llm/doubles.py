"""A local OpenAI-compatible chat completions server that plays scripts.

A real HTTP server on 127.0.0.1 in a thread (the ``HttpDouble`` of tests/outbound/doubles.py),
so the real openai SDK talks to it over the network with ``base_url``. It serves
``POST /v1/chat/completions``: each request is recorded (``requests``, JSON body in
``.json``) and answered with the next scripted answer:

- ``calls(("grant_credit", {...}), ...)``: tool calls (arguments given as a dict are JSON
  encoded; a string is sent as is, so a malformed argument text can be scripted);
- ``text("...")``: a plain answer; ``empty()``: no content and no call; ``refusal("...")``;
- ``failure(500)``: an HTTP error (with ``retry-after-ms`` so the SDK's retries are quick);
- ``stall(seconds)``: answer only after ``seconds`` (longer than the client's timeout).

Every completion carries ``usage`` token counts (``tokens=(prompt, completion)``). With the
script empty it answers 500 ``the script is empty``, so a test that asks more than it
scripted fails loudly.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from outbound.doubles import Answer, HttpDouble, Recorded

_ids = itertools.count(1)
Tokens = tuple[int, int]


def completion(message: dict[str, Any], finish: str, tokens: Tokens = (120, 30)) -> Answer:
    """A 200 chat completion with one choice holding ``message``."""
    prompt, answer = tokens
    return Answer(
        200,
        {
            "id": f"chatcmpl-{next(_ids)}",
            "object": "chat.completion",
            "created": 1_770_000_000,
            "model": "scripted",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": finish,
                    "logprobs": None,
                    "message": {"role": "assistant", "refusal": None, **message},
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": answer,
                "total_tokens": prompt + answer,
            },
        },
    )


def calls(*proposed: tuple[str, dict[str, Any] | str], tokens: Tokens = (120, 30)) -> Answer:
    """Tool calls: (name, arguments as a dict, or as raw text)."""
    tool_calls = [
        {
            "id": f"call_{next(_ids)}",
            "type": "function",
            "function": {
                "name": name,
                "arguments": args if isinstance(args, str) else json.dumps(args),
            },
        }
        for name, args in proposed
    ]
    return completion({"content": None, "tool_calls": tool_calls}, "tool_calls", tokens)


def text(content: str, tokens: Tokens = (120, 30)) -> Answer:
    """A plain text (or JSON text) answer."""
    return completion({"content": content}, "stop", tokens)


def structured(value: Any, tokens: Tokens = (120, 30)) -> Answer:
    """A structured-output answer: ``value`` as JSON text."""
    return text(json.dumps(value), tokens)


def empty(tokens: Tokens = (120, 0)) -> Answer:
    """No content and no call."""
    return completion({"content": None}, "stop", tokens)


def refusal(why: str, tokens: Tokens = (120, 10)) -> Answer:
    """A refusal."""
    return completion({"content": None, "refusal": why}, "stop", tokens)


def failure(code: int = 500) -> Answer:
    """An HTTP error in OpenAI's error shape; the SDK retries 5xx after ``retry-after-ms``."""
    error = {"message": f"scripted HTTP {code}", "type": "server_error", "code": None}
    return Answer(code, {"error": error}, {"retry-after-ms": "10"})


def stall(seconds: float) -> Answer:
    """Answer (a valid no-action text) only after ``seconds``."""
    late = text('{"actions": "none", "why": "late"}')
    return Answer(late.status, late.body, delay=seconds)


class OpenAIDouble(HttpDouble):
    """Chat completions for one API key, answered from the script."""

    def __init__(self, api_key: str = "sk-test", port: int = 0) -> None:
        super().__init__(port)
        self.api_key = api_key

    @property
    def base_url(self) -> str:
        """What ``OPENAI_BASE_URL`` should be: ``http://127.0.0.1:<port>/v1``."""
        return f"{self.url}/v1"

    def completions(self) -> list[Recorded]:
        """The chat completion requests received (answered or not)."""
        return [r for r in self.requests if r.path == "/v1/chat/completions"]

    def authorized(self, request: Recorded) -> bool:
        """``Authorization: Bearer <key>``."""
        return request.header("Authorization") == f"Bearer {self.api_key}"

    def unauthorized(self) -> Answer:
        """OpenAI's 401."""
        return Answer(401, {"error": {"message": "Incorrect API key", "type": "invalid_request"}})

    def handle(self, request: Recorded) -> Answer:
        """Nothing scripted: a loud 500."""
        return Answer(500, {"error": {"message": "the script is empty", "type": "test"}})


class FakeClock:
    """A wall clock that moves only when told (``advance``); starts 2026-03-09T14:00:00Z."""

    def __init__(self, start: float = 1_773_064_800.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.now += seconds
