"""The mock's legacy OpenAI Completions (``POST /v1/completions``): text choices, streamed too."""

from __future__ import annotations

import json
import time
from typing import Any

from ledger.providers.mock.cache import PrefixCache
from ledger.providers.mock.reply import Request, answer, pieces, positive_int
from ledger.providers.mock.words import digest, seed_of
from ledger.tokens.openai_inputs import count_text_input

_MAX_CHOICES = 128
_DEFAULT_MAX_TOKENS = 16  # OpenAI's own default for this endpoint


def completion(request: dict[str, Any], cache: PrefixCache) -> tuple[dict[str, Any], list[bytes]]:
    """The completion as one JSON document, and the same completion as stream events."""
    del cache  # the legacy endpoint reports no cached tokens
    model = str(request.get("model"))
    prompt = request.get("prompt")
    text = prompt if isinstance(prompt, str) else ""
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        text = prompt[0]
    facts = Request(
        model=model,
        seed=seed_of(prompt),
        user_text=text,
        max_tokens=positive_int(request.get("max_tokens")) or _DEFAULT_MAX_TOKENS,
    )
    count = min(positive_int(request.get("n")) or 1, _MAX_CHOICES)
    answers = [answer(facts, i) for i in range(count)]
    prompt_tokens = count_text_input(model, prompt)
    completion_tokens = sum(a.tokens for a in answers)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    head = {
        "id": "cmpl-mock" + digest(prompt),
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
    }

    def choice(index: int, text: str, finish: str | None) -> dict[str, Any]:
        return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}

    finishes = ["length" if a.truncated else "stop" for a in answers]
    body = {
        **head,
        "choices": [choice(i, a.text, finishes[i]) for i, a in enumerate(answers)],
        "usage": usage,
    }
    events: list[dict[str, Any]] = []
    for index, reply in enumerate(answers):
        events += [{**head, "choices": [choice(index, p, None)]} for p in pieces(model, reply.text)]
        events.append({**head, "choices": [choice(index, "", finishes[index])]})
    options = request.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        events.append({**head, "choices": [], "usage": usage})
    raw = [f"data: {json.dumps(e)}\n\n".encode() for e in events]
    return body, [*raw, b"data: [DONE]\n\n"]
