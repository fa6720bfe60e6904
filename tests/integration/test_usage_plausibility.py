"""A provider's word on usage is believed only when it is a plausible count.

Garbage (negative counts, strings, fractions, more tokens than any model reads or writes)
is not recorded as $0 "from the provider": the entry is priced from Ledger's estimate,
marked ``estimated``, and the provider's usage is kept as it came. And a provider that
echoes Ledger's key in an error never gets it to a client, an entry or a log line.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from ledger.observability import JsonFormatter
from tests.fake_upstream import ABSURD_TOKENS, FakeUpstream
from tests.integration.fault_support import backend_of, ledger_rows, tally
from tests.live import LiveServer, gateway_settings

OPENAI, ANTHROPIC = "openai", "anthropic"
MODELS = {OPENAI: "gpt-4.1-mini", ANTHROPIC: "claude-sonnet-4-5"}
KINDS = [(OPENAI, False), (OPENAI, True), (ANTHROPIC, False), (ANTHROPIC, True)]
KIND_IDS = ["openai", "openai-stream", "anthropic", "anthropic-stream"]
# How each garbage value appears in the usage the fake sent, as JSON.
GARBAGE = {"negative": "-5", "string": '"12"', "float": "12.5", "huge": "10000000000000"}


def _clients(server: LiveServer, key: str) -> tuple[openai.OpenAI, anthropic.Anthropic]:
    return (
        openai.OpenAI(base_url=server.openai_base_url, api_key=key, max_retries=0),
        anthropic.Anthropic(base_url=server.url, api_key=key, max_retries=0),
    )


def _ask(server: LiveServer, key: str, protocol: str, stream: bool, text: str) -> str:
    """One request through the official SDK, read to its end; the Ledger request id."""
    oai, claude = _clients(server, key)
    messages: Any = [{"role": "user", "content": text}]
    if protocol == OPENAI:
        raw = oai.chat.completions.with_raw_response.create(
            model=MODELS[OPENAI], messages=messages, stream=stream
        )
    else:
        raw = claude.messages.with_raw_response.create(
            model=MODELS[ANTHROPIC], max_tokens=100, messages=messages, stream=stream
        )
    parsed = raw.parse()
    if stream:
        for _ in parsed:
            pass
    return raw.headers["x-ledger-request-id"]


def _assert_priced_from_the_estimate(entry: dict[str, Any]) -> None:
    assert entry["status"] == "ok", entry
    assert entry["usage_source"] == "estimated", entry
    assert entry["usage"]["input_tokens"] == entry["estimated_input_tokens"] > 0, entry
    assert 0 < entry["usage"]["output_tokens"] < 100, entry  # the words the client got
    assert Decimal(entry["cost_usd"]) > 0, entry
    assert "not believed" in entry["error"], entry


@pytest.mark.parametrize("garbage", list(GARBAGE))
@pytest.mark.parametrize(("protocol", "stream"), KINDS, ids=KIND_IDS)
def test_garbage_usage_is_priced_from_the_estimate_and_kept_as_it_came(
    gateway: LiveServer, protocol: str, stream: bool, garbage: str
) -> None:
    key = gateway.team_key()
    request_id = _ask(gateway, key, protocol, stream, f"usage={garbage} reply_words=12")
    entry = gateway.entry(request_id)
    _assert_priced_from_the_estimate(entry)
    assert GARBAGE[garbage] in entry["raw_usage"], entry
    json.loads(entry["raw_usage"])  # kept as the JSON it was


def test_plausible_usage_is_believed_and_keeps_no_raw_copy(gateway: LiveServer) -> None:
    key = gateway.team_key()
    entry = gateway.entry(_ask(gateway, key, OPENAI, False, "reply_words=12"))
    assert entry["usage_source"] == "provider", entry
    assert entry["raw_usage"] is None and entry["error"] is None, entry


def test_output_beyond_the_cap_the_provider_was_sent_is_not_believed(
    gateway: LiveServer,
) -> None:
    # The fake ignores max_tokens: 40 words are more than the 5 tokens it was allowed.
    key = gateway.team_key()
    _, claude = _clients(gateway, key)
    raw = claude.messages.with_raw_response.create(
        model=MODELS[ANTHROPIC],
        max_tokens=5,
        messages=[{"role": "user", "content": "reply_words=40"}],
    )
    entry = gateway.entry(raw.headers["x-ledger-request-id"])
    assert entry["usage_source"] == "estimated", entry
    assert "more than the request allowed (5)" in entry["error"], entry
    assert json.loads(entry["raw_usage"])["output_tokens"] > 5, entry


ABSURD_REQUESTS = 70


def test_absurd_usage_seventy_times_loses_no_entry_and_overflows_no_sum(
    gateway: LiveServer, database_url: str
) -> None:
    """10**12 tokens in every bucket, 70 times: once 65 such entries overflowed a bigint."""
    team = "absurd"
    key = gateway.team_key(team)
    budget = gateway.admin.post(
        "/admin/budgets",
        json={"team": team, "limit_usd": "1000000", "period": "monthly", "mode": "soft"},
    )
    assert budget.status_code == 201, budget.text
    ids = [
        _ask(gateway, key, *KINDS[n % len(KINDS)], f"usage=absurd reply_words=6 n{n}")
        for n in range(ABSURD_REQUESTS)
    ]
    entries = gateway.wait_for_entries(ABSURD_REQUESTS, team=team)
    figures = tally(
        "provider reports 10**12 tokens in every bucket, 70 times",
        backend_of(database_url),
        ABSURD_REQUESTS,
        [entry["request_id"] for entry in entries],
        ids,
        0,
    )
    assert (figures.lost, figures.duplicated, figures.recorded) == (0, 0, ABSURD_REQUESTS)
    for entry in entries:
        _assert_priced_from_the_estimate(entry)
        assert str(ABSURD_TOKENS) in entry["raw_usage"], entry
    spent = sum(Decimal(entry["cost_usd"]) for entry in entries)
    assert 0 < spent < 1  # cents of estimated spend, not $140,250,000 an entry
    # The sums agree with the entries: the budget, the spend report.
    status = gateway.admin.get(f"/admin/budgets/{budget.json()['id']}/status").json()
    assert Decimal(status["spent_usd"]) == spent, status
    now = datetime.now(UTC)
    window = {
        "since": (now - timedelta(hours=1)).isoformat(),
        "until": (now + timedelta(hours=1)).isoformat(),
    }
    report = gateway.admin.get("/api/reports/spend", params={"team": team, **window}).json()
    assert Decimal(report["totals"]["cost_usd"]) == spent, report
    assert all(row["input_tokens"] < 10**6 for row in ledger_rows(database_url))


# -- a provider that echoes its key -----------------------------------------------------------


class _Capture(logging.Handler):
    """Every log record, as Ledger's JSON formatter and a plain formatter write it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self._json = JsonFormatter()
        self._text = logging.Formatter("%(name)s %(levelname)s %(message)s")

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self._json.format(record))
        self.lines.append(self._text.format(record))


@pytest.fixture
def captured_logs() -> Iterator[_Capture]:
    capture = _Capture()
    root = logging.getLogger()
    level = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        root.setLevel(level)


@pytest.mark.parametrize("protocol", [OPENAI, ANTHROPIC])
def test_a_provider_refusing_the_gateway_key_is_a_502_that_never_shows_the_key(
    database_url: str,
    fake_upstream: FakeUpstream,
    captured_logs: _Capture,
    protocol: str,
    tmp_path: Path,
) -> None:
    settings = gateway_settings(database_url, fake_upstream, journal_dir=str(tmp_path / "j"))
    secret = fake_upstream.api_key
    with LiveServer(settings) as server:
        key = server.team_key()
        oai, claude = _clients(server, key)
        messages: Any = [{"role": "user", "content": "fault=echo_key"}]
        if protocol == OPENAI:
            with pytest.raises(openai.APIStatusError) as caught:
                oai.chat.completions.create(model=MODELS[OPENAI], messages=messages)
        else:
            with pytest.raises(anthropic.APIStatusError) as caught:
                claude.messages.create(model=MODELS[ANTHROPIC], max_tokens=50, messages=messages)
        error = caught.value
        # Not the client's own authentication error: the gateway's credentials were refused.
        assert error.status_code == 502, error
        assert not isinstance(error, openai.AuthenticationError | anthropic.AuthenticationError)
        assert "refused the gateway's credentials" in str(error.body), error.body
        assert error.response.headers["x-should-retry"] == "false"
        entry = server.entry(error.response.headers["x-ledger-request-id"])
        assert (entry["status"], entry["http_status"], entry["cost_usd"]) == (
            "upstream_error",
            502,
            "0.000000000",
        ), entry
        assert "Incorrect API key provided: [REDACTED]" in entry["error"], entry
        usage_api = httpx.get(
            server.url + "/api/usage", headers={"authorization": f"Bearer {key}"}
        ).text
    logging.getLogger("ledger.test").error("the provider said: Incorrect API key: %s", secret)
    places = {
        "response": error.response.text + repr(error.body),
        "entry": json.dumps(entry),
        "/api/usage (team key)": usage_api,
        "database": repr(ledger_rows(database_url)),
        "log lines": "\n".join(captured_logs.lines),
    }
    for place, text in places.items():
        assert secret not in text, f"the provider key is in the {place}"
    assert any("[REDACTED]" in line for line in captured_logs.lines)


@pytest.mark.parametrize("protocol", [OPENAI, ANTHROPIC])
def test_an_error_event_quoting_the_key_reaches_the_client_without_it(
    gateway: LiveServer, fake_upstream: FakeUpstream, protocol: str
) -> None:
    key = gateway.team_key()
    text = "fault=stream_error_key reply_words=20"
    with httpx.Client(timeout=10) as http:
        if protocol == OPENAI:
            body: dict[str, Any] = {"model": MODELS[OPENAI], "stream": True}
            url, headers = gateway.openai_base_url + "/chat/completions", {}
        else:
            body = {"model": MODELS[ANTHROPIC], "stream": True, "max_tokens": 100}
            url, headers = gateway.url + "/v1/messages", {"anthropic-version": "2023-06-01"}
        body["messages"] = [{"role": "user", "content": text}]
        headers["authorization"] = f"Bearer {key}"
        with http.stream("POST", url, json=body, headers=headers) as response:
            relayed = response.read().decode()
            request_id = response.headers["x-ledger-request-id"]
    assert "Incorrect API key provided: [REDACTED]" in relayed, relayed
    assert fake_upstream.api_key not in relayed
    entry = gateway.entry(request_id)
    assert entry["status"] == "upstream_error", entry
    assert "[REDACTED]" in entry["error"] and fake_upstream.api_key not in entry["error"], entry
