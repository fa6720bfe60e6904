"""Helpers shared by the fault tests: SDK clients under load, figures, the database itself.

Every fault scenario ends with the same question: of the requests sent, how many ended
as exactly one ledger entry, and did any budget reservation outlive them? Each scenario
adds one :class:`Figures` row to :data:`FIGURES`; ``tests/integration/conftest.py``
prints them as a table at the end of the run.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import openai
from sqlalchemy import func, select

from ledger.db.engine import create_engine
from ledger.db.tables import BudgetPeriod, BudgetReservation, LedgerEntryRow

OPENAI, ANTHROPIC = "openai", "anthropic"
MODELS = {OPENAI: "gpt-4.1-mini", ANTHROPIC: "claude-sonnet-4-5"}
ENDPOINTS = {"chat.completions": OPENAI, "messages": ANTHROPIC}
ZERO_USD = "0.000000000"
# The catalog prices of MODELS, USD per million (input, output) tokens.
PRICES = {
    OPENAI: (Decimal("0.40"), Decimal("1.60")),
    ANTHROPIC: (Decimal("3.00"), Decimal("15.00")),
}


# -- figures --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figures:
    """One scenario's accounting: everything but ``sent`` and ``recorded`` must be 0."""

    scenario: str
    backend: str
    sent: int
    recorded: int
    lost: int
    duplicated: int
    reservations_left: int
    mixed: int = 0  # answers (or usage) that reached, or were billed to, the wrong client


FIGURES: list[Figures] = []


def tally(
    scenario: str,
    backend: str,
    sent: int,
    entry_ids: Iterable[str],
    seen_ids: Iterable[str | None],
    reservations_left: int,
    mixed: int = 0,
) -> Figures:
    """Count lost and duplicated entries; keep the row for the summary table.

    ``seen_ids`` are the request ids the clients saw (None where a client never got the
    response headers): every one of them must have an entry.
    """
    ids = list(entry_ids)
    unique = set(ids)
    missing_seen = {i for i in seen_ids if i is not None} - unique
    lost = max(0, sent - len(unique)) + len(missing_seen)
    duplicated = (len(ids) - len(unique)) + max(0, len(unique) - sent)
    figures = Figures(scenario, backend, sent, len(ids), lost, duplicated, reservations_left, mixed)
    FIGURES.append(figures)
    return figures


def backend_of(database_url: str) -> str:
    return "postgres" if database_url.startswith("postgresql") else "sqlite"


# -- clients ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """A kind of request: its protocol, streamed or not."""

    protocol: str
    stream: bool

    def __str__(self) -> str:
        return f"{self.protocol}{'-stream' if self.stream else ''}"


ALL = (Kind(OPENAI, False), Kind(OPENAI, True), Kind(ANTHROPIC, False), Kind(ANTHROPIC, True))
STREAMS = (Kind(OPENAI, True), Kind(ANTHROPIC, True))
PLAIN = (Kind(OPENAI, False), Kind(ANTHROPIC, False))


def kind_of(entry: dict[str, Any]) -> Kind:
    return Kind(ENDPOINTS[entry["endpoint"]], entry["stream"])


@dataclass
class Outcome:
    """What one client saw: ``answer`` is ok, status, stream_error, decode_error, closed,
    aborted, or unexpected (with the error)."""

    kind: Kind
    answer: str = "unexpected"
    request_id: str | None = None
    http: int | None = None
    error: BaseException | None = None
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    events: int = 0
    finished: bool = False

    def __str__(self) -> str:
        return f"{self.kind} {self.answer} http={self.http} {self.error!r}"[:400]


class Clients:
    """One async client per official SDK, sharing a key and a run tag; never retrying."""

    def __init__(self, base_url: str, key: str, tag: str | None = None) -> None:
        headers = {"x-ledger-tags": tag} if tag else {}
        self.openai = openai.AsyncOpenAI(
            base_url=base_url + "/v1", api_key=key, max_retries=0, timeout=60,
            default_headers=headers,
        )  # fmt: skip
        self.anthropic = anthropic.AsyncAnthropic(
            base_url=base_url, api_key=key, max_retries=0, timeout=60, default_headers=headers
        )

    async def close(self) -> None:
        await self.openai.close()
        await self.anthropic.close()

    async def send(
        self,
        kind: Kind,
        text: str,
        *,
        model: str | None = None,
        mode: str = "read",
        close_after: int = 5,
        pause_s: float = 0.05,
        on_first_event: Callable[[], None] | None = None,
    ) -> Outcome:
        """One request; never raises. ``mode``: read (all), close_early, or slow (pauses)."""
        outcome = Outcome(kind)
        model = model or MODELS[kind.protocol]
        messages: Any = [{"role": "user", "content": text}]
        reader = _Reader(mode, close_after, pause_s, on_first_event)
        try:
            if kind.protocol == OPENAI and kind.stream:
                stream = await self.openai.chat.completions.create(
                    model=model, messages=messages, stream=True
                )
                await reader.consume(stream, outcome, _openai_finished)
            elif kind.protocol == OPENAI:
                raw = await self.openai.chat.completions.with_raw_response.create(
                    model=model, messages=messages
                )
                _answered(outcome, raw.http_response, bool(raw.parse().choices))
            elif kind.stream:
                stream = await self.anthropic.messages.create(
                    model=model, max_tokens=100, messages=messages, stream=True
                )
                await reader.consume(stream, outcome, _anthropic_finished)
            else:
                raw = await self.anthropic.messages.with_raw_response.create(
                    model=model, max_tokens=100, messages=messages
                )
                _answered(outcome, raw.http_response, bool((await raw.parse()).content))
        except _STATUS_ERRORS as error:
            outcome.answer, outcome.error, outcome.http = "status", error, error.status_code
            outcome.headers = dict(error.response.headers)
            outcome.request_id = outcome.headers.get("x-ledger-request-id")
            outcome.body = error.body
        except Exception as error:  # anything else is a failure the checks will show
            outcome.answer, outcome.error = "unexpected", error
        return outcome


_STATUS_ERRORS = (openai.APIStatusError, anthropic.APIStatusError)
_CONNECTION_ERRORS = (openai.APIConnectionError, anthropic.APIConnectionError)
_API_ERRORS = (openai.APIError, anthropic.APIError)


def _answered(outcome: Outcome, response: Any, complete: bool) -> None:
    outcome.http = response.status_code
    outcome.headers = dict(response.headers)
    outcome.request_id = outcome.headers.get("x-ledger-request-id")
    outcome.answer = "ok" if complete else "incomplete"


def _openai_finished(event: Any) -> bool:
    return bool(event.choices) and event.choices[0].finish_reason is not None


def _anthropic_finished(event: Any) -> bool:
    return event.type == "message_stop"


@dataclass
class _Reader:
    mode: str
    close_after: int
    pause_s: float
    on_first_event: Callable[[], None] | None

    async def consume(self, stream: Any, outcome: Outcome, finished: Callable[[Any], bool]) -> None:
        _answered(outcome, stream.response, False)
        outcome.answer = "unexpected"
        try:
            async for event in stream:
                outcome.events += 1
                if outcome.events == 1 and self.on_first_event is not None:
                    self.on_first_event()
                outcome.finished = outcome.finished or finished(event)
                if self.mode == "close_early" and outcome.events >= self.close_after:
                    outcome.answer = "closed"
                    return
                if self.mode == "slow":
                    await asyncio.sleep(self.pause_s)
            outcome.answer = "ok" if outcome.finished else "truncated"
        except json.JSONDecodeError as error:
            outcome.answer, outcome.error = "decode_error", error
        except _STATUS_ERRORS as error:  # Anthropic's error event
            outcome.answer, outcome.error, outcome.body = "stream_error", error, error.body
        except _CONNECTION_ERRORS as error:
            outcome.answer, outcome.error = "unexpected", error
        except _API_ERRORS as error:  # OpenAI's error chunk
            outcome.answer, outcome.error, outcome.body = "stream_error", error, error.body
        except Exception as error:  # the connection broke under the SDK
            outcome.answer, outcome.error = "unexpected", error
        finally:
            await stream.close()


@dataclass(frozen=True)
class Delivered:
    """A response the client read to its very end, and the usage it reported on the way."""

    request_id: str
    input_tokens: int
    output_tokens: int
    complete: bool  # the stream's last event ([DONE], message_stop) arrived, or the JSON did

    def cost(self, kind: Kind) -> Decimal:
        """What the provider billed for it (no caching), at the catalog price."""
        per_input, per_output = PRICES[kind.protocol]
        return (self.input_tokens * per_input + self.output_tokens * per_output) / 1_000_000


def read_whole(http: httpx.Client, kind: Kind, text: str, *, max_tokens: int = 100) -> Delivered:
    """Send one request with raw httpx and read its body to the end, as an HTTP client does.

    ``http`` carries the key (``Authorization: Bearer``). An OpenAI stream asks for its
    usage chunk, so the client sees the provider's counts the ledger should hold.
    """
    messages = [{"role": "user", "content": text}]
    body: dict[str, Any] = {"model": MODELS[kind.protocol], "messages": messages}
    if kind.protocol == OPENAI:
        path = "/v1/chat/completions"
        if kind.stream:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
    else:
        path = "/v1/messages"
        body |= {"max_tokens": max_tokens, "stream": kind.stream}
    if not kind.stream:
        response = http.post(path, json=body)
        assert response.status_code == 200, response.text
        usage = response.json()["usage"]
        input_key, output_key = (
            ("prompt_tokens", "completion_tokens") if kind.protocol == OPENAI
            else ("input_tokens", "output_tokens")
        )  # fmt: skip
        return Delivered(
            response.headers["x-ledger-request-id"], usage[input_key], usage[output_key], True
        )
    input_tokens = output_tokens = 0
    complete = False
    with http.stream("POST", path, json=body) as response:
        assert response.status_code == 200, response.read()
        request_id = response.headers["x-ledger-request-id"]
        for line in response.iter_lines():  # to the body's end, not only to the last event
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                complete = True
                continue
            event = json.loads(data)
            if kind.protocol == OPENAI:
                if event.get("usage"):
                    input_tokens = event["usage"]["prompt_tokens"]
                    output_tokens = event["usage"]["completion_tokens"]
            elif event["type"] == "message_start":
                input_tokens = event["message"]["usage"]["input_tokens"]
            elif event["type"] == "message_delta":
                output_tokens = event["usage"]["output_tokens"]
            elif event["type"] == "message_stop":
                complete = True
    return Delivered(request_id, input_tokens, output_tokens, complete)


# -- the database, read directly -------------------------------------------------------


async def _scalar(database_url: str, query: Any) -> int:
    engine = create_engine(database_url, null_pool=True)
    try:
        async with engine.connect() as connection:
            return int(await connection.scalar(query) or 0)
    finally:
        await engine.dispose()


def reservations_left(database_url: str, budget_ids: Collection[int] | None = None) -> int:
    """Rows in ``budget_reservations`` (for ``budget_ids``, or all of them)."""
    query = select(func.count()).select_from(BudgetReservation)
    if budget_ids is not None:
        query = query.where(BudgetReservation.budget_id.in_(list(budget_ids)))
    return asyncio.run(_scalar(database_url, query))


def reserved_nanos(database_url: str) -> int:
    """What every budget period still holds as reserved, in nano-USD."""
    query = select(func.coalesce(func.sum(BudgetPeriod.reserved_nanos), 0))
    return asyncio.run(_scalar(database_url, query))


async def _rows(database_url: str) -> list[dict[str, Any]]:
    engine = create_engine(database_url, null_pool=True)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(select(LedgerEntryRow.__table__))
            return [dict(row) for row in rows.mappings()]
    finally:
        await engine.dispose()


def ledger_rows(database_url: str) -> list[dict[str, Any]]:
    """Every row of ``ledger_entries``, read without going through Ledger."""
    return asyncio.run(_rows(database_url))
