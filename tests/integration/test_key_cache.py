"""The client-key cache under load: one lookup per key, and revocations still honoured.

When a cached key expired under load, every request in flight looked it up at once: a
burst of identical queries that stalled all of them (100-200 ms every two seconds at 20
connections). Now a missing key is looked up once however many requests present it,
and a key in steady use is renewed in the background before it expires.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import openai
import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import Engine

from ledger.db.engine import create_engine
from tests.fake_upstream import FakeUpstream
from tests.live import LiveServer, gateway_settings

MODEL = "gpt-4.1-mini"
TTL_S = 0.6


class KeyLookups:
    """Counts the key-store queries every engine in this process runs."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "FROM api_keys" in statement and "key_hash" in statement:
            with self._lock:
                self.count += 1


@pytest.fixture
def key_lookups() -> Iterator[KeyLookups]:
    lookups = KeyLookups()
    event.listen(Engine, "before_cursor_execute", lookups)
    try:
        yield lookups
    finally:
        event.remove(Engine, "before_cursor_execute", lookups)


@pytest.fixture
def server(database_url: str, fake_upstream: FakeUpstream) -> Iterator[LiveServer]:
    settings = gateway_settings(database_url, fake_upstream, key_cache_ttl_s=TTL_S)
    with LiveServer(settings) as live:
        yield live


async def _ask_many(server: LiveServer, key: str, count: int) -> list[str]:
    client = openai.AsyncOpenAI(base_url=server.openai_base_url, api_key=key, max_retries=0)
    try:

        async def ask(index: int) -> str:
            try:
                await client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": f"burst {index}"}]
                )
                return "ok"
            except openai.APIStatusError as exc:
                return str(exc.status_code)

        return await asyncio.gather(*(ask(i) for i in range(count)))
    finally:
        await client.close()


def test_an_expired_key_is_looked_up_once_for_a_burst_of_requests(
    server: LiveServer, key_lookups: KeyLookups
) -> None:
    key = server.team_key()
    assert asyncio.run(_ask_many(server, key, 1)) == ["ok"]
    time.sleep(TTL_S + 0.2)  # the cached key has expired

    before = key_lookups.count
    outcomes = asyncio.run(_ask_many(server, key, 30))
    assert outcomes == ["ok"] * 30
    # One lookup for the burst (a background renewal may add one more), not one each.
    assert key_lookups.count - before <= 2


def test_a_burst_with_an_unknown_key_is_refused_with_one_lookup(
    server: LiveServer, key_lookups: KeyLookups
) -> None:
    server.team_key()
    before = key_lookups.count
    outcomes = asyncio.run(_ask_many(server, "sk-ledger-not-a-real-key-000000000000", 20))
    assert outcomes == ["401"] * 20
    assert key_lookups.count - before == 1


def test_a_client_stuck_on_a_wrong_key_costs_one_lookup_not_one_per_request(
    server: LiveServer, key_lookups: KeyLookups
) -> None:
    server.team_key()
    before = key_lookups.count
    for _ in range(5):  # one after another: no lookup in flight to share
        outcome = asyncio.run(_ask_many(server, "sk-ledger-a-typo-in-the-config-0000000", 1))
        assert outcome == ["401"]
    assert key_lookups.count - before == 1


def test_a_key_revoked_by_another_process_stops_working_within_the_cache_lifetime(
    server: LiveServer, database_url: str
) -> None:
    key = server.team_key()
    client = openai.OpenAI(base_url=server.openai_base_url, api_key=key, max_retries=0)

    def ask() -> int:
        try:
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "steady use"}]
            )
            return 200
        except openai.APIStatusError as exc:
            return exc.status_code

    # Steady use: the key is renewed in the background and stays cached throughout.
    deadline = time.monotonic() + 3 * TTL_S
    while time.monotonic() < deadline:
        assert ask() == 200

    # Revoked straight in the database, as another Ledger process would revoke it.
    async def revoke() -> None:
        engine = create_engine(database_url, null_pool=True)
        try:
            async with engine.begin() as connection:
                await connection.execute(
                    text("UPDATE api_keys SET revoked_at = :now"), {"now": datetime.now(UTC)}
                )
        finally:
            await engine.dispose()

    asyncio.run(revoke())
    revoked_at = time.monotonic()
    statuses = []
    while time.monotonic() - revoked_at < TTL_S + 0.5:
        statuses.append(ask())
        time.sleep(0.05)
    refused_from = statuses.index(401)
    # Refused from then on (429 once the failed-key throttle counts the repeated tries).
    assert set(statuses[refused_from:]) <= {401, 429}, str(statuses)
    client.close()
