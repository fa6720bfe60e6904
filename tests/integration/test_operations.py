"""The first hour of running Ledger: what its logs say, and a server ready when it says so."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from ledger.admin.credentials import display_prefix
from tests.fake_upstream import FakeUpstream
from tests.processes import LedgerProcess, write_provider_config

MODEL = "gpt-4.1-mini"

# -- start-up -----------------------------------------------------------------------------


def test_encodings_are_built_before_the_server_answers_its_first_request(
    database_url: str, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    # A fresh process, nothing sent yet: the first request must not wait for a tokenizer.
    config = write_provider_config(tmp_path / "ledger.toml", fake_upstream)
    config.write_text(
        config.read_text()
        + '\n[[models]]\nname = "legacy"\nprovider = "openai"\nupstream_model = "gpt-3.5-turbo"\n'
        + '\n[[models]]\nname = "gpt-4.1-mini"\nprovider = "openai"\n'
        + 'upstream_model = "gpt-4.1-mini"\n'
    )
    with LedgerProcess(database_url, config=config) as server:
        ready = httpx.get(server.url + "/readyz", timeout=5)
    assert ready.status_code == 200, ready.text
    # o200k for gpt-4.1-mini (and Anthropic's estimate), cl100k for gpt-3.5-turbo.
    assert ready.json()["encodings"] == ["cl100k_base", "o200k_base"]


def test_without_configured_models_the_server_builds_the_current_encoding_only(
    database_url: str, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    config = write_provider_config(tmp_path / "ledger.toml", fake_upstream)
    with LedgerProcess(database_url, config=config) as server:
        ready = httpx.get(server.url + "/readyz", timeout=5)
    assert ready.json()["encodings"] == ["o200k_base"]


# -- logs ---------------------------------------------------------------------------------


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_every_request_gets_one_access_line_and_gateway_lines_tell_their_entry(
    database_url: str, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    config = write_provider_config(tmp_path / "ledger.toml", fake_upstream)
    log = tmp_path / "serve.log"
    sent: list[tuple[str, str, int]] = []
    with LedgerProcess(database_url, config=config, log=log, log_level="info") as server:
        admin = httpx.Client(
            base_url=server.url, headers={"authorization": f"Bearer {server.admin_key}"}
        )

        def call(method: str, path: str, key: str | None = None, **kw: Any) -> httpx.Response:
            headers = {"authorization": f"Bearer {key}"} if key else {}
            client = admin if key is None else httpx.Client(base_url=server.url, headers=headers)
            response = client.request(method, path, **kw)
            sent.append((method, path, response.status_code))
            return response

        chat = "/v1/chat/completions"
        for team in ("research", "capped"):
            call("POST", "/admin/teams", json={"name": team})
        research = call("POST", "/admin/keys", json={"team": "research"}).json()["key"]
        capped = call("POST", "/admin/keys", json={"team": "capped"}).json()["key"]
        call("POST", "/admin/budgets", json={"team": "capped", "limit_usd": "0.000000001"})

        def ask(key: str, text: str = "hello", **body: Any) -> httpx.Response:
            messages = [{"role": "user", "content": text}]
            return call("POST", chat, key, json={"model": MODEL, "messages": messages, **body})

        ok = ask(research)
        streamed = ask(research, "a stream", stream=True)
        unauthenticated = ask("sk-ledger-not-a-key")
        unrouted = call("GET", "/no/such/route")
        blocked = ask(capped)
        failed = ask(research, "fault=http_500")
        assert [r.status_code for r in (ok, streamed, unauthenticated, unrouted, blocked, failed)] == [
            200, 200, 401, 404, 429, 500
        ]  # fmt: skip
    output = log.read_text()
    lines = [
        line
        for line in _json_lines(output)
        if line["logger"] == "ledger.access" and line["path"] != "/healthz"
    ]
    assert [(line["method"], line["path"], line["http_status"]) for line in lines] == sent
    assert all(line["level"] == "info" and line["latency_ms"] >= 0 for line in lines)
    by_request = {line.get("request_id"): line for line in lines}

    def gateway_line(response: httpx.Response) -> dict[str, Any]:
        return by_request[response.headers["x-ledger-request-id"]]

    for response, status in ((ok, "ok"), (streamed, "ok"), (failed, "upstream_error")):
        line = gateway_line(response)
        assert line["team"] == "research"
        assert line["key_prefix"] == display_prefix(research)
        assert line["endpoint"] == "chat.completions" and line["model"] == MODEL
        assert line["status"] == status
    assert Decimal(gateway_line(ok)["cost_usd"]) > 0
    assert Decimal(gateway_line(streamed)["cost_usd"]) > 0  # a stream's line has its final cost
    assert Decimal(gateway_line(failed)["cost_usd"]) == 0  # providers do not bill errors
    refused = gateway_line(blocked)
    assert (refused["team"], refused["status"], refused["http_status"]) == (
        "capped",
        "blocked",
        429,
    )
    # Before a key is known, or off the gateway, there is no entry to tell.
    for line in lines:
        if line["http_status"] in (401, 404) or line["path"].startswith("/admin"):
            assert not {"request_id", "team", "key_prefix", "cost_usd"} & line.keys()
    for key in (research, capped, server.admin_key):
        assert key not in output


def test_an_idle_server_with_its_scheduler_running_logs_nothing_at_info(
    database_url: str, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    config = write_provider_config(tmp_path / "ledger.toml", fake_upstream)
    log = tmp_path / "serve.log"
    every_second = {
        "LEDGER_SCHEDULER": "on",
        "LEDGER_BUDGET_CHECK_INTERVAL_S": "1",
        "LEDGER_RESERVATION_SWEEP_INTERVAL_S": "1",
        "LEDGER_ALERT_DELIVERY_INTERVAL_S": "1",
    }
    with LedgerProcess(
        database_url, config=config, log=log, log_level="debug", env=every_second
    ) as server:
        started = log.stat().st_size  # after start-up
        for _ in range(4):
            # Probes come to idle servers all the time: their lines are DEBUG too.
            assert httpx.get(server.url + "/healthz").status_code == 200
            assert httpx.get(server.url + "/readyz").status_code == 200
            time.sleep(1)  # ticks of every job; the line of a request follows its response
        with log.open() as file:
            file.seek(started)
            idle = _json_lines(file.read())
    ticks = [line for line in idle if line["logger"] == "ledger.scheduler"]
    probes = [line for line in idle if line["logger"] == "ledger.access"]
    # At least the 8 probes sent here (the start-up readiness probe's line may land late).
    assert len(probes) >= 8 and all(line["level"] == "debug" for line in probes)
    # The jobs did run, every second, with nothing to do ...
    assert len({line["message"].split(":")[0] for line in ticks}) >= 3, ticks
    assert all(line["level"] == "debug" for line in ticks)
    # ... and nothing reached INFO: not APScheduler's "Running job", not anything else.
    assert [line for line in idle if line["level"] != "debug"] == []
