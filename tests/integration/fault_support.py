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
from typing import Any

import anthropic
import openai
from sqlalchemy import func, select

from ledger.db.engine import create_engine
from ledger.db.tables import BudgetPeriod, BudgetReservation, LedgerEntryRow

OPENAI, ANTHROPIC = "openai", "anthropic"
MODELS = {OPENAI: "gpt-4.1-mini", ANTHROPIC: "claude-sonnet-4-5"}
ENDPOINTS = {"chat.completions": OPENAI, "messages": ANTHROPIC}
ZERO_USD = "0.000000000"


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
