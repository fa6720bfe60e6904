"""Prompt token estimates that never stall the event loop, however large the prompt.

Small prompts are counted inline: a thread hop would cost more than the count. Large ones (a
1M-token prompt takes a few hundred ms to tokenize) are counted in a thread of their own;
tiktoken releases the GIL while it encodes, so the event loop keeps running meanwhile. Those
threads run at a lower priority (nice 10, on Linux): a count takes a whole core for hundreds of
milliseconds, and at the event loop's priority it would share the loop's core equally whenever
the scheduler put them on the same one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import anyio
import anyio.to_thread
from anyio.lowlevel import RunVar

from ledger.tokens.anthropic_approx import measure_anthropic_prompt
from ledger.tokens.encodings import (
    O200K_BASE,
    encoding_name_for_model,
    get_encoding,
    is_loaded,
)
from ledger.tokens.openai_chat import measure_openai_chat_prompt
from ledger.tokens.openai_inputs import measure_text_input
from ledger.tokens.openai_responses import measure_openai_responses_prompt

# Bodies with at most this much text, in at most this many JSON values, are counted inline.
_INLINE_MAX_CHARS = 32 * 1024
_INLINE_MAX_VALUES = 4096
# A body of at most this many bytes is within both limits (a JSON value takes two bytes at
# least, with its separator), so its size alone says it can be counted inline.
_SMALL_BODY_BYTES = 2 * _INLINE_MAX_VALUES
# Counting threads at once per event loop: counting is CPU-bound, more threads than cores only
# adds memory (a 1M-token count briefly holds ~40 MB of token ids).
_MAX_CONCURRENT_COUNTS = 2
_COUNTING_NICE = 10


@dataclass
class _LoopState:
    limiter: anyio.CapacityLimiter
    loaded_encodings: set[str] = field(default_factory=set)


# Per event loop, not per process: an anyio CapacityLimiter is bound to the loop that uses it,
# and tests run each test in its own loop.
_loop_state: RunVar[_LoopState] = RunVar("ledger_tokens_loop_state")


class PromptEstimate(NamedTuple):
    """A prompt's estimated tokens, and what in it has no upper bound (None: nothing)."""

    tokens: int
    unbounded: str | None = None


async def estimate_prompt_tokens(
    protocol: str,
    model: str,
    body: dict[str, Any],
    *,
    limiter: anyio.CapacityLimiter | None = None,
    body_bytes: int | None = None,
) -> int:
    """The tokens of :func:`estimate_prompt`."""
    estimate = await estimate_prompt(protocol, model, body, limiter=limiter, body_bytes=body_bytes)
    return estimate.tokens


async def estimate_prompt(
    protocol: str,
    model: str,
    body: dict[str, Any],
    *,
    limiter: anyio.CapacityLimiter | None = None,
    body_bytes: int | None = None,
) -> PromptEstimate:
    """Estimate a request's prompt tokens without blocking the event loop.

    `protocol` is "openai" (Chat Completions body, counted as `count_openai_chat_prompt` does)
    or "anthropic" (Messages body, `approximate_anthropic_prompt`, which errs high). Bodies
    with more than about 32 KiB of text are counted in a worker thread; at most `limiter`'s
    tokens worth of counts run at once (by default 2 per event loop). `body_bytes`, the size of
    the body as it arrived, lets a small body be counted at once, without sizing it first.
    Inline PDFs and audio count at their upper bounds (`ledger.tokens.media`); `unbounded`
    names a part that has none (a file Ledger cannot read), which a hard budget refuses.
    `protocol` "embeddings" or "completions" (OpenAI's) counts the body's `input` or `prompt`.

    Raises:
        ValueError: `protocol` is neither "openai" nor "anthropic".
    """
    measure: Callable[[dict[str, Any]], tuple[int, str | None]]
    if protocol in ("embeddings", "completions"):
        measure = functools.partial(measure_text_input, model, protocol)
        encoding_name = encoding_name_for_model(model)
    elif protocol == "openai":
        measure = functools.partial(measure_openai_chat_prompt, model)
        encoding_name = encoding_name_for_model(model)
    elif protocol == "responses":  # an OpenAI Responses API body
        measure = functools.partial(measure_openai_responses_prompt, model)
        encoding_name = encoding_name_for_model(model)
    elif protocol == "anthropic":
        measure = measure_anthropic_prompt
        encoding_name = O200K_BASE
    else:
        raise ValueError(
            f"unknown protocol {protocol!r}: expected 'openai', 'responses' or 'anthropic'"
        )

    def count(body: dict[str, Any]) -> PromptEstimate:
        return PromptEstimate(*measure(body))

    if body_bytes is not None and body_bytes <= _SMALL_BODY_BYTES and is_loaded(encoding_name):
        return count(body)  # small enough by its size alone: no sizing walk, no loop state

    state = _state()
    limiter = limiter or state.limiter
    if encoding_name not in state.loaded_encodings:
        # The first load of an encoding in the process takes a few hundred ms: never inline.
        await anyio.to_thread.run_sync(get_encoding, encoding_name, limiter=limiter)
        state.loaded_encodings.add(encoding_name)
    if _fits_inline(body):
        return count(body)
    async with limiter:
        return await asyncio.get_running_loop().run_in_executor(_counting_threads(), count, body)


@functools.cache
def _counting_threads() -> ThreadPoolExecutor:
    """The process's threads for large counts (made on first use: a forked worker makes its own)."""
    return ThreadPoolExecutor(
        _MAX_CONCURRENT_COUNTS, thread_name_prefix="ledger-count", initializer=_step_aside
    )


def _step_aside() -> None:
    # Per thread on Linux (a thread is a task of its own there); a raised nice value cannot
    # be lowered again without privileges, hence threads of their own.
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _COUNTING_NICE)


def _state() -> _LoopState:
    try:
        return _loop_state.get()
    except LookupError:
        state = _LoopState(limiter=anyio.CapacityLimiter(_MAX_CONCURRENT_COUNTS))
        _loop_state.set(state)
        return state


def _fits_inline(body: Any) -> bool:
    """Whether `body` is small enough to count on the event loop.

    Walks at most `_INLINE_MAX_VALUES` values, so the check itself stays cheap on huge bodies.
    """
    chars_left = _INLINE_MAX_CHARS
    values_left = _INLINE_MAX_VALUES
    stack = [body]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            chars_left -= len(value)
            if chars_left < 0:
                return False
        elif isinstance(value, dict | list):
            values_left -= len(value)
            if values_left < 0:
                return False
            if isinstance(value, dict):
                stack.extend(value.keys())
                stack.extend(value.values())
            else:
                stack.extend(value)
    return True
