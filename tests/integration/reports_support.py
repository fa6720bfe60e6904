"""Helpers for the report tests: a live server with a reporting zone, and entries written
through the real ``LedgerWriter`` straight into the server's database."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, TypeVar

import pytest

from ledger.config import Settings
from ledger.db.engine import create_engine
from ledger.db.ledger import LedgerEntry
from ledger.db.writer import LedgerWriter
from tests.live import ADMIN_KEY, LiveServer

T = TypeVar("T")
REPORTING_TIMEZONE = "Europe/Berlin"


@contextmanager
def report_server(
    database_url: str, monkeypatch: pytest.MonkeyPatch, **overrides: Any
) -> Iterator[LiveServer]:
    """Ledger on loopback with the reporting zone set and no scheduler (tests drive jobs)."""
    timezone = overrides.pop("reporting_timezone", REPORTING_TIMEZONE)
    # The report routes read app settings; until the app factory exposes them they fall
    # back to the environment, so the zone is set in both places.
    monkeypatch.setenv("LEDGER_REPORTING_TIMEZONE", timezone)
    settings = Settings(
        database_url=database_url,
        admin_key=ADMIN_KEY,
        reporting_timezone=timezone,
        scheduler=False,
        writer_process=False,  # as in gateway_settings (tests/live.py): no start-up wait
        **overrides,
    )
    with LiveServer(settings) as server:
        yield server


def run_with_engine(database_url: str, fn: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``fn(engine)`` in a fresh event loop with a pool-less engine of its own."""

    async def go() -> T:
        engine = create_engine(database_url, null_pool=True)
        try:
            return await fn(engine)
        finally:
            await engine.dispose()

    # Playwright's sync API keeps an event loop running in this thread: use another.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, go()).result()


def write_entries(database_url: str, entries: Iterable[LedgerEntry]) -> None:
    """Write entries through the ledger writer (and so into the rollups), concurrently."""
    batch = list(entries)

    async def go(engine: Any) -> None:
        writer = LedgerWriter(engine, max_batch=256)
        writer.start()
        try:
            await asyncio.gather(*(writer.record(entry) for entry in batch))
        finally:
            await writer.stop()

    run_with_engine(database_url, go)


def entry(
    started_at: datetime,
    *,
    team_id: int | None,
    key_id: int | None = None,
    model: str | None = "gpt-4.1-mini",
    provider: str | None = "openai",
    status: str = "ok",
    cost_nanos: int = 1_000,
    input_tokens: int = 100,
    cache_read_tokens: int = 0,
    cache_write_5m_tokens: int = 0,
    cache_write_1h_tokens: int = 0,
    output_tokens: int = 10,
    reasoning_tokens: int = 0,
    latency_ms: int = 250,
    user: str | None = None,
    tags: Iterable[str] = (),
    kind: str = "request",
) -> LedgerEntry:
    """One ledger entry as the gateway would record it."""
    return LedgerEntry(
        request_id=f"test-{uuid.uuid4().hex}",
        started_at=started_at,
        ended_at=started_at + timedelta(milliseconds=latency_ms),
        endpoint="/v1/chat/completions",
        kind=kind,
        team_id=team_id,
        key_id=key_id,
        end_user=user,
        tags=list(tags),
        requested_model=model,
        served_model=model,
        provider=provider,
        status=status,
        http_status=200 if status == "ok" else 500,
        input_tokens=input_tokens,
        cache_read_tokens=cache_read_tokens,
        cache_write_5m_tokens=cache_write_5m_tokens,
        cache_write_1h_tokens=cache_write_1h_tokens,
        output_tokens=output_tokens,
        reasoning_tokens=reasoning_tokens,
        usage_source="provider",
        cost_nanos=cost_nanos,
    )


def team_with_key(
    server: LiveServer, name: str, *, cost_centre: str | None = None, markup_percent: str = "0"
) -> tuple[int, int, str]:
    """Create a team and a key through the admin API: (team id, key id, key)."""
    response = server.admin.post(
        "/admin/teams",
        json={"name": name, "cost_centre": cost_centre, "markup_percent": markup_percent},
    )
    assert response.status_code == 201, response.text
    team_id = response.json()["id"]
    created = server.admin.post("/admin/keys", json={"team": name, "name": f"{name}-bot"})
    assert created.status_code == 201, created.text
    return team_id, created.json()["id"], created.json()["key"]
