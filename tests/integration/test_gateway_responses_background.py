"""``background: true`` responses: one entry, written when the response finishes.

The fake provider's background responses are ``queued`` when created and ``completed``
``background_ms`` later (see ``tests.fake_responses``). Ledger records nothing at
creation; the client's retrieve or cancel, or Ledger's poller, records the one entry
with the final usage, under the request id the creation answered with.
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import openai

from tests.fake_upstream import FakeUpstream
from tests.live import LiveServer, gateway_settings

MODEL = "gpt-4.1-mini"
# gpt-4.1-mini: $0.40 input, $0.10 cached input, $1.60 output per million tokens.
INPUT, CACHED, OUTPUT = Decimal("0.40"), Decimal("0.10"), Decimal("1.60")


def _cost(usage: Any, cached: int = 0) -> Decimal:
    uncached = usage.input_tokens - cached
    return (uncached * INPUT + cached * CACHED + usage.output_tokens * OUTPUT) / Decimal(10**6)


def _client(gateway: LiveServer, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=gateway.openai_base_url, api_key=key or gateway.team_key(), max_retries=0
    )


def _responses_entries(gateway: LiveServer) -> list[dict[str, Any]]:
    return [e for e in gateway.entries() if e["endpoint"] == "responses"]


def _polling(database_url: str, fake: FakeUpstream) -> LiveServer:
    """Ledger with its scheduler on and background responses polled every second."""
    settings = gateway_settings(database_url, fake, scheduler=True, background_poll_interval_s=1.0)
    return LiveServer(settings)


def _created(client: openai.OpenAI, text: str) -> tuple[str, str]:
    raw = client.responses.with_raw_response.create(model=MODEL, input=text, background=True)
    response = raw.parse()
    assert response.status == "queued"
    return response.id, raw.headers["x-ledger-request-id"]


def test_a_background_response_retrieved_when_finished_is_recorded_once_at_its_final_cost(
    gateway: LiveServer,
) -> None:
    client = _client(gateway)
    response_id, request_id = _created(client, "background_ms=200 cached=2 Hello later")
    assert _responses_entries(gateway) == []  # nothing is final yet: no entry at all

    time.sleep(0.3)
    finished = client.responses.retrieve(response_id)
    assert finished.status == "completed"
    assert finished.output_text == "Echo: background_ms=200 cached=2 Hello later"

    entry = gateway.entry(request_id)
    assert entry["status"] == "ok"
    assert entry["usage_source"] == "provider"
    assert finished.usage is not None
    assert entry["usage"]["output_tokens"] == finished.usage.output_tokens > 0
    assert entry["usage"]["cache_read_tokens"] == 2
    assert Decimal(entry["cost_usd"]) == _cost(finished.usage, cached=2)
    client.responses.retrieve(response_id)  # fetched again: nothing more to record
    assert [e["request_id"] for e in _responses_entries(gateway)] == [request_id]
    retrieves = [e for e in gateway.entries() if e["endpoint"] == "responses.retrieve"]
    assert len(retrieves) == 2 and all(Decimal(e["cost_usd"]) == 0 for e in retrieves)


def test_a_background_response_never_fetched_is_recorded_by_the_poller(
    database_url: str, fake_upstream: FakeUpstream
) -> None:
    with _polling(database_url, fake_upstream) as server:
        client = _client(server)
        response_id, request_id = _created(client, "background_ms=100 Nobody asks")
        entry = server.entry(request_id, timeout=15)
        # What the provider itself says, asked directly (not through Ledger).
        provider = openai.OpenAI(
            base_url=fake_upstream.openai_base_url, api_key=fake_upstream.api_key
        )
        final = provider.responses.retrieve(response_id)
        assert final.status == "completed" and final.usage is not None
        assert entry["status"] == "ok" and entry["usage_source"] == "provider"
        assert entry["usage"]["output_tokens"] == final.usage.output_tokens
        assert Decimal(entry["cost_usd"]) == _cost(final.usage)
        time.sleep(2.5)  # two more ticks of the poller
        assert [e["request_id"] for e in _responses_entries(server)] == [request_id]


def test_two_ledger_processes_polling_and_a_retrieving_client_record_it_once(
    database_url: str, fake_upstream: FakeUpstream
) -> None:
    with (
        _polling(database_url, fake_upstream) as first,
        _polling(database_url, fake_upstream) as second,
    ):
        key = first.team_key()
        response_id, request_id = _created(_client(first, key), "background_ms=900 Twice?")
        other = _client(second, key)
        deadline = time.monotonic() + 15
        while other.responses.retrieve(response_id).status != "completed":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # Both pollers run their ticks meanwhile; whoever claims first records it.
        time.sleep(2.5)
        entries = _responses_entries(first)
        assert [e["request_id"] for e in entries] == [request_id]
        assert entries[0]["status"] == "ok" and entries[0]["usage_source"] == "provider"


def test_a_cancelled_background_response_is_settled_at_what_the_provider_reports(
    gateway: LiveServer,
) -> None:
    client = _client(gateway)
    response_id, request_id = _created(client, "background_ms=60000 Never mind")
    cancelled = client.responses.cancel(response_id)
    assert cancelled.status == "cancelled"
    assert cancelled.usage is not None and cancelled.usage.output_tokens == 0

    entry = gateway.entry(request_id)
    assert entry["status"] == "ok"
    assert entry["usage"]["output_tokens"] == 0
    assert Decimal(entry["cost_usd"]) == _cost(cancelled.usage) > 0
    assert "Cancelled" in entry["error"]
    assert len(_responses_entries(gateway)) == 1


def test_under_a_hard_budget_a_background_response_holds_its_reservation_until_it_settles(
    gateway: LiveServer,
) -> None:
    key = gateway.team_key()
    budget = gateway.admin.post(
        "/admin/budgets", json={"team": "research", "limit_usd": "5", "name": "cap"}
    ).json()
    client = _client(gateway, key)
    response_id, request_id = _created(client, "background_ms=400 Under a budget")

    status = gateway.admin.get(f"/admin/budgets/{budget['id']}/status").json()
    assert Decimal(status["reserved_usd"]) > 0  # the worst case, held while it runs
    assert Decimal(status["spent_usd"]) == 0

    time.sleep(0.5)
    finished = client.responses.retrieve(response_id)
    assert finished.usage is not None
    entry = gateway.entry(request_id)
    status = gateway.admin.get(f"/admin/budgets/{budget['id']}/status").json()
    assert Decimal(status["spent_usd"]) == Decimal(entry["cost_usd"]) == _cost(finished.usage)
    assert status["reserved_usd"] == "0.000000000"


def test_a_background_response_outlives_a_ledger_restart_and_is_recorded_once(
    database_url: str, fake_upstream: FakeUpstream
) -> None:
    with LiveServer(gateway_settings(database_url, fake_upstream)) as first:
        _, request_id = _created(_client(first), "background_ms=1500 Across a restart")
    with _polling(database_url, fake_upstream) as second:
        entry = second.entry(request_id, timeout=15)
        assert entry["status"] == "ok" and entry["usage_source"] == "provider"
        time.sleep(1.5)
        assert [e["request_id"] for e in _responses_entries(second)] == [request_id]
        assert not [e for e in second.entries() if e["status"] == "interrupted"]


def test_a_streamed_background_response_is_recorded_from_its_stream(gateway: LiveServer) -> None:
    client = _client(gateway)
    with client.responses.with_streaming_response.create(
        model=MODEL, input="A streamed background", background=True, stream=True
    ) as raw:
        request_id = raw.headers["x-ledger-request-id"]
        events = list(raw.parse())
    assert events[-1].type == "response.completed"
    entry = gateway.entry(request_id)
    assert entry["status"] == "ok" and entry["usage_source"] == "provider"
